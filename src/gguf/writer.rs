//! Streaming GGUF v3 writer.
//!
//! Usage: declare every key (`add_kv`) and every tensor (`add_tensor`) first; then hand over tensor data one
//! tensor at a time, in declared order (`write_tensor_data`); then `finish`. The header is written when the
//! first tensor's data arrives (or at `finish`), with offsets already computed, so no tensor data is ever
//! buffered. The layout is exactly ggml's (`gguf_write_to_buf`): header, zero padding to the alignment, then
//! each tensor followed by zero padding to the alignment.
//!
//! The output goes to a hidden temporary file next to the destination and is renamed over it only by a
//! successful `finish`; a writer dropped before that (an error, a panic, an early return) removes its
//! temporary file, so a half-written model never appears under the destination name.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::GgufError;
use super::reader::{check_tensor_name, tensor_nbytes, TensorInfo};
use super::types::GgmlType;
use super::value::{Array, Value};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, VERSION};

type Result<T> = std::result::Result<T, GgufError>;

/// Distinguishes temp files of several writers in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A GGUF file being written. See the module docs for the call order.
pub struct GgufWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    alignment: usize,
    kvs: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// End of the data section so far, padded: the next tensor's offset.
    data_len: usize,
    header_written: bool,
    next_tensor: usize,
    written: u64,
    poisoned: bool,
    finished: bool,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("n_kv", &self.kvs.len())
            .field("n_tensors", &self.tensors.len())
            .field("next_tensor", &self.next_tensor)
            .field("written", &self.written)
            .finish()
    }
}

fn align_up(x: usize, alignment: usize) -> Option<usize> {
    match x % alignment {
        0 => Some(x),
        r => x.checked_add(alignment - r),
    }
}

fn check_alignment(a: usize) -> Result<u32> {
    match u32::try_from(a) {
        Ok(v) if v.is_power_of_two() => Ok(v),
        _ => Err(GgufError::BadAlignment { value: a as u64 }),
    }
}

impl GgufWriter {
    /// Starts a GGUF file that will appear at `path` on `finish`. Creates the temporary file right away
    /// (in the same directory, so the final rename is atomic), which surfaces permission and missing-
    /// directory errors before any work is done.
    pub fn create(path: &Path) -> Result<Self> {
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_name = path.file_name().ok_or_else(|| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "destination has no file name",
            ))
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!(".{}.tmp-{}-{seq}", file_name.to_string_lossy(), std::process::id());
        let tmp_path = dir.join(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|source| GgufError::Io {
                path: tmp_path.clone(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp_path,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            kv_index: HashMap::new(),
            tensors: Vec::new(),
            tensor_index: HashMap::new(),
            data_len: 0,
            header_written: false,
            next_tensor: 0,
            written: 0,
            poisoned: false,
            finished: false,
        })
    }

    /// The temporary file being written (removed on drop unless `finish` succeeded).
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// The data alignment in bytes.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    fn check_declaring(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.poisoned {
            return Err(GgufError::WriterPoisoned {
                path: self.path.clone(),
            });
        }
        if self.header_written {
            return Err(GgufError::HeaderAlreadyWritten { what: what() });
        }
        Ok(())
    }

    /// Sets the data alignment (a power of two, default 32) and records it as `general.alignment` (u32).
    /// Only before any tensor is declared, since tensor offsets depend on it.
    pub fn set_alignment(&mut self, a: usize) -> Result<()> {
        self.check_declaring(|| "set_alignment".to_string())?;
        if !self.tensors.is_empty() {
            return Err(GgufError::AlignmentAfterTensors);
        }
        let v = check_alignment(a)?;
        self.alignment = a;
        match self.kv_index.get(ALIGNMENT_KEY).and_then(|&i| self.kvs.get_mut(i)) {
            Some((_, value)) => *value = Value::U32(v),
            None => self.push_kv(ALIGNMENT_KEY.to_string(), Value::U32(v)),
        }
        Ok(())
    }

    fn push_kv(&mut self, key: String, v: Value) {
        self.kv_index.insert(key.clone(), self.kvs.len());
        self.kvs.push((key, v));
    }

    /// Adds a metadata key. `general.alignment` must be a u32 power of two and sets the alignment.
    pub fn add_kv(&mut self, key: &str, v: Value) -> Result<()> {
        self.check_declaring(|| format!("key '{key}'"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index: self.kvs.len() });
        }
        if self.kv_index.contains_key(key) {
            return Err(GgufError::DuplicateKey { key: key.to_string() });
        }
        if key == ALIGNMENT_KEY {
            match v {
                Value::U32(a) => return self.set_alignment(a as usize),
                other => {
                    return Err(GgufError::WrongType {
                        key: key.to_string(),
                        expected: "u32",
                        found: other.type_description(),
                    })
                }
            }
        }
        self.push_kv(key.to_string(), v);
        Ok(())
    }

    /// Declares a tensor: dimensions in ggml order (`ne[0]` innermost), 1 to 4 of them, each > 0.
    pub fn add_tensor(&mut self, name: &str, ne: &[usize], ty: GgmlType) -> Result<()> {
        self.check_declaring(|| format!("tensor '{name}'"))?;
        check_tensor_name(name, self.tensors.len(), &self.tensor_index)?;
        if ne.is_empty() || ne.len() > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name.to_string(),
                n_dims: ne.len() as u64,
            });
        }
        if let Some(dim) = ne.iter().position(|&n| n == 0) {
            return Err(GgufError::ZeroDim {
                tensor: name.to_string(),
                dim,
            });
        }
        let size = tensor_nbytes(name, ne, ty)?;
        let offset = self.data_len;
        let overflow = || GgufError::ShapeOverflow {
            tensor: name.to_string(),
            ne: ne.iter().map(|&n| n as u64).collect(),
            ty: ty.name().to_string(),
        };
        let end = offset
            .checked_add(size)
            .and_then(|e| align_up(e, self.alignment))
            .ok_or_else(overflow)?;
        self.tensor_index.insert(name.to_string(), self.tensors.len());
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            ne: ne.to_vec(),
            ty,
            offset,
            size,
        });
        self.data_len = end;
        Ok(())
    }

    /// The tensors declared so far, with their planned offsets.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Size in bytes of the header with everything declared so far, including the padding before the data.
    pub fn header_size(&self) -> usize {
        let kv_bytes = self
            .kvs
            .iter()
            .map(|(k, v)| 8 + k.len() + 4 + v.encoded_len().unwrap_or(usize::MAX));
        let ti_bytes = self
            .tensors
            .iter()
            .map(|t| 8 + t.name.len() + 4 + 8 * t.ne.len() + 4 + 8);
        let raw = kv_bytes.chain(ti_bytes).fold(24usize, |acc, b| acc.saturating_add(b));
        align_up(raw, self.alignment).unwrap_or(usize::MAX)
    }

    /// Size in bytes of the finished file with everything declared so far (for progress reporting).
    pub fn planned_size(&self) -> u64 {
        (self.header_size() as u64).saturating_add(self.data_len as u64)
    }

    /// Bytes written to the temporary file so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Err(GgufError::WriterPoisoned {
                path: self.path.clone(),
            });
        };
        match out.write_all(bytes) {
            Ok(()) => {
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                self.poisoned = true;
                Err(GgufError::Io {
                    path: self.tmp_path.clone(),
                    source,
                })
            }
        }
    }

    fn write_padding(&mut self) -> Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut pad = (self.alignment - (self.written % self.alignment as u64) as usize) % self.alignment;
        while pad > 0 {
            let n = pad.min(ZEROS.len());
            self.write_raw(&ZEROS[..n])?;
            pad -= n;
        }
        Ok(())
    }

    fn write_header(&mut self) -> Result<()> {
        let mut h = Vec::with_capacity(self.header_size().min(1 << 26));
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut h, k);
            h.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut h, v);
        }
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for &n in &t.ne {
                h.extend_from_slice(&(n as u64).to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&(t.offset as u64).to_le_bytes());
        }
        self.header_written = true;
        self.write_raw(&h)?;
        self.write_padding()
    }

    /// Writes the data of the next tensor in declared order (all of it, `bytes.len()` must equal its
    /// size), then the padding. Writes the header first if this is the first tensor.
    pub fn write_tensor_data(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.poisoned {
            return Err(GgufError::WriterPoisoned {
                path: self.path.clone(),
            });
        }
        let Some(expected) = self.tensors.get(self.next_tensor) else {
            return Err(match self.tensor_index.contains_key(name) {
                true => GgufError::TensorOrder {
                    expected: "(none: all tensors are written)".into(),
                    got: name.into(),
                },
                false => GgufError::UnknownTensor { name: name.to_string() },
            });
        };
        if expected.name != name {
            return Err(match self.tensor_index.contains_key(name) {
                true => GgufError::TensorOrder {
                    expected: expected.name.clone(),
                    got: name.to_string(),
                },
                false => GgufError::UnknownTensor { name: name.to_string() },
            });
        }
        let expected_size = expected.size;
        if bytes.len() != expected_size {
            return Err(GgufError::TensorSizeMismatch {
                tensor: name.to_string(),
                expected: expected_size,
                got: bytes.len(),
            });
        }
        if !self.header_written {
            self.write_header()?;
        }
        self.write_raw(bytes)?;
        self.write_padding()?;
        self.next_tensor += 1;
        Ok(())
    }

    /// Checks that every tensor was written, flushes and syncs the file, and renames it to the
    /// destination. Returns the file size in bytes.
    pub fn finish(mut self) -> Result<u64> {
        if self.poisoned {
            return Err(GgufError::WriterPoisoned {
                path: self.path.clone(),
            });
        }
        if let Some(t) = self.tensors.get(self.next_tensor) {
            return Err(GgufError::TensorDataMissing { tensor: t.name.clone() });
        }
        if !self.header_written {
            self.write_header()?;
        }
        let planned = self.planned_size();
        if self.written != planned {
            return Err(GgufError::SizeMismatch {
                path: self.path.clone(),
                written: self.written,
                planned,
            });
        }
        let tmp_err = |source| GgufError::Io {
            path: self.tmp_path.clone(),
            source,
        };
        let out = self.out.take().ok_or_else(|| GgufError::WriterPoisoned {
            path: self.path.clone(),
        })?;
        let file = out.into_inner().map_err(|e| tmp_err(e.into_error()))?;
        file.sync_all().map_err(tmp_err)?;
        drop(file);
        std::fs::rename(&self.tmp_path, &self.path).map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.finished = true;
        // Make the rename itself durable where the platform allows; failure here loses nothing written.
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.written)
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Close before removing (required on Windows); errors cannot be reported from drop.
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::Str(s) => put_str(h, s),
        Value::Array(a) => put_array(h, a),
    }
}

fn put_array(h: &mut Vec<u8>, a: &Array) {
    h.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    h.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T: Copy, const N: usize>(h: &mut Vec<u8>, xs: &[T], f: impl Fn(T) -> [u8; N]) {
        for &x in xs {
            h.extend_from_slice(&f(x));
        }
    }
    match a {
        Array::U8(xs) => h.extend_from_slice(xs),
        Array::I8(xs) => each(h, xs, i8::to_le_bytes),
        Array::U16(xs) => each(h, xs, u16::to_le_bytes),
        Array::I16(xs) => each(h, xs, i16::to_le_bytes),
        Array::U32(xs) => each(h, xs, u32::to_le_bytes),
        Array::I32(xs) => each(h, xs, i32::to_le_bytes),
        Array::U64(xs) => each(h, xs, u64::to_le_bytes),
        Array::I64(xs) => each(h, xs, i64::to_le_bytes),
        Array::F32(xs) => each(h, xs, f32::to_le_bytes),
        Array::F64(xs) => each(h, xs, f64::to_le_bytes),
        Array::Bool(xs) => h.extend(xs.iter().map(|&b| u8::from(b))),
        Array::Str(xs) => xs.iter().for_each(|s| put_str(h, s)),
    }
}
