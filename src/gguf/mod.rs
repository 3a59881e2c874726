//! GGUF v3 reader and streaming writer (pure Rust; no ggml calls).
//!
//! Format (little-endian; ggml's `gguf.h`/`gguf.cpp` is the reference implementation):
//! `"GGUF"`, u32 version, u64 tensor count, u64 kv count; each kv is a string key (u64 length + UTF-8
//! bytes), a u32 value type and the value (arrays: u32 element type, u64 count, elements); each tensor
//! info is a string name, u32 n_dims, u64 dims (ggml order), u32 ggml type, u64 offset relative to the
//! data section; then zero padding to the alignment (`general.alignment`, default 32) and the data section,
//! in which every tensor starts at a multiple of the alignment.
//!
//! [`GgufFile`] validates everything at open and then hands out zero-copy slices of the mapped file;
//! [`GgufWriter`] streams a file tensor by tensor and publishes it atomically on `finish`.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, CONVERT_TYPES, FOREIGN_MATRIX_TYPES, MATRIX_TYPES};
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

/// Result type of this module.
pub type Result<T> = std::result::Result<T, GgufError>;

/// File magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version the writer produces (the reader accepts 2 and 3, which share one layout).
pub const VERSION: u32 = 3;
/// Alignment used when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The key that sets the alignment (must be a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes: ggml stores names in `char name[GGML_MAX_NAME = 64]` with a terminating NUL.
pub const MAX_NAME_LEN: usize = 63;
