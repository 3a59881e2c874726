//! [`Chat`]: a multi-turn conversation with images over one KV cache.
//!
//! HF `chat()` re-renders the whole conversation each turn, re-encodes every image and prefills
//! everything again (spec §5.2). Here each turn renders the same Hermes-2 prompt (so the tokens are
//! HF's), but only the part that differs from what the KV cache already holds is evaluated:
//! the cache is described token by token ([`Tag`]: a text id, or row j of image K), the new prompt
//! is described the same way, the cache is rewound to the longest common prefix and only the rest
//! is prefilled. Image rows are identified by content, so a different image at the same place is
//! never mistaken for a cached one. Vision embeddings are kept per image in an
//! [`EmbeddingCache`] and only computed for images whose rows must actually be prefilled.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget;
use crate::image::TilingParams;
use crate::prompt::{
    build_prompt_ids, clean_answer, multi_image_question, video_question, Conversation, PromptIds, Turn,
    IMAGE_PLACEHOLDER,
};
use crate::sampling::{logprobs, Sampler, SamplingParams, TokenLogprob};
use crate::session::{Session, SessionParams};
use crate::stop::StopMatcher;
use crate::structured::{Constraint, Grammars};
use crate::tokenizer::StreamDecoder;

use super::error::{EngineError, Result};
use super::model::Model;
use super::vision_input::{EmbeddingCache, Image, ImageKey, SharedEmbeddingCache};

/// Settings of a conversation.
#[derive(Debug, Clone)]
pub struct ChatParams {
    /// Context size, KV type, threads, prefill chunk (`n_batch`) and tiles per vision graph.
    pub session: SessionParams,
    /// The system message; `None` for the model's (spec §5.1).
    pub system: Option<String>,
    /// Tiling of images (`None`: the model's, spec §7.1). Video frames always get one tile.
    pub tiling: Option<TilingParams>,
    /// When the prompt does not fit the context, drop the oldest turns (and re-prefill what is
    /// kept) instead of failing with [`EngineError::ContextOverflow`].
    pub truncate_history: bool,
    /// Byte budget of the per-image embedding cache (least recently used evicted beyond it).
    pub image_cache_bytes: usize,
    /// Memory budget of the session in bytes; 0: no limit. The KV cache and the prefill compute buffer
    /// are checked when the chat opens, the tiles of new images before they are preprocessed; over
    /// budget is [`EngineError::Budget`], with the numbers, before anything is allocated. Weights are
    /// memory-mapped and not counted. See [`crate::budget`].
    pub mem_budget: u64,
}

impl Default for ChatParams {
    fn default() -> Self {
        ChatParams {
            session: SessionParams::default(),
            system: None,
            tiling: None,
            truncate_history: false,
            image_cache_bytes: 512 << 20,
            mem_budget: 0,
        }
    }
}

/// How the images of one message are laid out in the question (spec §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageLayout {
    /// One image: `<image>\n{text}`; several: `Image-1: <image>\nImage-2: <image>\n{text}`.
    #[default]
    Separate,
    /// Video frames: `Frame1: <image>\n…FrameK: <image>\n{text}`.
    Video,
}

/// A user message: text and the images it shows. If the text already holds `<image>`
/// placeholders, their count must equal the images' and the text is used as is.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub text: String,
    pub images: Vec<Image>,
    pub layout: ImageLayout,
}

impl Message {
    pub fn text(text: impl Into<String>) -> Self {
        Message {
            text: text.into(),
            ..Default::default()
        }
    }
    pub fn with_image(mut self, image: Image) -> Self {
        self.images.push(image);
        self
    }
    pub fn with_images(mut self, images: impl IntoIterator<Item = Image>) -> Self {
        self.images.extend(images);
        self
    }
    /// A question about video frames (see [`Image::video_frames`]).
    pub fn video(text: impl Into<String>, frames: Vec<Image>) -> Self {
        Message {
            text: text.into(),
            images: frames,
            layout: ImageLayout::Video,
        }
    }

    /// The question as it enters the template, with one `<image>` per image.
    pub fn render(&self) -> Result<String> {
        let placeholders = self.text.matches(IMAGE_PLACEHOLDER).count();
        let n = self.images.len();
        if placeholders > 0 || n == 0 {
            if placeholders != n {
                return Err(EngineError::Placeholders {
                    placeholders,
                    images: n,
                });
            }
            return Ok(self.text.clone());
        }
        Ok(match (self.layout, n) {
            (ImageLayout::Video, _) => video_question(n, &self.text),
            (ImageLayout::Separate, 1) => format!("{IMAGE_PLACEHOLDER}\n{}", self.text),
            (ImageLayout::Separate, _) => multi_image_question(n, &self.text),
        })
    }
}

/// One exchange of the history: the rendered question (with placeholders), its images and the
/// answer as HF stores it (special tokens skipped, cleaned), `None` while open.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub user: String,
    pub images: Vec<Image>,
    pub video: bool,
    pub assistant: Option<String>,
}

/// A shareable flag that stops a running [`Chat::generate`] between prefill chunks, vision
/// batches or tokens; set it from any thread (a Ctrl-C handler, a UI).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Clears the flag for the next generation.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// At most this many new tokens (spec §8 suggests 1024).
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep special tokens in [`Reply::text`] and the streamed pieces (needed for the grounding
    /// tags `<ref>`/`<box>`, spec §9). The history always stores HF's version (special tokens
    /// skipped).
    pub keep_special: bool,
    pub cancel: Option<CancelFlag>,
    /// The answer must match this (JSON schema, any JSON object, regex, grammar; see
    /// [`crate::structured`]). Compiled before anything is evaluated: a bad one is
    /// [`EngineError::Constraint`].
    pub constraint: Option<Constraint>,
    /// Stop strings: the answer ends before the first one (which is not part of it); empty ones are
    /// ignored. Pieces that may start one are held back from the stream until decided.
    pub stop: Vec<String>,
    /// Report log-probabilities of each answer token and of the `n` most likely tokens at each step
    /// (`Some(0)`: the chosen token's only). Taken from the model's raw logits, before the repetition
    /// penalty, temperature and any grammar mask.
    pub logprobs: Option<usize>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 1024,
            sampling: SamplingParams::default(),
            keep_special: false,
            cancel: None,
            constraint: None,
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

/// What [`Chat::generate`] reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Something the user should know (history dropped to fit the context, ...).
    Notice(&'a str),
    /// Vision encoding: `done` of `total` tiles of this turn's new images.
    Vision { done: usize, total: usize },
    /// Prefill: `done` of `total` new prompt tokens evaluated.
    Prefill { done: usize, total: usize },
    /// A piece of the answer (complete UTF-8).
    Token(&'a str),
    /// The log-probabilities of the token just sampled (only with [`GenerateParams::logprobs`]); it
    /// comes before the token's text, which may come later (a character split over tokens, text held
    /// back for a stop string).
    Logprob(&'a TokenLogprob),
}

/// Returned by the event callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop now (same as cancelling).
    Stop,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (spec §5.4), a stop string, or the end of a constrained answer.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The KV cache is full.
    ContextFull,
    /// Cancelled by the callback or the [`CancelFlag`].
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Counters and timings of one turn.
#[derive(Debug, Clone, Default)]
pub struct TurnStats {
    /// Tokens of the whole rendered prompt (history included).
    pub prompt_tokens: usize,
    /// Of which `<IMG_CONTEXT>` tokens.
    pub image_tokens: usize,
    /// Images and tiles in the prompt (history included).
    pub images: usize,
    pub tiles: usize,
    /// Tiles run through the vision encoder in this turn.
    pub tiles_encoded: usize,
    /// Tiles whose embeddings came from the image cache.
    pub tiles_cached: usize,
    /// Prompt tokens already in the KV cache (not evaluated again).
    pub reused_tokens: usize,
    /// Prompt tokens evaluated in this turn.
    pub prefilled_tokens: usize,
    pub generated_tokens: usize,
    /// Oldest turns dropped to fit the context.
    pub dropped_turns: usize,
    pub preprocess: Duration,
    pub vision: Duration,
    pub prefill: Duration,
    /// Compiling the constraint (grammar, lexer, first token mask).
    pub constraint_compile: Duration,
    /// From the start of `generate` to the first sampled token.
    pub time_to_first_token: Duration,
    pub decode: Duration,
    /// Of `decode`, the time in the model's forward passes (the rest is sampling, the constraint's mask,
    /// detokenizing and the caller's callback).
    pub decode_forward: Duration,
    /// Of `decode_forward`, the time outside ggml's computation: building and allocating graphs, setting
    /// their inputs, reading the logits (issue 18's per-token overhead).
    pub decode_outside_compute: Duration,
    /// Forward passes in `decode_forward` (the first token comes from the prefill's logits).
    pub decode_forwards: usize,
    /// Decode graphs built in this turn (one per span of `session::DECODE_SPAN` cache rows).
    pub decode_graphs_built: usize,
    pub total: Duration,
}

/// The answer of one turn.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The answer, cleaned as chat() does (spec §5.4); with special tokens if asked for.
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish: FinishReason,
    pub stats: TurnStats,
    /// With [`GenerateParams::logprobs`]: one entry per answer token (end-of-turn excluded).
    pub logprobs: Vec<TokenLogprob>,
    /// With [`GenerateParams::constraint`]: whether the answer is complete (matches it). `false` when
    /// `max_new_tokens`, the context or a cancel ended it first.
    pub complete: Option<bool>,
}

/// What one KV-cache row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Text(u32),
    /// Row `j` of image `key`'s `<IMG_CONTEXT>` run.
    Image(ImageKey, u32),
}

/// A conversation: history, a KV cache and an image embedding cache. `Send`, not `Sync`.
pub struct Chat {
    model: Model,
    session: Session,
    params: ChatParams,
    system: String,
    turns: Vec<TurnRecord>,
    /// One tag per KV-cache row; always as long as `session.n_past()`.
    cached: Vec<Tag>,
    embeddings: EmbeddingCache,
    /// A cache shared with other chats (looked up after `embeddings`), see [`Chat::share_image_cache`].
    shared_images: Option<SharedEmbeddingCache>,
    /// What the session reserved when it opened (KV cache, prefill compute bound).
    reserved: budget::SessionNeeds,
    /// Vision compute buffer per tiles-per-graph, measured once (memory budget).
    vision_compute: std::collections::HashMap<usize, u64>,
}

impl Chat {
    pub fn new(model: Model, params: ChatParams) -> Result<Chat> {
        if let Some(t) = &params.tiling {
            t.validate()?;
        }
        // The budget is checked before the KV cache and the scheduler are allocated.
        let sp = &params.session;
        let reserved = budget::check_session(
            model.hparams(),
            sp.n_ctx,
            sp.kv_type,
            sp.n_batch,
            params.mem_budget,
            model.weight_bytes() as u64,
        )?;
        let session = Session::new(model.inner().clone(), params.session.clone())?;
        let system = params
            .system
            .clone()
            .unwrap_or_else(|| model.default_system().to_owned());
        let embeddings = EmbeddingCache::new(params.image_cache_bytes);
        Ok(Chat {
            model,
            session,
            params,
            system,
            turns: Vec::new(),
            cached: Vec::new(),
            embeddings,
            shared_images: None,
            reserved,
            vision_compute: std::collections::HashMap::new(),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn params(&self) -> &ChatParams {
        &self.params
    }
    /// The tiling images of this chat get (video frames excepted).
    pub fn tiling(&self) -> TilingParams {
        self.params.tiling.unwrap_or_else(|| self.model.tiling())
    }
    pub fn system(&self) -> &str {
        &self.system
    }
    /// Changes the system message (the next turn re-prefills from the start).
    pub fn set_system(&mut self, system: impl Into<String>) {
        self.system = system.into();
    }
    pub fn turns(&self) -> &[TurnRecord] {
        &self.turns
    }
    /// Replaces the history (used by transcripts). Only the last turn may be open.
    pub fn set_turns(&mut self, turns: Vec<TurnRecord>) -> Result<()> {
        let last = turns.len().saturating_sub(1);
        if turns
            .iter()
            .enumerate()
            .any(|(i, t)| t.assistant.is_none() && i != last)
        {
            return Err(EngineError::Param(
                "only the last turn of a conversation may be unanswered".into(),
            ));
        }
        self.turns = turns;
        Ok(())
    }
    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.session.n_past()
    }
    pub fn n_ctx(&self) -> usize {
        self.session.n_ctx()
    }
    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.session.kv_bytes()
    }
    /// Cumulative counters of the underlying session (tiles encoded, tokens prefilled, ...).
    pub fn session_stats(&self) -> &crate::session::Stats {
        &self.session.stats
    }
    /// Memory the session holds now, as the budget counts it: the KV cache, the compute buffer (what
    /// the scheduler holds, at least the prefill bound reserved when the chat opened) and the image
    /// cache.
    pub fn memory_in_use(&self) -> budget::InUse {
        budget::InUse {
            kv_bytes: self.session.kv_bytes() as u64,
            compute_bytes: (self.session.compute_buffer_bytes() as u64).max(self.reserved.compute_bytes),
            image_cache_bytes: self.embeddings.bytes() as u64,
        }
    }

    /// Bytes of the compute buffers the scheduler holds now (measured, not the bound).
    pub fn compute_buffer_bytes(&self) -> usize {
        self.session.compute_buffer_bytes()
    }

    /// The vision compute buffer for `tiles` tiles per graph, as ggml's allocator plans it (measured
    /// once per batch size without allocating, see [`budget::measure_vision_compute`]).
    pub fn vision_compute_bytes(&mut self, tiles: usize) -> Result<u64> {
        if let Some(&b) = self.vision_compute.get(&tiles) {
            return Ok(b);
        }
        let b = budget::measure_vision_compute(self.model.inner(), tiles)?;
        self.vision_compute.insert(tiles, b);
        Ok(b)
    }

    /// Images whose embeddings are cached.
    pub fn cached_images(&self) -> usize {
        self.embeddings.len()
    }

    /// Also looks image embeddings up in (and adds new ones to) `cache`, which other chats share: a
    /// server's sessions then encode an image once, whichever session sees it first.
    pub fn share_image_cache(&mut self, cache: SharedEmbeddingCache) {
        self.shared_images = Some(cache);
    }

    /// Forgets the history. The KV cache and image embeddings stay, so a new conversation that
    /// starts the same way (system message, same first image) reuses them.
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Forgets the KV cache and the image embeddings too.
    pub fn clear_caches(&mut self) {
        self.session.reset();
        self.cached.clear();
        self.embeddings = EmbeddingCache::new(self.params.image_cache_bytes);
    }

    /// Adds a question (the next [`generate`](Self::generate) answers it).
    pub fn ask(&mut self, message: Message) -> Result<()> {
        if self.turns.last().is_some_and(|t| t.assistant.is_none()) {
            return Err(EngineError::Unanswered);
        }
        let user = message.render()?;
        self.turns.push(TurnRecord {
            user,
            video: message.layout == ImageLayout::Video,
            images: message.images,
            assistant: None,
        });
        Ok(())
    }

    /// Withdraws the open question (after a failed or cancelled generation), returning it.
    pub fn withdraw(&mut self) -> Option<TurnRecord> {
        if self.turns.last().is_some_and(|t| t.assistant.is_none()) {
            self.turns.pop()
        } else {
            None
        }
    }

    /// [`ask`](Self::ask) then [`generate`](Self::generate).
    pub fn send(
        &mut self,
        message: Message,
        gen: &GenerateParams,
        on_event: impl FnMut(Event<'_>) -> Flow,
    ) -> Result<Reply> {
        self.ask(message)?;
        self.generate(gen, on_event)
    }

    /// The prompt of the current history: ids with image spans, and the images in prompt order.
    fn build(&self) -> Result<(PromptIds, Vec<Image>)> {
        let conv = Conversation {
            system: self.system.clone(),
            turns: self
                .turns
                .iter()
                .map(|t| Turn {
                    user: t.user.clone(),
                    assistant: t.assistant.clone(),
                })
                .collect(),
        };
        let images: Vec<Image> = self.turns.iter().flat_map(|t| t.images.iter().cloned()).collect();
        let tiles: Vec<usize> = images.iter().map(Image::n_tiles).collect();
        let ids = build_prompt_ids(
            self.model.tokenizer(),
            &conv,
            &tiles,
            self.model.hparams().num_image_token(),
        )?;
        Ok((ids, images))
    }

    /// Builds the prompt, dropping the oldest turns while it does not fit (if allowed).
    fn fit(&mut self, on_event: &mut dyn FnMut(Event<'_>) -> Flow) -> Result<(PromptIds, Vec<Image>, usize)> {
        let n_ctx = self.session.n_ctx();
        let mut dropped = 0;
        loop {
            let (p, images) = self.build()?;
            // At least one position must stay free for the answer.
            if p.ids.len() < n_ctx {
                if dropped > 0 {
                    let msg = format!(
                        "dropped the {dropped} oldest turn(s) to fit the context of {n_ctx} tokens; the prompt is now {} tokens",
                        p.ids.len()
                    );
                    on_event(Event::Notice(&msg));
                }
                return Ok((p, images, dropped));
            }
            if !self.params.truncate_history || self.turns.len() <= 1 {
                let image: usize = p.image_spans.iter().map(|s| s.len()).sum();
                return Err(EngineError::ContextOverflow {
                    needed: p.ids.len(),
                    text: p.ids.len() - image,
                    image,
                    images: images.len(),
                    tiles: images.iter().map(Image::n_tiles).sum(),
                    n_ctx,
                    dropped_turns: dropped,
                });
            }
            self.turns.remove(0);
            dropped += 1;
        }
    }

    /// Answers the open question, streaming through `on_event`.
    ///
    /// Cancelled during prefill, the question stays open and the cache keeps what was prefilled, so
    /// calling `generate` again resumes; cancelled while decoding, the partial answer is kept.
    pub fn generate(&mut self, gen: &GenerateParams, mut on_event: impl FnMut(Event<'_>) -> Flow) -> Result<Reply> {
        let start = Instant::now();
        match self.turns.last() {
            Some(t) if t.assistant.is_none() => {}
            _ => return Err(EngineError::NoQuestion),
        }
        let cancelled = |gen: &GenerateParams| gen.cancel.as_ref().is_some_and(CancelFlag::is_cancelled);
        // A bad constraint is refused before anything is evaluated.
        let mut guide = match &gen.constraint {
            Some(c) => Some(Grammars::of(self.model.tokenizer(), self.model.stop_ids())?.compile(c)?),
            None => None,
        };
        let (prompt, images, dropped) = self.fit(&mut on_event)?;
        let mut stats = TurnStats {
            prompt_tokens: prompt.ids.len(),
            image_tokens: prompt.image_spans.iter().map(|s| s.len()).sum(),
            images: images.len(),
            tiles: images.iter().map(Image::n_tiles).sum(),
            dropped_turns: dropped,
            constraint_compile: guide.as_ref().map(|g| g.compile_time()).unwrap_or_default(),
            ..Default::default()
        };
        let tags = tags_of(&prompt, &images);

        // Rewind the cache to the common prefix; at least the last prompt token is evaluated again
        // so that its logits exist.
        let common = self.cached.iter().zip(&tags).take_while(|(a, b)| a == b).count();
        let keep = common.min(tags.len().saturating_sub(1));
        self.session.truncate(keep);
        self.cached.truncate(keep);
        stats.reused_tokens = keep;

        // Embeddings of the images that have rows to prefill.
        // Rows are held here for the whole turn, so cache eviction cannot take them away mid-turn.
        let mut by_key: std::collections::HashMap<ImageKey, Arc<Vec<f32>>> = std::collections::HashMap::new();
        let mut to_encode = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let needed = prompt.image_spans.get(i).is_some_and(|s| s.end > keep);
            if !needed
                || by_key.contains_key(&image.key())
                || to_encode.iter().any(|im: &&Image| im.key() == image.key())
            {
                continue;
            }
            let shared = || self.shared_images.as_ref().and_then(|c| c.get(image.key()));
            match self.embeddings.get(image.key()).or_else(shared) {
                Some(r) => {
                    stats.tiles_cached += image.n_tiles();
                    by_key.insert(image.key(), r);
                }
                None => to_encode.push(image),
            }
        }
        let total_tiles: usize = to_encode.iter().map(|im| im.n_tiles()).sum();
        if self.params.mem_budget > 0 && !to_encode.is_empty() {
            // Before any pixel tensor or vision graph is allocated.
            let tiles: Vec<usize> = to_encode.iter().map(|im| im.n_tiles()).collect();
            let batch = self
                .params
                .session
                .vision_batch
                .max(1)
                .min(tiles.iter().copied().max().unwrap_or(1));
            let compute = self.vision_compute_bytes(batch)?;
            let needs = budget::ImageNeeds::new(self.model.hparams(), &tiles, batch, |_| compute);
            budget::check_images(&needs, &self.memory_in_use(), self.params.mem_budget)?;
        }
        let mut done_tiles = 0;
        for image in to_encode {
            let Some(r) = self.encode(image, &mut stats, &mut done_tiles, total_tiles, gen, &mut on_event)? else {
                return Ok(self.cancelled_reply(stats, start));
            };
            self.embeddings.insert(image.key(), r.clone());
            if let Some(c) = &self.shared_images {
                c.insert(image.key(), r.clone());
            }
            by_key.insert(image.key(), r);
        }

        // Prefill the rest: the session chunks it (`Session::eval_with`); progress and cancellation between
        // chunks.
        let d = self.model.hparams().llm.n_embd;
        let total = tags.len() - keep;
        let t_prefill = Instant::now();
        let mut logits = Vec::new();
        if keep < tags.len() {
            if cancelled(gen) {
                stats.prefill = t_prefill.elapsed();
                return Ok(self.cancelled_reply(stats, start));
            }
            // The image rows of the tokens to evaluate, in prompt order.
            let mut rows = Vec::new();
            for (i, span) in prompt.image_spans.iter().enumerate() {
                let (s, e) = (span.start.max(keep), span.end);
                if s >= e {
                    continue;
                }
                let r = images
                    .get(i)
                    .and_then(|im| by_key.get(&im.key()))
                    .ok_or_else(|| EngineError::Param(format!("image {i} has no embeddings")))?;
                let slice = r.get((s - span.start) * d..(e - span.start) * d).ok_or_else(|| {
                    EngineError::Param(format!(
                        "image {i}: {} embedding rows, the prompt expects {}",
                        r.len() / d.max(1),
                        span.len()
                    ))
                })?;
                rows.extend_from_slice(slice);
            }
            let ids = prompt.ids.get(keep..).unwrap_or(&[]);
            let cached = &mut self.cached;
            let mut in_cache = 0;
            let mut on_chunk = |done: usize| {
                cached.extend_from_slice(&tags[keep + in_cache..keep + done]);
                in_cache = done;
                stats.prefilled_tokens = done;
                // Cancellation is asked before the next chunk, not after the last one.
                on_event(Event::Prefill { done, total }) != Flow::Stop && (done == total || !cancelled(gen))
            };
            match self.session.eval_with(ids, &rows, false, &mut on_chunk)? {
                Some(out) => logits = out.logits,
                None => {
                    stats.prefill = t_prefill.elapsed();
                    return Ok(self.cancelled_reply(stats, start));
                }
            }
        }
        stats.prefill = t_prefill.elapsed();

        // Decode.
        let tok = self.model.tokenizer().clone();
        let stop_ids = self.model.stop_ids().to_vec();
        let mut sampler = Sampler::new(gen.sampling.clone());
        let mut decoder = StreamDecoder::new(!gen.keep_special);
        let mut stops = StopMatcher::new(gen.stop.clone());
        // The text released so far (cut at a stop string).
        let mut emitted = String::new();
        let mut probs: Vec<TokenLogprob> = Vec::new();
        let mut generated: Vec<u32> = Vec::new();
        let t_decode = Instant::now();
        let before = self.session.stats.clone();
        // Passes a decoded piece through the stop strings; true when one was found.
        let mut release = |piece: &str, emitted: &mut String, on_event: &mut dyn FnMut(Event<'_>) -> Flow| {
            let out = stops.push(piece);
            let mut flow = Flow::Continue;
            if !out.is_empty() {
                emitted.push_str(&out);
                flow = on_event(Event::Token(&out));
            }
            (flow, stops.stopped())
        };
        let mut by_string = false;
        let finish = loop {
            if generated.len() >= gen.max_new_tokens {
                break FinishReason::Length;
            }
            // NaN or infinite weights propagate to the logits; sampling them would give a silent
            // stream of token 0 ("!!!!").
            let bad = logits.iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                return Err(EngineError::NonFiniteLogits {
                    count: bad,
                    n_vocab: logits.len(),
                    position: self.session.n_past(),
                });
            }
            // Log-probabilities come from the raw logits, so they are taken before the mask.
            let raw = match (gen.logprobs, &guide) {
                (Some(_), Some(_)) => Some(logits.clone()),
                _ => None,
            };
            if let Some(g) = guide.as_mut() {
                g.mask(&mut logits)?;
            }
            let id = sampler.sample(&logits, &generated);
            if generated.is_empty() {
                stats.time_to_first_token = start.elapsed();
            }
            if stop_ids.contains(&id) {
                break FinishReason::Stop;
            }
            let mut lp_flow = Flow::Continue;
            if let Some(n) = gen.logprobs {
                let lp = logprobs(raw.as_deref().unwrap_or(&logits), id, n);
                lp_flow = on_event(Event::Logprob(&lp));
                probs.push(lp);
            }
            if let Some(g) = guide.as_mut() {
                g.consume(id)?;
            }
            generated.push(id);
            let (mut flow, mut stopped) = (Flow::Continue, false);
            if let Some(piece) = decoder.push(&tok, id)? {
                (flow, stopped) = release(&piece, &mut emitted, &mut on_event);
            }
            if stopped {
                by_string = true;
                break FinishReason::Stop;
            }
            if flow == Flow::Stop || lp_flow == Flow::Stop || cancelled(gen) {
                break FinishReason::Cancelled;
            }
            // The grammar allows nothing but the end: no need to ask the model for it.
            if guide.as_ref().is_some_and(|g| g.is_finished()) {
                break FinishReason::Stop;
            }
            if generated.len() >= gen.max_new_tokens {
                break FinishReason::Length;
            }
            if self.session.n_past() >= self.session.n_ctx() {
                break FinishReason::ContextFull;
            }
            logits = self.session.decode(id)?;
            self.cached.push(Tag::Text(id));
        };
        if !by_string {
            if let Some(rest) = decoder.finish() {
                by_string = release(&rest, &mut emitted, &mut on_event).1;
            }
            if !by_string {
                let rest = stops.finish();
                if !rest.is_empty() {
                    emitted.push_str(&rest);
                    on_event(Event::Token(&rest));
                }
            }
        }
        let finish = if by_string { FinishReason::Stop } else { finish };
        let complete = guide.as_mut().map(|g| g.is_accepting() || g.is_finished());
        if let (Some(false), Some(c)) = (complete, &gen.constraint) {
            let msg = format!(
                "the answer is incomplete: generation ended ({}) before it matched the {}",
                finish.as_str(),
                c.kind()
            );
            on_event(Event::Notice(&msg));
        }
        stats.decode = t_decode.elapsed();
        stats.generated_tokens = generated.len();
        let after = &self.session.stats;
        stats.decode_forward = after.decode_time.saturating_sub(before.decode_time);
        stats.decode_outside_compute = after.decode_overhead.saturating_sub(before.decode_overhead);
        stats.decode_forwards = after.tokens_decoded - before.tokens_decoded;
        stats.decode_graphs_built = after.decode_graphs_built - before.decode_graphs_built;

        let (history, text) = if by_string {
            // Cut at the stop string: the history keeps what the caller got.
            let cut = clean_answer(&emitted).to_owned();
            (cut.clone(), cut)
        } else {
            let history = clean_answer(&tok.decode(&generated, true)?).to_owned();
            let text = if gen.keep_special {
                clean_answer(&tok.decode(&generated, false)?).to_owned()
            } else {
                history.clone()
            };
            (history, text)
        };
        if let Some(t) = self.turns.last_mut() {
            t.assistant = Some(history);
        }
        stats.total = start.elapsed();
        Ok(Reply {
            text,
            token_ids: generated,
            finish,
            stats,
            logprobs: probs,
            complete,
        })
    }

    fn cancelled_reply(&self, mut stats: TurnStats, start: Instant) -> Reply {
        stats.total = start.elapsed();
        Reply {
            text: String::new(),
            token_ids: Vec::new(),
            finish: FinishReason::Cancelled,
            stats,
            logprobs: Vec::new(),
            complete: None,
        }
    }

    /// Preprocesses and encodes one image in vision batches; `None` when cancelled.
    fn encode(
        &mut self,
        image: &Image,
        stats: &mut TurnStats,
        done: &mut usize,
        total: usize,
        gen: &GenerateParams,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Option<Arc<Vec<f32>>>> {
        let t = Instant::now();
        let tiles = image.preprocess(&self.model.normalization())?;
        stats.preprocess += t.elapsed();
        let per_tile = 3 * (tiles.image_size as usize).pow(2);
        let t = Instant::now();
        if gen.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
            stats.vision += t.elapsed();
            return Ok(None);
        }
        // The session encodes in graphs of `vision_batch` tiles; progress and cancellation between them.
        let n_tiles = tiles.data.len() / per_tile.max(1);
        let (before, mut last) = (*done, 0);
        let mut on_batch = |n: usize| {
            *done = before + n;
            stats.tiles_encoded += n - last;
            last = n;
            on_event(Event::Vision { done: *done, total }) != Flow::Stop
                && (n == n_tiles || !gen.cancel.as_ref().is_some_and(CancelFlag::is_cancelled))
        };
        let out = self.session.encode_tiles_with(&tiles.data, false, &mut on_batch)?;
        stats.vision += t.elapsed();
        Ok(out.map(|o| Arc::new(o.proj)))
    }
}

/// One tag per prompt token.
fn tags_of(prompt: &PromptIds, images: &[Image]) -> Vec<Tag> {
    let mut tags: Vec<Tag> = prompt.ids.iter().map(|&id| Tag::Text(id)).collect();
    for (span, image) in prompt.image_spans.iter().zip(images) {
        for (j, pos) in span.clone().enumerate() {
            if let Some(t) = tags.get_mut(pos) {
                *t = Tag::Image(image.key(), j as u32);
            }
        }
    }
    tags
}

/// Opening conversations: defined here rather than in `model.rs`, so that the model module does not
/// depend on this one.
impl Model {
    /// Opens a conversation (a KV cache of `params.session.n_ctx` tokens).
    pub fn chat(&self, params: ChatParams) -> Result<Chat> {
        Chat::new(self.clone(), params)
    }

    /// One question, one answer: opens a [`Chat`], asks `message` and generates, streaming every
    /// piece of text to `on_token`. Return [`Flow::Stop`] from it to stop early.
    pub fn generate(
        &self,
        params: ChatParams,
        message: Message,
        gen: &GenerateParams,
        mut on_token: impl FnMut(&str) -> Flow,
    ) -> Result<Reply> {
        let mut chat = self.chat(params)?;
        chat.ask(message)?;
        chat.generate(gen, |e| match e {
            Event::Token(t) => on_token(t),
            _ => Flow::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_rendering_follows_spec_5_3() {
        let t = TilingParams::default();
        let im = Image::from_rgb(::image::RgbImage::new(8, 8), &t).unwrap();
        assert_eq!(Message::text("hi").render().unwrap(), "hi");
        assert_eq!(
            Message::text("hi").with_image(im.clone()).render().unwrap(),
            "<image>\nhi"
        );
        assert_eq!(
            Message::text("hi")
                .with_images([im.clone(), im.clone()])
                .render()
                .unwrap(),
            "Image-1: <image>\nImage-2: <image>\nhi"
        );
        assert_eq!(
            Message::video("hi", vec![im.clone(), im.clone()]).render().unwrap(),
            "Frame1: <image>\nFrame2: <image>\nhi"
        );
        assert_eq!(
            Message::text("a <image> b").with_image(im.clone()).render().unwrap(),
            "a <image> b"
        );
        assert!(matches!(
            Message::text("a <image> <image>").with_image(im).render(),
            Err(EngineError::Placeholders {
                placeholders: 2,
                images: 1
            })
        ));
        assert!(matches!(
            Message::text("<image>").render(),
            Err(EngineError::Placeholders {
                placeholders: 1,
                images: 0
            })
        ));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a list of image spans that happens to hold one
    fn tags_mark_image_rows_by_content() {
        let t = TilingParams::default();
        let a = Image::from_rgb(::image::RgbImage::new(8, 8), &t).unwrap();
        let p = PromptIds {
            ids: vec![1, 9, 9, 2],
            image_spans: vec![1..3],
        };
        let tags = tags_of(&p, std::slice::from_ref(&a));
        assert_eq!(
            tags,
            vec![
                Tag::Text(1),
                Tag::Image(a.key(), 0),
                Tag::Image(a.key(), 1),
                Tag::Text(2)
            ]
        );
    }
}
