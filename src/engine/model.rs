//! [`Model`]: the weights plus the tokenizer and prompt settings, loaded once and shared.
//!
//! This module does not know about conversations: [`Model::chat`] and [`Model::generate`] are defined
//! in `chat.rs`, which depends on this one (never the other way round).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hparams::Hparams;
use crate::image::{Normalization, TilingParams};
use crate::model;
use crate::prompt::DEFAULT_SYSTEM_MESSAGE;
use crate::tokenizer::Tokenizer;

use super::error::{EngineError, Result};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadParams {
    /// The vision GGUF of a llama.cpp pair (text GGUF + mmproj). `None` for our single-file GGUF.
    pub mmproj: Option<PathBuf>,
    /// A directory with the tokenizer files (vocab.json, merges.txt, added_tokens.json,
    /// tokenizer_config.json), for GGUFs that carry no tokenizer JSON (llama.cpp's). Overrides the
    /// file's own tokenizer when given.
    pub tokenizer_dir: Option<PathBuf>,
    /// How CPU weights are held: ggml's repacked layouts where it has them (default, faster batched
    /// products) or everything used in place from the mapped file (zero copy, fastest load).
    pub weight_layout: model::WeightLayout,
    /// Which kernels run on the CPU (`--kernels`): the best of ours for this CPU by default.
    pub kernels: crate::kernels::Kernels,
}

/// A loaded model: weights (memory-mapped), tokenizer and prompt settings.
///
/// `Model` is `Send + Sync` and cheap to clone (two `Arc`s): load it once and give a clone to every
/// thread; each thread opens its own [`Chat`](super::Chat) (a `Chat` is `Send` but not `Sync`, since it owns a
/// KV cache and a compute scheduler).
#[derive(Clone)]
pub struct Model {
    inner: Arc<model::Weights>,
    tokenizer: Arc<Tokenizer>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("weight_bytes", &self.inner.weight_bytes())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads a GGUF (ours, or a llama.cpp text GGUF with `params.mmproj`). Every key and tensor is
    /// checked before use; the tokenizer comes from the file or from `params.tokenizer_dir`.
    pub fn load(path: impl AsRef<Path>, params: &LoadParams) -> Result<Model> {
        Self::load_on(path, params, model::Device::Cpu)
    }

    /// Like [`load`](Self::load), with the weights on `device` (`Auto` takes the GPU when this
    /// build has a GPU backend and one is found, else the CPU).
    pub fn load_on(path: impl AsRef<Path>, params: &LoadParams, device: model::Device) -> Result<Model> {
        let path = path.as_ref();
        let mut paths: Vec<&Path> = vec![path];
        if let Some(m) = &params.mmproj {
            paths.push(m);
        }
        let inner = model::Weights::load_with_kernels(&paths, device, params.weight_layout, params.kernels)?;
        let tokenizer = match (&params.tokenizer_dir, &inner.meta.tokenizer_json) {
            (Some(dir), _) => Tokenizer::from_dir(dir)?,
            (None, Some(json)) => Tokenizer::from_json(json)?,
            (None, None) => {
                return Err(EngineError::NoTokenizer {
                    path: path.to_path_buf(),
                })
            }
        };
        Ok(Self::from_parts(Arc::new(inner), tokenizer))
    }

    /// Wraps an already loaded model and tokenizer.
    pub fn from_parts(inner: Arc<model::Weights>, tokenizer: Tokenizer) -> Model {
        Model {
            inner,
            tokenizer: Arc::new(tokenizer),
        }
    }

    /// The low-level model (graphs, weights, metadata).
    pub fn inner(&self) -> &Arc<model::Weights> {
        &self.inner
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn hparams(&self) -> &Hparams {
        &self.inner.hp
    }

    /// The system message stored in the file, or InternVL2-1B's (spec §5.1).
    pub fn default_system(&self) -> &str {
        self.inner
            .meta
            .system_message
            .as_deref()
            .unwrap_or(DEFAULT_SYSTEM_MESSAGE)
    }

    /// Generation stops at these ids (spec §5.4: `<|im_end|>`, `<|im_start|>`, `<|endoftext|>`).
    pub fn stop_ids(&self) -> &[u32] {
        &self.inner.meta.stop_ids
    }

    /// The tiling the model was trained with (spec §7.1: 448-pixel tiles, 1..=12, thumbnail),
    /// from the file's metadata.
    pub fn tiling(&self) -> TilingParams {
        let meta = &self.inner.meta;
        TilingParams {
            image_size: u32::try_from(self.inner.hp.vision.image_size).unwrap_or(u32::MAX),
            min_tiles: u32::try_from(meta.min_tiles).unwrap_or(1),
            max_tiles: u32::try_from(meta.max_tiles).unwrap_or(12),
            use_thumbnail: meta.use_thumbnail,
        }
    }

    /// The image statistics tiles are normalized with, from the file (spec §7.1 step 4: ImageNet's for
    /// InternVL2-1B; checked at load).
    pub fn normalization(&self) -> Normalization {
        self.inner.meta.normalization
    }

    /// Bytes of weights (mapped in place).
    pub fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
}
