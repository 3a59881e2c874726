//! The model: weights mapped from GGUF and checked against `names::tensor_specs`, and the graphs of the
//! three parts (vision tower, projector, Qwen2) built on the safe ggml layer.

pub mod config;
pub mod kv_cache;
pub mod qwen2;
pub mod vision;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::ggml::{Backend, BackendKind, Context, GgmlError, Tensor, WeightStore};
use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};
use crate::hparams::Hparams;
use crate::int8::PackedWeights;
use crate::names::{self, Role, TensorSpec};
use crate::panels::{PanelType, Panels};

pub use config::ModelMeta;

/// Everything that can be wrong with a model file, named precisely.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}", gguf_message(.path, .source))]
    Gguf { path: String, source: GgufError },
    #[error("missing metadata key '{0}'")]
    MissingKey(&'static str),
    #[error("metadata key '{key}': {detail}")]
    BadKey { key: &'static str, detail: String },
    #[error("the model is not runnable: {0}")]
    Unsupported(String),
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor '{name}' has type {found}, which is not allowed for it ({allowed})")]
    TensorType {
        name: String,
        found: String,
        allowed: String,
    },
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Ggml(#[from] GgmlError),
}

/// "path: error", except that an I/O error already names the path (no "a.gguf: a.gguf: not found").
fn gguf_message(path: &str, source: &GgufError) -> String {
    match source {
        GgufError::Io { path: p, .. } if p.as_os_str() == std::ffi::OsStr::new(path) => source.to_string(),
        _ => format!("{path}: {source}"),
    }
}

/// The matrix types `internvl-convert` writes (`--type` and its per-part overrides). The one list: the
/// converter's `policy::ALLOWED` is this constant.
pub const CONVERT_TYPES: [GgmlType; 10] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
];

/// Types the runtime accepts for quantizable matrices: what the converter writes, plus the K-quants a file
/// made elsewhere (llama.cpp's quantizer) may hold.
static MATRIX_TYPES: [GgmlType; 12] = {
    let mut t = [GgmlType::Q4_K; 12];
    let mut i = 0;
    while i < CONVERT_TYPES.len() {
        t[i] = CONVERT_TYPES[i];
        i += 1;
    }
    t[11] = GgmlType::Q5_K;
    t
};

fn allowed_types(role: Role) -> &'static [GgmlType] {
    match role {
        Role::Matrix | Role::TokenEmbd | Role::Output => &MATRIX_TYPES,
        // Added/multiplied element-wise and normalizations: f32 keeps them exact.
        Role::Norm | Role::Bias | Role::LayerScale | Role::ClassEmbd | Role::PosEmbd => &[GgmlType::F32],
        Role::PatchEmbd => &[GgmlType::F16, GgmlType::F32],
    }
}

fn squeeze(ne: &[usize]) -> Vec<usize> {
    let v: Vec<usize> = ne.iter().copied().filter(|&d| d != 1).collect();
    if v.is_empty() {
        vec![1]
    } else {
        v
    }
}

/// Where the weights live and the graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The GPU when this build has a GPU backend and a device is found, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A GPU through ggml's backend registry (CUDA with `--features cuda`); ops it lacks run on the CPU.
    Gpu,
}

impl Device {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "cuda" | "gpu" => Some(Device::Gpu),
            _ => None,
        }
    }
}

/// A loaded model: hyperparameters, metadata and weights. Shared read-only by any number of sessions.
pub struct Model {
    pub hp: Hparams,
    pub meta: ModelMeta,
    pub(crate) weights: WeightStore,
    /// True when the vision qkv is stored split (llama.cpp mmproj) rather than fused.
    pub(crate) split_qkv: bool,
    /// Where the weights are: CPU (mapped in place) or GPU (copied once).
    pub device: BackendKind,
    /// The text embedding table's type and raw rows (for host-side lookups of input embeddings).
    token_embd: (GgmlType, Arc<GgufFile>, TensorInfo),
    /// Weights copied into ggml's repacked CPU layouts at load: (tensors, bytes).
    pub repacked: (usize, usize),
    /// Weights converted to f32 at load (`WeightLayout::F32Vision`): (tensors, bytes of f32 data).
    pub widened: (usize, usize),
    /// Matrices quantized to int8 panels at load (`WeightLayout::Int8Vision`), by tensor name; the
    /// graphs multiply by these instead of the mapped tensor of the same name.
    int8: HashMap<String, PackedWeights>,
    /// q4_0 and q8_0 matrices rearranged at load into `crate::panels` (the ViT's and the language model's
    /// block matrices and the lm_head in every layout but `Mapped` on a CPU with AVX-512 VNNI; elsewhere
    /// the ViT's only, under `Int8Vision` and `Int8`), by tensor name: used for every product with them,
    /// decoding included.
    panels: HashMap<String, Panels>,
}

/// How weights are held when they stay on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// Matrices of a type for which ggml's CPU backend has a faster, interleaved layout on this CPU (q4_0
    /// on AVX2/AVX-512 and ARM dot-product CPUs, some k-quants) are copied into it at load: its GEMM
    /// kernels read several rows per pass, which is what batched work (the ViT's 1025-token tiles,
    /// prefill) needs. Costs load time and anonymous memory of the same size; the file pages they came
    /// from are released, so resident memory stays about the same. Everything else stays mapped.
    ///
    /// On CPUs with AVX-512 VNNI, q4_0 and q8_0 matrices (the ViT's and the language model's, lm_head
    /// included) go to our own panel layout instead (`crate::panels`: the same bytes, rearranged; the
    /// mapped pages are released), whose kernels decode, prefill and encode images faster than ggml's
    /// (docs/benchmarks.md), with ggml's arithmetic for those types.
    #[default]
    Repacked,
    /// Every weight used in place from the mapped file: no copy, the fastest load.
    Mapped,
    /// `Repacked`, and the vision tower's matrices converted to f32 at load: ggml's f32 GEMM has no
    /// conversion in its inner loop, which makes the ViT faster on CPUs without native f16/bf16
    /// arithmetic, for more memory (those weights take 4 bytes each: +600 MB over an f16 file).
    F32Vision,
    /// `Repacked`, and the vision tower's matrices quantized at load to int8 (one scale per row and group
    /// of 128 inputs, `crate::int8`), multiplied by our AVX-512 VNNI kernel: the fastest ViT on CPUs that
    /// have VNNI (elsewhere a slow portable kernel runs: do not choose it there), with about q8_0's
    /// accuracy (vision cosine 0.99971 to the f32 reference vs 0.99974); 321 MB of int8 weights in
    /// place of the file's vision matrices, whose mapped pages are released. (q4_0 and q8_0 matrices are
    /// not requantized: they go to `crate::panels`, on any CPU.)
    Int8Vision,
    /// `Int8Vision`, and int8 copies (same scheme) of the language model's block matrices for
    /// evaluating batches of at least `INT8_MIN_TOKENS` tokens (prefill, where the products are large
    /// GEMMs); decoding keeps the file's weights. For a faster prefill and time to first token from an
    /// f16 or f32 file, for ~380 MB more memory (the copies) and about q8_0's accuracy in the prefill's
    /// logits. (q4_0 and q8_0 matrices are in `crate::panels` instead, which serve prefill without copies.)
    Int8,
}

/// Fewest tokens in one evaluation for which the language model uses its int8 copies (`WeightLayout::Int8`):
/// below it the products are thin and ggml's kernels for the file's type read fewer bytes.
pub const INT8_MIN_TOKENS: usize = 16;

impl WeightLayout {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "repacked" | "repack" => Some(WeightLayout::Repacked),
            "mapped" | "mmap" => Some(WeightLayout::Mapped),
            "f32-vision" | "vision-f32" => Some(WeightLayout::F32Vision),
            "int8-vision" | "vision-int8" => Some(WeightLayout::Int8Vision),
            "int8" => Some(WeightLayout::Int8),
            _ => None,
        }
    }
}

impl Model {
    /// Loads our single-file GGUF, or a llama.cpp pair (`paths` = [text, mmproj]). Every required key and
    /// tensor, with its shape and type, is checked before anything is handed to ggml.
    pub fn load(paths: &[&Path]) -> Result<Model, ModelError> {
        Self::load_on(paths, Device::Cpu)
    }

    /// Like `load`, on a chosen device. On a GPU the weights are copied into device memory once.
    pub fn load_on(paths: &[&Path], device: Device) -> Result<Model, ModelError> {
        Self::load_with(paths, device, WeightLayout::default())
    }

    /// Like `load_on`, choosing how CPU weights are held (ignored when they go to a GPU).
    pub fn load_with(paths: &[&Path], device: Device, layout: WeightLayout) -> Result<Model, ModelError> {
        if paths.is_empty() || paths.len() > 2 {
            return Err(ModelError::Input(format!(
                "expected 1 or 2 GGUF files, got {}",
                paths.len()
            )));
        }
        let mut files = Vec::new();
        for p in paths {
            let f = GgufFile::open(p).map_err(|e| ModelError::Gguf {
                path: p.display().to_string(),
                source: e,
            })?;
            files.push(Arc::new(f));
        }
        let mut model = Self::from_files(files.clone())?;
        let gpu = match device {
            Device::Cpu => None,
            Device::Gpu => Some(Backend::gpu()?),
            Device::Auto => Backend::gpu().ok(),
        };
        if let Some(gpu) = gpu {
            // The buffer outlives the backend object used to allocate it (it belongs to the device).
            model.weights = model.weights.copy_to(&gpu)?;
            model.device = BackendKind::Gpu;
        } else if layout != WeightLayout::Mapped {
            // The mapped pages of a weight copied elsewhere are not read again.
            let release = |name: &str| {
                for f in &files {
                    if let Some(info) = f.tensor(name) {
                        f.release_pages(info);
                    }
                }
            };
            if layout == WeightLayout::F32Vision {
                model.widened = model.weights.widen_cpu(names::is_vision_block_weight, release)?;
            }
            // q4_0 and q8_0 matrices go to our panels (same bytes, faster than ggml for every product on
            // CPUs with AVX-512 VNNI; elsewhere only when an int8 layout asks for our kernels).
            // Without VNNI the int8 layouts put only the vision matrices there (decoding stays on ggml).
            let int8 = matches!(layout, WeightLayout::Int8Vision | WeightLayout::Int8);
            let vnni = crate::panels::available();
            if int8 || vnni {
                let text = |name: &str| names::is_text_block_matrix(name) || name == names::output();
                model.pack_panels(
                    |name| names::is_vision_block_weight(name) || (vnni && text(name)),
                    release,
                )?;
            }
            if int8 {
                model.pack_int8(names::is_vision_block_weight, release)?;
            }
            if layout == WeightLayout::Int8 {
                // Copies: decoding still reads the file's weights, so their pages stay.
                model.pack_int8(names::is_text_block_matrix, |_| {})?;
            }
            let token_embd = names::token_embd();
            let (vision_int8, panels) = (&model.int8, &model.panels);
            model.repacked = model.weights.repack_cpu(
                |name| {
                    name != token_embd
                        && !panels.contains_key(name)
                        && !(names::is_vision_block_weight(name) && vision_int8.contains_key(name))
                },
                release,
            )?;
        }
        Ok(model)
    }

    pub fn from_files(files: Vec<Arc<GgufFile>>) -> Result<Model, ModelError> {
        let refs: Vec<&GgufFile> = files.iter().map(|f| f.as_ref()).collect();
        let hp = config::hparams_from_gguf(&refs)?;
        let meta = config::meta_from_gguf(&refs)?;

        // Where each tensor lives.
        let mut index: HashMap<&str, (usize, &TensorInfo)> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for t in f.tensors() {
                index.insert(t.name.as_str(), (i, t));
            }
        }
        let specs = names::tensor_specs(&hp);
        let mut chosen: Vec<Vec<TensorInfo>> = vec![Vec::new(); files.len()];
        let mut split_qkv = false;
        let mut check = |spec: &TensorSpec, name: &str, expected: &[usize]| -> Result<(), ModelError> {
            let (fi, info) = index
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
            if squeeze(&info.ne) != squeeze(expected) {
                return Err(ModelError::TensorShape {
                    name: name.into(),
                    found: info.ne.clone(),
                    expected: expected.to_vec(),
                });
            }
            let allowed = allowed_types(spec.role);
            if !allowed.contains(&info.ty) {
                let list: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
                return Err(ModelError::TensorType {
                    name: name.into(),
                    found: info.ty.name().into(),
                    allowed: list.join(", "),
                });
            }
            chosen[*fi].push((*info).clone());
            Ok(())
        };
        for spec in &specs {
            if spec.gguf_name.contains(".attn_qkv.") && !index.contains_key(spec.gguf_name.as_str()) {
                // llama.cpp's mmproj splits the fused qkv into q, k, v of a third each.
                split_qkv = true;
                let mut ne = spec.ne.clone();
                let last = ne.len() - 1;
                ne[last] /= 3;
                for part in ["attn_q", "attn_k", "attn_v"] {
                    check(spec, &spec.gguf_name.replace("attn_qkv", part), &ne)?;
                }
            } else {
                check(spec, &spec.gguf_name, &spec.ne)?;
            }
        }
        let te = index
            .get(names::token_embd().as_str())
            .ok_or_else(|| ModelError::MissingTensor(names::token_embd()))?;
        let token_embd = (te.1.ty, files[te.0].clone(), te.1.clone());
        let weights = WeightStore::from_mapped(&files.iter().cloned().zip(chosen).collect::<Vec<_>>())?;
        Ok(Model {
            hp,
            meta,
            weights,
            split_qkv,
            device: BackendKind::Cpu,
            token_embd,
            repacked: (0, 0),
            widened: (0, 0),
            int8: HashMap::new(),
            panels: HashMap::new(),
        })
    }

    /// A weight tensor (validated at load, so a miss is an internal error).
    pub(crate) fn w(&self, name: &str) -> Result<Tensor<'_>, ModelError> {
        self.weights
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// Quantizes each matrix that `pick` selects into int8 panels (from its mapped data, dequantized),
    /// except those already in `crate::panels`.
    fn pack_int8(&mut self, pick: impl Fn(&str) -> bool, release: impl FnMut(&str)) -> Result<(), ModelError> {
        let done = self.build_from_matrices(
            |name, _| pick(name) && !self.panels.contains_key(name),
            |ty, bytes, k, n| Ok(PackedWeights::pack(&crate::ggml::dequantize(ty, bytes, k * n)?, n, k)),
            release,
        )?;
        self.int8.extend(done);
        Ok(())
    }

    /// Rearranges each q4_0 or q8_0 matrix that `pick` selects into `crate::panels`.
    fn pack_panels(&mut self, pick: impl Fn(&str) -> bool, release: impl FnMut(&str)) -> Result<(), ModelError> {
        let panel_type = |ty| match ty {
            GgmlType::Q4_0 => Some(PanelType::Q4_0),
            GgmlType::Q8_0 => Some(PanelType::Q8_0),
            _ => None,
        };
        let done = self.build_from_matrices(
            |name, ty| pick(name) && panel_type(ty).is_some(),
            |ty, bytes, k, n| {
                let ty = panel_type(ty).ok_or_else(|| ModelError::Unsupported(format!("panels of {}", ty.name())))?;
                Panels::new(ty, bytes, n, k).map_err(|e| ModelError::Unsupported(e.to_string()))
            },
            release,
        )?;
        self.panels.extend(done);
        Ok(())
    }

    /// Builds a `P` from each matrix (not a vector: norm weights stay as they are) that `pick` selects by
    /// name and type, with `build(type, data, inputs, outputs)`, a few matrices at a time in parallel;
    /// `release` is told each name as soon as its matrix is built, so that its mapped pages can go before
    /// the next ones are read (the peak resident memory holds what was built and a few source matrices,
    /// not every source page as well).
    fn build_from_matrices<P: Send>(
        &self,
        pick: impl Fn(&str, GgmlType) -> bool,
        build: impl Fn(GgmlType, &[u8], usize, usize) -> Result<P, ModelError> + Sync,
        mut release: impl FnMut(&str),
    ) -> Result<Vec<(String, P)>, ModelError> {
        use rayon::prelude::*;
        let mut jobs = Vec::new();
        for name in self.weights.names() {
            let t = self.w(name)?;
            let ne = t.ne();
            if !pick(name, t.ty()) || ne[2] != 1 || ne[3] != 1 || ne[1] == 1 {
                continue;
            }
            jobs.push((name.to_owned(), t.ty(), t.host_bytes()?, ne[0] as usize, ne[1] as usize));
        }
        jobs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut done = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(2 * rayon::current_num_threads()) {
            let built: Vec<(String, P)> = chunk
                .par_iter()
                .map(|(name, ty, bytes, k, n)| {
                    let p = build(*ty, bytes, *k, *n).map_err(|e| match e {
                        ModelError::Unsupported(m) => ModelError::Unsupported(format!("{name}: {m}")),
                        e => e,
                    })?;
                    Ok((name.clone(), p))
                })
                .collect::<Result<_, ModelError>>()?;
            for (name, p) in built {
                release(&name);
                done.push((name, p));
            }
        }
        Ok(done)
    }

    /// Matrices held as q4_0/q8_0 panels: (tensors, bytes).
    pub fn panels_packed(&self) -> (usize, usize) {
        (self.panels.len(), self.panels.values().map(Panels::bytes).sum())
    }

    /// Matrices held as int8 panels (`WeightLayout::Int8Vision`): (tensors, bytes).
    pub fn int8_packed(&self) -> (usize, usize) {
        (self.int8.len(), self.int8.values().map(PackedWeights::bytes).sum())
    }

    /// `x·Wᵀ (+ b)` for the Linear layer whose weight is called `w` and bias `b`, over `n_tokens` tokens:
    /// by our panel kernels when the weight was laid out for them at load (any batch), by our int8
    /// kernel when it was packed for it and the batch is at least `INT8_MIN_TOKENS`, else by ggml's
    /// product of the weight tensor.
    pub(crate) fn linear<'a>(
        &'a self,
        ctx: &'a Context,
        x: Tensor<'a>,
        w: &str,
        b: Option<&str>,
        n_tokens: usize,
    ) -> Result<Tensor<'a>, ModelError> {
        let bias = b.map(|b| self.w(b)).transpose()?;
        enum Own<'m> {
            Panels(&'m Panels),
            Int8(&'m PackedWeights),
        }
        let which = match (self.panels.get(w), self.int8.get(w)) {
            (Some(p), _) => Own::Panels(p),
            (None, Some(p)) if n_tokens >= INT8_MIN_TOKENS => Own::Int8(p),
            _ => return Ok(ctx.linear(x, self.w(w)?, bias)?),
        };
        let x = if x.is_contiguous() { x } else { ctx.cont(x)? };
        // Our nodes add an f32 bias themselves; any other goes through ggml's add.
        let own = |b| match which {
            Own::Panels(p) => ctx.linear_panels(x, p, b),
            Own::Int8(p) => ctx.linear_int8(x, p, b),
        };
        match bias {
            Some(b) if b.ty() == GgmlType::F32 => Ok(own(Some(b))?),
            Some(b) => Ok(ctx.add(own(None)?, b)?),
            None => Ok(own(None)?),
        }
    }

    /// Bytes of weights (mapped in place).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// The input embedding of each token id, looked up on the host (one row of the possibly quantized
    /// table each), into `out` (`ids.len() * n_embd`).
    pub fn token_embeddings(&self, ids: &[u32], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let (ty, file, info) = &self.token_embd;
        let n_embd = self.hp.llm.n_embd;
        let row = ty
            .row_size(n_embd)
            .ok_or_else(|| ModelError::Unsupported("token_embd row size".into()))?;
        let data = file.tensor_data(info);
        for &id in ids {
            let id = id as usize;
            if id >= self.hp.llm.n_vocab {
                return Err(ModelError::Input(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.hp.llm.n_vocab
                )));
            }
            let bytes = data
                .get(id * row..(id + 1) * row)
                .ok_or_else(|| ModelError::Input(format!("token id {id} past the table")))?;
            out.extend(crate::ggml::dequantize(*ty, bytes, n_embd)?);
        }
        Ok(())
    }
}
