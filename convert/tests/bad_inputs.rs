//! Bad inputs: each gives a clear message, a non-zero exit status, and no output file (not even a
//! dot-temp file) in the output directory. Runs the real binary.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use internvl_convert::safetensors::Checkpoint;

/// A copy of the micro checkpoint to damage.
fn copy_input(tmp: &Path) -> PathBuf {
    let dst = tmp.join("in");
    std::fs::create_dir_all(&dst).unwrap();
    for f in listing(micro_checkpoint()) {
        std::fs::copy(micro_checkpoint().join(&f), dst.join(&f)).unwrap();
    }
    dst
}

/// One entry of a hand-made safetensors file.
struct Raw {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// The micro checkpoint's tensors as raw BF16 entries (in file order).
fn raw_tensors() -> Vec<Raw> {
    let ck = Checkpoint::open_dir(micro_checkpoint()).unwrap();
    let mut v: Vec<_> = ck.tensors().cloned().collect();
    v.sort_by_key(|t| t.offset);
    v.iter()
        .map(|t| {
            let vals = ck.read_f32(t).unwrap();
            let bytes = vals
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
                .collect();
            Raw {
                name: t.name.clone(),
                dtype: "BF16",
                shape: t.shape.clone(),
                bytes,
            }
        })
        .collect()
}

fn write_raw(path: &Path, entries: &[Raw]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    let mut data = Vec::new();
    for e in entries {
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.bytes.len()]}),
        );
        off += e.bytes.len();
        data.extend_from_slice(&e.bytes);
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

fn run_convert(input: &Path, out_dir: &Path) -> Output {
    Command::new(bin())
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(out_dir.join("out.gguf"))
        .args(["--type", "q8_0", "--quiet"])
        .output()
        .unwrap()
}

/// Runs the converter and checks failure, message and an empty output directory.
fn expect_failure(input: &Path, needles: &[&str]) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let o = run_convert(input, out_dir.path());
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "message lacks {n:?}: {stderr}");
    }
    assert!(
        listing(out_dir.path()).is_empty(),
        "left behind: {:?}",
        listing(out_dir.path())
    );
    stderr
}

#[test]
fn missing_and_unexpected_tensors_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    let mut raw = raw_tensors();
    raw.retain(|r| r.name != "language_model.lm_head.weight" && r.name != "mlp1.3.bias");
    raw.push(Raw {
        name: "vision_model.extra.weight".into(),
        dtype: "BF16",
        shape: vec![2],
        bytes: vec![0; 4],
    });
    write_raw(&input.join("model.safetensors"), &raw);
    expect_failure(
        &input,
        &[
            "2 missing tensor(s)",
            "language_model.lm_head.weight",
            "mlp1.3.bias",
            "1 unexpected tensor(s)",
            "vision_model.extra.weight",
        ],
    );
}

#[test]
fn wrong_shape_and_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    let mut raw = raw_tensors();
    for r in raw.iter_mut() {
        if r.name == "mlp1.3.weight" {
            // Same bytes, transposed-looking wrong shape.
            r.shape = vec![r.shape[1] * 2, r.shape[0] / 2];
        }
        if r.name == "vision_model.encoder.layers.0.ls1" {
            r.dtype = "I16";
        }
    }
    write_raw(&input.join("model.safetensors"), &raw);
    expect_failure(
        &input,
        &[
            "mlp1.3.weight: shape",
            "expected [16, 16]",
            "vision_model.encoder.layers.0.ls1: dtype I16",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    let p = input.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(&input, &["model.safetensors", "past the end of the data", "truncated"]);
    std::fs::write(&p, &bytes[..5]).unwrap();
    expect_failure(&input, &["too short"]);
}

#[test]
fn corrupt_header() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    let p = input.join("model.safetensors");
    let good = std::fs::read(&p).unwrap();
    // Bad JSON: a byte inside the header replaced.
    let mut bytes = good.clone();
    bytes[8] = b'[';
    bytes[9] = b'}';
    std::fs::write(&p, &bytes).unwrap();
    expect_failure(&input, &["header is not valid JSON"]);
    // Absurd header length.
    let mut bytes = good.clone();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    expect_failure(&input, &["header length", "absurd"]);
    // Overlapping ranges.
    let mut a = raw_tensors().into_iter().take(2).collect::<Vec<_>>();
    a[1].bytes = a[0].bytes.clone();
    a[1].shape = a[0].shape.clone();
    write_raw(&p, &a);
    let bytes = std::fs::read(&p).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + hlen].to_vec()).unwrap();
    let n = a[0].bytes.len();
    // Point the second tensor at the first one's bytes (shifted by 2: still in range, overlapping).
    let patched = header.replace(&format!("[{n},{}]", 2 * n), &format!("[{},{}]", 2, n + 2));
    assert_ne!(patched, header, "test setup: offsets not found in {header}");
    let mut out = (patched.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(patched.as_bytes());
    out.extend_from_slice(&bytes[8 + hlen..]);
    std::fs::write(&p, out).unwrap();
    expect_failure(&input, &["overlap"]);
}

#[test]
fn sharded_index_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    std::fs::remove_file(input.join("model.safetensors")).unwrap();
    expect_failure(&input, &["neither model.safetensors nor model.safetensors.index.json"]);
    std::fs::write(
        input.join("model.safetensors.index.json"),
        "{\"weight_map\": {\"a\": \"missing.safetensors\"}}",
    )
    .unwrap();
    expect_failure(&input, &["missing.safetensors"]);
    std::fs::write(input.join("model.safetensors.index.json"), "{\"weight_map\": 3}").unwrap();
    expect_failure(&input, &["weight_map"]);
}

#[test]
fn missing_or_malformed_tokenizer_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    std::fs::remove_file(input.join("merges.txt")).unwrap();
    expect_failure(&input, &["tokenizer", "merges.txt"]);
    let input2 = tmp.path().join("in2");
    std::fs::rename(&input, &input2).unwrap();
    std::fs::copy(micro_checkpoint().join("merges.txt"), input2.join("merges.txt")).unwrap();
    std::fs::write(input2.join("vocab.json"), "{\"a\": 0, ").unwrap();
    expect_failure(&input2, &["vocab.json", "invalid JSON"]);
    std::fs::copy(micro_checkpoint().join("vocab.json"), input2.join("vocab.json")).unwrap();
    std::fs::write(input2.join("merges.txt"), "#version: 0.2\nonly_one_symbol\n").unwrap();
    expect_failure(&input2, &["merges.txt line 2"]);
}

#[test]
fn config_the_runtime_cannot_run_or_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    let p = input.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["vision_config"]["norm_type"] = "rms_norm".into();
    cfg["vision_config"]["qk_normalization"] = true.into();
    cfg["ps_version"] = "v1".into();
    cfg["llm_config"]["tie_word_embeddings"] = true.into();
    std::fs::write(&p, serde_json::to_string(&cfg).unwrap()).unwrap();
    expect_failure(
        &input,
        &[
            "cannot run",
            "norm_type is \"rms_norm\"",
            "qk_normalization",
            "ps_version is \"v1\"",
            "tie_word_embeddings",
        ],
    );
    std::fs::write(&p, "{").unwrap();
    expect_failure(&input, &["config.json", "not valid JSON"]);
    std::fs::remove_file(&p).unwrap();
    expect_failure(&input, &["config.json"]);
}

#[test]
fn unwritable_output() {
    let tmp = tempfile::tempdir().unwrap();
    // The output's parent is a regular file: fails even for root.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let o = Command::new(bin())
        .arg("convert")
        .arg(micro_checkpoint())
        .arg("-o")
        .arg(blocker.join("out.gguf"))
        .arg("--quiet")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("out.gguf") && stderr.contains("Not a directory"),
        "{stderr}"
    );
    assert_eq!(listing(tmp.path()), vec!["file".to_string()]);
}

#[test]
fn output_that_is_a_directory_or_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_input(tmp.path());
    for (out, needle) in [
        (tmp.path().to_path_buf(), "is a directory"),
        (input.join("model.safetensors"), "overwrite the source"),
    ] {
        let o = Command::new(bin())
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .arg("-q")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    assert_eq!(listing(&input), listing(micro_checkpoint()));
}

#[test]
fn full_disk_leaves_nothing() {
    // A full disk, simulated without root or a mount: RLIMIT_FSIZE makes every write past 1 MiB fail
    // (EFBIG, with SIGXFSZ ignored), which takes the same error path as ENOSPC in the GGUF writer.
    let out_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("convert")
        .arg(micro_checkpoint())
        .arg("-o")
        .arg(out_dir.path().join("out.gguf"))
        .arg("--quiet")
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(
        listing(out_dir.path()).is_empty(),
        "left behind: {:?}",
        listing(out_dir.path())
    );
}

#[test]
fn sigint_leaves_nothing() {
    let out_dir = tempfile::tempdir().unwrap();
    let child = Command::new(bin())
        .arg("convert")
        .arg(tiny_checkpoint())
        .arg("-o")
        .arg(out_dir.path().join("out.gguf"))
        .args(["--type", "q4_0", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the writer's dot-temp file, then interrupt.
    let t0 = std::time::Instant::now();
    while listing(out_dir.path()).is_empty() {
        assert!(t0.elapsed().as_secs() < 60, "no temp file appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(130),
        "the run finished before the signal? stderr: {stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        listing(out_dir.path()).is_empty(),
        "left behind: {:?}",
        listing(out_dir.path())
    );
}

#[test]
fn bad_command_lines() {
    let out_dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .arg("convert")
        .arg(micro_checkpoint())
        .arg("-o")
        .arg(out_dir.path().join("out.gguf"))
        .args(["--type", "q2_k"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose one of"));
    let o = Command::new(bin())
        .args(["synth", "--preset", "tiny", "-o"])
        .arg(out_dir.path().join("x"))
        .arg("--tokenizer-from")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json: missing"));
    assert!(listing(out_dir.path()).is_empty());
}
