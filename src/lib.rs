//! internvl: an edge runtime for InternVL2-1B (InternViT-300M + MLP projector + Qwen2-0.5B) on ggml.
//!
//! Module map: `ggml` is the only home of ggml `unsafe`; `gguf` reads and writes GGUF files (Rust-native,
//! hostile-input safe); `names` names every key and tensor; `hparams` holds the model's dimensions;
//! `model` checks a GGUF and builds the vision, projector and Qwen2 graphs; `session` runs them with a KV
//! cache; `sampling` picks tokens; `image` (tiling, Pillow-exact bicubic), `tokenizer` and `chat` build the
//! exact inputs. `int8` (int8 matrix products for the ViT and prefill) and `attention` (the ViT's attention)
//! are our own CPU kernels, run as ggml custom ops; their only `unsafe` is the SIMD intrinsics, in one
//! `avx512.rs` each, behind safe functions that check every slice bound first.
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
