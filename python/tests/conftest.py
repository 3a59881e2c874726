"""Fixtures: the tiny random model the Rust tests use, made with the workspace's internvl-convert."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _converter() -> pathlib.Path:
    # INTERNVL_CONVERTER as in tests/common/mod.rs; else the release build of the workspace.
    p = pathlib.Path(os.environ.get("INTERNVL_CONVERTER", REPO / "target" / "release" / "internvl-convert"))
    if not p.is_file():
        pytest.exit(f"{p} is missing: run `cargo build --release --workspace` first", returncode=2)
    return p


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> pathlib.Path:
    conv = _converter()
    d = tmp_path_factory.mktemp("models")
    ck = d / "tiny-42"
    subprocess.run(
        [str(conv), "synth", "--preset", "tiny", "--seed", "42", "-q", "-o", str(ck),
         "--tokenizer-from", str(REPO.parent / "shared" / "model" / "InternVL2-1B")],
        check=True,
    )
    out = d / "tiny-42-q8_0.gguf"
    subprocess.run([str(conv), "convert", str(ck), "-o", str(out), "--type", "q8_0", "-q"], check=True)
    return out


@pytest.fixture(scope="session")
def model(tiny_model_path):
    import internvl

    # One tile per image keeps the tests fast; 2 threads per session as the Rust tests use.
    return internvl.Model(tiny_model_path, threads=2, n_ctx=2048, max_tiles=1)
