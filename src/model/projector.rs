//! The mlp1 projector (spec §3.9): pixel-shuffled ViT tokens to rows of the language model's width.

use crate::ggml::{Context, Tensor, WeightId};
use crate::hparams::Hparams;
use crate::names::TensorName as N;

use super::linear::{Linear, Resolver};
use super::vision::layer_norm;
use super::{ModelError, Weights};

/// mlp1's weights: LayerNorm, Linear, GELU, Linear.
pub struct ProjectorWeights {
    pub norm: (WeightId, WeightId),
    pub up: Linear,
    pub down: Linear,
}

impl ProjectorWeights {
    pub(crate) fn resolve(_hp: &Hparams, r: &mut Resolver<'_>) -> Result<Self, ModelError> {
        Ok(ProjectorWeights {
            norm: (r.id(N::MmNorm, None)?, r.id(N::MmNormBias, None)?),
            up: r.linear(N::MmUp, Some(N::MmUpBias), None)?,
            down: r.linear(N::MmDown, Some(N::MmDownBias), None)?,
        })
    }
}

/// LayerNorm (eps from the file, 1e-5), Linear, exact GELU (`gelu`: the vision graph's choice), Linear over
/// the pixel-shuffled tokens `y` `[4·D_vision, n]`; returns `[n_embd_llm, n]`.
pub fn build<'a>(
    ctx: &'a Context,
    m: &'a Weights,
    y: Tensor<'a>,
    gelu: impl Fn(Tensor<'a>) -> crate::ggml::Result<Tensor<'a>>,
) -> Result<Tensor<'a>, ModelError> {
    let (w, store) = (&m.projector, &m.weights);
    let n = y.ne()[1] as usize;
    let y = layer_norm(
        ctx,
        y,
        store.tensor(w.norm.0)?,
        store.tensor(w.norm.1)?,
        m.hp.proj_ln_eps,
    )?;
    let y = w.up.forward(ctx, store, y, n)?;
    let y = gelu(y)?;
    w.down.forward(ctx, store, y, n)
}
