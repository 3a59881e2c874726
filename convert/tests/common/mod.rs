//! Shared helpers of the converter's integration tests: synthetic checkpoints made once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use internvl::hparams::Hparams;
use internvl_convert::convert::{convert, ConvertOptions, ConvertReport};
use internvl_convert::policy::TypeChoice;
use internvl_convert::progress::Progress;
use internvl_convert::synth::synth;

/// The real model's JSON and tokenizer files (`$INTERNVL_MODEL_FILES` or ../shared/model/InternVL2-1B).
pub fn model_files() -> PathBuf {
    let d = internvl_convert::test_model_files_dir();
    assert!(
        d.join("vocab.json").is_file(),
        "{} has no vocab.json: set INTERNVL_MODEL_FILES to the InternVL2-1B JSON/tokenizer directory",
        d.display()
    );
    d
}

/// The reference token vectors (spec §10).
pub fn reference_dir() -> PathBuf {
    model_files().join("../../reference")
}

/// The converter binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_internvl-convert"))
}

/// Smallest configuration the converter accepts (fast bad-input tests): 1 layer per part, width 16,
/// the real vocabulary (the real tokenizer needs it).
pub fn micro() -> Hparams {
    let mut hp = Hparams::tiny();
    hp.vision.n_embd = 16;
    hp.vision.n_ff = 32;
    hp.vision.n_layer = 1;
    hp.vision.n_head = 2;
    hp.llm.n_embd = 16;
    hp.llm.n_ff = 32;
    hp.llm.n_layer = 1;
    hp.llm.n_head = 2;
    hp.llm.n_head_kv = 1;
    hp
}

/// Like `micro` but with every row length a multiple of 32 (32, 64, 128), so every 32-block type
/// quantizes every matrix.
pub fn aligned() -> Hparams {
    let mut hp = micro();
    hp.vision.n_embd = 32;
    hp.vision.n_ff = 64;
    hp.llm.n_embd = 32;
    hp.llm.n_ff = 64;
    hp
}

/// Writes a synthetic checkpoint into `dir` (must be new or empty).
pub fn synth_into(hp: &Hparams, seed: u64, dir: &Path, shards: usize) {
    synth(hp, seed, dir, shards, &model_files(), &mut Progress::hidden(), &|| {
        false
    })
    .unwrap();
}

/// Synthesizes (once per test process) into `$CARGO_TARGET_TMPDIR/<test crate>/<name>`: regenerated on
/// each run (0.5 s), overwritten by the next, so nothing accumulates in /tmp.
fn cached(cell: &'static OnceLock<PathBuf>, name: &str, hp: fn() -> Hparams, seed: u64) -> &'static Path {
    cell.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(env!("CARGO_CRATE_NAME"))
            .join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        synth_into(&hp(), seed, &dir, 1);
        dir
    })
}

/// The tiny preset, seed 1.
pub fn tiny_checkpoint() -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    cached(&C, "tiny", Hparams::tiny, 1)
}

/// `micro()`, seed 2.
pub fn micro_checkpoint() -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    cached(&C, "micro", micro, 2)
}

/// `aligned()`, seed 3.
pub fn aligned_checkpoint() -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    cached(&C, "aligned", aligned, 3)
}

pub fn convert_to(input: &Path, output: &Path, types: TypeChoice, split: bool) -> ConvertReport {
    let opts = ConvertOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        types,
        split,
        mmproj: None,
    };
    convert(&opts, &mut Progress::hidden(), &|| false).unwrap()
}

/// Files in a directory (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
