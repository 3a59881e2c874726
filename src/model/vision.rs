//! InternViT-300M, pixel shuffle v2 and the mlp1 projector (spec §3), as one ggml graph over T tiles.
//!
//! Shapes in comments are ggml order: `[D, N, T]` is D channels (fastest), N tokens, T tiles.

use crate::ggml::{Context, Tensor, WeightId};
use crate::hparams::Hparams;
use crate::names::TensorName as N;

use super::linear::{Linear, Resolver};
use super::{projector, ModelError, Weights};

/// The q, k and v products of a ViT block: fused rows (ours) or three matrices (llama.cpp's mmproj).
pub enum Qkv {
    Fused(Linear),
    /// q, k, v in that order.
    Split(Box<[Linear; 3]>),
}

/// One ViT block's weights.
pub struct VisionLayer {
    pub ln1: (WeightId, WeightId),
    pub qkv: Qkv,
    pub attn_out: Linear,
    pub ls1: WeightId,
    pub ln2: (WeightId, WeightId),
    pub ffn_up: Linear,
    pub ffn_down: Linear,
    pub ls2: WeightId,
}

/// The vision tower's weights.
pub struct VisionWeights {
    pub patch_embd: WeightId,
    pub patch_bias: WeightId,
    pub class_embd: WeightId,
    pub pos_embd: WeightId,
    pub layers: Vec<VisionLayer>,
}

impl VisionWeights {
    /// `split_qkv`: the file holds llama.cpp's split q, k, v instead of our fused qkv.
    pub(crate) fn resolve(hp: &Hparams, split_qkv: bool, r: &mut Resolver<'_>) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(hp.vision.n_layer);
        for l in 0..hp.vision.n_layer {
            let l = Some(l);
            let qkv = if split_qkv {
                Qkv::Split(Box::new([
                    r.linear(N::VAttnQ, Some(N::VAttnQBias), l)?,
                    r.linear(N::VAttnK, Some(N::VAttnKBias), l)?,
                    r.linear(N::VAttnV, Some(N::VAttnVBias), l)?,
                ]))
            } else {
                Qkv::Fused(r.linear(N::VAttnQkv, Some(N::VAttnQkvBias), l)?)
            };
            layers.push(VisionLayer {
                ln1: (r.id(N::VLn1, l)?, r.id(N::VLn1Bias, l)?),
                qkv,
                attn_out: r.linear(N::VAttnOut, Some(N::VAttnOutBias), l)?,
                ls1: r.id(N::VLs1, l)?,
                ln2: (r.id(N::VLn2, l)?, r.id(N::VLn2Bias, l)?),
                ffn_up: r.linear(N::VFfnUp, Some(N::VFfnUpBias), l)?,
                ffn_down: r.linear(N::VFfnDown, Some(N::VFfnDownBias), l)?,
                ls2: r.id(N::VLs2, l)?,
            });
        }
        Ok(VisionWeights {
            patch_embd: r.id(N::VPatchEmbd, None)?,
            patch_bias: r.id(N::VPatchEmbdBias, None)?,
            class_embd: r.id(N::VClassEmbd, None)?,
            pos_embd: r.id(N::VPosEmbd, None)?,
            layers,
        })
    }
}

/// The graph's named outputs.
pub struct VisionGraph<'a> {
    /// Input: patches `[C*P*P, n_patches, T]`, see `patchify`.
    pub inp_patches: Tensor<'a>,
    /// Input: the CLS token repeated per tile `[D, 1, T]` (set from the class embedding).
    pub vit_out: Tensor<'a>,
    /// Projector output `[n_embd_llm, T*256]`: the rows that replace `<IMG_CONTEXT>` tokens, in order.
    pub proj_out: Tensor<'a>,
    /// Input, when the token sequence is padded (see `padded_tokens`): zeros `[D, n_pad, T]` appended to
    /// the sequence, and the attention mask `[n_tok_padded, n_tok_padded]` (f32: 0, or -inf for a padded
    /// key). Set them with `pad_inputs`.
    pub inp_pad: Option<(Tensor<'a>, Tensor<'a>)>,
}

/// The ViT's token count rounded up to a multiple of 16 for the matrix-product attention: ggml's tiled CPU
/// GEMM (llamafile sgemm) needs the first operand's row count (the keys, in k·qᵀ) to be a multiple of 4,
/// and splits work best over multiples of 16; 1025 tokens would fall back to row-by-row dot products for
/// the largest product of the attention. Padded keys are masked; padded queries are computed and dropped
/// (1.5% more work at 448 px).
pub fn padded_tokens(n_tok: usize) -> usize {
    n_tok.div_ceil(16) * 16
}

/// The values of the padding inputs of a graph built for `n_tiles` tiles: zeros, and the mask.
pub fn pad_inputs(hp: &Hparams, n_tiles: usize) -> (Vec<f32>, Vec<f32>) {
    let n_tok = hp.vision.n_patches() + 1;
    let n_pad_tok = padded_tokens(n_tok);
    let zeros = vec![0f32; hp.vision.n_embd * (n_pad_tok - n_tok) * n_tiles];
    let mut mask = vec![0f32; n_pad_tok * n_pad_tok];
    for row in mask.chunks_mut(n_pad_tok) {
        row[n_tok..].fill(f32::NEG_INFINITY);
    }
    (zeros, mask)
}

/// Rearranges normalized CHW tiles `[T, C, S, S]` into per-patch vectors `[T, n_patches, C*P*P]`
/// (patch p = row*grid + col, vector in (c, ky, kx) order: the Conv2d weight's flattening, spec §3.2).
/// The stride-P, kernel-P convolution is then a single matrix product.
pub fn patchify(hp: &Hparams, tiles: &[f32]) -> Result<Vec<f32>, ModelError> {
    let v = &hp.vision;
    let (s, p, c, g) = (v.image_size, v.patch_size, v.n_channels, v.grid());
    let per_tile = c * s * s;
    if tiles.is_empty() || !tiles.len().is_multiple_of(per_tile) {
        return Err(ModelError::Input(format!(
            "{} values are not whole {c}x{s}x{s} tiles",
            tiles.len()
        )));
    }
    let n_tiles = tiles.len() / per_tile;
    let k = c * p * p;
    let mut out = vec![0f32; tiles.len()];
    for t in 0..n_tiles {
        let tile = &tiles[t * per_tile..(t + 1) * per_tile];
        let dst = &mut out[t * per_tile..(t + 1) * per_tile];
        for row in 0..g {
            for col in 0..g {
                let base = (row * g + col) * k;
                for ch in 0..c {
                    for ky in 0..p {
                        let src = ch * s * s + (row * p + ky) * s + col * p;
                        let d = base + ch * p * p + ky * p;
                        dst[d..d + p].copy_from_slice(&tile[src..src + p]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// LayerNorm with affine weight and bias (spec §3.5: eps 1e-6 in the ViT, §3.9: 1e-5 in the projector).
pub(crate) fn layer_norm<'a>(
    ctx: &'a Context,
    x: Tensor<'a>,
    w: Tensor<'a>,
    b: Tensor<'a>,
    eps: f32,
) -> Result<Tensor<'a>, ModelError> {
    let y = ctx.norm(x, eps)?;
    let y = ctx.mul(y, w)?;
    Ok(ctx.add(y, b)?)
}

/// Builds the vision graph for `n_tiles` tiles.
pub fn build<'a>(
    ctx: &'a Context,
    m: &'a Weights,
    n_tiles: usize,
    keep_vit_out: bool,
) -> Result<VisionGraph<'a>, ModelError> {
    let hp = &m.hp;
    let v = &hp.vision;
    let (d, n_head, hd) = (v.n_embd, v.n_head, v.head_dim());
    let n_patch = v.n_patches();
    let n_tok = n_patch + 1;
    let k = v.n_channels * v.patch_size * v.patch_size;
    let t = n_tiles;

    let (w, store) = (&m.vision, &m.weights);
    let inp = ctx.new_f32(&[k, n_patch, t])?.set_name("inp_patches").set_input();
    // Patch embedding: conv weight [P, P, C, D] viewed as [C*P*P, D]; one matmul for all patches.
    let w_patch = ctx.reshape(store.tensor(w.patch_embd)?, &[k, d])?;
    let x = ctx.mul_mat(w_patch, inp)?; // [D, n_patch, T]
    let x = ctx.add(x, store.tensor(w.patch_bias)?)?;
    // CLS first, then the patches (spec §3.3; llama.cpp puts CLS last, which shifts every position).
    let cls = ctx.reshape(store.tensor(w.class_embd)?, &[d, 1, 1])?;
    let cls = ctx.repeat(cls, [d, 1, t, 1])?;
    let x = ctx.concat(cls, x, 1)?; // [D, 1+n_patch, T]

    // Position embeddings: pos[0] to CLS, pos[1+p] to patch p; at 448 the bicubic resampling is the
    // identity (spec §3.4), so it is skipped.
    let pos = ctx.reshape(store.tensor(w.pos_embd)?, &[d, n_tok])?;
    let mut x = ctx.add(x, pos)?.set_name("vit_embd");

    // The matrix-product attention runs on a sequence padded to a multiple of 16 (see `padded_tokens`).
    let attn = VitAttention::choose(m.device, m.kernels);
    let n_seq = if attn == VitAttention::Products {
        padded_tokens(n_tok)
    } else {
        n_tok
    };
    let mut inp_pad = None;
    let mut mask = None;
    if n_seq > n_tok {
        let zeros = ctx.new_f32(&[d, n_seq - n_tok, t])?.set_name("inp_pad").set_input();
        let m = ctx.new_f32(&[n_seq, n_seq])?.set_name("inp_mask").set_input();
        x = ctx.concat(x, zeros, 1)?;
        inp_pad = Some((zeros, m));
        mask = Some(m);
    }

    // The erf GELU: ours on the CPU (ggml's calls the C library's scalar erff per value), ggml's on a GPU
    // (a custom op would run on the CPU).
    let ours = m.device == crate::ggml::BackendKind::Cpu && m.kernels.gelu;
    let gelu = |x| {
        if ours {
            crate::kernels::gelu_erf_cpu(ctx, x, m.kernels.isa)
        } else {
            ctx.gelu_erf(x)
        }
    };

    let scale = 1.0 / (hd as f32).sqrt();
    let tensor = |id| store.tensor(id);
    for (l, wl) in w.layers.iter().enumerate() {
        // A Linear layer of this block (our panels or int8 when laid out at load) over all tokens.
        let linear = |x, lin: &'a Linear| lin.forward(ctx, store, x, n_seq * t);
        let h = layer_norm(ctx, x, tensor(wl.ln1.0)?, tensor(wl.ln1.1)?, v.ln_eps)?;
        // q, k, v each [hd, n_head, n_tok, T] -> permuted to [hd, n_tok, n_head, T] for attention.
        let (q, kk, vv) = match &wl.qkv {
            Qkv::Split(split) => {
                let [q, k, v] = &**split;
                let q = linear(h, q)?;
                let kk = linear(h, k)?;
                let vv = linear(h, v)?;
                let r = |x| ctx.reshape(x, &[hd, n_head, n_seq, t]);
                (r(q)?, r(kk)?, r(vv)?)
            }
            // Fused rows: Q | K | V blocks of D, each head h owning rows h*hd..(h+1)*hd (spec §2.1).
            Qkv::Fused(fused) => {
                let qkv = linear(h, fused)?; // [3D, n_seq, T]
                let row = 3 * d * 4;
                let nb = [hd * 4, row, row * n_seq];
                let view = |i: usize| ctx.view(qkv, &[hd, n_head, n_seq, t], &nb, i * d * 4);
                (view(0)?, view(1)?, view(2)?)
            }
        };
        // Bidirectional softmax((q·scale)·kᵀ)·v over all tokens (spec §3.5); only padding is masked.
        let a = if attn == VitAttention::Ours {
            crate::kernels::vit_attention(ctx, q, kk, vv, scale, m.kernels.isa)?
        // [hd, n_head, n_tok, T]
        } else if attn == VitAttention::Flash {
            let q = ctx.permute(q, [0, 2, 1, 3])?;
            let kk = ctx.permute(kk, [0, 2, 1, 3])?;
            let vv = ctx.permute(vv, [0, 2, 1, 3])?;
            ctx.flash_attn_ext(q, kk, vv, None, scale)? // [hd, n_head, n_tok, T]
        } else {
            // Two matrix products (tiled GEMM kernels) over the padded sequence.
            // q is made contiguous: ggml's CPU mul_mat uses its tiled GEMM (llamafile sgemm) only when the
            // second operand is contiguous, and falls back to row-by-row dot products otherwise. k only needs
            // contiguous rows, which the view has.
            let q = ctx.cont(ctx.permute(q, [0, 2, 1, 3])?)?; // [hd, n_tok, n_head, T]
            let kk = ctx.permute(kk, [0, 2, 1, 3])?;
            let kq = ctx.mul_mat(kk, q)?; // [n_tok(k), n_tok(q), n_head, T]
            let kq = ctx.soft_max_ext(kq, mask, scale)?;
            let vt = ctx.cont(ctx.permute(vv, [1, 2, 0, 3])?)?; // [n_tok, hd, n_head, T]
            let kqv = ctx.mul_mat(vt, kq)?; // [hd, n_tok(q), n_head, T]
            ctx.cont(ctx.permute(kqv, [0, 2, 1, 3])?)? // [hd, n_head, n_tok, T]
        };
        let a = ctx.reshape(a, &[d, n_seq, t])?; // heads concatenated in head order
        let a = linear(a, &wl.attn_out)?;
        x = ctx.add(x, ctx.mul(a, tensor(wl.ls1)?)?)?;

        let h = layer_norm(ctx, x, tensor(wl.ln2.0)?, tensor(wl.ln2.1)?, v.ln_eps)?;
        let h = linear(h, &wl.ffn_up)?;
        let h = gelu(h)?; // exact erf GELU (spec §1.1)
        let h = linear(h, &wl.ffn_down)?;
        x = ctx.add(x, ctx.mul(h, tensor(wl.ls2)?)?)?.set_name(&format!("vit_l{l}"));
    }
    let vit_out = if keep_vit_out {
        // Without the padding tokens.
        let real = ctx.view(x, &[d, n_tok, t], &[d * 4, d * 4 * n_seq], 0)?;
        ctx.cont(real)?.set_name("vit_out").set_output()
    } else {
        x
    };

    // Drop CLS (and the padding): [D, n_patch, T], a grid A[row][col] with col fastest.
    let g = v.grid();
    let patches = ctx.view(x, &[d, n_patch, t], &[d * 4, d * 4 * n_seq], d * 4)?;
    let patches = ctx.cont(patches)?;
    // Pixel shuffle v2 (spec §3.8): token (i, j) = A[2i][2j] ‖ A[2i][2j+1] ‖ A[2i+1][2j] ‖ A[2i+1][2j+1].
    // [D, g, g*T] -> [2D, g/2, 2, g/2*T]: pairs of columns merge into 2D channels (dx*D + ch), and each
    // row index r = 2i + dy splits into (dy, i) with the tiles folded into the outer dim.
    let f = hp.shuffle_factor();
    let (g2, d4) = (g / f, d * f * f);
    let y = ctx.reshape(patches, &[d * f, g2, f, g2 * t])?;
    // -> [2D, 2(dy), g/2(j), g/2*T(i)] so that channel = dy*2D + dx*D + ch.
    let y = ctx.permute(y, [0, 2, 1, 3])?;
    let y = ctx.cont(y)?;
    let y = ctx.reshape(y, &[d4, g2 * g2 * t])?.set_name("pixel_shuffle"); // tokens i*g2 + j, tile-major

    let proj_out = projector::build(ctx, m, y, gelu)?.set_name("proj_out").set_output();
    Ok(VisionGraph {
        inp_patches: inp,
        vit_out,
        proj_out,
        inp_pad,
    })
}

/// How the ViT computes attention. On the CPU, as the kernels choice says (`crate::kernels::Choice`):
/// our own kernel (`crate::kernels::attention`: f32 products and softmax per block of queries; the
/// default on AVX-512 VNNI and AVX2+FMA CPUs) or ggml's fused flash attention (elsewhere, and with
/// `--kernels ggml`: our portable kernel is correct everywhere but not tuned: on x86 without FMA in the
/// baseline its fused multiply-adds are library calls). On a GPU two ggml matrix products over a sequence padded to a multiple of 16. Measured on the full model, one
/// thread, one 448 tile, AVX-512 build, CPU seconds of the whole tile with `--weights int8-vision`: ours
/// 3.1, flash 4.8, products 5.3 (the attention alone: about 2.4 s with ggml's flash attention, 0.6-0.9 s
/// with ours); with the default layout, 2 threads, q4_0 file: 3.9 s per tile against 4.6 with flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VitAttention {
    Ours,
    Flash,
    Products,
}

impl VitAttention {
    fn choose(device: crate::ggml::BackendKind, kernels: crate::kernels::Choice) -> Self {
        match device {
            crate::ggml::BackendKind::Cpu if kernels.attention => VitAttention::Ours,
            crate::ggml::BackendKind::Cpu => VitAttention::Flash,
            // ggml-cuda's flash attention wants f16 K/V, and a custom op would run on the CPU.
            _ => VitAttention::Products,
        }
    }
}

/// Upper bound of tensors a vision graph of any tile count creates (for sizing its context).
pub fn graph_tensors(hp: &Hparams) -> usize {
    64 + hp.vision.n_layer * 48
}
