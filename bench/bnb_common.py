"""Shared pieces of the bitsandbytes comparison (bench/bnb_compare.py): the fixed prompt set, the one set of
inputs every system reads (normalized pixel tiles + token ids), the variants, and small file helpers.

The model-building helpers (config of spec §1/§12, the name mapping of spec §2.2) are imported from
tests/reference/make_goldens.py, the pixel normalization and the Hermes-2 prompt from tests/reference/common.py,
and InternVL's dynamic tiling from bench/pillow_preprocess.py, so the comparison uses exactly the reference
inputs the goldens use.
"""

import json
import os
import sys

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, BENCH)

import common as ref_common  # noqa: E402  (tests/reference/common.py)

INPUTS_MAGIC = "internvl-bnb-inputs"
INPUTS_VERSION = 1
RESULT_FILE = "result.json"
IMG_END = "</img>"

# The fixed prompt set: (image index into --images, which tiles, question). "thumb" is the 448x448 resize of the
# whole image; "dyn:N" is InternVL's dynamic tiling with max_num=N and the thumbnail; an integer picks one tile of
# the max_num=12 tiling. Two images, whole-image and crop tiles, four questions. One tile per prompt: with
# bitsandbytes on a CPU a full-size prompt already takes minutes, and a multi-tile prompt is the same per-tile
# work (the tile specs "dyn:N" are there for a longer run).
PROMPTS = [
    ("p0-thumb", 0, "thumb", "Describe the image in detail."),
    ("p1-thumb2", 1, "thumb", "What is shown in this picture? Answer briefly."),
    ("p2-crop5", 0, 5, "Write a short poem inspired by this image."),
    ("p3-crop0", 0, 0, "What colours dominate this part of the picture?"),
]

# Every variant: how it runs and what it is. Names are stable (file names, table rows).
#   hf: transformers worker with (dtype, bnb); ours: eval_dump on a GGUF from internvl-convert with these flags.
VARIANTS = {
    "ref-f32": {"kind": "hf", "dtype": "float32", "bnb": None,
                "label": "reference f32 (transformers)"},
    "ref-bf16": {"kind": "hf", "dtype": "bfloat16", "bnb": None,
                 "label": "reference bf16 (transformers)"},
    "bnb-int8-all": {"kind": "hf", "dtype": "bfloat16", "bnb": "all",
                     "label": "bnb int8, every Linear (model card)"},
    "bnb-int8-llm": {"kind": "hf", "dtype": "bfloat16", "bnb": "llm",
                     "label": "bnb int8, LLM only"},
    "ours-q8_0": {"kind": "ours", "convert": ["--type", "q8_0"], "label": "ours q8_0"},
    "ours-q8_0-vf16": {"kind": "ours", "convert": ["--type", "q8_0", "--vision-type", "f16"],
                       "label": "ours q8_0, f16 vision"},
    # Diagnostic: the two tables bitsandbytes leaves in bf16 (output head, token embedding) kept at f16, the rest
    # q8_0, to separate "8-bit scheme" from "what gets quantized".
    "ours-q8_0-f16head": {"kind": "ours", "convert": ["--type", "q8_0", "--embd-type", "f16", "--output-type", "f16"],
                          "label": "ours q8_0, f16 embd + lm_head (like bnb)"},
    # Our int8 kernels (--weights int8: the vision matrices in int8 with a scale per 128 inputs, and int8
    # copies of the language model's for prefill; decoding, and so the teacher-forced logits, use the file's
    # q8_0 weights over the cache the int8 prefill filled).
    "ours-q8_0-int8": {"kind": "ours", "convert": ["--type", "q8_0"], "weights": "int8",
                       "label": "ours q8_0, --weights int8"},
    "ours-f16-int8": {"kind": "ours", "convert": ["--type", "f16"], "weights": "int8",
                      "label": "ours f16, --weights int8"},
    "ours-q4_0": {"kind": "ours", "convert": ["--type", "q4_0"], "label": "ours q4_0"},
    "ours-mixed": {"kind": "ours", "convert": ["--llm-type", "q4_0", "--vision-type", "q8_0"],
                   "label": "ours mixed (q4_0 LLM, q8_0 vision)"},
    # Not a contender: f32 weights and an f32 KV cache show what the harness itself measures as "error".
    "ours-f32": {"kind": "ours", "convert": ["--type", "f32"], "kv": "f32",
                 "label": "ours f32, f32 KV (harness floor)"},
}
DEFAULT_VARIANTS = list(VARIANTS)
REFERENCE = "ref-f32"


def default_images():
    shared = os.path.join(ROOT, "..", "shared", "media")
    return [os.path.join(shared, "image1.jpg"), os.path.join(shared, "image2.jpg")]


def image_tiles(path, spec, image_size=448):
    """uint8 [T, S, S, 3] tiles of one image for a PROMPTS tile spec (InternVL's dynamic_preprocess, spec §7)."""
    from PIL import Image

    from pillow_preprocess import dynamic_preprocess  # bench/pillow_preprocess.py

    img = Image.open(path).convert("RGB")
    if spec == "thumb":
        tiles = [img.resize((image_size, image_size))]  # what dynamic_preprocess's thumbnail is (bicubic)
    elif isinstance(spec, str) and spec.startswith("dyn:"):
        tiles = dynamic_preprocess(img, max_num=int(spec[4:]), image_size=image_size, use_thumbnail=True)
    elif isinstance(spec, int):
        all_tiles = dynamic_preprocess(img, max_num=12, image_size=image_size, use_thumbnail=True)
        if not 0 <= spec < len(all_tiles):
            raise SystemExit(f"{path}: tile {spec} outside its {len(all_tiles)} tiles")
        tiles = [all_tiles[spec]]
    else:
        raise SystemExit(f"bad tile spec {spec!r}")
    return np.stack([np.asarray(t, dtype=np.uint8) for t in tiles])


def build_inputs(ckpt, images, n_prompts, gen_tokens, out_dir):
    """Writes out_dir/inputs.json + pixels.f32 (the one input set of every system) and returns the manifest."""
    from transformers import Qwen2Tokenizer

    cfg = ref_common.load_checkpoint_config(ckpt)
    vc = cfg["vision_config"]
    image_size = vc["image_size"]
    num_image_token = int((image_size // vc["patch_size"]) ** 2 * cfg["downsample_ratio"] ** 2)
    tok = Qwen2Tokenizer.from_pretrained(ckpt)
    ctx_id = tok.convert_tokens_to_ids(ref_common.IMG_CONTEXT)
    end_id = tok.convert_tokens_to_ids(IMG_END)
    if ctx_id != ref_common.IMG_CONTEXT_ID:
        raise SystemExit(f"tokenizer maps {ref_common.IMG_CONTEXT} to {ctx_id}, expected {ref_common.IMG_CONTEXT_ID}")

    tiles_u8, prompts = [], []
    for name, img_idx, spec, question in PROMPTS[:n_prompts]:
        if img_idx >= len(images):
            raise SystemExit(f"prompt {name} needs image #{img_idx + 1}; --images has {len(images)}")
        t = image_tiles(images[img_idx], spec, image_size)
        first = sum(len(x) for x in tiles_u8)
        tiles_u8.append(t)
        ids = tok(ref_common.render_prompt(question, len(t), num_image_token), add_special_tokens=False)["input_ids"]
        n_ctx = sum(1 for i in ids if i == ctx_id)
        if n_ctx != num_image_token * len(t):
            raise SystemExit(f"prompt {name}: {n_ctx} image-context ids, expected {num_image_token * len(t)}")
        # Scored positions start at </img>: every text position that sees the whole image (spec §5.2).
        score_from = max(i for i, x in enumerate(ids) if x == end_id)
        prompts.append({"name": name, "image": os.path.basename(images[img_idx]), "tile_spec": str(spec),
                        "question": question, "tiles": list(range(first, first + len(t))), "ids": ids,
                        "score_from": score_from})
    pixels = ref_common.normalize_tiles(np.concatenate(tiles_u8))
    os.makedirs(out_dir, exist_ok=True)
    pixels.astype("<f4").tofile(os.path.join(out_dir, "pixels.f32"))
    manifest = {
        "magic": INPUTS_MAGIC,
        "version": INPUTS_VERSION,
        "pixels": "pixels.f32",
        "pixel_shape": list(pixels.shape),
        "pixel_sha256": ref_common.sha256_bytes(pixels.astype("<f4").tobytes()),
        "normalize": ref_common.NORMALIZE_DOC,
        "gen_tokens": gen_tokens,
        "num_image_token": num_image_token,
        "image_context_id": ctx_id,
        "prompts": prompts,
    }
    write_json(os.path.join(out_dir, "inputs.json"), manifest)
    return manifest


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def read_f32(path, shape):
    a = np.fromfile(path, dtype="<f4")
    want = int(np.prod(shape))
    if a.size != want:
        raise SystemExit(f"{path}: {a.size} floats, expected {shape}")
    return a.reshape(shape)


def peak_rss_bytes():
    """VmHWM of this process (peak resident set), bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
