//! The model: weights mapped from GGUF, checked against `names::tensor_specs` and resolved once at load into
//! typed structs (`vision::VisionWeights`, `projector::ProjectorWeights`, `llm::LanguageModel`) whose
//! `linear::Linear`s record how each matrix is multiplied; and the graphs of the three parts built over them
//! on the safe ggml layer. A second language model is one file beside `qwen2.rs` (see `llm`).

pub mod config;
pub mod hparams;
pub mod kv_cache;
pub mod linear;
pub mod llm;
pub mod names;
pub mod projector;
pub mod qwen2;
pub mod vision;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::ggml::{Backend, BackendKind, GgmlError, Tensor, WeightStore};
use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};
use crate::kernels::int8::PackedWeights;
use crate::kernels::panels::{PanelType, Panels};
use crate::kernels::{Choice, Kernels};
use hparams::Hparams;
use names::{Part, Role, TensorName, TensorSpec};

pub use config::ModelMeta;
pub use linear::{Linear, INT8_MIN_TOKENS};

use linear::{Packed, Resolver};
use llm::{LanguageModel, LlmArch};
use projector::ProjectorWeights;
use vision::VisionWeights;

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

fn allowed_types(role: Role) -> &'static [GgmlType] {
    match role {
        Role::Matrix | Role::TokenEmbd | Role::Output => &crate::gguf::MATRIX_TYPES,
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

/// A loaded model's weights, typed per part, with its hyperparameters and metadata: what the graphs read.
/// Shared read-only by any number of sessions. (`engine::Model` is the user's model: these weights, the
/// tokenizer and the prompt settings.)
pub struct Weights {
    pub hp: Hparams,
    pub meta: ModelMeta,
    pub(crate) weights: WeightStore,
    /// The weights of the three parts, resolved from `weights` at load (what the graphs read).
    pub(crate) vision: VisionWeights,
    pub(crate) projector: ProjectorWeights,
    pub(crate) llm: LanguageModel,
    /// True when the vision qkv is stored split (llama.cpp mmproj) rather than fused.
    split_qkv: bool,
    /// Where the weights are: CPU (mapped in place) or GPU (copied once).
    pub device: BackendKind,
    /// The text embedding table's type and raw rows (for host-side lookups of input embeddings).
    token_embd: (GgmlType, Arc<GgufFile>, TensorInfo),
    /// Weights copied into ggml's repacked CPU layouts at load: (tensors, bytes).
    pub repacked: (usize, usize),
    /// Weights converted to f32 at load (`WeightLayout::F32Vision`): (tensors, bytes of f32 data).
    pub widened: (usize, usize),
    /// Matrices quantized to int8 panels at load (`WeightLayout::Int8Vision`, `Int8`): (tensors, bytes).
    /// Their `Linear`s multiply by these instead of the mapped tensor.
    int8: (usize, usize),
    /// q4_0 and q8_0 matrices rearranged at load into `crate::kernels::panels` (the ViT's and the language
    /// model's block matrices and the lm_head in every layout but `Mapped` where `Choice::panels`; elsewhere the ViT's only, under `Int8Vision` and `Int8`): (tensors, bytes). Their
    /// `Linear`s use them for every product, decoding included.
    panels: (usize, usize),
    /// Which of our kernels run, and with which instruction set (`Kernels` resolved once at load).
    pub kernels: Choice,
}

/// What a weight is (from its `TensorSpec`), to pick the weights a layout lays out at load.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: TensorName,
    part: Part,
    role: Role,
    layer: Option<usize>,
}

impl Kind {
    /// A weight (matrix, norm or layer-scale weight; not a bias) of a vision block.
    fn vision_block_weight(&self) -> bool {
        self.part == Part::Vision && self.layer.is_some() && !self.name.pattern().ends_with(".bias")
    }
    /// A matrix of a language-model block (not the lm_head, not a norm).
    fn text_block_matrix(&self) -> bool {
        self.part == Part::Llm && self.layer.is_some() && self.role == Role::Matrix
    }
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
    /// On CPUs with AVX-512 VNNI or AVX2 (`Choice::panels`), q4_0 and q8_0 matrices (the ViT's and the language model's, lm_head
    /// included) go to our own panel layout instead (`crate::kernels::panels`: the same bytes, rearranged; the
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
    /// of 128 inputs, `crate::kernels::int8`), multiplied by our AVX-512 VNNI or AVX2 kernel: the fastest ViT on
    /// CPUs that have VNNI (on AVX2 not measurably faster than ggml's f16 product in one loaded run; elsewhere
    /// a slow portable kernel runs: do not choose it there), with about q8_0's
    /// accuracy (vision cosine 0.99971 to the f32 reference vs 0.99974); 321 MB of int8 weights in
    /// place of the file's vision matrices, whose mapped pages are released. (q4_0 and q8_0 matrices are
    /// not requantized: they go to `crate::kernels::panels`, on any CPU.)
    Int8Vision,
    /// `Int8Vision`, and int8 copies (same scheme) of the language model's block matrices for
    /// evaluating batches of at least `INT8_MIN_TOKENS` tokens (prefill, where the products are large
    /// GEMMs); decoding keeps the file's weights. For a faster prefill and time to first token from an
    /// f16 or f32 file, for ~380 MB more memory (the copies) and about q8_0's accuracy in the prefill's
    /// logits. (q4_0 and q8_0 matrices are in `crate::kernels::panels` instead, which serve prefill without copies.)
    Int8,
}

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

impl Weights {
    /// Loads our single-file GGUF, or a llama.cpp pair (`paths` = [text, mmproj]). Every required key and
    /// tensor, with its shape and type, is checked before anything is handed to ggml.
    pub fn load(paths: &[&Path]) -> Result<Weights, ModelError> {
        Self::load_on(paths, Device::Cpu)
    }

    /// Like `load`, on a chosen device. On a GPU the weights are copied into device memory once.
    pub fn load_on(paths: &[&Path], device: Device) -> Result<Weights, ModelError> {
        Self::load_with(paths, device, WeightLayout::default())
    }

    /// Like `load_on`, choosing how CPU weights are held (ignored when they go to a GPU).
    pub fn load_with(paths: &[&Path], device: Device, layout: WeightLayout) -> Result<Weights, ModelError> {
        Self::load_with_kernels(paths, device, layout, Kernels::Auto)
    }

    /// Like `load_with`, choosing which kernels run on the CPU (an instruction set this CPU lacks is an
    /// error here, before anything is read).
    pub fn load_with_kernels(
        paths: &[&Path],
        device: Device,
        layout: WeightLayout,
        kernels: Kernels,
    ) -> Result<Weights, ModelError> {
        let choice = kernels.resolve().map_err(|e| ModelError::Input(e.to_string()))?;
        if !choice.any_ours() && matches!(layout, WeightLayout::Int8Vision | WeightLayout::Int8) {
            return Err(ModelError::Input(format!(
                "weights {layout:?} are multiplied by our int8 kernels, and kernels '{kernels}' runs none of ours"
            )));
        }
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
        model.kernels = choice;
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
            let kinds = model.kinds();
            let is = |name: &str, f: fn(&Kind) -> bool| kinds.get(name).is_some_and(f);
            let vision_block_weight = |name: &str| is(name, Kind::vision_block_weight);
            let text_block_matrix = |name: &str| is(name, Kind::text_block_matrix);
            if layout == WeightLayout::F32Vision {
                model.widened = model.weights.widen_cpu(vision_block_weight, release)?;
            }
            let mut packed = Packed::default();
            // q4_0 and q8_0 matrices go to our panels (same bytes, faster than ggml for every product where
            // the kernels choice says so: AVX-512 VNNI, AVX2; elsewhere only when an int8 layout asks for our
            // kernels, and then only the vision matrices: decoding stays on ggml).
            let int8 = matches!(layout, WeightLayout::Int8Vision | WeightLayout::Int8);
            let everywhere = choice.panels;
            if int8 || everywhere {
                let text = |name: &str| text_block_matrix(name) || is(name, |k| k.name == TensorName::Output);
                packed.panels =
                    model.pack_panels(|name| vision_block_weight(name) || (everywhere && text(name)), release)?;
            }
            if int8 {
                let vision = model.pack_int8(
                    |name| vision_block_weight(name) && !packed.panels.contains_key(name),
                    release,
                )?;
                packed.int8.extend(vision);
            }
            if layout == WeightLayout::Int8 {
                // Copies: decoding still reads the file's weights, so their pages stay.
                let text = model.pack_int8(
                    |name| text_block_matrix(name) && !packed.panels.contains_key(name),
                    |_| {},
                )?;
                packed.int8.extend(text);
            }
            let token_embd = TensorName::TokenEmbd.name();
            model.repacked = model.weights.repack_cpu(
                |name| {
                    name != token_embd
                        && !packed.panels.contains_key(name)
                        && !(vision_block_weight(name) && packed.int8.contains_key(name))
                },
                release,
            )?;
            model.panels = (packed.panels.len(), packed.panels.values().map(Panels::bytes).sum());
            model.int8 = (packed.int8.len(), packed.int8.values().map(PackedWeights::bytes).sum());
            model.resolve(packed)?;
        }
        Ok(model)
    }

    /// Resolves the typed weights of the three parts from the store, taking the matrices laid out for
    /// our kernels from `packed` (every one must find its `Linear`).
    fn resolve(&mut self, packed: Packed) -> Result<(), ModelError> {
        let arch = self.llm.arch();
        let mut r = Resolver {
            store: &self.weights,
            packed,
        };
        let vision = VisionWeights::resolve(&self.hp, self.split_qkv, &mut r)?;
        let projector = ProjectorWeights::resolve(&self.hp, &mut r)?;
        let llm = LanguageModel::resolve(arch, &self.hp, &mut r)?;
        if let Some(name) = r.packed.panels.keys().chain(r.packed.int8.keys()).next() {
            return Err(ModelError::Unsupported(format!(
                "{name} was laid out for our kernels but is used by no layer"
            )));
        }
        (self.vision, self.projector, self.llm) = (vision, projector, llm);
        Ok(())
    }

    /// What each weight of the store is (its `TensorSpec`'s name, part and role), by GGUF name.
    fn kinds(&self) -> HashMap<String, Kind> {
        let mut kinds = HashMap::new();
        for spec in names::tensor_specs(&self.hp) {
            let kind = Kind {
                name: spec.name,
                part: spec.part,
                role: spec.role,
                layer: spec.layer,
            };
            match spec.name.qkv_parts() {
                Some(parts) if self.split_qkv => {
                    for name in parts {
                        kinds.insert(name.gguf(spec.layer), Kind { name, ..kind });
                    }
                }
                _ => {
                    kinds.insert(spec.gguf_name, kind);
                }
            }
        }
        kinds
    }

    pub fn from_files(files: Vec<Arc<GgufFile>>) -> Result<Weights, ModelError> {
        let refs: Vec<&GgufFile> = files.iter().map(|f| f.as_ref()).collect();
        let arch = LlmArch::of_files(&refs)?;
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
            let split = spec
                .name
                .qkv_parts()
                .filter(|_| !index.contains_key(spec.gguf_name.as_str()));
            if let Some(parts) = split {
                // llama.cpp's mmproj splits the fused qkv into q, k, v of a third each.
                split_qkv = true;
                let mut ne = spec.ne.clone();
                let last = ne.len() - 1;
                ne[last] /= 3;
                for part in parts {
                    check(spec, &part.gguf(spec.layer), &ne)?;
                }
            } else {
                check(spec, &spec.gguf_name, &spec.ne)?;
            }
        }
        let te_name = TensorName::TokenEmbd.name();
        let te = index
            .get(te_name.as_str())
            .ok_or_else(|| ModelError::MissingTensor(te_name.clone()))?;
        let token_embd = (te.1.ty, files[te.0].clone(), te.1.clone());
        let weights = WeightStore::from_mapped(&files.iter().cloned().zip(chosen).collect::<Vec<_>>())?;
        let mut r = Resolver {
            store: &weights,
            packed: Packed::default(),
        };
        let vision = VisionWeights::resolve(&hp, split_qkv, &mut r)?;
        let projector = ProjectorWeights::resolve(&hp, &mut r)?;
        let llm = LanguageModel::resolve(arch, &hp, &mut r)?;
        Ok(Weights {
            hp,
            meta,
            weights,
            vision,
            projector,
            llm,
            split_qkv,
            device: BackendKind::Cpu,
            token_embd,
            repacked: (0, 0),
            widened: (0, 0),
            int8: (0, 0),
            panels: (0, 0),
            kernels: Choice::auto(),
        })
    }

    /// A weight tensor by name (for load-time work on the store: its ids are resolved once, in `resolve`).
    fn w(&self, name: &str) -> Result<Tensor<'_>, ModelError> {
        self.weights
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// Quantizes each matrix that `pick` selects into int8 panels (from its mapped data, dequantized),
    /// by name.
    fn pack_int8(
        &self,
        pick: impl Fn(&str) -> bool,
        release: impl FnMut(&str),
    ) -> Result<HashMap<String, PackedWeights>, ModelError> {
        let isa = self.kernels.isa;
        let done = self.build_from_matrices(
            |name, _| pick(name),
            |ty, bytes, k, n| {
                Ok(PackedWeights::pack(
                    &crate::ggml::dequantize(ty, bytes, k * n)?,
                    n,
                    k,
                    isa,
                ))
            },
            release,
        )?;
        Ok(done.into_iter().collect())
    }

    /// Rearranges each q4_0 or q8_0 matrix that `pick` selects into `crate::kernels::panels`, by name.
    fn pack_panels(
        &self,
        pick: impl Fn(&str) -> bool,
        release: impl FnMut(&str),
    ) -> Result<HashMap<String, Panels>, ModelError> {
        let panel_type = |ty| match ty {
            GgmlType::Q4_0 => Some(PanelType::Q4_0),
            GgmlType::Q8_0 => Some(PanelType::Q8_0),
            _ => None,
        };
        let isa = self.kernels.isa;
        let done = self.build_from_matrices(
            |name, ty| pick(name) && panel_type(ty).is_some(),
            |ty, bytes, k, n| {
                let ty = panel_type(ty).ok_or_else(|| ModelError::Unsupported(format!("panels of {}", ty.name())))?;
                Panels::new(ty, bytes, n, k, isa).map_err(|e| ModelError::Unsupported(e.to_string()))
            },
            release,
        )?;
        Ok(done.into_iter().collect())
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
        self.panels
    }

    /// Matrices held as int8 panels (`WeightLayout::Int8Vision`): (tensors, bytes).
    pub fn int8_packed(&self) -> (usize, usize) {
        self.int8
    }

    /// How many of the model's Linear layers each kernel multiplies ("ggml", "panels", "int8"): what the
    /// load chose per matrix, as the graphs will run it.
    pub fn linear_kinds(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut all: Vec<&Linear> = vec![&self.projector.up, &self.projector.down];
        for l in &self.vision.layers {
            match &l.qkv {
                vision::Qkv::Fused(qkv) => all.push(qkv),
                vision::Qkv::Split(split) => all.extend(split.iter()),
            }
            all.extend([&l.attn_out, &l.ffn_up, &l.ffn_down]);
        }
        match &self.llm {
            LanguageModel::Qwen2(w) => {
                for l in &w.layers {
                    all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down]);
                }
                all.push(&w.output);
            }
        }
        let mut kinds = std::collections::BTreeMap::new();
        for l in all {
            *kinds.entry(l.kind()).or_insert(0) += 1;
        }
        kinds
    }

    /// The language model's architecture (from `general.architecture`).
    pub fn llm_arch(&self) -> LlmArch {
        self.llm.arch()
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
