//! The C ABI: `include/internvl.h` is generated from this file by cbindgen (`cbindgen.toml`) and
//! committed; `tests/capi.rs` fails when it is stale. Guide: docs/c-api.md.
//!
//! Rules every exported function follows (after rustls-ffi):
//! - opaque handles (`ivl_model`, `ivl_session`) with `_new`/`_load` and `_free` pairs;
//! - a status code ([`ivl_status`]) is returned and outputs are written only on success; the message
//!   of the last failure on the calling thread is read with [`ivl_last_error`];
//! - every pointer is checked for NULL, every size and enum value is validated before anything
//!   reaches ggml (a failed ggml assert aborts the process);
//! - the body runs under `catch_unwind`: a Rust panic becomes `IVL_STATUS_INTERNAL`, never an
//!   unwind across the C boundary. A session that saw one refuses further work (free it).
//!
//! Enumerations the caller passes in (pixel format, device, KV type) are plain integers with
//! `#define`d values, so that an out-of-range value is an error and not undefined behaviour.
//!
//! Threads: an `ivl_model` is immutable after loading and may be used by any number of threads at
//! once (each creating its own sessions); an `ivl_session` must be used by one thread at a time
//! (it may move between threads). See docs/c-api.md.
//!
//! Its `unsafe` is the raw pointers from C. The crate's other `unsafe` is in the ggml bindings (`ggml`),
//! the GGUF file mapping (`gguf`) and our CPU kernels with their ggml custom-op glue (`kernels`), each block
//! with a `// SAFETY:` line.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::engine::{
    CancelFlag, ChatParams, EngineError, Event, FinishReason, Flow, GenerateParams, Image, KvType, LoadParams, Message,
    Model, SamplingParams, SessionParams,
};
use crate::image::{Limits, PixelFormat, RawImage};
use crate::kernels::Kernels;
use crate::model::{Device, ModelError, WeightLayout};
use crate::prompt::{clean_answer, grounding};

// ---------------------------------------------------------------------------------------------
// Status codes and enumerations
// ---------------------------------------------------------------------------------------------

/// What a function returns. `IVL_STATUS_OK` is 0; on any other value nothing was written to the
/// outputs and `ivl_last_error()` says what went wrong.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ivl_status {
    IVL_STATUS_OK = 0,
    /// A NULL pointer, a zero or inconsistent size, an unknown enum value, text that is not UTF-8,
    /// a parameter out of range.
    IVL_STATUS_INVALID_ARGUMENT = 1,
    /// A file could not be opened or read.
    IVL_STATUS_IO = 2,
    /// The file is not a usable model (not GGUF, corrupt, truncated, missing tensors or keys).
    IVL_STATUS_INVALID_MODEL = 3,
    /// The image cannot be decoded (unknown format, corrupt, too many pixels).
    IVL_STATUS_INVALID_IMAGE = 4,
    /// The prompt does not fit the session's context.
    IVL_STATUS_CONTEXT_FULL = 5,
    /// Wrong call order: generate without a prompt, a prompt while a question is unanswered.
    IVL_STATUS_BAD_STATE = 6,
    /// The requested device is not available (a GPU in a CPU-only build) or failed.
    IVL_STATUS_DEVICE = 7,
    /// ggml failed: allocation, graph computation.
    IVL_STATUS_COMPUTE = 8,
    /// A bug in the library (a caught panic). The session involved is unusable; free it.
    IVL_STATUS_INTERNAL = 9,
    /// Over the session's memory budget (`ivl_session_params.mem_budget`): the KV cache and prefill
    /// buffer at `ivl_session_new`, an image's tiles at `ivl_session_generate`. Refused before
    /// allocating; the message gives the numbers.
    IVL_STATUS_BUDGET = 10,
}

use ivl_status::*;

/// Why a generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ivl_finish_reason {
    /// The model produced a stop token.
    IVL_FINISH_STOP = 0,
    /// `max_new_tokens` were generated.
    IVL_FINISH_LENGTH = 1,
    /// The context is full.
    IVL_FINISH_CONTEXT_FULL = 2,
    /// The token callback returned non-zero.
    IVL_FINISH_CANCELLED = 3,
}

/// Layout of the pixels given to `ivl_session_add_image_rgb` (one of `IVL_PIXEL_FORMAT_*`).
pub type ivl_pixel_format = u32;
/// 3 bytes per pixel: R, G, B.
pub const IVL_PIXEL_FORMAT_RGB: ivl_pixel_format = 0;
/// 3 bytes per pixel: B, G, R (OpenCV's default).
pub const IVL_PIXEL_FORMAT_BGR: ivl_pixel_format = 1;
/// 4 bytes per pixel: R, G, B, A (alpha ignored).
pub const IVL_PIXEL_FORMAT_RGBA: ivl_pixel_format = 2;
/// 4 bytes per pixel: B, G, R, A (alpha ignored).
pub const IVL_PIXEL_FORMAT_BGRA: ivl_pixel_format = 3;

/// Where the weights live and the graphs run (one of `IVL_DEVICE_*`).
pub type ivl_device = u32;
/// The GPU when the library was built with one and a device is found, else the CPU.
pub const IVL_DEVICE_AUTO: ivl_device = 0;
pub const IVL_DEVICE_CPU: ivl_device = 1;
/// A GPU; `ivl_model_load` fails with `IVL_STATUS_DEVICE` when there is none.
pub const IVL_DEVICE_GPU: ivl_device = 2;

/// How CPU weights are held (one of `IVL_WEIGHTS_*`).
pub type ivl_weight_layout = u32;
/// The fastest kernels this CPU has: with AVX-512 VNNI or AVX2 (and the `kernels` choice's say), q4_0 and
/// q8_0 matrices rearranged at load for our own kernels (the same bytes; faster decoding, prefill and image
/// encoding); otherwise ggml's interleaved layouts where its CPU kernels have them (q4_0 on ARM dot-product
/// CPUs). A copy at load; the
/// file's pages are released.
pub const IVL_WEIGHTS_REPACKED: ivl_weight_layout = 0;
/// Every weight used in place from the memory-mapped file: no copy, the fastest load.
pub const IVL_WEIGHTS_MAPPED: ivl_weight_layout = 1;
/// `IVL_WEIGHTS_REPACKED`, and the vision tower's matrices converted to f32 at load: faster image encoding
/// on CPUs without native f16/bf16 arithmetic, for more memory (+600 MB over an f16 file).
pub const IVL_WEIGHTS_F32_VISION: ivl_weight_layout = 2;
/// `IVL_WEIGHTS_REPACKED`, and the vision tower's matrices quantized to int8 (a scale per 128 inputs) at load
/// for an AVX-512 VNNI kernel: the fastest image encoding from f16/f32 files on CPUs with VNNI (elsewhere a
/// slow portable kernel runs), with about q8_0's accuracy. (q4_0 and q8_0 matrices are not requantized.)
pub const IVL_WEIGHTS_INT8_VISION: ivl_weight_layout = 3;
/// `IVL_WEIGHTS_INT8_VISION`, and int8 copies of the language model's f16/f32 matrices for prefill (batches
/// of 16 tokens or more): 2-3x faster prefill on CPUs with VNNI, for ~380 MB more memory; decoding keeps
/// the file's weights. (q4_0 and q8_0 matrices are not requantized: they use the rearranged layout.)
pub const IVL_WEIGHTS_INT8: ivl_weight_layout = 4;

/// Storage type of the KV cache (one of `IVL_KV_*`).
pub type ivl_kv_type = u32;
pub const IVL_KV_F16: ivl_kv_type = 0;
/// Exact, twice the memory of f16.
pub const IVL_KV_F32: ivl_kv_type = 1;
pub const IVL_KV_Q8_0: ivl_kv_type = 2;
pub const IVL_KV_Q4_0: ivl_kv_type = 3;

// ---------------------------------------------------------------------------------------------
// Parameter and result structs
// ---------------------------------------------------------------------------------------------

/// How to load a model. Start from `ivl_model_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ivl_model_params {
    /// `sizeof(ivl_model_params)` as the app was compiled (set by `ivl_model_default_params()`); the
    /// library reads only that many bytes (docs/c-api.md, "How the ABI grows").
    pub struct_size: usize,
    /// CPU threads of the sessions of this model that do not set their own; 0: the number of
    /// physical cores. At most 512.
    pub n_threads: u32,
    /// One of `IVL_DEVICE_*`.
    pub device: ivl_device,
    /// The vision GGUF of a llama.cpp pair (text GGUF + mmproj); NULL for a single-file GGUF.
    pub mmproj_path: *const c_char,
    /// A directory with vocab.json, merges.txt, added_tokens.json and tokenizer_config.json for a
    /// GGUF without a tokenizer (llama.cpp's); NULL: the file's own tokenizer.
    pub tokenizer_dir: *const c_char,
    /// One of `IVL_WEIGHTS_*`: how CPU weights are held (ignored on a GPU).
    pub weight_layout: ivl_weight_layout,
    /// Which kernels run on the CPU, by the name `--kernels` takes: "auto" (the best of ours this CPU
    /// runs), "avx512-vnni", "avx2", "avx-vnni", "avx-vnni-evex", "portable" (ours without SIMD, slow) or
    /// "ggml" (none of ours); NULL: "auto". A set this CPU lacks is `IVL_STATUS_INVALID_ARGUMENT`. (Appended
    /// after the first layout.)
    pub kernels: *const c_char,
}

/// How to open a session. Start from `ivl_session_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ivl_session_params {
    /// `sizeof(ivl_session_params)` as the app was compiled (set by `ivl_session_default_params()`).
    pub struct_size: usize,
    /// Context size in tokens (the KV cache is sized to it). An image tile takes 256 tokens.
    pub n_ctx: u32,
    /// One of `IVL_KV_*`.
    pub kv_type: ivl_kv_type,
    /// CPU threads; 0: the model's `n_threads`. At most 512.
    pub n_threads: u32,
    /// Prompt tokens evaluated per graph (at least 1).
    pub n_batch: u32,
    /// Largest number of tiles an image is cut into (1..=40); 0: the model's (12 for
    /// InternVL2-1B). 1 is the fastest (one 448×448 tile per frame).
    pub max_tiles: u32,
    /// The system message; NULL: the model's.
    pub system_prompt: *const c_char,
    /// Memory budget of the session in bytes; 0 (the default): no limit. The KV cache and the
    /// prefill compute buffer must fit when the session opens, and each turn's new images (pixels,
    /// vision compute, embeddings) must fit with what the session holds, else `IVL_STATUS_BUDGET`
    /// before anything is allocated. Weights are memory-mapped and not counted.
    pub mem_budget: u64,
}

/// How to generate. Start from `ivl_generate_default_params()` (greedy, as Hugging Face `chat()`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ivl_generate_params {
    /// `sizeof(ivl_generate_params)` as the app was compiled (set by `ivl_generate_default_params()`).
    pub struct_size: usize,
    /// At most this many new tokens (at least 1).
    pub max_new_tokens: u32,
    /// 0: greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: u32,
    /// In (0, 1]; 1 disables.
    pub top_p: f32,
    /// In [0, 1]; 0 disables.
    pub min_p: f32,
    /// > 0; 1 disables.
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Keep special tokens (the grounding tags `<ref>`, `<box>`) in the streamed pieces and the
    /// reply text. Boxes are found either way.
    pub keep_special: bool,
    // ---- Fields after this line are the second layout (structured answers); an app compiled with the
    // first one gets their defaults.
    /// The answer must match this JSON Schema (NUL-terminated JSON text); NULL: none. At most one of
    /// `json_schema`, `json_object`, `regex` and `grammar` is set. A constraint that does not compile
    /// fails the call with `IVL_STATUS_INVALID_ARGUMENT` before anything is evaluated.
    pub json_schema: *const c_char,
    /// The answer must be a JSON object.
    pub json_object: bool,
    /// The whole answer must match this regular expression; NULL: none.
    pub regex: *const c_char,
    /// The answer must match this Lark-like grammar (llguidance's dialect); NULL: none.
    pub grammar: *const c_char,
    /// `n_stop` NUL-terminated stop strings: the answer ends before the first one (not part of it).
    pub stop: *const *const c_char,
    pub n_stop: usize,
    /// Called with each answer token's log-probability (and the `top_logprobs` most likely tokens at
    /// that step), before its text reaches the token callback; NULL: none.
    pub logprob_callback: ivl_logprob_callback,
    /// 0..=20 alternatives per token given to `logprob_callback`.
    pub top_logprobs: u32,
}

/// One answer token's log-probability, given to `ivl_logprob_callback`: the log-softmax of the model's
/// raw logits (before the repetition penalty, temperature, top-k/p, min-p and the grammar mask, as
/// OpenAI and vLLM report them). The pointers are valid only during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ivl_logprob {
    pub token_id: u32,
    pub logprob: f32,
    /// The token's bytes (`token_len`, NUL-terminated; a piece of a UTF-8 character possibly).
    pub token: *const c_char,
    pub token_len: usize,
    /// The `n_top` most likely tokens at this step, most likely first: ids and log-probabilities.
    pub top_ids: *const u32,
    pub top_logprobs: *const f32,
    pub n_top: usize,
}

/// Called once per answer token with its log-probabilities (see `ivl_logprob`) and the `user_data` of
/// `ivl_session_generate`. Return 0 to continue, non-zero to stop (`IVL_FINISH_CANCELLED`). It must not
/// unwind.
pub type ivl_logprob_callback = Option<unsafe extern "C" fn(lp: *const ivl_logprob, user_data: *mut c_void) -> i32>;

/// The result of `ivl_session_generate`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ivl_reply {
    /// The whole answer, UTF-8, NUL-terminated; owned by the session and valid until the next
    /// `ivl_session_generate`, `ivl_session_reset` or `ivl_session_free` on it.
    pub text: *const c_char,
    /// Bytes of `text` without the terminating NUL.
    pub text_len: usize,
    pub finish: ivl_finish_reason,
    /// Tokens of the whole prompt (history included), of which image tokens.
    pub prompt_tokens: u32,
    pub image_tokens: u32,
    /// Prompt tokens found in the KV cache (not evaluated again).
    pub reused_tokens: u32,
    pub generated_tokens: u32,
    /// Tiles run through the vision encoder in this turn.
    pub tiles_encoded: u32,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
}

/// A grounding box of the last answer (spec §9: `<ref>label</ref><box>[[x1, y1, x2, y2]]</box>`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ivl_box {
    /// The `<ref>` phrase, NUL-terminated; NULL when the box has none. Owned by the session, valid
    /// as long as the reply's text.
    pub label: *const c_char,
    /// Corners normalized to 0..1000 of the image, as the model writes them.
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    /// The same corners in pixels of the first image of the answered question; all 0 when the
    /// question had no image.
    pub px1: f32,
    pub py1: f32,
    pub px2: f32,
    pub py2: f32,
}

/// Called with each piece of the answer as it is generated: `len` bytes of UTF-8 (complete
/// characters) at `piece`, followed by a NUL. The piece is valid only during the call. Return 0 to
/// continue, non-zero to stop (the reply then ends with `IVL_FINISH_CANCELLED`). It runs on the
/// thread that called `ivl_session_generate` and must not unwind (no C++ exception may leave it).
pub type ivl_token_callback =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user_data: *mut c_void) -> i32>;

// ---------------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------------

/// A loaded model (opaque). Immutable: share it between threads freely.
#[derive(Clone)]
pub struct ivl_model {
    model: Model,
    n_threads: usize,
}

/// A conversation over one KV cache (opaque). One thread at a time.
pub struct ivl_session {
    chat: crate::engine::Chat,
    /// Images added since the last prompt; the next prompt shows them.
    pending: Vec<Image>,
    /// The last reply's text with a terminating NUL.
    reply_text: Vec<u8>,
    boxes: Vec<ivl_box>,
    /// Owners of the `label` pointers in `boxes`.
    labels: Vec<CString>,
    /// Set when a call panicked: the Rust state may be half-updated.
    poisoned: bool,
    /// `ivl_session_set_progress_callback`: the callback and its user data (an address).
    progress: Option<(ProgressFn, usize)>,
}

// ---------------------------------------------------------------------------------------------
// Errors, last error, the panic boundary
// ---------------------------------------------------------------------------------------------

/// A failed call: the status and the message for `ivl_last_error`.
struct Failure {
    status: ivl_status,
    message: String,
}

impl Failure {
    fn arg(message: impl Into<String>) -> Self {
        Failure {
            status: IVL_STATUS_INVALID_ARGUMENT,
            message: message.into(),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure {
            status: status_of(&e),
            message: e.to_string(),
        }
    }
}

impl From<crate::image::Error> for Failure {
    fn from(e: crate::image::Error) -> Self {
        EngineError::Image(e).into()
    }
}

fn status_of_model(e: &ModelError) -> ivl_status {
    use crate::ggml::GgmlError;
    use crate::gguf::GgufError;
    match e {
        ModelError::Gguf {
            source: GgufError::Io { .. },
            ..
        } => IVL_STATUS_IO,
        ModelError::Input(_) => IVL_STATUS_INVALID_ARGUMENT,
        ModelError::Ggml(GgmlError::Backend(_)) => IVL_STATUS_DEVICE,
        ModelError::Ggml(_) => IVL_STATUS_COMPUTE,
        _ => IVL_STATUS_INVALID_MODEL,
    }
}

fn status_of(e: &EngineError) -> ivl_status {
    use crate::image::Error as ImageError;
    match e {
        EngineError::Model(m) => status_of_model(m),
        EngineError::Tokenizer(_) | EngineError::NoTokenizer { .. } => IVL_STATUS_INVALID_MODEL,
        EngineError::Image(ImageError::Io { .. }) | EngineError::Io { .. } => IVL_STATUS_IO,
        EngineError::Image(
            ImageError::ZeroSize { .. }
            | ImageError::RawStride { .. }
            | ImageError::RawBufferTooShort { .. }
            | ImageError::MaxTilesOutOfRange { .. }
            | ImageError::MinTilesOutOfRange { .. },
        ) => IVL_STATUS_INVALID_ARGUMENT,
        EngineError::Image(_) => IVL_STATUS_INVALID_IMAGE,
        EngineError::ContextOverflow { .. } => IVL_STATUS_CONTEXT_FULL,
        EngineError::NoQuestion | EngineError::Unanswered => IVL_STATUS_BAD_STATE,
        EngineError::Placeholders { .. } | EngineError::Param(_) | EngineError::Prompt(_) => {
            IVL_STATUS_INVALID_ARGUMENT
        }
        EngineError::Budget(_) => IVL_STATUS_BUDGET,
        EngineError::NonFiniteLogits { .. } => IVL_STATUS_COMPUTE,
        EngineError::Constraint(_) => IVL_STATUS_INVALID_ARGUMENT,
        _ => IVL_STATUS_INTERNAL,
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // An interior NUL would make CString::new fail; such bytes cannot come from our messages
    // except through user text, so replace them.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// The boundary every status-returning function goes through: runs `body` under `catch_unwind`,
/// turns failures into a status and a thread-local message prefixed with the function's name.
fn guard(name: &str, body: impl FnOnce() -> Result<(), Failure>) -> ivl_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => IVL_STATUS_OK,
        Ok(Err(f)) => {
            set_last_error(format!("{name}: {}", f.message));
            f.status
        }
        Err(payload) => {
            set_last_error(format!(
                "{name}: internal error (a bug, please report it): {}",
                panic_message(payload.as_ref())
            ));
            IVL_STATUS_INTERNAL
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Live handles: double frees, stale handles, re-entrant and concurrent use of a session
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandleKind {
    Model,
    Session,
}

#[derive(Debug, Clone)]
struct Live {
    kind: HandleKind,
    /// A call is running on this session (set for the call's duration).
    busy: bool,
    /// Sessions: set by `ivl_session_cancel` (from any thread) while a call runs; cleared when the
    /// call ends. Kept here, not in the session, so that cancelling never touches a session that
    /// another thread is using.
    cancel: Option<CancelFlag>,
}

/// Addresses of the handles returned and not yet freed. Every call that takes a handle looks it up
/// before touching it, so a freed or foreign pointer is refused (`IVL_STATUS_BAD_STATE`) instead of
/// being dereferenced. Limit: once freed, an address may be handed out again by the allocator for a
/// new handle of the same kind; a stale pointer to it then reaches the new object (undetectable).
static LIVE: Mutex<BTreeMap<usize, Live>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, Live>> {
    // The map stays consistent even if a holder panicked (no code under the lock panics).
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register(addr: usize, kind: HandleKind) {
    let cancel = (kind == HandleKind::Session).then(CancelFlag::new);
    live().insert(
        addr,
        Live {
            kind,
            busy: false,
            cancel,
        },
    );
}

fn not_live(kind: HandleKind, addr: usize) -> Failure {
    let (what, from) = match kind {
        HandleKind::Model => ("model", "ivl_model_load"),
        HandleKind::Session => ("session", "ivl_session_new"),
    };
    Failure {
        status: IVL_STATUS_BAD_STATE,
        message: format!("{what} {addr:#x} is not a live handle (freed already, or not from {from})"),
    }
}

fn busy_failure() -> Failure {
    Failure {
        status: IVL_STATUS_BAD_STATE,
        message: "the session is in use by another call (called from its own token callback, or from two threads at \
                  once)"
            .into(),
    }
}

/// A session marked busy for the duration of one call; unmarked on drop.
struct SessionLease {
    addr: usize,
}

impl SessionLease {
    /// Looks `session` up and marks it busy.
    fn acquire(session: *mut ivl_session) -> Result<SessionLease, Failure> {
        if session.is_null() {
            return Err(Failure::arg("session is NULL"));
        }
        let addr = session as usize;
        let mut map = live();
        match map.get_mut(&addr) {
            Some(l) if l.kind == HandleKind::Session => {
                if l.busy {
                    return Err(busy_failure());
                }
                l.busy = true;
                Ok(SessionLease { addr })
            }
            _ => Err(not_live(HandleKind::Session, addr)),
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if let Some(l) = live().get_mut(&self.addr) {
            l.busy = false;
            // A cancel aimed at this call must not stop the next one.
            if let Some(c) = &l.cancel {
                c.reset();
            }
        }
    }
}

/// Like [`guard`] for a session: refuses NULL, a handle that is not live, a session already in a
/// call and a poisoned session, and poisons it when `body` panics (its state may be half-updated).
/// `session` may be any pointer value: it is dereferenced only once found in the live set.
fn guard_session(
    name: &str,
    session: *mut ivl_session,
    body: impl FnOnce(&mut ivl_session) -> Result<(), Failure>,
) -> ivl_status {
    let lease = match SessionLease::acquire(session) {
        Ok(l) => l,
        Err(f) => return guard(name, || Err(f)),
    };
    // SAFETY: the address is a live session (registered by ivl_session_new, not yet freed) and marked
    // busy, so no other call of this library holds a reference to it until the lease is dropped.
    let s = unsafe { &mut *session };
    if s.poisoned {
        return guard(name, || {
            Err(Failure {
                status: IVL_STATUS_INTERNAL,
                message: "the session failed internally earlier; free it".into(),
            })
        });
    }
    let status = guard(name, || body(&mut *s));
    if status == IVL_STATUS_INTERNAL {
        s.poisoned = true;
    }
    drop(lease);
    status
}

/// Removes a handle from the live set for freeing: `Ok(false)` for NULL (nothing to do).
fn unregister(addr: usize, kind: HandleKind) -> Result<bool, Failure> {
    if addr == 0 {
        return Ok(false);
    }
    let mut map = live();
    match map.get(&addr) {
        Some(l) if l.kind == kind => {
            if l.busy {
                return Err(busy_failure());
            }
            map.remove(&addr);
            Ok(true)
        }
        _ => Err(not_live(kind, addr)),
    }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn utf8_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::arg(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|e| Failure::arg(format!("{what} is not UTF-8 ({e})")))
}

/// A C string argument as a path (any bytes on Unix, UTF-8 elsewhere).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf, Failure> {
    if p.is_null() {
        return Err(Failure::arg(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    if c.to_bytes().is_empty() {
        return Err(Failure::arg(format!("{what} is empty")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        c.to_str()
            .map(PathBuf::from)
            .map_err(|e| Failure::arg(format!("{what} is not UTF-8 ({e})")))
    }
}

/// An optional C string path: NULL is `None`.
///
/// # Safety
/// As [`path_arg`].
unsafe fn opt_path_arg(p: *const c_char, what: &str) -> Result<Option<PathBuf>, Failure> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { path_arg(p, what) }.map(Some)
    }
}

/// Writes an output through a checked pointer (only called once everything succeeded).
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-NULL and writable by the caller's contract; `write` does not drop the old
        // (possibly uninitialized) value.
        unsafe { out.write(value) };
    }
}

const MAX_THREADS: u32 = 512;

fn threads_arg(n: u32, what: &str) -> Result<u32, Failure> {
    if n > MAX_THREADS {
        return Err(Failure::arg(format!("{what} is {n}, at most {MAX_THREADS}")));
    }
    Ok(n)
}

fn device_arg(d: ivl_device) -> Result<Device, Failure> {
    match d {
        IVL_DEVICE_AUTO => Ok(Device::Auto),
        IVL_DEVICE_CPU => Ok(Device::Cpu),
        IVL_DEVICE_GPU => Ok(Device::Gpu),
        _ => Err(Failure::arg(format!(
            "device {d} is not one of IVL_DEVICE_AUTO (0), IVL_DEVICE_CPU (1), IVL_DEVICE_GPU (2)"
        ))),
    }
}

fn kv_arg(k: ivl_kv_type) -> Result<KvType, Failure> {
    match k {
        IVL_KV_F16 => Ok(KvType::F16),
        IVL_KV_F32 => Ok(KvType::F32),
        IVL_KV_Q8_0 => Ok(KvType::Q8_0),
        IVL_KV_Q4_0 => Ok(KvType::Q4_0),
        _ => Err(Failure::arg(format!(
            "kv_type {k} is not one of IVL_KV_F16 (0), IVL_KV_F32 (1), IVL_KV_Q8_0 (2), IVL_KV_Q4_0 (3)"
        ))),
    }
}

fn pixel_format_arg(f: ivl_pixel_format) -> Result<PixelFormat, Failure> {
    match f {
        IVL_PIXEL_FORMAT_RGB => Ok(PixelFormat::Rgb8),
        IVL_PIXEL_FORMAT_BGR => Ok(PixelFormat::Bgr8),
        IVL_PIXEL_FORMAT_RGBA => Ok(PixelFormat::Rgba8),
        IVL_PIXEL_FORMAT_BGRA => Ok(PixelFormat::Bgra8),
        _ => Err(Failure::arg(format!(
            "pixel format {f} is not one of IVL_PIXEL_FORMAT_RGB (0), _BGR (1), _RGBA (2), _BGRA (3)"
        ))),
    }
}

fn sampling_arg(p: &ivl_generate_params) -> Result<GenerateParams, Failure> {
    let bad = |what: &str, v: f32, range: &str| Failure::arg(format!("{what} is {v}, must be {range}"));
    if p.max_new_tokens == 0 {
        return Err(Failure::arg("max_new_tokens is 0, must be at least 1"));
    }
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return Err(bad("temperature", p.temperature, ">= 0"));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(bad("top_p", p.top_p, "in (0, 1]"));
    }
    if !(p.min_p >= 0.0 && p.min_p <= 1.0) {
        return Err(bad("min_p", p.min_p, "in [0, 1]"));
    }
    if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
        return Err(bad("repetition_penalty", p.repetition_penalty, "> 0"));
    }
    Ok(GenerateParams {
        max_new_tokens: p.max_new_tokens as usize,
        sampling: SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
        },
        keep_special: p.keep_special,
        cancel: None,
        ..GenerateParams::default()
    })
}

/// The first versioned layouts (the smallest `struct_size` accepted): everything up to the end of the
/// fields each struct had then. `ivl_generate_params` grew since (structured answers).
const MODEL_PARAMS_V1: usize = std::mem::offset_of!(ivl_model_params, kernels);
const SESSION_PARAMS_V1: usize = std::mem::size_of::<ivl_session_params>();
const GENERATE_PARAMS_V1: usize = std::mem::offset_of!(ivl_generate_params, json_schema);

/// A parameter struct from the app, by the growth rule (docs/c-api.md): NULL gives `defaults`; a
/// `struct_size` below the first layout `v1` is refused; `min(struct_size, sizeof(T))` bytes are copied
/// over `defaults`; bytes past `sizeof(T)` (a newer app's fields) must be zero, since this library
/// cannot honour them.
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` readable bytes whose first field is `struct_size`.
unsafe fn versioned<T: Copy>(p: *const T, defaults: T, v1: usize, name: &str) -> Result<T, Failure> {
    if p.is_null() {
        return Ok(defaults);
    }
    // SAFETY: non-NULL; every versioned struct starts with its size (contract).
    let size = unsafe { std::ptr::read_unaligned(p.cast::<usize>()) };
    if size < v1 {
        return Err(Failure::arg(format!(
            "{name}.struct_size is {size}, smaller than the first layout ({v1} bytes): start from the \
             library's default params"
        )));
    }
    let ours = std::mem::size_of::<T>();
    if size > ours {
        // SAFETY: the app's struct is `size` bytes long (contract).
        let extra = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(ours), size - ours) };
        if extra.iter().any(|&b| b != 0) {
            return Err(Failure::arg(format!(
                "{name} is {size} bytes with fields set past the {ours} this library knows: it is older \
                 than the app's header"
            )));
        }
    }
    let mut out = defaults;
    // SAFETY: both are at least min(size, ours) bytes; T is plain data (integers, floats, pointers,
    // bools the app set from the same header), so any bytes copied from an initialized struct are valid.
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), size.min(ours));
    }
    Ok(out)
}

/// The constraint and stop strings of `p`.
///
/// # Safety
/// The string fields of `p` are NULL or NUL-terminated; `stop` is NULL or points to `n_stop` such
/// pointers.
unsafe fn structured_arg(p: &ivl_generate_params, gen: &mut GenerateParams) -> Result<(), Failure> {
    use crate::structured::Constraint;
    let mut set = Vec::new();
    if !p.json_schema.is_null() {
        // SAFETY: NUL-terminated (contract).
        let text = unsafe { utf8_arg(p.json_schema, "json_schema") }?;
        let v = serde_json::from_str(text).map_err(|e| Failure::arg(format!("json_schema is not JSON: {e}")))?;
        set.push(Constraint::JsonSchema(v));
    }
    if p.json_object {
        set.push(Constraint::JsonObject);
    }
    if !p.regex.is_null() {
        // SAFETY: as above.
        set.push(Constraint::Regex(unsafe { utf8_arg(p.regex, "regex") }?.to_owned()));
    }
    if !p.grammar.is_null() {
        // SAFETY: as above.
        set.push(Constraint::Grammar(
            unsafe { utf8_arg(p.grammar, "grammar") }?.to_owned(),
        ));
    }
    if set.len() > 1 {
        return Err(Failure::arg(
            "set at most one of json_schema, json_object, regex and grammar",
        ));
    }
    gen.constraint = set.pop();
    if p.n_stop > 0 {
        if p.stop.is_null() {
            return Err(Failure::arg(format!("stop is NULL with n_stop {}", p.n_stop)));
        }
        if p.n_stop > 64 {
            return Err(Failure::arg(format!("n_stop is {}, at most 64", p.n_stop)));
        }
        // SAFETY: `stop` points to `n_stop` pointers (contract).
        let stops = unsafe { std::slice::from_raw_parts(p.stop, p.n_stop) };
        for (i, &s) in stops.iter().enumerate() {
            // SAFETY: each is NULL (refused) or NUL-terminated (contract).
            gen.stop.push(unsafe { utf8_arg(s, &format!("stop[{i}]")) }?.to_owned());
        }
    }
    if p.top_logprobs > 20 {
        return Err(Failure::arg(format!("top_logprobs is {}, at most 20", p.top_logprobs)));
    }
    if p.logprob_callback.is_some() {
        gen.logprobs = Some(p.top_logprobs as usize);
    }
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Library
// ---------------------------------------------------------------------------------------------

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn ivl_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" if none failed yet). Valid until the
/// next failing call on this thread; successful calls leave it unchanged.
#[no_mangle]
pub extern "C" fn ivl_last_error() -> *const c_char {
    // `try_with` fails only while the thread is being torn down: return a static empty string then.
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

/// A static name for a status code ("IVL_STATUS_OK", ...; "IVL_STATUS_UNKNOWN" for other values).
#[no_mangle]
pub extern "C" fn ivl_status_name(status: i32) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"IVL_STATUS_OK",
        1 => c"IVL_STATUS_INVALID_ARGUMENT",
        2 => c"IVL_STATUS_IO",
        3 => c"IVL_STATUS_INVALID_MODEL",
        4 => c"IVL_STATUS_INVALID_IMAGE",
        5 => c"IVL_STATUS_CONTEXT_FULL",
        6 => c"IVL_STATUS_BAD_STATE",
        7 => c"IVL_STATUS_DEVICE",
        8 => c"IVL_STATUS_COMPUTE",
        9 => c"IVL_STATUS_INTERNAL",
        10 => c"IVL_STATUS_BUDGET",
        _ => c"IVL_STATUS_UNKNOWN",
    };
    name.as_ptr()
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// Default model parameters: all cores, `IVL_DEVICE_AUTO`, single-file GGUF with its tokenizer.
#[no_mangle]
pub extern "C" fn ivl_model_default_params() -> ivl_model_params {
    ivl_model_params {
        struct_size: std::mem::size_of::<ivl_model_params>(),
        n_threads: 0,
        device: IVL_DEVICE_AUTO,
        mmproj_path: std::ptr::null(),
        tokenizer_dir: std::ptr::null(),
        weight_layout: IVL_WEIGHTS_REPACKED,
        kernels: std::ptr::null(),
    }
}

/// Loads a GGUF model (every key and tensor is checked first). `params` may be NULL (defaults).
/// On success `*out_model` receives a handle to free with `ivl_model_free`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `params` is NULL or points to an initialized
/// `ivl_model_params` whose string fields are NULL or NUL-terminated; `out_model` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ivl_model_load(
    path: *const c_char,
    params: *const ivl_model_params,
    out_model: *mut *mut ivl_model,
) -> ivl_status {
    guard("ivl_model_load", || {
        if out_model.is_null() {
            return Err(Failure::arg("out_model is NULL"));
        }
        // SAFETY: contract above.
        let path = unsafe { path_arg(path, "path") }?;
        // SAFETY: params is NULL or points to an initialized struct of its `struct_size` (contract).
        let p = unsafe { versioned(params, ivl_model_default_params(), MODEL_PARAMS_V1, "ivl_model_params") }?;
        let n_threads = threads_arg(p.n_threads, "n_threads")?;
        let device = device_arg(p.device)?;
        // SAFETY: the string fields are NULL or NUL-terminated (contract).
        let mmproj = unsafe { opt_path_arg(p.mmproj_path, "mmproj_path") }?;
        // SAFETY: as above.
        let tokenizer_dir = unsafe { opt_path_arg(p.tokenizer_dir, "tokenizer_dir") }?;
        let weight_layout = match p.weight_layout {
            IVL_WEIGHTS_REPACKED => WeightLayout::Repacked,
            IVL_WEIGHTS_MAPPED => WeightLayout::Mapped,
            IVL_WEIGHTS_F32_VISION => WeightLayout::F32Vision,
            IVL_WEIGHTS_INT8_VISION => WeightLayout::Int8Vision,
            IVL_WEIGHTS_INT8 => WeightLayout::Int8,
            w => {
                return Err(Failure::arg(format!(
                    "weight_layout {w} is not one of IVL_WEIGHTS_REPACKED (0), IVL_WEIGHTS_MAPPED (1), \
                     IVL_WEIGHTS_F32_VISION (2), IVL_WEIGHTS_INT8_VISION (3), IVL_WEIGHTS_INT8 (4)"
                )))
            }
        };
        let kernels = if p.kernels.is_null() {
            Kernels::Auto
        } else {
            // SAFETY: as above.
            let name = unsafe { utf8_arg(p.kernels, "kernels") }?;
            let kernels = name.parse::<Kernels>().map_err(|e| Failure::arg(e.to_string()))?;
            // Checked here so that an instruction set this CPU lacks is an argument error.
            kernels.resolve().map_err(|e| Failure::arg(e.to_string()))?;
            kernels
        };
        let lp = LoadParams {
            mmproj,
            tokenizer_dir,
            weight_layout,
            kernels,
        };
        let model = Model::load_on(&path, &lp, device)?;
        let n_threads = if n_threads == 0 {
            crate::session::physical_cores()
        } else {
            n_threads as usize
        };
        let handle = Box::into_raw(Box::new(ivl_model { model, n_threads }));
        register(handle as usize, HandleKind::Model);
        // SAFETY: out_model is non-NULL (checked) and writable (contract).
        unsafe { write_out(out_model, handle) };
        Ok(())
    })
}

/// Frees a model. NULL is ignored (`IVL_STATUS_OK`). Sessions opened on it hold a reference to the
/// weights and keep them alive until they are freed, so the order of frees does not matter. A handle
/// that is not live (freed already, or not from `ivl_model_load`) is refused with
/// `IVL_STATUS_BAD_STATE` and left alone, as is any later use of the freed handle; see
/// docs/c-api.md for the limit of this check (a freed address may be reused by a later load).
///
/// # Safety
/// `model` is NULL or any pointer value: it is only dereferenced when it is a live model handle.
#[no_mangle]
pub unsafe extern "C" fn ivl_model_free(model: *mut ivl_model) -> ivl_status {
    guard("ivl_model_free", || {
        if !unregister(model as usize, HandleKind::Model)? {
            return Ok(());
        }
        // SAFETY: a live handle from Box::into_raw in ivl_model_load, removed from the live set under
        // its lock just now, so this is the only free.
        let boxed = unsafe { Box::from_raw(model) };
        // Dropping releases Arcs (the weights stay while sessions hold them).
        drop(boxed);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------------

/// Default session parameters: 4096 tokens of f16 KV cache, the model's threads, batches of 512,
/// the model's tiling and system message, no memory budget (`mem_budget` 0: what a session holds
/// is already bounded by `n_ctx`, `n_batch` and `max_tiles`; set a budget to refuse inputs beyond
/// what a device can spare).
#[no_mangle]
pub extern "C" fn ivl_session_default_params() -> ivl_session_params {
    let d = SessionParams::default();
    ivl_session_params {
        struct_size: std::mem::size_of::<ivl_session_params>(),
        n_ctx: saturating_u32(d.n_ctx),
        kv_type: IVL_KV_F16,
        n_threads: 0,
        n_batch: saturating_u32(d.n_batch),
        max_tiles: 0,
        system_prompt: std::ptr::null(),
        mem_budget: 0,
    }
}

/// Opens a session (a conversation with its own KV cache) on a model. `params` may be NULL.
/// Several sessions, on several threads, may share one model.
///
/// # Safety
/// `model` is NULL or a live model handle; `params` is NULL or points to an initialized
/// `ivl_session_params` whose `system_prompt` is NULL or NUL-terminated; `out_session` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_new(
    model: *const ivl_model,
    params: *const ivl_session_params,
    out_session: *mut *mut ivl_session,
) -> ivl_status {
    guard("ivl_session_new", || {
        if out_session.is_null() {
            return Err(Failure::arg("out_session is NULL"));
        }
        if model.is_null() {
            return Err(Failure::arg("model is NULL"));
        }
        // The model is cloned (two Arcs) under the live-set lock, so that a concurrent
        // ivl_model_free cannot drop it in between; the session then holds its own reference.
        let m = {
            let map = live();
            match map.get(&(model as usize)) {
                // SAFETY: a live model handle (registered, not freed: freeing takes the same lock).
                Some(l) if l.kind == HandleKind::Model => unsafe { (*model).clone() },
                _ => return Err(not_live(HandleKind::Model, model as usize)),
            }
        };
        // SAFETY: params is NULL or points to an initialized struct of its `struct_size` (contract).
        let p = unsafe {
            versioned(
                params,
                ivl_session_default_params(),
                SESSION_PARAMS_V1,
                "ivl_session_params",
            )
        }?;
        let hp = m.model.hparams();
        if p.n_ctx == 0 || p.n_ctx as usize > hp.llm.n_ctx_train {
            return Err(Failure::arg(format!(
                "n_ctx is {}, must be in 1..={}",
                p.n_ctx, hp.llm.n_ctx_train
            )));
        }
        if p.n_batch == 0 {
            return Err(Failure::arg("n_batch is 0, must be at least 1"));
        }
        let n_threads = match threads_arg(p.n_threads, "n_threads")? {
            0 => m.n_threads,
            n => n as usize,
        };
        let tiling = match p.max_tiles {
            0 => None,
            n => {
                let t = crate::image::TilingParams {
                    max_tiles: n,
                    min_tiles: 1,
                    ..m.model.tiling()
                };
                t.validate()?;
                Some(t)
            }
        };
        let system = if p.system_prompt.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated (contract).
            Some(unsafe { utf8_arg(p.system_prompt, "system_prompt") }?.to_owned())
        };
        let params = ChatParams {
            session: SessionParams {
                n_ctx: p.n_ctx as usize,
                kv_type: kv_arg(p.kv_type)?,
                n_threads,
                n_batch: p.n_batch as usize,
                ..SessionParams::default()
            },
            system,
            tiling,
            mem_budget: p.mem_budget,
            ..ChatParams::default()
        };
        let chat = m.model.chat(params)?;
        let session = ivl_session {
            chat,
            pending: Vec::new(),
            reply_text: vec![0],
            boxes: Vec::new(),
            labels: Vec::new(),
            poisoned: false,
            progress: None,
        };
        let handle = Box::into_raw(Box::new(session));
        register(handle as usize, HandleKind::Session);
        // SAFETY: out_session is non-NULL (checked) and writable (contract).
        unsafe { write_out(out_session, handle) };
        Ok(())
    })
}

/// Frees a session. NULL is ignored (`IVL_STATUS_OK`). A handle that is not live (freed already,
/// or not from `ivl_session_new`) or that is inside a call (from its own token callback) is refused
/// with `IVL_STATUS_BAD_STATE` and left alone.
///
/// # Safety
/// `session` is NULL or any pointer value: it is only dereferenced when it is a live session handle.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_free(session: *mut ivl_session) -> ivl_status {
    guard("ivl_session_free", || {
        if !unregister(session as usize, HandleKind::Session)? {
            return Ok(());
        }
        // SAFETY: a live handle from Box::into_raw in ivl_session_new, not in a call, removed from the
        // live set under its lock just now, so this is the only free.
        let boxed = unsafe { Box::from_raw(session) };
        drop(boxed);
        Ok(())
    })
}

/// Decodes an image file (JPEG, PNG, WebP, BMP, GIF, TIFF) and attaches it to the next prompt.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_add_image_file(session: *mut ivl_session, path: *const c_char) -> ivl_status {
    guard_session("ivl_session_add_image_file", session, |s| {
        // SAFETY: path is NULL or NUL-terminated (contract).
        let path = unsafe { path_arg(path, "path") }?;
        let image = Image::open(&path, &s.chat.tiling())?;
        s.pending.push(image);
        Ok(())
    })
}

/// Attaches raw pixels (a camera frame) to the next prompt. The pixels are copied: the buffer may
/// be reused as soon as this returns. `height` rows of `stride` bytes each, of which the first
/// `width * bytes_per_pixel` are pixels; the last row may omit its padding, so `data` must hold
/// `stride * (height - 1) + width * bytes_per_pixel` bytes.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `data` is NULL or readable for
/// the byte count above.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_add_image_rgb(
    session: *mut ivl_session,
    data: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    format: ivl_pixel_format,
) -> ivl_status {
    guard_session("ivl_session_add_image_rgb", session, |s| {
        if data.is_null() {
            return Err(Failure::arg("data is NULL"));
        }
        let format = pixel_format_arg(format)?;
        if width == 0 || height == 0 {
            return Err(Failure::arg(format!("image size {width}x{height} is empty")));
        }
        let bpp = format.bytes_per_pixel() as u64;
        let row = u64::from(width) * bpp;
        if (stride as u64) < row {
            return Err(Failure::arg(format!(
                "stride {stride} is less than width {width} x {bpp} bytes per pixel = {row} bytes"
            )));
        }
        let pixels = u64::from(width) * u64::from(height);
        let limit = Limits::default().max_pixels;
        if pixels > limit {
            return Err(Failure {
                status: IVL_STATUS_INVALID_IMAGE,
                message: format!("image {width}x{height} has {pixels} pixels, over the limit of {limit}"),
            });
        }
        let len = (stride as u64)
            .checked_mul(u64::from(height) - 1)
            .and_then(|n| n.checked_add(row))
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| Failure::arg(format!("stride {stride} x height {height} overflows the address space")))?;
        // SAFETY: data is non-NULL and readable for `len` bytes (contract); len <= isize::MAX.
        let bytes = unsafe { std::slice::from_raw_parts(data, len as usize) };
        let rgb = crate::image::from_raw(RawImage {
            data: bytes,
            width,
            height,
            stride,
            format,
        })?;
        let image = Image::from_rgb(rgb, &s.chat.tiling())?;
        s.pending.push(image);
        Ok(())
    })
}

/// Asks a question about the images added since the last prompt (none is fine). The text may
/// hold `<image>` placeholders, one per image, to place them; otherwise they go first (spec §5.3).
/// On failure the images stay attached.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `text` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_prompt(session: *mut ivl_session, text: *const c_char) -> ivl_status {
    guard_session("ivl_session_prompt", session, |s| {
        // SAFETY: text is NULL or NUL-terminated (contract).
        let text = unsafe { utf8_arg(text, "text") }?;
        s.chat.ask(Message::text(text).with_images(s.pending.iter().cloned()))?;
        s.pending.clear();
        Ok(())
    })
}

/// Default generation parameters: greedy, at most 1024 new tokens, special tokens skipped.
#[no_mangle]
pub extern "C" fn ivl_generate_default_params() -> ivl_generate_params {
    let d = GenerateParams::default();
    ivl_generate_params {
        struct_size: std::mem::size_of::<ivl_generate_params>(),
        max_new_tokens: saturating_u32(d.max_new_tokens),
        temperature: d.sampling.temperature,
        top_k: saturating_u32(d.sampling.top_k),
        top_p: d.sampling.top_p,
        min_p: d.sampling.min_p,
        repetition_penalty: d.sampling.repetition_penalty,
        seed: d.sampling.seed,
        keep_special: d.keep_special,
        json_schema: std::ptr::null(),
        json_object: false,
        regex: std::ptr::null(),
        grammar: std::ptr::null(),
        stop: std::ptr::null(),
        n_stop: 0,
        logprob_callback: None,
        top_logprobs: 0,
    }
}

/// Answers the last prompt, calling `callback` (may be NULL) with each piece of text. On success
/// `*out_reply` (may be NULL) receives the answer. Unchanged history, images and KV cache rows
/// are reused across turns. The answer, even a partial one, joins the history; a question
/// cancelled before its first token, or one whose generation failed, is withdrawn.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `params` is NULL or points to
/// an initialized `ivl_generate_params` of `struct_size` bytes whose strings are NULL or NUL-terminated
/// and whose `stop` holds `n_stop` of them; `callback` and `logprob_callback`, if set, are safe to
/// call with `user_data`; `out_reply` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_generate(
    session: *mut ivl_session,
    params: *const ivl_generate_params,
    callback: ivl_token_callback,
    user_data: *mut c_void,
    out_reply: *mut ivl_reply,
) -> ivl_status {
    guard_session("ivl_session_generate", session, |s| {
        // SAFETY: params is NULL or points to an initialized struct of its `struct_size` (contract).
        let p = unsafe {
            versioned(
                params,
                ivl_generate_default_params(),
                GENERATE_PARAMS_V1,
                "ivl_generate_params",
            )
        }?;
        let mut gen = sampling_arg(&p)?;
        // SAFETY: the string fields are NULL or NUL-terminated, `stop` holds `n_stop` pointers (contract).
        unsafe { structured_arg(&p, &mut gen) }?;
        gen.cancel = cancel_flag(session as usize);
        let progress = s.progress;
        let mut piece_buf: Vec<u8> = Vec::new();
        let tokenizer = s.chat.model().tokenizer().clone();
        let result = s.chat.generate(&gen, |event| {
            if let (Event::Logprob(lp), Some(cb)) = (event, p.logprob_callback) {
                let mut bytes = tokenizer.token_bytes(lp.id).unwrap_or(&[]).to_vec();
                let len = bytes.len();
                bytes.push(0);
                let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
                let lps: Vec<f32> = lp.top.iter().map(|t| t.1).collect();
                let c = ivl_logprob {
                    token_id: lp.id,
                    logprob: lp.logprob,
                    token: bytes.as_ptr().cast(),
                    token_len: len,
                    top_ids: ids.as_ptr(),
                    top_logprobs: lps.as_ptr(),
                    n_top: ids.len(),
                };
                // SAFETY: the callback is valid (contract); every pointer lives for the call.
                let rc = unsafe { cb(&c, user_data) };
                return if rc == 0 { Flow::Continue } else { Flow::Stop };
            }
            let piece = match event {
                Event::Token(piece) => piece,
                Event::Vision { done, total } => return report_progress(progress, IVL_STAGE_VISION, done, total),
                Event::Prefill { done, total } => return report_progress(progress, IVL_STAGE_PREFILL, done, total),
                _ => return Flow::Continue,
            };
            let Some(cb) = callback else {
                return Flow::Continue;
            };
            piece_buf.clear();
            piece_buf.extend_from_slice(piece.as_bytes());
            piece_buf.push(0);
            // SAFETY: the callback is valid (contract); the piece is NUL-terminated, `len`
            // bytes long and lives for the call.
            let rc = unsafe { cb(piece_buf.as_ptr().cast(), piece.len(), user_data) };
            if rc == 0 {
                Flow::Continue
            } else {
                Flow::Stop
            }
        });
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                s.chat.withdraw();
                return Err(e.into());
            }
        };
        if reply.finish == FinishReason::Cancelled {
            // Cancelled before decoding: the question is still open; withdraw it so that the
            // next prompt can be asked.
            s.chat.withdraw();
        }
        // Boxes from the text with the special tokens kept (the tags), else from bare lists.
        let tagged = s
            .chat
            .model()
            .tokenizer()
            .decode(&reply.token_ids, false)
            .map_err(EngineError::from)?;
        let mut boxes = grounding::parse(clean_answer(&tagged));
        if boxes.is_empty() {
            boxes = grounding::parse_bare(&reply.text);
        }
        let size = s.chat.turns().last().and_then(|t| t.images.first()).map(Image::size);
        let mut labels = Vec::with_capacity(boxes.len());
        let mut out_boxes = Vec::with_capacity(boxes.len());
        for b in &boxes {
            let label = match &b.label {
                Some(l) => {
                    let c = CString::new(l.replace('\0', "")).unwrap_or_default();
                    let ptr = c.as_ptr();
                    labels.push(c);
                    ptr
                }
                None => std::ptr::null(),
            };
            let px = size.map(|(w, h)| b.to_pixels(w, h));
            out_boxes.push(ivl_box {
                label,
                x1: b.x1,
                y1: b.y1,
                x2: b.x2,
                y2: b.y2,
                px1: px.as_ref().map_or(0.0, |p| p.x1),
                py1: px.as_ref().map_or(0.0, |p| p.y1),
                px2: px.as_ref().map_or(0.0, |p| p.x2),
                py2: px.as_ref().map_or(0.0, |p| p.y2),
            });
        }
        let mut text = reply.text.into_bytes();
        let text_len = text.len();
        text.push(0);
        s.reply_text = text;
        s.boxes = out_boxes;
        // The CStrings' heap buffers do not move when the Vec holding them is moved.
        s.labels = labels;
        let st = &reply.stats;
        let out = ivl_reply {
            text: s.reply_text.as_ptr().cast(),
            text_len,
            finish: match reply.finish {
                FinishReason::Stop => ivl_finish_reason::IVL_FINISH_STOP,
                FinishReason::Length => ivl_finish_reason::IVL_FINISH_LENGTH,
                FinishReason::ContextFull => ivl_finish_reason::IVL_FINISH_CONTEXT_FULL,
                FinishReason::Cancelled => ivl_finish_reason::IVL_FINISH_CANCELLED,
            },
            prompt_tokens: saturating_u32(st.prompt_tokens),
            image_tokens: saturating_u32(st.image_tokens),
            reused_tokens: saturating_u32(st.reused_tokens),
            generated_tokens: saturating_u32(st.generated_tokens),
            tiles_encoded: saturating_u32(st.tiles_encoded),
            time_to_first_token_ms: ms(st.time_to_first_token),
            total_ms: ms(st.total),
        };
        // SAFETY: NULL or writable (contract).
        unsafe { write_out(out_reply, out) };
        Ok(())
    })
}

/// The grounding boxes of the last answer (none before the first one). `*out_boxes` points to
/// `*out_count` boxes owned by the session, valid until the next `ivl_session_generate`,
/// `ivl_session_reset` or `ivl_session_free`; with no boxes it is NULL and the count 0.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `out_boxes` and `out_count` are
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_boxes(
    session: *mut ivl_session,
    out_boxes: *mut *const ivl_box,
    out_count: *mut usize,
) -> ivl_status {
    guard_session("ivl_session_boxes", session, |s| {
        if out_boxes.is_null() || out_count.is_null() {
            return Err(Failure::arg("out_boxes or out_count is NULL"));
        }
        let ptr = if s.boxes.is_empty() {
            std::ptr::null()
        } else {
            s.boxes.as_ptr()
        };
        // SAFETY: both non-NULL (checked) and writable (contract).
        unsafe {
            write_out(out_boxes, ptr);
            write_out(out_count, s.boxes.len());
        }
        Ok(())
    })
}

/// Starts a new conversation: forgets the history, the attached images and the last reply. The
/// KV cache and image embeddings are kept, so a conversation that starts the same way (same
/// system message, same first image) reuses them.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_reset(session: *mut ivl_session) -> ivl_status {
    guard_session("ivl_session_reset", session, |s| {
        s.chat.reset();
        s.pending.clear();
        s.reply_text = vec![0];
        s.boxes.clear();
        s.labels.clear();
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Progress, cancellation, encoded images from memory
// ---------------------------------------------------------------------------------------------

/// What `ivl_progress_callback` reports (one of `IVL_STAGE_*`).
pub type ivl_stage = u32;
/// Vision encoding: `done` of `total` tiles of this turn's new images (cached tiles are skipped).
pub const IVL_STAGE_VISION: ivl_stage = 0;
/// Prefill: `done` of `total` new prompt tokens evaluated.
pub const IVL_STAGE_PREFILL: ivl_stage = 1;

/// Called by `ivl_session_generate` before the first token: after each vision batch and each
/// prefill chunk (see `ivl_stage`). Return 0 to continue, non-zero to cancel (the reply then ends
/// with `IVL_FINISH_CANCELLED` and the question is withdrawn, as after a cancel by the token
/// callback). Runs on the thread that called `ivl_session_generate`; must not unwind. Stages may
/// be skipped (no new image, everything reused) and more may be added: ignore unknown ones.
pub type ivl_progress_callback =
    Option<unsafe extern "C" fn(stage: ivl_stage, done: u32, total: u32, user_data: *mut c_void) -> i32>;

type ProgressFn = unsafe extern "C" fn(stage: ivl_stage, done: u32, total: u32, user_data: *mut c_void) -> i32;

/// The cancel flag of a live session (`None` for any other address).
fn cancel_flag(addr: usize) -> Option<CancelFlag> {
    live().get(&addr).and_then(|l| l.cancel.clone())
}

fn report_progress(progress: Option<(ProgressFn, usize)>, stage: ivl_stage, done: usize, total: usize) -> Flow {
    let Some((cb, user_data)) = progress else {
        return Flow::Continue;
    };
    // SAFETY: the callback is valid with its user data (contract of ivl_session_set_progress_callback).
    let rc = unsafe {
        cb(
            stage,
            saturating_u32(done),
            saturating_u32(total),
            user_data as *mut c_void,
        )
    };
    if rc == 0 {
        Flow::Continue
    } else {
        Flow::Stop
    }
}

/// Sets (or, with NULL, removes) the session's progress callback, used by the following
/// `ivl_session_generate` calls. `user_data` is passed back unchanged.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `callback`, if set, is safe to
/// call with `user_data` for as long as it stays set.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_set_progress_callback(
    session: *mut ivl_session,
    callback: ivl_progress_callback,
    user_data: *mut c_void,
) -> ivl_status {
    guard_session("ivl_session_set_progress_callback", session, |s| {
        s.progress = callback.map(|cb| (cb as ProgressFn, user_data as usize));
        Ok(())
    })
}

/// Asks the call running on `session` (`ivl_session_generate`) to stop, from any thread: it returns
/// within one vision batch, one prefill chunk or one token, with `IVL_FINISH_CANCELLED` (before the
/// first token the question is withdrawn; after it the partial answer is kept). With no call
/// running it does nothing: a cancel never carries over to the next call. Returns
/// `IVL_STATUS_BAD_STATE` for a handle that is not a live session.
///
/// # Safety
/// `session` is NULL or any pointer value: it is never dereferenced, only looked up.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_cancel(session: *mut ivl_session) -> ivl_status {
    guard("ivl_session_cancel", || {
        if session.is_null() {
            return Err(Failure::arg("session is NULL"));
        }
        let addr = session as usize;
        let map = live();
        match map.get(&addr) {
            Some(l) if l.kind == HandleKind::Session => {
                // Under the lock that marks calls busy and idle: the flag cannot outlive the call.
                if let (true, Some(c)) = (l.busy, &l.cancel) {
                    c.cancel();
                }
                Ok(())
            }
            _ => Err(not_live(HandleKind::Session, addr)),
        }
    })
}

/// Decodes an encoded image held in memory (JPEG, PNG, WebP, BMP, GIF, TIFF: the format is found
/// from the bytes) and attaches it to the next prompt. The bytes are read during the call only.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only; `data` is NULL or readable for
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ivl_session_add_image_bytes(
    session: *mut ivl_session,
    data: *const u8,
    len: usize,
) -> ivl_status {
    guard_session("ivl_session_add_image_bytes", session, |s| {
        if data.is_null() {
            return Err(Failure::arg("data is NULL"));
        }
        if len == 0 {
            return Err(Failure::arg("len is 0: no image bytes"));
        }
        if len > isize::MAX as usize {
            return Err(Failure::arg(format!("len {len} is larger than the address space")));
        }
        // SAFETY: data is non-NULL and readable for len bytes (contract); len <= isize::MAX.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        let rgb = crate::image::load_bytes(bytes, &Limits::default())?;
        let image = Image::from_rgb(rgb, &s.chat.tiling())?;
        s.pending.push(image);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_the_enum() {
        for s in [
            IVL_STATUS_OK,
            IVL_STATUS_INVALID_ARGUMENT,
            IVL_STATUS_IO,
            IVL_STATUS_INVALID_MODEL,
            IVL_STATUS_INVALID_IMAGE,
            IVL_STATUS_CONTEXT_FULL,
            IVL_STATUS_BAD_STATE,
            IVL_STATUS_DEVICE,
            IVL_STATUS_COMPUTE,
            IVL_STATUS_INTERNAL,
            IVL_STATUS_BUDGET,
        ] {
            // SAFETY: ivl_status_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(ivl_status_name(s as i32)) };
            assert_eq!(name.to_str().unwrap(), format!("{s:?}"));
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(ivl_status_name(77)) };
        assert_eq!(unknown.to_str().unwrap(), "IVL_STATUS_UNKNOWN");
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let st = guard("ivl_test", || panic!("boom"));
        assert_eq!(st, IVL_STATUS_INTERNAL);
        // SAFETY: ivl_last_error returns a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(ivl_last_error()) }.to_str().unwrap().to_owned();
        assert!(msg.contains("ivl_test") && msg.contains("boom"), "{msg}");
        // Success leaves the message alone; another thread has its own.
        assert_eq!(guard("ivl_ok", || Ok(())), IVL_STATUS_OK);
        // SAFETY: as above.
        assert!(unsafe { CStr::from_ptr(ivl_last_error()) }
            .to_str()
            .unwrap()
            .contains("boom"));
        let other = std::thread::spawn(|| {
            // SAFETY: as above.
            unsafe { CStr::from_ptr(ivl_last_error()) }.to_str().unwrap().to_owned()
        })
        .join()
        .unwrap();
        assert_eq!(other, "");
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        assert!(device_arg(3).is_err());
        assert!(kv_arg(4).is_err());
        assert!(pixel_format_arg(4).is_err());
        assert!(threads_arg(513, "n").is_err());
        let ok = ivl_generate_default_params();
        assert!(sampling_arg(&ok).is_ok());
        for bad in [
            ivl_generate_params {
                max_new_tokens: 0,
                ..ok
            },
            ivl_generate_params {
                temperature: f32::NAN,
                ..ok
            },
            ivl_generate_params {
                temperature: -1.0,
                ..ok
            },
            ivl_generate_params { top_p: 0.0, ..ok },
            ivl_generate_params { min_p: 2.0, ..ok },
            ivl_generate_params {
                repetition_penalty: 0.0,
                ..ok
            },
        ] {
            assert!(sampling_arg(&bad).is_err(), "{bad:?}");
        }
    }
}
