//! Memory budgets: what a session will allocate, known before it allocates, and the checks that refuse
//! a session or an image over a configured budget with a message that gives the numbers.
//!
//! What is counted (the weights are memory-mapped from the file: reported apart, never counted):
//! - **KV cache**, allocated when the session opens: `2 (K and V) x n_layer x n_ctx x row(n_head_kv x
//!   head_dim)`, a row of `n` values taking `4n` bytes in f32, `2n` in f16, `34 n/32` in q8_0 and `18 n/32`
//!   in q4_0 (blocks of 32 values: 32 int8 + an f16 scale; 16 bytes of nibbles + an f16 scale).
//! - **Compute buffer**: ggml's scheduler keeps one buffer, grown to the largest graph run so far, shared
//!   by the prefill and the vision graphs. For the prefill an upper bound from the hyperparameters
//!   ([`llm_compute_bytes`]: `min(n_batch, n_ctx)` tokens attending the whole context); for the vision
//!   tower the figure ggml's allocator plans for a batch of tiles, measured without allocating
//!   ([`measure_vision_compute`]; [`vision_compute_estimate`] is the hyperparameter bound used when no
//!   model is at hand).
//! - **Per image**: the f32 pixel tensor of its tiles (`3 x 448 x 448 x 4` bytes per tile) plus the
//!   patch copy of one vision batch, and the projector rows kept as its embedding (`tiles x 256 x n_embd
//!   x 4`). Images are preprocessed one at a time, so the pixels of the largest image count.
//! - **Image cache**: the embeddings the session already keeps.
//!
//! Not counted: the decoded RGB image (the caller's, bounded by `image::Limits`), token id vectors (4
//! bytes per token), ggml's per-thread work buffers (a few rows per thread) and allocator slack.
use crate::ggml::{Backend, BackendKind, Context, Sched};
use crate::hparams::{Hparams, LlmHparams};
use crate::model::kv_cache::KvType;
use crate::model::{vision, ModelError, Weights};

const F32: u64 = 4;

/// Bytes of one row of `n` values of a KV cache type (`n` a multiple of 32 for the quantized types).
pub fn kv_row_bytes(ty: KvType, n: usize) -> u64 {
    let n = n as u64;
    match ty {
        KvType::F32 => 4 * n,
        KvType::F16 => 2 * n,
        // 32 int8 values + an f16 scale per block of 32.
        KvType::Q8_0 => n.div_ceil(32) * 34,
        // 32 4-bit values (16 bytes) + an f16 scale per block of 32.
        KvType::Q4_0 => n.div_ceil(32) * 18,
    }
}

/// Bytes of the KV cache of `n_ctx` tokens: K and V, per layer, `n_ctx` rows of `n_head_kv x head_dim`.
pub fn kv_cache_bytes(llm: &LlmHparams, n_ctx: usize, ty: KvType) -> u64 {
    2 * llm.n_layer as u64 * n_ctx as u64 * kv_row_bytes(ty, llm.n_embd_kv())
}

/// Bytes of one preprocessed tile (`C x S x S` f32).
pub fn tile_pixel_bytes(hp: &Hparams) -> u64 {
    let v = &hp.vision;
    (v.n_channels * v.image_size * v.image_size) as u64 * F32
}

/// Bytes of the projector rows (`<IMG_CONTEXT>` embeddings) of `tiles` tiles.
pub fn embedding_bytes(hp: &Hparams, tiles: usize) -> u64 {
    (tiles * hp.num_image_token() * hp.llm.n_embd) as u64 * F32
}

/// Upper bound of the compute buffer of one LLM graph: `n` new tokens attending `n_kv` positions
/// (flash attention: no `n x n_kv` score matrix), one row of logits.
///
/// Inputs: embeddings `4dn`, positions and cache rows `12n`, the f16 mask `2 n_kv n`. Per layer, all
/// f32 and counted as if alive together: norms, residual, Q, attention output, o-projection (`7dn`),
/// K, V and their RoPE (`4 d_kv n`), gate, up and SwiGLU (`3 ff n`). Then the final norm (`2dn`) and
/// the logits (`4 n_vocab`). The allocator reuses the memory of finished layers, so one layer counts.
pub fn llm_compute_bytes(hp: &Hparams, n: usize, n_kv: usize) -> u64 {
    let t = &hp.llm;
    let (n, n_kv) = (n as u64, n_kv as u64);
    let (d, dkv, ff) = (t.n_embd as u64, t.n_embd_kv() as u64, t.n_ff as u64);
    let inputs = F32 * d * n + 12 * n + 2 * n_kv * n;
    let layer = F32 * n * (7 * d + 4 * dkv + 3 * ff);
    let out = F32 * 2 * d * n + F32 * t.n_vocab as u64;
    inputs + layer + out
}

/// Upper bound of the vision compute buffer for `tiles` tiles per graph from the hyperparameters alone
/// (the matmul attention path: a `n_tok x n_tok x n_head` score matrix per tile and its softmax).
/// [`measure_vision_compute`] gives ggml's own figure, which is what the checks use when a model is
/// loaded.
pub fn vision_compute_estimate(hp: &Hparams, tiles: usize) -> u64 {
    let v = &hp.vision;
    let t = tiles as u64;
    let n_tok = v.n_patches() as u64 + 1;
    let x = v.n_embd as u64 * n_tok;
    let kq = n_tok * n_tok * v.n_head as u64;
    let ff = v.n_ff as u64 * n_tok;
    let patches = (v.n_channels * v.patch_size * v.patch_size * v.n_patches()) as u64;
    F32 * t * (patches + 2 * kq + 2 * ff + 6 * x)
}

/// The vision compute buffer for `tiles` tiles per graph as ggml's allocator plans it
/// (`ggml_backend_sched_reserve_size` over the real graph, on the model's device): nothing is
/// allocated but graph metadata.
pub fn measure_vision_compute(model: &Weights, tiles: usize) -> Result<u64, ModelError> {
    if tiles == 0 {
        return Ok(0);
    }
    let cpu = Backend::cpu(1)?;
    let gpu = if model.device == BackendKind::Gpu {
        Some(Backend::gpu()?)
    } else {
        None
    };
    let n_graph = vision::graph_tensors(&model.hp);
    let mut sched = match &gpu {
        Some(g) => Sched::new(&[g, &cpu], n_graph)?,
        None => Sched::new(&[&cpu], n_graph)?,
    };
    let ctx = Context::new(n_graph, 1)?;
    let g = vision::build(&ctx, model, tiles, false)?;
    let mut graph = ctx.new_graph()?;
    graph.build_forward(g.proj_out)?;
    Ok(sched.reserve_size(&graph).iter().map(|&b| b as u64).sum())
}

/// What a session allocates when it opens (checked against the budget before anything is allocated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionNeeds {
    pub kv_bytes: u64,
    /// The prefill compute buffer bound ([`llm_compute_bytes`] for `min(n_batch, n_ctx)` tokens).
    pub compute_bytes: u64,
}

impl SessionNeeds {
    pub fn new(hp: &Hparams, n_ctx: usize, kv_type: KvType, n_batch: usize) -> Self {
        SessionNeeds {
            kv_bytes: kv_cache_bytes(&hp.llm, n_ctx, kv_type),
            compute_bytes: llm_compute_bytes(hp, n_batch.min(n_ctx).max(1), n_ctx),
        }
    }
    pub fn total(&self) -> u64 {
        self.kv_bytes + self.compute_bytes
    }
}

/// What the images of a turn need, beyond what the session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageNeeds {
    pub images: usize,
    pub tiles: usize,
    /// Tiles per vision graph (`min(vision_batch, largest image's tiles)`).
    pub batch: usize,
    /// The largest image's pixel tensor plus the patch copy of one batch.
    pub pixel_bytes: u64,
    /// The vision compute buffer for `batch` tiles.
    pub compute_bytes: u64,
    /// The projector rows of all the images.
    pub embedding_bytes: u64,
}

impl ImageNeeds {
    /// Needs of images with these tile counts, encoded `vision_batch` tiles per graph, with the vision
    /// compute buffer `compute_for(batch)` (measured or estimated).
    pub fn new(hp: &Hparams, tiles: &[usize], vision_batch: usize, compute_for: impl FnOnce(usize) -> u64) -> Self {
        let largest = tiles.iter().copied().max().unwrap_or(0);
        let batch = vision_batch.max(1).min(largest);
        let total: usize = tiles.iter().sum();
        ImageNeeds {
            images: tiles.len(),
            tiles: total,
            batch,
            pixel_bytes: tile_pixel_bytes(hp) * (largest + batch) as u64,
            compute_bytes: compute_for(batch),
            embedding_bytes: embedding_bytes(hp, total),
        }
    }
}

/// Memory a session holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InUse {
    pub kv_bytes: u64,
    /// The compute buffer: what the scheduler holds, at least the prefill bound reserved at creation.
    pub compute_bytes: u64,
    /// Embeddings in the session's image cache.
    pub image_cache_bytes: u64,
}

impl InUse {
    pub fn total(&self) -> u64 {
        self.kv_bytes + self.compute_bytes + self.image_cache_bytes
    }
}

/// A session or an input that would exceed the memory budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    #[error(
        "the session needs {} ({} KV cache: {n_ctx} tokens x {n_layer} layers x {n_head_kv} KV heads x {head_dim} x 2 \
         (K and V) in {kv_type}; + {} compute buffer for a prefill of {n_batch} tokens) but the memory budget is {}; \
         lower the context size or the batch size, use a smaller KV type, or raise the budget \
         (weights: {} mapped from the file, not counted)",
        fmt_bytes(.kv_bytes + .compute_bytes),
        fmt_bytes(*.kv_bytes),
        fmt_bytes(*.compute_bytes),
        fmt_bytes(*.budget),
        fmt_bytes(*.weight_bytes)
    )]
    Session {
        n_ctx: usize,
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        kv_type: &'static str,
        kv_bytes: u64,
        n_batch: usize,
        compute_bytes: u64,
        budget: u64,
        weight_bytes: u64,
    },
    #[error(
        "{images} image(s) with {tiles} tiles need {}: {} pixels + {} vision compute for {batch} tiles per graph \
         ({} beyond the compute buffer held) + {} embeddings; session budget {}, in use {} (KV cache {}, compute \
         buffer {}, image cache {}); use fewer tiles per image (max_tiles), a smaller vision batch, or raise the budget",
        fmt_bytes(.pixel_bytes + .compute_growth + .embedding_bytes),
        fmt_bytes(*.pixel_bytes),
        fmt_bytes(*.compute_bytes),
        fmt_bytes(*.compute_growth),
        fmt_bytes(*.embedding_bytes),
        fmt_bytes(*.budget),
        fmt_bytes(.kv_bytes + .compute_in_use + .image_cache_bytes),
        fmt_bytes(*.kv_bytes),
        fmt_bytes(*.compute_in_use),
        fmt_bytes(*.image_cache_bytes)
    )]
    Images {
        images: usize,
        tiles: usize,
        batch: usize,
        pixel_bytes: u64,
        compute_bytes: u64,
        /// How much the compute buffer must grow: `compute_bytes - compute_in_use` when positive.
        compute_growth: u64,
        embedding_bytes: u64,
        budget: u64,
        kv_bytes: u64,
        compute_in_use: u64,
        image_cache_bytes: u64,
    },
}

/// Checks a new session against `budget` bytes (0: no limit).
pub fn check_session(
    hp: &Hparams,
    n_ctx: usize,
    kv_type: KvType,
    n_batch: usize,
    budget: u64,
    weight_bytes: u64,
) -> Result<SessionNeeds, BudgetError> {
    let needs = SessionNeeds::new(hp, n_ctx, kv_type, n_batch);
    if budget > 0 && needs.total() > budget {
        return Err(BudgetError::Session {
            n_ctx,
            n_layer: hp.llm.n_layer,
            n_head_kv: hp.llm.n_head_kv,
            head_dim: hp.llm.head_dim(),
            kv_type: kv_type.ggml().name(),
            kv_bytes: needs.kv_bytes,
            n_batch: n_batch.min(n_ctx),
            compute_bytes: needs.compute_bytes,
            budget,
            weight_bytes,
        });
    }
    Ok(needs)
}

/// Checks images about to be encoded against `budget` bytes (0: no limit) given what is in use.
pub fn check_images(needs: &ImageNeeds, in_use: &InUse, budget: u64) -> Result<(), BudgetError> {
    let growth = needs.compute_bytes.saturating_sub(in_use.compute_bytes);
    let total = in_use.total() + needs.pixel_bytes + growth + needs.embedding_bytes;
    if budget > 0 && needs.tiles > 0 && total > budget {
        return Err(BudgetError::Images {
            images: needs.images,
            tiles: needs.tiles,
            batch: needs.batch,
            pixel_bytes: needs.pixel_bytes,
            compute_bytes: needs.compute_bytes,
            compute_growth: growth,
            embedding_bytes: needs.embedding_bytes,
            budget,
            kv_bytes: in_use.kv_bytes,
            compute_in_use: in_use.compute_bytes,
            image_cache_bytes: in_use.image_cache_bytes,
        });
    }
    Ok(())
}

/// Bytes for people: `512 B`, `1.5 KiB`, `31.2 MiB`, `1.50 GiB` (powers of 1024).
pub fn fmt_bytes(b: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = b as f64;
    if b < 1024 {
        format!("{b} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else if f < KIB * KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else {
        format!("{:.2} GiB", f / (KIB * KIB * KIB))
    }
}

/// Parses a byte count: a number with an optional suffix K, M, G or T (powers of 1024; `KB`, `KiB`,
/// `MB`, ... mean the same), e.g. `1.5G`, `512M`, `268435456`. `0` means no limit.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 1.5G, 512M, 1000000)"))?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    #[test]
    fn kv_rows_match_ggml_block_sizes() {
        for (ty, g) in [
            (KvType::F32, GgmlType::F32),
            (KvType::F16, GgmlType::F16),
            (KvType::Q8_0, GgmlType::Q8_0),
            (KvType::Q4_0, GgmlType::Q4_0),
        ] {
            for n in [32, 64, 128, 256] {
                assert_eq!(Some(kv_row_bytes(ty, n) as usize), g.row_size(n), "{ty:?} {n}");
            }
        }
        // InternVL2-1B: 24 layers, 2 KV heads of 64, 4096 tokens in f16 = 48 MiB.
        let hp = Hparams::internvl2_1b();
        assert_eq!(kv_cache_bytes(&hp.llm, 4096, KvType::F16), 48 << 20);
    }

    #[test]
    fn bytes_parse_and_print() {
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes(" 64 kb "), Ok(64 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("1.5X").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("1e400").is_err());
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(48 << 20), "48.0 MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.50 GiB");
    }

    #[test]
    fn image_needs_add_up() {
        let hp = Hparams::tiny();
        let n = ImageNeeds::new(&hp, &[13, 1], 4, |b| b as u64 * 1000);
        assert_eq!((n.images, n.tiles, n.batch), (2, 14, 4));
        assert_eq!(n.pixel_bytes, 17 * 3 * 448 * 448 * 4);
        assert_eq!(n.embedding_bytes, 14 * 256 * 448 * 4);
        assert_eq!(n.compute_bytes, 4000);
        let in_use = InUse {
            kv_bytes: 10,
            compute_bytes: 1000,
            image_cache_bytes: 5,
        };
        let exact = in_use.total() + n.pixel_bytes + 3000 + n.embedding_bytes;
        assert!(check_images(&n, &in_use, exact).is_ok());
        let e = check_images(&n, &in_use, exact - 1).unwrap_err();
        assert!(
            matches!(
                e,
                BudgetError::Images {
                    compute_growth: 3000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(check_images(&n, &in_use, 0).is_ok(), "0 is no limit");
    }
}
