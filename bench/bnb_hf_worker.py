#!/usr/bin/env python3
"""One transformers variant of the bitsandbytes comparison, in its own process (so its peak RSS is its own).

    python3 bench/bnb_hf_worker.py --hf-dir W/hf --variant bnb-int8-all --inputs W/inputs/inputs.json \
        --out W/runs/bnb-int8-all --threads 2

Loads transformers' own InternVLForConditionalGeneration from the renamed checkpoint the harness wrote (spec §2.2;
InternVL2's remote code does not run on transformers 5), with
  ref-f32 / ref-bf16: dtype float32 / bfloat16;
  bnb-int8-all: BitsAndBytesConfig(load_in_8bit=True) in bfloat16, as the InternVL2 model card does it
                (load_in_8bit=True, torch_dtype=bfloat16): every Linear, the vision tower and projector included;
                transformers keeps the output head (lm_head) in bfloat16 by itself;
  bnb-int8-llm: the same with llm_int8_skip_modules = vision tower, projector, lm_head.
Then per prompt, the same protocol as examples/eval_dump.rs: vision (get_image_features) timed, the whole prompt
prefilled (logits of the last position only) timed, G greedy tokens (G - 1 decode steps through the KV cache)
timed, and one teacher-forced forward over ids ++ teacher whose logits at positions score_from .. N + G - 2 are
written. Outputs: result.json, proj_{i}.f32, logits_{i}.f32 (raw little-endian float32, C order).
"""

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

import bnb_common as bc


def load(hf_dir, variant):
    from transformers import BitsAndBytesConfig, InternVLForConditionalGeneration

    spec = bc.VARIANTS[variant]
    dtype = getattr(torch, spec["dtype"])
    kw = {"dtype": dtype, "attn_implementation": "sdpa"}
    if spec["bnb"] == "all":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kw["device_map"] = "cpu"
    elif spec["bnb"] == "llm":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"])
        kw["device_map"] = "cpu"
    t0 = time.perf_counter()
    model, info = InternVLForConditionalGeneration.from_pretrained(hf_dir, output_loading_info=True, **kw)
    model.eval()
    load_s = time.perf_counter() - t0
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{variant}: load was not clean: {bad}")
    return model, load_s, dtype


def describe_linears(model):
    """Counts of int8 and float Linear layers per part (to state what was quantized)."""
    counts = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        part = ("vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name
                else "lm_head" if name.endswith("lm_head") else "llm")
        kind = "int8" if type(mod).__name__ == "Linear8bitLt" else str(mod.weight.dtype).replace("torch.", "")
        counts.setdefault(part, {}).setdefault(kind, 0)
        counts[part][kind] += 1
    return counts


def run_prompt(model, dtype, pixels, p, gen):
    inner = model.model
    pix = torch.from_numpy(pixels[p["tiles"]]).to(dtype)
    ids = torch.tensor([p["ids"]], dtype=torch.long)

    t = time.perf_counter()
    image_out = inner.get_image_features(pixel_values=pix, return_dict=True)
    vision_s = time.perf_counter() - t
    proj = image_out.pooler_output.reshape(-1, image_out.pooler_output.shape[-1])

    t = time.perf_counter()
    out = model(input_ids=ids, mm_encoder_outputs={"image": image_out}, use_cache=True, logits_to_keep=1)
    prefill_s = time.perf_counter() - t

    cache = out.cache
    greedy = [int(torch.argmax(out.logits[0, -1]))]  # first maximum on ties, like ours
    t = time.perf_counter()
    while len(greedy) < gen:
        o = model(input_ids=torch.tensor([[greedy[-1]]]), cache=cache, use_cache=True)
        cache = o.cache
        greedy.append(int(torch.argmax(o.logits[0, -1])))
    decode_s = time.perf_counter() - t
    del cache, out

    teacher = p.get("teacher") or greedy
    seq = p["ids"] + list(teacher)
    s = p["score_from"]
    keep = len(seq) - s  # positions s .. len-1; the last one predicts past the sequence and is dropped
    o = model(input_ids=torch.tensor([seq]), mm_encoder_outputs={"image": image_out}, use_cache=False,
              logits_to_keep=keep)
    logits = o.logits[0, :-1].to(torch.float32).numpy()
    return {
        "vision_s": vision_s, "prefill_s": prefill_s, "decode_s": decode_s, "greedy": greedy,
        "proj": proj.to(torch.float32).numpy(), "logits": logits,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--variant", required=True, choices=[k for k, v in bc.VARIANTS.items() if v["kind"] == "hf"])
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()

    # bitsandbytes logs "inputs will be cast from bfloat16 to float16" at every int8 matmul; the report says it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    inputs = bc.read_json(args.inputs)
    if inputs.get("magic") != bc.INPUTS_MAGIC or inputs.get("version") != bc.INPUTS_VERSION:
        raise SystemExit(f"{args.inputs}: not a {bc.INPUTS_MAGIC} v{bc.INPUTS_VERSION} file")
    pixels = bc.read_f32(os.path.join(os.path.dirname(args.inputs), inputs["pixels"]), inputs["pixel_shape"])
    gen = inputs["gen_tokens"]
    os.makedirs(args.out, exist_ok=True)

    model, load_s, dtype = load(args.hf_dir, args.variant)
    linears = describe_linears(model)
    # Refuse to report a variant that is not what its name says (e.g. a skip pattern that matched nothing).
    want_int8 = {"all": {"vision", "projector", "llm"}, "llm": {"llm"}, None: set()}[bc.VARIANTS[args.variant]["bnb"]]
    for part, kinds in linears.items():
        if (part in want_int8) != ("int8" in kinds and len(kinds) == 1):
            raise SystemExit(f"{args.variant}: {part} Linear layers are {kinds}, expected "
                             f"{'all int8' if part in want_int8 else 'no int8'}")
    weight_bytes = model.get_memory_footprint()

    # Warm-up (the per-prompt figures exclude it), as eval_dump does: one tile, a few text tokens, one step.
    t = time.perf_counter()
    p0 = inputs["prompts"][0]
    inner = model.model
    inner.get_image_features(pixel_values=torch.from_numpy(pixels[p0["tiles"][:1]]).to(dtype), return_dict=True)
    text = [i for i in p0["ids"] if i != inputs["image_context_id"]][:8]
    o = model(input_ids=torch.tensor([text]), use_cache=True, logits_to_keep=1)
    model(input_ids=torch.tensor([[int(torch.argmax(o.logits[0, -1]))]]), cache=o.cache, use_cache=True)
    warmup_s = time.perf_counter() - t

    prompts = []
    for i, p in enumerate(inputs["prompts"]):
        r = run_prompt(model, dtype, pixels, p, gen)
        r.pop("proj").astype("<f4").tofile(os.path.join(args.out, f"proj_{i}.f32"))
        logits = r.pop("logits")
        logits.astype("<f4").tofile(os.path.join(args.out, f"logits_{i}.f32"))
        n_tiles = len(p["tiles"])
        print(f"  [{i}] {p['name']}: {n_tiles} tile(s) {r['vision_s'] * 1e3 / n_tiles:.0f} ms/tile, prefill "
              f"{len(p['ids'])} tok {len(p['ids']) / r['prefill_s']:.1f} tok/s, decode "
              f"{(gen - 1) / max(r['decode_s'], 1e-9):.1f} tok/s", file=sys.stderr, flush=True)
        prompts.append({
            "name": p["name"], "n_tiles": n_tiles, "vision_s": r["vision_s"], "n_prompt": len(p["ids"]),
            "prefill_s": r["prefill_s"], "n_decode": gen - 1, "decode_s": r["decode_s"], "greedy": r["greedy"],
            "proj_shape": [len(p["tiles"]) * inputs["num_image_token"], model.config.text_config.hidden_size],
            "logits_shape": list(logits.shape),
        })

    bc.write_json(os.path.join(args.out, bc.RESULT_FILE), {
        "system": "transformers",
        "variant": args.variant,
        "dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": "sdpa",
        "linears": linears,
        "weight_bytes": weight_bytes,
        "file_bytes": None,
        "threads": args.threads,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "peak_rss_bytes": bc.peak_rss_bytes(),
        "prompts": prompts,
    })


if __name__ == "__main__":
    main()
