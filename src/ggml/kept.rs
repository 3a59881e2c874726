//! A graph kept between computations: built once, allocated by the scheduler, then recomputed with new input
//! data as long as its shapes do not change (what llama.cpp does between decoded tokens). Saves the graph
//! build, the allocator's planning and the Rust-side bookkeeping of every node on each run.

use std::ptr::NonNull;

use super::backend::Sched;
use super::context::{Context, Graph, Tensor};
use super::{sys, GgmlError, Result};

/// A context, the graph built in it and some of its tensors (inputs, outputs), kept together with `K`: what
/// the graph reads from other contexts (weights, a cache). The graph's tensors point into `K`, so `K` is
/// owned here and lives as long as the graph (`K` may be a borrow: the kept graph then lives no longer).
pub struct KeptGraph<K> {
    graph: NonNull<sys::ggml_cgraph>,
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    /// The scheduler allocation (see `Sched::allocation`) that holds this graph, if any.
    allocated: Option<(u64, u64)>,
    ctx: Context,
    // Declared last: dropped after the context whose tensors point into it.
    keep: K,
}

// SAFETY: the raw pointers point into `ctx` (Send) and into `K` (Send by the bound); nothing here is shared
// between threads without `&mut` (no Sync).
unsafe impl<K: Send> Send for KeptGraph<K> {}

impl<K> KeptGraph<K> {
    /// Builds a graph with `build` in `ctx` over `keep`; `build` returns the graph and the tensors to keep
    /// handles of (see [`KeptGraph::tensor`], in that order). The higher-ranked lifetime makes every tensor it
    /// can return come from `ctx` or `keep` (or be `'static`), which this value owns. On error `keep` is
    /// handed back with it.
    pub fn build<E, F>(ctx: Context, keep: K, build: F) -> std::result::Result<Self, (E, K)>
    where
        F: for<'a> FnOnce(&'a Context, &'a K) -> std::result::Result<(Graph<'a>, Vec<Tensor<'a>>), E>,
    {
        let (graph, tensors) = match build(&ctx, &keep) {
            Ok(built) => built,
            Err(e) => return Err((e, keep)),
        };
        let graph = NonNull::new(graph.raw()).expect("a built graph is not null");
        let tensors = tensors
            .iter()
            .map(|t| NonNull::new(t.raw()).expect("a tensor handle is not null"))
            .collect();
        Ok(KeptGraph {
            graph,
            tensors,
            allocated: None,
            ctx,
            keep,
        })
    }

    /// What the graph reads besides its own context.
    pub fn keep(&self) -> &K {
        &self.keep
    }

    /// Drops the graph and its context, and hands back what it kept.
    pub fn into_keep(self) -> K {
        let KeptGraph { ctx, keep, .. } = self;
        drop(ctx);
        keep
    }

    /// The `i`-th tensor handed back by the build.
    pub fn tensor(&self, i: usize) -> Result<Tensor<'_>> {
        let ptr = self.tensors.get(i).copied().ok_or_else(|| GgmlError::Tensor {
            name: format!("#{i}"),
            detail: format!("a kept graph holds {} tensor handles", self.tensors.len()),
        })?;
        Ok(Tensor::from_raw(ptr, &self.ctx))
    }

    /// Whether `sched` holds this graph's allocation now (no other graph was planned there since).
    pub fn is_allocated_in(&self, sched: &Sched) -> bool {
        self.allocated == Some(sched.allocation())
    }

    /// Allocates the graph's tensors in `sched` (after which inputs can be set). Needed again whenever
    /// `sched` planned another graph in between (`is_allocated_in` says).
    pub fn alloc(&mut self, sched: &mut Sched) -> Result<()> {
        self.allocated = None;
        sched.alloc_raw(self.graph.as_ptr())?;
        self.allocated = Some(sched.allocation());
        Ok(())
    }

    /// Computes the graph with the inputs' current data. It must be allocated in `sched` (ggml would
    /// otherwise run whatever graph the scheduler holds): an error if not.
    pub fn compute(&self, sched: &mut Sched) -> Result<()> {
        if !self.is_allocated_in(sched) {
            return Err(GgmlError::Alloc {
                what: "a kept graph's tensors: another graph was planned in the scheduler since".into(),
            });
        }
        sched.compute_raw(self.graph.as_ptr())
    }
}
