//! A session: one conversation's state on one backend (KV cache, scheduler, threadpool) over a shared
//! `Model`. Sessions are `Send` (move one to a worker thread) but not `Sync`; the model is shared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ggml::{Backend, BackendKind, Context, Sched, Threadpool};
use crate::model::kv_cache::{KvCache, KvType};
use crate::model::{qwen2, vision, Model, ModelError};

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Context size in tokens (the KV cache is sized to it).
    pub n_ctx: usize,
    pub kv_type: KvType,
    /// CPU threads; default: the number of physical cores.
    pub n_threads: usize,
    /// Prefill chunk size in tokens.
    pub n_batch: usize,
    /// Tiles encoded per vision graph (bounds the compute buffer).
    pub vision_batch: usize,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            n_ctx: 4096,
            kv_type: KvType::F16,
            n_threads: physical_cores(),
            n_batch: 512,
            vision_batch: 4,
        }
    }
}

/// Physical cores (hyper-threads share execution units, and ggml's kernels saturate them).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut phys = String::new();
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']).to_string();
        } else if let Some(v) = line.strip_prefix("core id") {
            cores.insert((phys.clone(), v.trim_start_matches([' ', '\t', ':']).to_string()));
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// Counters and timings, cumulative over the session's life.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub tiles_encoded: usize,
    pub vision_time: Duration,
    pub tokens_prefilled: usize,
    pub prefill_time: Duration,
    pub tokens_decoded: usize,
    pub decode_time: Duration,
}

/// What the vision encoder returns.
pub struct VisionOutput {
    /// `[T, n_tok, D_vision]` ViT output including CLS, only when asked for.
    pub vit: Option<Vec<f32>>,
    /// `[T * 256, n_embd]` projector rows.
    pub proj: Vec<f32>,
}

/// What a prompt evaluation returns.
pub struct EvalOutput {
    /// Logits of the last token `[n_vocab]`.
    pub logits: Vec<f32>,
    /// Final-norm hidden states of every token `[n, n_embd]`, only when asked for.
    pub hidden: Option<Vec<f32>>,
}

pub struct Session {
    model: Arc<Model>,
    // Field order is drop order: the scheduler and cache before the backend, the backend before the
    // threadpool it uses.
    sched: Sched,
    kv: KvCache,
    /// The GPU backend when the model's weights are on a GPU (graphs run there, the CPU takes the rest).
    gpu: Option<Backend>,
    backend: Backend,
    _threadpool: Threadpool,
    params: SessionParams,
    pub stats: Stats,
}

impl Session {
    pub fn new(model: Arc<Model>, params: SessionParams) -> Result<Self, ModelError> {
        if params.n_batch == 0 || params.vision_batch == 0 {
            return Err(ModelError::Input("n_batch and vision_batch must be at least 1".into()));
        }
        let backend = Backend::cpu(params.n_threads)?;
        let threadpool = Threadpool::new(params.n_threads)?;
        if std::env::var_os("INTERNVL_NO_THREADPOOL").is_none() {
            backend.set_threadpool(&threadpool);
        }
        let gpu = if model.device == BackendKind::Gpu {
            Some(Backend::gpu()?)
        } else {
            None
        };
        let kv = KvCache::new(
            &model.hp.llm,
            params.n_ctx,
            params.kv_type,
            gpu.as_ref().unwrap_or(&backend),
        )?;
        let graph = vision::graph_tensors(&model.hp).max(qwen2::graph_tensors(&model.hp));
        let sched = match &gpu {
            Some(g) => Sched::new(&[g, &backend], graph)?,
            None => Sched::new(&[&backend], graph)?,
        };
        Ok(Session {
            model,
            sched,
            kv,
            gpu,
            backend,
            _threadpool: threadpool,
            params,
            stats: Stats::default(),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.kv.n_past
    }
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }
    /// Forgets the conversation (the cache memory is kept).
    pub fn reset(&mut self) {
        self.kv.n_past = 0;
    }
    /// Drops cached tokens after `n` (to rewind to an earlier turn).
    pub fn truncate(&mut self, n: usize) {
        self.kv.n_past = self.kv.n_past.min(n);
    }

    /// Runs the vision tower and projector on normalized tiles `[T, 3, S, S]` (CHW, f32).
    pub fn encode_tiles(&mut self, tiles: &[f32], keep_vit: bool) -> Result<VisionOutput, ModelError> {
        let hp = &self.model.hp;
        let per_tile = hp.vision.n_channels * hp.vision.image_size * hp.vision.image_size;
        let patches = vision::patchify(hp, tiles)?;
        let n_tiles = tiles.len() / per_tile;
        let mut proj = Vec::with_capacity(n_tiles * hp.num_image_token() * hp.llm.n_embd);
        let mut vit = if keep_vit { Some(Vec::new()) } else { None };
        let start = Instant::now();
        let model = self.model.clone();
        for first in (0..n_tiles).step_by(self.params.vision_batch) {
            let t = self.params.vision_batch.min(n_tiles - first);
            let ctx = Context::new(vision::graph_tensors(hp), 1)?;
            let g = vision::build(&ctx, &model, t, keep_vit)?;
            let mut graph = ctx.new_graph()?;
            graph.build_forward(g.proj_out)?;
            if keep_vit {
                graph.build_forward(g.vit_out)?;
            }
            self.sched.alloc(&graph)?;
            g.inp_patches
                .set_f32(&patches[first * per_tile..(first + t) * per_tile])?;
            if let Some((zeros, mask)) = g.inp_pad {
                let (z, m) = vision::pad_inputs(hp, t);
                zeros.set_f32(&z)?;
                mask.set_f32(&m)?;
            }
            self.sched.compute(&graph)?;
            proj.extend(g.proj_out.get_f32()?);
            if let Some(v) = vit.as_mut() {
                v.extend(g.vit_out.get_f32()?);
            }
        }
        self.stats.tiles_encoded += n_tiles;
        self.stats.vision_time += start.elapsed();
        Ok(VisionOutput { vit, proj })
    }

    /// Appends tokens to the conversation: `ids` where every `img_context_id` takes the next row of
    /// `image_rows` (`[n_image_tokens, n_embd]`, in order). Prefills in chunks of `n_batch`; returns the last
    /// token's logits (and every token's final hidden state when `keep_hidden`).
    pub fn eval(&mut self, ids: &[u32], image_rows: &[f32], keep_hidden: bool) -> Result<EvalOutput, ModelError> {
        let d = self.model.hp.llm.n_embd;
        let ctx_id = self.model.meta.img_context_id;
        let n_img = ids.iter().filter(|&&t| t == ctx_id).count();
        if n_img * d != image_rows.len() {
            return Err(ModelError::Input(format!(
                "{n_img} image-context tokens but {} image embedding rows",
                image_rows.len() / d.max(1)
            )));
        }
        if ids.is_empty() {
            return Err(ModelError::Input("no tokens to evaluate".into()));
        }
        if self.kv.n_past + ids.len() > self.kv.n_ctx() {
            return Err(ModelError::Input(format!(
                "the prompt needs {} tokens ({} new + {} in the conversation) but the context holds {}",
                self.kv.n_past + ids.len(),
                ids.len(),
                self.kv.n_past,
                self.kv.n_ctx()
            )));
        }
        let start = Instant::now();
        let mut img_cursor = 0;
        let mut hidden = if keep_hidden {
            Some(Vec::with_capacity(ids.len() * d))
        } else {
            None
        };
        let mut logits = Vec::new();
        for chunk in ids.chunks(self.params.n_batch) {
            let mut embd = Vec::with_capacity(chunk.len() * d);
            for &id in chunk {
                if id == ctx_id {
                    embd.extend_from_slice(&image_rows[img_cursor * d..(img_cursor + 1) * d]);
                    img_cursor += 1;
                } else {
                    self.model.token_embeddings(&[id], &mut embd)?;
                }
            }
            let (l, h) = self.run_llm(&embd, chunk.len(), keep_hidden)?;
            logits = l;
            if let (Some(all), Some(h)) = (hidden.as_mut(), h) {
                all.extend(h);
            }
        }
        self.stats.tokens_prefilled += ids.len();
        self.stats.prefill_time += start.elapsed();
        Ok(EvalOutput { logits, hidden })
    }

    /// One decode step: appends `id` and returns the next-token logits.
    pub fn decode(&mut self, id: u32) -> Result<Vec<f32>, ModelError> {
        if self.kv.n_past + 1 > self.kv.n_ctx() {
            return Err(ModelError::Input(format!(
                "the context of {} tokens is full",
                self.kv.n_ctx()
            )));
        }
        let start = Instant::now();
        let mut embd = Vec::with_capacity(self.model.hp.llm.n_embd);
        self.model.token_embeddings(&[id], &mut embd)?;
        let (logits, _) = self.run_llm(&embd, 1, false)?;
        self.stats.tokens_decoded += 1;
        self.stats.decode_time += start.elapsed();
        Ok(logits)
    }

    fn run_llm(
        &mut self,
        embd: &[f32],
        n: usize,
        keep_hidden: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let model = self.model.clone();
        let n_past = self.kv.n_past;
        let ctx = Context::new(qwen2::graph_tensors(&model.hp), 1)?;
        let g = qwen2::build(&ctx, &model, &self.kv, n, 1, keep_hidden)?;
        let mut graph = ctx.new_graph()?;
        graph.build_forward(g.logits)?;
        if let Some(h) = g.hidden {
            graph.build_forward(h)?;
        }
        self.sched.alloc(&graph)?;
        g.inp_embd.set_f32(embd)?;
        let pos: Vec<i32> = (n_past..n_past + n).map(|p| p as i32).collect();
        g.inp_pos.set_i32(&pos)?;
        let rows: Vec<u8> = (n_past..n_past + n).flat_map(|p| (p as i64).to_le_bytes()).collect();
        g.inp_rows.set_bytes(&rows)?;
        g.inp_mask.set_f16_from_f32(&qwen2::causal_mask(n_past, n))?;
        self.sched.compute(&graph)?;
        let logits = g.logits.get_f32()?;
        let hidden = match g.hidden {
            Some(h) => Some(h.get_f32()?),
            None => None,
        };
        self.kv.n_past += n;
        Ok((logits, hidden))
    }

    /// Bytes of the scheduler's compute buffers (they grow to the largest graph run so far; memory budgets).
    pub fn compute_buffer_bytes(&self) -> usize {
        let gpu = self.gpu.as_ref().map_or(0, |g| self.sched.buffer_size(g));
        gpu + self.sched.buffer_size(&self.backend)
    }

    /// Where the graphs run (for `--timings`): "CPU", or the GPU's name with the CPU taking what it lacks.
    pub fn backend_name(&self) -> String {
        match &self.gpu {
            Some(g) => format!("{} (+CPU for unsupported ops)", g.name()),
            None => self.backend.name().to_string(),
        }
    }
}
