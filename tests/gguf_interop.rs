//! GGUF interoperability with the two other implementations that matter:
//! (a) a file written by the Python `gguf` package (tests/fixtures/py_written.gguf) reads correctly with
//!     ours, checked against the generator's formulas, and our writer reproduces it byte for byte;
//! (b) a file written by our writer reads correctly with the Python package (only where `import gguf`
//!     works; otherwise the test prints a skip note);
//! (c) a file written by our writer loads with ggml's own `gguf_init_from_file`, data included, and our
//!     type table agrees with ggml's.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use half::f16;
use internvl::ggml::sys;
use internvl::gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------------------
// (a) The Python-written fixture. Formulas mirror tests/py/make_gguf_fixture.py.

const FIXTURE_VERSION: u32 = 1;

fn fixture_kvs() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::Str("fixture".into())),
        ("fixture.version", Value::U32(FIXTURE_VERSION)),
        ("fixture.generator", Value::Str("tests/py/make_gguf_fixture.py".into())),
        ("fixture.u8", Value::U8(200)),
        ("fixture.i8", Value::I8(-100)),
        ("fixture.u16", Value::U16(60000)),
        ("fixture.i16", Value::I16(-30000)),
        ("fixture.u32", Value::U32(4_000_000_000)),
        ("fixture.i32", Value::I32(-2_000_000_000)),
        ("fixture.f32", Value::F32(0.15625)),
        ("fixture.bool_true", Value::Bool(true)),
        ("fixture.bool_false", Value::Bool(false)),
        ("fixture.string", Value::Str("h\u{e9}llo, GGUF \u{2713}".into())),
        ("fixture.u64", Value::U64((1u64 << 63) + 5)),
        ("fixture.i64", Value::I64(-(1i64 << 62) - 3)),
        ("fixture.f64", Value::F64(-1.0 / 3.0)),
        ("fixture.arr_u8", Value::Array(Array::U8((0..10).collect()))),
        ("fixture.arr_i16", Value::Array(Array::I16(vec![-3, 0, 3]))),
        (
            "fixture.arr_i32",
            Value::Array(Array::I32((0..11).map(|k| k * 1000 - 5000).collect())),
        ),
        ("fixture.arr_u64", Value::Array(Array::U64(vec![0, 1, u64::MAX]))),
        (
            "fixture.arr_f32",
            Value::Array(Array::F32((0..6).map(|k| k as f32 * 0.5 - 1.0).collect())),
        ),
        ("fixture.arr_f64", Value::Array(Array::F64(vec![0.1, -2.5]))),
        ("fixture.arr_bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "fixture.arr_str",
            Value::Array(Array::Str(vec![
                "alpha".into(),
                "beta".into(),
                String::new(),
                "\u{3b3}\u{3b4}".into(),
            ])),
        ),
    ]
}

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

/// Q8_0 blocks: scale 2^-(b % 4 + 1) as f16, quant j = ((37 j + 11 b) % 255) - 127 with quant 0 = +-127.
fn q8_0_bytes(n_blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n_blocks * 34);
    for b in 0..n_blocks {
        let scale = 2f32.powi(-((b % 4) as i32 + 1));
        out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
        for j in 0..32 {
            let q: i32 = if j == 0 {
                if b % 2 == 0 {
                    127
                } else {
                    -127
                }
            } else {
                ((37 * j + 11 * b) % 255) as i32 - 127
            };
            out.push(q as i8 as u8);
        }
    }
    out
}

/// (name, ne, type, bytes) of the fixture's tensors.
fn fixture_tensors() -> Vec<(&'static str, Vec<usize>, GgmlType, Vec<u8>)> {
    vec![
        (
            "t.f32",
            vec![3, 5, 7],
            GgmlType::F32,
            f32_bytes((0..105).map(|i| (i % 23) as f32 * 0.25 - 2.0)),
        ),
        (
            "t.f16",
            vec![9, 2],
            GgmlType::F16,
            (0..18)
                .flat_map(|i| f16::from_f32((i % 11) as f32 * 0.125 - 0.5).to_le_bytes())
                .collect(),
        ),
        ("t.q8_0", vec![64, 3], GgmlType::Q8_0, q8_0_bytes(6)),
        (
            "t.f32_4d",
            vec![2, 3, 1, 2],
            GgmlType::F32,
            f32_bytes((0..12).map(|i| i as f32 * 1.5 - 4.0)),
        ),
    ]
}

#[test]
fn reads_the_python_written_fixture() {
    let path = manifest_dir().join("tests/fixtures/py_written.gguf");
    let f = GgufFile::open(&path).unwrap();
    let version = f.get_u32("fixture.version").unwrap();
    assert_eq!(
        version, FIXTURE_VERSION,
        "stale fixture: regenerate with `python3 tests/py/make_gguf_fixture.py`"
    );
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    let got: Vec<(&str, Value)> = f.kvs().map(|(k, v)| (k, v.clone())).collect();
    assert_eq!(got, fixture_kvs());
    assert_eq!(f.get_str_array("fixture.arr_str").unwrap()[3], "γδ");

    let want = fixture_tensors();
    assert_eq!(f.tensors().len(), want.len());
    for ((name, ne, ty, bytes), t) in want.iter().zip(f.tensors()) {
        assert_eq!(t.name, *name);
        assert_eq!(&t.ne, ne, "{name}");
        assert_eq!(t.ty, *ty, "{name}");
        assert_eq!(t.size, bytes.len(), "{name}");
        assert_eq!(t.offset % 32, 0, "{name}");
        assert_eq!(f.tensor_data(t), bytes.as_slice(), "{name} bytes");
    }
}

#[test]
fn our_writer_reproduces_the_python_fixture_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");
    let mut w = GgufWriter::create(&path).unwrap();
    for (k, v) in fixture_kvs() {
        w.add_kv(k, v).unwrap();
    }
    let tensors = fixture_tensors();
    for (name, ne, ty, _) in &tensors {
        w.add_tensor(name, ne, *ty).unwrap();
    }
    for (name, _, _, bytes) in &tensors {
        w.write_tensor_data(name, bytes).unwrap();
    }
    w.finish().unwrap();
    let ours = std::fs::read(&path).unwrap();
    let theirs = std::fs::read(manifest_dir().join("tests/fixtures/py_written.gguf")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "first differing byte");
}

// ---------------------------------------------------------------------------------------------------------
// A file written by our writer, used by (b) and (c).

struct Written {
    path: PathBuf,
    kvs: Vec<(&'static str, Value)>,
    /// (name, ne, type, bytes)
    tensors: Vec<(&'static str, Vec<usize>, GgmlType, Vec<u8>)>,
    alignment: usize,
    header_size: usize,
    offsets: Vec<usize>,
}

fn ours_kvs() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::Str("qwen2".into())),
        ("general.name", Value::Str("interop ✓".into())),
        ("qwen2.block_count", Value::U32(24)),
        ("t.u8", Value::U8(255)),
        ("t.i8", Value::I8(-128)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(1e-6)),
        ("t.f64", Value::F64(-0.1)),
        ("t.bool", Value::Bool(false)),
        ("t.a_u8", Value::Array(Array::U8(vec![1, 2, 3]))),
        ("t.a_i32", Value::Array(Array::I32(vec![-1, 151643]))),
        ("t.a_u32", Value::Array(Array::U32(vec![448, 14]))),
        ("t.a_i64", Value::Array(Array::I64(vec![-5, 1 << 40]))),
        ("t.a_f32", Value::Array(Array::F32(vec![0.485, 0.456, 0.406]))),
        ("t.a_f64", Value::Array(Array::F64(vec![2.5]))),
        ("t.a_bool", Value::Array(Array::Bool(vec![false, true]))),
        (
            "t.a_str",
            Value::Array(Array::Str(vec!["<|im_start|>".into(), "".into(), "Ġthe".into()])),
        ),
        ("t.a_empty", Value::Array(Array::F32(vec![]))),
    ]
}

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

fn write_ours(dir: &Path) -> Written {
    let path = dir.join("ours.gguf");
    let alignment = 64;
    let shapes: Vec<(&'static str, Vec<usize>, GgmlType)> = vec![
        ("token_embd.weight", vec![64, 5], GgmlType::Q8_0),
        ("blk.0.attn_norm.weight", vec![7], GgmlType::F32),
        ("v.patch_embd.weight", vec![3, 3, 2, 4], GgmlType::F16),
        ("blk.0.ffn_down.weight", vec![256, 2], GgmlType::Q4_K),
        ("v.position_embd.weight", vec![5, 3], GgmlType::BF16),
        ("mm.model.mlp.1.weight", vec![32, 2], GgmlType::Q4_0),
    ];
    let tensors: Vec<_> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, ne, ty))| {
            let size = ty.nbytes(&ne).unwrap();
            let mut bytes = pseudo_bytes(size, 100 + i as u64);
            if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
                // Keep half floats finite so that the Python reader's float view compares exactly.
                for b in bytes.chunks_exact_mut(2) {
                    b[1] &= 0x3f;
                }
            }
            (name, ne, ty, bytes)
        })
        .collect();
    let mut w = GgufWriter::create(&path).unwrap();
    w.set_alignment(alignment).unwrap();
    let kvs = ours_kvs();
    for (k, v) in &kvs {
        w.add_kv(k, v.clone()).unwrap();
    }
    for (name, ne, ty, _) in &tensors {
        w.add_tensor(name, ne, *ty).unwrap();
    }
    let header_size = w.header_size();
    let offsets = w.tensors().iter().map(|t| t.offset).collect();
    for (name, _, _, bytes) in &tensors {
        w.write_tensor_data(name, bytes).unwrap();
    }
    w.finish().unwrap();
    let mut all_kvs = vec![("general.alignment", Value::U32(alignment as u32))];
    all_kvs.extend(kvs);
    Written {
        path,
        kvs: all_kvs,
        tensors,
        alignment,
        header_size,
        offsets,
    }
}

// ---------------------------------------------------------------------------------------------------------
// (b) Python reads what we write.

fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(f64::from(*x)),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::Str(x) => json!(x),
        Value::Array(a) => match a {
            Array::U8(x) => json!(x),
            Array::I8(x) => json!(x),
            Array::U16(x) => json!(x),
            Array::I16(x) => json!(x),
            Array::U32(x) => json!(x),
            Array::I32(x) => json!(x),
            Array::U64(x) => json!(x),
            Array::I64(x) => json!(x),
            Array::F32(x) => json!(x.iter().map(|&f| f64::from(f)).collect::<Vec<_>>()),
            Array::F64(x) => json!(x),
            Array::Bool(x) => json!(x),
            Array::Str(x) => json!(x),
        },
    }
}

fn python_has_gguf() -> bool {
    Command::new("python3")
        .args(["-c", "import gguf"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn python_gguf_reads_our_file() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_ours(dir.path());
    // Our own reader first (it must agree with what was written).
    let f = GgufFile::open(&w.path).unwrap();
    assert_eq!(f.data_offset(), w.header_size);
    assert_eq!(f.kvs().map(|(k, v)| (k, v.clone())).collect::<Vec<_>>(), w.kvs);

    if !python_has_gguf() {
        eprintln!("SKIP python_gguf_reads_our_file: `python3 -c \"import gguf\"` failed (pip install gguf to run it)");
        return;
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let expect = serde_json::json!({
        "alignment": w.alignment,
        "data_offset": w.header_size,
        "kvs": w.kvs.iter().map(|(k, v)| {
            let mut o = serde_json::json!({"key": k, "type": v.value_type().name(), "value": value_json(v)});
            if let Value::Array(a) = v {
                o["elem_type"] = serde_json::json!(a.elem_type().name());
            }
            o
        }).collect::<Vec<_>>(),
        "tensors": w.tensors.iter().zip(&w.offsets).map(|((name, ne, ty, bytes), off)| serde_json::json!({
            "name": name, "ne": ne, "type_id": ty.id(), "offset": off, "nbytes": bytes.len(), "data_hex": hex(bytes),
        })).collect::<Vec<_>>(),
    });
    let expect_path = dir.path().join("expect.json");
    std::fs::write(&expect_path, serde_json::to_vec_pretty(&expect).unwrap()).unwrap();
    let script = manifest_dir().join("tests/py/check_gguf.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&w.path)
        .arg(&expect_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("check_gguf.py: {stdout}");
    assert!(
        out.status.success(),
        "Python gguf disagrees with our file:\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("OK"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------------------
// (c) ggml reads what we write.

fn cstr_to_string(p: *const std::os::raw::c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: ggml returns NUL-terminated strings owned by its context, alive while the context is.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn ggml_gguf_init_from_file_reads_our_file() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_ours(dir.path());
    let fname = CString::new(w.path.to_string_lossy().as_bytes()).unwrap();
    let mut data_ctx: *mut sys::ggml_context = std::ptr::null_mut();
    let params = sys::gguf_init_params {
        no_alloc: false,
        ctx: &mut data_ctx,
    };
    // SAFETY: `fname` is a valid C string; `params.ctx` points to a live local that ggml fills in. ggml
    // returns NULL (and logs) on a file it rejects; it does not abort on bad files.
    let ctx = unsafe { sys::gguf_init_from_file(fname.as_ptr(), params) };
    assert!(!ctx.is_null(), "ggml rejected our file {}", w.path.display());
    assert!(!data_ctx.is_null());

    // SAFETY (whole block): `ctx` and `data_ctx` are the live contexts created above; key and tensor ids
    // come from ggml's own lookups and are checked against -1 / the counts before use; the type of each
    // key is checked before its typed getter is called (ggml aborts on a type mismatch).
    unsafe {
        assert_eq!(sys::gguf_get_version(ctx), 3);
        assert_eq!(sys::gguf_get_alignment(ctx), w.alignment);
        assert_eq!(sys::gguf_get_data_offset(ctx), w.header_size);
        assert_eq!(sys::gguf_get_n_kv(ctx), w.kvs.len() as i64);
        for (i, (k, v)) in w.kvs.iter().enumerate() {
            assert_eq!(cstr_to_string(sys::gguf_get_key(ctx, i as i64)), *k);
            let ck = CString::new(*k).unwrap();
            let id = sys::gguf_find_key(ctx, ck.as_ptr());
            assert_eq!(id, i as i64, "{k}");
            assert_eq!(sys::gguf_get_kv_type(ctx, id), v.value_type() as u32, "{k}");
            match v {
                Value::U8(x) => assert_eq!(sys::gguf_get_val_u8(ctx, id), *x),
                Value::I8(x) => assert_eq!(sys::gguf_get_val_i8(ctx, id), *x),
                Value::U16(x) => assert_eq!(sys::gguf_get_val_u16(ctx, id), *x),
                Value::I16(x) => assert_eq!(sys::gguf_get_val_i16(ctx, id), *x),
                Value::U32(x) => assert_eq!(sys::gguf_get_val_u32(ctx, id), *x),
                Value::I32(x) => assert_eq!(sys::gguf_get_val_i32(ctx, id), *x),
                Value::U64(x) => assert_eq!(sys::gguf_get_val_u64(ctx, id), *x),
                Value::I64(x) => assert_eq!(sys::gguf_get_val_i64(ctx, id), *x),
                Value::F32(x) => assert_eq!(sys::gguf_get_val_f32(ctx, id), *x),
                Value::F64(x) => assert_eq!(sys::gguf_get_val_f64(ctx, id), *x),
                Value::Bool(x) => assert_eq!(sys::gguf_get_val_bool(ctx, id), *x),
                Value::Str(x) => assert_eq!(cstr_to_string(sys::gguf_get_val_str(ctx, id)), *x),
                Value::Array(a) => {
                    assert_eq!(sys::gguf_get_arr_type(ctx, id), a.elem_type() as u32, "{k}");
                    assert_eq!(sys::gguf_get_arr_n(ctx, id), a.len(), "{k}");
                    match a {
                        Array::Str(xs) => {
                            for (j, x) in xs.iter().enumerate() {
                                assert_eq!(cstr_to_string(sys::gguf_get_arr_str(ctx, id, j)), *x, "{k}[{j}]");
                            }
                        }
                        Array::I32(xs) if !xs.is_empty() => {
                            let p = sys::gguf_get_arr_data(ctx, id) as *const i32;
                            assert!(!p.is_null(), "{k}");
                            assert_eq!(std::slice::from_raw_parts(p, xs.len()), xs.as_slice(), "{k}");
                        }
                        Array::F32(xs) if !xs.is_empty() => {
                            let p = sys::gguf_get_arr_data(ctx, id) as *const f32;
                            assert!(!p.is_null(), "{k}");
                            assert_eq!(std::slice::from_raw_parts(p, xs.len()), xs.as_slice(), "{k}");
                        }
                        _ => {}
                    }
                }
            }
        }

        assert_eq!(sys::gguf_get_n_tensors(ctx), w.tensors.len() as i64);
        for (i, ((name, ne, ty, bytes), off)) in w.tensors.iter().zip(&w.offsets).enumerate() {
            let id = i as i64;
            assert_eq!(cstr_to_string(sys::gguf_get_tensor_name(ctx, id)), *name);
            assert_eq!(sys::gguf_get_tensor_type(ctx, id), ty.id(), "{name}");
            assert_eq!(sys::gguf_get_tensor_offset(ctx, id), *off, "{name}");
            assert_eq!(sys::gguf_get_tensor_size(ctx, id), bytes.len(), "{name}");
            // The data ggml loaded into its own context must be the bytes we wrote.
            let cname = CString::new(*name).unwrap();
            let t = sys::ggml_get_tensor(data_ctx, cname.as_ptr());
            assert!(!t.is_null(), "{name} missing from ggml's context");
            let want_ne: Vec<i64> = (0..4).map(|d| ne.get(d).map_or(1, |&n| n as i64)).collect();
            assert_eq!((*t).ne.to_vec(), want_ne, "{name}");
            assert_eq!(sys::ggml_nbytes(t), bytes.len(), "{name}");
            let data = std::slice::from_raw_parts(sys::ggml_get_data(t) as *const u8, bytes.len());
            assert_eq!(data, bytes.as_slice(), "{name} data as loaded by ggml");
        }
        sys::gguf_free(ctx);
        sys::ggml_free(data_ctx);
    }
}

#[test]
fn ggml_rejects_what_we_reject_for_misalignment() {
    // A file our reader refuses must not be something ggml would load, for the common corruption of an
    // offset: move the second tensor's offset off the alignment.
    let dir = tempfile::tempdir().unwrap();
    let w = write_ours(dir.path());
    let mut bytes = std::fs::read(&w.path).unwrap();
    let name = w.tensors[1].0.as_bytes();
    let pos = bytes.windows(name.len()).position(|win| win == name).unwrap();
    // name, u32 n_dims, u64 dims[1], u32 type, then the u64 offset.
    let off_pos = pos + name.len() + 4 + 8 + 4;
    let old = u64::from_le_bytes(bytes[off_pos..off_pos + 8].try_into().unwrap());
    assert_eq!(old as usize, w.offsets[1]);
    bytes[off_pos..off_pos + 8].copy_from_slice(&(old + 2).to_le_bytes());
    assert!(GgufFile::from_bytes(bytes.clone()).is_err());
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, &bytes).unwrap();
    let fname = CString::new(bad.to_string_lossy().as_bytes()).unwrap();
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: valid C string; no context requested; ggml returns NULL on a rejected file.
    let ctx = unsafe { sys::gguf_init_from_file(fname.as_ptr(), params) };
    if !ctx.is_null() {
        // SAFETY: `ctx` was just returned by ggml and is freed exactly once.
        unsafe { sys::gguf_free(ctx) };
        panic!("ggml accepted a file with a misplaced tensor offset");
    }
}

#[test]
fn type_table_matches_ggml() {
    for ty in GgmlType::ALL {
        // SAFETY: ids from our table are valid ggml type ids (< GGML_TYPE_COUNT), for which these functions
        // only read ggml's static type_traits table.
        let (block, size, name) = unsafe {
            (
                sys::ggml_blck_size(ty.id()),
                sys::ggml_type_size(ty.id()),
                cstr_to_string(sys::ggml_type_name(ty.id())),
            )
        };
        assert_eq!(block, ty.block_size() as i64, "{ty} block size");
        assert_eq!(size, ty.type_size(), "{ty} type size");
        assert_eq!(name, ty.name(), "{ty} name");
    }
    // Every id below GGML_TYPE_COUNT that we do not know is one that ggml retired (block size 0).
    for id in 0..sys::GGML_TYPE_COUNT {
        if GgmlType::from_u32(id).is_none() {
            // SAFETY: id < GGML_TYPE_COUNT indexes ggml's static table.
            let block = unsafe { sys::ggml_blck_size(id) };
            assert_eq!(block, 0, "ggml type id {id} is live in ggml but unknown to us");
        }
    }
}
