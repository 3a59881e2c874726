#!/usr/bin/env python3
"""8-bit comparison against bitsandbytes LLM.int8(): accuracy, memory and speed, one command, one machine.

    pip install -r bench/requirements-bnb.txt
    python3 bench/bnb_compare.py --ckpt /tmp/full1 --out docs/          # synthetic full-size checkpoint
    python3 bench/bnb_compare.py --ckpt /path/to/InternVL2-1B --out docs/  # the real one, same command

--ckpt is a checkpoint directory in the ORIGINAL InternVL2-1B layout (model.safetensors + config.json + the
tokenizer files), as `internvl-convert synth` writes it or as OpenGVLab publishes it.

What it does (details in docs/bnb_comparison.md, which it writes):
 1. builds internvl-convert and examples/eval_dump (cargo, release; by default for this CPU, as
    scripts/bench.sh does: RUSTFLAGS="-C target-cpu=native", so ggml gets GGML_NATIVE=ON and uses the AVX-512 /
    VNNI kernels PyTorch also picks at run time; --build portable uses the default AVX2 build in target/);
 2. makes ONE input set: the fixed prompts of bnb_common.PROMPTS (Hermes-2 template, InternVL tiling with Pillow,
    float32 normalization of tests/reference/common.py, ids from the checkpoint's tokenizer) -> inputs.json +
    pixels.f32, read by every system;
 3. writes the checkpoint renamed for transformers' own InternVL classes (spec §2.2 name mapping and the config of
    tests/reference/make_goldens.py) and converts it to one GGUF per "ours" variant with internvl-convert;
 4. runs every variant in its own process (bench/bnb_hf_worker.py for transformers/bitsandbytes, eval_dump for
    ours), the f32 reference first: its greedy tokens become the teacher-forced continuation of all the others;
 5. times the single matrix products behind the speed differences (the criterion bench benches/gemm.rs for
    ggml and ours, bench/gemm_torch.py for PyTorch and bitsandbytes) on the ViT's and a 512-token prefill's
    shapes, 2 threads (the bench's);
 6. compares each variant with the f32 reference (bench/bnb_report.py) and writes docs/bnb_comparison.md, the
    plot docs/bnb_comparison.png and the raw figures WORK/summary.json.
Converted files are cached in --work (keyed on the checkpoint's files and the converter binary).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import bnb_common as bc
import bnb_report


def physical_cores():
    try:
        cores = set()
        phys = ""
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":", 1)[1].strip()))
        if cores:
            return min(len(cores), os.cpu_count() or 1)
    except OSError:
        pass
    return os.cpu_count() or 1


def run_logged(cmd, log_path, env=None):
    """Runs cmd, echoing its output and keeping it in log_path; returns (ok, last lines)."""
    print("+ " + " ".join(cmd), flush=True)
    tail = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                errors="replace")
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            tail = (tail + [line.rstrip("\n")])[-15:]
        rc = proc.wait()
    return rc == 0, rc, tail


def file_stamp(paths):
    return [[os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]


def ensure_hf_dir(ckpt, hf_dir):
    """The checkpoint renamed for transformers' InternVLForConditionalGeneration (spec §2.2), tensors kept in
    their stored dtype, plus the matching config.json. Cached by the source files' stamp."""
    import make_goldens as mg  # tests/reference/make_goldens.py (the lead's; imported, not copied)
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = bc.ref_common.checkpoint_files(ckpt) + [os.path.join(ckpt, "config.json")]
    stamp = {"ckpt": os.path.abspath(ckpt), "files": file_stamp(src)}
    stamp_path = os.path.join(hf_dir, "stamp.json")
    if os.path.exists(stamp_path) and bc.read_json(stamp_path) == stamp:
        return
    shutil.rmtree(hf_dir, ignore_errors=True)
    os.makedirs(hf_dir)
    t0 = time.time()
    config, _ = mg.build_config(bc.ref_common.load_checkpoint_config(ckpt), bc.ref_common.IMG_CONTEXT_ID)
    state = {}
    for path in bc.ref_common.checkpoint_files(ckpt):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                for new_name, pick in mg.map_name(name):
                    if new_name in state:
                        raise SystemExit(f"two checkpoint tensors map to {new_name}")
                    state[new_name] = pick(t).contiguous()
    save_file(state, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    del state
    config.save_pretrained(hf_dir)
    bc.write_json(stamp_path, stamp)
    print(f"wrote {hf_dir} (transformers layout) in {time.time() - t0:.1f}s", flush=True)


def ensure_gguf(ckpt, converter, flags, path):
    src = bc.ref_common.checkpoint_files(ckpt) + [os.path.join(ckpt, "config.json")]
    stamp = {"ckpt": os.path.abspath(ckpt), "files": file_stamp(src), "flags": flags,
             "converter": file_stamp([converter])}
    stamp_path = path + ".stamp.json"
    if os.path.exists(path) and os.path.exists(stamp_path) and bc.read_json(stamp_path) == stamp:
        return
    cmd = [converter, "convert", ckpt, "-o", path, "-q"] + flags
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    bc.write_json(stamp_path, stamp)


def build_env(root, build):
    """(environment for cargo, target dir) of a build kind: `native` (this CPU's instructions, in the target dir
    scripts/bench.sh uses) or `portable` (cargo's defaults, target/)."""
    env = dict(os.environ)
    if build == "portable":
        return env, env.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    env["RUSTFLAGS"] = env.get("RUSTFLAGS", "-C target-cpu=native")
    if "CARGO_TARGET_DIR" not in env:
        shared = os.path.join(root, "..", "target-native")
        env["CARGO_TARGET_DIR"] = shared if os.path.isdir(shared) else os.path.join(root, "target", "native")
    return env, env["CARGO_TARGET_DIR"]


def cargo_build(root, env):
    for cmd in (["cargo", "build", "--release", "-p", "internvl-convert", "--bin", "internvl-convert"],
                ["cargo", "build", "--release", "-p", "internvl", "--example", "eval_dump"]):
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=root, env=env)


def gemm_bench_exe(root, env):
    """Builds the criterion bench benches/gemm.rs and returns its executable (from cargo's JSON messages)."""
    cmd = ["cargo", "bench", "-p", "internvl", "--bench", "gemm", "--no-run", "--message-format=json"]
    print("+ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, check=True, cwd=root, env=env, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "gemm" \
                and msg.get("executable"):
            return msg["executable"]
    raise RuntimeError("cargo built no gemm bench executable")


# The bench's kinds (criterion ids gemm/SHAPE/KIND) -> the labels of the report (bnb_report.gemm_section).
GEMM_KINDS = {"f32": "f32", "f16": "f16", "q8_0": "q8_0", "q4_0": "q4_0", "q4_0-repacked": "q4_0 repacked"}
GEMM_SHAPES = "1025x1024x4096,512x896x4864"
GEMM_THREADS = 2


def parse_criterion_bencher(text):
    """`test gemm/MxKxN/KIND ... bench: N ns/iter (+/- D)` lines (criterion's --output-format bencher) ->
    [{shape, kind, ms, gflops}], kinds `ours/isa` written `ours (isa)` as the report names them."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "test" or "bench:" not in parts or "ns/iter" not in parts:
            continue
        name = parts[1].split("/", 2)
        if len(name) != 3 or name[0] != "gemm" or name[1].count("x") != 2:
            continue
        try:
            m, k, n = (int(v) for v in name[1].split("x"))
            ns = float(parts[parts.index("bench:") + 1].replace(",", ""))
        except ValueError:
            continue
        kind = name[2]
        if "/" in kind:
            ours, isa = kind.split("/", 1)
            kind = f"{ours} ({isa})"
        else:
            kind = GEMM_KINDS.get(kind, kind)
        ms = ns / 1e6
        rows.append({"shape": name[1], "kind": kind, "ms": ms, "gflops": 2.0 * m * k * n / (ms * 1e6)})
    return rows


def parse_gemm(text):
    """Rows `shape label... ms GFLOP/s` of gemm_probe / gemm_torch output -> [{shape, kind, ms, gflops}]."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0].count("x") != 2 or not parts[0].replace("x", "").isdigit():
            continue
        try:
            ms, gflops = float(parts[-2]), float(parts[-1])
        except ValueError:
            continue  # a "failed: ..." line
        rows.append({"shape": parts[0], "kind": " ".join(parts[1:-2]), "ms": ms, "gflops": gflops})
    return rows


def gemm_probes(root, env):
    """The ViT's largest product (1025 tokens, 1024 -> 4096) and a 512-token prefill's (896 -> 4864), timed
    alone at 2 threads: ggml per weight type and ours (benches/gemm.rs), PyTorch/bitsandbytes
    (bench/gemm_torch.py). Failures are recorded, not fatal: the comparison itself does not depend on them."""
    shapes = GEMM_SHAPES
    out = {"shapes": shapes, "threads": GEMM_THREADS}
    try:
        exe = gemm_bench_exe(root, env)
    except (subprocess.CalledProcessError, RuntimeError) as e:
        out["ours"], out["ours_error"] = [], str(e)[-2000:]
        exe = None
    pattern = "^gemm/(" + "|".join(shapes.split(",")) + ")/(f32|f16|q8_0|q4_0|q4_0-repacked|int8/.*|panels-q8_0/.*)$"
    runs = [("torch", [sys.executable, os.path.join(bc.BENCH, "gemm_torch.py")], parse_gemm)]
    if exe:
        runs.insert(0, ("ours", [exe, "--bench", "--output-format", "bencher", pattern], parse_criterion_bencher))
    for name, cmd, parse in runs:
        print("+ " + " ".join(cmd) + f"  (SHAPES={shapes})", flush=True)
        r = subprocess.run(cmd, env=dict(env, T=str(GEMM_THREADS), SHAPES=shapes), capture_output=True, text=True,
                           cwd=root)
        print(r.stdout, end="", flush=True)
        out[name] = parse(r.stdout)
        if r.returncode != 0 or not out[name]:
            out[name + "_error"] = (r.stderr or r.stdout)[-2000:]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint dir in the original InternVL2-1B layout")
    ap.add_argument("--out", default=os.path.join(bc.ROOT, "docs"),
                    help="where bnb_comparison.md and .png go (default: docs/)")
    ap.add_argument("--work", default=None,
                    help="work dir for converted files and raw outputs (default /tmp/bnb-compare/<ckpt name>)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every system (default: physical cores)")
    ap.add_argument("--prompts", type=int, default=len(bc.PROMPTS), help=f"first N of the {len(bc.PROMPTS)} prompts")
    ap.add_argument("--gen-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    ap.add_argument("--variants", default=",".join(bc.DEFAULT_VARIANTS),
                    help="comma-separated subset of: " + ", ".join(bc.VARIANTS))
    ap.add_argument("--images", default=None, help="comma-separated images (default: shared/media/image1,2.jpg)")
    ap.add_argument("--kv-type", default="f16", help="our KV cache type (default f16, the runtime's default)")
    ap.add_argument("--synthetic", default="auto", choices=["auto", "yes", "no"],
                    help="say the weights are random (yes) or trained (no); auto guesses from the final norm")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the raw outputs in --work of an earlier run (no model runs)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--build", default="native", choices=["native", "portable"],
                    help="ours built for this CPU (default; RUSTFLAGS=-C target-cpu=native, CARGO_TARGET_DIR "
                         "../target-native or target/native) or with cargo's portable defaults (target/)")
    ap.add_argument("--name", default="bnb_comparison", help="report file stem in --out (default bnb_comparison)")
    args = ap.parse_args()

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in bc.VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(bc.VARIANTS)}")
    if bc.REFERENCE not in variants:
        variants.insert(0, bc.REFERENCE)
    variants.sort(key=lambda v: v != bc.REFERENCE)  # the reference first: it makes the teacher tokens
    if not 1 <= args.prompts <= len(bc.PROMPTS):
        raise SystemExit(f"--prompts must be 1..{len(bc.PROMPTS)}")
    threads = args.threads or physical_cores()
    images = args.images.split(",") if args.images else bc.default_images()
    for p in images:
        if not os.path.exists(p):
            raise SystemExit(f"image {p} not found (pass --images A.jpg,B.jpg)")
    ckpt = os.path.abspath(args.ckpt)
    work = os.path.abspath(args.work or os.path.join("/tmp/bnb-compare", os.path.basename(ckpt.rstrip("/"))))
    os.makedirs(work, exist_ok=True)
    started = time.time()
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    if args.report_only:
        return write_report(args, work, variants)
    env, target_dir = build_env(bc.ROOT, args.build)
    if not args.no_build:
        cargo_build(bc.ROOT, env)
    converter = os.path.join(target_dir, "release", "internvl-convert")
    eval_dump = os.path.join(target_dir, "release", "examples", "eval_dump")

    inputs_dir = os.path.join(work, "inputs")
    inputs = bc.build_inputs(ckpt, images, args.prompts, args.gen_tokens, inputs_dir)
    inputs_path = os.path.join(inputs_dir, "inputs.json")
    print(f"inputs: {len(inputs['prompts'])} prompts, {inputs['pixel_shape'][0]} tiles, "
          f"{sum(len(p['ids']) for p in inputs['prompts'])} prompt tokens -> {inputs_dir}", flush=True)

    hf_dir = os.path.join(work, "hf")
    if any(bc.VARIANTS[v]["kind"] == "hf" for v in variants):
        ensure_hf_dir(ckpt, hf_dir)
    ggufs = {}
    for v in variants:
        spec = bc.VARIANTS[v]
        if spec["kind"] == "ours":
            ggufs[v] = os.path.join(work, "gguf", v + ".gguf")
            os.makedirs(os.path.dirname(ggufs[v]), exist_ok=True)
            ensure_gguf(ckpt, converter, spec["convert"], ggufs[v])

    runs_dir = os.path.join(work, "runs")
    failures = {}
    for v in variants:
        out = os.path.join(runs_dir, v)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        spec = bc.VARIANTS[v]
        if spec["kind"] == "hf":
            cmd = [sys.executable, os.path.join(bc.BENCH, "bnb_hf_worker.py"), "--hf-dir", hf_dir, "--variant", v,
                   "--inputs", inputs_path, "--out", out, "--threads", str(threads)]
        else:
            cmd = [eval_dump, "--model", ggufs[v], "--inputs", inputs_path, "--out", out,
                   "--threads", str(threads), "--kv-type", spec.get("kv", args.kv_type),
                   "--weights", spec.get("weights", "repacked")]
        print(f"== {v}: {spec['label']}", flush=True)
        ok, rc, tail = run_logged(cmd, os.path.join(out, "log.txt"))
        if not ok:
            failures[v] = {"command": " ".join(cmd), "exit_status": rc, "tail": tail}
            print(f"!! {v} failed (exit {rc}); continuing", flush=True)
            if v == bc.REFERENCE:
                raise SystemExit("the f32 reference failed; nothing to compare against")
            continue
        if v == bc.REFERENCE:
            # Its greedy tokens are the teacher-forced continuation of every other variant.
            ref = bc.read_json(os.path.join(out, bc.RESULT_FILE))
            for p, r in zip(inputs["prompts"], ref["prompts"]):
                p["teacher"] = r["greedy"]
            bc.write_json(inputs_path, inputs)

    gemm = gemm_probes(bc.ROOT, env)
    meta = bnb_report.environment(ckpt, threads, args, work, time.time() - started)
    meta["gemm"] = gemm
    meta["build"] = {"kind": args.build, "rustflags": env.get("RUSTFLAGS", ""), "target_dir": target_dir}
    meta["loadavg_start"] = loadavg_start
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bc.write_json(os.path.join(work, "run.json"), {"meta": meta, "failures": failures, "ggufs": ggufs})
    write_report(args, work, variants)


def write_report(args, work, variants):
    """Metrics from the raw outputs in work/runs, then the markdown, the plot and work/summary.json."""
    run_path = os.path.join(work, "run.json")
    if not os.path.exists(run_path):
        raise SystemExit(f"{run_path} missing: run the comparison first")
    run = bc.read_json(run_path)
    inputs = bc.read_json(os.path.join(work, "inputs", "inputs.json"))
    runs_dir = os.path.join(work, "runs")
    done = [v for v in variants if os.path.exists(os.path.join(runs_dir, v, bc.RESULT_FILE))
            and v not in run["failures"]]
    summary = bnb_report.summarize(inputs, runs_dir, done, run["failures"], run["ggufs"])
    summary["meta"] = run["meta"]
    bc.write_json(os.path.join(work, "summary.json"), summary)
    os.makedirs(args.out, exist_ok=True)
    md_path = os.path.join(args.out, args.name + ".md")
    png_path = os.path.join(args.out, args.name + ".png")
    bnb_report.plot(summary, png_path)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(bnb_report.markdown(summary, inputs, os.path.basename(png_path)))
    print(f"wrote {md_path}, {png_path} and {os.path.join(work, 'summary.json')}")


if __name__ == "__main__":
    main()
