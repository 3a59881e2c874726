//! internvl: an edge runtime for InternVL2-1B (InternViT-300M + MLP projector + Qwen2-0.5B) on ggml.
//!
//! Module map: `ggml` is the only home of ggml `unsafe`; `gguf` reads and writes GGUF files (Rust-native,
//! hostile-input safe); `model` holds everything model-specific: `names` (every key and tensor),
//! `hparams` (the dimensions), the typed weights and the vision, projector and Qwen2 graphs; `session` runs them
//! with a KV cache; `sampling` picks tokens; `image` (tiling, Pillow-exact bicubic), `tokenizer` and `prompt`
//! (the chat template) build the exact inputs; `engine` is the high-level API every interface uses; `env` reads
//! every environment variable the library honours. `kernels` holds our own CPU kernels (q4_0/q8_0 panels, int8
//! products, the ViT's attention and GELU), run as ggml custom nodes, and the choice of which run
//! (`kernels::Kernels`, made at load). docs/architecture.md follows the data path through these files.
pub mod budget;
pub mod capi;
pub mod engine;
pub mod env;
pub mod ggml;
pub mod gguf;
pub mod image;
pub mod kernels;
pub mod model;
// The model's names and dimensions live in `model`; these paths stay for every user of them.
pub use model::{hparams, names};
pub mod prompt;
pub mod sampling;
pub mod session;
pub mod stop;
pub mod structured;
pub mod tokenizer;

// `structured` (constrained decoding through llguidance) and `stop` (stop strings) are shared by every
// interface through the engine's generation loop.

/// Deterministic test values for the kernels' unit tests and benches (any spread of values in range
/// does). Not part of the API.
#[doc(hidden)]
pub mod test_values {
    /// `n` values in [-1, 1) from an xorshift sequence started at `seed`.
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// For tests that run every instruction set on the same input: keeps the first path's `out` in
    /// `first`, and panics unless every later path's `out` has the same bits.
    pub fn same_bits_as_first(first: &mut Option<Vec<f32>>, out: Vec<f32>, path: &str) {
        match first {
            None => *first = Some(out),
            Some(f) => assert!(
                f.len() == out.len() && f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{path} differs from the first path (the portable one)"
            ),
        }
    }
}
