//! The one error type of the engine (the high-level API and what the CLI needs).
use std::path::PathBuf;

use crate::model::ModelError;
use crate::prompt::PromptError;
use crate::tokenizer::TokenizerError;

use super::hf::HfError;

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;

/// Everything that can go wrong between a model path, some images, a question and an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("prompt: {0}")]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// llama.cpp GGUFs carry no Hugging Face tokenizer JSON.
    #[error("{path} has no tokenizer (a llama.cpp GGUF?): pass the directory with vocab.json, merges.txt, added_tokens.json and tokenizer_config.json (--tokenizer DIR)")]
    NoTokenizer { path: PathBuf },
    /// The prompt (history, images, question) does not fit the KV cache.
    #[error(
        "the prompt needs {needed} tokens ({text} text + {image} image tokens for {images} image(s), {tiles} tiles) \
         but the context holds {n_ctx}{dropped}; raise the context size (-c), lower the tiles per image (--max-tiles), \
         or let the oldest turns be dropped (--truncate-history)",
        dropped = dropped_note(.dropped_turns)
    )]
    ContextOverflow {
        needed: usize,
        text: usize,
        image: usize,
        images: usize,
        tiles: usize,
        n_ctx: usize,
        dropped_turns: usize,
    },
    /// A message's `<image>` placeholders do not match its attached images.
    #[error("the message has {placeholders} `<image>` placeholder(s) but {images} image(s) attached")]
    Placeholders { placeholders: usize, images: usize },
    #[error("there is no open question: ask() before generate()")]
    NoQuestion,
    #[error("the last question has no answer yet: generate() before asking again")]
    Unanswered,
    /// The tile count of a preprocessed image differs from the one its prompt was built for.
    #[error("image {key}: preprocessing gave {found} tiles, the prompt reserved {expected}")]
    TileCount { key: String, found: usize, expected: usize },
    #[error("transcript {path}: {detail}")]
    Transcript { path: PathBuf, detail: String },
    /// Images given as pixels have no file to name in a saved conversation.
    #[error("image {index} of turn {turn} was given from memory and cannot be saved in a transcript")]
    UnsavableImage { turn: usize, index: usize },
    #[error("video {path}: {detail}")]
    Video { path: PathBuf, detail: String },
    /// A video file that FFmpeg could not read (the `video` feature).
    #[cfg(feature = "video")]
    #[error(transparent)]
    VideoFile(#[from] crate::image::ffmpeg::Error),
    #[error("invalid parameter: {0}")]
    Param(String),
    /// A JSON schema, regex or grammar that cannot be compiled, refused before generation; or the
    /// grammar engine failing during it (limits exceeded).
    #[error(transparent)]
    Constraint(#[from] crate::structured::ConstraintError),
    /// The model computed NaN or infinite logits (NaN/Inf weights in the file, or an overflow).
    #[error(
        "the model computed {count} non-finite logits of {n_vocab} at position {position}: the weights hold NaN or \
         infinite values (a corrupt file?) or the computation overflowed"
    )]
    NonFiniteLogits {
        count: usize,
        n_vocab: usize,
        position: usize,
    },
    /// A session or an input over the memory budget (`ChatParams::mem_budget`), refused before allocating.
    #[error("memory budget: {0}")]
    Budget(#[from] crate::budget::BudgetError),
}

fn dropped_note(n: &usize) -> String {
    if *n > 0 {
        format!(" even after dropping the {n} oldest turn(s)")
    } else {
        String::new()
    }
}
