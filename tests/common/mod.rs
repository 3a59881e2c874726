//! Shared test helpers: tiny synthetic models built with the workspace's `internvl-convert` binary
//! (`cargo test --release --workspace` builds it), cached under target/test-models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

/// The workspace root. This file is also compiled into serve/'s tests (their manifest dir is serve/), so
/// the root is found as the directory holding Cargo.lock.
pub fn repo() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("Cargo.lock").is_file() {
        dir
    } else {
        dir.join("..")
    }
}

pub fn shared() -> PathBuf {
    repo().join("../shared")
}

/// target/release (the directory holding this test binary's parent `deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// The converter binary. `INTERNVL_CONVERTER` overrides it: under qemu-user (scripts/aarch64-test.sh) the
/// kernel cannot exec the aarch64 converter next to the test binary, so the script points this at a wrapper
/// that runs it through qemu. The cached test models are keyed on this file's mtime.
pub fn converter() -> PathBuf {
    let p = match std::env::var_os("INTERNVL_CONVERTER") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("internvl-convert"),
    };
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --release --workspace` (it builds the converter)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run internvl-convert");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tiny synthetic checkpoint for `seed` (a directory in the original Hugging Face layout).
pub fn tiny_checkpoint(seed: u64) -> PathBuf {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = target_dir().join("test-models").join(format!("tiny-{seed}"));
    let conv = converter();
    let stamp = dir.join(".done");
    let fresh = stamp.is_file()
        && std::fs::metadata(&stamp).and_then(|m| m.modified()).ok()
            >= std::fs::metadata(&conv).and_then(|m| m.modified()).ok();
    if !fresh {
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new(&conv)
            .args(["synth", "--preset", "tiny", "--seed", &seed.to_string(), "-q", "-o"])
            .arg(&dir)
            .arg("--tokenizer-from")
            .arg(shared().join("model/InternVL2-1B")));
        std::fs::write(&stamp, b"ok").expect("stamp");
    }
    dir
}

/// Converter arguments for pure q4_0 (every matrix; `--type q4_0` alone keeps the vision tower, projector,
/// token embedding and lm_head at q8_0).
pub const PURE_Q4_0: &[&str] = &["--vision-type", "q4_0", "--embd-type", "q4_0", "--output-type", "q4_0"];

/// The tiny model converted with `--type ty` (extra converter args appended), cached.
pub fn tiny_gguf(seed: u64, ty: &str, extra: &[&str]) -> PathBuf {
    let ck = tiny_checkpoint(seed);
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let tag = if extra.is_empty() {
        ty.to_string()
    } else {
        format!("{ty}-{}", extra.join("-").replace(['-', '/'], ""))
    };
    let out = target_dir().join("test-models").join(format!("tiny-{seed}-{tag}.gguf"));
    let newer = |a: &Path, b: &Path| {
        std::fs::metadata(a).and_then(|m| m.modified()).ok() >= std::fs::metadata(b).and_then(|m| m.modified()).ok()
    };
    if !out.is_file() || !newer(&out, &ck.join(".done")) {
        run(Command::new(converter())
            .arg("convert")
            .arg(&ck)
            .arg("-o")
            .arg(&out)
            .args(["--type", ty, "-q"])
            .args(extra));
    }
    out
}

/// Reads a little-endian uint8 `.npy` file (the reference tiles): (shape, bytes).
pub fn read_npy_u8(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&data[..6], b"\x93NUMPY", "{}: not an npy file", path.display());
    let (hlen, start) = if data[6] == 1 {
        (u16::from_le_bytes([data[8], data[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&data[start..start + hlen]).expect("npy header");
    assert!(
        header.contains("'descr': '|u1'") || header.contains("'descr': '<u1'"),
        "not uint8: {header}"
    );
    assert!(header.contains("'fortran_order': False"));
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_str.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    (shape, data[start + hlen..].to_vec())
}

/// ImageNet normalization exactly as the goldens' manifest says: float32 ops, true divisions,
/// HWC uint8 -> CHW f32.
pub fn normalize_hwc_u8(tile: &[u8], size: usize) -> Vec<f32> {
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let mut out = vec![0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let v = tile[(y * size + x) * 3 + c] as f32 / 255.0f32;
                out[c * size * size + y * size + x] = (v - MEAN[c]) / STD[c];
            }
        }
    }
    out
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += *x as f64 * *y as f64;
        aa += (*x as f64).powi(2);
        bb += (*y as f64).powi(2);
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// The largest of `values`, NaN when any is NaN. `f64::max` (and `f32::max`) return the other operand when
/// one is NaN, so a fold over them drops a NaN and a bound `max <= tol` would pass on a broken output.
pub fn nan_max(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut m = 0f64;
    for v in values {
        if v.is_nan() {
            return f64::NAN;
        }
        m = m.max(v);
    }
    m
}

/// max |a - b|, NaN when any element of either side is NaN (infinite when one is infinite).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    nan_max(a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()))
}

/// max |a - b| / max |b| (b is the reference). NaN when either side holds a NaN, so `rel <= tol` fails.
pub fn rel_max_diff(a: &[f32], b: &[f32]) -> f64 {
    max_abs_diff(a, b) / nan_max(b.iter().map(|y| (*y as f64).abs()))
}
