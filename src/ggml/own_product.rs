//! A matrix product by weights in one of our own layouts (`crate::int8`, `crate::panels`) as two ggml
//! custom nodes on the CPU backend: the first quantizes the activations into the kernel's buffer, the next
//! multiplies them by the weights. Two nodes because ggml's barrier between nodes is the only way to know
//! every thread has finished quantizing before any starts multiplying.
use std::ffi::c_void;

use super::context::{shape, ty_err, Context, Tensor};
use super::{sys, Result};
use crate::gguf::GgmlType;

/// What differs between our products: the name for errors, the weights' shape, the size of the quantized
/// activations of `t` tokens of `k` inputs, and the two node callbacks, which get the weights as userdata.
pub(super) struct OwnProduct {
    pub op: &'static str,
    pub k: usize,
    pub n: usize,
    pub acts_bytes: fn(usize, usize) -> usize,
    pub quantize: unsafe extern "C" fn(*mut sys::ggml_tensor, i32, i32, *mut c_void),
    pub product: unsafe extern "C" fn(*mut sys::ggml_tensor, i32, i32, *mut c_void),
}

impl Context {
    /// `x·Wᵀ + b`: `x` contiguous f32 `[k, ...]`, `b` f32 `[n]` -> f32 `[n, ...]`; `w` is borrowed for as
    /// long as the context (the graph reads it when computed) and handed to both callbacks, which must
    /// read it as the type `W` it is.
    pub(super) fn own_product<'a, W>(
        &'a self,
        x: Tensor<'a>,
        w: &'a W,
        b: Option<Tensor<'a>>,
        p: OwnProduct,
    ) -> Result<Tensor<'a>> {
        let ne = x.ne();
        if ne[0] as usize != p.k {
            return Err(shape(p.op, format!("x has {} inputs, the weight {}", ne[0], p.k)));
        }
        if x.ty() != GgmlType::F32 || !x.is_contiguous() {
            return Err(ty_err(p.op, x, "x must be contiguous f32"));
        }
        if let Some(b) = b {
            if b.ty() != GgmlType::F32 || !b.is_contiguous() || b.nelements() as usize != p.n {
                return Err(ty_err(p.op, b, &format!("the bias must be {} contiguous f32", p.n)));
            }
        }
        let t = (ne[1] * ne[2] * ne[3]) as usize;
        self.reserve(2)?;
        let userdata = (w as *const W).cast_mut().cast::<c_void>();
        let mut args = [x.raw()];
        // SAFETY: the shapes and types the callbacks rely on are checked above; `args` outlives the call
        // (ggml copies the pointers into the node); n_tasks -1 = all of the backend's threads; userdata
        // points at `w`, which outlives the context ('a) and so every computation of a graph built in it.
        let acts = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::I8 as u32 as sys::ggml_type,
                (p.acts_bytes)(t, p.k) as i64,
                1,
                1,
                1,
                args.as_mut_ptr(),
                1,
                Some(p.quantize),
                sys::GGML_N_TASKS_MAX,
                userdata,
            )
        };
        let acts = self.wrap(acts, p.op)?;
        let mut args = [acts.raw(), b.map_or(std::ptr::null_mut(), |b| b.raw())];
        let n_args = if b.is_some() { 2 } else { 1 };
        // SAFETY: as above.
        let y = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::F32 as u32 as sys::ggml_type,
                p.n as i64,
                ne[1],
                ne[2],
                ne[3],
                args.as_mut_ptr(),
                n_args,
                Some(p.product),
                sys::GGML_N_TASKS_MAX,
                userdata,
            )
        };
        self.wrap(y, p.op)
    }
}
