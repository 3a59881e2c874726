#!/usr/bin/env python3
"""Check a GGUF written by internvl-convert against its source checkpoint, independently of our Rust code.

Reads every tensor of the GGUF(s) with the `gguf` package (GGUFReader + gguf.quants.dequantize), maps it
back to the Hugging Face tensor it came from (the mapping is re-derived here from spec section 2.3, so it
also checks the Rust name table), and compares with the source read by `safetensors` + torch:

- f32 and bf16 tensors must equal the (BF16) source exactly;
- f16 tensors must equal the source rounded to f16 (numpy's round-to-nearest-even);
- quantized tensors must have a relative RMS error ||deq - src|| / ||src|| under the type's bound
  (q8_0 0.6 %, q4_0 9.5 %, see BOUNDS).

It also checks that every source tensor is covered exactly once (the fused ViT qkv may be split into
attn_q/k/v, as in --split's mmproj), that shapes agree, and that `internvl.source.sha256` matches the
source files. Prints sizes and bits per weight per part. Exit status 0 when everything passes.

Usage:
  python3 convert/tests/py/check_roundtrip.py CHECKPOINT_DIR MODEL.gguf [MMPROJ.gguf]
"""

import hashlib
import json
import os
import re
import sys

import numpy as np
import torch
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize
from safetensors import safe_open

# Relative RMS error bounds per stored type (N(0, 0.02) weights; measured values are well inside).
BOUNDS = {
    Q.Q8_0: 0.006,
    Q.Q6_K: 0.03,
    Q.Q5_0: 0.05,
    Q.Q5_1: 0.05,
    Q.Q4_0: 0.095,
    Q.Q4_1: 0.10,
    Q.IQ4_NL: 0.095,
}

VISION_LAYER = {
    "norm1.weight": "ln1.weight",
    "norm1.bias": "ln1.bias",
    "attn.qkv.weight": "attn_qkv.weight",
    "attn.qkv.bias": "attn_qkv.bias",
    "attn.proj.weight": "attn_out.weight",
    "attn.proj.bias": "attn_out.bias",
    "ls1": "ls1.weight",
    "ls2": "ls2.weight",
    "norm2.weight": "ln2.weight",
    "norm2.bias": "ln2.bias",
    "mlp.fc1.weight": "ffn_up.weight",
    "mlp.fc1.bias": "ffn_up.bias",
    "mlp.fc2.weight": "ffn_down.weight",
    "mlp.fc2.bias": "ffn_down.bias",
}
LLM_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
FIXED = {
    "vision_model.embeddings.class_embedding": "v.class_embd",
    "vision_model.embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "vision_model.embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "vision_model.embeddings.position_embedding": "v.position_embd.weight",
    "language_model.model.embed_tokens.weight": "token_embd.weight",
    "language_model.model.norm.weight": "output_norm.weight",
    "language_model.lm_head.weight": "output.weight",
}


def gguf_name(hf):
    """Spec 2.3 mapping (our single file keeps the ViT qkv fused)."""
    if hf in FIXED:
        return FIXED[hf]
    m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", hf)
    if m and m.group(2) in VISION_LAYER:
        return f"v.blk.{m.group(1)}.{VISION_LAYER[m.group(2)]}"
    m = re.fullmatch(r"mlp1\.([013])\.(weight|bias)", hf)
    if m:
        return f"mm.model.mlp.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"language_model\.model\.layers\.(\d+)\.(.+)", hf)
    if m and m.group(2) in LLM_LAYER:
        return f"blk.{m.group(1)}.{LLM_LAYER[m.group(2)]}"
    raise SystemExit(f"unexpected source tensor {hf}")


def part_of(name):
    if name.startswith("v."):
        return "vision"
    if name.startswith("mm."):
        return "projector"
    return "llm"


def source_files(ck):
    single = os.path.join(ck, "model.safetensors")
    if os.path.exists(single):
        return [single]
    with open(os.path.join(ck, "model.safetensors.index.json")) as f:
        return sorted({os.path.join(ck, v) for v in json.load(f)["weight_map"].values()})


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def field_str(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    ck, ggufs = sys.argv[1], sys.argv[2:]
    files = source_files(ck)
    sources = {}
    for p in files:
        with safe_open(p, framework="pt") as f:
            for k in f.keys():
                sources[k] = p

    # GGUF tensors by name, and the expected coverage of each source tensor.
    readers = [GGUFReader(p) for p in ggufs]
    tensors = {}
    for r in readers:
        for t in r.tensors:
            if t.name in tensors:
                raise SystemExit(f"tensor {t.name} appears twice")
            tensors[t.name] = t

    failures = []
    stats = {}
    seen = set()
    worst = {}
    for hf in sorted(sources):
        name = gguf_name(hf)
        with safe_open(sources[hf], framework="pt") as f:
            src = f.get_tensor(hf).to(torch.float32).numpy()
        if name in tensors:
            pieces = [(name, src)]
        elif ".attn_qkv." in name:
            # --split: rows 0..d, d..2d, 2d..3d of the fused qkv (spec 2.1).
            thirds = np.split(src, 3, axis=0)
            pieces = [(name.replace("attn_qkv", w), s) for w, s in zip(("attn_q", "attn_k", "attn_v"), thirds)]
        else:
            failures.append(f"{hf}: no tensor {name} in the GGUF")
            continue
        for gname, want in pieces:
            t = tensors.get(gname)
            if t is None:
                failures.append(f"{hf}: no tensor {gname} in the GGUF")
                continue
            seen.add(gname)
            shape = tuple(int(x) for x in reversed(t.shape))
            if shape != want.shape:
                failures.append(f"{gname}: shape {shape}, source {want.shape}")
                continue
            got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(want.shape)
            ty = Q(t.tensor_type)
            if ty in (Q.F32, Q.BF16):
                err = float(np.max(np.abs(got - want)))
                ok = err == 0.0
                detail = f"max |diff| {err:g} (must be 0)"
            elif ty == Q.F16:
                ref = want.astype(np.float16).astype(np.float32)
                err = float(np.max(np.abs(got - ref)))
                ok = err == 0.0
                detail = f"max |diff| to f16 rounding {err:g} (must be 0)"
            else:
                bound = BOUNDS.get(ty)
                err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
                ok = bound is not None and err <= bound
                detail = f"relative RMS error {err:.5f} (bound {bound})"
            if not ok:
                failures.append(f"{gname} [{ty.name}]: {detail}")
            key = (part_of(gname), ty.name)
            if err > worst.get(key, (-1.0, ""))[0]:
                worst[key] = (err, gname)
            s = stats.setdefault(part_of(gname), [0, 0, 0])
            s[0] += 1
            s[1] += want.size
            s[2] += int(t.n_bytes)
    extra = sorted(set(tensors) - seen)
    if extra:
        failures.append(f"GGUF tensors with no source: {extra[:10]}")

    # Provenance: the recorded sha256 must be the source files'.
    recorded = None
    for r in readers:
        recorded = recorded or field_str(r, "internvl.source.sha256")
    want_sha = "\n".join(f"{sha256(p)}  {os.path.basename(p)}" for p in files)
    if recorded != want_sha:
        failures.append(f"internvl.source.sha256 is {recorded!r}, source files hash to {want_sha!r}")

    for p, r in zip(ggufs, readers):
        print(f"{p}: {os.path.getsize(p)} bytes, arch {field_str(r, 'general.architecture')}, {len(r.tensors)} tensors")
    print(f"{'part':<10} {'tensors':>8} {'params':>12} {'bytes':>12} {'bpw':>7}")
    tot = [0, 0, 0]
    for part in ("vision", "projector", "llm"):
        if part in stats:
            n, params, nbytes = stats[part]
            tot = [a + b for a, b in zip(tot, stats[part])]
            print(f"{part:<10} {n:>8} {params:>12} {nbytes:>12} {8 * nbytes / params:>7.3f}")
    print(f"{'total':<10} {tot[0]:>8} {tot[1]:>12} {tot[2]:>12} {8 * tot[2] / max(tot[1], 1):>7.3f}")
    print("worst error per part and type:")
    for (part, ty), (err, name) in sorted(worst.items()):
        print(f"  {part:<10} {ty:<7} {err:.6g}  ({name})")
    print(f"sha256 of the source recorded correctly: {recorded == want_sha}")
    if failures:
        print(f"FAILED: {len(failures)} problem(s)")
        for f in failures[:50]:
            print("  " + f)
        return 1
    print(f"OK: {len(seen)} tensors match their source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
