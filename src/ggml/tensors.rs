//! A set of tensors allocated together in one backend buffer (a cache), each held by index: no lookup by
//! name when graphs read them.

use std::ptr::NonNull;

use super::backend::{Backend, Buffer};
use super::context::{Context, Tensor};
use super::{sys, GgmlError, Result};
use crate::gguf::GgmlType;

/// Tensors made once (`TensorSet::new`) and then only handed to graphs.
pub struct TensorSet {
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    ctx: Context,
    buf: Buffer,
}

// SAFETY: the context and buffer are only read after `new` (graphs write tensor *data* through ggml, which
// the owner orders); the pointers point into `ctx`, owned here.
unsafe impl Send for TensorSet {}

impl TensorSet {
    /// One tensor per `(type, dims, name)`, allocated in one buffer of `backend`.
    pub fn new(backend: &Backend, specs: &[(GgmlType, Vec<usize>, String)]) -> Result<Self> {
        let ctx = Context::new(specs.len() + 1, 0)?;
        let mut tensors = Vec::with_capacity(specs.len());
        for (ty, ne, name) in specs {
            let t = ctx.new_tensor(*ty, ne)?.set_name(name);
            tensors.push(NonNull::new(t.raw()).ok_or_else(|| GgmlError::Alloc { what: name.clone() })?);
        }
        let buf = backend.alloc_ctx_tensors(&ctx)?;
        Ok(TensorSet { tensors, ctx, buf })
    }

    /// The `i`-th tensor given to `new`.
    pub fn get(&self, i: usize) -> Result<Tensor<'_>> {
        let ptr = self.tensors.get(i).copied().ok_or_else(|| GgmlError::Tensor {
            name: format!("#{i}"),
            detail: format!("a set of {} tensors", self.tensors.len()),
        })?;
        Ok(Tensor::from_raw(ptr, &self.ctx))
    }

    /// Bytes of the buffer.
    pub fn bytes(&self) -> usize {
        self.buf.size()
    }
}
