//! GGUF reader and writer: round trips, malformed files (each with its own error), truncation at every
//! byte, random corruption, and the writer's all-or-nothing file handling.

use std::collections::HashSet;
use std::mem::discriminant;
use std::path::Path;

use internvl::gguf::{Array, GgmlType, GgufError, GgufFile, GgufWriter, Value};

/// Deterministic bytes (xorshift) so tensor data differ from tensor to tensor.
fn pseudo_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn all_value_kvs() -> Vec<(&'static str, Value)> {
    vec![
        ("general.name", Value::Str("round trip".into())),
        ("t.u8", Value::U8(255)),
        ("t.i8", Value::I8(-128)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("t.bool", Value::Bool(true)),
        ("t.str_empty", Value::Str(String::new())),
        ("t.str_utf8", Value::Str("héllo ✓ 🦀".into())),
        ("t.a_u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("t.a_i8", Value::Array(Array::I8(vec![-1, 0, 127]))),
        ("t.a_u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("t.a_i16", Value::Array(Array::I16(vec![-32768, 5]))),
        ("t.a_u32", Value::Array(Array::U32(vec![7, 8, 9]))),
        ("t.a_i32", Value::Array(Array::I32(vec![-7, 0, 7]))),
        ("t.a_u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("t.a_i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
        ("t.a_f32", Value::Array(Array::F32(vec![0.5, -0.25, 1e30]))),
        ("t.a_f64", Value::Array(Array::F64(vec![1e-300, -2.0]))),
        ("t.a_bool", Value::Array(Array::Bool(vec![true, false, false]))),
        (
            "t.a_str",
            Value::Array(Array::Str(vec!["a".into(), String::new(), "ü".into()])),
        ),
        ("t.a_empty", Value::Array(Array::F32(vec![]))),
    ]
}

/// (name, ne, type): odd shapes, every dimension count, plain and block-quantized types.
fn tensor_set() -> Vec<(&'static str, Vec<usize>, GgmlType)> {
    vec![
        ("f32_odd", vec![3, 5, 7], GgmlType::F32),
        ("f16_1d", vec![5], GgmlType::F16),
        ("q8_0", vec![64, 3], GgmlType::Q8_0),
        ("bf16_4d", vec![1, 1, 1, 3], GgmlType::BF16),
        ("q4_k", vec![256, 2], GgmlType::Q4_K),
        ("i32", vec![7], GgmlType::I32),
        ("q4_0", vec![96, 1, 2], GgmlType::Q4_0),
        ("mxfp4", vec![32], GgmlType::MXFP4),
    ]
}

fn write_file(path: &Path, alignment: Option<usize>) -> u64 {
    let mut w = GgufWriter::create(path).unwrap();
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    for (k, v) in all_value_kvs() {
        w.add_kv(k, v).unwrap();
    }
    let tensors = tensor_set();
    for (name, ne, ty) in &tensors {
        w.add_tensor(name, ne, *ty).unwrap();
    }
    let planned = w.planned_size();
    for (i, (name, ne, ty)) in tensors.iter().enumerate() {
        let size = ty.nbytes(ne).unwrap();
        w.write_tensor_data(name, &pseudo_bytes(size, i as u64)).unwrap();
    }
    let written = w.finish().unwrap();
    assert_eq!(written, planned, "planned_size must predict the file size");
    written
}

fn check_round_trip(f: &GgufFile, alignment: usize, file_len: u64) {
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), alignment);
    let mut want: Vec<(String, Value)> = all_value_kvs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if alignment != 32 {
        want.insert(0, ("general.alignment".into(), Value::U32(alignment as u32)));
    }
    let got: Vec<(String, Value)> = f.kvs().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(got, want, "kvs must come back identical and in order");

    assert_eq!(f.data_offset() % alignment, 0);
    assert_eq!(f.data_section().len() as u64, file_len - f.data_offset() as u64);
    let tensors = tensor_set();
    assert_eq!(f.tensors().len(), tensors.len());
    let mut expected_offset = 0usize;
    for (i, ((name, ne, ty), t)) in tensors.iter().zip(f.tensors()).enumerate() {
        assert_eq!(t.name, *name);
        assert_eq!(&t.ne, ne);
        assert_eq!(t.ty, *ty);
        assert_eq!(t.size, ty.nbytes(ne).unwrap());
        // ggml's layout: tensors back to back in declared order, each padded to the alignment.
        assert_eq!(t.offset, expected_offset, "{name}");
        expected_offset = (t.offset + t.size).div_ceil(alignment) * alignment;
        assert_eq!(
            f.tensor_data(t),
            pseudo_bytes(t.size, i as u64).as_slice(),
            "{name} data"
        );
        assert_eq!(f.tensor(name), Some(t));
        let in_section = &f.data_section()[t.offset..t.offset + t.size];
        assert_eq!(in_section, f.tensor_data(t));
    }
    assert_eq!(
        f.data_offset() as u64 + expected_offset as u64,
        file_len,
        "last tensor padded too"
    );
    assert!(f.tensor("missing").is_none());
}

#[test]
fn round_trip_all_value_types_and_tensor_types() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [None, Some(64), Some(1), Some(4096)] {
        let path = dir.path().join(format!("rt-{alignment:?}.gguf"));
        let len = write_file(&path, alignment);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        let a = alignment.unwrap_or(32);
        let f = GgufFile::open(&path).unwrap();
        check_round_trip(&f, a, len);
        // The in-memory parser agrees with the mmapped one.
        let g = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
        check_round_trip(&g, a, len);
        assert_eq!(f.as_bytes(), g.as_bytes());
    }
}

#[test]
fn typed_getters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typed.gguf");
    write_file(&path, None);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_u32("t.u8").unwrap(), 255);
    assert_eq!(f.get_u32("t.u32").unwrap(), u32::MAX);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_i64("t.i8").unwrap(), -128);
    assert_eq!(f.get_f32("t.f32").unwrap(), -1.5e-7);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.str_utf8").unwrap(), "héllo ✓ 🦀");
    assert_eq!(f.get_str_array("t.a_str").unwrap(), ["a", "", "ü"]);
    assert_eq!(f.get_i32_array("t.a_i8").unwrap(), [-1, 0, 127]);
    assert_eq!(f.get_u32_array("t.a_u16").unwrap(), [1, 65535]);
    assert_eq!(f.get_f32_array("t.a_f32").unwrap(), [0.5, -0.25, 1e30]);
    assert_eq!(f.get_f32_array("t.a_f64").unwrap(), [1e-300f64 as f32, -2.0]);
    assert_eq!(f.get_f32_array("t.a_empty").unwrap(), Vec::<f32>::new());

    let err = f.get_u32("no.such.key").unwrap_err();
    assert!(
        matches!(&err, GgufError::MissingKey { key } if key == "no.such.key"),
        "{err}"
    );
    for (key, getter_err) in [
        ("t.i8", f.get_u32("t.i8").unwrap_err()),   // negative does not fit
        ("t.u64", f.get_u32("t.u64").unwrap_err()), // too large
        ("t.f32", f.get_u32("t.f32").unwrap_err()), // float is not an integer
        ("t.u32", f.get_f32("t.u32").unwrap_err()), // integer is not a float
        ("t.u8", f.get_bool("t.u8").unwrap_err()),
        ("t.a_str", f.get_str("t.a_str").unwrap_err()),
        ("t.str_utf8", f.get_str_array("t.str_utf8").unwrap_err()),
        ("t.a_i64", f.get_i32_array("t.a_i64").unwrap_err()), // elements do not fit
        ("t.a_i32", f.get_u32_array("t.a_i32").unwrap_err()), // negative element
        ("t.a_u32", f.get_f32_array("t.a_u32").unwrap_err()),
    ] {
        assert!(
            matches!(&getter_err, GgufError::WrongType { key: k, .. } if k == key),
            "{getter_err}"
        );
        assert!(getter_err.to_string().contains(key), "{getter_err}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Hand-built files. `Raw` writes GGUF fields one by one so that any field can be made wrong.

#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &n in ne {
            self.u64(n);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, alignment: usize) -> &mut Self {
        let padded = self.0.len().div_ceil(alignment) * alignment;
        self.0.resize(padded, 0);
        self
    }
    fn data(&mut self, n: usize) -> &mut Self {
        self.0.extend(pseudo_bytes(n, 99));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// A valid two-kv, two-tensor file: t0 = f32 [4] at 0 (16 bytes), t1 = f32 [8] at 32 (32 bytes).
fn valid_raw() -> Raw {
    let mut r = Raw::header(3, 2, 2);
    r.kv_str("general.name", "x").kv_u32("a.u32", 7);
    r.tensor("t0", &[4], 0, 0).tensor("t1", &[8], 0, 32).pad(32).data(64);
    r
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(f) => panic!("malformed file was accepted: {f:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_hand_built_baseline_is_valid() {
    let f = GgufFile::from_bytes(valid_raw().bytes()).unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.get_u32("a.u32").unwrap(), 7);
    assert_eq!(f.tensor("t1").unwrap().offset, 32);
    // Version 2 has the same layout and is accepted.
    let mut v2 = valid_raw().bytes();
    v2[4] = 2;
    assert_eq!(GgufFile::from_bytes(v2).unwrap().version(), 2);
}

#[test]
fn malformed_files_give_distinct_errors() {
    use GgufError as E;
    let valid = valid_raw().bytes();
    let mut cases: Vec<(&str, GgufError)> = Vec::new();
    let mut case = |label: &'static str, bytes: Vec<u8>, check: &dyn Fn(&GgufError) -> bool| {
        let e = parse_err(bytes);
        assert!(check(&e), "{label}: unexpected error {e:?}");
        assert!(!e.to_string().is_empty());
        cases.push((label, e));
    };

    // Truncation at several points.
    case(
        "truncated inside magic",
        valid[..2].to_vec(),
        &|e| matches!(e, E::Truncated { what, offset: 0, .. } if what == "magic"),
    );
    // One kv: the key "general.name" occupies bytes 32..44, its 26-byte value string starts at byte 56.
    let one_kv = Raw::header(3, 0, 1)
        .kv_str("general.name", "a long enough value string")
        .bytes();
    assert!(GgufFile::from_bytes(one_kv.clone()).is_ok());
    case(
        "truncated inside a kv key",
        one_kv[..40].to_vec(),
        &|e| matches!(e, E::StringPastEnd { what, offset: 32, len: 12, available: 8 } if what.contains("kv #0")),
    );
    case(
        "truncated inside a kv string value",
        one_kv[..60].to_vec(),
        &|e| matches!(e, E::StringPastEnd { what, offset: 56, len: 26, available: 4 } if what.contains("general.name")),
    );
    case("truncated after the header", valid[..30].to_vec(), &|e| {
        matches!(
            e,
            E::CountTooLarge {
                what: "metadata kv",
                count: 2,
                max: 0,
                ..
            }
        )
    });
    // One 4-d tensor: name at 24..34, n_dims 34..38, dims 38..70 (dimension 3 at 62..70).
    let one_tensor = Raw::header(3, 1, 0)
        .tensor("t0", &[2, 2, 2, 2], 0, 0)
        .pad(32)
        .data(64)
        .bytes();
    assert!(GgufFile::from_bytes(one_tensor.clone()).is_ok());
    case(
        "truncated inside tensor infos",
        one_tensor[..64].to_vec(),
        &|e| matches!(e, E::Truncated { what, offset: 62, needed: 8, file_len: 64 } if what == "dimension 3 of tensor 't0'"),
    );
    case(
        "truncated inside data",
        valid[..valid.len() - 5].to_vec(),
        &|e| matches!(e, E::TensorPastEnd { tensor, .. } if tensor == "t1"),
    );

    let mut bad_magic = valid.clone();
    bad_magic[3] = b'X';
    case(
        "bad magic",
        bad_magic,
        &|e| matches!(e, E::BadMagic { found } if found == b"GGUX"),
    );
    for version in [0u32, 1, 4, 0x0300_0000] {
        let mut v = valid.clone();
        v[4..8].copy_from_slice(&version.to_le_bytes());
        case(
            "unknown version",
            v,
            &|e| matches!(e, E::UnsupportedVersion { version: got } if *got == version),
        );
    }

    case(
        "kv count 2^62",
        Raw::header(3, 0, 1 << 62).bytes(),
        &|e| matches!(e, E::CountTooLarge { what, count, .. } if what.contains("kv") && *count == 1 << 62),
    );
    case("tensor count 2^62", Raw::header(3, 1 << 62, 0).bytes(), &|e| {
        matches!(e, E::CountTooLarge { what: "tensor", .. })
    });

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(1 << 40).u8(b'a');
    case(
        "string length past the end",
        r.bytes(),
        &|e| matches!(e, E::StringPastEnd { len, what, .. } if *len == 1 << 40 && what.contains("'k'")),
    );
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).u8(b'k').u64(0);
    case("key length u64::MAX", r.bytes(), &|e| {
        matches!(e, E::StringPastEnd { len: u64::MAX, .. })
    });

    let mut r = Raw::header(3, 1, 0);
    r.tensor("t0", &[4], 0, 0).pad(32).data(15);
    case(
        "tensor data past the end",
        r.bytes(),
        &|e| matches!(e, E::TensorPastEnd { tensor, size: 16, .. } if tensor == "t0"),
    );
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t0", &[4], 0, u64::MAX - 31).pad(32).data(16);
    case("tensor offset near u64::MAX", r.bytes(), &|e| {
        matches!(e, E::TensorPastEnd { .. })
    });

    let mut r = Raw::header(3, 2, 0);
    r.tensor("t0", &[4], 0, 0).tensor("t1", &[8], 0, 16).pad(32).data(64);
    case(
        "misaligned offset",
        r.bytes(),
        &|e| matches!(e, E::MisalignedOffset { tensor, offset: 16, alignment: 32 } if tensor == "t1"),
    );

    for ty in [4u32, 31, 43, 1000] {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("t0", &[4], ty, 0).pad(32).data(64);
        case(
            "unknown tensor type",
            r.bytes(),
            &|e| matches!(e, E::UnknownGgmlType { tensor, type_id } if tensor == "t0" && *type_id == ty),
        );
    }

    let mut r = Raw::header(3, 2, 0);
    r.tensor("t0", &[4], 0, 0).tensor("t0", &[8], 0, 32).pad(32).data(64);
    case(
        "duplicate tensor names",
        r.bytes(),
        &|e| matches!(e, E::DuplicateTensor { name } if name == "t0"),
    );

    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a.u32", 1).kv_u32("a.u32", 2);
    case(
        "duplicate keys",
        r.bytes(),
        &|e| matches!(e, E::DuplicateKey { key } if key == "a.u32"),
    );

    let mut r = Raw::header(3, 1, 0);
    r.tensor("t0", &[4, 0], 0, 0).pad(32).data(64);
    case(
        "zero dim",
        r.bytes(),
        &|e| matches!(e, E::ZeroDim { tensor, dim: 1 } if tensor == "t0"),
    );

    for ne in [
        vec![1u64 << 32, 1 << 32],
        vec![1 << 62, 2],
        vec![1 << 61, 2],
        vec![u64::MAX],
    ] {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("big", &ne, 0, 0).pad(32).data(64);
        case(
            "overflowing dims",
            r.bytes(),
            &|e| matches!(e, E::ShapeOverflow { tensor, .. } if tensor == "big"),
        );
    }

    for n_dims in [0u32, 5, u32::MAX] {
        let mut r = Raw::header(3, 1, 0);
        r.str("t0")
            .u32(n_dims)
            .u64(4)
            .u64(4)
            .u64(4)
            .u64(4)
            .u64(4)
            .u32(0)
            .u64(0)
            .pad(32)
            .data(64);
        case(
            "bad dim count",
            r.bytes(),
            &|e| matches!(e, E::BadDimCount { tensor, n_dims: got } if tensor == "t0" && *got == u64::from(n_dims)),
        );
    }

    for a in [0u32, 48, 3] {
        let mut r = Raw::header(3, 1, 1);
        r.kv_u32("general.alignment", a)
            .tensor("t0", &[4], 0, 0)
            .pad(64)
            .data(64);
        case(
            "bad alignment value",
            r.bytes(),
            &|e| matches!(e, E::BadAlignment { value } if *value == u64::from(a)),
        );
    }
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(10).u64(32);
    case(
        "alignment of the wrong type",
        r.bytes(),
        &|e| matches!(e, E::WrongType { key, .. } if key == "general.alignment"),
    );

    let mut r = Raw::header(3, 2, 0);
    r.tensor("t0", &[16], 0, 0).tensor("t1", &[8], 0, 32).pad(32).data(96);
    case(
        "overlapping tensors",
        r.bytes(),
        &|e| matches!(e, E::TensorOverlap { first, second, first_end: 64, second_start: 32 } if first == "t0" && second == "t1"),
    );
    // Overlap is found whatever the declaration order.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("t1", &[8], 0, 32).tensor("t0", &[16], 0, 0).pad(32).data(96);
    case("overlapping tensors, reverse order", r.bytes(), &|e| {
        matches!(e, E::TensorOverlap { .. })
    });

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(0);
    case(
        "unknown kv type",
        r.bytes(),
        &|e| matches!(e, E::UnknownValueType { key, type_id: 13, .. } if key == "k"),
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(77).u64(0);
    case("unknown array element type", r.bytes(), &|e| {
        matches!(e, E::UnknownValueType { type_id: 77, .. })
    });

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(9).u64(1).u32(4).u64(1).u32(5);
    case(
        "nested array",
        r.bytes(),
        &|e| matches!(e, E::NestedArray { key, .. } if key == "k"),
    );

    for (elem, count) in [(4u32, 1u64 << 40), (8, 1 << 60), (12, u64::MAX), (0, 100)] {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(elem).u64(count).u32(0);
        case(
            "array count past the end",
            r.bytes(),
            &|e| matches!(e, E::ArrayPastEnd { key, count: c, .. } if key == "k" && *c == count),
        );
    }

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(7).u8(2);
    case(
        "bool byte 2",
        r.bytes(),
        &|e| matches!(e, E::InvalidBool { key, value: 2, .. } if key == "k"),
    );

    let mut r = Raw::header(3, 0, 1);
    r.u64(2).u8(0xff).u8(0xfe).u32(4).u32(0);
    case("key not UTF-8", r.bytes(), &|e| matches!(e, E::InvalidUtf8 { .. }));

    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("", 1);
    case("empty key", r.bytes(), &|e| matches!(e, E::EmptyKey { index: 0 }));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("", &[4], 0, 0).pad(32).data(16);
    case("empty tensor name", r.bytes(), &|e| {
        matches!(e, E::EmptyTensorName { index: 0 })
    });

    let long = "n".repeat(64);
    let mut r = Raw::header(3, 1, 0);
    r.tensor(&long, &[4], 0, 0).pad(32).data(16);
    case("tensor name too long for ggml", r.bytes(), &|e| {
        matches!(e, E::TensorNameTooLong { len: 64, max: 63, .. })
    });

    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[33], GgmlType::Q8_0 as u32, 0).pad(32).data(64);
    case(
        "row not a whole number of blocks",
        r.bytes(),
        &|e| matches!(e, E::RowNotBlockMultiple { tensor, ne0: 33, block: 32, .. } if tensor == "q"),
    );

    let distinct: HashSet<_> = cases.iter().map(|(_, e)| discriminant(e)).collect();
    assert!(
        distinct.len() >= 20,
        "only {} distinct error variants over {} cases",
        distinct.len(),
        cases.len()
    );
    for (label, e) in &cases {
        println!("{label:40} -> {e}");
    }
}

#[test]
fn error_messages_name_what_is_wrong() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("blk.0.attn_q.weight", &[4], 0, 0)
        .tensor("blk.0.attn_k.weight", &[8], 0, 16)
        .pad(32)
        .data(64);
    let msg = parse_err(r.bytes()).to_string();
    assert!(
        msg.contains("blk.0.attn_k.weight") && msg.contains("16") && msg.contains("32"),
        "{msg}"
    );

    let mut r = Raw::header(3, 0, 1);
    r.str("clip.vision.image_size").u32(4);
    let msg = parse_err(r.bytes()).to_string();
    assert!(
        msg.contains("clip.vision.image_size") && msg.contains("offset 58"),
        "{msg}"
    );
}

/// A small valid file whose last tensor ends exactly on the alignment, so that every proper prefix is
/// missing bytes that the reader needs.
fn small_valid_file(dir: &Path) -> Vec<u8> {
    let path = dir.join("small.gguf");
    let mut w = GgufWriter::create(&path).unwrap();
    w.add_kv("general.architecture", Value::Str("qwen2".into())).unwrap();
    w.add_kv("a.arr", Value::Array(Array::Str(vec!["x".into(), "yz".into()])))
        .unwrap();
    w.add_kv("a.f", Value::Array(Array::F32(vec![1.0, 2.0]))).unwrap();
    w.add_kv("a.b", Value::Bool(false)).unwrap();
    w.add_tensor("w", &[3], GgmlType::F16).unwrap(); // 6 bytes, padded to 32
    w.add_tensor("q", &[32], GgmlType::Q8_0).unwrap(); // 34 bytes, padded to 64
    w.add_tensor("e", &[8], GgmlType::F32).unwrap(); // 32 bytes: ends on the alignment
    w.write_tensor_data("w", &pseudo_bytes(6, 1)).unwrap();
    w.write_tensor_data("q", &pseudo_bytes(34, 2)).unwrap();
    w.write_tensor_data("e", &pseudo_bytes(32, 3)).unwrap();
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = small_valid_file(dir.path());
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(full.tensors().len(), 3);
    let mut kinds = HashSet::new();
    for len in 0..bytes.len() {
        match GgufFile::from_bytes(bytes[..len].to_vec()) {
            Ok(_) => panic!("prefix of {len} of {} bytes was accepted", bytes.len()),
            Err(e) => {
                kinds.insert(discriminant(&e));
            }
        }
    }
    // Truncated, StringPastEnd, ArrayPastEnd (the string array's count), TensorPastEnd at least.
    assert!(kinds.len() >= 4, "{} kinds of truncation error", kinds.len());
    println!(
        "{} prefixes rejected with {} distinct error kinds",
        bytes.len(),
        kinds.len()
    );

    // The same through the mmap path, at a few lengths (an empty file included).
    for len in [0, 3, 30, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.path().join(format!("cut{len}.gguf"));
        std::fs::write(&p, &bytes[..len]).unwrap();
        assert!(GgufFile::open(&p).is_err(), "mmapped prefix {len}");
    }
}

#[test]
fn trailing_padding_of_the_last_tensor_is_optional() {
    // ggml's writer pads after the last tensor, but the tensor bytes are all a reader needs.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t0", &[3], 0, 0).pad(32).data(12);
    let f = GgufFile::from_bytes(r.bytes()).unwrap();
    let t = f.tensor("t0").unwrap();
    assert_eq!(f.tensor_data(t), &r.bytes()[f.data_offset()..]);
    assert_eq!(f.data_section().len(), 12);
}

#[test]
fn metadata_only_files_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.gguf");
    let mut w = GgufWriter::create(&path).unwrap();
    w.add_kv("general.architecture", Value::Str("clip".into())).unwrap();
    let n = w.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(n as usize, f.as_bytes().len());
    assert!(f.tensors().is_empty());
    assert!(f.data_section().is_empty());
    assert_eq!(f.get_str("general.architecture").unwrap(), "clip");
    // Without the header padding (ggml only seeks to the data section when there are tensors).
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("a", 1);
    assert!(GgufFile::from_bytes(r.bytes()).unwrap().data_section().is_empty());
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = small_valid_file(dir.path());
    let header_len = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset();
    let (mut ok, mut err) = (0, 0);
    let mut tally = |r: Result<GgufFile, GgufError>| match r {
        Ok(f) => {
            // Whatever was accepted must be self-consistent.
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len(), t.size);
            }
            ok += 1
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            err += 1
        }
    };
    // Every header byte replaced by a few interesting values.
    for pos in 0..header_len {
        for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff, bytes[pos] ^ 0x10] {
            let mut m = bytes.clone();
            m[pos] = v;
            tally(GgufFile::from_bytes(m));
        }
    }
    // Random multi-byte corruption.
    let noise = pseudo_bytes(4 * 3000, 7);
    for chunk in noise.chunks_exact(12) {
        let mut m = bytes.clone();
        for k in 0..3 {
            let pos = u32::from_le_bytes([chunk[4 * k], chunk[4 * k + 1], chunk[4 * k + 2], 0]) as usize % header_len;
            m[pos] = chunk[4 * k + 3];
        }
        tally(GgufFile::from_bytes(m));
    }
    println!("corrupted files: {ok} accepted, {err} rejected");
    assert!(err > ok, "most corruptions of the header must be caught");
}

// ---------------------------------------------------------------------------------------------------------
// Writer.

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn failed_write_leaves_no_file_and_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    {
        let mut w = GgufWriter::create(&dest).unwrap();
        w.add_kv("general.architecture", Value::Str("qwen2".into())).unwrap();
        w.add_tensor("a", &[4], GgmlType::F32).unwrap();
        w.add_tensor("b", &[4], GgmlType::F32).unwrap();
        let tmp = w.temp_path().to_path_buf();
        assert_eq!(tmp.parent(), Some(dir.path()), "temp file next to the destination");
        assert!(tmp.exists());
        w.write_tensor_data("a", &[0u8; 16]).unwrap();
        let err = w.write_tensor_data("b", &[0u8; 15]).unwrap_err();
        assert!(
            matches!(&err, GgufError::TensorSizeMismatch { tensor, expected: 16, got: 15 } if tensor == "b"),
            "{err}"
        );
        assert!(!dest.exists());
        // The writer is dropped here, as it would be by `?`.
    }
    assert_eq!(
        dir_entries(dir.path()),
        Vec::<String>::new(),
        "no destination, no temp file"
    );

    // finish() with a tensor never written also leaves nothing behind.
    let mut w = GgufWriter::create(&dest).unwrap();
    w.add_tensor("a", &[4], GgmlType::F32).unwrap();
    w.add_tensor("b", &[4], GgmlType::F32).unwrap();
    w.write_tensor_data("a", &[0u8; 16]).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorDataMissing { tensor } if tensor == "b"),
        "{err}"
    );
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
}

#[test]
fn failed_write_keeps_the_old_destination() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    std::fs::write(&dest, b"previous model").unwrap();
    {
        let mut w = GgufWriter::create(&dest).unwrap();
        w.add_tensor("a", &[4], GgmlType::F32).unwrap();
        assert!(w.write_tensor_data("a", &[0u8; 17]).is_err());
    }
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous model");
    assert_eq!(dir_entries(dir.path()), ["model.gguf"]);

    let mut w = GgufWriter::create(&dest).unwrap();
    w.add_tensor("a", &[4], GgmlType::F32).unwrap();
    w.write_tensor_data("a", &[1u8; 16]).unwrap();
    let n = w.finish().unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), n);
    assert_eq!(GgufFile::open(&dest).unwrap().tensors().len(), 1);
    assert_eq!(dir_entries(dir.path()), ["model.gguf"]);
}

#[test]
fn writer_refuses_misuse() {
    use GgufError as E;
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::create(&dir.path().join("m.gguf")).unwrap();
    w.add_kv("k", Value::U32(1)).unwrap();
    assert!(matches!(w.add_kv("k", Value::U32(2)), Err(E::DuplicateKey { key }) if key == "k"));
    assert!(matches!(w.add_kv("", Value::U32(2)), Err(E::EmptyKey { .. })));
    assert!(matches!(w.set_alignment(48), Err(E::BadAlignment { value: 48 })));
    assert!(matches!(w.set_alignment(0), Err(E::BadAlignment { value: 0 })));
    assert!(matches!(
        w.add_kv("general.alignment", Value::U64(64)),
        Err(E::WrongType { .. })
    ));
    assert!(matches!(
        w.add_kv("general.alignment", Value::U32(12)),
        Err(E::BadAlignment { value: 12 })
    ));
    w.add_kv("general.alignment", Value::U32(64)).unwrap();
    assert_eq!(w.alignment(), 64);

    assert!(matches!(
        w.add_tensor("z", &[4, 0], GgmlType::F32),
        Err(E::ZeroDim { dim: 1, .. })
    ));
    assert!(matches!(
        w.add_tensor("z", &[], GgmlType::F32),
        Err(E::BadDimCount { n_dims: 0, .. })
    ));
    assert!(matches!(
        w.add_tensor("z", &[1; 5], GgmlType::F32),
        Err(E::BadDimCount { n_dims: 5, .. })
    ));
    assert!(matches!(
        w.add_tensor("z", &[33], GgmlType::Q8_0),
        Err(E::RowNotBlockMultiple { .. })
    ));
    assert!(matches!(
        w.add_tensor("z", &[usize::MAX / 2, 4], GgmlType::F32),
        Err(E::ShapeOverflow { .. })
    ));
    assert!(matches!(
        w.add_tensor(&"x".repeat(64), &[4], GgmlType::F32),
        Err(E::TensorNameTooLong { .. })
    ));
    assert!(matches!(
        w.add_tensor("", &[4], GgmlType::F32),
        Err(E::EmptyTensorName { .. })
    ));
    w.add_tensor("a", &[4], GgmlType::F32).unwrap();
    assert!(matches!(
        w.add_tensor("a", &[4], GgmlType::F32),
        Err(E::DuplicateTensor { .. })
    ));
    assert!(matches!(w.set_alignment(128), Err(E::AlignmentAfterTensors)));
    w.add_tensor("b", &[2, 2], GgmlType::F16).unwrap();
    assert_eq!(w.header_size() % 64, 0);
    assert_eq!(w.tensors()[1].offset, 64);

    assert!(
        matches!(w.write_tensor_data("b", &[0; 8]), Err(E::TensorOrder { expected, got }) if expected == "a" && got == "b")
    );
    assert!(matches!(
        w.write_tensor_data("nope", &[0; 8]),
        Err(E::UnknownTensor { .. })
    ));
    w.write_tensor_data("a", &[0; 16]).unwrap();
    assert!(matches!(
        w.add_kv("late", Value::U8(0)),
        Err(E::HeaderAlreadyWritten { .. })
    ));
    assert!(matches!(
        w.add_tensor("late", &[4], GgmlType::F32),
        Err(E::HeaderAlreadyWritten { .. })
    ));
    assert!(matches!(w.write_tensor_data("a", &[0; 16]), Err(E::TensorOrder { .. })));
    w.write_tensor_data("b", &[0; 8]).unwrap();
    assert!(matches!(w.write_tensor_data("b", &[0; 8]), Err(E::TensorOrder { .. })));
    let n = w.finish().unwrap();
    let f = GgufFile::open(&dir.path().join("m.gguf")).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.as_bytes().len() as u64, n);
    assert_eq!(f.get_u32("general.alignment").unwrap(), 64);
}

#[test]
fn writer_reports_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = GgufWriter::create(&dir.path().join("no/such/dir/m.gguf")).unwrap_err();
    assert!(
        matches!(&err, GgufError::Io { path, .. } if path.to_string_lossy().contains("no/such/dir")),
        "{err}"
    );
}

#[test]
fn two_writers_to_one_destination_do_not_clash() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let a = GgufWriter::create(&dest).unwrap();
    let b = GgufWriter::create(&dest).unwrap();
    assert_ne!(a.temp_path(), b.temp_path());
    drop(a);
    assert!(b.temp_path().exists());
    b.finish().unwrap();
    assert_eq!(dir_entries(dir.path()), ["m.gguf"]);
}
