//! internvl: an edge runtime for InternVL2-1B (InternViT-300M + MLP projector + Qwen2-0.5B) on ggml.
//!
//! Module map: `ggml` is the only home of ggml `unsafe`; `gguf` reads and writes GGUF files (Rust-native,
//! hostile-input safe); `names` names every key and tensor; `hparams` holds the model's dimensions;
//! `model` checks a GGUF and builds the vision, projector and Qwen2 graphs; `session` runs them with a KV
//! cache; `sampling` picks tokens; `image` (tiling, Pillow-exact bicubic), `tokenizer` and `chat` build the
//! exact inputs. `panels` (q4_0 and q8_0 weights rearranged for AVX-512 VNNI: the ViT's and the language
//! model's products with them, decoding included), `int8` (int8 matrix products for f16/f32 weights in the ViT and prefill),
//! `attention` (the ViT's attention) and `activation` (its erf GELU) are our own CPU kernels, run as ggml custom ops; their only `unsafe`
//! is the SIMD intrinsics, in one `avx512.rs` each, behind safe functions that check every slice bound
//! first.
pub mod activation;
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
pub mod panels;
pub mod sampling;
pub mod session;
pub mod stop;
pub mod structured;
pub mod tokenizer;

// `structured` (constrained decoding through llguidance) and `stop` (stop strings) are shared by every
// interface through the engine's generation loop.

/// Deterministic test values for the kernels' unit tests (any spread of values in range does).
#[cfg(test)]
pub(crate) mod test_values {
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
}
