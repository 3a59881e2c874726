//! `panels`' product as `own_product`'s two custom nodes: the first quantizes the activations (threads
//! split the blocks of `panels::MR` tokens), the next multiplies them by the q4_0/q8_0 panels (threads
//! split the panels of `panels::NR` outputs, so that a single decoded token keeps every thread busy).
//! A single token takes one node: every thread quantizes it into its own buffer, then multiplies the
//! panels it draws. Threads draw work items (`panels::Work`) from the product's counter (`DrawCounter`,
//! in the `NodeState` the graph's context keeps; the last thread to finish drawing resets it) rather than
//! each taking a fixed share of the panels: the two cores of the machine measured here ran the same work
//! at different speeds (one waited at the next barrier for 6-11% of its time).
use std::cell::RefCell;
use std::ffi::c_void;

use super::own_product::{own_product, NodeState, OwnProduct};
use super::panels::{self, Panels};
use crate::ggml::custom::{share, NodeTensor, RawTensor};
use crate::ggml::{Context, Result, Tensor};

/// `x·Wᵀ + b` with `w` as q4_0/q8_0 panels: `x` contiguous f32 `[k, ...]`, `b` f32 `[n]` -> f32 `[n, ...]`,
/// by the kernels of `w`'s instruction set. `w` is borrowed for as long as the context: the graph reads
/// it when computed.
pub fn linear_panels<'a>(ctx: &'a Context, x: Tensor<'a>, w: &'a Panels, b: Option<Tensor<'a>>) -> Result<Tensor<'a>> {
    let p = OwnProduct {
        op: "linear_panels",
        k: w.k(),
        n: w.n(),
        acts_bytes: panels::acts_bytes,
        quantize: quantize_node,
        product: product_node,
        one_token: Some(one_token_node),
    };
    own_product(ctx, x, w, b, p)
}

/// Panels per item drawn from the counter (`panels::Work`): about 4 runs per thread and chunk of token
/// blocks, so that a faster thread can take more of them.
fn run_panels(panels: usize, nth: usize) -> usize {
    (panels / (4 * nth.max(1))).max(1)
}

unsafe extern "C" fn quantize_node(dst: *mut RawTensor, ith: i32, nth: i32, state: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `linear_panels`: dst is its I8 buffer of acts_bytes(t, k)
    // bytes, src[0] the contiguous f32 x of t rows of k (checked there), both allocated, userdata the
    // `NodeState` of the Panels. Each thread writes only its own blocks' values and metadata (disjoint ranges), and reads x.
    unsafe {
        let (w, _) = NodeState::<Panels>::of(state);
        let (d, x) = (NodeTensor::of(dst), NodeTensor::src(dst, 0).expect("x"));
        let (k, t) = (x.ne[0], x.rows());
        let xs = std::slice::from_raw_parts(x.data as *const f32, t * k);
        let blocks = panels::token_blocks(t);
        let mine = share(blocks, ith, nth);
        let (per, mper) = (panels::block_bytes(k), panels::block_meta_bytes(k));
        let values = std::slice::from_raw_parts_mut(d.data.add(mine.start * per), mine.len() * per);
        let meta = std::slice::from_raw_parts_mut(d.data.add(blocks * per + mine.start * mper), mine.len() * mper);
        panels::quantize_blocks(w.isa(), w.ty(), xs, t, k, mine, values, meta);
    }
}

unsafe extern "C" fn product_node(dst: *mut RawTensor, _ith: i32, nth: i32, state: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `linear_panels`: userdata is the `NodeState` of the
    // Panels it was given (alive while the graph is), src[0] the quantized activations of t tokens
    // (acts_bytes(t, k) bytes), src[1] (when present) an f32 bias of n, dst contiguous f32 [n, t]. Each
    // run of panels is drawn by one thread only, so its writes (outputs n0..n0 + len of a row, inside
    // the row: len <= n - n0) touch columns no other thread writes.
    unsafe {
        let (w, counter) = NodeState::<Panels>::of(state);
        let d = NodeTensor::of(dst);
        let (n, t) = (d.ne[0], d.rows());
        let acts = NodeTensor::src(dst, 0).expect("activations");
        let acts = std::slice::from_raw_parts(acts.data as *const u8, panels::acts_bytes(t, w.k()));
        let bias = NodeTensor::src(dst, 1).map(|b| std::slice::from_raw_parts(b.data as *const f32, n));
        let out = d.data as *mut f32;
        let work = panels::Work::new(t, w.panels(), run_panels(w.panels(), nth as usize));
        let draw = || Some(counter.draw());
        panels::product_items(acts, t, w, bias, 0, &work, draw, |tok, n0, vals| {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), out.add(tok * n + n0), vals.len())
        });
        counter.leave(nth as usize);
    }
}

thread_local! {
    /// A thread's quantized copy of a single token (`one_token_node`), kept for the next product.
    static ONE_TOKEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn one_token_node(dst: *mut RawTensor, _ith: i32, nth: i32, state: *mut c_void) {
    // SAFETY: ggml calls this with the one-token node built in `linear_panels`: userdata is the
    // `NodeState<Panels>` its context keeps (the Panels alive while the graph is), src[0] the contiguous
    // f32 x of one row of k, src[1] (when present) an f32 bias of n, dst contiguous f32 [n, 1]. Each
    // thread quantizes x into its own buffer; each run of panels is drawn by one thread only, which
    // writes only its columns.
    unsafe {
        let (w, counter) = NodeState::<Panels>::of(state);
        let (d, x) = (NodeTensor::of(dst), NodeTensor::src(dst, 0).expect("x"));
        let (k, n) = (x.ne[0], d.ne[0]);
        let xs = std::slice::from_raw_parts(x.data as *const f32, k);
        let bias = NodeTensor::src(dst, 1).map(|b| std::slice::from_raw_parts(b.data as *const f32, n));
        let out = d.data as *mut f32;
        ONE_TOKEN.with_borrow_mut(|acts| {
            acts.resize(panels::acts_bytes(1, k), 0);
            let (values, meta) = acts.split_at_mut(panels::block_bytes(k));
            panels::quantize_blocks(w.isa(), w.ty(), xs, 1, k, 0..1, values, meta);
            let work = panels::Work::new(1, w.panels(), run_panels(w.panels(), nth as usize));
            let draw = || Some(counter.draw());
            panels::product_items(acts, 1, w, bias, 0, &work, draw, |tok, n0, vals| {
                std::ptr::copy_nonoverlapping(vals.as_ptr(), out.add(tok * n + n0), vals.len())
            });
        });
        counter.leave(nth as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{quantize, Backend, Sched};
    use crate::gguf::GgmlType;
    use crate::kernels::panels::PanelType;
    use crate::kernels::Isa;
    use crate::test_values::values;

    /// `y = x·Wᵀ + b` for `t` tokens through a ggml graph on 2 threads.
    fn run(w: &Panels, b: &[f32], x: &[f32], t: usize) -> Vec<f32> {
        run_each(w, b, &[x], t).remove(0)
    }

    /// `run` for each of `xs` in turn through one graph, built and allocated once (as a kept decode graph
    /// is recomputed token after token).
    fn run_each(w: &Panels, b: &[f32], xs: &[&[f32]], t: usize) -> Vec<Vec<f32>> {
        let backend = Backend::cpu(2).expect("backend");
        let ctx = Context::new(8, 2).expect("context");
        let xt = ctx.new_f32(&[w.k(), t]).expect("x").set_input();
        let bt = ctx.new_f32(&[w.n()]).expect("b").set_input();
        let y = linear_panels(&ctx, xt, w, Some(bt)).expect("product").set_output();
        let mut graph = ctx.new_graph().expect("graph");
        graph.build_forward(y).expect("build");
        let mut sched = Sched::new(&[&backend], 16).expect("sched");
        sched.alloc(&graph).expect("alloc");
        bt.set_f32(b).expect("b");
        xs.iter()
            .map(|x| {
                xt.set_f32(x).expect("x");
                sched.compute(&graph).expect("compute");
                y.get_f32().expect("y")
            })
            .collect()
    }

    /// A product's nodes draw their panels from a counter of the product's own that must be back at 0 for
    /// the next computation of the same graph: tokens computed one after another through one graph give
    /// the rows the batch gives them, and a second batch the rows a fresh graph gives it (a counter left
    /// where it ended would hand out no panels, and the output would keep the previous values).
    #[test]
    fn products_give_every_row_when_recomputed() {
        let (k, n) = (64, 300);
        let blocks = quantize(GgmlType::Q8_0, &values(n * k, 6), k).expect("quantize");
        let (x, x2) = (values(4 * k, 7), values(4 * k, 11));
        let b = values(n, 8);
        for isa in Isa::all_here() {
            let w = Panels::new(PanelType::Q8_0, &blocks, n, k, isa).expect("pack");
            let batch = run(&w, &b, &x, 4);
            let tokens: Vec<&[f32]> = x.chunks_exact(k).collect();
            for (tok, one) in run_each(&w, &b, &tokens, 1).iter().enumerate() {
                assert_eq!(*one, batch[tok * n..(tok + 1) * n], "{isa:?} token {tok}");
            }
            // The two-node product draws from the same kind of counter: a second batch through one graph
            // gives what a fresh graph gives it.
            let again = run_each(&w, &b, &[&x, &x2], 4);
            assert_eq!(again[1], run(&w, &b, &x2, 4), "{isa:?} second batch");
        }
    }

    /// A single token takes the one-node path (each thread quantizes it); in a batch of 5 it takes the
    /// two nodes and the tile kernels. Its outputs are the same bits either way, on every instruction set.
    #[test]
    fn one_token_node_gives_the_rows_of_the_two_node_product() {
        let (k, n) = (96, 70);
        for (ty, gty) in [(PanelType::Q4_0, GgmlType::Q4_0), (PanelType::Q8_0, GgmlType::Q8_0)] {
            let blocks = quantize(gty, &values(n * k, 3), k).expect("quantize");
            let x = values(5 * k, 4);
            let b = values(n, 5);
            for isa in Isa::all_here() {
                let w = Panels::new(ty, &blocks, n, k, isa).expect("pack");
                let batch = run(&w, &b, &x, 5);
                for tok in [0, 3] {
                    let one = run(&w, &b, &x[tok * k..(tok + 1) * k], 1);
                    assert_eq!(one, batch[tok * n..(tok + 1) * n], "{ty:?} {isa:?} token {tok}");
                }
            }
        }
    }
}
