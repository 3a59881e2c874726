#!/usr/bin/env bash
# CUDA check of the PyPI-built CUDA library (scripts/cuda-build-pypi.sh) on a GPU machine that has no Rust
# toolchain and no network. Two steps:
#
#   bash scripts/gpu-check.sh prepare     # HERE (build machine): packs target/gpu-carry/ (ignored by git)
#   bash scripts/gpu-check.sh run         # THERE (GPU machine), from the repository root, with
#                                         # target/gpu-carry carried; results under $OUT (or target/gpu-out)
#
# What `run` checks, on the tiny synthetic model (seed 42, the goldens' checkpoint, f16 and f32) and on the
# full-size synthetic model (f16):
#   - the library loads a model with IVL_DEVICE_GPU (the GPU is found and initialized), answers, and the greedy
#     answer (token by token) is the one the CPU gives in the same run;
#   - time to first token and total time on the GPU next to the CPU, same binary, same run.
# What it does NOT check: the stage-by-stage goldens of tests/fixtures/goldens/tiny (vit_out, logits with
# the CPU tolerances). The C API gives no logits and tests/model_goldens.rs loads on the CPU; that needs a
# device switch in the test (then carry its test binary, built with cargo test --no-run).
#
# Needs there: an NVIDIA driver for CUDA 13.0 (R580+), and libcublas.so.13 + libcublasLt.so.13 (CUDA 13
# cuBLAS: a CUDA 13 toolkit, or the nvidia-cublas wheel; libcublasLt is 542 MB, too big to carry). Set
# CUBLAS_DIR if they are somewhere unusual.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$REPO/target/gpu-carry"
MODE="${1:-}"

# The C driver: IVL_DEVICE=cpu|gpu|auto, greedy, prints the answer and one line of figures.
driver_source() {
    cat <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internvl.h"
static int32_t on_piece(const char *p, size_t n, void *u) { (void)u; fwrite(p, 1, n, stdout); fflush(stdout); return 0; }
static int fail(const char *what, ivl_status st) {
    fprintf(stderr, "ivl-check: %s: %s: %s\n", what, ivl_status_name(st), ivl_last_error());
    return 1;
}
int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: ivl-check cpu|gpu|auto MODEL IMAGE N_TOKENS [QUESTION]\n"); return 2; }
    ivl_model_params mp = ivl_model_default_params();
    mp.device = strcmp(argv[1], "cpu") == 0 ? IVL_DEVICE_CPU : strcmp(argv[1], "gpu") == 0 ? IVL_DEVICE_GPU : IVL_DEVICE_AUTO;
    ivl_session_params sp = ivl_session_default_params();
    if (getenv("IVL_MAX_TILES")) sp.max_tiles = (uint32_t)strtoul(getenv("IVL_MAX_TILES"), NULL, 10);
    ivl_generate_params gp = ivl_generate_default_params();
    gp.max_new_tokens = (uint32_t)strtoul(argv[4], NULL, 10);
    const char *q = argc > 5 ? argv[5] : "Describe the image in detail.";
    ivl_model *m = NULL; ivl_session *s = NULL; ivl_status st; ivl_reply r; int rc = 1;
    if ((st = ivl_model_load(argv[2], &mp, &m)) != IVL_STATUS_OK) { rc = fail("ivl_model_load", st); goto done; }
    if ((st = ivl_session_new(m, &sp, &s)) != IVL_STATUS_OK) { rc = fail("ivl_session_new", st); goto done; }
    if ((st = ivl_session_add_image_file(s, argv[3])) != IVL_STATUS_OK) { rc = fail("add_image", st); goto done; }
    if ((st = ivl_session_prompt(s, q)) != IVL_STATUS_OK) { rc = fail("prompt", st); goto done; }
    if ((st = ivl_session_generate(s, &gp, on_piece, NULL, &r)) != IVL_STATUS_OK) { rc = fail("generate", st); goto done; }
    printf("\n");
    fprintf(stderr, "FIGURES device=%s prompt_tokens=%u image_tokens=%u generated=%u tiles=%u ttft_ms=%.1f total_ms=%.1f\n",
            argv[1], r.prompt_tokens, r.image_tokens, r.generated_tokens, r.tiles_encoded, r.time_to_first_token_ms, r.total_ms);
    rc = 0;
done:
    ivl_session_free(s); ivl_model_free(m);
    return rc;
}
EOF
}

prepare() {
    local tdir="${CARGO_TARGET_DIR:-$(cd "$REPO/.." && pwd)/target-cuda}"
    local lib="$tdir/release/libinternvl.so" conv="$REPO/target/release/internvl-convert"
    local tok="${INTERNVL_MODEL_FILES:-$REPO/../shared/model/InternVL2-1B}"
    local img="$REPO/../shared/media/image1.jpg"
    for f in "$lib" "$conv" "$tok/vocab.json" "$img"; do
        [ -e "$f" ] || { echo "error: $f missing (run scripts/cuda-build-pypi.sh and cargo build --release first)" >&2; exit 1; }
    done
    rm -rf "$CARRY"
    mkdir -p "$CARRY/tokenizer"
    driver_source >"$CARRY/ivl-check.c"
    cc -std=c11 -O2 -I"$REPO/include" "$CARRY/ivl-check.c" -L"$(dirname "$lib")" -linternvl -Wl,-rpath,'$ORIGIN' \
        -o "$CARRY/ivl-check"
    cp "$conv" "$CARRY/internvl-convert"
    cp "$img" "$CARRY/image1.jpg"
    cp "$tok"/*.json "$tok"/merges.txt "$CARRY/tokenizer/"
    # The CUDA library is large (ggml-cuda kernels); xz it, `run` unpacks it.
    xz -T2 -6 -c "$lib" >"$CARRY/libinternvl.so.xz"
    (cd "$CARRY" && sha256sum ivl-check internvl-convert >SHA256SUMS && sha256sum "$lib" | sed "s#  .*#  libinternvl.so#" >>SHA256SUMS)
    du -ab "$CARRY" | sort -n | tail -12
    echo "carry: target/gpu-carry ($(du -sb "$CARRY" | cut -f1) bytes; the limit is 64 MiB = 67108864)"
}

run() {
    local out="${OUT:-$REPO/target/gpu-out}" work
    mkdir -p "$out"
    work="$(mktemp -d)"
    exec > >(tee "$out/gpu-check.log") 2>&1
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"
    nvcc --version 2>/dev/null | tail -1 || true
    [ -d "$CARRY" ] || { echo "error: $CARRY missing: carry target/gpu-carry (bash scripts/gpu-check.sh prepare)"; exit 1; }
    cp "$CARRY/ivl-check" "$CARRY/internvl-convert" "$work/"
    xz -dc "$CARRY/libinternvl.so.xz" >"$work/libinternvl.so"
    # ivl-check records the library's SONAME (build.rs), libinternvl.so.0.
    ln -sf libinternvl.so "$work/libinternvl.so.0"
    (cd "$work" && sha256sum -c "$CARRY/SHA256SUMS")

    # cuBLAS 13: CUBLAS_DIR, a CUDA 13 toolkit, a pip wheel, or the loader's cache.
    local cands=("${CUBLAS_DIR:-}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib
        /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib)
    local py d found=""
    for py in python3 python; do
        d="$($py -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)" \
            && cands+=("$d") || true
    done
    for d in "${cands[@]}"; do
        if [ -n "$d" ] && [ -e "$d/libcublas.so.13" ] && [ -e "$d/libcublasLt.so.13" ]; then found="$d"; break; fi
    done
    if [ -n "$found" ]; then
        export LD_LIBRARY_PATH="$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuBLAS 13 from $found"
    elif ! ldconfig -p | grep -q "libcublasLt.so.13"; then
        echo "error: libcublas.so.13/libcublasLt.so.13 (CUDA 13 cuBLAS) not found; set CUBLAS_DIR"
        ldconfig -p | grep -E "libcublas" || true
        exit 1
    fi
    ldd "$work/ivl-check" | grep -E "internvl|cublas|not found" || true

    echo "== tiny model (seed 42, the goldens' checkpoint)"
    "$work/internvl-convert" synth --preset tiny --seed 42 -q -o "$work/tiny" --tokenizer-from "$CARRY/tokenizer"
    local failed=0 ty dev n=16
    for ty in f32 f16; do
        "$work/internvl-convert" convert "$work/tiny" -o "$work/tiny-$ty.gguf" --type "$ty" >/dev/null
        for dev in cpu gpu; do
            "$work/ivl-check" "$dev" "$work/tiny-$ty.gguf" "$CARRY/image1.jpg" "$n" >"$out/tiny-$ty-$dev.txt" \
                2>"$out/tiny-$ty-$dev.err" || { echo "tiny $ty $dev FAILED:"; cat "$out/tiny-$ty-$dev.err"; failed=1; }
            grep -h "FIGURES\|ggml_cuda\|CUDA" "$out/tiny-$ty-$dev.err" | head -5 || true
        done
        if cmp -s "$out/tiny-$ty-cpu.txt" "$out/tiny-$ty-gpu.txt"; then
            echo "tiny $ty: GPU greedy answer == CPU ($n tokens)"
        else
            echo "tiny $ty: GPU answer DIFFERS from CPU:"; diff "$out/tiny-$ty-cpu.txt" "$out/tiny-$ty-gpu.txt" || true
            failed=1
        fi
    done

    if [ "${GPU_CHECK_FULL:-1}" = 1 ]; then
        echo "== full-size synthetic model (f16, ${GPU_CHECK_MAX_TILES:-6} tiles at most; random weights, so the answer is noise: timings only)"
        "$work/internvl-convert" synth --preset full --seed 1 -q -o "$work/full" --tokenizer-from "$CARRY/tokenizer"
        "$work/internvl-convert" convert "$work/full" -o "$work/full-f16.gguf" --type f16 >/dev/null
        rm -rf "$work/full"
        for dev in gpu cpu; do
            IVL_MAX_TILES="${GPU_CHECK_MAX_TILES:-6}" "$work/ivl-check" "$dev" "$work/full-f16.gguf" "$CARRY/image1.jpg" 64 >"$out/full-$dev.txt" \
                2>"$out/full-$dev.err" || { echo "full $dev FAILED:"; tail -5 "$out/full-$dev.err"; failed=1; }
            grep -h "FIGURES" "$out/full-$dev.err" || true
        done
    fi
    rm -rf "$work"
    echo "== result: $([ $failed = 0 ] && echo PASS || echo FAIL)"
    exit $failed
}

case "$MODE" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu-check.sh prepare|run (see the header)" >&2; exit 2 ;;
esac
