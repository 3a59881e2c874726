//! A session: one conversation's state on one backend (KV cache, scheduler, threadpool) over a shared
//! `Weights`. Sessions are `Send` (move one to a worker thread) but not `Sync`; the model is shared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ggml::{Backend, BackendKind, Context, KeptGraph, Sched, Threadpool};
use crate::model::kv_cache::{KvCache, KvType};
use crate::model::llm::{self, Batch};
use crate::model::{vision, ModelError, Weights};

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
    /// The part of `decode_time` spent outside ggml's computation: building, planning and allocating the
    /// graph, setting its inputs, reading the logits (most of it is gone when the decode graph is kept).
    pub decode_overhead: Duration,
    /// Decode graphs built (one per span of `DECODE_SPAN` cache rows when kept, else one per token).
    pub decode_graphs_built: usize,
}

/// Decode graphs read the KV cache in spans of this many rows (the last one ends at the context size): a
/// graph is built when decoding enters a new span and reused for every token in it (`llama.cpp` pads its
/// cache view the same way). Under 512 rows (the first span) ggml's CPU attention splits the work by query
/// head only, so the span gives the same bits as a view of exactly the cached rows; from 512 rows on it splits
/// the cache rows between threads by the view's length, which moves the rounding of the sums a little.
pub const DECODE_SPAN: usize = 256;

/// The decode graph kept between tokens, with the cache it writes (owned by the graph while it is kept).
type DecodeGraph = KeptGraph<(Arc<Weights>, KvCache)>;
/// The kept graph's tensor handles, in the order its build returns them.
const D_EMBD: usize = 0;
const D_POS: usize = 1;
const D_ROWS: usize = 2;
const D_MASK: usize = 3;
const D_LOGITS: usize = 4;

impl Kv {
    fn cache(&self) -> Result<&KvCache, ModelError> {
        match self {
            Kv::Here(kv) => Ok(kv),
            Kv::Kept { graph, .. } => Ok(&graph.keep().1),
            Kv::Moving => Err(ModelError::Input(
                "the session lost its KV cache in a failed graph build; start a new session".into(),
            )),
        }
    }
}

/// Where the KV cache is: with the session, or inside the kept decode graph (which reads and writes it).
enum Kv {
    Here(KvCache),
    Kept {
        graph: DecodeGraph,
        n_kv: usize,
    },
    /// Only while moving it between the two (a failure there leaves the session without a cache).
    Moving,
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
    model: Arc<Weights>,
    // Field order is drop order: the scheduler and cache before the backend, the backend before the
    // threadpool it uses.
    sched: Sched,
    kv: Kv,
    /// Tokens in the cache (the next position).
    n_past: usize,
    /// Keep the decode graph between tokens (default) rather than build one per token.
    reuse_decode_graph: bool,
    /// The GPU backend when the model's weights are on a GPU (graphs run there, the CPU takes the rest).
    gpu: Option<Backend>,
    backend: Backend,
    _threadpool: Threadpool,
    params: SessionParams,
    pub stats: Stats,
}

impl Session {
    pub fn new(model: Arc<Weights>, params: SessionParams) -> Result<Self, ModelError> {
        if params.n_batch == 0 || params.vision_batch == 0 {
            return Err(ModelError::Input("n_batch and vision_batch must be at least 1".into()));
        }
        let backend = Backend::cpu(params.n_threads)?;
        let threadpool = Threadpool::new(params.n_threads)?;
        backend.set_threadpool(&threadpool);
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
        let graph = vision::graph_tensors(&model.hp).max(llm::graph_tensors(&model.hp));
        let sched = match &gpu {
            Some(g) => Sched::new(&[g, &backend], graph)?,
            None => Sched::new(&[&backend], graph)?,
        };
        Ok(Session {
            model,
            sched,
            kv: Kv::Here(kv),
            n_past: 0,
            reuse_decode_graph: true,
            gpu,
            backend,
            _threadpool: threadpool,
            params,
            stats: Stats::default(),
        })
    }

    pub fn model(&self) -> &Arc<Weights> {
        &self.model
    }
    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }
    pub fn n_ctx(&self) -> usize {
        self.kv().map_or(0, |kv| kv.n_ctx())
    }
    pub fn kv_bytes(&self) -> usize {
        self.kv().map_or(0, |kv| kv.bytes())
    }
    /// Forgets the conversation (the cache memory is kept).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }
    /// Drops cached tokens after `n` (to rewind to an earlier turn).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Whether `decode` keeps its graph between tokens (the default: built once per `DECODE_SPAN` cache
    /// rows, then only its inputs change) or builds the same graph again for every token (for comparisons:
    /// the logits are the same bits either way, only the time outside ggml's computation differs).
    pub fn set_decode_graph_reuse(&mut self, on: bool) {
        self.reuse_decode_graph = on;
    }

    fn kv(&self) -> Result<&KvCache, ModelError> {
        self.kv.cache()
    }

    /// The cache, out of the kept decode graph if it is there (which drops that graph).
    fn take_kv(&mut self) -> Result<KvCache, ModelError> {
        match std::mem::replace(&mut self.kv, Kv::Moving) {
            Kv::Here(kv) => Ok(kv),
            Kv::Kept { graph, .. } => Ok(graph.into_keep().1),
            Kv::Moving => Err(ModelError::Input(
                "the session lost its KV cache in a failed graph build; start a new session".into(),
            )),
        }
    }

    /// Runs the vision tower and projector on normalized tiles `[T, 3, S, S]` (CHW, f32).
    pub fn encode_tiles(&mut self, tiles: &[f32], keep_vit: bool) -> Result<VisionOutput, ModelError> {
        self.encode_tiles_with(tiles, keep_vit, &mut |_| true)?
            .ok_or_else(|| ModelError::Input("the vision encoder was stopped".into()))
    }

    /// `encode_tiles` in graphs of `vision_batch` tiles (the one vision batcher): after each, `on_batch` is
    /// told how many tiles are done; returning false stops there (`None`, the last batch included).
    pub fn encode_tiles_with(
        &mut self,
        tiles: &[f32],
        keep_vit: bool,
        on_batch: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Option<VisionOutput>, ModelError> {
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
            self.stats.tiles_encoded += t;
            if !on_batch(first + t) {
                self.stats.vision_time += start.elapsed();
                return Ok(None);
            }
        }
        self.stats.vision_time += start.elapsed();
        Ok(Some(VisionOutput { vit, proj }))
    }

    /// Appends tokens to the conversation: `ids` where every `img_context_id` takes the next row of
    /// `image_rows` (`[n_image_tokens, n_embd]`, in order). Prefills in chunks of `n_batch`; returns the last
    /// token's logits (and every token's final hidden state when `keep_hidden`).
    pub fn eval(&mut self, ids: &[u32], image_rows: &[f32], keep_hidden: bool) -> Result<EvalOutput, ModelError> {
        self.eval_with(ids, image_rows, keep_hidden, &mut |_| true)?
            .ok_or_else(|| ModelError::Input("the prefill was stopped".into()))
    }

    /// `eval` (the one prefill chunker): after each chunk `on_chunk` is told how many of `ids` are in the
    /// cache; returning false stops there (`None`, the last chunk included; the chunks done stay cached).
    pub fn eval_with(
        &mut self,
        ids: &[u32],
        image_rows: &[f32],
        keep_hidden: bool,
        on_chunk: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Option<EvalOutput>, ModelError> {
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
        if self.n_past + ids.len() > self.n_ctx() {
            return Err(ModelError::Input(format!(
                "the prompt needs {} tokens ({} new + {} in the conversation) but the context holds {}",
                self.n_past + ids.len(),
                ids.len(),
                self.n_past,
                self.n_ctx()
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
        let mut done = 0;
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
            done += chunk.len();
            self.stats.tokens_prefilled += chunk.len();
            if !on_chunk(done) {
                self.stats.prefill_time += start.elapsed();
                return Ok(None);
            }
        }
        self.stats.prefill_time += start.elapsed();
        Ok(Some(EvalOutput { logits, hidden }))
    }

    /// One decode step: appends `id` and returns the next-token logits.
    pub fn decode(&mut self, id: u32) -> Result<Vec<f32>, ModelError> {
        let n_ctx = self.n_ctx();
        if self.n_past + 1 > n_ctx {
            return Err(ModelError::Input(format!("the context of {n_ctx} tokens is full")));
        }
        let start = Instant::now();
        let mut embd = Vec::with_capacity(self.model.hp.llm.n_embd);
        self.model.token_embeddings(&[id], &mut embd)?;
        let (logits, compute) = self.decode_kept(&embd)?;
        self.stats.tokens_decoded += 1;
        let elapsed = start.elapsed();
        self.stats.decode_time += elapsed;
        self.stats.decode_overhead += elapsed.saturating_sub(compute);
        Ok(logits)
    }

    /// One token through the kept decode graph of the span that holds position `n_past` (built when decoding
    /// enters a new span, after it was dropped, or every time when reuse is off); returns the logits and the
    /// time ggml computed.
    fn decode_kept(&mut self, embd: &[f32]) -> Result<(Vec<f32>, Duration), ModelError> {
        let n_past = self.n_past;
        let n_kv = (n_past + 1)
            .div_ceil(DECODE_SPAN)
            .saturating_mul(DECODE_SPAN)
            .min(self.n_ctx());
        if !self.reuse_decode_graph || !matches!(self.kv, Kv::Kept { n_kv: kept, .. } if kept == n_kv) {
            let ctx = Context::new(llm::graph_tensors(&self.model.hp), 1)?;
            let kv = self.take_kv()?;
            let built = KeptGraph::build(ctx, (self.model.clone(), kv), |ctx, (model, kv)| {
                let batch = Batch {
                    n: 1,
                    n_kv,
                    n_out: 1,
                    keep_hidden: false,
                    decode_step: true,
                };
                let g = llm::build(ctx, model, kv, batch)?;
                let mut graph = ctx.new_graph()?;
                graph.build_forward(g.logits)?;
                Ok::<_, ModelError>((graph, vec![g.inp_embd, g.inp_pos, g.inp_rows, g.inp_mask, g.logits]))
            });
            match built {
                Ok(graph) => self.kv = Kv::Kept { graph, n_kv },
                Err((e, (_, kv))) => {
                    self.kv = Kv::Here(kv);
                    return Err(e);
                }
            }
            self.stats.decode_graphs_built += 1;
        }
        let Kv::Kept { graph, .. } = &mut self.kv else {
            return Err(ModelError::Input("no decode graph".into()));
        };
        if !graph.is_allocated_in(&self.sched) {
            graph.alloc(&mut self.sched)?;
        }
        graph.tensor(D_EMBD)?.set_f32(embd)?;
        graph.tensor(D_POS)?.set_i32(&[n_past as i32])?;
        graph.tensor(D_ROWS)?.set_bytes(&(n_past as i64).to_le_bytes())?;
        graph
            .tensor(D_MASK)?
            .set_f16_from_f32(&llm::causal_mask(n_past, 1, n_kv))?;
        let t = Instant::now();
        graph.compute(&mut self.sched)?;
        let compute = t.elapsed();
        let logits = graph.tensor(D_LOGITS)?.get_f32()?;
        self.n_past += 1;
        Ok((logits, compute))
    }

    /// `n` tokens through a graph built for them over exactly the cached rows; returns the last token's
    /// logits and the hidden states when asked.
    fn run_llm(
        &mut self,
        embd: &[f32],
        n: usize,
        keep_hidden: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let model = self.model.clone();
        let n_past = self.n_past;
        let n_kv = n_past + n;
        let kv = self.kv.cache()?;
        let ctx = Context::new(llm::graph_tensors(&model.hp), 1)?;
        let batch = Batch {
            n,
            n_kv,
            n_out: 1,
            keep_hidden,
            decode_step: false,
        };
        let g = llm::build(&ctx, &model, kv, batch)?;
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
        g.inp_mask.set_f16_from_f32(&llm::causal_mask(n_past, n, n_kv))?;
        self.sched.compute(&graph)?;
        let logits = g.logits.get_f32()?;
        let hidden = match g.hidden {
            Some(h) => Some(h.get_f32()?),
            None => None,
        };
        self.n_past += n;
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
