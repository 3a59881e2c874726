//! Qwen2-0.5B (spec §4) as a ggml graph over a chunk of tokens, reading and extending the KV cache.
//!
//! The inputs are embeddings, not ids: text rows come from the embedding table and image rows from the
//! projector (spec §4: every `<IMG_CONTEXT>` row is replaced), assembled on the host.

use crate::ggml::{Context, Tensor};
use crate::gguf::GgmlType;
use crate::hparams::Hparams;
use crate::names;

use super::kv_cache::KvCache;
use super::{Model, ModelError};

pub struct LlmGraph<'a> {
    /// `[n_embd, n]` f32 input embeddings.
    pub inp_embd: Tensor<'a>,
    /// `[n]` i32 positions (n_past..n_past+n).
    pub inp_pos: Tensor<'a>,
    /// `[n]` i64 cache rows to write (the same positions).
    pub inp_rows: Tensor<'a>,
    /// `[n_kv, n]` f16 causal mask (0 or -inf).
    pub inp_mask: Tensor<'a>,
    /// `[n_embd, n]` final-norm hidden states (only when asked for).
    pub hidden: Option<Tensor<'a>>,
    /// `[n_vocab, n_out]` logits of the last `n_out` tokens.
    pub logits: Tensor<'a>,
}

/// Builds the graph for `n` new tokens after `n_past` cached ones, with logits for the last `n_out`.
pub fn build<'a>(
    ctx: &'a Context,
    m: &'a Model,
    kv: &'a KvCache,
    n: usize,
    n_out: usize,
    keep_hidden: bool,
) -> Result<LlmGraph<'a>, ModelError> {
    let t = &m.hp.llm;
    let (d, hd, nh, nkv) = (t.n_embd, t.head_dim(), t.n_head, t.n_head_kv);
    let n_past = kv.n_past;
    let n_kv = n_past + n;
    if n == 0 || n_out == 0 || n_out > n {
        return Err(ModelError::Input(format!("{n} tokens with {n_out} outputs")));
    }
    if n_kv > kv.n_ctx() {
        return Err(ModelError::Input(format!(
            "{n_past} cached + {n} new tokens exceed the context of {} tokens",
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

    let mut x = inp_embd;
    for l in 0..t.n_layer {
        let wl = |what: &str, suffix: &str| m.w(&names::blk(l, what, suffix));
        let (ck, cv) = kv.layer(l)?;
        // RMSNorm in f32, then the weight (spec §4, eps from the file).
        let h = ctx.mul(ctx.rms_norm(x, t.rms_eps)?, wl("attn_norm", "weight")?)?;
        let q = m.linear(
            ctx,
            h,
            &names::blk(l, "attn_q", "weight"),
            Some(&names::blk(l, "attn_q", "bias")),
            n,
        )?;
        let k = m.linear(
            ctx,
            h,
            &names::blk(l, "attn_k", "weight"),
            Some(&names::blk(l, "attn_k", "bias")),
            n,
        )?;
        let v = m.linear(
            ctx,
            h,
            &names::blk(l, "attn_v", "weight"),
            Some(&names::blk(l, "attn_v", "bias")),
            n,
        )?;
        // NEOX (rotate-half) RoPE after the bias, full head dim, theta from the file (spec §4).
        let q = ctx.rope_neox(ctx.reshape(q, &[hd, nh, n])?, inp_pos, hd, t.rope_theta, t.n_ctx_train)?;
        let k = ctx.rope_neox(ctx.reshape(k, &[hd, nkv, n])?, inp_pos, hd, t.rope_theta, t.n_ctx_train)?;
        // Store this chunk's K and V rows into the cache at their positions.
        let k_store = ctx.set_rows(ck, ctx.reshape(k, &[hd * nkv, n])?, inp_rows)?;
        let v_store = ctx.set_rows(cv, v, inp_rows)?;
        // Attention over every cached position (causal mask), GQA: query head h reads kv head h/group.
        // set_rows returns a view of the cache, so reading through it orders the write before the read.
        let kview = ctx.view(k_store, &[hd, nkv, n_kv], &[head_k, row_k], 0)?;
        let vview = ctx.view(v_store, &[hd, nkv, n_kv], &[head_k, row_k], 0)?;
        let kview = ctx.permute(kview, [0, 2, 1, 3])?; // [hd, n_kv, nkv]
        let vview = ctx.permute(vview, [0, 2, 1, 3])?;
        let qp = ctx.permute(q, [0, 2, 1, 3])?; // [hd, n, nh]
        let a = ctx.flash_attn_ext(qp, kview, vview, Some(inp_mask), scale)?; // [hd, nh, n]
        let a = ctx.reshape(a, &[d, n])?;
        let a = m.linear(ctx, a, &names::blk(l, "attn_output", "weight"), None, n)?; // o_proj has no bias
        x = ctx.add(x, a)?;

        let h = ctx.mul(ctx.rms_norm(x, t.rms_eps)?, wl("ffn_norm", "weight")?)?;
        let gate = m.linear(ctx, h, &names::blk(l, "ffn_gate", "weight"), None, n)?;
        let up = m.linear(ctx, h, &names::blk(l, "ffn_up", "weight"), None, n)?;
        let h = ctx.swiglu(gate, up)?; // SiLU(gate) ⊙ up
        let h = m.linear(ctx, h, &names::blk(l, "ffn_down", "weight"), None, n)?;
        x = ctx.add(x, h)?.set_name(&format!("l_out_{l}"));
    }
    let x = ctx.mul(ctx.rms_norm(x, t.rms_eps)?, m.w(&names::output_norm())?)?;
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
    let logits = m
        .linear(ctx, last, &names::output(), None, n_out)?
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

/// Upper bound of tensors an LLM graph creates.
pub fn graph_tensors(hp: &Hparams) -> usize {
    64 + hp.llm.n_layer * 48
}

/// The causal mask for `n` tokens after `n_past`: row i may see positions 0..=n_past+i.
pub fn causal_mask(n_past: usize, n: usize) -> Vec<f32> {
    let n_kv = n_past + n;
    let mut m = vec![f32::NEG_INFINITY; n_kv * n];
    for i in 0..n {
        for j in 0..=n_past + i {
            m[i * n_kv + j] = 0.0;
        }
    }
    m
}
