//! The KV cache: per layer one K and one V matrix `[n_embd_kv, n_ctx]` of f16 (default), q8_0 or q4_0,
//! sized to the requested context, not the 32k training maximum.

use crate::ggml::{Backend, Tensor, TensorSet};
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

/// The cache's storage. How many rows hold tokens is the session's business (`Session::n_past`): the cache
/// itself does not change once made, so a kept decode graph can own it.
pub struct KvCache {
    /// K and V of each layer: k0, v0, k1, v1, ...
    tensors: TensorSet,
    n_ctx: usize,
    n_layer: usize,
    pub ty: KvType,
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
        let mut specs = Vec::with_capacity(2 * hp.n_layer);
        for l in 0..hp.n_layer {
            specs.push((ty.ggml(), vec![n_embd_kv, n_ctx], format!("cache_k_l{l}")));
            specs.push((ty.ggml(), vec![n_embd_kv, n_ctx], format!("cache_v_l{l}")));
        }
        Ok(KvCache {
            tensors: TensorSet::new(backend, &specs)?,
            n_ctx,
            n_layer: hp.n_layer,
            ty,
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
        Ok((self.tensors.get(2 * l)?, self.tensors.get(2 * l + 1)?))
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.tensors.bytes()
    }
}
