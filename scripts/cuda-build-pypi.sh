#!/usr/bin/env bash
# Build internvl with ggml's CUDA backend on a machine without a system CUDA toolkit (and without a GPU):
# nvcc, the CUDA headers and libraries come from NVIDIA's PyPI wheels, pinned below.
#
#   bash scripts/cuda-build-pypi.sh                      # venv + toolkit dir + cargo build (internvl + internvl-run)
#   bash scripts/cuda-build-pypi.sh --setup-only         # only the venv and the toolkit dir
#   bash scripts/cuda-build-pypi.sh -- --workspace       # extra cargo arguments after `--`
#
# Environment (all optional):
#   CUDA_PYPI_VENV   venv holding the wheels                    (default: <repo>/../cuda-venv)
#   CUDA_PYPI_ROOT   toolkit-shaped directory made from them    (default: <repo>/../cuda-pypi)
#   CARGO_TARGET_DIR                                            (default: <repo>/../target-cuda)
#   CUDA_ARCHS       CMAKE_CUDA_ARCHITECTURES for ggml-cuda      (default: 90, i.e. H100; Orin: 87)
#   CUDA_FEATURES    cargo features                              (default: cuda-no-vmm, see below)
#   JOBS             parallel jobs for CMake and cargo           (default: 2)
#   PYTHON           interpreter for the venv                    (default: python3)
#
# Idempotent: an existing venv with the pinned versions is kept, the toolkit dir is re-linked, cargo rebuilds
# only what changed. NOTE: ggml's CMake cache lives in $CARGO_TARGET_DIR/release/build/llama-cpp-sys-2-*/out and
# is not re-configured by later builds (docs/jetson.md); to change CUDA_ARCHS afterwards, run
# `CARGO_TARGET_DIR=... cargo clean --release -p llama-cpp-sys-2` first.
#
# Why CUDA 13.0 and not 12.x: the cu12 nvcc wheels (nvidia-cuda-nvcc-cu12, every version up to 12.9.86) ship only
# ptxas, libnvvm and libdevice, no nvcc driver, cicc, cudafe++, fatbinary or nvlink. The CUDA 13 wheels
# (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, ...) are a complete compiler. Consequence: the binary needs an
# NVIDIA driver that supports CUDA 13.0 (R580 or newer) on the GPU machine.
#
# Why `cuda-no-vmm` by default: with VMM, ggml-cuda calls the driver API (cuMemCreate, ...) directly and
# llama-cpp-sys-2 links libcuda.so; no PyPI wheel ships libcuda.so (the driver), not even a link stub, so the link
# fails. Without VMM nothing references the driver library at link time: cudart (linked statically) opens
# libcuda.so.1 itself at run time, so the binary also starts on a machine without a driver and falls back to the CPU.
#
# Why a shim: llama-cpp-sys-2 links `cublas_static` and `cublasLt_static` on Linux, which the PyPI wheels do not
# have (they ship libcublas.so.13 / libcublasLt.so.13 only). The script makes empty libcublas_static.a and
# libcublasLt_static.a in $CUDA_PYPI_ROOT/pypi-shim/lib64 and links the shared cuBLAS instead (RUSTFLAGS below), so
# the binary needs libcublas.so.13 and libcublasLt.so.13 at run time (LD_LIBRARY_PATH or the rpath set here).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PARENT="$(cd "$REPO/.." && pwd)"
VENV="${CUDA_PYPI_VENV:-$PARENT/cuda-venv}"
ROOT="${CUDA_PYPI_ROOT:-$PARENT/cuda-pypi}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PARENT/target-cuda}"
ARCHS="${CUDA_ARCHS:-90}"
FEATURES="${CUDA_FEATURES:-cuda-no-vmm}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-python3}"

# Pinned: the CUDA 13.0 Update 2 set (the versions cuda-toolkit==13.0.2 requires for these extras).
PINS=(
    "cuda-toolkit==13.0.2"
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-cccl==13.0.85"
    "nvidia-cuda-culibos==13.0.85"
    "nvidia-cublas==13.1.0.3"
)

SETUP_ONLY=0
CARGO_EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --setup-only) SETUP_ONLY=1 ;;
        --) shift; CARGO_EXTRA=("$@"); break ;;
        *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[cuda-build-pypi] $*"; }

# 1. venv with the pinned wheels
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
have_pins() {
    local frozen p
    frozen="$("$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null | tr 'A-Z_' 'a-z-')" || return 1
    for p in "${PINS[@]}"; do
        grep -qx "$p" <<<"$frozen" || return 1
    done
}
if ! have_pins; then
    log "installing ${PINS[*]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
else
    log "venv $VENV already has the pinned wheels"
fi
CU="$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
for f in bin/nvcc nvvm/bin/cicc include/cuda_runtime.h include/crt/host_config.h include/cublas_v2.h \
    include/cccl/cub/cub.cuh lib/libcudart_static.a lib/libculibos.a lib/libcublas.so.13 lib/libcublasLt.so.13; do
    [ -e "$CU/$f" ] || { echo "error: $CU/$f missing after installing the wheels" >&2; exit 1; }
done

# 2. toolkit-shaped directory: bin/ include/ lib64/ nvvm/ targets/x86_64-linux/, as nvcc.profile and CMake's
#    FindCUDAToolkit expect; unversioned .so links that the wheels lack; the cuBLAS shim.
log "linking toolkit dir $ROOT -> $CU"
if [ -e "$ROOT.tmp" ] && [ ! -e "$ROOT.tmp/.cuda-pypi" ] && [ -n "$(ls -A "$ROOT.tmp" 2>/dev/null)" ]; then
    echo "error: $ROOT.tmp exists and was not made by this script" >&2
    exit 1
fi
rm -rf "$ROOT.tmp"
mkdir -p "$ROOT.tmp/bin" "$ROOT.tmp/lib64" "$ROOT.tmp/targets/x86_64-linux" "$ROOT.tmp/pypi-shim/lib64"
echo "made by scripts/cuda-build-pypi.sh from $CU" >"$ROOT.tmp/.cuda-pypi"
for f in "$CU"/bin/*; do ln -s "$f" "$ROOT.tmp/bin/"; done
for f in "$CU"/lib/*; do ln -s "$f" "$ROOT.tmp/lib64/"; done
ln -s "$CU/include" "$ROOT.tmp/include"
ln -s "$CU/nvvm" "$ROOT.tmp/nvvm"
ln -s lib64 "$ROOT.tmp/lib"
ln -s ../../include "$ROOT.tmp/targets/x86_64-linux/include"
ln -s ../../lib64 "$ROOT.tmp/targets/x86_64-linux/lib"
for l in cudart cublas cublasLt; do ln -s "lib$l.so.13" "$ROOT.tmp/lib64/lib$l.so"; done
for l in cublas_static cublasLt_static; do
    rm -f "$ROOT.tmp/pypi-shim/lib64/lib$l.a"
    ar rc "$ROOT.tmp/pypi-shim/lib64/lib$l.a"
done
if [ -e "$ROOT" ] && [ ! -e "$ROOT/.cuda-pypi" ]; then
    echo "error: $ROOT exists and was not made by this script; set CUDA_PYPI_ROOT elsewhere" >&2
    exit 1
fi
rm -rf "$ROOT"
mv "$ROOT.tmp" "$ROOT"
"$ROOT/bin/nvcc" --version | tail -2

[ "$SETUP_ONLY" = 1 ] && { log "setup done"; exit 0; }

# 3. the build
export PATH="$ROOT/bin:$PATH"
export CUDA_PATH="$ROOT" CUDACXX="$ROOT/bin/nvcc" CUDAToolkit_ROOT="$ROOT"
export CUDA_LIBRARY_PATH="$ROOT:$ROOT/pypi-shim"     # roots: find_cuda_helper adds <root>/lib64
export CMAKE_CUDA_ARCHITECTURES="$ARCHS"              # llama-cpp-sys-2 forwards CMAKE_* to ggml's CMake
export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
# libinternvl.so (our cdylib) links ggml-cuda's objects into a shared library, so they must be position
# independent: without this, nvcc's host objects are not, and the link fails with "relocation R_X86_64_PC32
# cannot be used against symbol 'stderr'; recompile with -fPIC" (seen here on the first complete build).
# Changing it after a build means `cargo clean --release -p llama-cpp-sys-2` in $CARGO_TARGET_DIR (a full rebuild;
# deleting only .../build/llama-cpp-sys-2-*/out is not enough: Cargo keeps the build script's fingerprint and then
# fails with "couldn't read .../out/bindings.rs").
export CMAKE_POSITION_INDEPENDENT_CODE=ON
export CARGO_BUILD_JOBS="$JOBS"
# Shared cuBLAS, after all the static libraries on the link line (-C link-arg goes last), plus an rpath to the
# toolkit dir for runs on this machine (elsewhere: LD_LIBRARY_PATH).
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$ROOT/lib64 -C link-arg=-L$ROOT/lib64 -C link-arg=-lcublas \
-C link-arg=-lcublasLt -C link-arg=-Wl,-rpath,$ROOT/lib64"

log "cargo build --release -p internvl --features $FEATURES (CUDA archs $ARCHS, $JOBS jobs) into $CARGO_TARGET_DIR"
cd "$REPO"
start=$(date +%s)
cargo build --release -p internvl --features "$FEATURES" --bin internvl-run --lib "${CARGO_EXTRA[@]}"
log "build took $(($(date +%s) - start)) s"
bin="$CARGO_TARGET_DIR/release/internvl-run"
log "NEEDED of $bin:"
readelf -d "$bin" | grep NEEDED || true
