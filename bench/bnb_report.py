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
        "ckpt": ckpt, "ckpt_metadata": st_meta, "threads": threads, "cpu": cpu, "cpu_flags": flags,
        "logical_cpus": os.cpu_count(), "mem_bytes": mem, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "bitsandbytes": bnb_version,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "git": _cmd(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_cmd(["git", "status", "--porcelain", "--untracked-files=no"])),
        "kv_type": args.kv_type, "gen_tokens": args.gen_tokens, "work": work, "total_s": total_s,
        "command": "python3 bench/bnb_compare.py --ckpt " + ckpt + " --out " + args.out
                   + ("" if args.prompts == len(bc.PROMPTS) else f" --prompts {args.prompts}"),
    }


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
    labels = [v for v in order]
    for ax, (key, title, log) in zip(axes.ravel(), panels):
        vals = []
        for v in order:
            x = rows[v][key]
            if key.endswith("_bytes"):
                x = x / 1e6
            vals.append(x)
        shown = [max(x, 1e-12) for x in vals] if log else vals
        cols = []
        for v in order:
            c = colors[rows[v]["kind"]]
            if v.startswith("bnb"):
                c = "#d62728"
            if v == bc.REFERENCE:
                c = "#2ca02c"
            cols.append(c)
        bars = ax.barh(range(len(order)), shown, color=cols)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels(labels if ax in axes[:, 0] else [""] * len(order), fontsize=9)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        for b, x in zip(bars, vals):
            txt = f"{x:.2g}" if log or abs(x) < 10 else f"{x:.0f}"
            if key == "top1":
                txt = f"{x:.3f}"
            ax.text(b.get_width(), b.get_y() + b.get_height() / 2, " " + txt, va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    meta = summary.get("meta", {})
    fig.suptitle(f"InternVL2-1B 8-bit comparison vs the f32 reference ({os.path.basename(meta.get('ckpt', ''))}; "
                 f"{meta.get('threads')} threads, {meta.get('cpu', '')}); green: f32 reference, grey: transformers, "
                 f"red: bitsandbytes, blue: ours", fontsize=11)
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
            f"{_mb(r['peak_rss_bytes'])} | {r['load_s']:.2f} | {r['vision_ms_per_tile']:.0f} | "
            f"{r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} |")
    return "\n".join(lines)


def markdown(summary, inputs, png_name):
    # Filled in by verdict()/notes below; kept separate so the wording can be read on its own.
    return "\n".join(_sections(summary, inputs, png_name)) + "\n"


def _sections(summary, inputs, png_name):
    meta = summary["meta"]
    rows = summary["rows"]
    out = ["# InternVL2-1B at 8 bits: ours vs bitsandbytes LLM.int8()", ""]
    out += [f"Regenerate (one command, {meta['total_s'] / 60:.0f} min here): `{meta['command']}`", ""]
    out += ["> **Random weights.** " + random_weights_note(meta), ""]
    out += [table(summary), "", f"![comparison plot]({png_name})", ""]
    out += ["## Where ours q8_0 stands against bitsandbytes int8", ""] + verdict(rows) + [""]
    out += ["## Setup", ""] + setup(meta, inputs, rows) + [""]
    out += ["## Definitions", ""] + definitions(meta) + [""]
    if summary["failures"]:
        out += ["## Variants that failed", ""]
        for v, f in summary["failures"].items():
            out += [f"- `{v}`: `{f['command']}` exited {f['exit_status']}:", "", "```"] + f["tail"] + ["```", ""]
    return out


def random_weights_note(meta):
    md = meta.get("ckpt_metadata", {})
    if md.get("preset") or md.get("seed"):
        what = f"This run used a synthetic checkpoint (random weights, preset {md.get('preset')}, seed {md.get('seed')})."
    else:
        what = "If this run used a synthetic checkpoint (random weights), read this:"
    return (what + " Random weights have none of the outlier features (a few activation dimensions of very large "
            "magnitude) that trained LLMs develop and that LLM.int8() was designed for: its mixed-precision "
            "decomposition keeps those columns in 16-bit, and here it has (almost) nothing to keep. The accuracy "
            "figures below therefore show the quantization error of each scheme on well-behaved numbers and are a "
            "lower bound on the differences a trained checkpoint shows; the memory and speed figures do not depend "
            "on the weights' values. Run the same command on the real checkpoint to get the real accuracy gap.")


def verdict(rows):
    return ["(verdict pending)"]


def setup(meta, inputs, rows):
    return [f"- machine: {meta['cpu']}, {meta['logical_cpus']} logical CPUs ({meta['cpu_flags']}), "
            f"{meta['mem_bytes'] / 2**30:.0f} GiB; every system ran with {meta['threads']} threads, one variant at a "
            f"time, each in its own process.",
            f"- versions: torch {meta['torch']}, transformers {meta['transformers']}, bitsandbytes "
            f"{meta['bitsandbytes']}, python {meta['python']}; ours at git {meta['git']}"
            f"{' (with uncommitted changes)' if meta['git_dirty'] else ''}."]


def definitions(meta):
    return [__doc__.split("\n", 2)[2].strip()]
