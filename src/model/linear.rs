//! `Linear`: one matrix product of the model, resolved at load to the way it is multiplied, and `Resolver`,
//! which turns the name table's entries into the typed weights the graph builders take.

use std::collections::HashMap;

use crate::ggml::{Context, Tensor, WeightId, WeightStore};
use crate::gguf::GgmlType;
use crate::kernels::int8::PackedWeights;
use crate::kernels::panels::Panels;
use crate::names::TensorName;

use super::ModelError;

/// Fewest tokens in one evaluation for which a `Linear::Int8` uses its int8 copy (`WeightLayout::Int8`):
/// below it the products are thin and ggml's kernels for the file's type read fewer bytes.
pub const INT8_MIN_TOKENS: usize = 16;

/// A Linear layer `x·Wᵀ (+ b)`. The variant records what the load chose for this matrix (from the weight
/// layout and `crate::kernels::Choice`): the graphs multiply as it says, without asking again.
pub enum Linear {
    /// ggml's product with the weight tensor (used in place from the mapped file, in ggml's repacked layout,
    /// widened to f32, or on a GPU).
    Ggml { w: WeightId, b: Option<WeightId> },
    /// Our q4_0/q8_0 panel kernels for every batch (`crate::kernels::panels`: the file's bytes, rearranged).
    Panels { p: Panels, b: Option<WeightId> },
    /// Our int8 kernel for batches of at least `INT8_MIN_TOKENS`; ggml's product with `w` below.
    Int8 {
        p: PackedWeights,
        w: WeightId,
        b: Option<WeightId>,
    },
}

impl Linear {
    /// `x·Wᵀ (+ b)` over `n_tokens` tokens.
    pub fn forward<'a>(
        &'a self,
        ctx: &'a Context,
        store: &'a WeightStore,
        x: Tensor<'a>,
        n_tokens: usize,
    ) -> Result<Tensor<'a>, ModelError> {
        let bias = |b: &Option<WeightId>| b.map(|b| store.tensor(b)).transpose();
        match self {
            Linear::Ggml { w, b } => Ok(ctx.linear(x, store.tensor(*w)?, bias(b)?)?),
            Linear::Int8 { w, b, .. } if n_tokens < INT8_MIN_TOKENS => {
                Ok(ctx.linear(x, store.tensor(*w)?, bias(b)?)?)
            }
            Linear::Panels { p, b } => own(ctx, x, bias(b)?, |x, b| crate::kernels::linear_panels(ctx, x, p, b)),
            Linear::Int8 { p, b, .. } => own(ctx, x, bias(b)?, |x, b| crate::kernels::linear_int8(ctx, x, p, b)),
        }
    }

    /// Which kernel multiplies (for reports and tests).
    pub fn kind(&self) -> &'static str {
        match self {
            Linear::Ggml { .. } => "ggml",
            Linear::Panels { .. } => "panels",
            Linear::Int8 { .. } => "int8",
        }
    }
}

/// One of our product nodes over a contiguous `x`; they add an f32 bias themselves, any other goes through
/// ggml's add.
fn own<'a>(
    ctx: &'a Context,
    x: Tensor<'a>,
    bias: Option<Tensor<'a>>,
    product: impl Fn(Tensor<'a>, Option<Tensor<'a>>) -> crate::ggml::Result<Tensor<'a>>,
) -> Result<Tensor<'a>, ModelError> {
    let x = if x.is_contiguous() { x } else { ctx.cont(x)? };
    match bias {
        Some(b) if b.ty() == GgmlType::F32 => Ok(product(x, Some(b))?),
        Some(b) => Ok(ctx.add(product(x, None)?, b)?),
        None => Ok(product(x, None)?),
    }
}

/// Matrices laid out at load for our kernels, by tensor name (consumed by `Resolver::linear`).
#[derive(Default)]
pub(crate) struct Packed {
    pub panels: HashMap<String, Panels>,
    pub int8: HashMap<String, PackedWeights>,
}

/// Resolves the name table's entries to weights of one store, once, at load: a missing tensor is a load
/// error here, never one of a graph build.
pub(crate) struct Resolver<'s> {
    pub store: &'s WeightStore,
    pub packed: Packed,
}

impl Resolver<'_> {
    /// The weight `name` (of layer `l`).
    pub fn id(&self, name: TensorName, l: Option<usize>) -> Result<WeightId, ModelError> {
        let name = name.gguf(l);
        self.store.id(&name).ok_or(ModelError::MissingTensor(name))
    }

    /// The Linear layer of weight `w` and bias `b` (of layer `l`), multiplied by what its weight was
    /// laid out for at load: our panels, our int8 (from `INT8_MIN_TOKENS` tokens), else ggml.
    pub fn linear(&mut self, w: TensorName, b: Option<TensorName>, l: Option<usize>) -> Result<Linear, ModelError> {
        let wid = self.id(w, l)?;
        let b = b.map(|b| self.id(b, l)).transpose()?;
        let name = w.gguf(l);
        if let Some(p) = self.packed.panels.remove(&name) {
            return Ok(Linear::Panels { p, b });
        }
        if let Some(p) = self.packed.int8.remove(&name) {
            return Ok(Linear::Int8 { p, w: wid, b });
        }
        Ok(Linear::Ggml { w: wid, b })
    }
}
