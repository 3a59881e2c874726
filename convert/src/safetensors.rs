//! safetensors: a hostile-input-safe reader (one file or an index of shards) that reads tensors with
//! positioned reads, and a streaming writer for synthetic checkpoints.
//!
//! Format: 8-byte little-endian header length N, N bytes of JSON
//! `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
//! then the byte buffer; offsets are relative to the buffer start (8 + N).
//!
//! Tensors are read with `FileExt::read_exact_at`, never mmapped: pages of a mapped file count toward
//! RSS once touched, and the converter must stay under 1 GiB while reading a 1.9 GB checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The largest header we accept (the safetensors library uses the same 100 MB limit); the real
/// checkpoint's header is about 70 KB.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, thiserror::Error)]
pub enum StError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found")]
    NoWeights { dir: PathBuf },
    #[error("{path}: file is {len} bytes, too short for a safetensors header (truncated?)")]
    TooShort { path: PathBuf, len: u64 },
    #[error("{path}: header length {header_len} is absurd (file is {file_len} bytes, limit {MAX_HEADER_LEN})")]
    HeaderLength {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },
    #[error("{path}: header is not valid JSON: {reason}")]
    HeaderJson { path: PathBuf, reason: String },
    #[error("{path}: tensor {tensor}: {reason}")]
    Entry {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: tensors {a} and {b} overlap in the data buffer (bytes {a_range:?} and {b_range:?})")]
    Overlap {
        path: PathBuf,
        a: String,
        b: String,
        a_range: (u64, u64),
        b_range: (u64, u64),
    },
    #[error("{path}: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("tensor {tensor} has dtype {dtype}; only BF16, F16 and F32 can be converted")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("tensor {tensor}: elements {first} + {count} are outside its {n} elements")]
    Range {
        tensor: String,
        first: usize,
        count: usize,
        n: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StError + '_ {
    move |source| StError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Element types of the safetensors format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        use Dtype::*;
        Some(match s {
            "BOOL" => Bool,
            "U8" => U8,
            "I8" => I8,
            "F8_E5M2" => F8E5M2,
            "F8_E4M3" => F8E4M3,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "F64" => F64,
            "I64" => I64,
            "U64" => U64,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            F8E5M2 => "F8_E5M2",
            F8E4M3 => "F8_E4M3",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }
    pub fn size(self) -> usize {
        use Dtype::*;
        match self {
            Bool | U8 | I8 | F8E5M2 | F8E4M3 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }
    /// Whether `read_f32_range` can convert it.
    pub fn is_float_source(self) -> bool {
        matches!(self, Dtype::BF16 | Dtype::F16 | Dtype::F32)
    }
}

/// One tensor of a checkpoint: where its bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into `Checkpoint::files`.
    pub file: usize,
    /// Absolute byte offset of the data in that file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    file: File,
}

/// An opened checkpoint: one safetensors file or the shards of an index.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<SourceFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

/// Parses and validates one safetensors header; returns the tensors (file index `file_idx`).
fn parse_file(path: &Path, file: &File, file_idx: usize) -> Result<Vec<TensorInfo>, StError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    if file_len < 8 {
        return Err(StError::TooShort {
            path: path.to_path_buf(),
            len: file_len,
        });
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0).map_err(io_err(path))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN || header_len > file_len - 8 || header_len < 2 {
        return Err(StError::HeaderLength {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    // header_len <= 100 MiB, so the cast cannot truncate.
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8).map_err(io_err(path))?;
    let json: Value = serde_json::from_slice(&header).map_err(|e| StError::HeaderJson {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let Value::Object(map) = json else {
        return Err(StError::HeaderJson {
            path: path.to_path_buf(),
            reason: "the header is not a JSON object".into(),
        });
    };
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut out = Vec::with_capacity(map.len());
    for (name, entry) in &map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |reason: String| StError::Entry {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let dtype_s = entry
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string \"dtype\"".into()))?;
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| bad(format!("unknown dtype {dtype_s:?}")))?;
        let shape_v = entry
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no array \"shape\"".into()))?;
        let mut shape = Vec::with_capacity(shape_v.len());
        for d in shape_v {
            let d = d
                .as_u64()
                .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
            shape.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large")))?);
        }
        let offs = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("no two-element \"data_offsets\"".into()))?;
        let (Some(begin), Some(end)) = (offs[0].as_u64(), offs[1].as_u64()) else {
            return Err(bad("data_offsets are not non-negative integers".into()));
        };
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(bad(format!(
                "data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes; file truncated?)"
            )));
        }
        let n_el = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let want = n_el
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if want != end - begin {
            return Err(bad(format!(
                "shape {shape:?} of {dtype_s} needs {want} bytes but data_offsets [{begin}, {end}] hold {}",
                end - begin
            )));
        }
        out.push(TensorInfo {
            name: name.clone(),
            dtype,
            shape,
            file: file_idx,
            offset: data_start + begin,
            nbytes: end - begin,
        });
    }
    // Overlapping ranges would let two tensors alias the same bytes: a corrupt or hostile file.
    let mut ranges: Vec<&TensorInfo> = out.iter().filter(|t| t.nbytes > 0).collect();
    ranges.sort_by_key(|t| t.offset);
    for w in ranges.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.offset < a.offset + a.nbytes {
            return Err(StError::Overlap {
                path: path.to_path_buf(),
                a: a.name.clone(),
                b: b.name.clone(),
                a_range: (a.offset - data_start, a.offset - data_start + a.nbytes),
                b_range: (b.offset - data_start, b.offset - data_start + b.nbytes),
            });
        }
    }
    Ok(out)
}

/// A shard name from an index must be a plain file name in the checkpoint directory.
fn valid_shard_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or else the shards listed in `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint, StError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            Checkpoint::open_files(&[single])
        } else if index.is_file() {
            Checkpoint::open_index(&index)
        } else {
            Err(StError::NoWeights { dir: dir.to_path_buf() })
        }
    }

    /// Opens the shards of an index and checks that the index's weight map and the shards agree.
    pub fn open_index(index: &Path) -> Result<Checkpoint, StError> {
        let text = std::fs::read_to_string(index).map_err(io_err(index))?;
        let bad = |reason: String| StError::Index {
            path: index.to_path_buf(),
            reason,
        };
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no object \"weight_map\"".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<String> = Vec::new();
        let mut expected: HashMap<&str, &str> = HashMap::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a string")))?;
            if !valid_shard_name(shard) {
                return Err(bad(format!(
                    "weight_map[{tensor:?}] = {shard:?} is not a plain file name"
                )));
            }
            if !shard_names.iter().any(|s| s == shard) {
                shard_names.push(shard.to_string());
            }
            expected.insert(tensor.as_str(), shard);
        }
        if shard_names.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        shard_names.sort();
        let paths: Vec<PathBuf> = shard_names.iter().map(|s| dir.join(s)).collect();
        let ck = Checkpoint::open_files(&paths)?;
        for t in ck.tensors.values() {
            let shard = &shard_names[t.file];
            match expected.get(t.name.as_str()) {
                Some(s) if *s == shard.as_str() => {}
                Some(s) => return Err(bad(format!("tensor {} is in {shard} but the index says {s}", t.name))),
                None => return Err(bad(format!("tensor {} is in {shard} but not in the index", t.name))),
            }
        }
        for (tensor, shard) in &expected {
            if !ck.tensors.contains_key(*tensor) {
                return Err(bad(format!(
                    "the index lists tensor {tensor} in {shard}, which does not hold it"
                )));
            }
        }
        Ok(ck)
    }

    /// Opens one or more safetensors files as one checkpoint (tensor names must be unique across them).
    pub fn open_files(paths: &[PathBuf]) -> Result<Checkpoint, StError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(io_err(path))?;
            for t in parse_file(path, &file, i)? {
                if let Some(prev) = tensors.get(&t.name) {
                    let prev: &TensorInfo = prev;
                    let other = &paths[prev.file];
                    return Err(StError::Entry {
                        path: path.clone(),
                        tensor: t.name.clone(),
                        reason: format!("also present in {}", other.display()),
                    });
                }
                tensors.insert(t.name.clone(), t);
            }
            files.push(SourceFile {
                path: path.clone(),
                file,
            });
        }
        Ok(Checkpoint { files, tensors })
    }

    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The files the weights were read from, in shard order.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Reads elements `first..first + count` of a tensor (flattened in storage order) as f32 into `out`
    /// (resized). `scratch` holds the raw bytes and is reused between calls.
    pub fn read_f32_range(
        &self,
        t: &TensorInfo,
        first: usize,
        count: usize,
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<(), StError> {
        let n = t.n_elements();
        let range_err = || StError::Range {
            tensor: t.name.clone(),
            first,
            count,
            n,
        };
        match first.checked_add(count) {
            Some(end) if end <= n => {}
            _ => return Err(range_err()),
        }
        if !t.dtype.is_float_source() {
            return Err(StError::UnsupportedDtype {
                tensor: t.name.clone(),
                dtype: t.dtype.name().into(),
            });
        }
        let es = t.dtype.size();
        let src = self.files.get(t.file).ok_or_else(range_err)?;
        scratch.resize(count * es, 0);
        src.file
            .read_exact_at(scratch, t.offset + (first * es) as u64)
            .map_err(io_err(&src.path))?;
        out.resize(count, 0.0);
        match t.dtype {
            Dtype::BF16 => {
                for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
            }
            Dtype::F16 => {
                for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Dtype::F32 => {
                for (o, b) in out.iter_mut().zip(scratch.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            _ => {
                return Err(StError::UnsupportedDtype {
                    tensor: t.name.clone(),
                    dtype: t.dtype.name().into(),
                })
            }
        }
        Ok(())
    }

    /// The whole tensor as f32 (tests and small tensors only).
    pub fn read_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, StError> {
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        self.read_f32_range(t, 0, t.n_elements(), &mut scratch, &mut out)?;
        Ok(out)
    }
}

/// sha256 of a file by sequential reads (1 MiB buffer: no mapping, so the page cache is not our RSS).
/// `should_stop` is polled between reads so Ctrl-C stays responsive.
pub fn sha256_file(path: &Path, should_stop: &dyn Fn() -> bool) -> Result<Option<String>, StError> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if should_stop() {
            return Ok(None);
        }
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest = h.finalize();
    Ok(Some(digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Streaming writer of one BF16 safetensors file: the header is computed from the shapes up front, then
/// each tensor's data is appended in order. Written to a dot-temp file and renamed by `finish`.
pub struct BF16Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    shapes: Vec<(String, Vec<usize>)>,
    next: usize,
    written_in_current: usize,
}

impl BF16Writer {
    pub fn create(path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<BF16Writer, StError> {
        // Keys in sorted order at every level, whatever serde_json's `preserve_order` feature (which another
        // crate in the build may turn on): the same checkpoint must give the same bytes, since the test
        // goldens are tied to the file's sha256. A BTreeMap sorts the top level; each entry's keys are
        // inserted in sorted order.
        let mut header: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), Value::String("pt".into()));
        header.insert("__metadata__".into(), Value::Object(meta));
        let mut off = 0u64;
        for (name, shape) in tensors {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            let end = off + 2 * n;
            let mut entry = serde_json::Map::new();
            entry.insert("data_offsets".into(), serde_json::json!([off, end]));
            entry.insert("dtype".into(), Value::String("BF16".into()));
            entry.insert("shape".into(), serde_json::json!(shape));
            header.insert(name.clone(), Value::Object(entry));
            off = end;
        }
        let mut bytes = serde_json::to_vec(&header).map_err(|e| StError::HeaderJson {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // safetensors pads the header with spaces to a multiple of 8 so the data is aligned.
        while bytes.len() % 8 != 0 {
            bytes.push(b' ');
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&(bytes.len() as u64).to_le_bytes())
            .map_err(io_err(&tmp))?;
        out.write_all(&bytes).map_err(io_err(&tmp))?;
        Ok(BF16Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            shapes: tensors.to_vec(),
            next: 0,
            written_in_current: 0,
        })
    }

    /// Appends values of the current tensor (rounded to bf16, nearest-even).
    pub fn write_values(&mut self, values: &[f32]) -> Result<(), StError> {
        let bits: Vec<u16> = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        self.write_bf16_bits(&bits)
    }

    /// Appends bf16 values (raw bits) of the current tensor; moves to the next tensor once this one is full.
    pub fn write_bf16_bits(&mut self, bits: &[u16]) -> Result<(), StError> {
        let Some((name, shape)) = self.shapes.get(self.next) else {
            return Err(StError::Entry {
                path: self.path.clone(),
                tensor: String::new(),
                reason: "more data than tensors".into(),
            });
        };
        let n: usize = shape.iter().product();
        if self.written_in_current + bits.len() > n {
            return Err(StError::Entry {
                path: self.path.clone(),
                tensor: name.clone(),
                reason: "more data than its shape".into(),
            });
        }
        let mut bytes = Vec::with_capacity(bits.len() * 2);
        for &b in bits {
            bytes.extend_from_slice(&b.to_le_bytes());
        }
        let Some(out) = self.out.as_mut() else {
            return Err(StError::Entry {
                path: self.path.clone(),
                tensor: name.clone(),
                reason: "writer already finished".into(),
            });
        };
        out.write_all(&bytes).map_err(io_err(&self.tmp))?;
        self.written_in_current += bits.len();
        // Zero-element tensors are complete at once; skip them too.
        while let Some((_, shape)) = self.shapes.get(self.next) {
            let n: usize = shape.iter().product();
            if self.written_in_current < n {
                break;
            }
            self.next += 1;
            self.written_in_current = 0;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), StError> {
        if self.next != self.shapes.len() {
            let name = self.shapes.get(self.next).map(|s| s.0.clone()).unwrap_or_default();
            return Err(StError::Entry {
                path: self.path.clone(),
                tensor: name,
                reason: "data not written".into(),
            });
        }
        if let Some(out) = self.out.take() {
            let f = out.into_inner().map_err(|e| StError::Io {
                path: self.tmp.clone(),
                source: e.into_error(),
            })?;
            f.sync_all().map_err(io_err(&self.tmp))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        Ok(())
    }
}

impl Drop for BF16Writer {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Not finished: remove the partial temp file.
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_raw(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let p = dir.join("model.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn writer_reader_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let shapes = vec![("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])];
        let mut w = BF16Writer::create(&p, &shapes).unwrap();
        w.write_values(&[1.0, 2.0, 3.0]).unwrap();
        w.write_values(&[4.0, 5.0, 6.5]).unwrap();
        w.write_values(&[-1.0, 0.5, 0.25, 1e-3]).unwrap();
        w.finish().unwrap();
        let ck = Checkpoint::open_dir(dir.path()).unwrap();
        let a = ck.get("a").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(ck.read_f32(a).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let b = ck.get("b").unwrap();
        let vb = ck.read_f32(b).unwrap();
        assert_eq!(vb[..3], [-1.0, 0.5, 0.25]);
        assert_eq!(vb[3], half::bf16::from_f32(1e-3).to_f32());
        let mut s = Vec::new();
        let mut o = Vec::new();
        ck.read_f32_range(a, 3, 3, &mut s, &mut o).unwrap();
        assert_eq!(o, vec![4.0, 5.0, 6.5]);
        assert!(ck.read_f32_range(a, 3, 4, &mut s, &mut o).is_err());
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let mut w = BF16Writer::create(&p, &[("a".to_string(), vec![4])]).unwrap();
        w.write_values(&[1.0]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn rejects_corrupt_headers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Too short.
        std::fs::write(d.join("model.safetensors"), [1u8, 2, 3]).unwrap();
        assert!(matches!(Checkpoint::open_dir(d), Err(StError::TooShort { .. })));
        // Absurd header length.
        std::fs::write(d.join("model.safetensors"), u64::MAX.to_le_bytes()).unwrap();
        assert!(matches!(Checkpoint::open_dir(d), Err(StError::HeaderLength { .. })));
        // Bad JSON.
        write_raw(d, "{\"a\": ", &[]);
        assert!(matches!(Checkpoint::open_dir(d), Err(StError::HeaderJson { .. })));
        // Offsets past the end.
        write_raw(d, r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}"#, &[0; 4]);
        let e = Checkpoint::open_dir(d).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        // Shape and byte count disagree.
        write_raw(d, r#"{"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]);
        let e = Checkpoint::open_dir(d).unwrap_err();
        assert!(e.to_string().contains("needs 6 bytes"), "{e}");
        // Overlap.
        write_raw(
            d,
            r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[4,12]}}"#,
            &[0; 12],
        );
        assert!(matches!(Checkpoint::open_dir(d), Err(StError::Overlap { .. })));
        // Unknown dtype.
        write_raw(d, r#"{"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}}"#, &[0; 4]);
        assert!(Checkpoint::open_dir(d)
            .unwrap_err()
            .to_string()
            .contains("unknown dtype"));
        // Not an object.
        write_raw(d, "[1, 2]", &[]);
        assert!(matches!(Checkpoint::open_dir(d), Err(StError::HeaderJson { .. })));
        // Integer dtype is parsed but cannot be read as floats.
        write_raw(d, r#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]);
        let ck = Checkpoint::open_dir(d).unwrap();
        let a = ck.get("a").unwrap();
        assert!(matches!(ck.read_f32(a), Err(StError::UnsupportedDtype { .. })));
    }

    #[test]
    fn index_must_agree_with_shards() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = BF16Writer::create(&d.join("s1.safetensors"), &[("a".into(), vec![2])]).unwrap();
        w.write_values(&[1.0, 2.0]).unwrap();
        w.finish().unwrap();
        let mut w = BF16Writer::create(&d.join("s2.safetensors"), &[("b".into(), vec![1])]).unwrap();
        w.write_values(&[3.0]).unwrap();
        w.finish().unwrap();
        let idx = d.join(INDEX_FILE);
        std::fs::write(
            &idx,
            r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .unwrap();
        let ck = Checkpoint::open_dir(d).unwrap();
        assert_eq!(ck.read_f32(ck.get("b").unwrap()).unwrap(), vec![3.0]);
        std::fs::write(&idx, r#"{"weight_map":{"a":"s2.safetensors","b":"s1.safetensors"}}"#).unwrap();
        assert!(Checkpoint::open_dir(d).unwrap_err().to_string().contains("index says"));
        std::fs::write(&idx, r#"{"weight_map":{"a":"../s1.safetensors"}}"#).unwrap();
        assert!(Checkpoint::open_dir(d)
            .unwrap_err()
            .to_string()
            .contains("plain file name"));
        std::fs::write(
            &idx,
            r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}}"#,
        )
        .unwrap();
        assert!(Checkpoint::open_dir(d)
            .unwrap_err()
            .to_string()
            .contains("does not hold"));
    }
}
