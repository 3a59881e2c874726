//! internvl: an edge runtime for InternVL2-1B (InternViT-300M + MLP projector + Qwen2-0.5B) on ggml.
//!
//! Module map: `ggml` is the only home of ggml `unsafe`; `gguf` reads and writes GGUF files (Rust-native,
//! hostile-input safe); `names` names every key and tensor; `hparams` holds the model's dimensions;
//! `model` checks a GGUF and builds the vision, projector and Qwen2 graphs; `session` runs them with a KV
//! cache; `sampling` picks tokens; `image` (tiling, Pillow-exact bicubic), `tokenizer` and `chat` build the
//! exact inputs.
pub mod attention;
pub mod budget;
pub mod capi;
pub mod chat;
pub mod engine;
pub mod ggml;
pub mod gguf;
pub mod hparams;
pub mod image;
pub mod int8;
pub mod model;
pub mod names;
pub mod sampling;
pub mod session;
pub mod tokenizer;
