//! The language model, whatever its architecture: which one a file holds (`general.architecture`), its
//! weights, and the graph over a chunk of tokens that the session runs (`build`).
//!
//! To add a language model (say InternLM2 for InternVL2-2B): its tensors in `crate::names::TensorName` and its
//! `tensor_specs` part, its hyperparameter keys in `super::config`, a file like `qwen2.rs` (its layer struct,
//! `resolve`, `build` returning `LlmGraph`), and one arm in each `match` below.

use crate::ggml::{Context, Tensor};
use crate::gguf::GgufFile;
use crate::hparams::Hparams;
use crate::names::key;

use super::kv_cache::KvCache;
use super::linear::Resolver;
use super::qwen2::{self, Qwen2Weights};
use super::{ModelError, Weights};

/// The language-model architectures this runtime implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmArch {
    Qwen2,
}

/// `general.architecture` values: ours (the vision tower, projector and language model in one file; the
/// converter writes InternVL2-1B's Qwen2 only), llama.cpp's text file, llama.cpp's mmproj (vision only).
const ARCH_INTERNVL: &str = "internvl";
const ARCH_QWEN2: &str = "qwen2";
const ARCH_CLIP: &str = "clip";

impl LlmArch {
    /// The language model of `files` from their `general.architecture`: an unknown value, or files with no
    /// language model among them, is an error naming what was found.
    pub fn of_files(files: &[&GgufFile]) -> Result<LlmArch, ModelError> {
        let mut found = None;
        for f in files {
            let v = f.get(key::ARCH).ok_or(ModelError::MissingKey(key::ARCH))?;
            let arch = v.as_str().ok_or_else(|| ModelError::BadKey {
                key: key::ARCH,
                detail: format!("expected a string, found {}", v.type_description()),
            })?;
            match arch {
                ARCH_INTERNVL | ARCH_QWEN2 => found = Some(LlmArch::Qwen2),
                ARCH_CLIP => {}
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "architecture '{other}' (general.architecture): this runtime implements \
                         '{ARCH_INTERNVL}' (ours), and llama.cpp's '{ARCH_QWEN2}' text file with a '{ARCH_CLIP}' mmproj"
                    )))
                }
            }
        }
        found.ok_or_else(|| {
            ModelError::Unsupported(format!(
                "no language model: every file is a '{ARCH_CLIP}' (vision) file; give the text GGUF too"
            ))
        })
    }
}

/// The language model's weights, by architecture.
pub enum LanguageModel {
    Qwen2(Qwen2Weights),
}

impl LanguageModel {
    pub(crate) fn resolve(arch: LlmArch, hp: &Hparams, r: &mut Resolver<'_>) -> Result<Self, ModelError> {
        match arch {
            LlmArch::Qwen2 => Ok(LanguageModel::Qwen2(Qwen2Weights::resolve(hp, r)?)),
        }
    }

    pub fn arch(&self) -> LlmArch {
        match self {
            LanguageModel::Qwen2(_) => LlmArch::Qwen2,
        }
    }
}

/// A language-model graph's inputs and outputs.
pub struct LlmGraph<'a> {
    /// `[n_embd, n]` f32 input embeddings.
    pub inp_embd: Tensor<'a>,
    /// `[n]` i32 positions (n_past..n_past+n).
    pub inp_pos: Tensor<'a>,
    /// `[n]` i64 cache rows to write (the same positions).
    pub inp_rows: Tensor<'a>,
    /// `[n_kv, n]` f16 causal mask (0 or -inf), see `causal_mask`.
    pub inp_mask: Tensor<'a>,
    /// `[n_embd, n]` final-norm hidden states (only when asked for).
    pub hidden: Option<Tensor<'a>>,
    /// `[n_vocab, n_out]` logits of the last `n_out` tokens.
    pub logits: Tensor<'a>,
}

/// What one evaluation computes: `n` new tokens whose attention reads the first `n_kv` rows of the cache
/// (the cached tokens, these, and possibly rows past them, which the mask hides), with logits for the last
/// `n_out` (and every token's final hidden state when `keep_hidden`).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub n: usize,
    pub n_kv: usize,
    pub n_out: usize,
    pub keep_hidden: bool,
    /// A decode step (one token, the session's kept graph): its attention may run on our decode kernel
    /// (`kernels::decode_attention`). Prefill chunks, one token long included, run an attention that gives
    /// a token the same bits in a chunk of any length (`kernels::prefill_attention` on the CPU, else ggml's
    /// flash attention), so that a token evaluated alone (the last prompt token of a turn whose prefix is
    /// reused from the cache) gets the same bits as inside a longer chunk, and a reused prefix the same
    /// answer as a fresh one.
    pub decode_step: bool,
}

/// Builds the graph for `batch`. Where the tokens go (`inp_pos`, `inp_rows`) is input data, so one graph
/// serves every position whose tokens fit in `n_kv` rows (the session keeps its decode graph that way).
pub fn build<'a>(ctx: &'a Context, m: &'a Weights, kv: &'a KvCache, batch: Batch) -> Result<LlmGraph<'a>, ModelError> {
    match &m.llm {
        LanguageModel::Qwen2(w) => qwen2::build(ctx, m, w, kv, batch),
    }
}

/// Upper bound of tensors a language-model graph creates.
pub fn graph_tensors(hp: &Hparams) -> usize {
    64 + hp.llm.n_layer * 48
}

/// The causal mask `[n_kv, n]` for `n` tokens after `n_past` (`n_past + n <= n_kv`): row i may see
/// positions 0..=n_past+i; the rows past them, whatever they hold, are hidden (-inf: ggml's CPU attention
/// skips such positions without reading them, so they change nothing in the result).
pub fn causal_mask(n_past: usize, n: usize, n_kv: usize) -> Vec<f32> {
    debug_assert!(n_past + n <= n_kv);
    let mut m = vec![f32::NEG_INFINITY; n_kv * n];
    for i in 0..n {
        for j in 0..=n_past + i {
            m[i * n_kv + j] = 0.0;
        }
    }
    m
}
