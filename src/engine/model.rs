//! [`Model`]: the weights plus the tokenizer and prompt settings, loaded once and shared.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chat::DEFAULT_SYSTEM_MESSAGE;
use crate::hparams::Hparams;
use crate::image::TilingParams;
use crate::model;
use crate::tokenizer::Tokenizer;

use super::chat::{Chat, ChatParams, GenerateParams, Message, Reply};
use super::error::{EngineError, Result};
use super::{Event, Flow};

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
}

/// A loaded model: weights (memory-mapped), tokenizer and prompt settings.
///
/// `Model` is `Send + Sync` and cheap to clone (two `Arc`s): load it once and give a clone to every
/// thread; each thread opens its own [`Chat`] (a `Chat` is `Send` but not `Sync`, since it owns a
/// KV cache and a compute scheduler).
#[derive(Clone)]
pub struct Model {
    inner: Arc<model::Model>,
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
        let inner = model::Model::load_with(&paths, device, params.weight_layout)?;
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
    pub fn from_parts(inner: Arc<model::Model>, tokenizer: Tokenizer) -> Model {
        Model {
            inner,
            tokenizer: Arc::new(tokenizer),
        }
    }

    /// The low-level model (graphs, weights, metadata).
    pub fn inner(&self) -> &Arc<model::Model> {
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

    /// Bytes of weights (mapped in place).
    pub fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }

    /// Opens a conversation (a KV cache of `params.session.n_ctx` tokens).
    pub fn chat(&self, params: ChatParams) -> Result<Chat> {
        Chat::new(self.clone(), params)
    }

    /// One question, one answer: opens a [`Chat`], asks `message` and generates, streaming every
    /// piece of text to `on_token`. Return [`Flow::Stop`] from it to stop early.
    pub fn generate(
        &self,
        params: ChatParams,
        message: Message,
        gen: &GenerateParams,
        mut on_token: impl FnMut(&str) -> Flow,
    ) -> Result<Reply> {
        let mut chat = self.chat(params)?;
        chat.ask(message)?;
        chat.generate(gen, |e| match e {
            Event::Token(t) => on_token(t),
            _ => Flow::Continue,
        })
    }
}
