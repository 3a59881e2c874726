#!/usr/bin/env bash
# Issue 10's side-by-side benchmark in one command: ours, llama.cpp (the same ggml build, through the ggml
# crate's C API, mtmd for vision) and PyTorch (transformers f32/bf16, bitsandbytes int8) on the same inputs,
# one run, each measurement in its own process, 2 threads. Writes target/bench/side_by_side.md and prints it.
#
#   scripts/bench.sh                 # the full run on the full synthetic checkpoint (~20 min + first build)
#   BENCH_SMOKE=1 scripts/bench.sh   # every code path on a tiny random model, one repetition (figures mean nothing)
#
# The run measures the machine's limits first (read bandwidth of BENCH_THREADS threads over 1 GiB, f32 FMA
# and int8 loop peaks) and ends with each row's distance to its limit; the header names the CPU class (model
# name, the flags avx2/fma/f16c/avx512f/avx512_vnni/avx_vnni, what ggml was built for, and the --kernels
# ours ran) and the recipe of the weight files (read from each file; ours and llama.cpp must match).
#
# The AVX2 class on a machine with AVX-512 (what most laptops are: AMD Zen 2/3, Intel without AVX-512):
# build for Haswell, which configures ggml, and so llama.cpp, with AVX2/FMA/F16C and no AVX-512, in a
# target directory of its own, and force ours to its AVX2 path (our kernels choose at run time, so without
# it they would still run AVX-512 here):
#
#   RUSTFLAGS="-C target-cpu=haswell" CARGO_TARGET_DIR=/work/target-haswell BENCH_OURS_KERNELS=avx2 \
#       BENCH_SYSTEMS=ours,llama scripts/bench.sh
#
# Build: RUSTFLAGS="-C target-cpu=native" (so llama-cpp-sys-2 configures ggml with GGML_NATIVE=ON, i.e.
# -march=native: AVX-512/VNNI/BF16 where the CPU has them; ours and llama.cpp link that one ggml), features
# bench-mtmd (llama.cpp's mtmd library), in CARGO_TARGET_DIR (default /work/target-native if it exists,
# else target/native, so the portable build in target/ is left alone).
#
# Inputs (made when missing, unless BENCH_NO_REGEN=1): BENCH_CKPT (default /tmp/full1, from
# `internvl-convert synth --preset full --seed 1`), BENCH_DIR/BENCH_PREFIX-{f16,q8_0,q4_0}.gguf (ours) and
# BENCH_DIR/BENCH_PREFIX-split-T.gguf + BENCH_DIR/mmproj-BENCH_PREFIX-split-T.gguf (llama.cpp, `convert --split`).
# Other knobs (see benches/side_by_side.rs): BENCH_THREADS, BENCH_SYSTEMS=ours,llama,torch,
# BENCH_VISION_TYPES, BENCH_TEXT_TYPES, BENCH_TORCH_VARIANTS, BENCH_PYTHON, BENCH_OUT, BENCH_WORK;
# BENCH_OURS_LAYOUTS (unset: int8, every job of ours again with --weights int8 as extra rows; set empty:
# the default layout only); BENCH_OURS_KERNELS=auto|avx512-vnni|avx2|avx-vnni|avx-vnni-evex|portable|ggml (ours' --kernels load
# parameter; unset: auto, the best of ours this CPU runs);
# BENCH_PLAN_ONLY=1 checks the files, writes the inputs and prints the job list with time estimates, then stops.
# The q4_0 files are internvl-convert's q4_0 recipe (--type q4_0: the language model's block matrices at
# q4_0, the vision tower, projector, token_embd and lm_head at q8_0), the same for ours and llama.cpp; a file
# made by an older converter (pure q4_0) is refused with the two recipes named.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=native}"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    if [ -d /work/target-native ]; then CARGO_TARGET_DIR=/work/target-native; else CARGO_TARGET_DIR="$ROOT/target/native"; fi
fi
export CARGO_TARGET_DIR
SMOKE=${BENCH_SMOKE:-0}
TOKENIZER_FROM=${BENCH_TOKENIZER_FROM:-$ROOT/../shared/model/InternVL2-1B}
PYTHON=${BENCH_PYTHON:-python3}
export BENCH_PYTHON=$PYTHON

if [ "$SMOKE" = 1 ]; then
    export BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench/smoke-models}
    export BENCH_PREFIX=${BENCH_PREFIX:-m}
    export BENCH_CKPT=${BENCH_CKPT:-$BENCH_DIR/ckpt}
    export BENCH_HF_DIR=${BENCH_HF_DIR:-$BENCH_DIR/hf}
    export BENCH_WORK=${BENCH_WORK:-$ROOT/target/bench/work-smoke}
    PRESET=tiny
    echo "== SMOKE run: tiny random model, one repetition: checks every code path, the figures mean nothing"
else
    export BENCH_DIR=${BENCH_DIR:-/tmp}
    export BENCH_PREFIX=${BENCH_PREFIX:-full1}
    export BENCH_CKPT=${BENCH_CKPT:-$BENCH_DIR/$BENCH_PREFIX}
    PRESET=full
fi
export BENCH_META="${BENCH_META:-$(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)'), RUSTFLAGS=\"$RUSTFLAGS\", CARGO_TARGET_DIR=$CARGO_TARGET_DIR}"

VTYPES=${BENCH_VISION_TYPES:-f16,q8_0,q4_0}
TTYPES=${BENCH_TEXT_TYPES:-q8_0,q4_0}
SYSTEMS=${BENCH_SYSTEMS:-ours,llama,torch}

echo "== side-by-side benchmark (issue 10): $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   estimated time: run ~20-30 min on a quiet 2-core machine with the full model (the binary prints a"
echo "   per-job estimate, from AVX-512 figures: the AVX2 class takes longer); first build of llama.cpp with"
echo "   mtmd in a new CARGO_TARGET_DIR: ~20 min more"
if awk '{exit !($1 > 1.5)}' /proc/loadavg; then
    echo "   WARNING: load average above 1.5: the figures will be noise"
fi

if [[ ",$SYSTEMS," == *",torch,"* ]]; then
    if ! "$PYTHON" -c "import torch, transformers, bitsandbytes, safetensors, PIL" 2>/dev/null; then
        echo "error: $PYTHON lacks torch/transformers/bitsandbytes: pip install -r bench/requirements-bnb.txt" >&2
        echo "       (or run without PyTorch: BENCH_SYSTEMS=ours,llama scripts/bench.sh)" >&2
        exit 1
    fi
fi

# Input files: list what is missing, then make it (or stop with BENCH_NO_REGEN=1).
missing=()
[ -f "$BENCH_CKPT/config.json" ] || missing+=("$BENCH_CKPT (checkpoint)")
for t in $(echo "$VTYPES,$TTYPES" | tr ',' '\n' | sort -u); do
    [ -f "$BENCH_DIR/$BENCH_PREFIX-$t.gguf" ] || missing+=("$BENCH_DIR/$BENCH_PREFIX-$t.gguf")
    [ -f "$BENCH_DIR/$BENCH_PREFIX-split-$t.gguf" ] || missing+=("$BENCH_DIR/$BENCH_PREFIX-split-$t.gguf")
    [ -f "$BENCH_DIR/mmproj-$BENCH_PREFIX-split-$t.gguf" ] || missing+=("$BENCH_DIR/mmproj-$BENCH_PREFIX-split-$t.gguf")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== missing input files:"
    printf '   %s\n' "${missing[@]}"
    if [ "${BENCH_NO_REGEN:-0}" = 1 ]; then
        echo "error: missing inputs and BENCH_NO_REGEN=1" >&2
        exit 1
    fi
    echo "== making them (internvl-convert; the full checkpoint takes a few minutes and ~8 GB of disk)"
    cargo build --release -p internvl-convert --bin internvl-convert
    CONVERT="$CARGO_TARGET_DIR/release/internvl-convert"
    mkdir -p "$BENCH_DIR"
    if [ ! -f "$BENCH_CKPT/config.json" ]; then
        [ -d "$TOKENIZER_FROM" ] || { echo "error: tokenizer dir $TOKENIZER_FROM not found (BENCH_TOKENIZER_FROM)" >&2; exit 1; }
        "$CONVERT" synth --preset "$PRESET" --seed 1 -o "$BENCH_CKPT" --tokenizer-from "$TOKENIZER_FROM" -q
    fi
    for t in $(echo "$VTYPES,$TTYPES" | tr ',' '\n' | sort -u); do
        [ -f "$BENCH_DIR/$BENCH_PREFIX-$t.gguf" ] || "$CONVERT" convert "$BENCH_CKPT" -o "$BENCH_DIR/$BENCH_PREFIX-$t.gguf" --type "$t" -q
        if [ ! -f "$BENCH_DIR/$BENCH_PREFIX-split-$t.gguf" ] || [ ! -f "$BENCH_DIR/mmproj-$BENCH_PREFIX-split-$t.gguf" ]; then
            "$CONVERT" convert "$BENCH_CKPT" -o "$BENCH_DIR/$BENCH_PREFIX-split-$t.gguf" --split --type "$t" -q
        fi
    done
fi

echo "== building the bench (RUSTFLAGS=\"$RUSTFLAGS\", --features bench-mtmd, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
t0=$(date +%s)
cargo bench -p internvl --features bench-mtmd --bench side_by_side --no-run
echo "   built in $(( $(date +%s) - t0 )) s"

echo "== running"
cargo bench -p internvl --features bench-mtmd --bench side_by_side
