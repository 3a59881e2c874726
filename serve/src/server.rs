//! Routes and handlers: `POST /v1/chat/completions` (JSON or server-sent events), `GET /v1/models`,
//! `GET /v1/models/{id}`, `GET /health`. Handlers only parse, queue and relay: image decoding and
//! inference run on blocking threads.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, Semaphore};

use internvl::engine::{CancelFlag, GenerateParams, Image, ImageLayout, Message, TurnRecord, TurnStats};

use crate::api::{self, Request as ChatReq, RequestLimits};
use crate::error::ApiError;
use crate::images::{self, ImagePolicy};
use crate::limits::{self, BodyBudget, ConnLimits};
use crate::metrics::{Gauges, Metrics};
use crate::pool::Pool;
use crate::worker::{self, Job, Msg, Outcome};

/// What the handlers need to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name `/v1/models` lists and responses carry. Requests may name any model: this server
    /// has one.
    pub model_id: String,
    pub limits: RequestLimits,
    pub images: ImagePolicy,
    pub max_body_bytes: usize,
    /// Wall-clock limit of one request once it has a session.
    pub timeout: Duration,
    /// Keys a client may send (any one of them); empty: no authentication.
    pub api_keys: Vec<String>,
    /// One line per request on stderr.
    pub log_requests: bool,
    /// Connections, timeouts and body memory (see `limits`).
    pub conn: ConnLimits,
    /// `/metrics` without the API key.
    pub metrics_public: bool,
}

/// Counters shown by `/health`.
#[derive(Debug, Default)]
pub struct Counters {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub tiles_encoded: AtomicU64,
    pub tiles_cached: AtomicU64,
}

pub struct AppState {
    cfg: Config,
    pool: Arc<Pool>,
    /// Bounds the images decoded at once (each can take a large RGB buffer).
    decoders: Arc<Semaphore>,
    key_digests: Vec<[u8; 32]>,
    created: u64,
    counters: Counters,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    bodies: BodyBudget,
}

impl AppState {
    pub fn new(cfg: Config, pool: Arc<Pool>) -> Arc<AppState> {
        let key_digests = cfg
            .api_keys
            .iter()
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        let decoders = Arc::new(Semaphore::new(pool.sessions().max(2)));
        let bodies = BodyBudget::new(cfg.conn.max_buffered_body_bytes);
        Arc::new(AppState {
            cfg,
            pool,
            decoders,
            key_digests,
            created: unix_now(),
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
            metrics: Arc::new(Metrics::default()),
            bodies,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The application.
pub fn router(state: Arc<AppState>) -> Router {
    let mut v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_one));
    let mut open = Router::new().route("/health", get(health));
    if state.cfg.metrics_public {
        open = open.route("/metrics", get(metrics));
    } else {
        v1 = v1.route("/metrics", get(metrics));
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), auth));
    open.merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .with_state(state)
}

/// Counts every response by status for `/metrics`.
async fn count_status(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    st.metrics.response(resp.status().as_u16());
    resp
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st.metrics.render(&Gauges {
        sessions: st.pool.sessions(),
        sessions_busy: st.pool.busy(),
        queue_length: st.pool.waiting(),
        image_cache_images: st.pool.images().len(),
        image_cache_bytes: st.pool.images().bytes(),
        body_bytes_held: st.bodies.held(),
        rss_bytes: internvl::engine::mem::rss_bytes(),
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `--api-key`: SHA-256 digests compared in constant time (no timing hint about the key or its length).
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !st.key_digests.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        let Some(given) = given else {
            return ApiError::MissingKey.into_response();
        };
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // Every key is compared (no early exit): the time does not tell which key came close.
        let matched = st
            .key_digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| acc | digest.ct_eq(k));
        if !bool::from(matched) {
            return ApiError::WrongKey.into_response();
        }
    }
    next.run(req).await
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

fn model_object(st: &AppState) -> Value {
    json!({"id": st.cfg.model_id, "object": "model", "created": st.created, "owned_by": "internvl"})
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&st)]}))
}

async fn model_one(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.cfg.model_id {
        Json(model_object(&st)).into_response()
    } else {
        ApiError::NotFound {
            method: "GET".into(),
            path: format!("/v1/models/{id}"),
        }
        .into_response()
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    let c = &st.counters;
    Json(json!({
        "status": "ok",
        "model": st.cfg.model_id,
        "sessions": st.pool.sessions(),
        "busy": st.pool.busy(),
        "queued": st.pool.waiting(),
        "requests": {"completed": c.completed.load(Ordering::Relaxed), "failed": c.failed.load(Ordering::Relaxed)},
        "image_cache": {
            "images": st.pool.images().len(),
            "bytes": st.pool.images().bytes(),
            "tiles_encoded": c.tiles_encoded.load(Ordering::Relaxed),
            "tiles_cached": c.tiles_cached.load(Ordering::Relaxed),
        },
        "rss_bytes": internvl::engine::mem::rss_bytes(),
    }))
}

/// Sets the cancel flag when dropped: a handler future dropped (the client hung up) or a stream
/// dropped stops the generation it started.
struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let t0 = Instant::now();
    match complete(&st, body, t0).await {
        Ok(r) => r,
        Err(e) => {
            st.counters.failed.fetch_add(1, Ordering::Relaxed);
            if st.cfg.log_requests {
                eprintln!(
                    "POST /v1/chat/completions {} {:.0} ms: {e}",
                    e.status().as_u16(),
                    t0.elapsed().as_secs_f64() * 1e3
                );
            }
            e.into_response()
        }
    }
}

async fn complete(st: &Arc<AppState>, body: Body, t0: Instant) -> Result<Response, ApiError> {
    let (body, held) = limits::read_body(body, st.cfg.max_body_bytes, &st.cfg.conn, &st.bodies).await?;
    let req = api::parse(&body, &st.cfg.limits)?;
    drop(body);
    let turns = resolve_images(st, &req).await?;
    // The parsed request (base64 images included) is no longer needed in full.
    drop(held);
    let first_image = turns.iter().find_map(|t| t.images.first()).map(Image::key);

    let lease = st.pool.acquire(first_image).await?;
    let queued = t0.elapsed();
    let cancel = CancelFlag::new();
    let guard = CancelOnDrop(cancel.clone());
    let gen = GenerateParams {
        max_new_tokens: req.max_tokens,
        sampling: req.sampling.clone(),
        keep_special: false,
        cancel: Some(cancel),
        constraint: req.constraint.clone(),
        stop: req.stops.clone(),
        logprobs: req.logprobs,
    };
    let job = Job {
        system: req.system.clone(),
        turns,
        gen,
        deadline: Instant::now() + st.cfg.timeout,
        timeout: st.cfg.timeout,
        first_image,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || worker::run(lease, job, tx));

    let lost = || ApiError::Internal("the worker stopped without an answer".into());
    let first = rx.recv().await.ok_or_else(lost)?;
    if let Msg::Failed(e) = first {
        return Err(e);
    }
    let meta = Meta {
        id: format!(
            "chatcmpl-{:x}{:04x}",
            unix_now(),
            st.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_now(),
        queued,
        t0,
    };
    if req.stream {
        return Ok(stream_response(st.clone(), meta, first, rx, guard, req.include_usage));
    }
    let mut msg = first;
    loop {
        match msg {
            Msg::Started | Msg::Delta(..) => {}
            Msg::Done(out) => {
                st.record(&out, &meta);
                let body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": st.cfg.model_id,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": out.text, "boxes": out.boxes},
                        "logprobs": out.logprobs,
                        "finish_reason": out.finish,
                    }],
                    "usage": usage(&out.stats),
                    "internvl": details(&out, &meta),
                });
                drop(guard);
                return Ok(Json(body).into_response());
            }
            Msg::Failed(e) => return Err(e),
        }
        msg = rx.recv().await.ok_or_else(lost)?;
    }
}

/// Decodes every image of the request on a blocking thread and renders the turns (spec §5.3:
/// `<image>\n` before the question, `Image-k:` labels for several).
async fn resolve_images(st: &Arc<AppState>, req: &ChatReq) -> Result<Vec<TurnRecord>, ApiError> {
    let _permit = if req.n_images() > 0 {
        Some(
            st.decoders
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ApiError::Internal("decoder pool closed".into()))?,
        )
    } else {
        None
    };
    let turns = req.turns.clone();
    let policy = st.cfg.images.clone();
    let work = move || -> Result<Vec<TurnRecord>, ApiError> {
        turns
            .into_iter()
            .map(|t| {
                let images = t
                    .images
                    .iter()
                    .map(|r| images::resolve(r, &policy))
                    .collect::<Result<Vec<Image>, _>>()?;
                let msg = Message {
                    text: t.text,
                    images,
                    layout: ImageLayout::Separate,
                };
                let user = msg.render().map_err(|e| ApiError::invalid("messages", e.to_string()))?;
                Ok(TurnRecord {
                    user,
                    images: msg.images,
                    video: false,
                    assistant: t.assistant,
                })
            })
            .collect()
    };
    if req.n_images() == 0 {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("image decoding failed: {e}")))?
}

/// Identity and timing of one completion.
struct Meta {
    id: String,
    created: u64,
    /// Parsing, image decoding and waiting for a session.
    queued: Duration,
    t0: Instant,
}

impl AppState {
    fn record(&self, out: &Outcome, meta: &Meta) {
        let c = &self.counters;
        c.completed.fetch_add(1, Ordering::Relaxed);
        self.metrics.completion(&out.stats);
        c.tiles_encoded
            .fetch_add(out.stats.tiles_encoded as u64, Ordering::Relaxed);
        c.tiles_cached
            .fetch_add(out.stats.tiles_cached as u64, Ordering::Relaxed);
        if self.cfg.log_requests {
            eprintln!(
                "POST /v1/chat/completions 200 {:.0} ms: session {}, {} prompt tokens ({} reused), {} generated, finish {}",
                meta.t0.elapsed().as_secs_f64() * 1e3,
                out.session,
                out.stats.prompt_tokens,
                out.stats.reused_tokens,
                out.stats.generated_tokens,
                out.finish
            );
        }
    }
}

fn usage(s: &TurnStats) -> Value {
    json!({"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens, "total_tokens": s.prompt_tokens + s.generated_tokens})
}

/// Non-standard details (clients ignore unknown fields): where the time went and what was reused.
fn details(out: &Outcome, meta: &Meta) -> Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1e3 * 10.0).round() / 10.0;
    let s = &out.stats;
    json!({
        "session": out.session,
        "queue_ms": ms(meta.queued),
        "reused_tokens": s.reused_tokens,
        "prefilled_tokens": s.prefilled_tokens,
        "images": s.images,
        "tiles": s.tiles,
        "tiles_encoded": s.tiles_encoded,
        "tiles_cached": s.tiles_cached,
        "vision_ms": ms(s.vision),
        "prefill_ms": ms(s.prefill),
        "time_to_first_token_ms": ms(s.time_to_first_token),
        "decode_ms": ms(s.decode),
        "total_ms": ms(meta.t0.elapsed()),
    })
}

/// The SSE response: a role chunk, content chunks, a chunk with the finish reason, an optional usage
/// chunk, then `[DONE]`. An error after the first chunk arrives as `data: {"error": ...}`.
fn stream_response(
    st: Arc<AppState>,
    meta: Meta,
    first: Msg,
    rx: mpsc::UnboundedReceiver<Msg>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> Response {
    struct S {
        st: Arc<AppState>,
        meta: Meta,
        rx: mpsc::UnboundedReceiver<Msg>,
        out: VecDeque<SseEvent>,
        first: Option<Msg>,
        done: bool,
        include_usage: bool,
        _guard: CancelOnDrop,
    }
    impl S {
        fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
            json!({
                "id": self.meta.id,
                "object": "chat.completion.chunk",
                "created": self.meta.created,
                "model": self.st.cfg.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        }
        fn push(&mut self, v: Value) {
            self.out.push_back(SseEvent::default().data(v.to_string()));
        }
        fn handle(&mut self, msg: Msg) {
            match msg {
                Msg::Started => {
                    let c = self.chunk(json!({"role": "assistant", "content": ""}), None);
                    self.push(c);
                }
                Msg::Delta(text, logprobs) => {
                    let mut c = self.chunk(json!({"content": text}), None);
                    if !logprobs.is_empty() {
                        c["choices"][0]["logprobs"] = json!({"content": logprobs, "refusal": null});
                    }
                    self.push(c);
                }
                Msg::Done(out) => {
                    self.st.record(&out, &self.meta);
                    let mut c = self.chunk(json!({"boxes": out.boxes}), Some(out.finish));
                    c["internvl"] = details(&out, &self.meta);
                    self.push(c);
                    if self.include_usage {
                        let mut u = self.chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage(&out.stats);
                        self.push(u);
                    }
                    self.out.push_back(SseEvent::default().data("[DONE]"));
                    self.done = true;
                }
                Msg::Failed(e) => {
                    self.st.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.push(e.body());
                    self.done = true;
                }
            }
        }
    }
    let state = S {
        st,
        meta,
        rx,
        out: VecDeque::new(),
        first: Some(first),
        done: false,
        include_usage,
        _guard: guard,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.out.pop_front() {
                return Some((Ok::<_, Infallible>(ev), s));
            }
            if s.done {
                return None;
            }
            let msg = match s.first.take() {
                Some(m) => Some(m),
                None => s.rx.recv().await,
            };
            match msg {
                Some(m) => s.handle(m),
                None => s.handle(Msg::Failed(ApiError::Internal(
                    "the worker stopped without an answer".into(),
                ))),
            }
        }
    });
    sse(events)
}

fn sse<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(events: S) -> Response {
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
