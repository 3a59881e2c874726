#!/usr/bin/env python3
"""Greedy answers of the PyTorch reference for an image, and (optionally) ours, compared token for token.

The reference side is the model card's pipeline: `load_image` (Pillow decode + `.convert("RGB")`, the card's
`dynamic_preprocess` with `max_num` tiles and a thumbnail, Pillow bicubic resize to 448x448, ToTensor +
Normalize), the Hermes-2 prompt of spec §5 with `<image>\\n` before the question, and greedy decoding until
`<|im_end|>` or `--max-new-tokens`. The model is the one make_goldens.py builds: transformers'
InternVLForConditionalGeneration loaded strictly from a checkpoint in the ORIGINAL InternVL2-1B layout (the
renaming of spec §2.2), float32, eager attention. The model card's own remote code (written for transformers
~4.44) is not part of the checkpoint directories we have; tests/reference/README.md shows that transformers'
class and the plain spec implementation agree to float32 noise.

torchvision is not needed: `T.Resize((448, 448), BICUBIC)` on a PIL image is `img.resize((448, 448),
Image.BICUBIC)`, and ToTensor + Normalize is `common.normalize_tiles` (bit-identical, see the README).

    python3 tests/reference/answer_parity.py --ckpt /work/models/full1 --image ../shared/media/image2.jpg \\
        --max-num 1 --ours target/release/internvl-run --gguf /work/models/full1-f32.gguf

Exit status 1 when `--ours` is given and the token ids differ.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

import common
import make_goldens

IMAGE_SIZE = 448


# The model card's image preprocessing: the repository's one Python copy, bench/pillow_preprocess.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from pillow_preprocess import dynamic_preprocess_with_grid  # noqa: E402


def load_image(path, max_num):
    image = Image.open(path).convert("RGB")
    tiles, grid = dynamic_preprocess_with_grid(image, max_num=max_num, image_size=IMAGE_SIZE, use_thumbnail=True)
    # build_transform: Resize((448, 448), BICUBIC) on 448x448 tiles, then ToTensor + Normalize.
    u8 = np.stack([np.asarray(t.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.uint8) for t in tiles])
    return common.normalize_tiles(u8), grid, image.size


# ----------------------------------------------------------------------------------------------------------------

def reference_answer(args):
    from transformers import Qwen2Tokenizer

    t0 = time.time()
    tok = Qwen2Tokenizer.from_pretrained(args.ckpt)
    config, num_image_token = make_goldens.build_config(common.load_checkpoint_config(args.ckpt),
                                                         tok.convert_tokens_to_ids(common.IMG_CONTEXT))
    model, _, _ = make_goldens.load_model(args.ckpt, config, torch.float32)
    make_goldens.check_config(config, model)
    print(f"  model ready in {time.time() - t0:.1f}s", file=sys.stderr)

    pixels, grid, size = load_image(args.image, args.max_num)
    n_tiles = pixels.shape[0]
    prompt = common.render_prompt(args.question, n_tiles, num_image_token)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    t1 = time.time()
    out = model(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(pixels), use_cache=True,
                logits_to_keep=1)
    cache = out.cache
    logits = out.logits[0, -1]
    gen, top2 = [], []
    for k in range(args.max_new_tokens):
        v, i = torch.topk(logits, 2)
        top2.append([[int(i[0]), float(v[0])], [int(i[1]), float(v[1])]])
        nxt = int(torch.argmax(logits))  # first maximum on ties, as greedy generate
        gen.append(nxt)
        if nxt == eos or k + 1 == args.max_new_tokens:
            break
        o = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
        cache = o.cache
        logits = o.logits[0, -1]
    print(f"  {n_tiles} tiles (grid {grid[0]}x{grid[1]} of a {size[0]}x{size[1]} image), prompt {len(ids)} "
          f"tokens, generation {time.time() - t1:.1f}s", file=sys.stderr)
    # The card's chat() returns the decoded answer stripped of surrounding whitespace (internvl-run prints it so).
    text = tok.decode([t for t in gen if t != eos], skip_special_tokens=True).strip()
    return {"tiles": n_tiles, "prompt_tokens": len(ids), "ids": gen, "text": text, "top2": top2}


def our_answer(args):
    cmd = [args.ours, "-m", args.gguf, "--image", args.image, "--max-tiles", str(args.max_num), "--temp", "0",
           "-n", str(args.max_new_tokens), "--kv-type", args.kv_type, "-p", args.question, "--json",
           "--no-progress"]
    print("  " + " ".join(cmd), file=sys.stderr)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"internvl-run failed ({res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint dir in the original InternVL2-1B layout")
    ap.add_argument("--image", required=True)
    ap.add_argument("--max-num", type=int, default=12, help="the card's max_num (our --max-tiles)")
    ap.add_argument("--question", default=common.QUESTION)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ours", default=None, help="internvl-run binary: also run ours and compare")
    ap.add_argument("--gguf", default=None, help="the same checkpoint converted (with --ours)")
    ap.add_argument("--kv-type", default="f32", help="our KV cache type (default f32, as the reference)")
    ap.add_argument("--json-out", default=None, help="write both answers as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, Pillow {Image.__version__}",
          file=sys.stderr)

    ref = reference_answer(args)
    print(f"reference ids:  {ref['ids']}")
    print(f"reference text: {ref['text']!r}")
    print("reference top-2 per step: " + " ".join(f"{a[0]}:{a[1]:.4f}/{b[0]}:{b[1]:.4f}" for a, b in ref["top2"]))
    result = {"image": os.path.abspath(args.image), "max_num": args.max_num, "reference": ref}
    status = 0
    if args.ours:
        ours = our_answer(args)
        text = ours.get("answer", "")
        print(f"ours text:      {text!r}")
        same = text == ref["text"]
        print("IDENTICAL" if same else "DIFFERENT")
        result["ours"] = ours
        status = 0 if same else 1
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
    sys.exit(status)


if __name__ == "__main__":
    main()
