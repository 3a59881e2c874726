#!/usr/bin/env bash
# Installs the C library of internvl: the header, the shared and static libraries and a pkg-config file.
#
#   scripts/install.sh                          # build (cargo build --release) and install into /usr/local
#   PREFIX=$HOME/.local scripts/install.sh      # another prefix
#   DESTDIR=/tmp/pkg PREFIX=/usr scripts/install.sh   # staged install for packaging (.pc says /usr)
#   SKIP_BUILD=1 scripts/install.sh             # install what target/release already holds
#   CARGO_FLAGS="--features cuda" scripts/install.sh  # build options (the CUDA build, see docs/jetson.md)
#
# Variables: PREFIX (default /usr/local), LIBDIR (default $PREFIX/lib), INCLUDEDIR (default
# $PREFIX/include), DESTDIR (prepended to every path written, not to the paths inside the .pc file),
# CARGO_TARGET_DIR (default target/). Afterwards:
#
#   cc -std=c11 app.c $(pkg-config --cflags --libs internvl)          # links libinternvl.so
#   cc -std=c11 app.c $(pkg-config --cflags --libs internvl-static)   # links libinternvl.a
#
# If PREFIX is not a standard pkg-config location, export PKG_CONFIG_PATH=$LIBDIR/pkgconfig; if LIBDIR
# is not a standard linker location, export LD_LIBRARY_PATH=$LIBDIR or link with -Wl,-rpath,$LIBDIR.
# Uninstall: remove the seven files and links this script prints. See docs/c-api.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-$PREFIX/lib}
INCLUDEDIR=${INCLUDEDIR:-$PREFIX/include}
DESTDIR=${DESTDIR:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BUILD_DIR=$TARGET_DIR/release
# What the static archive needs from the system: ggml is C++ (libstdc++), Rust's std the rest. This is
# rustc's `native-static-libs` for the default features on Linux (tests/capi.rs links with the same
# list); a build here asks rustc for the list of the features actually built (video adds FFmpeg, cuda
# the CUDA libraries).
LIBS_PRIVATE="-lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

case $PREFIX in /*) ;; *) die "PREFIX must be an absolute path, got '$PREFIX'" ;; esac

if [[ -z ${SKIP_BUILD:-} ]]; then
    # --lib builds the lib target with all its crate types: libinternvl.so and libinternvl.a. `cargo rustc`
    # passes --print native-static-libs to the last rustc call only, which prints the system libraries the
    # archive needs.
    LOG=$(mktemp)
    trap 'rm -f "$LOG"' EXIT
    # shellcheck disable=SC2086
    (cd "$ROOT" && cargo rustc --release -p internvl --lib ${CARGO_FLAGS:-} -- --print native-static-libs) 2>&1 | tee "$LOG"
    NATIVE=$(sed -n 's/.*note: native-static-libs: //p' "$LOG" | tail -n 1)
    if [[ -n $NATIVE ]]; then
        LIBS_PRIVATE=$NATIVE
    else
        printf 'install.sh: rustc did not print native-static-libs; using the default list\n' >&2
    fi
fi

for f in "$BUILD_DIR/libinternvl.so" "$BUILD_DIR/libinternvl.a" "$ROOT/include/internvl.h"; do
    [[ -f $f ]] || die "$f is missing (run without SKIP_BUILD, or cargo build --release --lib)"
done

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1)
[[ -n $VERSION ]] || die "cannot read the version from Cargo.toml"

install -d "$DESTDIR$INCLUDEDIR" "$DESTDIR$LIBDIR/pkgconfig"
install -m 0644 "$ROOT/include/internvl.h" "$DESTDIR$INCLUDEDIR/internvl.h"
# The shared library under its full version, with the SONAME link (what programs record and load:
# libinternvl.so.<major>, set by build.rs) and the development link (what -linternvl finds).
MAJOR=${VERSION%%.*}
install -m 0755 "$BUILD_DIR/libinternvl.so" "$DESTDIR$LIBDIR/libinternvl.so.$VERSION"
ln -sfn "libinternvl.so.$VERSION" "$DESTDIR$LIBDIR/libinternvl.so.$MAJOR"
ln -sfn "libinternvl.so.$MAJOR" "$DESTDIR$LIBDIR/libinternvl.so"
if command -v readelf >/dev/null; then
    SONAME=$(readelf -d "$DESTDIR$LIBDIR/libinternvl.so.$VERSION" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    [[ $SONAME == "libinternvl.so.$MAJOR" ]] ||
        printf 'install.sh: warning: the library'"'"'s SONAME is "%s", not libinternvl.so.%s (built before build.rs set it?)\n' "$SONAME" "$MAJOR" >&2
fi
install -m 0644 "$BUILD_DIR/libinternvl.a" "$DESTDIR$LIBDIR/libinternvl.a"

PC=$DESTDIR$LIBDIR/pkgconfig/internvl.pc
cat > "$PC" <<PCEOF
prefix=$PREFIX
libdir=$LIBDIR
includedir=$INCLUDEDIR

Name: internvl
Description: InternVL2-1B vision-language runtime on ggml (C API)
Version: $VERSION
Cflags: -I\${includedir}
Libs: -L\${libdir} -linternvl
Libs.private: $LIBS_PRIVATE
PCEOF
# The same library linked statically: the archive by path (a plain -linternvl would pick the .so).
PC_STATIC=$DESTDIR$LIBDIR/pkgconfig/internvl-static.pc
cat > "$PC_STATIC" <<PCEOF
prefix=$PREFIX
libdir=$LIBDIR
includedir=$INCLUDEDIR

Name: internvl-static
Description: InternVL2-1B vision-language runtime on ggml (C API, static library)
Version: $VERSION
Cflags: -I\${includedir}
Libs: \${libdir}/libinternvl.a $LIBS_PRIVATE
PCEOF
chmod 0644 "$PC" "$PC_STATIC"

printf 'installed internvl %s:\n  %s\n  %s\n  %s\n  %s\n  %s\n  %s\n  %s\n' "$VERSION" \
    "$DESTDIR$INCLUDEDIR/internvl.h" "$DESTDIR$LIBDIR/libinternvl.so.$VERSION" \
    "$DESTDIR$LIBDIR/libinternvl.so.$MAJOR -> libinternvl.so.$VERSION" \
    "$DESTDIR$LIBDIR/libinternvl.so -> libinternvl.so.$MAJOR" "$DESTDIR$LIBDIR/libinternvl.a" "$PC" "$PC_STATIC"
