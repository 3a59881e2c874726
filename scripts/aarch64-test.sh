#!/usr/bin/env bash
# Cross-compiles the CPU build of the workspace for aarch64-unknown-linux-gnu (Jetson-class ARM) on an
# x86_64 Debian/Ubuntu machine and runs the tiny-model tests under qemu-user. The golden comparisons
# (tests/model_goldens.rs) then check that ggml's ARM NEON kernels give the numbers the x86 build gives.
#
#   bash scripts/aarch64-test.sh                 # build, then run the default test list
#   bash scripts/aarch64-test.sh tokenizer chat  # build, then run only these tests (names in tests/; lib: unit tests)
#   bash scripts/aarch64-test.sh model_goldens -- --nocapture   # arguments after -- go to the test binaries
#   AARCH64_ALL=1 bash scripts/aarch64-test.sh   # run every test of the workspace (slow under qemu)
#
# Everything is passed through environment variables set here, so plain `cargo build` on the host is
# unaffected. Output goes to target/aarch64 (override with AARCH64_TARGET_DIR); nothing is cleaned, so a
# second run only rebuilds what changed. The first run compiles ggml for aarch64 (several minutes).
# Needs: rustup, and apt-get (run as root or with sudo) when the cross tools are not installed yet.
# See docs/jetson.md.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
TARGET_ENV=aarch64_unknown_linux_gnu          # the triple as the cc/bindgen crates spell it in env names
SYSROOT=/usr/aarch64-linux-gnu                # Debian's cross sysroot (libc6-dev-arm64-cross)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${AARCH64_TARGET_DIR:-$ROOT/target/aarch64}
OUT_DIR=$TARGET_DIR/$TARGET/release
# `lib`: the library's unit tests (the int8 and attention kernels' portable paths against their references).
DEFAULT_TESTS=(ggml_graph gguf_reader model_goldens image_parity tokenizer chat weight_layout vit_attention lib)

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
T_START=$(now)

# --- 1. tools ---------------------------------------------------------------------------------------
step "checking the cross toolchain and qemu"
QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
[ -f "$SYSROOT/include/stdio.h" ] || missing+=(libc6-dev-arm64-cross)
[ -n "$QEMU" ] || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
        SUDO=sudo
    fi
    echo "installing: ${missing[*]}"
    apt_log=$(mktemp)
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$apt_log"
    QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
    [ -n "$QEMU" ] || die "qemu-aarch64 not found after installing qemu-user"
fi
for tool in cargo rustup cmake; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
if ! rustup target list --installed | grep -qx "$TARGET"; then
    step "rustup target add $TARGET"
    rustup target add "$TARGET"
fi
echo "gcc:  $(aarch64-linux-gnu-gcc --version | head -n1)"
echo "qemu: $("$QEMU" --version | head -n1)"

# --- 2. environment for the cross build --------------------------------------------------------------
# cc crate (onig, ggml's C sources through cmake) and cargo's linker.
export "CC_$TARGET_ENV=aarch64-linux-gnu-gcc"
export "CXX_$TARGET_ENV=aarch64-linux-gnu-g++"
export "AR_$TARGET_ENV=aarch64-linux-gnu-ar"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# cargo test runs the aarch64 test binaries through this; -L is where the aarch64 ld.so and libc live.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -L $SYSROOT"
# The cmake crate already sets these when TARGET != HOST; llama-cpp-sys-2 forwards CMAKE_* variables
# to its CMake run, so stating them here keeps the cross build explicit. (Only llama-cpp-sys-2 uses
# CMake in this workspace.) GGML_NATIVE is forced OFF and GGML_CPU_ARM_ARCH=armv8-a by llama-cpp-sys-2
# for aarch64 Linux unless RUSTFLAGS has target-cpu=native, which must not be used when cross compiling.
export CMAKE_SYSTEM_NAME=Linux
export CMAKE_SYSTEM_PROCESSOR=aarch64
# bindgen (ours in build.rs, and llama-cpp-sys-2's) parses the ggml headers as the target sees them.
export "BINDGEN_EXTRA_CLANG_ARGS_$TARGET_ENV=--target=aarch64-linux-gnu --sysroot=$SYSROOT -I$SYSROOT/include"
export CARGO_TARGET_DIR=$TARGET_DIR
case "${RUSTFLAGS:-}" in
    *target-cpu=native*) die "RUSTFLAGS has target-cpu=native, which means the x86 host's CPU here; unset it for the cross build" ;;
esac
cd "$ROOT"

# --- 3. build ----------------------------------------------------------------------------------------
step "cargo build --release --workspace --target $TARGET   (target dir: ${TARGET_DIR#"$ROOT"/})"
T0=$(now)
cargo build --release --workspace --target "$TARGET"
T_BUILD=$(( $(now) - T0 ))
file_info=$(file -b "$OUT_DIR/internvl-convert" 2>/dev/null || echo "?")
echo "built in ${T_BUILD}s; internvl-convert: ${file_info%%,*}"

# Test names before `--`, test-binary arguments after it.
TESTS=()
BIN_ARGS=()
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; BIN_ARGS=("$@"); break; fi
    TESTS+=("$1"); shift
done
if [ "${AARCH64_ALL:-0}" = 1 ]; then
    TEST_ARGS=(--workspace)
    TESTS=(all)
elif [ ${#TESTS[@]} -eq 0 ]; then
    TESTS=("${DEFAULT_TESTS[@]}")
fi
if [ "${TESTS[0]}" != all ]; then
    TEST_ARGS=(-p internvl)
    for t in "${TESTS[@]}"; do
        if [ "$t" = lib ]; then TEST_ARGS+=(--lib); else TEST_ARGS+=(--test "$t"); fi
    done
fi

step "building test binaries: ${TESTS[*]}"
T0=$(now)
cargo test --release --target "$TARGET" "${TEST_ARGS[@]}" --no-run
T_TESTBUILD=$(( $(now) - T0 ))
echo "test binaries built in ${T_TESTBUILD}s"

# --- 4. the converter through qemu -------------------------------------------------------------------
# tests/common runs internvl-convert to make the tiny models. A process started from inside qemu-user is
# exec'd by the host kernel, which can only run an aarch64 binary when binfmt_misc is set up for qemu
# (often not in containers). So the tests get a wrapper that runs the aarch64 converter through qemu.
# The wrapper takes the converter's mtime, which is what the tests' model cache is keyed on.
WRAPPER=$TARGET_DIR/internvl-convert-qemu
if [ -z "${INTERNVL_CONVERTER:-}" ]; then
    cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
exec $QEMU -L $SYSROOT "$OUT_DIR/internvl-convert" "\$@"
EOF
    chmod +x "$WRAPPER.tmp"
    touch -r "$OUT_DIR/internvl-convert" "$WRAPPER.tmp"
    mv -f "$WRAPPER.tmp" "$WRAPPER"
    export INTERNVL_CONVERTER=$WRAPPER
fi
echo "converter for the tests: $INTERNVL_CONVERTER"

# --- 5. run the tests under qemu ---------------------------------------------------------------------
LOG_DIR=$TARGET_DIR/test-logs
mkdir -p "$LOG_DIR"
declare -a SUMMARY=()
failed=0
for t in "${TESTS[@]}"; do
    if [ "$t" = all ]; then args=("${TEST_ARGS[@]}");
    elif [ "$t" = lib ]; then args=(-p internvl --lib);
    else args=(-p internvl --test "$t"); fi
    step "cargo test --release --target $TARGET ${args[*]}   (under qemu)"
    T0=$(now)
    set +e
    cargo test --release --target "$TARGET" "${args[@]}" -- "${BIN_ARGS[@]}" 2>&1 | tee "$LOG_DIR/$t.log"
    rc=${PIPESTATUS[0]}
    set -e
    secs=$(( $(now) - T0 ))
    [ "$rc" = 0 ] || failed=1
    while IFS= read -r line; do
        SUMMARY+=("$(printf '%-14s %4ss  %s' "$t" "$secs" "${line#test result: }")")
    done < <(grep -E '^test result:' "$LOG_DIR/$t.log" || true)
    [ "$rc" = 0 ] || grep -qE '^test result: FAILED' "$LOG_DIR/$t.log" \
        || SUMMARY+=("$(printf '%-14s %4ss  exit %s before a test result (see %s)' "$t" "$secs" "$rc" "$LOG_DIR/$t.log")")
done

# --- 6. summary --------------------------------------------------------------------------------------
step "summary ($TARGET under $(basename "$QEMU"); build ${T_BUILD}s, test build ${T_TESTBUILD}s, total $(( $(now) - T_START ))s)"
printf '%s\n' "${SUMMARY[@]}"
echo "logs: $LOG_DIR"
if [ "$failed" != 0 ]; then
    echo "FAILED"
    exit 1
fi
echo "OK"
