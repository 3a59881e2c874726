//! Custom nodes: a graph node computed by a callback of the caller's on the CPU backend, every thread of
//! the backend calling it with its index (ggml's `ggml_custom_4d` and `ggml_map_custom1_inplace`). The
//! kernels that run this way live outside this module (`crate::kernels`); this is only the plumbing.
use std::ffi::c_void;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::context::{Context, Tensor};
use super::{sys, Result};
use crate::gguf::GgmlType;

/// A tensor as ggml hands it to a callback.
pub use sys::ggml_tensor as RawTensor;

/// A node's callback: `(dst, ith, nth, userdata)`, called on each of `nth` threads with its index `ith`
/// once the node's arguments are computed; `dst->src[i]` are the arguments.
pub type NodeFn = unsafe extern "C" fn(*mut RawTensor, i32, i32, *mut c_void);
/// An in-place node's callback: `(dst, a, ith, nth, userdata)`, `dst` a view of `a`.
pub type InplaceFn = unsafe extern "C" fn(*mut RawTensor, *const RawTensor, i32, i32, *mut c_void);

/// What a callback reads of a tensor: its shape, strides in bytes and data.
#[derive(Debug, Clone, Copy)]
pub struct NodeTensor {
    pub ne: [usize; 4],
    pub nb: [usize; 4],
    pub data: *mut u8,
}

impl NodeTensor {
    /// `t`'s shape, strides and data pointer.
    ///
    /// # Safety
    /// `t` is a tensor ggml passed to a callback (or one of its `src`), valid for the call.
    pub unsafe fn of(t: *const RawTensor) -> NodeTensor {
        // SAFETY: the caller guarantees `t` points at a live tensor.
        let t = unsafe { &*t };
        NodeTensor {
            ne: t.ne.map(|x| x.max(0) as usize),
            nb: t.nb,
            data: t.data.cast(),
        }
    }

    /// Argument `i` of node `dst` (`None` when the node has fewer).
    ///
    /// # Safety
    /// As for `of`.
    pub unsafe fn src(dst: *const RawTensor, i: usize) -> Option<NodeTensor> {
        // SAFETY: the caller guarantees `dst` is live; its `src` array has GGML_MAX_SRC entries, null past
        // the node's arguments.
        unsafe {
            let p = *(*dst).src.get(i)?;
            (!p.is_null()).then(|| NodeTensor::of(p))
        }
    }

    /// Values (product of the four dimensions).
    pub fn elements(&self) -> usize {
        self.ne.iter().product()
    }

    /// Rows: the product of dimensions 1 to 3.
    pub fn rows(&self) -> usize {
        self.ne[1] * self.ne[2] * self.ne[3]
    }
}

/// The part of `items` (token blocks, panels) that thread `ith` of `nth` takes: contiguous, disjoint,
/// possibly empty (more threads than items).
pub fn share(items: usize, ith: i32, nth: i32) -> Range<usize> {
    let (i, n) = (ith.max(0) as usize, nth.max(1) as usize);
    items * i / n..items * (i + 1) / n
}

/// A counter from which the threads of one node draw work items (see `crate::kernels::panels_op`). It
/// returns to 0 when the last of the node's threads is done drawing, so each computation of the node
/// starts from 0 with no other node to reset it. It belongs to one graph (`Context::keep`): two graphs
/// computed at once, two sessions on the same weights, have one each.
#[derive(Debug, Default)]
pub struct DrawCounter {
    next: AtomicUsize,
    done: AtomicUsize,
}

impl DrawCounter {
    /// The next item: 0, 1, 2, ... across the node's threads, each number once.
    pub fn draw(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Called once by each of the node's `nth` threads after its last draw (one that got an item past the
    /// end). The last one resets the counter: every thread has stopped drawing by then. ggml's barrier after
    /// the node publishes the reset to the threads of the next computation.
    pub fn leave(&self, nth: usize) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 >= nth {
            self.next.store(0, Ordering::Relaxed);
            self.done.store(0, Ordering::Relaxed);
        }
    }
}

impl Context {
    /// Keeps `value` for as long as this context (and so every graph built in it): custom nodes get its
    /// address as their userdata.
    pub fn keep<T: Send + Sync + 'static>(&self, value: T) -> &T {
        let b = Box::new(value);
        let p: *const T = &*b;
        self.kept.borrow_mut().push(b);
        // SAFETY: the value lives on the heap in its box, which does not move when the vector grows and
        // is dropped only with the context, which the returned reference cannot outlive (`&self`).
        unsafe { &*p }
    }

    /// A node of type `ty` and shape `ne` computed by `f` from `args`, on all of the backend's threads.
    /// `op` names it in errors.
    ///
    /// # Safety
    /// `f` must read `args` and write `dst` only as their shapes and types allow (which the caller has
    /// checked), threads writing disjoint parts; `userdata` (handed to `f` as is) must stay valid for as
    /// long as any graph containing the node can be computed.
    pub unsafe fn custom_node<'a>(
        &'a self,
        op: &'static str,
        ty: GgmlType,
        ne: [usize; 4],
        args: &[Tensor<'a>],
        f: NodeFn,
        userdata: *mut c_void,
    ) -> Result<Tensor<'a>> {
        if args.len() > sys::GGML_MAX_SRC as usize {
            return Err(super::context::shape(
                op,
                format!("{} arguments for a custom node", args.len()),
            ));
        }
        self.reserve(1)?;
        let mut raw: Vec<*mut RawTensor> = args.iter().map(|t| t.raw()).collect();
        // SAFETY: the context is live; `raw` holds `args.len()` tensors of this context and outlives the
        // call (ggml copies the pointers into the node); n_tasks GGML_N_TASKS_MAX = all of the backend's
        // threads; the callback's and userdata's validity is the caller's contract.
        let p = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                ty as u32 as sys::ggml_type,
                ne[0] as i64,
                ne[1] as i64,
                ne[2] as i64,
                ne[3] as i64,
                raw.as_mut_ptr(),
                raw.len() as i32,
                Some(f),
                sys::GGML_N_TASKS_MAX,
                userdata,
            )
        };
        self.wrap(p, op)
    }

    /// A node that rewrites `a` in place by `f` (the result is a view of `a`: no second buffer), on all
    /// of the backend's threads.
    ///
    /// # Safety
    /// As for `custom_node`: `f` must write only within `a`, threads writing disjoint parts.
    pub unsafe fn custom_inplace<'a>(
        &'a self,
        op: &'static str,
        a: Tensor<'a>,
        f: InplaceFn,
        userdata: *mut c_void,
    ) -> Result<Tensor<'a>> {
        // The node and the view it makes of `a`.
        self.reserve(2)?;
        // SAFETY: the context and `a` are live; the callback's validity is the caller's contract.
        let p = unsafe { sys::ggml_map_custom1_inplace(self.raw(), a.raw(), Some(f), sys::GGML_N_TASKS_MAX, userdata) };
        self.wrap(p, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads drawing from one counter, round after round: each round hands out every item exactly once
    /// (the last thread to leave resets it for the next round).
    #[test]
    fn a_draw_counter_hands_out_each_item_once_per_round() {
        let (nth, items, rounds) = (3, 50, 40);
        let counter = DrawCounter::default();
        let barrier = std::sync::Barrier::new(nth);
        let drawn: Vec<Vec<Vec<usize>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..nth)
                .map(|_| {
                    s.spawn(|| {
                        (0..rounds)
                            .map(|_| {
                                let mine: Vec<usize> = std::iter::from_fn(|| Some(counter.draw()))
                                    .take_while(|&i| i < items)
                                    .collect();
                                counter.leave(nth);
                                // ggml's barrier between nodes.
                                barrier.wait();
                                mine
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for round in 0..rounds {
            let mut all: Vec<usize> = drawn.iter().flat_map(|t| t[round].iter().copied()).collect();
            all.sort_unstable();
            assert_eq!(all, (0..items).collect::<Vec<_>>(), "round {round}");
        }
    }
}
