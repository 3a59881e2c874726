#!/usr/bin/env python3
"""PyTorch / bitsandbytes side of the issue-10 side-by-side benchmark (benches/side_by_side.rs runs it).

    python3 bench/torch_speed.py --ckpt /tmp/full1 --variant ref-bf16 --work target/bench/work --threads 2

Reads the one input set the Rust harness wrote to --work (jobs.json: token ids; t1/t7/t13.f32: the normalized
tiles, float32 [n, 3, S, S]) and times, in this order, in one process:
  1. TTFT: the first request after load (cold): vision of the 7 tiles + prefill of the whole prompt + argmax;
  2. vision ms per tile: one warm-up tile, then the 1-tile image (reps) and the 13-tile image (one batch of
     --tiles13 tiles: the first N of the 13, for slow variants);
  3. prefill tok/s of the 512 text ids (reps, fresh cache each);
  4. decode tok/s: the 1-tile image prompt padded to 256 text ids (not timed), then --n-decode greedy steps.
Variants and loading are bench/bnb_hf_worker.py's (transformers' own InternVL classes on the checkpoint renamed
by bench/bnb_compare.py's ensure_hf_dir, cached in --hf-dir): ref-f32, ref-bf16, bnb-int8-all (every Linear,
the model card's way), bnb-int8-llm. torch.set_num_threads(--threads). Prints one line `RESULT {json}` on
stdout (and writes it to --out); errors: `ERROR message` and exit status 2.
"""

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

import bnb_common as bc


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint dir in the original InternVL2-1B layout")
    ap.add_argument("--hf-dir", required=True, help="cache of the checkpoint renamed for transformers")
    ap.add_argument("--variant", required=True, choices=[k for k, v in bc.VARIANTS.items() if v["kind"] == "hf"])
    ap.add_argument("--work", required=True, help="the harness's work dir (jobs.json, t*.f32)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--tiles13", type=int, default=13, help="tiles of the 13-tile image to time (default all)")
    ap.add_argument("--n-decode", type=int, default=16, help="decode steps (default 16)")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    args = ap.parse_args()

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    jobs = bc.read_json(os.path.join(args.work, "jobs.json"))
    s = jobs["image_size"]

    def pixels(name):
        n = jobs["tiles"][name]
        return bc.read_f32(os.path.join(args.work, f"{name}.f32"), [n, 3, s, s])

    import bnb_compare  # the bnb harness's converter (not changed; only its cache helper is used)
    import bnb_hf_worker as hw

    bnb_compare.ensure_hf_dir(os.path.abspath(args.ckpt), args.hf_dir)
    model, load_s, dtype = hw.load(args.hf_dir, args.variant)
    inner = model.model
    ctx_id = jobs["img_context_id"]

    def vision(pix):
        return inner.get_image_features(pixel_values=torch.from_numpy(np.ascontiguousarray(pix)).to(dtype),
                                        return_dict=True)

    def prefill(ids, image_out=None, use_cache=False):
        kw = {"mm_encoder_outputs": {"image": image_out}} if image_out is not None else {}
        return model(input_ids=torch.tensor([ids]), use_cache=use_cache, logits_to_keep=1, **kw)

    def say(msg):
        print(f"  [{args.variant}] {msg}", file=sys.stderr, flush=True)

    # 1. TTFT (cold).
    t7 = pixels("t7")
    ids = jobs["ttft_ids"]
    t = time.perf_counter()
    img = vision(t7)
    vision_s = time.perf_counter() - t
    out = prefill(ids, img)
    first = int(torch.argmax(out.logits[0, -1]))
    ttft_s = time.perf_counter() - t
    del out, img
    say(f"TTFT {ttft_s * 1e3:.0f} ms (vision {vision_s * 1e3:.0f} ms, {len(ids)} tokens)")

    # 2. Vision.
    t1 = pixels("t1")
    vision(t1)
    one = []
    for _ in range(jobs["reps"]["vision1"]):
        t = time.perf_counter()
        vision(t1)
        one.append((time.perf_counter() - t) * 1e3)
    n13 = max(1, min(args.tiles13, jobs["tiles"]["t13"]))
    t13 = pixels("t13")[:n13]
    thirteen = []
    for _ in range(jobs["reps"]["vision13"]):
        t = time.perf_counter()
        vision(t13)
        thirteen.append((time.perf_counter() - t) * 1e3 / n13)
    say(f"vision {median(one):.0f} ms/tile (1 tile), {median(thirteen):.0f} ms/tile ({n13} of the 13 tiles)")

    # 3. Prefill of the text ids.
    pids = jobs["prefill_ids"]
    prefill(pids[:32])
    pre = []
    for _ in range(jobs["reps"]["prefill"]):
        t = time.perf_counter()
        out = prefill(pids)
        int(torch.argmax(out.logits[0, -1]))
        pre.append(len(pids) / (time.perf_counter() - t))
        del out
    say(f"prefill {median(pre):.1f} tok/s")

    # 4. Decode after the 1-tile image prompt.
    dids = jobs["decode_ids"]
    out = prefill(dids, vision(t1), use_cache=True)
    cache = out.cache
    tok = int(torch.argmax(out.logits[0, -1]))
    t = time.perf_counter()
    for _ in range(args.n_decode):
        o = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
        cache = o.cache
        tok = int(torch.argmax(o.logits[0, -1]))
    decode_tps = args.n_decode / (time.perf_counter() - t)
    say(f"decode {decode_tps:.1f} tok/s")

    res = {
        "variant": args.variant,
        "dtype": str(dtype).replace("torch.", ""),
        "load_s": load_s,
        "ttft_ms": ttft_s * 1e3,
        "vision_ms": vision_s * 1e3,
        "prefill_ms": (ttft_s - vision_s) * 1e3,
        "n_prompt": len(ids),
        "first_token": first,
        "vision1_ms": median(one),
        "vision13_ms": median(thirteen),
        "vision13_tiles": n13,
        "prefill_tps": median(pre),
        "decode_tps": decode_tps,
        "decode_steps": args.n_decode,
        "decode_ctx": len(dids),
        "rss_mb": bc.peak_rss_bytes() / 2**20,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    res = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
    line = json.dumps(res)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    print("RESULT " + line, flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if e.code not in (None, 0):
            print(f"ERROR {e.code}", flush=True)
            sys.exit(2)
        raise
    except Exception as e:  # noqa: BLE001 (the harness wants one line; the traceback goes to stderr)
        import traceback

        traceback.print_exc()
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(2)
