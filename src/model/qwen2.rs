//! Qwen2-0.5B (spec §4) as a ggml graph over a chunk of tokens, reading and extending the KV cache.
//!
//! The inputs are embeddings, not ids: text rows come from the embedding table and image rows from the
//! projector (spec §4: every `<IMG_CONTEXT>` row is replaced), assembled on the host.
//!
//! A language model is this file's shape: its layers' weights as a struct resolved at load from the name
//! table (`crate::names::TensorName`), and a `build` over them; `super::llm` dispatches to it.

use crate::ggml::{BackendKind, Context, WeightId};
use crate::gguf::GgmlType;
use crate::hparams::Hparams;
use crate::names::TensorName as N;

use super::kv_cache::{KvCache, KvType};
use super::linear::{Linear, Resolver};
use super::llm::{Batch, LlmGraph};
use super::{ModelError, Weights};

/// One decoder layer's weights.
pub struct Qwen2Layer {
    pub attn_norm: WeightId,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: WeightId,
    pub ffn_gate: Linear,
    pub ffn_up: Linear,
    pub ffn_down: Linear,
}

/// Qwen2's weights (the token embedding table is read on the host: `Weights::token_embeddings`).
pub struct Qwen2Weights {
    pub layers: Vec<Qwen2Layer>,
    pub output_norm: WeightId,
    /// The untied lm_head.
    pub output: Linear,
}

impl Qwen2Weights {
    pub(crate) fn resolve(hp: &Hparams, r: &mut Resolver<'_>) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(hp.llm.n_layer);
        for l in 0..hp.llm.n_layer {
            let l = Some(l);
            layers.push(Qwen2Layer {
                attn_norm: r.id(N::AttnNorm, l)?,
                wq: r.linear(N::AttnQ, Some(N::AttnQBias), l)?,
                wk: r.linear(N::AttnK, Some(N::AttnKBias), l)?,
                wv: r.linear(N::AttnV, Some(N::AttnVBias), l)?,
                // o_proj has no bias.
                wo: r.linear(N::AttnOut, None, l)?,
                ffn_norm: r.id(N::FfnNorm, l)?,
                ffn_gate: r.linear(N::FfnGate, None, l)?,
                ffn_up: r.linear(N::FfnUp, None, l)?,
                ffn_down: r.linear(N::FfnDown, None, l)?,
            });
        }
        Ok(Qwen2Weights {
            layers,
            output_norm: r.id(N::OutputNorm, None)?,
            output: r.linear(N::Output, None, None)?,
        })
    }
}

/// Builds Qwen2's graph for `batch` (see `super::llm::build`).
pub fn build<'a>(
    ctx: &'a Context,
    m: &'a Weights,
    w: &'a Qwen2Weights,
    kv: &'a KvCache,
    batch: Batch,
) -> Result<LlmGraph<'a>, ModelError> {
    let Batch {
        n,
        n_kv,
        n_out,
        keep_hidden,
        decode_step,
    } = batch;
    let t = &m.hp.llm;
    let (d, hd, nh, nkv) = (t.n_embd, t.head_dim(), t.n_head, t.n_head_kv);
    if n == 0 || n_out == 0 || n_out > n {
        return Err(ModelError::Input(format!("{n} tokens with {n_out} outputs")));
    }
    if n_kv < n || n_kv > kv.n_ctx() {
        return Err(ModelError::Input(format!(
            "{n} new tokens over {n_kv} cache rows do not fit the context of {} tokens",
            kv.n_ctx()
        )));
    }
    let inp_embd = ctx.new_f32(&[d, n])?.set_name("inp_embd").set_input();
    let inp_pos = ctx.new_i32(n)?.set_name("inp_pos").set_input();
    let inp_rows = ctx.new_tensor(GgmlType::I64, &[n])?.set_name("inp_rows").set_input();
    let inp_mask = ctx
        .new_tensor(GgmlType::F16, &[n_kv, n])?
        .set_name("inp_mask")
        .set_input();
    let kv_ty = kv.ty.ggml();
    let row_k = kv_ty
        .row_size(nkv * hd)
        .ok_or_else(|| ModelError::Unsupported("kv row".into()))?;
    let head_k = kv_ty
        .row_size(hd)
        .ok_or_else(|| ModelError::Unsupported("kv head".into()))?;
    let scale = 1.0 / (hd as f32).sqrt();

    // On the CPU over an f16 cache, our kernels (a custom node would run on the CPU whatever the backend):
    // a decode step's reads each KV head's rows once for its query heads (`kernels::decode_attention`),
    // a prompt chunk's are register-tiled products giving each token the same bits in any chunk
    // (`kernels::prefill_attention`).
    let ours = kv.ty == KvType::F16 && m.kernels.attention && m.device == BackendKind::Cpu;
    let our_decode = ours && decode_step && n == 1;

    let store = &m.weights;
    let mut x = inp_embd;
    for (l, wl) in w.layers.iter().enumerate() {
        let (ck, cv) = kv.layer(l)?;
        // RMSNorm in f32, then the weight (spec §4, eps from the file).
        let h = ctx.mul(ctx.rms_norm(x, t.rms_eps)?, store.tensor(wl.attn_norm)?)?;
        let q = wl.wq.forward(ctx, store, h, n)?;
        let k = wl.wk.forward(ctx, store, h, n)?;
        let v = wl.wv.forward(ctx, store, h, n)?;
        // NEOX (rotate-half) RoPE after the bias, full head dim, theta from the file (spec §4).
        let q = ctx.rope_neox(ctx.reshape(q, &[hd, nh, n])?, inp_pos, hd, t.rope_theta, t.n_ctx_train)?;
        let k = ctx.rope_neox(ctx.reshape(k, &[hd, nkv, n])?, inp_pos, hd, t.rope_theta, t.n_ctx_train)?;
        // Store this chunk's K and V rows into the cache at their positions.
        let k_store = ctx.set_rows(ck, ctx.reshape(k, &[hd * nkv, n])?, inp_rows)?;
        let v_store = ctx.set_rows(cv, v, inp_rows)?;
        // Attention over every cached position (causal mask), GQA: query head h reads kv head h/group.
        // set_rows returns a view of the cache, so reading through it orders the write before the read.
        let a = if our_decode {
            crate::kernels::decode_attention(ctx, q, k_store, v_store, inp_mask, scale, m.kernels.isa)?
        } else if ours {
            crate::kernels::prefill_attention(ctx, q, k_store, v_store, inp_mask, scale, m.kernels.isa)?
        } else {
            let kview = ctx.view(k_store, &[hd, nkv, n_kv], &[head_k, row_k], 0)?;
            let vview = ctx.view(v_store, &[hd, nkv, n_kv], &[head_k, row_k], 0)?;
            let kview = ctx.permute(kview, [0, 2, 1, 3])?; // [hd, n_kv, nkv]
            let vview = ctx.permute(vview, [0, 2, 1, 3])?;
            let qp = ctx.permute(q, [0, 2, 1, 3])?; // [hd, n, nh]
            ctx.flash_attn_ext(qp, kview, vview, Some(inp_mask), scale)? // [hd, nh, n]
        };
        let a = ctx.reshape(a, &[d, n])?;
        let a = wl.wo.forward(ctx, store, a, n)?;
        x = ctx.add(x, a)?;

        let h = ctx.mul(ctx.rms_norm(x, t.rms_eps)?, store.tensor(wl.ffn_norm)?)?;
        let gate = wl.ffn_gate.forward(ctx, store, h, n)?;
        let up = wl.ffn_up.forward(ctx, store, h, n)?;
        let h = ctx.swiglu(gate, up)?; // SiLU(gate) ⊙ up
        let h = wl.ffn_down.forward(ctx, store, h, n)?;
        x = ctx.add(x, h)?.set_name(&format!("l_out_{l}"));
    }
    let x = ctx.mul(ctx.rms_norm(x, t.rms_eps)?, store.tensor(w.output_norm)?)?;
    let hidden = if keep_hidden {
        Some(x.set_name("hidden_final").set_output())
    } else {
        None
    };
    // Only the rows whose logits are wanted go through the (large) untied lm_head.
    let last = if n_out == n {
        x
    } else {
        ctx.view(x, &[d, n_out], &[d * 4], (n - n_out) * d * 4)?
    };
    let logits = w
        .output
        .forward(ctx, store, last, n_out)?
        .set_name("logits")
        .set_output();
    Ok(LlmGraph {
        inp_embd,
        inp_pos,
        inp_rows,
        inp_mask,
        hidden,
        logits,
    })
}
