//! The safe layer over ggml: the only module (with `gguf`'s mmap and the C ABI) that holds `unsafe`.
//!
//! ggml reports misuse by `abort()`ing the whole process (a failed `GGML_ASSERT`), so every operation here
//! checks in Rust, before the call, the conditions ggml would assert: shapes, types, context capacity,
//! graph size, buffer sizes. The pattern is ggml's own (`examples/simple/simple-backend.cpp`): a
//! metadata-only context, build a graph, let `ggml_backend_sched` allocate it, set inputs, compute, read.

pub mod backend;
pub mod context;
pub mod custom;
pub mod kept;
pub mod quant;
pub mod store;
pub mod sys;
pub mod tensors;

pub use backend::{Backend, BackendKind, Buffer, Sched, Threadpool};
pub use context::{Context, Graph, Tensor};
pub use kept::KeptGraph;
pub use quant::{dequantize, quantize};
pub use store::{WeightId, WeightStore};
pub use tensors::TensorSet;

use std::ffi::CStr;

// The ggml libraries are built and linked by this crate; the `use` makes sure they are linked even though we
// call ggml through our own bindings.
use llama_cpp_sys_2 as _;

/// The ggml release our bindings were generated for (the one `llama-cpp-sys-2 =0.1.161` builds).
pub const EXPECTED_GGML_VERSION: &str = "0.26";

/// Errors from the ggml layer. Each names the operation and what did not fit.
#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    #[error("ggml {op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("ggml {op}: unsupported type {ty}: {detail}")]
    Type {
        op: &'static str,
        ty: String,
        detail: String,
    },
    #[error("ggml context is full: {used} of {capacity} tensors used (raise the context's capacity)")]
    ContextFull { used: usize, capacity: usize },
    #[error("ggml could not allocate {what}")]
    Alloc { what: String },
    #[error("ggml graph computation failed with status {0}")]
    Compute(i32),
    #[error("tensor '{name}': {detail}")]
    Tensor { name: String, detail: String },
    #[error("ggml quantization: {0}")]
    Quantize(String),
    #[error("ggml version mismatch: built for {expected}, the linked library reports {found}")]
    Version { expected: &'static str, found: String },
    #[error("ggml backend: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, GgmlError>;

/// The version string of the linked ggml library.
pub fn version() -> String {
    // SAFETY: ggml_version returns a pointer to a static NUL-terminated string.
    unsafe {
        let p = sys::ggml_version();
        if p.is_null() {
            return String::from("unknown");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Checks that the linked ggml is the release our bindings (struct layouts, enums) were generated for.
pub fn check_version() -> Result<()> {
    install_log_filter();
    let found = version();
    let major_minor: String = found.split('.').take(2).collect::<Vec<_>>().join(".");
    if major_minor != EXPECTED_GGML_VERSION {
        return Err(GgmlError::Version {
            expected: EXPECTED_GGML_VERSION,
            found,
        });
    }
    Ok(())
}

/// ggml's default logger prints every level to stderr, including a debug line per repacked tensor. Ours
/// keeps warnings and errors (prefixed `ggml:`); `INTERNVL_GGML_LOG=1` lets everything through.
fn install_log_filter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the callback is a plain function valid for the program's lifetime; no user data.
        unsafe { sys::ggml_log_set(Some(log_filter), std::ptr::null_mut()) };
    });
}

/// The level of the last message, for ggml's continuation lines (GGML_LOG_LEVEL_CONT).
static LAST_LOG_LEVEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

unsafe extern "C" fn log_filter(
    level: sys::ggml_log_level,
    text: *const std::ffi::c_char,
    _user: *mut std::ffi::c_void,
) {
    use std::sync::atomic::Ordering;
    let level = if level == sys::GGML_LOG_LEVEL_CONT {
        LAST_LOG_LEVEL.load(Ordering::Relaxed)
    } else {
        LAST_LOG_LEVEL.store(level, Ordering::Relaxed);
        level
    };
    let verbose = crate::env::ggml_log_verbose();
    if text.is_null() || (level < sys::GGML_LOG_LEVEL_WARN && !verbose) {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated message valid for the duration of the call.
    let msg = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
    eprint!("ggml: {msg}");
}

/// CPU features the linked ggml CPU backend was compiled with (for `--timings` and benchmark reports).
pub fn cpu_features() -> Vec<&'static str> {
    let mut v = Vec::new();
    // SAFETY: these ggml_cpu_has_* functions take no arguments and only read compile-time flags.
    unsafe {
        if sys::ggml_cpu_has_avx2() != 0 {
            v.push("AVX2");
        }
        if sys::ggml_cpu_has_f16c() != 0 {
            v.push("F16C");
        }
        if sys::ggml_cpu_has_fma() != 0 {
            v.push("FMA");
        }
        if sys::ggml_cpu_has_avx512() != 0 {
            v.push("AVX512");
        }
        if sys::ggml_cpu_has_avx512_vnni() != 0 {
            v.push("AVX512_VNNI");
        }
        if sys::ggml_cpu_has_avx512_bf16() != 0 {
            v.push("AVX512_BF16");
        }
        if sys::ggml_cpu_has_avx_vnni() != 0 {
            v.push("AVX_VNNI");
        }
        if sys::ggml_cpu_has_neon() != 0 {
            v.push("NEON");
        }
        if sys::ggml_cpu_has_dotprod() != 0 {
            v.push("DOTPROD");
        }
    }
    v
}
