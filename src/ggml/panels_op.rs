//! `crate::panels`' product as two ggml custom nodes on the CPU backend: one quantizes the activations
//! (threads split the blocks of `panels::MR` tokens), the next multiplies them by the q4_0/q8_0 panels (threads
//! split the panels of `panels::NR` outputs, so that a single decoded token keeps every thread busy). Two
//! nodes because ggml's barrier between nodes is what tells every thread the quantization is done.
use std::ffi::c_void;

use super::context::{shape, ty_err, Context, Tensor};
use super::{share, sys, Result};
use crate::gguf::GgmlType;
use crate::panels::{self, Panels};

impl Context {
    /// `x·Wᵀ + b` with `w` as q4_0/q8_0 panels: `x` contiguous f32 `[k, ...]`, `b` f32 `[n]` -> f32 `[n, ...]`.
    /// `w` is borrowed for as long as the context: the graph reads it when computed.
    pub fn linear_panels<'a>(&'a self, x: Tensor<'a>, w: &'a Panels, b: Option<Tensor<'a>>) -> Result<Tensor<'a>> {
        let ne = x.ne();
        if ne[0] as usize != w.k() {
            return Err(shape(
                "linear_panels",
                format!("x has {} inputs, the weight {}", ne[0], w.k()),
            ));
        }
        if x.ty() != GgmlType::F32 || !x.is_contiguous() {
            return Err(ty_err("linear_panels", x, "x must be contiguous f32"));
        }
        if let Some(b) = b {
            if b.ty() != GgmlType::F32 || !b.is_contiguous() || b.nelements() as usize != w.n() {
                return Err(ty_err(
                    "linear_panels",
                    b,
                    &format!("the bias must be {} contiguous f32", w.n()),
                ));
            }
        }
        let t = (ne[1] * ne[2] * ne[3]) as usize;
        self.reserve(2)?;
        let mut args = [x.raw()];
        // SAFETY: the shapes and types the callback relies on are checked above; `args` outlives the call
        // (ggml copies the pointers into the node); n_tasks -1 = all of the backend's threads; userdata
        // points at `w` (read for its type), which outlives the context ('a).
        let acts = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::I8 as u32 as sys::ggml_type,
                panels::acts_bytes(t, w.k()) as i64,
                1,
                1,
                1,
                args.as_mut_ptr(),
                1,
                Some(quantize_node),
                sys::GGML_N_TASKS_MAX,
                (w as *const Panels).cast_mut().cast::<c_void>(),
            )
        };
        let acts = self.wrap(acts, "linear_panels (quantize)")?;
        let mut args = [acts.raw(), b.map_or(std::ptr::null_mut(), |b| b.raw())];
        let n_args = if b.is_some() { 2 } else { 1 };
        // SAFETY: as above; userdata points at `w`, which outlives the context ('a) and so every
        // computation of a graph built in it; the callback only reads it.
        let y = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::F32 as u32 as sys::ggml_type,
                w.n() as i64,
                ne[1],
                ne[2],
                ne[3],
                args.as_mut_ptr(),
                n_args,
                Some(product_node),
                sys::GGML_N_TASKS_MAX,
                (w as *const Panels).cast_mut().cast::<c_void>(),
            )
        };
        self.wrap(y, "linear_panels")
    }
}

unsafe extern "C" fn quantize_node(dst: *mut sys::ggml_tensor, ith: i32, nth: i32, w: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `linear_panels`: dst is its I8 buffer of acts_bytes(t, k)
    // bytes, src[0] the contiguous f32 x of t rows of k (checked there), both allocated, userdata the
    // Panels. Each thread writes only its own blocks' values and metadata (disjoint ranges), and reads x.
    unsafe {
        let w = &*(w as *const Panels);
        let x = &*(*dst).src[0];
        let k = x.ne[0] as usize;
        let t = (x.ne[1] * x.ne[2] * x.ne[3]) as usize;
        let xs = std::slice::from_raw_parts(x.data as *const f32, t * k);
        let blocks = panels::token_blocks(t);
        let mine = share(blocks, ith, nth);
        let (per, mper) = (panels::block_bytes(k), panels::block_meta_bytes(k));
        let base = (*dst).data as *mut u8;
        let values = std::slice::from_raw_parts_mut(base.add(mine.start * per), mine.len() * per);
        let meta = std::slice::from_raw_parts_mut(base.add(blocks * per + mine.start * mper), mine.len() * mper);
        panels::quantize_blocks(w.ty(), xs, t, k, mine, values, meta);
    }
}

unsafe extern "C" fn product_node(dst: *mut sys::ggml_tensor, ith: i32, nth: i32, w: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `linear_panels`: userdata is the Panels it was given
    // (alive while the graph is), src[0] the quantized activations of t tokens (acts_bytes(t, k) bytes),
    // src[1] (when present) an f32 bias of n, dst contiguous f32 [n, t]. Each thread takes its own
    // panels, so its writes (outputs n0..n0 + len of a row, inside the row: len <= n - n0) touch columns
    // no other thread writes.
    unsafe {
        let w = &*(w as *const Panels);
        let d = &*dst;
        let (n, t) = (d.ne[0] as usize, (d.ne[1] * d.ne[2] * d.ne[3]) as usize);
        let acts = &*d.src[0];
        let acts = std::slice::from_raw_parts(acts.data as *const u8, panels::acts_bytes(t, w.k()));
        let bias = (!d.src[1].is_null()).then(|| std::slice::from_raw_parts((*d.src[1]).data as *const f32, n));
        let out = d.data as *mut f32;
        panels::product(acts, t, w, bias, share(w.panels(), ith, nth), |tok, n0, vals| {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), out.add(tok * n + n0), vals.len())
        });
    }
}
