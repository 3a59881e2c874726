"""Metrics, plot and markdown of the bitsandbytes comparison (called by bench/bnb_compare.py).

Every metric is against the f32 reference (transformers, float32), on the same inputs:
- vision cosine: cosine of the projector output (the 256 rows the LLM sees) per tile; min and mean over tiles;
- teacher-forced next-token distributions at every scored position (from </img> to the end of the reference's
  greedy continuation, the sequence fed being prompt ++ reference greedy tokens):
  KL(ref || variant) in nats, mean and 99th percentile over all positions of all prompts; top-1 agreement; and
  dp = p_variant(t) - p_ref(t) for t the reference's top-1 token (mean, and mean |dp|);
- greedy: prompts whose first G greedy tokens equal the reference's, and the mean length of the common prefix;
- weights: bytes of weights in memory (transformers get_memory_footprint; ours the mapped GGUF tensors) and file;
- peak RSS (VmHWM of the variant's own process), load time, vision ms per tile, prefill and decode tok/s
  (sums over prompts: all tiles / all vision time, all prompt tokens / all prefill time, all decode steps / all
  decode time; a warm-up before the first prompt is not counted).
"""

import json
import os
import platform
import subprocess

import numpy as np

import bnb_common as bc


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(inputs, ref_dir, var_dir, ref_res, var_res):
    n_img = inputs["num_image_token"]
    cos, kl, top1, dp = [], [], [], []
    exact, prefix = 0, []
    for i, p in enumerate(inputs["prompts"]):
        rp, vp = ref_res["prompts"][i], var_res["prompts"][i]
        a = bc.read_f32(os.path.join(ref_dir, f"proj_{i}.f32"), rp["proj_shape"]).astype(np.float64)
        b = bc.read_f32(os.path.join(var_dir, f"proj_{i}.f32"), vp["proj_shape"]).astype(np.float64)
        for t in range(len(p["tiles"])):
            x, y = a[t * n_img:(t + 1) * n_img].ravel(), b[t * n_img:(t + 1) * n_img].ravel()
            cos.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
        if list(rp["logits_shape"]) != list(vp["logits_shape"]):
            raise SystemExit(f"prompt {i}: logits shapes differ: {rp['logits_shape']} vs {vp['logits_shape']}")
        lr = log_softmax(bc.read_f32(os.path.join(ref_dir, f"logits_{i}.f32"), rp["logits_shape"]))
        lv = log_softmax(bc.read_f32(os.path.join(var_dir, f"logits_{i}.f32"), vp["logits_shape"]))
        pr = np.exp(lr)
        kl.extend((pr * (lr - lv)).sum(axis=-1).tolist())
        t_ref = lr.argmax(axis=-1)
        top1.extend((lv.argmax(axis=-1) == t_ref).tolist())
        rows = np.arange(len(t_ref))
        dp.extend((np.exp(lv[rows, t_ref]) - pr[rows, t_ref]).tolist())
        g_ref, g_var = rp["greedy"], vp["greedy"]
        exact += g_ref == g_var
        n = 0
        while n < min(len(g_ref), len(g_var)) and g_ref[n] == g_var[n]:
            n += 1
        prefix.append(n)
    kl = np.maximum(np.asarray(kl), 0.0)  # float64 rounding can leave -1e-17 where the two are equal
    return {
        "vision_cos_min": min(cos), "vision_cos_mean": float(np.mean(cos)), "vision_cos": cos,
        "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(kl.max()),
        "top1": float(np.mean(top1)), "dp_mean": float(np.mean(dp)), "dp_abs_mean": float(np.mean(np.abs(dp))),
        "n_positions": int(len(kl)), "greedy_exact": int(exact), "greedy_prefix_mean": float(np.mean(prefix)),
        "greedy_prefix": prefix,
    }


def speed(res):
    ps = res["prompts"]
    return {
        "vision_ms_per_tile": 1e3 * sum(p["vision_s"] for p in ps) / sum(p["n_tiles"] for p in ps),
        "prefill_tok_s": sum(p["n_prompt"] for p in ps) / sum(p["prefill_s"] for p in ps),
        "decode_tok_s": sum(p["n_decode"] for p in ps) / max(sum(p["decode_s"] for p in ps), 1e-9),
    }


def summarize(inputs, runs_dir, variants, failures, ggufs):
    ref_dir = os.path.join(runs_dir, bc.REFERENCE)
    ref_res = bc.read_json(os.path.join(ref_dir, bc.RESULT_FILE))
    rows = {}
    for v in variants:
        if v in failures:
            continue
        d = os.path.join(runs_dir, v)
        res = bc.read_json(os.path.join(d, bc.RESULT_FILE))
        row = {"label": bc.VARIANTS[v]["label"], "kind": bc.VARIANTS[v]["kind"],
               "weight_bytes": res["weight_bytes"], "file_bytes": res.get("file_bytes"),
               "peak_rss_bytes": res["peak_rss_bytes"], "load_s": res["load_s"], "warmup_s": res["warmup_s"],
               **speed(res), **compare(inputs, ref_dir, d, ref_res, res)}
        if v in ggufs:
            row["convert_flags"] = bc.VARIANTS[v]["convert"]
            row["gguf"] = ggufs[v]
        if "linears" in res:
            row["linears"] = res["linears"]
        rows[v] = row
    return {"rows": rows, "failures": failures, "order": [v for v in variants if v in rows]}


def _cmd(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True, cwd=bc.ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(ckpt, threads, args, work, total_s):
    import torch
    import transformers

    try:
        import bitsandbytes
        bnb_version = bitsandbytes.__version__
    except ImportError as e:
        bnb_version = f"not importable ({e})"
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(x for x in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
                                     if x in have)
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    from safetensors import safe_open
    with safe_open(bc.ref_common.checkpoint_files(ckpt)[0], framework="pt") as f:
        st_meta = f.metadata() or {}
    return {
        "ckpt": ckpt, "ckpt_metadata": st_meta, "weights": weights_kind(ckpt, args.synthetic), "threads": threads, "cpu": cpu, "cpu_flags": flags,
        "logical_cpus": os.cpu_count(), "mem_bytes": mem, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "bitsandbytes": bnb_version,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "git": _cmd(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_cmd(["git", "status", "--porcelain", "--untracked-files=no"])),
        # Which files: uncommitted documentation is not uncommitted code.
        "git_dirty_files": (_cmd(["git", "diff", "--name-only", "HEAD"]) or "").split(),
        "kv_type": args.kv_type, "gen_tokens": args.gen_tokens, "work": work, "total_s": total_s,
        "command": "python3 bench/bnb_compare.py --ckpt " + ckpt + " --out " + args.out
                   + ("" if args.prompts == len(bc.PROMPTS) else f" --prompts {args.prompts}")
                   + ("" if getattr(args, "build", "native") == "native" else f" --build {args.build}"),
    }


def weights_kind(ckpt, override):
    """Whether the checkpoint holds random weights: `internvl-convert synth` draws every RMSNorm weight from
    1 + N(0, 0.02), which no trained Qwen2 final norm looks like. --synthetic yes/no overrides the guess."""
    from safetensors import safe_open

    name = "language_model.model.norm.weight"
    stat = None
    for path in bc.ref_common.checkpoint_files(ckpt):
        with safe_open(path, framework="pt") as f:
            if name in f.keys():
                w = f.get_tensor(name).float()
                stat = (float(w.mean()), float(w.std()))
                break
    if override in ("yes", "no"):
        return {"synthetic": override == "yes", "how": "--synthetic " + override, "final_norm_mean_std": stat}
    synthetic = stat is not None and abs(stat[0] - 1.0) < 0.01 and stat[1] < 0.05
    how = ("final RMSNorm weight mean {:.4f}, std {:.4f}".format(*stat) if stat else f"{name} not found")
    return {"synthetic": synthetic, "how": how, "final_norm_mean_std": stat}


# ------------------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------------------

def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    order = summary["order"]
    colors = {"hf": "#8c8c8c", "ours": "#1f77b4"}
    panels = [
        ("kl_mean", "KL(ref || variant), mean [nats]", True),
        ("kl_p99", "KL, 99th percentile [nats]", True),
        ("top1", "top-1 agreement with f32", False),
        ("weight_bytes", "weights in memory [MB]", False),
        ("peak_rss_bytes", "peak RSS [MB]", False),
        ("vision_ms_per_tile", "vision ms per tile (lower is better)", False),
        ("prefill_tok_s", "prefill tok/s", False),
        ("decode_tok_s", "decode tok/s", False),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    for ax, (key, title, log) in zip(axes.ravel(), panels):
        accuracy = key.startswith("kl") or key == "top1"
        vals = []
        for v in order:
            x = rows[v][key]
            if key.endswith("_bytes"):
                x = x / 1e6
            # The reference against itself is 0 / 1 by definition: no bar (a log axis cannot show 0).
            vals.append(float("nan") if accuracy and v == bc.REFERENCE else x)
        cols = []
        for v in order:
            c = colors[rows[v]["kind"]]
            if v.startswith("bnb"):
                c = "#d62728"
            if v == bc.REFERENCE:
                c = "#2ca02c"
            cols.append(c)
        shown = [0 if np.isnan(x) else (max(x, 1e-15) if log else x) for x in vals]
        bars = ax.barh(range(len(order)), shown, color=cols)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels(order if ax in axes[:, 0] else [""] * len(order), fontsize=9)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        finite = [x for x in vals if not np.isnan(x)]
        if log:
            ax.set_xscale("log")
            pos = [x for x in finite if x > 0]
            if pos:
                ax.set_xlim(min(pos) / 3, max(pos) * 30)
        elif finite:
            ax.set_xlim(0, max(finite) * 1.22)
        for i, (b, x) in enumerate(zip(bars, vals)):
            if np.isnan(x):
                txt = "reference"
            elif key == "top1":
                txt = f"{x:.3f}"
            else:
                txt = f"{x:.2g}" if log or abs(x) < 10 else f"{x:.0f}"
            at = ax.get_xlim()[0] if np.isnan(x) or (log and x <= 0) else b.get_width()
            ax.text(at, i, " " + txt, va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    meta = summary.get("meta", {})
    fig.suptitle(f"InternVL2-1B 8-bit comparison vs the f32 reference ({os.path.basename(meta.get('ckpt', ''))}; "
                 f"{meta.get('threads')} threads, {meta.get('cpu', '')}); green: f32 reference, grey: transformers, "
                 f"red: bitsandbytes, blue: ours"
                 + ("\nBUSY MACHINE during this run: the speed panels are noise" if busy_note(meta) else ""),
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------------

def _mb(x):
    return "–" if x is None else f"{x / 1e6:,.0f}"


def table(summary):
    rows = summary["rows"]
    head = ("| variant | vision cos min / mean | KL mean | KL p99 | top-1 | dp mean (mean abs) | greedy 32 exact "
            "(mean prefix) | weights MB (file) | peak RSS MB | load s | vision ms/tile | prefill tok/s | "
            "decode tok/s |")
    lines = [head, "|" + "---|" * 13]
    n_prompts = None
    for v in summary["order"]:
        r = rows[v]
        n_prompts = len(r["greedy_prefix"])
        file_mb = f" ({_mb(r['file_bytes'])})" if r.get("file_bytes") else ""
        lines.append(
            f"| {r['label']} | {r['vision_cos_min']:.6f} / {r['vision_cos_mean']:.6f} | {r['kl_mean']:.3g} | "
            f"{r['kl_p99']:.3g} | {r['top1']:.3f} | {r['dp_mean']:+.2g} ({r['dp_abs_mean']:.2g}) | "
            f"{r['greedy_exact']}/{n_prompts} ({r['greedy_prefix_mean']:.1f}) | {_mb(r['weight_bytes'])}{file_mb} | "
            f"{_mb(r['peak_rss_bytes'])} | {r['load_s']:.2f} | {r['vision_ms_per_tile']:,.0f} | "
            f"{_num(r['prefill_tok_s'])} | {_num(r['decode_tok_s'])} |")
    return "\n".join(lines)


def markdown(summary, inputs, png_name):
    # Filled in by verdict()/notes below; kept separate so the wording can be read on its own.
    return "\n".join(_sections(summary, inputs, png_name)) + "\n"


def _sections(summary, inputs, png_name):
    meta = summary["meta"]
    rows = summary["rows"]
    out = ["# InternVL2-1B at 8 bits: ours vs bitsandbytes LLM.int8()", ""]
    out += [f"Regenerate (one command, {meta['total_s'] / 60:.0f} min here): `{meta['command']}`", ""]
    out += ["> **" + ("Random weights." if meta["weights"]["synthetic"] else "Weights.") + "** "
            + random_weights_note(meta), ""]
    busy = busy_note(meta)
    if busy:
        out += ["> **Busy machine.** " + busy, ""]
    out += [table(summary), "", f"![comparison plot]({png_name})", ""]
    out += ["## Where ours q8_0 stands against bitsandbytes int8", ""] + verdict(rows, meta) + [""]
    out += gemm_section(meta)
    out += ["## Setup", ""] + setup(meta, inputs, rows) + [""]
    out += ["## Definitions", ""] + definitions(meta) + [""]
    if summary["failures"]:
        out += ["## Variants that failed", ""]
        for v, f in summary["failures"].items():
            out += [f"- `{v}`: `{f['command']}` exited {f['exit_status']}:", "", "```"] + f["tail"] + ["```", ""]
    return out


def _gemm_pick(rows, shape, kind):
    return next((r for r in rows if r["shape"] == shape and r["kind"] == kind), None)


def gemm_section(meta):
    """The single-product timings behind the speed differences, when the run measured them."""
    g = meta.get("gemm")
    if not g or not g.get("ours") or not g.get("torch"):
        return []
    shapes = g["shapes"].split(",")
    kinds = [("ours", "f32", "ggml f32"), ("ours", "f16", "ggml f16"),
             ("ours", "q8_0", "ggml q8_0 (ours q8_0 without AVX-512 VNNI)"),
             ("ours", "q4_0", "ggml q4_0"), ("ours", "q4_0 repacked", "ggml q4_0, repacked layout"),
             ("ours", "panels-q8_0 (avx512-vnni)", "our q8_0 panel kernel (ours q8_0 on this CPU)"),
             ("ours", "int8 (avx512-vnni)", "our int8 kernel (ours `--weights int8` on f16/f32 weights)"),
             ("torch", "f32", "PyTorch f32"), ("torch", "bf16", "PyTorch bf16"),
             ("torch", "int8 torch._int_mm", "PyTorch int8 `torch._int_mm` alone"),
             ("torch", "bnb Linear8bitLt", "bitsandbytes `Linear8bitLt` (bnb int8)")]
    out = ["## Why the speeds differ: one matrix product, measured", "",
           f"Each system's product of one weight matrix with a batch of activations, alone, "
           f"{g.get('threads', meta['threads'])} threads "
           "(`benches/gemm.rs`, `bench/gemm_torch.py`, run by this command; shape = tokens x inputs x "
           "outputs, GFLOP/s counts 2 operations per multiply-add, int8 ones included):", "",
           "| product | " + " | ".join(f"{s} ms | {s} GFLOP/s" for s in shapes) + " |",
           "|---|" + "---:|---:|" * len(shapes)]
    for side, kind, label in kinds:
        cells = []
        for shp in shapes:
            r = _gemm_pick(g[side], shp, kind)
            cells += [f"{r['ms']:.1f}", f"{r['gflops']:,.0f}"] if r else ["-", "-"]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    vit = shapes[0]
    q8, bnb, im = (_gemm_pick(g["ours"], vit, "q8_0"), _gemm_pick(g["torch"], vit, "bnb Linear8bitLt"),
                   _gemm_pick(g["torch"], vit, "int8 torch._int_mm"))
    if q8 and bnb and im:
        out += ["", f"On the ViT's product ggml's q8_0 kernel reaches {q8['gflops']:,.0f} GFLOP/s; bitsandbytes' "
                f"LLM.int8() layer {bnb['gflops']:,.0f} (quantizing the activations, searching them for outliers and "
                f"rescaling included), of which the int8 GEMM itself (`torch._int_mm`, PyTorch's own int8 kernel on this CPU's "
                f"AVX-512 VNNI instructions) runs at {im['gflops']:,.0f}. In eval mode bitsandbytes 0.50 on the CPU does run LLM.int8() "
                "(in training mode it dequantizes the weight and runs a float product instead). ggml's q8_0 product "
                "instead multiplies blocks of 32 weights, each with its own f16 scale, against activations "
                "quantized in blocks of 32, and rescales every block's integer sum in floating point. On CPUs with "
                "AVX-512 VNNI ours no longer uses it: the q8_0 values are rearranged at load into panels for our "
                "own kernel, the same block arithmetic with `vpdpbusd` on 64-byte operands (src/panels/)."]
        pq8 = _gemm_pick(g["ours"], vit, "panels-q8_0 (avx512-vnni)")
        if pq8:
            out[-1] += (f" It reaches {pq8['gflops']:,.0f} GOP/s here, quantization included: "
                        f"{pq8['gflops'] / q8['gflops']:.1f}x ggml's q8_0 and {pq8['gflops'] / bnb['gflops']:.1f}x "
                        "bitsandbytes' layer.")
        i8 = _gemm_pick(g["ours"], vit, "int8 (avx512-vnni)")
        if i8:
            out += ["", f"Our own int8 kernel (`--weights int8` on f16/f32 weights: `vpdpbusd` on weights packed at load, a 12 x 32 "
                    f"register tile, activations quantized per token and group of 128) reaches {i8['gflops']:,.0f} "
                    f"GOP/s on the same product, quantization included: {i8['gflops'] / q8['gflops']:.1f}x ggml's "
                    f"q8_0 and {i8['gflops'] / bnb['gflops']:.1f}x bitsandbytes' layer, "
                    f"{i8['gflops'] / im['gflops']:.2f}x of `torch._int_mm` alone."]
    return out + [""]


def random_weights_note(meta):
    w = meta["weights"]
    if w["synthetic"]:
        what = (f"This run used a synthetic checkpoint with random weights ({w['how']}: the N(1, 0.02) init of "
                "`internvl-convert synth`).")
    else:
        what = (f"This run used a checkpoint that does not look synthetic ({w['how']}), so the accuracy figures "
                "are those of real weights. For runs on a synthetic checkpoint:")
    return (what + " Random weights have none of the outlier features (a few activation dimensions of very large "
            "magnitude) that trained LLMs develop and that LLM.int8() was designed for: its mixed-precision "
            "decomposition keeps those columns in 16-bit, and here it has (almost) nothing to keep. The accuracy "
            "figures below therefore show the quantization error of each scheme on well-behaved numbers and are a "
            "lower bound on the differences a trained checkpoint shows; the memory and speed figures do not depend "
            "on the weights' values. Run the same command on the real checkpoint to get the real accuracy gap.")


OURS = "ours-q8_0"
BNB = ("bnb-int8-all", "bnb-int8-llm")


def _num(x):
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _ratio(a, b):
    return a / b if b else float("inf")


def busy_note(meta):
    """A warning when the load average says other work shared the cores during the run."""
    loads = [float(x) for x in (meta["loadavg_start"].split()[:1] + meta["loadavg_end"].split()[:1])]
    limit = (meta["logical_cpus"] or 1) + 0.5
    if max(loads) <= limit:
        return None
    return (f"The 1-minute load average was {loads[0]:.1f} at the start and {loads[1]:.1f} at the end of this run on "
            f"{meta['logical_cpus']} logical CPUs: other processes shared the cores, so the speed columns (and the "
            "speed statements below) are noise, not a measurement. Accuracy and memory do not depend on it. Rerun "
            "on a quiet machine for timings.")


def speed_parts(o, r):
    """"vision ms/tile A vs B (1.23x)" for each speed measure of ours `o` against `r`, and the measures where ours
    is slower."""
    parts, slower = [], []
    for key, name, higher_better in (("vision_ms_per_tile", "vision ms/tile", False),
                                     ("prefill_tok_s", "prefill tok/s", True),
                                     ("decode_tok_s", "decode tok/s", True)):
        ours_better = (o[key] > r[key]) if higher_better else (o[key] < r[key])
        x = _ratio(o[key], r[key]) if higher_better else _ratio(r[key], o[key])
        parts.append(f"{name} {_num(o[key])} vs {_num(r[key])} ({x:.2f}x{'' if ours_better else ', ours SLOWER'})")
        if not ours_better:
            slower.append(name)
    return parts, slower


def verdict(rows, meta):
    """Plain statements of where ours q8_0 stands against each bnb variant, with the reason where it loses."""
    native_bf16 = any(f in meta.get("cpu_flags", "") for f in ("avx512_bf16", "amx"))
    if OURS not in rows:
        return ["`ours-q8_0` did not run, so there is nothing to state."]
    o = rows[OURS]
    out = []
    bf16 = rows.get("ref-bf16")
    head = rows.get("ours-q8_0-f16head")
    for b in BNB:
        if b not in rows:
            out.append(f"- `{b}` did not run (see *Variants that failed*).")
            continue
        r = rows[b]
        out += [f"**vs {r['label']}**", ""]
        # Accuracy.
        better = o["kl_mean"] < r["kl_mean"]
        line = (f"- KL divergence: ours {o['kl_mean']:.3g} mean / {o['kl_p99']:.3g} p99 against {r['kl_mean']:.3g} / "
                f"{r['kl_p99']:.3g}: ours is {'lower' if better else 'HIGHER'} "
                f"({_ratio(max(o['kl_mean'], r['kl_mean']), min(o['kl_mean'], r['kl_mean'])):.2f}x on the mean); top-1 "
                f"agreement {o['top1']:.3f} vs {r['top1']:.3f}. ")
        if better:
            line += ("Why: q8_0 stores one f16 scale per 32 weights where LLM.int8() stores one per output row "
                     "(896 to 4864 weights), and ggml quantizes the activations in blocks of 32 where bitsandbytes "
                     "quantizes a whole token row with one scale (columns above the 6.0 threshold kept in fp16)")
            if bf16:
                line += (f"; bitsandbytes also runs everything else in bfloat16 as the model card asks, and the "
                         f"bf16 reference alone is at KL {bf16['kl_mean']:.3g} "
                         f"({100 * _ratio(bf16['kl_mean'], r['kl_mean']):.0f}% of this bnb figure)")
            line += "."
        else:
            line += ("Why: ours also quantizes the token embedding and the output head (lm_head, 151655 x 896, a fifth "
                     "of the LLM's weights) to q8_0, which bitsandbytes leaves in bfloat16")
            if head:
                line += (f" (with those two at f16, the diagnostic row, ours is at {head['kl_mean']:.3g}: "
                         f"{'lower' if head['kl_mean'] < r['kl_mean'] else 'still higher'} than bnb)")
            line += ("; and ggml's CPU matmul quantizes the activations to q8_0 before every quantized matrix "
                     "product, where LLM.int8() keeps outlier columns above 6.0 in fp16.")
        out.append(line)
        # Memory.
        smaller = o["peak_rss_bytes"] < r["peak_rss_bytes"]
        line = (f"- Memory: peak RSS {_mb(o['peak_rss_bytes'])} MB vs {_mb(r['peak_rss_bytes'])} MB, weights "
                f"{_mb(o['weight_bytes'])} MB vs {_mb(r['weight_bytes'])} MB: ours is "
                f"{'smaller' if smaller else 'LARGER'} "
                f"({_ratio(max(o['peak_rss_bytes'], r['peak_rss_bytes']), min(o['peak_rss_bytes'], r['peak_rss_bytes'])):.1f}x in peak RSS). ")
        if smaller:
            line += ("Why: no Python/PyTorch runtime, the weights are mapped from the GGUF file instead of "
                     "loaded, converted and quantized in memory, and the embedding and lm_head are 8-bit "
                     "instead of bf16 (bitsandbytes skips the output head).")
        else:
            line += ("Why: ours maps the whole GGUF file and the peak counts every page of it that was touched, "
                     "plus the KV cache and the graph buffers sized for the largest batch.")
        out.append(line)
        # Speed.
        parts, slower = speed_parts(o, r)
        line = "- Speed: " + "; ".join(parts) + ". "
        reasons = {
            "vision ms/tile": ("the ViT's 1025-token matrix products are large GEMMs, where bitsandbytes' "
                               "torch._int_mm (PyTorch's int8 GEMM on its AVX-512 path) is at its best and ggml "
                               "computes q8_0 x q8_0 block dot products after quantizing the activations"),
            "prefill tok/s": ("prefill is the same large-GEMM case as vision (several hundred tokens per product), "
                              "PyTorch's int8 GEMM against ggml's q8_0 block dot products"),
            "decode tok/s": ("decode multiplies one token row per step, which is bound by reading the weights; ours "
                             "reads fewer bytes (q8_0 lm_head instead of bf16), so a loss here points at per-step "
                             "overhead (graph build and scheduling per token) rather than at the kernels"),
        }
        if not slower:
            line += ("Why: ours multiplies the 8-bit weights directly (on CPUs with AVX-512 VNNI our panel "
                     "kernels, `vpdpbusd` on the file's q8_0 values rearranged at load; elsewhere ggml's q8_0 "
                     "kernels), while LLM.int8() on the CPU "
                     "quantizes each activation row, searches it for outlier columns, runs torch._int_mm, "
                     "rescales and adds the fp16 outlier product as separate PyTorch operations, and every other "
                     "operation (attention, norms, the bf16 lm_head" + ("" if native_bf16 else
                     ", on a CPU without native bf16 arithmetic") + ") runs through PyTorch in bfloat16 with "
                     "per-call Python overhead.")
        else:
            measured = bool(meta.get("gemm", {}).get("ours")) and bool(meta.get("gemm", {}).get("torch"))
            line += "Ours is SLOWER at " + ", ".join(slower) + (
                ". Why (the single products are timed in the next section): " if measured
                else ". Likely why (not measured here): ") + "; ".join(f"{n}: {reasons[n]}" for n in slower) + "."
        out.append(line)
        out.append(f"- Load: {o['load_s']:.2f} s vs {r['load_s']:.2f} s; ours maps the file and checks it, "
                   "bitsandbytes reads the bf16 weights and quantizes them while loading. Ours pays for reading "
                   f"the weights at first use instead: the untimed warm-up (one tile, 8 tokens, one step) took "
                   f"{o['warmup_s']:.1f} s vs {r['warmup_s']:.1f} s.")
        out.append("")
    vf16, head = rows.get("ours-q8_0-vf16"), rows.get("ours-q8_0-f16head")
    if vf16 or head:
        line = f"**Where ours' own 8-bit error comes from** (ours q8_0: KL {o['kl_mean']:.3g}):"
        if vf16:
            line += (f" with the vision part at f16 it is {vf16['kl_mean']:.3g} "
                     f"({100 * (1 - _ratio(vf16['kl_mean'], o['kl_mean'])):.0f}% less; vision cosine "
                     f"{o['vision_cos_min']:.6f} -> {vf16['vision_cos_min']:.6f});")
        if head:
            line += (f" with the token embedding and lm_head at f16 (what bitsandbytes leaves unquantized) it is "
                     f"{head['kl_mean']:.3g}.")
        out += [line, ""]
    i8, b = rows.get("ours-f16-int8"), rows.get("bnb-int8-all")
    if i8 and b:
        parts, _ = speed_parts(i8, b)
        out += [f"**Ours with its own int8 kernels** (`--weights int8` on the f16 file: the vision matrices in int8 "
                f"with a scale per 128 inputs, int8 copies of the language model's for prefill, AVX-512 VNNI; on a "
                f"q8_0 file the same flag keeps the q8_0 values in the panels, so row `ours q8_0, --weights int8` is "
                f"the default layout again) against "
                f"{b['label']}: " + "; ".join(parts) + f"; KL {i8['kl_mean']:.3g} vs {b['kl_mean']:.3g} (ours q8_0 "
                f"at the defaults: {o['kl_mean']:.3g}), vision cosine min {i8['vision_cos_min']:.6f} vs "
                f"{b['vision_cos_min']:.6f}; peak RSS {_mb(i8['peak_rss_bytes'])} MB vs {_mb(b['peak_rss_bytes'])} MB. "
                "The same instruction as bitsandbytes' torch._int_mm (vpdpbusd), on weights packed once at load, a "
                "register-tiled kernel, and finer scales (per 128 inputs instead of per row); decoding, and so the "
                "teacher-forced logits here, still runs on the f16 weights over the cache the int8 prefill filled.",
                ""]
    return out


def dirty_note(meta):
    if not meta.get("git_dirty"):
        return ""
    files = meta.get("git_dirty_files")
    return f" (uncommitted changes in: {', '.join(files)})" if files else " (with uncommitted changes)"


def build_line(meta):
    b = meta.get("build")
    if not b:
        return "build not recorded"
    if b["kind"] == "native":
        return (f"built for this CPU (`RUSTFLAGS=\"{b['rustflags']}\"`: llama-cpp-sys-2 configures ggml with "
                "GGML_NATIVE=ON, so its AVX-512/VNNI kernels are compiled in, as PyTorch selects its AVX-512 kernels "
                "at run time)")
    return (f"portable build (cargo defaults{', RUSTFLAGS=' + repr(b['rustflags']) if b['rustflags'] else ''}: ggml "
            "compiled for AVX2, the build CI and packages use)")


def setup(meta, inputs, rows):
    prompts = inputs["prompts"]
    n_pos = next(iter(rows.values()))["n_positions"] if rows else 0
    lines = [
        f"- machine: {meta['cpu']}, {meta['logical_cpus']} logical CPUs ({meta['cpu_flags']}; torch CPU capability "
        f"{meta['torch_cpu_capability']}), {meta['mem_bytes'] / 2**30:.0f} GiB; every system ran with "
        f"{meta['threads']} threads, one variant at a time, each in its own process; load average "
        f"{meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end.",
        f"- versions: torch {meta['torch']}, transformers {meta['transformers']}, bitsandbytes "
        f"{meta['bitsandbytes']}, python {meta['python']}; ours at git {meta['git']}"
        f"{dirty_note(meta)}; pinned in bench/requirements-bnb.txt.",
        f"- checkpoint: `{meta['ckpt']}` ({'random weights' if meta['weights']['synthetic'] else 'not synthetic'}: "
        f"{meta['weights']['how']}).",
        f"- inputs: {len(prompts)} prompts, {inputs['pixel_shape'][0]} tiles of 448x448, pixel sha256 "
        f"{inputs['pixel_sha256'][:16]}..., {n_pos} scored positions in all; greedy {meta['gen_tokens']} tokens:",
    ]
    for p in prompts:
        lines.append(f"  - `{p['name']}`: {p['image']} ({p['tile_spec']}: {len(p['tiles'])} tile(s)), "
                     f"\"{p['question']}\", {len(p['ids'])} prompt tokens, scored from position {p['score_from']}")
    lines += [
        "- the same float32 pixel tensor and token ids go to every system (bench/bnb_common.py writes them once; "
        "examples/eval_dump.rs and bench/bnb_hf_worker.py read them).",
        "- transformers: its own `InternVLForConditionalGeneration` (InternVL2's remote code does not run on "
        "transformers 5) built from the checkpoint with the renaming of spec §2.2 (tests/reference/make_goldens.py), "
        "SDPA attention. bitsandbytes: `BitsAndBytesConfig(load_in_8bit=True)` with `dtype=torch.bfloat16` as the "
        "model card's `load_in_8bit=True, torch_dtype=torch.bfloat16`; threshold 6.0; transformers keeps `lm_head` "
        "in bf16 on its own; the LLM-only variant adds `llm_int8_skip_modules=[model.vision_tower, "
        "model.multi_modal_projector, lm_head]`. bitsandbytes casts the bf16 activations to fp16 to quantize them.",
        f"- ours: `internvl-convert convert` per variant, KV cache {meta['kv_type']} (the runtime's default) unless "
        "said, CPU backend, default weight layout (on CPUs with AVX-512 VNNI q8_0/q4_0 matrices in our panels, elsewhere ggml's repacked layout where it has one for the type); " + build_line(meta)
        + ".",
        "- what each variant quantizes (transformers: Linear layers per part and their type; ours: converter flags):",
    ]
    for v, r in rows.items():
        kv = bc.VARIANTS.get(v, {}).get("kv")
        what = (" ".join(r["convert_flags"]) + (f", KV cache {kv}" if kv else "") if "convert_flags" in r else
                ", ".join(f"{k}: {'/'.join(f'{n} {t}' for t, n in d.items())}" for k, d in r.get("linears", {}).items()))
        lines.append(f"  - `{v}`: {what}")
    return lines


def definitions(meta):
    return [__doc__.split("\n", 2)[2].strip(),
            "",
            "The teacher-forced logits of ours come from the runtime itself: after the greedy run the KV cache is cut "
            "back to `</img>` and the sequence is fed one token at a time through `Session::decode`, so every scored "
            "distribution is the runtime's own lm_head output. The `ours f32, f32 KV` row checks the harness: its KL "
            "against the reference is float32 noise."]
