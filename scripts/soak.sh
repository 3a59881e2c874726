#!/usr/bin/env bash
# Soak test of the C ABI (not part of CI's default run): 1,000 three-turn conversations with an image in the
# first turn (image1.jpg, image2.jpg and a raw RGB frame in turn) on the tiny synthetic model, 4 threads
# sharing one ivl_model, one session per conversation, greedy, 8 new tokens per turn, n_ctx 2048.
# Passes when RSS at the end is within 5% of RSS after the warm-up (50 conversations), no call failed and
# identical inputs gave identical answers. See examples/c/soak.c and docs/robustness.md.
#
#   scripts/soak.sh                       # builds what is missing, then runs
#   CONVERSATIONS=200 THREADS=2 scripts/soak.sh
#   SKIP_BUILD=1 MODEL=/path/tiny.gguf scripts/soak.sh
#
# Variables: CONVERSATIONS (1000), THREADS (4), WARMUP (50), MAX_TILES (2), MODEL (default: the tiny model
# of seed 42 in f16, built with target/release/internvl-convert), MEDIA (../shared/media), CC (cc).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
CONVERSATIONS=${CONVERSATIONS:-1000}
THREADS=${THREADS:-4}
WARMUP=${WARMUP:-50}
MAX_TILES=${MAX_TILES:-2}
MEDIA=${MEDIA:-$ROOT/../shared/media}
CC=${CC:-cc}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p internvl --lib -p internvl-convert)
fi
if [[ -z "${MODEL:-}" ]]; then
    MODEL=$REL/test-models/soak-tiny-42-f16.gguf
    if [[ ! -f $MODEL ]]; then
        ck=$REL/test-models/soak-tiny-42
        mkdir -p "$REL/test-models"
        "$REL/internvl-convert" synth --preset tiny --seed 42 -q -o "$ck" \
            --tokenizer-from "$ROOT/../shared/model/InternVL2-1B"
        "$REL/internvl-convert" convert "$ck" -o "$MODEL" --type f16 -q
    fi
fi
exe=$REL/soak
"$CC" -std=c11 -Wall -Wextra -Werror -pedantic -O2 -I "$ROOT/include" "$ROOT/examples/c/soak.c" -o "$exe" \
    -L "$REL" -linternvl -Wl,-rpath,"$REL" -lm -pthread
echo "model: $MODEL"
timer=()
if [[ -x /usr/bin/time ]]; then timer=(/usr/bin/time -f "peak RSS (time -v): %M KiB, wall %e s, user %U s, sys %S s"); fi
"${timer[@]}" "$exe" "$MODEL" "$MEDIA/image1.jpg" "$MEDIA/image2.jpg" "$CONVERSATIONS" "$THREADS" "$WARMUP" "$MAX_TILES"
