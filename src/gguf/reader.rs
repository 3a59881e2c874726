//! GGUF reader: parses and validates the whole header up front, then hands out zero-copy tensor slices.
//!
//! Every number in the file is untrusted. Counts and lengths are checked against the bytes that are left
//! before anything is allocated for them, every arithmetic step is checked, and every tensor's byte range
//! is checked against the file and against the other tensors at open time, so that later accessors
//! cannot fail. The checks follow (and in places go beyond) ggml's own `gguf_init_from_file_impl`.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{Array, Value, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_LEN};

type Result<T> = std::result::Result<T, GgufError>;

/// Smallest possible encoding of one key/value pair: key length (8) + a 1-byte key + type id (4) + a
/// 1-byte value. Used to bound the kv count by the file size before allocating.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor info: name length (8) + 1-byte name + n_dims (4) + one dim (8) + type (4) +
/// offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// One tensor as described in the file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order (`ne[0]` is the innermost, contiguous one); 1 to 4 entries, each > 0.
    pub ne: Vec<usize>,
    pub ty: GgmlType,
    /// Byte offset relative to the start of the data section (a multiple of the file's alignment).
    pub offset: usize,
    /// Size of the tensor's data in bytes (without padding).
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements (validated at open and in the writer to fit in an i64; saturates for a
    /// hand-made `TensorInfo` that would overflow).
    pub fn n_elements(&self) -> usize {
        self.ne
            .iter()
            .try_fold(1usize, |acc, &n| acc.checked_mul(n))
            .unwrap_or(usize::MAX)
    }
}

/// The file's bytes: a read-only memory map, or an owned buffer (tests, fuzzing, empty files).
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A validated GGUF file (version 2 or 3).
pub struct GgufFile {
    storage: Storage,
    header: Header,
}

/// Everything parsed from the header.
struct Header {
    version: u32,
    alignment: usize,
    kvs: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("alignment", &self.header.alignment)
            .field("n_kv", &self.header.kvs.len())
            .field("n_tensors", &self.header.tensors.len())
            .field("data_offset", &self.header.data_offset)
            .field("file_len", &self.storage.bytes().len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    ///
    /// The mapping is read-only. As with every mmapped model loader (llama.cpp included), another process
    /// that truncates or rewrites the file while it is open makes later reads of the mapping fail or change;
    /// the writer in this module never rewrites a file in place (it renames a finished temp file over it).
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        // Mapping a directory or a device fails with an OS error that names the wrong problem
        // ("No such device (os error 19)" for a directory): say what the path is instead.
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "is a directory, not a GGUF file (give the .gguf file inside it)"
            } else {
                "is not a regular file (a device, FIFO or socket), not a GGUF file"
            };
            return Err(io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what)));
        }
        let len = meta.len();
        let storage = if len == 0 {
            // Mapping an empty file fails on some platforms; an empty buffer gives the proper parse error.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: a read-only, private mapping of a file we opened read-only; we only ever create shared
            // references into it, and it lives as long as `GgufFile`, which bounds every borrowed slice.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
            Storage::Mmap(map)
        };
        let header = parse(storage.bytes())?;
        Ok(Self { storage, header })
    }

    /// Validates a GGUF image held in memory (the same parser as `open`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let header = parse(&bytes)?;
        Ok(Self {
            storage: Storage::Owned(bytes),
            header,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The data alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.header.alignment
    }

    /// All metadata key/value pairs, in file order.
    pub fn kvs(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.header.kvs.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.header.kv_index.get(key)?;
        self.header.kvs.get(i).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    /// `key` as u32 (any integer type whose value fits is accepted).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_u32()
            .ok_or_else(|| wrong_type(key, "u32 (or an integer that fits)", v))
    }

    /// `key` as u64 (any non-negative integer).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| wrong_type(key, "u64 (or an integer that fits)", v))
    }

    /// `key` as i64 (any integer that fits).
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64()
            .ok_or_else(|| wrong_type(key, "i64 (or an integer that fits)", v))
    }

    /// `key` as f32 (an f64 is rounded).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| wrong_type(key, "f32", v))
    }

    /// `key` as bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| wrong_type(key, "bool", v))
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong_type(key, "string", v))
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        let v = self.require(key)?;
        match v {
            Value::Array(Array::Str(s)) => Ok(s),
            _ => Err(wrong_type(key, "array of string", v)),
        }
    }

    /// `key` as an array of i32 (any integer element type whose values all fit is accepted).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.int_array(key, "array of i32 (or of integers that fit)")
    }

    /// `key` as an array of u32 (any integer element type whose values all fit is accepted).
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.int_array(key, "array of u32 (or of integers that fit)")
    }

    fn int_array<T: TryFrom<i64>>(&self, key: &str, expected: &'static str) -> Result<Vec<T>> {
        let v = self.require(key)?;
        let converted = v
            .as_array()
            .and_then(Array::to_i64_vec)
            .and_then(|xs| xs.into_iter().map(|x| T::try_from(x).ok()).collect::<Option<Vec<T>>>());
        converted.ok_or_else(|| wrong_type(key, expected, v))
    }

    /// `key` as an array of f32 (an f64 array is rounded).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let v = self.require(key)?;
        match v {
            Value::Array(Array::F32(xs)) => Ok(xs.clone()),
            Value::Array(Array::F64(xs)) => Ok(xs.iter().map(|&x| x as f32).collect()),
            _ => Err(wrong_type(key, "array of f32", v)),
        }
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.header.tensor_index.get(name)?;
        self.header.tensors.get(i)
    }

    /// The bytes of tensor `t` (zero-copy). Every tensor of this file was range-checked at open; a
    /// `TensorInfo` that does not come from this file and lies outside it gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .header
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some(start..start.checked_add(t.size)?));
        range.and_then(|r| self.storage.bytes().get(r)).unwrap_or(&[])
    }

    /// The data section: from `data_offset()` to the end of the file (empty for a file without tensors
    /// whose header padding was omitted).
    pub fn data_section(&self) -> &[u8] {
        self.storage.bytes().get(self.header.data_offset..).unwrap_or(&[])
    }

    /// Absolute file offset of the data section (a multiple of the alignment).
    pub fn data_offset(&self) -> usize {
        self.header.data_offset
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Tells the kernel that tensor `t`'s pages of the mapping are not needed any more (after a copy of
    /// the weights elsewhere, such as ggml's repacked CPU layout), so that they stop counting in this
    /// process's resident memory. The data stays valid: a later read faults the pages back in from the
    /// page cache or the file. A no-op for an owned buffer. Errors are ignored: it is only advice.
    pub fn release_pages(&self, t: &TensorInfo) {
        let Storage::Mmap(map) = &self.storage else {
            return;
        };
        let Some(start) = self.header.data_offset.checked_add(t.offset) else {
            return;
        };
        if start.checked_add(t.size).map(|end| end > map.len()).unwrap_or(true) {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only file mapping drops resident pages; the next access reloads
        // the same bytes from the file, so no reference into the mapping observes a change. (The range
        // is rounded out to whole pages by memmap2; neighbouring bytes are reloaded just the same.)
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, t.size) };
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    let found = match found {
        Value::Str(_) => "string".to_string(),
        Value::Array(a) => format!("{} ({} elements)", found.type_description(), a.len()),
        Value::Bool(b) => format!("bool {b}"),
        Value::F32(x) => format!("f32 {x}"),
        Value::F64(x) => format!("f64 {x}"),
        other => match other.as_i64() {
            Some(x) => format!("{} {x}", other.type_description()),
            None => format!("{} {}", other.type_description(), other.as_u64().unwrap_or_default()),
        },
    };
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found,
    }
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let slice = self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end));
        match slice {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what(),
                offset: self.pos,
                needed: n,
                file_len: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let offset = self.pos;
        let file_len = self.buf.len();
        let s = self.take(N, what)?;
        // `take` returned exactly N bytes; the fallback is unreachable but keeps this panic-free.
        <[u8; N]>::try_from(s).map_err(|_| GgufError::Truncated {
            what: "fixed-size field".into(),
            offset,
            needed: N,
            file_len,
        })
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length + UTF-8 bytes. The length is checked against the file before reading.
    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let offset = self.pos;
        let available = self.remaining();
        let n = match usize::try_from(len) {
            Ok(n) if n <= available => n,
            _ => {
                return Err(GgufError::StringPastEnd {
                    what: what(),
                    offset,
                    len,
                    available,
                })
            }
        };
        let bytes = self.take(n, &what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what: what(), offset })
    }
}

/// Decodes a packed little-endian array of `count` fixed-size elements (the caller checked the size).
fn decode_fixed<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .filter_map(|c| <[u8; N]>::try_from(c).ok())
        .map(f)
        .collect()
}

fn bool_from(byte: u8, key: &str, offset: usize) -> Result<bool> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_string(),
            value,
            offset,
        }),
    }
}

fn read_scalar(cur: &mut Cursor<'_>, ty: ValueType, key: &str) -> Result<Value> {
    let what = || format!("value of key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.array(what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array(what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(what)?)),
        ValueType::Bool => {
            let offset = cur.pos;
            let [b] = cur.array::<1>(what)?;
            Value::Bool(bool_from(b, key, offset)?)
        }
        ValueType::Str => Value::Str(cur.string(what)?),
        ValueType::Array => read_array(cur, key)?,
    })
}

fn read_array(cur: &mut Cursor<'_>, key: &str) -> Result<Value> {
    let type_offset = cur.pos;
    let type_id = cur.u32(|| format!("array element type of key '{key}'"))?;
    let elem = ValueType::from_u32(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id,
        offset: type_offset,
    })?;
    if elem == ValueType::Array {
        return Err(GgufError::NestedArray {
            key: key.to_string(),
            offset: type_offset,
        });
    }
    let count = cur.u64(|| format!("array length of key '{key}'"))?;
    let offset = cur.pos;
    let available = cur.remaining();
    // A string element takes at least its 8-byte length; every other element its fixed size.
    let min_elem = elem.fixed_size().unwrap_or(8);
    let past_end = || GgufError::ArrayPastEnd {
        key: key.to_string(),
        elem_type: elem.name(),
        count,
        offset,
        available,
    };
    let n = usize::try_from(count).map_err(|_| past_end())?;
    let min_bytes = n
        .checked_mul(min_elem)
        .filter(|&b| b <= available)
        .ok_or_else(past_end)?;

    let what = || format!("array of key '{key}'");
    let array = match elem {
        ValueType::Str => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(cur.string(|| format!("element {i} of key '{key}'"))?);
            }
            Array::Str(v)
        }
        ValueType::Bool => {
            let bytes = cur.take(min_bytes, what)?;
            let mut v = Vec::with_capacity(n);
            for (i, &b) in bytes.iter().enumerate() {
                v.push(bool_from(b, key, offset + i)?);
            }
            Array::Bool(v)
        }
        fixed => {
            let bytes = cur.take(min_bytes, what)?;
            match fixed {
                ValueType::U8 => Array::U8(bytes.to_vec()),
                ValueType::I8 => Array::I8(decode_fixed(bytes, i8::from_le_bytes)),
                ValueType::U16 => Array::U16(decode_fixed(bytes, u16::from_le_bytes)),
                ValueType::I16 => Array::I16(decode_fixed(bytes, i16::from_le_bytes)),
                ValueType::U32 => Array::U32(decode_fixed(bytes, u32::from_le_bytes)),
                ValueType::I32 => Array::I32(decode_fixed(bytes, i32::from_le_bytes)),
                ValueType::U64 => Array::U64(decode_fixed(bytes, u64::from_le_bytes)),
                ValueType::I64 => Array::I64(decode_fixed(bytes, i64::from_le_bytes)),
                ValueType::F32 => Array::F32(decode_fixed(bytes, f32::from_le_bytes)),
                ValueType::F64 => Array::F64(decode_fixed(bytes, f64::from_le_bytes)),
                // Str, Bool and Array are handled above.
                _ => {
                    return Err(GgufError::NestedArray {
                        key: key.to_string(),
                        offset: type_offset,
                    })
                }
            }
        }
    };
    Ok(Value::Array(array))
}

/// Checks a declared count against the bytes left, before anything is allocated for it.
fn check_count(what: &'static str, count: u64, offset: usize, remaining: usize, min_bytes: u64) -> Result<usize> {
    let max = u64::try_from(remaining).unwrap_or(u64::MAX) / min_bytes;
    match usize::try_from(count) {
        Ok(n) if count <= max => Ok(n),
        _ => Err(GgufError::CountTooLarge {
            what,
            count,
            offset,
            max,
        }),
    }
}

fn align_up(x: usize, alignment: usize) -> Option<usize> {
    match x % alignment {
        0 => Some(x),
        r => x.checked_add(alignment - r),
    }
}

/// Checks a tensor's name: nonempty, short enough for ggml's `char name[64]`, unique.
pub(crate) fn check_tensor_name(name: &str, index: usize, seen: &HashMap<String, usize>) -> Result<()> {
    if name.is_empty() {
        return Err(GgufError::EmptyTensorName { index });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(GgufError::TensorNameTooLong {
            name: name.to_string(),
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if seen.contains_key(name) {
        return Err(GgufError::DuplicateTensor { name: name.to_string() });
    }
    Ok(())
}

/// Checks a shape and type and returns the tensor's byte size. `ne` must already be 1..=4 nonzero dims.
pub(crate) fn tensor_nbytes(name: &str, ne: &[usize], ty: GgmlType) -> Result<usize> {
    let overflow = || GgufError::ShapeOverflow {
        tensor: name.to_string(),
        ne: ne.iter().map(|&n| n as u64).collect(),
        ty: ty.name().to_string(),
    };
    let ne0 = ne.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: name.to_string(),
            ty: ty.name(),
            ne0,
            block: ty.block_size(),
        });
    }
    // ggml keeps element counts in int64_t: the product must fit there, and the byte size in usize.
    let n_elements = ne
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(overflow)?;
    if i64::try_from(n_elements).is_err() {
        return Err(overflow());
    }
    ty.nbytes(ne).ok_or_else(overflow)
}

fn parse(buf: &[u8]) -> Result<Header> {
    let mut cur = Cursor { buf, pos: 0 };

    let magic: [u8; 4] = cur.array(|| "magic".to_string())?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    // v2 and v3 share one layout (v1 used 32-bit counts and is gone from ggml too).
    let version = cur.u32(|| "version".to_string())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count_offset = cur.pos;
    let tensor_count = cur.u64(|| "tensor count".to_string())?;
    let kv_count_offset = cur.pos;
    let kv_count = cur.u64(|| "metadata kv count".to_string())?;
    let n_kv = check_count("metadata kv", kv_count, kv_count_offset, cur.remaining(), MIN_KV_BYTES)?;
    let n_tensors = check_count(
        "tensor",
        tensor_count,
        tensor_count_offset,
        cur.remaining(),
        MIN_TENSOR_INFO_BYTES,
    )?;

    let mut kvs: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut kv_index = HashMap::with_capacity(n_kv);
    for index in 0..n_kv {
        let key = cur.string(|| format!("key of metadata kv #{index}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        if kv_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        let type_offset = cur.pos;
        let type_id = cur.u32(|| format!("value type of key '{key}'"))?;
        let ty = ValueType::from_u32(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            type_id,
            offset: type_offset,
        })?;
        let value = read_scalar(&mut cur, ty, &key)?;
        kv_index.insert(key.clone(), kvs.len());
        kvs.push((key, value));
    }

    let alignment = match kv_index.get(ALIGNMENT_KEY).and_then(|&i| kvs.get(i)) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) => {
            let a = *a;
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment { value: u64::from(a) });
            }
            usize::try_from(a).map_err(|_| GgufError::BadAlignment { value: u64::from(a) })?
        }
        Some((_, other)) => return Err(wrong_type(ALIGNMENT_KEY, "u32", other)),
    };

    // Re-check the tensor count against what is left after the metadata.
    let n_tensors = check_count(
        "tensor",
        n_tensors as u64,
        tensor_count_offset,
        cur.remaining(),
        MIN_TENSOR_INFO_BYTES,
    )?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    let mut raw_offsets: Vec<u64> = Vec::with_capacity(n_tensors);
    for index in 0..n_tensors {
        let name = cur.string(|| format!("name of tensor #{index}"))?;
        check_tensor_name(&name, index, &tensor_index)?;
        let n_dims = cur.u32(|| format!("dimension count of tensor '{name}'"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name,
                n_dims: u64::from(n_dims),
            });
        }
        let mut raw_ne = Vec::with_capacity(MAX_DIMS);
        for dim in 0..n_dims as usize {
            let n = cur.u64(|| format!("dimension {dim} of tensor '{name}'"))?;
            if n == 0 {
                return Err(GgufError::ZeroDim { tensor: name, dim });
            }
            raw_ne.push(n);
        }
        let type_id = cur.u32(|| format!("type of tensor '{name}'"))?;
        let ty = GgmlType::from_u32(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
            tensor: name.clone(),
            type_id,
        })?;
        let ne: Vec<usize> = match raw_ne.iter().map(|&n| usize::try_from(n).ok()).collect::<Option<_>>() {
            Some(ne) => ne,
            None => {
                return Err(GgufError::ShapeOverflow {
                    tensor: name,
                    ne: raw_ne,
                    ty: ty.name().to_string(),
                })
            }
        };
        let size = tensor_nbytes(&name, &ne, ty)?;
        let offset = cur.u64(|| format!("data offset of tensor '{name}'"))?;
        if offset % alignment as u64 != 0 {
            return Err(GgufError::MisalignedOffset {
                tensor: name,
                offset,
                alignment,
            });
        }
        tensor_index.insert(name.clone(), tensors.len());
        raw_offsets.push(offset);
        // The offset is range-checked below, once the data section's start is known.
        tensors.push(TensorInfo {
            name,
            ne,
            ty,
            offset: 0,
            size,
        });
    }

    // The data section starts at the next multiple of the alignment (ggml measures it from file start).
    let data_offset = align_up(cur.pos, alignment).ok_or_else(|| GgufError::Truncated {
        what: "padding before the data section".to_string(),
        offset: cur.pos,
        needed: alignment,
        file_len: buf.len(),
    })?;
    for (t, &raw) in tensors.iter_mut().zip(&raw_offsets) {
        let start = u64::try_from(data_offset).ok().and_then(|d| d.checked_add(raw));
        let in_file = start
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| s.checked_add(t.size))
            .is_some_and(|end| end <= buf.len());
        if !in_file {
            return Err(GgufError::TensorPastEnd {
                tensor: t.name.clone(),
                offset: raw,
                size: t.size,
                data_offset,
                file_len: buf.len(),
            });
        }
        // In range of the file, so it fits in usize.
        t.offset = usize::try_from(raw).unwrap_or(usize::MAX);
    }

    // No two tensors may share bytes (tensors in any order; ggml's writer lays them out in order).
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if let [a, b] = pair {
            let a_end = a.offset.saturating_add(a.size);
            if a_end > b.offset {
                return Err(GgufError::TensorOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                    first_end: a_end,
                    second_start: b.offset,
                });
            }
        }
    }

    Ok(Header {
        version,
        alignment,
        kvs,
        kv_index,
        tensors,
        tensor_index,
        data_offset,
    })
}
