#!/usr/bin/env bash
# The Python package's tests (README's test command runs this after the Rust tests): a fresh virtual
# environment, `pip install ./python` (maturin builds the extension into the workspace's target/, reusing
# the ggml and crates already built there), then pytest on the tiny random model (made with the
# target/release/internvl-convert that `cargo build --release --workspace` built).
#   PYTHON=python3.9 bash scripts/test-python.sh    # another interpreter (3.9 or later)
#   bash scripts/test-python.sh -k stream           # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-venv
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q pytest numpy pillow
"$venv/bin/python" -m pip install -q ./python
"$venv/bin/python" -m pytest -q python/tests "$@"
