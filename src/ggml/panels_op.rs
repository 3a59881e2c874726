//! `crate::panels`' product as `own_product`'s two custom nodes: the first quantizes the activations
//! (threads split the blocks of `panels::MR` tokens), the next multiplies them by the q4_0/q8_0 panels
//! (threads split the panels of `panels::NR` outputs, so that a single decoded token keeps every thread
//! busy).
use std::ffi::c_void;

use super::context::{Context, Tensor};
use super::own_product::OwnProduct;
use super::{share, sys, Result};
use crate::panels::{self, Panels};

impl Context {
    /// `x·Wᵀ + b` with `w` as q4_0/q8_0 panels: `x` contiguous f32 `[k, ...]`, `b` f32 `[n]` -> f32 `[n, ...]`.
    /// `w` is borrowed for as long as the context: the graph reads it when computed.
    pub fn linear_panels<'a>(&'a self, x: Tensor<'a>, w: &'a Panels, b: Option<Tensor<'a>>) -> Result<Tensor<'a>> {
        let p = OwnProduct {
            op: "linear_panels",
            k: w.k(),
            n: w.n(),
            acts_bytes: panels::acts_bytes,
            quantize: quantize_node,
            product: product_node,
        };
        self.own_product(x, w, b, p)
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
