//! `Model`, `Session`, `Reply` and the streaming iterator.
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use internvl::engine::{
    self, hf, CancelFlag, Chat, ChatParams, EngineError, Event, Flow, GenerateParams, KvType, LoadParams, Message,
    SamplingParams, SessionParams, TilingParams,
};
use internvl::model::{Device, WeightLayout};
use internvl::prompt::grounding;
use internvl::structured::Constraint;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::errors::{to_py, InternVLError};
use crate::images::{to_image, Channels};

/// How often a waiting stream iterator wakes up to check for signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Locks a conversation; a panic while it was held cannot leave it half-updated in a way the engine does not
/// already handle (each turn rebuilds its prompt from the history), so a poisoned lock is taken over.
fn lock(m: &Mutex<Chat>) -> MutexGuard<'_, Chat> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What each new session gets unless `Model.session()` says otherwise.
#[derive(Clone)]
struct SessionDefaults {
    n_ctx: usize,
    threads: usize,
    kv_type: KvType,
    batch_size: usize,
    max_tiles: Option<u32>,
    system: Option<String>,
}

/// A loaded model (weights memory-mapped, tokenizer, prompt settings). Thread-safe: share one `Model` between
/// threads and give each thread its own `Session`.
#[pyclass(frozen, module = "internvl")]
pub struct Model {
    model: engine::Model,
    defaults: SessionDefaults,
}

/// Arguments common to `Model(...)` and `Model.from_hf(...)`.
struct LoadArgs {
    threads: Option<usize>,
    device: String,
    weights: String,
    n_ctx: usize,
    kv_type: String,
    batch_size: usize,
    max_tiles: Option<u32>,
    mmproj: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    system: Option<String>,
}

fn load(py: Python<'_>, path: PathBuf, a: LoadArgs) -> PyResult<Model> {
    let device = Device::parse(&a.device).ok_or_else(|| {
        PyValueError::new_err(format!("device={:?}: expected \"auto\", \"cpu\" or \"cuda\"", a.device))
    })?;
    let weights = WeightLayout::parse(&a.weights).ok_or_else(|| {
        PyValueError::new_err(format!(
            "weights={:?}: expected \"repacked\", \"mapped\", \"f32-vision\", \"int8-vision\" or \"int8\"",
            a.weights
        ))
    })?;
    let kv_type = parse_kv(&a.kv_type)?;
    if a.threads == Some(0) || a.n_ctx == 0 || a.batch_size == 0 {
        return Err(PyValueError::new_err(
            "threads, n_ctx and batch_size must be at least 1",
        ));
    }
    let params = LoadParams {
        mmproj: a.mmproj,
        tokenizer_dir: a.tokenizer,
        weight_layout: weights,
        // The best of our kernels for this CPU (`--kernels auto`); not a Python argument (yet).
        kernels: internvl::kernels::Kernels::Auto,
    };
    let model = py
        .detach(|| engine::Model::load_on(&path, &params, device))
        .map_err(to_py)?;
    Ok(Model {
        model,
        defaults: SessionDefaults {
            n_ctx: a.n_ctx,
            threads: a.threads.unwrap_or_else(internvl::session::physical_cores).max(1),
            kv_type,
            batch_size: a.batch_size,
            max_tiles: a.max_tiles,
            system: a.system,
        },
    })
}

fn parse_kv(s: &str) -> PyResult<KvType> {
    KvType::parse(s).ok_or_else(|| PyValueError::new_err(format!("kv_type={s:?}: expected f32, f16, q8_0 or q4_0")))
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, threads=None, device="auto", weights="repacked", n_ctx=4096, kv_type="f16",
        batch_size=512, max_tiles=None, mmproj=None, tokenizer=None, system=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        threads: Option<usize>,
        device: &str,
        weights: &str,
        n_ctx: usize,
        kv_type: &str,
        batch_size: usize,
        max_tiles: Option<u32>,
        mmproj: Option<PathBuf>,
        tokenizer: Option<PathBuf>,
        system: Option<String>,
    ) -> PyResult<Model> {
        let a = LoadArgs {
            threads,
            device: device.into(),
            weights: weights.into(),
            n_ctx,
            kv_type: kv_type.into(),
            batch_size,
            max_tiles,
            mmproj,
            tokenizer,
            system,
        };
        load(py, path, a)
    }

    /// A checkpoint from the local Hugging Face cache, converted once to a cached GGUF by `internvl-convert`
    /// (found on PATH); downloaded first when missing unless HF_HUB_OFFLINE=1.
    #[staticmethod]
    #[pyo3(signature = (repo, r#type="q8_0", threads=None, device="auto", weights="repacked", n_ctx=4096,
        kv_type="f16", batch_size=512, max_tiles=None, system=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_hf(
        py: Python<'_>,
        repo: &str,
        r#type: &str,
        threads: Option<usize>,
        device: &str,
        weights: &str,
        n_ctx: usize,
        kv_type: &str,
        batch_size: usize,
        max_tiles: Option<u32>,
        system: Option<String>,
    ) -> PyResult<Model> {
        // `resolve` looks for the converter beside an executable, then on PATH; the interpreter's own
        // directory (a venv's bin/) is the natural "beside" for a Python user.
        let exe = std::env::current_exe().unwrap_or_default();
        let notices = Mutex::new(Vec::new());
        let path = py
            .detach(|| {
                hf::resolve(repo, r#type, &exe, &mut |m| {
                    if let Ok(mut n) = notices.lock() {
                        n.push(m.to_owned())
                    }
                })
            })
            .map_err(|e| to_py(EngineError::from(e)))?;
        let warn = py.import("warnings")?;
        for n in notices.into_inner().unwrap_or_default() {
            let _ = warn.call_method1("warn", (n,));
        }
        let a = LoadArgs {
            threads,
            device: device.into(),
            weights: weights.into(),
            n_ctx,
            kv_type: kv_type.into(),
            batch_size,
            max_tiles,
            mmproj: None,
            tokenizer: None,
            system,
        };
        load(py, path, a)
    }

    /// A new conversation with its own KV cache. Unset arguments take the model's defaults.
    #[pyo3(signature = (n_ctx=None, threads=None, kv_type=None, max_tiles=None, system=None, truncate_history=false,
        mem_budget=0))]
    #[allow(clippy::too_many_arguments)]
    fn session(
        &self,
        py: Python<'_>,
        n_ctx: Option<usize>,
        threads: Option<usize>,
        kv_type: Option<&str>,
        max_tiles: Option<u32>,
        system: Option<String>,
        truncate_history: bool,
        mem_budget: u64,
    ) -> PyResult<Session> {
        let params = self.chat_params(n_ctx, threads, kv_type, max_tiles, system, truncate_history, mem_budget)?;
        let model = self.model.clone();
        let chat = py.detach(|| model.chat(params)).map_err(to_py)?;
        Ok(Session {
            tiling: chat.tiling(),
            chat: Arc::new(Mutex::new(chat)),
        })
    }

    /// One question in a fresh conversation (see `Session.chat` for the arguments).
    #[pyo3(signature = (prompt, images=None, *, max_tokens=1024, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
        repetition_penalty=1.0, seed=0, stream=false, stop=None, channels="rgb", grounding=false, json_schema=None, regex=None,
        grammar=None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        prompt: String,
        images: Option<&Bound<'_, PyAny>>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stream: bool,
        stop: Option<Vec<String>>,
        channels: &str,
        grounding: bool,
        json_schema: Option<&Bound<'_, PyAny>>,
        regex: Option<String>,
        grammar: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.session(py, None, None, None, None, None, false, 0)?;
        s.chat(
            py,
            prompt,
            images,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stream,
            stop,
            channels,
            grounding,
            json_schema,
            regex,
            grammar,
        )
    }

    /// Bytes of weights (memory-mapped, or held in the repacked layouts).
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// CPU threads each new session uses by default.
    #[getter]
    fn threads(&self) -> usize {
        self.defaults.threads
    }

    /// The system message new sessions get.
    #[getter]
    fn system(&self) -> String {
        self.defaults
            .system
            .clone()
            .unwrap_or_else(|| self.model.default_system().to_owned())
    }

    fn __repr__(&self) -> String {
        format!(
            "<internvl.Model: {:.1} MB of weights, {} threads per session>",
            self.model.weight_bytes() as f64 / 1e6,
            self.defaults.threads
        )
    }
}

impl Model {
    #[allow(clippy::too_many_arguments)]
    fn chat_params(
        &self,
        n_ctx: Option<usize>,
        threads: Option<usize>,
        kv_type: Option<&str>,
        max_tiles: Option<u32>,
        system: Option<String>,
        truncate_history: bool,
        mem_budget: u64,
    ) -> PyResult<ChatParams> {
        let d = &self.defaults;
        let n_ctx = n_ctx.unwrap_or(d.n_ctx);
        let threads = threads.unwrap_or(d.threads);
        if n_ctx == 0 || threads == 0 {
            return Err(PyValueError::new_err("n_ctx and threads must be at least 1"));
        }
        let kv_type = match kv_type {
            Some(k) => parse_kv(k)?,
            None => d.kv_type,
        };
        let mut tiling = self.model.tiling();
        if let Some(m) = max_tiles.or(d.max_tiles) {
            tiling.max_tiles = m;
            tiling.min_tiles = tiling.min_tiles.min(m.max(1));
            tiling
                .validate()
                .map_err(|e| PyValueError::new_err(format!("max_tiles={m}: {e}")))?;
        }
        Ok(ChatParams {
            session: SessionParams {
                n_ctx,
                kv_type,
                n_threads: threads,
                n_batch: d.batch_size,
                ..SessionParams::default()
            },
            system: system.or_else(|| d.system.clone()),
            tiling: Some(tiling),
            truncate_history,
            mem_budget,
            ..ChatParams::default()
        })
    }
}

/// A conversation over one KV cache: each turn evaluates only what differs from the cache (the history and
/// its images are not computed again). One generation at a time; usable from any thread.
#[pyclass(frozen, module = "internvl")]
pub struct Session {
    chat: Arc<Mutex<Chat>>,
    tiling: TilingParams,
}

#[pymethods]
impl Session {
    /// Asks `prompt` about `images` and generates the answer. Returns a `Reply`, or with `stream=True` a
    /// `Stream` iterating over pieces of text (its `.result` holds the `Reply` once exhausted).
    #[pyo3(signature = (prompt, images=None, *, max_tokens=1024, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
        repetition_penalty=1.0, seed=0, stream=false, stop=None, channels="rgb", grounding=false, json_schema=None, regex=None,
        grammar=None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        prompt: String,
        images: Option<&Bound<'_, PyAny>>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stream: bool,
        stop: Option<Vec<String>>,
        channels: &str,
        grounding: bool,
        json_schema: Option<&Bound<'_, PyAny>>,
        regex: Option<String>,
        grammar: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let constraint = constraint_arg(json_schema, regex, grammar)?;
        let channels = Channels::parse(channels)?;
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "temperature={temperature}: must be >= 0"
            )));
        }
        let mut message = Message::text(prompt);
        if let Some(images) = images {
            if images.is_instance_of::<PyList>() || images.is_instance_of::<pyo3::types::PyTuple>() {
                for (i, im) in images.try_iter()?.enumerate() {
                    message.images.push(to_image(&im?, i, channels, &self.tiling)?);
                }
            } else {
                // A single image is accepted as well as a list of one.
                message.images.push(to_image(images, 0, channels, &self.tiling)?);
            }
        }
        let cancel = CancelFlag::new();
        let gen = GenerateParams {
            max_new_tokens: max_tokens,
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                seed,
            },
            keep_special: grounding,
            cancel: Some(cancel.clone()),
            constraint,
            stop: stop.unwrap_or_default(),
            logprobs: None,
        };
        if stream {
            return Ok(Stream::start(self.chat.clone(), message, gen, cancel, true)
                .into_pyobject(py)?
                .into_any()
                .unbind());
        }
        // Generation runs on a worker thread while this one waits without the GIL and checks for signals every
        // SIGNAL_POLL: Ctrl-C is seen even while no text is produced (a vision batch, a prefill chunk, tokens
        // that are not yet complete UTF-8).
        let st = Stream::start(self.chat.clone(), message, gen, cancel, false);
        let reply = loop {
            match st.next_msg(py)? {
                Some(StreamMsg::Piece(_)) => {}
                Some(StreamMsg::Done(r)) => break (*r).map_err(to_py)?,
                None => return Err(InternVLError::new_err("the generating thread ended without a result")),
            }
        };
        Ok(Reply::from_engine(py, reply)?.into_pyobject(py)?.into_any().unbind())
    }

    /// Forgets the conversation. The KV cache and image embeddings stay, so a new conversation that starts
    /// the same way (system message, same first image) reuses them.
    fn reset(&self, py: Python<'_>) {
        let chat = self.chat.clone();
        py.detach(|| lock(&chat).reset());
    }

    /// Forgets the KV cache and the image embeddings too.
    fn clear_caches(&self, py: Python<'_>) {
        let chat = self.chat.clone();
        py.detach(|| lock(&chat).clear_caches());
    }

    /// The conversation so far: (question as rendered, with `<image>` placeholders; answer) pairs.
    #[getter]
    fn history(&self, py: Python<'_>) -> Vec<(String, Option<String>)> {
        let chat = self.chat.clone();
        py.detach(|| {
            lock(&chat)
                .turns()
                .iter()
                .map(|t| (t.user.clone(), t.assistant.clone()))
                .collect()
        })
    }

    /// Tokens held in the KV cache.
    #[getter]
    fn n_past(&self, py: Python<'_>) -> usize {
        let chat = self.chat.clone();
        py.detach(|| lock(&chat).n_past())
    }

    /// Size of the KV cache in tokens.
    #[getter]
    fn n_ctx(&self, py: Python<'_>) -> usize {
        let chat = self.chat.clone();
        py.detach(|| lock(&chat).n_ctx())
    }
}

/// One turn: drops a question left open by an interrupted prefill (so the session stays usable after
/// Ctrl-C), asks, generates; `on_piece` gets each piece of text and may stop generation.
fn run_turn(
    chat: &mut Chat,
    message: Message,
    gen: &GenerateParams,
    mut on_piece: impl FnMut(&str) -> Flow,
) -> engine::Result<engine::Reply> {
    if chat.turns().last().is_some_and(|t| t.assistant.is_none()) {
        let mut turns = chat.turns().to_vec();
        turns.pop();
        chat.set_turns(turns)?;
    }
    chat.send(message, gen, |e| match e {
        Event::Token(t) => on_piece(t),
        _ => Flow::Continue,
    })
}

/// What the generating thread sends to a `Stream`.
enum StreamMsg {
    Piece(String),
    Done(Box<engine::Result<engine::Reply>>),
}

/// An iterator over the pieces of an answer as they are generated (`Session.chat(..., stream=True)`).
/// Generation runs on a background thread; iterating waits for the next piece without holding the GIL.
/// Its `result` is the `Reply` once the iterator is exhausted. Breaking out of the loop, `close()` or
/// dropping the iterator stops generation.
#[pyclass(module = "internvl")]
pub struct Stream {
    rx: Mutex<Receiver<StreamMsg>>,
    cancel: CancelFlag,
    result: Option<engine::Reply>,
    finished: bool,
}

impl Stream {
    /// Starts generating on a worker thread; `pieces`: send the text pieces (else only the result).
    fn start(
        chat: Arc<Mutex<Chat>>,
        message: Message,
        gen: GenerateParams,
        cancel: CancelFlag,
        pieces: bool,
    ) -> Stream {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut chat = lock(&chat);
            let piece_tx = tx.clone();
            let r = run_turn(&mut chat, message, &gen, |piece| {
                let sent = if pieces {
                    piece_tx.send(StreamMsg::Piece(piece.to_owned()))
                } else {
                    Ok(())
                };
                match sent {
                    Ok(()) => Flow::Continue,
                    // The iterator is gone: nobody reads the rest.
                    Err(_) => Flow::Stop,
                }
            });
            let _ = tx.send(StreamMsg::Done(Box::new(r)));
        });
        Stream {
            rx: Mutex::new(rx),
            cancel,
            result: None,
            finished: false,
        }
    }

    /// The next message, waiting without the GIL; `None` when the worker is gone. A signal handler that raises
    /// (Ctrl-C) cancels generation, waits until the worker has stopped (the session is free again), and
    /// returns the exception.
    fn next_msg(&self, py: Python<'_>) -> PyResult<Option<StreamMsg>> {
        loop {
            let msg = py.detach(|| match self.rx.lock() {
                Ok(rx) => rx.recv_timeout(SIGNAL_POLL),
                Err(_) => Err(RecvTimeoutError::Disconnected),
            });
            match msg {
                Ok(m) => return Ok(Some(m)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.cancel.cancel();
                        py.detach(|| {
                            if let Ok(rx) = self.rx.lock() {
                                while let Ok(m) = rx.recv() {
                                    if matches!(m, StreamMsg::Done(_)) {
                                        break;
                                    }
                                }
                            }
                        });
                        return Err(e);
                    }
                }
            }
        }
    }
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(mut slf: PyRefMut<'_, Self>, py: Python<'_>) -> PyResult<Option<String>> {
        if slf.finished {
            return Ok(None);
        }
        match slf.next_msg(py) {
            Ok(Some(StreamMsg::Piece(p))) => Ok(Some(p)),
            Ok(Some(StreamMsg::Done(r))) => {
                slf.finished = true;
                slf.result = Some((*r).map_err(to_py)?);
                Ok(None)
            }
            Ok(None) => {
                slf.finished = true;
                Err(InternVLError::new_err("the generating thread ended without a result"))
            }
            Err(e) => {
                slf.finished = true;
                Err(e)
            }
        }
    }

    /// The `Reply` (text, counts, timings) once the iterator is exhausted; `None` before.
    #[getter]
    fn result(&self, py: Python<'_>) -> PyResult<Option<Reply>> {
        self.result.clone().map(|r| Reply::from_engine(py, r)).transpose()
    }

    /// Stops generation (the session keeps what was generated so far).
    fn close(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.cancel();
        }
    }
}

/// Seconds spent in each stage of a turn.
#[pyclass(frozen, get_all, module = "internvl")]
#[derive(Clone)]
pub struct Timings {
    /// Decoding and tiling the images.
    preprocess: f64,
    /// The vision encoder.
    vision: f64,
    /// Prompt evaluation.
    prefill: f64,
    /// From the start of the turn to the first sampled token.
    time_to_first_token: f64,
    /// Generating the answer.
    decode: f64,
    total: f64,
}

#[pymethods]
impl Timings {
    fn __repr__(&self) -> String {
        format!(
            "Timings(preprocess={:.4}, vision={:.4}, prefill={:.4}, time_to_first_token={:.4}, decode={:.4}, total={:.4})",
            self.preprocess, self.vision, self.prefill, self.time_to_first_token, self.decode, self.total
        )
    }
}

/// A box of a grounded answer (`<ref>label</ref><box>[[x1, y1, x2, y2]]</box>`), in coordinates normalized to
/// 0..1000 of the image.
#[pyclass(frozen, get_all, module = "internvl")]
#[derive(Clone)]
pub struct GroundingBox {
    label: Option<String>,
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
}

#[pymethods]
impl GroundingBox {
    /// The box in pixels of an image of `width` x `height`: (x1, y1, x2, y2).
    fn to_pixels(&self, width: u32, height: u32) -> (f32, f32, f32, f32) {
        let b = grounding::GroundedBox {
            label: None,
            x1: self.x1,
            y1: self.y1,
            x2: self.x2,
            y2: self.y2,
        }
        .to_pixels(width, height);
        (b.x1, b.y1, b.x2, b.y2)
    }

    fn __repr__(&self) -> String {
        format!(
            "GroundingBox(label={:?}, x1={}, y1={}, x2={}, y2={})",
            self.label, self.x1, self.y1, self.x2, self.y2
        )
    }
}

/// The answer of one turn with its token counts and timings.
#[pyclass(frozen, get_all, module = "internvl")]
pub struct Reply {
    /// The answer, cleaned as the reference's chat() does.
    text: String,
    /// "stop" (end of turn), "length" (max_tokens), "context_full" or "cancelled".
    finish_reason: String,
    token_ids: Vec<u32>,
    /// Grounding boxes found in the answer (use grounding=True to keep their labels).
    boxes: Vec<GroundingBox>,
    /// Tokens of the whole prompt (history included).
    prompt_tokens: usize,
    /// Of which image tokens.
    image_tokens: usize,
    /// Prompt tokens evaluated in this turn.
    prefilled_tokens: usize,
    /// Prompt tokens reused from the KV cache.
    reused_tokens: usize,
    generated_tokens: usize,
    /// Tiles run through the vision encoder in this turn, and taken from the image cache.
    tiles_encoded: usize,
    tiles_cached: usize,
    /// Oldest turns dropped to fit the context (truncate_history=True).
    dropped_turns: usize,
    timings: Timings,
}

impl Reply {
    fn from_engine(_py: Python<'_>, r: engine::Reply) -> PyResult<Reply> {
        let mut boxes = grounding::parse(&r.text);
        if boxes.is_empty() {
            boxes = grounding::parse_bare(&r.text);
        }
        let s = &r.stats;
        Ok(Reply {
            finish_reason: r.finish.as_str().to_owned(),
            boxes: boxes
                .into_iter()
                .map(|b| GroundingBox {
                    label: b.label,
                    x1: b.x1,
                    y1: b.y1,
                    x2: b.x2,
                    y2: b.y2,
                })
                .collect(),
            prompt_tokens: s.prompt_tokens,
            image_tokens: s.image_tokens,
            prefilled_tokens: s.prefilled_tokens,
            reused_tokens: s.reused_tokens,
            generated_tokens: s.generated_tokens,
            tiles_encoded: s.tiles_encoded,
            tiles_cached: s.tiles_cached,
            dropped_turns: s.dropped_turns,
            timings: Timings {
                preprocess: s.preprocess.as_secs_f64(),
                vision: s.vision.as_secs_f64(),
                prefill: s.prefill.as_secs_f64(),
                time_to_first_token: s.time_to_first_token.as_secs_f64(),
                decode: s.decode.as_secs_f64(),
                total: s.total.as_secs_f64(),
            },
            token_ids: r.token_ids,
            text: r.text,
        })
    }
}

#[pymethods]
impl Reply {
    /// Generated tokens per second of decoding (0 when nothing was generated).
    #[getter]
    fn tokens_per_second(&self) -> f64 {
        if self.timings.decode > 0.0 && self.generated_tokens > 0 {
            self.generated_tokens as f64 / self.timings.decode
        } else {
            0.0
        }
    }

    fn __str__(&self) -> String {
        self.text.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Reply(text={:?}, finish_reason={:?}, prompt_tokens={}, generated_tokens={})",
            self.text, self.finish_reason, self.prompt_tokens, self.generated_tokens
        )
    }
}

/// The structured-output arguments as the engine's constraint: at most one of them. `json_schema` is a
/// dict (or any JSON-serializable object) or a JSON string; `{"type": "object"}` asks for any JSON object.
fn constraint_arg(
    json_schema: Option<&Bound<'_, PyAny>>,
    regex: Option<String>,
    grammar: Option<String>,
) -> PyResult<Option<Constraint>> {
    let given = [json_schema.is_some(), regex.is_some(), grammar.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(PyValueError::new_err(
            "json_schema, regex and grammar exclude each other: give at most one",
        ));
    }
    if let Some(schema) = json_schema {
        let text: String = match schema.extract::<String>() {
            Ok(text) => text,
            Err(_) => schema
                .py()
                .import("json")?
                .call_method1("dumps", (schema,))?
                .extract()?,
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| PyValueError::new_err(format!("json_schema is not valid JSON: {e}")))?;
        return Ok(Some(Constraint::JsonSchema(value)));
    }
    Ok(regex.map(Constraint::Regex).or(grammar.map(Constraint::Grammar)))
}
