#!/usr/bin/env python3
"""Independent cross-check of the goldens: InternVL2-1B written directly from the spec in plain PyTorch.

Reads the checkpoint with its ORIGINAL names (spec §2.1; no renaming, no transformers), recomputes every stage
that make_goldens.py saved (same tiles, same token ids from its manifest) and prints max |diff|, relative
difference (max |diff| / max |golden|) and 1 - cosine per stage.
Exit status 1 if any stage differs by more than --tol relative to the stage's max |value|, or if the greedy ids
differ.

    python3 tests/reference/plain_reference.py --ckpt /tmp/tiny42 --goldens tests/fixtures/goldens/tiny

Spec sections: §3 vision (patch embedding as im2col + matmul, CLS first, pos embedding, pre-norm layers with layer
scale, no final norm), §3.8 pixel shuffle v2 written as the explicit 2x2 concatenation, §3.9 projector, §4 Qwen2
(RMSNorm, NEOX RoPE, GQA, causal softmax, SwiGLU, untied lm_head). The greedy decode here recomputes the whole
sequence at every step (no KV cache), a different algorithm from the golden's cached decode.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------------------------------------------
# Vision (spec §3)
# ----------------------------------------------------------------------------------------------------------------

def vision_forward(W, vc, pixels):
    """pixels [T,3,S,S] -> last hidden state [T, 1+g*g, D] (CLS at row 0)."""
    T, C, S, _ = pixels.shape
    p = vc["patch_size"]
    g = S // p
    D = vc["hidden_size"]
    nh = vc["num_attention_heads"]
    hd = D // nh
    eps = vc["layer_norm_eps"]

    # §3.2: im2col with (c, ky, kx) flattening, patch index row-major (row = y).
    patches = pixels.reshape(T, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(T, g * g, C * p * p)
    w_patch = W["vision_model.embeddings.patch_embedding.weight"].reshape(D, C * p * p)
    x = patches @ w_patch.T + W["vision_model.embeddings.patch_embedding.bias"]
    # §3.3-3.4: CLS first, then pos[0] to CLS and pos[1+p] to patch p (no interpolation at the native size).
    cls = W["vision_model.embeddings.class_embedding"].reshape(1, 1, D).expand(T, 1, D)
    x = torch.cat([cls, x], dim=1) + W["vision_model.embeddings.position_embedding"].reshape(1, g * g + 1, D)

    for l in range(vc["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{l}."
        y = F.layer_norm(x, (D,), W[pre + "norm1.weight"], W[pre + "norm1.bias"], eps)
        qkv = y @ W[pre + "attn.qkv.weight"].T + W[pre + "attn.qkv.bias"]  # [T, n, 3D]: Q | K | V column blocks
        n = qkv.shape[1]
        q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(T, n, nh, hd).transpose(1, 2) for i in range(3))
        a = torch.softmax((q * hd ** -0.5) @ k.transpose(-1, -2), dim=-1) @ v  # bidirectional, no mask
        o = a.transpose(1, 2).reshape(T, n, D) @ W[pre + "attn.proj.weight"].T + W[pre + "attn.proj.bias"]
        x = x + W[pre + "ls1"] * o
        y = F.layer_norm(x, (D,), W[pre + "norm2.weight"], W[pre + "norm2.bias"], eps)
        m = F.gelu(y @ W[pre + "mlp.fc1.weight"].T + W[pre + "mlp.fc1.bias"])  # exact erf GELU
        m = m @ W[pre + "mlp.fc2.weight"].T + W[pre + "mlp.fc2.bias"]
        x = x + W[pre + "ls2"] * m
    return x  # select_layer -1, no post-norm (§3.6)


def pixel_shuffle_v2(vit_out):
    """§3.8: drop CLS; token (i,j) = A[2i][2j] | A[2i][2j+1] | A[2i+1][2j] | A[2i+1][2j+1]; t = i*(g/2)+j."""
    T, n, D = vit_out.shape
    g = math.isqrt(n - 1)
    A = vit_out[:, 1:, :].reshape(T, g // 2, 2, g // 2, 2, D)  # (t, i, dy, j, dx, ch)
    return A.permute(0, 1, 3, 2, 4, 5).reshape(T, (g // 2) ** 2, 4 * D)  # channel m = dy*2D + dx*D + ch


def projector(W, x):
    """§3.9 mlp1: LayerNorm(eps 1e-5) -> Linear -> GELU(erf) -> Linear."""
    x = F.layer_norm(x, (x.shape[-1],), W["mlp1.0.weight"], W["mlp1.0.bias"], 1e-5)
    x = F.gelu(x @ W["mlp1.1.weight"].T + W["mlp1.1.bias"])
    return x @ W["mlp1.3.weight"].T + W["mlp1.3.bias"]


# ----------------------------------------------------------------------------------------------------------------
# Qwen2 (spec §4)
# ----------------------------------------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(n, hd, theta, dtype):
    # As the original model's transformers-4.37 Qwen2 computes it: inv_freq in float32 (or the compute dtype),
    # angle = position * inv_freq, both halves of the head share the angle (NEOX / rotate-half).
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=dtype) / hd))
    ang = torch.arange(n, dtype=dtype)[:, None] * inv[None, :]  # [n, hd/2]
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """x [heads, n, hd]; q'[i] = q[i]cos - q[i+h]sin, q'[i+h] = q[i+h]cos + q[i]sin."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def llm_forward(W, lc, embeds):
    """embeds [n, H] -> final-norm hidden states [n, H]; positions 0..n-1, fully causal."""
    n, H = embeds.shape
    nh, nkv = lc["num_attention_heads"], lc["num_key_value_heads"]
    hd = H // nh
    group = nh // nkv
    eps = lc["rms_norm_eps"]
    cos, sin = rope_tables(n, hd, float(lc["rope_theta"]), embeds.dtype)
    mask = torch.full((n, n), float("-inf"), dtype=embeds.dtype).triu(1)
    x = embeds
    for l in range(lc["num_hidden_layers"]):
        pre = f"language_model.model.layers.{l}."
        h = rms_norm(x, W[pre + "input_layernorm.weight"], eps)
        q = (h @ W[pre + "self_attn.q_proj.weight"].T + W[pre + "self_attn.q_proj.bias"]).reshape(n, nh, hd)
        k = (h @ W[pre + "self_attn.k_proj.weight"].T + W[pre + "self_attn.k_proj.bias"]).reshape(n, nkv, hd)
        v = (h @ W[pre + "self_attn.v_proj.weight"].T + W[pre + "self_attn.v_proj.bias"]).reshape(n, nkv, hd)
        q = apply_rope(q.transpose(0, 1), cos, sin)  # [nh, n, hd]
        k = apply_rope(k.transpose(0, 1), cos, sin)  # [nkv, n, hd]
        v = v.transpose(0, 1)
        heads = []
        for hq in range(nh):
            kv = hq // group  # GQA: query head h uses kv head floor(h / group)
            s = (q[hq] @ k[kv].T) * hd ** -0.5 + mask
            heads.append(torch.softmax(s, dim=-1) @ v[kv])
        o = torch.cat(heads, dim=-1) @ W[pre + "self_attn.o_proj.weight"].T  # no o_proj bias
        x = x + o
        h2 = rms_norm(x, W[pre + "post_attention_layernorm.weight"], eps)
        gate = F.silu(h2 @ W[pre + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h2 @ W[pre + "mlp.up_proj.weight"].T)) @ W[pre + "mlp.down_proj.weight"].T
    return rms_norm(x, W["language_model.model.norm.weight"], eps)


def embed(W, ids, image_rows):
    """§4: token embeddings, rows with id <IMG_CONTEXT> replaced by the projector rows in order."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    e = W["language_model.model.embed_tokens.weight"][ids_t].clone()
    sel = ids_t == common.IMG_CONTEXT_ID
    if int(sel.sum()) != image_rows.shape[0]:
        raise SystemExit(f"{int(sel.sum())} image slots but {image_rows.shape[0]} projector rows")
    e[sel] = image_rows
    return e


# ----------------------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------------------

def own_pixels(tiles_u8):
    """Normalization written independently of common.normalize_tiles (torchvision ToTensor + Normalize ops)."""
    x = torch.from_numpy(tiles_u8).permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.tensor(common.MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(common.STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub(mean).div(std).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--goldens", required=True, help="a directory written by make_goldens.py")
    ap.add_argument("--tiles-npy", default=common.DEFAULT_TILES_NPY)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    ap.add_argument("--tol", type=float, default=1e-5, help="max |diff| / max |golden| allowed per stage")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    dtype = {"f32": torch.float32, "f64": torch.float64}[args.dtype]

    with open(os.path.join(args.goldens, "manifest.json"), encoding="utf-8") as f:
        man = json.load(f)
    if man.get("magic") != "internvl-goldens" or man.get("version") != 1:
        raise SystemExit("not an internvl-goldens v1 manifest")
    ckpt_sha = common.checkpoint_sha256(args.ckpt)
    if ckpt_sha != man["checkpoint"]["safetensors_sha256"]:
        raise SystemExit(f"checkpoint sha256 {ckpt_sha} differs from the manifest's; wrong --ckpt?")
    cfg = common.load_checkpoint_config(args.ckpt)
    vc, lc = cfg["vision_config"], cfg["llm_config"]

    from safetensors.torch import load_file
    W = {}
    for path in common.checkpoint_files(args.ckpt):
        W.update({k: v.to(dtype) for k, v in load_file(path).items()})

    tiles_u8 = common.load_tiles(args.tiles_npy, man["tiles"])
    pix32 = own_pixels(tiles_u8)
    sha = common.sha256_bytes(pix32.numpy().astype("<f4").tobytes())
    pix_ok = sha == man["pixel_sha256"]
    print(f"pixels: sha256 {'matches' if pix_ok else 'DIFFERS from'} the manifest ({sha[:16]}…)")
    pix = pix32.to(dtype)

    print(f"torch {torch.__version__}, compute {args.dtype}; golden: transformers {man['transformers_version']}, "
          f"{man['compute_dtype']}")
    ok = pix_ok
    rows = []

    def compare(name, mine):
        nonlocal ok
        if name not in man["arrays"]:
            return
        gold = common.read_f32(args.goldens, man, name).astype(np.float64)
        m = mine.detach().to(torch.float64).numpy()
        if m.shape != gold.shape:
            print(f"  {name}: shape {m.shape} != golden {gold.shape}")
            ok = False
            return
        d = np.abs(m - gold)
        scale = float(np.abs(gold).max())
        rel = float(d.max()) / scale if scale > 0 else float(d.max())
        m32 = mine.detach().to(torch.float32).numpy()
        identical = np.array_equal(m32.view(np.uint32), common.read_f32(args.goldens, man, name).view(np.uint32))
        cos = float((m * gold).sum() / max(np.linalg.norm(m) * np.linalg.norm(gold), 1e-300))
        passed = rel <= args.tol
        ok &= passed
        rows.append((name, list(gold.shape), float(d.max()), float(d.mean()), scale, rel, cos, identical, passed))

    vit = vision_forward(W, vc, pix)
    if "vit_out" in man["arrays"]:
        k = man["arrays"]["vit_out"]["shape"][0]
        compare("vit_out", vit[:k])
    proj = projector(W, pixel_shuffle_v2(vit)).reshape(-1, lc["hidden_size"])
    compare("proj_out", proj)

    ids = man["ids"]
    lm_head = W["language_model.lm_head.weight"]  # untied (§1.2)
    hidden = llm_forward(W, lc, embed(W, ids, proj))
    compare("hidden_final", hidden)
    compare("logits_last", hidden[-1] @ lm_head.T)
    sub = torch.tensor(man["subset_ids"], dtype=torch.long)
    if "logits_subset" in man["arrays"]:
        compare("logits_subset", hidden @ lm_head[sub].T)

    greedy_ok = True
    if "greedy_ids" in man:
        # Full recompute per step (no KV cache); step 0 = prompt's last logits (see the manifest's greedy_doc).
        seq = list(ids)
        img = proj
        steps, mine_ids = [], []
        for k in range(len(man["greedy_ids"])):
            h = llm_forward(W, lc, embed(W, seq, img))
            lg = h[-1] @ lm_head.T
            steps.append(lg)
            nxt = int(torch.argmax(lg))
            mine_ids.append(nxt)
            # Teacher-force the golden id so later steps stay comparable even if a near-tie flipped.
            seq.append(man["greedy_ids"][k])
        compare("decode_logits_subset", torch.stack(steps)[:, sub])
        greedy_ok = mine_ids == man["greedy_ids"]
        print(f"greedy ids: {'identical' if greedy_ok else 'DIFFER'} ({mine_ids} vs golden {man['greedy_ids']})")
        top5_ok = all(
            [int(i) for i in torch.topk(s.to(torch.float64), 5).indices] == t["ids"]
            for s, t in zip(steps, man["greedy_top5"]))
        print(f"greedy top-5 ids: {'identical' if top5_ok else 'DIFFER'}")

    print(f"{'stage':22s} {'shape':16s} {'max|diff|':>10s} {'mean|diff|':>10s} {'max|gold|':>9s} "
          f"{'rel':>9s} {'1-cosine':>9s}  bit-identical")
    for name, shape, mx, mean, scale, rel, cos, ident, passed in rows:
        print(f"{name:22s} {str(shape):16s} {mx:10.3e} {mean:10.3e} {scale:9.3g} {rel:9.2e} {1 - cos:9.2e}  "
              f"{'yes' if ident else 'no '}{'' if passed else '  FAIL'}")
    ok &= greedy_ok
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
