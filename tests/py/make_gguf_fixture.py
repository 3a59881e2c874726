#!/usr/bin/env python3
"""Writes tests/fixtures/py_written.gguf with the reference `gguf` Python package (pip package `gguf`).

tests/gguf_interop.rs reads the file with our Rust reader and checks every key and every tensor byte
against the formulas below, re-implemented in Rust; Python is not needed at test time.

Regenerate (only when the formulas or `FIXTURE_VERSION` change; keep both sides in step):
    python3 tests/py/make_gguf_fixture.py [output path]
"""
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType, GGUFValueType

FIXTURE_VERSION = 1


def f32_tensor() -> np.ndarray:
    # numpy shape (7, 5, 3) = ggml ne [3, 5, 7]; element i (row-major) = (i % 23) * 0.25 - 2.0 (exact in f32).
    i = np.arange(7 * 5 * 3)
    return ((i % 23) * 0.25 - 2.0).astype(np.float32).reshape(7, 5, 3)


def f16_tensor() -> np.ndarray:
    # numpy shape (2, 9) = ggml ne [9, 2]; element i = (i % 11) * 0.125 - 0.5 (exact in f16).
    i = np.arange(2 * 9)
    return ((i % 11) * 0.125 - 0.5).astype(np.float16).reshape(2, 9)


def f32_4d_tensor() -> np.ndarray:
    # numpy shape (2, 1, 3, 2) = ggml ne [2, 3, 1, 2]; element i = i * 1.5 - 4.0.
    i = np.arange(2 * 1 * 3 * 2)
    return (i * 1.5 - 4.0).astype(np.float32).reshape(2, 1, 3, 2)


def q8_0_blocks(n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and int8 quants per block, chosen so that Q8_0 quantization reproduces them exactly.

    Block b: scale 2^-(b % 4 + 1); quant j = ((37 j + 11 b) % 255) - 127, except quant 0 = +127 for even b
    and -127 for odd b (so max |x| / 127 is exactly the scale).
    """
    b = np.arange(n_blocks)[:, None]
    j = np.arange(32)[None, :]
    q = ((37 * j + 11 * b) % 255) - 127
    q[:, 0] = np.where(np.arange(n_blocks) % 2 == 0, 127, -127)
    scale = 2.0 ** -(np.arange(n_blocks) % 4 + 1)
    return scale, q.astype(np.int8)


def q8_0_tensor() -> tuple[np.ndarray, np.ndarray]:
    # ggml ne [64, 3] = 6 blocks of 32, numpy float shape (3, 64).
    scale, q = q8_0_blocks(6)
    values = (q.astype(np.float32) * scale[:, None].astype(np.float32)).reshape(3, 64)
    packed = gguf.quants.quantize(values, GGMLQuantizationType.Q8_0)
    # Cross-check the library's quantizer against the hand-packed layout (f16 scale, then 32 int8).
    manual = np.concatenate(
        [np.concatenate([np.float16(s).reshape(1).view(np.uint8), qb.view(np.uint8)]) for s, qb in zip(scale, q)]
    ).reshape(3, 68)
    assert packed.dtype == np.uint8 and packed.shape == (3, 68), (packed.dtype, packed.shape)
    assert np.array_equal(packed, manual), "gguf.quants Q8_0 disagrees with the hand-packed blocks"
    return packed, values


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "fixtures" / "py_written.gguf"
    w = gguf.GGUFWriter(out, arch="fixture")  # writes general.architecture = "fixture" first
    w.add_uint32("fixture.version", FIXTURE_VERSION)
    w.add_string("fixture.generator", "tests/py/make_gguf_fixture.py")
    w.add_uint8("fixture.u8", 200)
    w.add_int8("fixture.i8", -100)
    w.add_uint16("fixture.u16", 60000)
    w.add_int16("fixture.i16", -30000)
    w.add_uint32("fixture.u32", 4_000_000_000)
    w.add_int32("fixture.i32", -2_000_000_000)
    w.add_float32("fixture.f32", 0.15625)
    w.add_bool("fixture.bool_true", True)
    w.add_bool("fixture.bool_false", False)
    w.add_string("fixture.string", "h\u00e9llo, GGUF \u2713")
    w.add_uint64("fixture.u64", 2**63 + 5)
    w.add_int64("fixture.i64", -(2**62) - 3)
    w.add_float64("fixture.f64", -1.0 / 3.0)
    w.add_key_value("fixture.arr_u8", list(range(10)), GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT8)
    w.add_key_value("fixture.arr_i16", [-3, 0, 3], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT16)
    w.add_array("fixture.arr_i32", [k * 1000 - 5000 for k in range(11)])  # int -> i32
    w.add_key_value("fixture.arr_u64", [0, 1, 2**64 - 1], GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT64)
    w.add_array("fixture.arr_f32", [k * 0.5 - 1.0 for k in range(6)])  # float -> f32
    w.add_key_value("fixture.arr_f64", [0.1, -2.5], GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT64)
    w.add_array("fixture.arr_bool", [True, False, True])
    w.add_array("fixture.arr_str", ["alpha", "beta", "", "\u03b3\u03b4"])

    w.add_tensor("t.f32", f32_tensor())
    w.add_tensor("t.f16", f16_tensor())
    packed, _ = q8_0_tensor()
    w.add_tensor("t.q8_0", packed, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("t.f32_4d", f32_4d_tensor())

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Read back with the package's own reader as a sanity check of the generator itself.
    r = gguf.GGUFReader(out)
    names = [t.name for t in r.tensors]
    assert names == ["t.f32", "t.f16", "t.q8_0", "t.f32_4d"], names
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(r.fields)} kvs, {len(r.tensors)} tensors)")


if __name__ == "__main__":
    main()
