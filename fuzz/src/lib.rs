//! The parsers under test, compiled from the project's own source files.
//!
//! The `internvl` crate links ggml/llama.cpp (a long C++ build that AddressSanitizer builds would repeat),
//! but none of the parsers touch it. So the fuzz crate includes their source files directly, at the same
//! module paths (`internvl_fuzz::gguf` is `src/gguf`, `internvl_fuzz::tokenizer` is `src/tokenizer.rs`,
//! ...), with the same dependency versions and features as the root crate (checked against the root
//! Cargo.lock). A fix in `src/` is what the fuzzer runs next time; nothing is copied.
#![allow(dead_code, unexpected_cfgs)]

#[path = "../../src/prompt.rs"]
pub mod prompt;
#[path = "../../src/gguf/mod.rs"]
pub mod gguf;
#[path = "../../src/model/hparams.rs"]
pub mod hparams;
#[path = "../../src/image/mod.rs"]
pub mod image;
#[path = "../../src/model/names.rs"]
pub mod names;
#[path = "../../src/tokenizer.rs"]
pub mod tokenizer;

/// `src/model/config.rs` (hyperparameters and metadata from GGUF keys), reachable as `model::config`.
/// Its `use super::ModelError` finds [`ModelError`] here.
#[path = "../../src/model/config.rs"]
#[doc(hidden)]
pub mod model_config;

pub mod model {
    pub use super::model_config as config;
    pub use super::ModelError;
}

/// The subset of `internvl::model::ModelError` (in `src/model/mod.rs`, next to the ggml graphs) that
/// config.rs uses, with the same variants and messages.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing metadata key '{0}'")]
    MissingKey(&'static str),
    #[error("metadata key '{key}': {detail}")]
    BadKey { key: &'static str, detail: String },
    #[error("the model is not runnable: {0}")]
    Unsupported(String),
}

/// `convert/src/safetensors.rs` of internvl-convert.
#[path = "../../convert/src/safetensors.rs"]
pub mod safetensors;
