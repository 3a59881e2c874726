//! The KV cache: per layer one K and one V matrix `[n_embd_kv, n_ctx]` of f16 (default), q8_0 or q4_0,
//! sized to the requested context, not the 32k training maximum.

use crate::ggml::{Backend, Buffer, Context, Tensor};
use crate::gguf::GgmlType;
use crate::hparams::LlmHparams;

use super::ModelError;

/// KV cache storage types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    /// Exact (for reference comparisons); twice the memory of f16.
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            "q4_0" => Some(KvType::Q4_0),
            _ => None,
        }
    }
}

pub struct KvCache {
    ctx: Context,
    _buf: Buffer,
    n_ctx: usize,
    n_layer: usize,
    pub ty: KvType,
    /// Tokens stored so far (the next position).
    pub n_past: usize,
}

impl KvCache {
    pub fn new(hp: &LlmHparams, n_ctx: usize, ty: KvType, backend: &Backend) -> Result<Self, ModelError> {
        if n_ctx == 0 || n_ctx > hp.n_ctx_train {
            return Err(ModelError::Input(format!(
                "context size {n_ctx} must be between 1 and {}",
                hp.n_ctx_train
            )));
        }
        let n_embd_kv = hp.n_embd_kv();
        if !n_embd_kv.is_multiple_of(ty.ggml().block_size()) || !hp.head_dim().is_multiple_of(ty.ggml().block_size()) {
            return Err(ModelError::Unsupported(format!(
                "KV cache type {} needs a head size that is a multiple of {} (head size {})",
                ty.ggml().name(),
                ty.ggml().block_size(),
                hp.head_dim()
            )));
        }
        let ctx = Context::new(2 * hp.n_layer + 1, 0)?;
        for l in 0..hp.n_layer {
            ctx.new_tensor(ty.ggml(), &[n_embd_kv, n_ctx])?
                .set_name(&format!("cache_k_l{l}"));
            ctx.new_tensor(ty.ggml(), &[n_embd_kv, n_ctx])?
                .set_name(&format!("cache_v_l{l}"));
        }
        let buf = backend.alloc_ctx_tensors(&ctx)?;
        Ok(KvCache {
            ctx,
            _buf: buf,
            n_ctx,
            n_layer: hp.n_layer,
            ty,
            n_past: 0,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// The K and V matrices of layer `l`.
    pub(crate) fn layer(&self, l: usize) -> Result<(Tensor<'_>, Tensor<'_>), ModelError> {
        if l >= self.n_layer {
            return Err(ModelError::Input(format!("layer {l} outside the cache")));
        }
        // The tensors were created in order k0, v0, k1, v1, ... ; ggml finds them by name.
        let k = self.ctx.tensor_by_name(&format!("cache_k_l{l}"))?;
        let v = self.ctx.tensor_by_name(&format!("cache_v_l{l}"))?;
        Ok((k, v))
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self._buf.size()
    }
}
