//! The high-level API that `internvl-run` itself uses: load a [`Model`], open a [`Chat`], ask
//! questions with images, and generate with streaming, progress and cancellation.
//!
//! ```no_run
//! use internvl::engine::{ChatParams, Event, Flow, GenerateParams, Image, LoadParams, Message, Model};
//! # fn main() -> Result<(), internvl::engine::EngineError> {
//! let model = Model::load("model.gguf", &LoadParams::default())?;
//! let mut chat = model.chat(ChatParams::default())?;
//! let image = Image::open("photo.jpg".as_ref(), &chat.tiling())?;
//! let gen = GenerateParams { max_new_tokens: 64, ..Default::default() };
//! let reply = chat.send(Message::text("Describe the image.").with_image(image), &gen, |e| {
//!     if let Event::Token(t) = e {
//!         print!("{t}");
//!     }
//!     Flow::Continue
//! })?;
//! // The second turn reuses the KV cache: neither the image nor the history is evaluated again.
//! let again = chat.send(Message::text("What colours dominate?"), &gen, |_| Flow::Continue)?;
//! assert_eq!(again.stats.tiles_encoded, 0);
//! # let _ = reply; Ok(()) }
//! ```
//!
//! Threads: [`Model`] is `Send + Sync` and cheap to clone; a [`Chat`] is `Send` (move it to a worker)
//! but not `Sync` (it owns a KV cache and a scheduler); a [`CancelFlag`] may be set from any thread.
//!
//! Modules: `model` (loading), `vision_input` (images as vision input: content keys, the embedding cache), `chat` (turns,
//! KV reuse, generation), `transcript` (save/load), `draw` (grounding boxes), `hf` (the Hugging Face
//! cache), `mem` (peak RSS), `args` (the command-line flags internvl-run and internvl-serve share).

pub mod args;
mod chat;
pub mod draw;
mod error;
pub mod hf;
pub mod mem;
mod model;
pub mod transcript;
mod vision_input;

pub use self::chat::{
    CancelFlag, Chat, ChatParams, Event, FinishReason, Flow, GenerateParams, ImageLayout, Message, Reply, TurnRecord,
    TurnStats,
};
pub use self::error::{EngineError, Result};
pub use self::model::{LoadParams, Model};
pub use self::transcript::Transcript;
pub use self::vision_input::{EmbeddingCache, Image, ImageKey, ImageSource, SharedEmbeddingCache};
pub use crate::image::{Normalization, TilingParams};
pub use crate::model::kv_cache::KvType;
pub use crate::sampling::{SamplingParams, TokenLogprob};
pub use crate::session::SessionParams;
pub use crate::structured::{Constraint, ConstraintError};

#[cfg(test)]
mod tests {
    /// The thread-safety promises of the module docs, checked at compile time.
    #[test]
    fn send_sync_promises() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<super::Model>();
        send_sync::<super::CancelFlag>();
        send::<super::Chat>();
        send_sync::<super::Image>();
    }
}
