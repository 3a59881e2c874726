//! `int8`'s product as `own_product`'s two custom nodes (quantize, multiply), both splitting their work by
//! blocks of `int8::MR` tokens over ggml's threads.
use std::ffi::c_void;

use super::int8::{self, PackedWeights, MR};
use super::own_product::{own_product, NodeState, OwnProduct};
use crate::ggml::custom::{share, NodeTensor, RawTensor};
use crate::ggml::{Context, Result, Tensor};

/// `x·Wᵀ + b` with `w` in int8 panels: `x` contiguous f32 `[k, ...]`, `b` f32 `[n]` -> f32 `[n, ...]`, by
/// the kernels of `w`'s instruction set. `w` is borrowed for as long as the context: the graph reads it
/// when computed.
pub fn linear_int8<'a>(
    ctx: &'a Context,
    x: Tensor<'a>,
    w: &'a PackedWeights,
    b: Option<Tensor<'a>>,
) -> Result<Tensor<'a>> {
    let p = OwnProduct {
        op: "linear_int8",
        k: w.k(),
        n: w.n(),
        acts_bytes: int8::acts_bytes,
        quantize: quantize_node,
        product: gemm_node,
        one_token: None,
    };
    own_product(ctx, x, w, b, p)
}

unsafe extern "C" fn quantize_node(dst: *mut RawTensor, ith: i32, nth: i32, w: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `linear_int8`: dst is its I8 buffer of
    // acts_bytes(t, k) bytes, src[0] the contiguous f32 x of t rows of k (checked there), both allocated,
    // userdata the `NodeState` of the PackedWeights. Each thread writes only its own blocks' bytes and scales (disjoint
    // ranges), and reads x.
    unsafe {
        let (w, _) = NodeState::<PackedWeights>::of(w);
        let (d, x) = (NodeTensor::of(dst), NodeTensor::src(dst, 0).expect("x"));
        let (k, t) = (x.ne[0], x.rows());
        let xs = std::slice::from_raw_parts(x.data as *const f32, t * k);
        let blocks = int8::token_blocks(t);
        let mine = share(blocks, ith, nth);
        let per = int8::block_bytes(k);
        let data = std::slice::from_raw_parts_mut(d.data.add(mine.start * per), mine.len() * per);
        let sper = int8::scale_bytes_per_block(k);
        let scales =
            std::slice::from_raw_parts_mut(d.data.add(int8::scales_at(t, k) + mine.start * sper), mine.len() * sper);
        int8::quantize_blocks(w.isa(), xs, k, t, k, mine, data, scales);
    }
}

unsafe extern "C" fn gemm_node(dst: *mut RawTensor, ith: i32, nth: i32, w: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `linear_int8`: userdata is the `NodeState` of the
    // PackedWeights it was given (alive while the graph is), src[0] the quantized activations of t tokens (acts_bytes(t, k)
    // bytes), src[1] (when present) an f32 bias of n, dst contiguous f32 [n, t]. Each thread writes
    // the rows of its own token blocks only.
    unsafe {
        let (w, _) = NodeState::<PackedWeights>::of(w);
        let d = NodeTensor::of(dst);
        let (n, t) = (d.ne[0], d.rows());
        let acts = NodeTensor::src(dst, 0).expect("activations");
        let acts = std::slice::from_raw_parts(acts.data as *const u8, int8::acts_bytes(t, w.k()));
        let bias = NodeTensor::src(dst, 1).map(|b| std::slice::from_raw_parts(b.data as *const f32, n));
        let mine = share(int8::token_blocks(t), ith, nth);
        let rows = (mine.end * MR).min(t) - (mine.start * MR).min(t);
        let out = std::slice::from_raw_parts_mut((d.data as *mut f32).add(mine.start * MR * n), rows * n);
        int8::gemm(acts, t, w, bias, mine, out, n);
    }
}
