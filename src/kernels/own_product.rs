//! A matrix product by weights in one of our own layouts (`int8`, `panels`) as two ggml custom nodes on
//! the CPU backend: the first quantizes the activations into the kernel's buffer, the next multiplies
//! them by the weights. Two nodes because ggml's barrier between nodes is the only way to know every
//! thread has finished quantizing before any starts multiplying. A single token (a decoding step) can
//! take one node instead (`OwnProduct::one_token`): each thread quantizes the token itself, a few
//! microseconds, instead of one thread quantizing while the others wait at a barrier, seven times per
//! layer.
use std::ffi::c_void;

use crate::ggml::context::{shape, ty_err};
use crate::ggml::custom::{DrawCounter, NodeFn};
use crate::ggml::{Context, Result, Tensor};
use crate::gguf::GgmlType;

/// What differs between our products: the name for errors, the weights' shape, the size of the quantized
/// activations of `t` tokens of `k` inputs, and the two node callbacks, which get the weights as userdata.
pub(super) struct OwnProduct {
    pub op: &'static str,
    pub k: usize,
    pub n: usize,
    pub acts_bytes: fn(usize, usize) -> usize,
    pub quantize: NodeFn,
    pub product: NodeFn,
    /// Both steps in one node for a single token (`x` and the bias as its sources, each thread
    /// quantizing the token into a buffer of its own), where the layout has it.
    pub one_token: Option<NodeFn>,
}

/// Every node's userdata: the weights, and a counter the threads of a node that draws its work can take
/// items from (one per product, kept by the graph's context: a counter in the weights would be shared by
/// two graphs computed at once on the same model). The nodes of one product run one after another, so
/// they can share it: each computation of a node leaves it at 0 (`DrawCounter::leave`).
pub(super) struct NodeState<W> {
    pub w: *const W,
    pub counter: DrawCounter,
}

impl<W> NodeState<W> {
    /// The state behind a node's userdata.
    ///
    /// # Safety
    /// `userdata` is what `own_product` gave a node of a product by weights of type `W`, and the graph
    /// is being computed (its context, and so the state and the weights, are alive).
    pub unsafe fn of<'s>(userdata: *mut c_void) -> (&'s W, &'s DrawCounter) {
        // SAFETY: the caller's contract: the pointer is a live `NodeState<W>` whose `w` is live.
        unsafe {
            let state = &*(userdata as *const NodeState<W>);
            (&*state.w, &state.counter)
        }
    }
}

// SAFETY: `w` points at weights that are only read (W: Sync) and outlive every graph of the context that
// keeps this value (`own_product`'s borrow); the counter is atomic.
unsafe impl<W: Sync> Send for NodeState<W> {}
// SAFETY: as above.
unsafe impl<W: Sync> Sync for NodeState<W> {}

/// `x·Wᵀ + b`: `x` contiguous f32 `[k, ...]`, `b` f32 `[n]` -> f32 `[n, ...]`; `w` is borrowed for as long
/// as the context (the graph reads it when computed) and handed to the callbacks in a `NodeState<W>`,
/// which they must read as such (`NodeState::of`).
pub(super) fn own_product<'a, W: Sync + 'static>(
    ctx: &'a Context,
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
    let state = ctx.keep(NodeState {
        w: w as *const W,
        counter: DrawCounter::default(),
    });
    let userdata = (state as *const NodeState<W>).cast_mut().cast::<c_void>();
    let out = [p.n, ne[1] as usize, ne[2] as usize, ne[3] as usize];
    if let (1, Some(f)) = (t, p.one_token) {
        let args: Vec<Tensor<'a>> = std::iter::once(x).chain(b).collect();
        // SAFETY: as below for the product: src[0] is x, contiguous f32 [k, 1] (checked above), src[1]
        // (when present) the bias of n, the node f32 [n, 1].
        return unsafe { ctx.custom_node(p.op, GgmlType::F32, out, &args, f, userdata) };
    }
    // SAFETY: the shapes and types the callbacks rely on are checked above (x contiguous f32 [k, t], the
    // node an I8 buffer of acts_bytes(t, k)); userdata points at a `NodeState<W>` that the context keeps,
    // whose `w` outlives the context ('a) and so every computation of a graph built in it.
    let acts = unsafe {
        ctx.custom_node(
            p.op,
            GgmlType::I8,
            [(p.acts_bytes)(t, p.k), 1, 1, 1],
            &[x],
            p.quantize,
            userdata,
        )?
    };
    let args: Vec<Tensor<'a>> = std::iter::once(acts).chain(b).collect();
    // SAFETY: as above: src[0] the activations just quantized, src[1] (when present) the bias of n
    // checked above, the node f32 [n, t].
    unsafe { ctx.custom_node(p.op, GgmlType::F32, out, &args, p.product, userdata) }
}
