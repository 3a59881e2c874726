//! internvl-convert: turns the Hugging Face checkpoint of OpenGVLab/InternVL2-1B into one GGUF that the
//! `internvl` runtime loads (or, with `--split`, llama.cpp's text + mmproj pair), and writes synthetic
//! random-weight checkpoints in the original layout for tests.
//!
//! Modules: `safetensors` (hostile-input-safe reader with positioned reads, streaming writer),
//! `config` (config.json -> `Hparams`, refusing what the runtime cannot run), `policy` (which ggml
//! type each tensor gets), `convert` (the streaming conversion), `synth` (synthetic checkpoints),
//! `progress`, `signal` (Ctrl-C leaves no partial output), `rng`.
//!
//! Hugging Face names appear only in this crate; the mapping itself is `internvl::names::tensor_specs`.

pub mod config;
pub mod convert;
pub mod policy;
pub mod progress;
pub mod rng;
pub mod safetensors;
pub mod signal;
pub mod synth;

use std::path::PathBuf;

/// Environment variable naming the directory with the real InternVL2-1B JSON and tokenizer files
/// (config.json, generation_config.json, preprocessor_config.json, vocab.json, merges.txt, ...); listed
/// with every other variable in [`internvl::env`].
pub const MODEL_FILES_ENV: &str = internvl::env::MODEL_FILES;

/// The directory with the real model's JSON and tokenizer files for tests: `$INTERNVL_MODEL_FILES`, or
/// the workspace's sibling `shared/model/InternVL2-1B` (the project's layout; CI lays `shared/` beside
/// the clone).
#[doc(hidden)]
pub fn test_model_files_dir() -> PathBuf {
    internvl::env::dir(internvl::env::DirVar::ModelFiles)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/model/InternVL2-1B"))
}
