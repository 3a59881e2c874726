#!/usr/bin/env python3
"""Reads a GGUF file with the reference `gguf` Python package and compares it with an expectation JSON.

Used by tests/gguf_interop.rs (only when `import gguf` works) to show that files written by our Rust
writer read correctly with an independent implementation.

    python3 tests/py/check_gguf.py FILE.gguf EXPECT.json

EXPECT.json: {"alignment": int, "data_offset": int,
              "kvs": [{"key": str, "type": "u8"|...|"string"|"array", "elem_type": str (arrays), "value": ...}],
              "tensors": [{"name": str, "ne": [int], "type_id": int, "offset": int, "nbytes": int, "data_hex": str}]}
Type names are those of `ValueType::name` in src/gguf/value.rs. Exits 1 with a list of mismatches.
"""
import json
import math
import sys

from gguf import GGUFReader, GGUFValueType

TYPE_NAMES = {
    GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array", GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}


def same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or float(a) == float(b)
    return a == b


def main() -> int:
    path, expect_path = sys.argv[1], sys.argv[2]
    with open(expect_path, encoding="utf-8") as f:
        expect = json.load(f)
    r = GGUFReader(path)
    errors = []

    if r.alignment != expect["alignment"]:
        errors.append(f"alignment {r.alignment} != {expect['alignment']}")
    if r.data_offset != expect["data_offset"]:
        errors.append(f"data_offset {r.data_offset} != {expect['data_offset']}")

    # The reader exposes the header as pseudo-fields named "GGUF.*"; skip those.
    fields = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}
    want_keys = [kv["key"] for kv in expect["kvs"]]
    if list(fields) != want_keys:
        errors.append(f"keys {list(fields)} != {want_keys}")
    for kv in expect["kvs"]:
        field = fields.get(kv["key"])
        if field is None:
            continue
        got_type = TYPE_NAMES.get(field.types[0])
        if got_type != kv["type"]:
            errors.append(f"{kv['key']}: type {got_type} != {kv['type']}")
            continue
        if kv["type"] == "array":
            # parts = [key len, key, value type, element type, count, ...]; `field.types` lacks the element
            # type of an empty array, the raw part has it.
            got_elem = TYPE_NAMES.get(GGUFValueType(int(field.parts[3][0])))
            if got_elem != kv["elem_type"]:
                errors.append(f"{kv['key']}: element type {got_elem} != {kv['elem_type']}")
                continue
        got = field.contents()
        if got is None and kv["type"] == "array":
            got = []
        if not same(got, kv["value"]):
            errors.append(f"{kv['key']}: value {got!r} != {kv['value']!r}")

    tensors = {t.name: t for t in r.tensors}
    want_names = [t["name"] for t in expect["tensors"]]
    if [t.name for t in r.tensors] != want_names:
        errors.append(f"tensor names {[t.name for t in r.tensors]} != {want_names}")
    for want in expect["tensors"]:
        t = tensors.get(want["name"])
        if t is None:
            continue
        if [int(d) for d in t.shape] != want["ne"]:
            errors.append(f"{want['name']}: ne {t.shape.tolist()} != {want['ne']}")
        if int(t.tensor_type) != want["type_id"]:
            errors.append(f"{want['name']}: type {int(t.tensor_type)} != {want['type_id']}")
        if t.data_offset != r.data_offset + want["offset"]:
            errors.append(f"{want['name']}: data offset {t.data_offset} != {r.data_offset + want['offset']}")
        if int(t.n_bytes) != want["nbytes"]:
            errors.append(f"{want['name']}: n_bytes {t.n_bytes} != {want['nbytes']}")
        if t.data.tobytes().hex() != want["data_hex"]:
            errors.append(f"{want['name']}: tensor bytes differ")

    if errors:
        print("MISMATCH:\n  " + "\n  ".join(errors))
        return 1
    print(f"OK: {len(fields)} kvs, {len(r.tensors)} tensors, alignment {r.alignment}, data offset {r.data_offset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
