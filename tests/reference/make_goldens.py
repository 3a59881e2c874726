#!/usr/bin/env python3
"""Per-stage goldens for the runtime, from transformers' own InternVLForConditionalGeneration.

Loads a checkpoint directory in the ORIGINAL InternVL2-1B layout (model.safetensors with the names of spec §2.1 +
config.json + the slow-tokenizer files) into transformers' class with the renaming of spec §2.2 (qkv split into
q/k/v), strict load, float32 (or float64) and eager attention, then writes raw little-endian float32 arrays and a
manifest.json describing them. See tests/reference/README.md.

    python3 tests/reference/make_goldens.py --ckpt /tmp/tiny42 --out tests/fixtures/goldens/tiny
    python3 tests/reference/make_goldens.py --ckpt /tmp/full42 --out /tmp/goldens-full --save-minimal
"""

import argparse
import json
import os
import re
import shlex
import sys
import time

import numpy as np
import torch

import common

MAGIC = "internvl-goldens"
VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Config (spec §1, §12)
# ----------------------------------------------------------------------------------------------------------------

def build_config(ckpt_cfg: dict, image_token_id: int):
    """transformers InternVLConfig reproducing InternVL2-1B's choices, sizes taken from the checkpoint config."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vc = ckpt_cfg["vision_config"]
    lc = ckpt_cfg["llm_config"]

    # The original model's choices this class must reproduce (spec §1.1-§1.3); refuse anything else rather than
    # silently producing goldens for a different architecture.
    expect = {
        "vision_config.hidden_act": (vc.get("hidden_act"), "gelu"),
        "vision_config.norm_type": (vc.get("norm_type"), "layer_norm"),
        "vision_config.qkv_bias": (vc.get("qkv_bias"), True),
        "vision_config.qk_normalization": (vc.get("qk_normalization"), False),
        "vision_config.layer_norm_eps": (vc.get("layer_norm_eps"), 1e-6),
        "llm_config.hidden_act": (lc.get("hidden_act"), "silu"),
        "llm_config.rms_norm_eps": (lc.get("rms_norm_eps"), 1e-6),
        "llm_config.rope_theta": (lc.get("rope_theta"), 1e6),
        "llm_config.rope_scaling": (lc.get("rope_scaling"), None),
        "llm_config.tie_word_embeddings": (lc.get("tie_word_embeddings"), False),
        "llm_config.use_sliding_window": (lc.get("use_sliding_window"), False),
        "ps_version": (ckpt_cfg.get("ps_version"), "v2"),
        "select_layer": (ckpt_cfg.get("select_layer"), -1),
        "downsample_ratio": (ckpt_cfg.get("downsample_ratio"), 0.5),
        "template": (ckpt_cfg.get("template"), "Hermes-2"),
    }
    for key, (got, want) in expect.items():
        if got != want:
            raise SystemExit(f"checkpoint config.json: {key} = {got!r}, this script reproduces only {want!r}")

    image_size = vc["image_size"]
    patch = vc["patch_size"]
    grid = image_size // patch
    ratio = ckpt_cfg["downsample_ratio"]
    num_image_token = int(grid * grid * ratio * ratio)

    vision = InternVLVisionConfig(
        hidden_size=vc["hidden_size"],
        num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"],
        intermediate_size=vc["intermediate_size"],
        image_size=image_size,
        patch_size=patch,
        num_channels=vc.get("num_channels", 3),
        hidden_act="gelu",
        norm_type="layer_norm",
        layer_norm_eps=vc["layer_norm_eps"],
        attention_bias=True,  # qkv_bias=true (class default False)
        use_qk_norm=False,
        use_mean_pooling=True,  # => no final LayerNorm in the vision tower (spec §3.6)
        use_absolute_position_embeddings=True,
        use_mask_token=False,
        hidden_dropout_prob=0.0,
        attention_dropout=0.0,
        projection_dropout=0.0,
    )
    text = Qwen2Config(
        vocab_size=lc["vocab_size"],
        hidden_size=lc["hidden_size"],
        intermediate_size=lc["intermediate_size"],
        num_hidden_layers=lc["num_hidden_layers"],
        num_attention_heads=lc["num_attention_heads"],
        num_key_value_heads=lc["num_key_value_heads"],
        hidden_act="silu",
        max_position_embeddings=lc["max_position_embeddings"],
        rms_norm_eps=lc["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(lc["rope_theta"])},
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=lc.get("sliding_window"),
        max_window_layers=lc.get("max_window_layers", lc["num_hidden_layers"]),
        attention_dropout=0.0,
        bos_token_id=lc.get("bos_token_id"),
        eos_token_id=lc.get("eos_token_id"),
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,  # 151648, not the class default 151667 (spec §2.2 caution)
        image_seq_length=num_image_token,
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return config, num_image_token


def check_config(config, model) -> dict:
    """Assert (and return for the manifest) every non-default choice of spec §12 on the built objects."""
    from transformers.activations import GELUActivation

    v = config.vision_config
    t = config.text_config
    checks = {
        "vision.attention_bias": (v.attention_bias, True),
        "vision.use_qk_norm": (v.use_qk_norm, False),
        "vision.use_mean_pooling": (v.use_mean_pooling, True),
        "vision.hidden_act": (v.hidden_act, "gelu"),
        "vision.norm_type": (v.norm_type, "layer_norm"),
        "vision.layer_norm_eps": (v.layer_norm_eps, 1e-6),
        "image_token_id": (config.image_token_id, common.IMG_CONTEXT_ID),
        "tie_word_embeddings": (config.tie_word_embeddings, False),
        "text.tie_word_embeddings": (t.tie_word_embeddings, False),
        "projector_hidden_act": (config.projector_hidden_act, "gelu"),
        "downsample_ratio": (config.downsample_ratio, 0.5),
        "vision_feature_layer": (config.vision_feature_layer, -1),
        "vision_feature_select_strategy": (config.vision_feature_select_strategy, "default"),
        "text.rms_norm_eps": (t.rms_norm_eps, 1e-6),
        "text.rope_theta": (t.rope_parameters["rope_theta"], 1e6),
        "text.rope_type": (t.rope_parameters["rope_type"], "default"),
        "text.sliding_window": (t.sliding_window, None),
        "text.hidden_act": (t.hidden_act, "silu"),
        "attn_implementation": (model.config._attn_implementation, "eager"),
        "vision.attn_implementation": (model.config.vision_config._attn_implementation, "eager"),
        "text.attn_implementation": (model.config.text_config._attn_implementation, "eager"),
    }
    # Modules as built (catches a config field the class ignores or renames).
    vt = model.model.vision_tower
    layer0 = vt.encoder.layer[0]
    proj = model.model.multi_modal_projector
    gelu_ok = lambda m: isinstance(m, GELUActivation) and m.act is torch.nn.functional.gelu  # erf, not tanh
    checks.update({
        "module.vision_final_norm_is_identity": (isinstance(vt.layernorm, torch.nn.Identity), True),
        "module.vision_q_has_bias": (layer0.attention.q_proj.bias is not None, True),
        "module.vision_qk_norm_is_identity": (isinstance(layer0.attention.q_norm, torch.nn.Identity), True),
        "module.vision_norm1_is_layernorm": (type(layer0.layernorm_before).__name__, "LayerNorm"),
        "module.vision_norm1_eps": (layer0.layernorm_before.eps, 1e-6),
        "module.vision_mlp_gelu_erf": (gelu_ok(layer0.mlp.activation_fn), True),
        "module.projector_gelu_erf": (gelu_ok(proj.act), True),
        "module.projector_ln_eps": (proj.layer_norm.eps, 1e-5),
        "module.lm_head_untied": (
            model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr(), True),
    })
    out = {}
    for k, (got, want) in checks.items():
        print(f"  config check {k:42s} = {got!r}")
        if got != want:
            raise SystemExit(f"config check failed: {k} = {got!r}, expected {want!r}")
        out[k] = got
    return out


# ----------------------------------------------------------------------------------------------------------------
# Weights (spec §2.1 -> §2.2)
# ----------------------------------------------------------------------------------------------------------------

def map_name(name: str):
    """Original name -> list of (runtime name, slicer) where slicer picks a part of the tensor (qkv split)."""
    def whole(t):
        return t

    def third(i):
        return lambda t: t.chunk(3, dim=0)[i].contiguous()  # rows [Q | K | V], spec §2.1

    fixed = {
        "vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
        "vision_model.embeddings.patch_embedding.weight":
            "model.vision_tower.embeddings.patch_embeddings.projection.weight",
        "vision_model.embeddings.patch_embedding.bias":
            "model.vision_tower.embeddings.patch_embeddings.projection.bias",
        "vision_model.embeddings.position_embedding": "model.vision_tower.embeddings.position_embeddings",
        "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
        "mlp1.0.bias": "model.multi_modal_projector.layer_norm.bias",
        "mlp1.1.weight": "model.multi_modal_projector.linear_1.weight",
        "mlp1.1.bias": "model.multi_modal_projector.linear_1.bias",
        "mlp1.3.weight": "model.multi_modal_projector.linear_2.weight",
        "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
        "language_model.lm_head.weight": "lm_head.weight",
    }
    if name in fixed:
        return [(fixed[name], whole)]
    if name.startswith("language_model.model."):
        return [("model.language_model." + name[len("language_model.model."):], whole)]
    pre = "vision_model.encoder.layers."
    if name.startswith(pre):
        idx, _, rest = name[len(pre):].partition(".")
        base = f"model.vision_tower.encoder.layer.{idx}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            suffix = rest.rsplit(".", 1)[1]
            return [(f"{base}attention.{p}_proj.{suffix}", third(i)) for i, p in enumerate("qkv")]
        per_layer = {
            "attn.proj.weight": "attention.projection_layer.weight",
            "attn.proj.bias": "attention.projection_layer.bias",
            "ls1": "lambda_1",
            "ls2": "lambda_2",
            "norm1.weight": "layernorm_before.weight",
            "norm1.bias": "layernorm_before.bias",
            "norm2.weight": "layernorm_after.weight",
            "norm2.bias": "layernorm_after.bias",
            "mlp.fc1.weight": "mlp.fc1.weight",
            "mlp.fc1.bias": "mlp.fc1.bias",
            "mlp.fc2.weight": "mlp.fc2.weight",
            "mlp.fc2.bias": "mlp.fc2.bias",
        }
        if rest in per_layer:
            return [(base + per_layer[rest], whole)]
    raise SystemExit(f"checkpoint tensor {name!r} has no mapping (spec §2.2)")


def load_model(ckpt: str, config, dtype):
    from safetensors import safe_open
    from transformers import InternVLForConditionalGeneration
    from transformers.initialization import no_init_weights

    state = {}
    n_orig = 0
    for path in common.checkpoint_files(ckpt):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                n_orig += 1
                for new_name, pick in map_name(name):
                    if new_name in state:
                        raise SystemExit(f"two checkpoint tensors map to {new_name}")
                    state[new_name] = pick(t).to(dtype)  # bf16 -> f32/f64 is exact

    config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    with no_init_weights():
        model = InternVLForConditionalGeneration(config)
    model = model.to(dtype)
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    for k in set(want) & set(state):
        if tuple(want[k].shape) != tuple(state[k].shape):
            raise SystemExit(f"shape mismatch for {k}: model {tuple(want[k].shape)}, checkpoint {tuple(state[k].shape)}")
    print(f"  strict load: {n_orig} checkpoint tensors -> {len(state)} after the qkv split; "
          f"model has {len(want)}; missing {len(missing)}, unexpected {len(unexpected)}")
    if missing or unexpected:
        raise SystemExit(f"strict load failed: missing {missing[:10]}, unexpected {unexpected[:10]}")
    result = model.load_state_dict(state, strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"strict load failed: {result}")
    model.eval()
    return model, n_orig, len(state)


def synth_command(args):
    """The converter command that makes the checkpoint, when --preset/--seed name a synthetic one (its sha256 in
    the manifest tells whether a regenerated checkpoint is the same)."""
    if args.preset not in ("tiny", "full") or args.seed is None:
        return None
    return (f"cargo run --release -p internvl-convert -- synth --preset {args.preset} --seed {args.seed} "
            f"-o {shlex.quote(args.ckpt)} --tokenizer-from /work/shared/model/InternVL2-1B")


def checkpoint_provenance(ckpt: str, args) -> dict:
    from safetensors import safe_open

    with safe_open(common.checkpoint_files(ckpt)[0], framework="pt") as f:
        meta = f.metadata() or {}
    preset = args.preset if args.preset is not None else meta.get("preset")
    seed = args.seed if args.seed is not None else meta.get("seed")
    if isinstance(seed, str) and seed.isdigit():
        seed = int(seed)
    return {
        "preset": preset,
        "seed": seed,
        "safetensors_sha256": common.checkpoint_sha256(ckpt),
        "config_json_sha256": common.sha256_file(os.path.join(ckpt, "config.json")),
        "safetensors_metadata": meta,
    }


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint dir in the original InternVL2-1B layout")
    ap.add_argument("--out", required=True, help="output dir for manifest.json and *.f32")
    ap.add_argument("--tiles", default=None, help="comma-separated tile indices (default 0,12; 0 with --save-minimal)")
    ap.add_argument("--tiles-npy", default=common.DEFAULT_TILES_NPY)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"], help="compute dtype (files are always f32)")
    ap.add_argument("--question", default=common.QUESTION)
    ap.add_argument("--subset-size", type=int, default=1024, help="vocab ids in logits_subset (default 1024)")
    ap.add_argument("--greedy-steps", type=int, default=8)
    ap.add_argument("--vit-out-tiles", type=int, default=None,
                    help="save vit_out for the first K tiles only (default: all)")
    ap.add_argument("--save-minimal", action="store_true",
                    help="full-size one-off: only proj_out, hidden_final, logits_last (1 tile by default)")
    ap.add_argument("--preset", default=None, help="provenance (default: safetensors metadata 'preset')")
    ap.add_argument("--seed", type=int, default=None, help="provenance (default: safetensors metadata 'seed')")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    dtype = {"f32": torch.float32, "f64": torch.float64}[args.dtype]
    tiles_idx = [int(s) for s in (args.tiles or ("0" if args.save_minimal else "0,12")).split(",")]

    import transformers
    from transformers import Qwen2Tokenizer

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    t0 = time.time()
    ckpt_cfg = common.load_checkpoint_config(args.ckpt)
    tok = Qwen2Tokenizer.from_pretrained(args.ckpt)
    image_token_id = tok.convert_tokens_to_ids(common.IMG_CONTEXT)
    if image_token_id != common.IMG_CONTEXT_ID:
        raise SystemExit(f"tokenizer maps {common.IMG_CONTEXT} to {image_token_id}, expected {common.IMG_CONTEXT_ID}")

    config, num_image_token = build_config(ckpt_cfg, image_token_id)
    model, n_orig, n_mapped = load_model(args.ckpt, config, dtype)
    checks = check_config(config, model)
    print(f"  model ready in {time.time() - t0:.1f}s")

    # Inputs.
    tiles_u8 = common.load_tiles(args.tiles_npy, tiles_idx)
    pixels = common.normalize_tiles(tiles_u8)
    pixel_sha = common.sha256_bytes(pixels.astype("<f4").tobytes())
    prompt = common.render_prompt(args.question, len(tiles_idx), num_image_token)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    n_ctx = sum(1 for i in ids if i == image_token_id)
    if n_ctx != num_image_token * len(tiles_idx):
        raise SystemExit(f"prompt has {n_ctx} {common.IMG_CONTEXT} ids, expected {num_image_token * len(tiles_idx)}")
    print(f"  prompt: {len(ids)} tokens ({n_ctx} image context), tiles {tiles_idx}, pixel sha256 {pixel_sha[:16]}…")

    vocab = config.text_config.vocab_size
    sub = common.subset_ids(vocab, args.subset_size)
    os.makedirs(args.out, exist_ok=True)
    arrays = {}

    def save(name, tensor, doc):
        a = tensor.detach().to(torch.float32).cpu().numpy()
        fname = name + ".f32"
        shape = common.write_f32(os.path.join(args.out, fname), a)
        arrays[name] = {"file": fname, "shape": shape, "doc": doc,
                        "sha256": common.sha256_file(os.path.join(args.out, fname))}
        print(f"  wrote {fname:28s} shape {shape}  max|x| {float(np.abs(a).max()):.4g}")

    pix = torch.from_numpy(pixels).to(dtype)
    ids_t = torch.tensor([ids], dtype=torch.long)
    inner = model.model

    # Stage 1: vision tower (before CLS drop).
    if not args.save_minimal:
        t1 = time.time()
        vit = inner.vision_tower(pixel_values=pix).last_hidden_state
        k = args.vit_out_tiles if args.vit_out_tiles is not None else len(tiles_idx)
        save("vit_out", vit[:k], f"vision tower last_hidden_state [tiles,1+patches,Dv] for the first {k} tile(s), "
             "CLS at row 0, no final norm (spec §3.1-3.6)")
        print(f"  vision tower {time.time() - t1:.1f}s")

    # Stage 2: projector output (CLS drop + pixel shuffle v2 + mlp1), flattened over tiles.
    t1 = time.time()
    image_out = inner.get_image_features(pixel_values=pix, return_dict=True)
    feats = image_out.pooler_output
    proj = feats.reshape(-1, feats.shape[-1])
    save("proj_out", proj, "get_image_features: [tiles*num_image_token, Dllm] in tile order (spec §3.7-3.9)")
    print(f"  vision+projector {time.time() - t1:.1f}s")

    # Stage 3: the whole prompt, with the final-norm output captured by a hook.
    captured = {}
    hook = inner.language_model.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    t1 = time.time()
    # The forward takes the image features just computed (what it would compute itself from pixel_values).
    out = model(input_ids=ids_t, mm_encoder_outputs={"image": image_out}, use_cache=not args.save_minimal,
                logits_to_keep=1 if args.save_minimal else 0)
    hook.remove()
    print(f"  prefill {time.time() - t1:.1f}s")
    hidden = captured["h"][0]
    logits = out.logits[0]
    save("hidden_final", hidden, "final RMSNorm output at every prompt position [N, Dllm] (spec §4)")
    save("logits_last", logits[-1], "lm_head logits at the last prompt position [V]")

    manifest_extra = {}
    if not args.save_minimal:
        sub_t = torch.from_numpy(sub)
        save("logits_subset", logits[:, sub_t], "logits at every prompt position for subset_ids [N, S]")

        # Greedy decode through transformers' KV cache: step k's logits choose greedy_ids[k]; step 0's logits are
        # the prompt's last-position logits, step k>=1 feeds greedy_ids[k-1] at position N+k-1.
        cache = out.cache
        step_logits = [logits[-1]]
        greedy = []
        for k in range(args.greedy_steps):
            cur = step_logits[-1]
            nxt = int(torch.argmax(cur))  # first maximum on ties
            greedy.append(nxt)
            if k + 1 < args.greedy_steps:
                o = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
                cache = o.cache
                step_logits.append(o.logits[0, -1])
        dl = torch.stack(step_logits)
        save("decode_logits_subset", dl[:, sub_t], "logits of each greedy step on subset_ids [steps, S]")
        top5 = []
        for row in dl:
            v, i = torch.topk(row.to(torch.float64), 5)
            top5.append({"ids": [int(x) for x in i], "values": [float(np.float32(x)) for x in v]})
        margins = [t["values"][0] - t["values"][1] for t in top5]
        print(f"  greedy ids {greedy}; min top1-top2 margin {min(margins):.4g}")
        manifest_extra = {
            "greedy_ids": greedy,
            "greedy_top5": top5,
            "greedy_top1_margin": margins,
            "greedy_doc": ("step k's logits choose greedy_ids[k] by argmax (first maximum on ties); step 0 = the "
                           "prompt's last-position logits (= logits_last), step k>=1 = logits after feeding "
                           "greedy_ids[k-1] at position N+k-1 with the KV cache of all earlier positions"),
        }

    manifest = {
        "magic": MAGIC,
        "version": VERSION,
        "regenerate": "python3 " + " ".join(shlex.quote(a) for a in sys.argv),
        "regenerate_checkpoint": synth_command(args),
        "checkpoint": checkpoint_provenance(args.ckpt, args),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "reference": "transformers InternVLForConditionalGeneration, eager attention",
        "compute_dtype": args.dtype,
        "minimal": args.save_minimal,
        "config_checks": checks,
        "hparams": {
            "vision": {k: ckpt_cfg["vision_config"][k] for k in (
                "image_size", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "layer_norm_eps")},
            "llm": {k: ckpt_cfg["llm_config"][k] for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_theta", "rms_norm_eps")},
            "downsample_ratio": ckpt_cfg["downsample_ratio"],
            "num_image_token": num_image_token,
        },
        "tensors": {"checkpoint": n_orig, "after_qkv_split": n_mapped},
        "tiles_npy": os.path.basename(args.tiles_npy),
        "tiles_npy_sha256": common.sha256_file(args.tiles_npy),
        "tiles": tiles_idx,
        "normalize": common.NORMALIZE_DOC,
        "pixel_shape": list(pixels.shape),
        "pixel_sha256": pixel_sha,
        "question": args.question,
        "prompt": prompt.replace(common.IMG_CONTEXT * n_ctx, f"<IMG_CONTEXT>*{n_ctx}"),
        "n_tokens": len(ids),
        "ids": ids,
        "subset_ids": [int(x) for x in sub] if not args.save_minimal else [],
        **manifest_extra,
        "arrays": arrays,
        "layout": "raw little-endian float32, C order, shapes in PyTorch order",
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    # Keep number lists (ids, subset ids, shapes, top-5) on one line each.
    text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    total = sum(os.path.getsize(os.path.join(args.out, a["file"])) for a in arrays.values())
    print(f"  done in {time.time() - t0:.1f}s; {len(arrays)} arrays, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
