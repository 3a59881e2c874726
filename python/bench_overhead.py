"""Time per generated token through Python vs the Rust CLI (internvl-run), same model, image, prompt, 2 threads.

    python python/bench_overhead.py MODEL.gguf IMAGE [ROUNDS]

Runs A (CLI) and B (Python) alternately, each in a fresh process, and compares the engine's own decode time per
generated token (the Python binding's per-token work, taking the GIL back to check for Ctrl-C, runs inside
that decode loop, so it is counted), plus the wall time of the whole chat() call vs the CLI's total turn time.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = REPO / "target" / "release" / "internvl-run"
PROMPT = "Describe the image in detail."
N = 128

PY_CHILD = r"""
import json, sys, time, internvl
m = internvl.Model(sys.argv[1], threads=2, max_tiles=1)
t0 = time.perf_counter()
r = m.chat(sys.argv[3], images=[sys.argv[2]], max_tokens=int(sys.argv[4]))
wall = time.perf_counter() - t0
print(json.dumps({"generated": r.generated_tokens, "decode_s": r.timings.decode, "total_s": r.timings.total, "wall_s": wall}))
"""


def run_cli(model, image):
    out = subprocess.run(
        [str(CLI), "-m", model, "--image", image, "-p", PROMPT, "-n", str(N), "-t", "2", "--max-tiles", "1",
         "--json", "--no-progress"],
        check=True, capture_output=True, text=True,
    ).stdout
    j = json.loads(out)
    return {"generated": j["tokens"]["generated"], "decode_s": j["timings_ms"]["decode"] / 1e3,
            "total_s": j["timings_ms"]["total"] / 1e3}


def run_py(model, image):
    out = subprocess.run([sys.executable, "-c", PY_CHILD, model, image, PROMPT, str(N)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    model, image = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    a, b = [], []
    for i in range(rounds):
        a.append(run_cli(model, image))
        b.append(run_py(model, image))
        print(f"round {i}: cli {a[-1]}  python {b[-1]}", flush=True)
    per_tok = lambda rs: [r["decode_s"] / r["generated"] * 1e3 for r in rs]
    ca, pb = per_tok(a), per_tok(b)
    print(f"ms per generated token (median of {rounds}): cli {statistics.median(ca):.2f}, "
          f"python {statistics.median(pb):.2f}, ratio python/cli {statistics.median(pb) / statistics.median(ca):.4f}")
    print(f"ms per token, all runs: cli {[round(x, 2) for x in ca]}, python {[round(x, 2) for x in pb]}")
    print(f"turn total (s): cli {[round(r['total_s'], 2) for r in a]}, python {[round(r['total_s'], 2) for r in b]}, "
          f"python wall of chat() {[round(r['wall_s'], 2) for r in b]}")
    print("load average:", os.getloadavg())


if __name__ == "__main__":
    main()
