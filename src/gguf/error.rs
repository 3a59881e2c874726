//! Errors of the GGUF reader and writer. Every variant names what it is about (key, tensor, byte offset)
//! so that a bad file can be diagnosed from the message alone.

use std::path::PathBuf;

/// An error reading, validating or writing a GGUF file. Byte offsets are absolute file offsets unless a
/// field says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- header ----
    #[error("file ends while reading {what} at offset {offset}: needs {needed} bytes, file is {file_len} bytes")]
    Truncated {
        what: String,
        offset: usize,
        needed: usize,
        file_len: usize,
    },
    #[error("not a GGUF file: magic is \"{}\", expected \"GGUF\"", found.escape_ascii())]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version} (supported: 2 and 3; a big-endian file shows a huge version)")]
    UnsupportedVersion { version: u32 },
    #[error("{what} count {count} at offset {offset} is impossible: the file has room for at most {max}")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        offset: usize,
        max: u64,
    },

    // ---- strings and metadata ----
    #[error("{what} at offset {offset} claims {len} bytes but only {available} remain in the file")]
    StringPastEnd {
        what: String,
        offset: usize,
        len: u64,
        available: usize,
    },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: usize },
    #[error("metadata key #{index} is empty")]
    EmptyKey { index: usize },
    #[error("duplicate metadata key '{key}'")]
    DuplicateKey { key: String },
    #[error("key '{key}': unknown value type id {type_id} at offset {offset}")]
    UnknownValueType { key: String, type_id: u32, offset: usize },
    #[error("key '{key}': nested array at offset {offset} (arrays of arrays are not supported)")]
    NestedArray { key: String, offset: usize },
    #[error("key '{key}': array of {count} {elem_type} elements at offset {offset} cannot fit in the {available} bytes left")]
    ArrayPastEnd {
        key: String,
        elem_type: &'static str,
        count: u64,
        offset: usize,
        available: usize,
    },
    #[error("key '{key}': bool at offset {offset} has byte value {value}, expected 0 or 1")]
    InvalidBool { key: String, value: u8, offset: usize },
    #[error("general.alignment is {value}: it must be a nonzero power of two")]
    BadAlignment { value: u64 },

    // ---- typed access ----
    #[error("metadata key '{key}' is missing")]
    MissingKey { key: String },
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    // ---- tensor infos ----
    #[error("tensor #{index} has an empty name")]
    EmptyTensorName { index: usize },
    #[error("tensor name '{name}' is {len} bytes; ggml allows at most {max}")]
    TensorNameTooLong { name: String, len: usize, max: usize },
    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor { name: String },
    #[error("tensor '{tensor}': {n_dims} dimensions, expected 1 to 4")]
    BadDimCount { tensor: String, n_dims: u64 },
    #[error("tensor '{tensor}': dimension {dim} is zero")]
    ZeroDim { tensor: String, dim: usize },
    #[error("tensor '{tensor}': shape {ne:?} of type {ty} overflows the addressable size")]
    ShapeOverflow { tensor: String, ne: Vec<u64>, ty: String },
    #[error("tensor '{tensor}': unknown ggml type id {type_id}")]
    UnknownGgmlType { tensor: String, type_id: u32 },
    #[error("tensor '{tensor}': row of {ne0} elements is not a multiple of the {ty} block size {block}")]
    RowNotBlockMultiple {
        tensor: String,
        ty: &'static str,
        ne0: usize,
        block: usize,
    },
    #[error("tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: usize,
    },
    #[error("tensor '{tensor}': {size} bytes at data offset {offset} (data section at file offset {data_offset}) run past the end of the {file_len}-byte file")]
    TensorPastEnd {
        tensor: String,
        offset: u64,
        size: usize,
        data_offset: usize,
        file_len: usize,
    },
    #[error("tensors '{first}' and '{second}' overlap: '{first}' ends at data offset {first_end}, '{second}' starts at {second_start}")]
    TensorOverlap {
        first: String,
        second: String,
        first_end: usize,
        second_start: usize,
    },

    // ---- writer ----
    #[error("{what}: the header was already written (declare all keys and tensors before writing data)")]
    HeaderAlreadyWritten { what: String },
    #[error("alignment can only be changed before any tensor is declared")]
    AlignmentAfterTensors,
    #[error("tensor '{name}' was never declared with add_tensor")]
    UnknownTensor { name: String },
    #[error("tensor data out of order: expected '{expected}', got '{got}'")]
    TensorOrder { expected: String, got: String },
    #[error("tensor '{tensor}': got {got} bytes of data, expected {expected}")]
    TensorSizeMismatch {
        tensor: String,
        expected: usize,
        got: usize,
    },
    #[error("tensor '{tensor}' was declared but its data was never written")]
    TensorDataMissing { tensor: String },
    #[error("the writer for {path} failed earlier and cannot continue")]
    WriterPoisoned { path: PathBuf },
    #[error("{path}: wrote {written} bytes but planned {planned}")]
    SizeMismatch { path: PathBuf, written: u64, planned: u64 },
}
