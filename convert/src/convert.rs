//! The conversion: a Hugging Face InternVL2-1B directory -> one GGUF (or, with `split`, llama.cpp's
//! text + mmproj pair).
//!
//! Streaming: tensors are converted one at a time, and each in chunks of rows: positioned read of the
//! source bytes -> f32 -> target type (ggml's quantizers, rows in parallel) -> appended to that tensor's
//! output buffer -> handed to the GGUF writer. Peak memory is one output tensor plus a few chunk
//! buffers plus the tokenizer. Nothing appears under the output name unless everything succeeded: the
//! GGUF writer writes a dot-temp file, renamed by `finish` and removed on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use internvl::ggml::GgmlError;
use internvl::gguf::{Array, GgmlType, GgufError, GgufWriter, Value};
use internvl::hparams::Hparams;
use internvl::names::{self, key, Part, TensorSpec};
use internvl::tokenizer::{self, LlamaCppVocab, SlowTokenizerFiles, SpecialIds, TokenizerError};

use crate::config::{read_model_config, ConfigError, ModelConfig};
use crate::policy::{self, TypeChoice};
use crate::progress::Progress;
use crate::safetensors::{sha256_file, Checkpoint, StError};

/// `internvl.converter.version`.
pub const CONVERTER_VERSION: &str = concat!("internvl-convert ", env!("CARGO_PKG_VERSION"));

/// `general.architecture` of our single-file GGUF (both parts, plus `internvl.*` keys); the split pair
/// uses llama.cpp's `qwen2` and `clip`.
pub const ARCH_INTERNVL: &str = "internvl";
pub const ARCH_QWEN2: &str = "qwen2";
pub const ARCH_CLIP: &str = "clip";

/// Elements per conversion chunk (whole rows; at least one row): 4 Mi f32 = 16 MiB.
const CHUNK_ELEMS: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("tokenizer in {dir}: {source}")]
    Tokenizer { dir: PathBuf, source: TokenizerError },
    #[error("{0}")]
    Safetensors(#[from] StError),
    #[error("the checkpoint does not match config.json:\n{0}")]
    Tensors(String),
    #[error("{0}")]
    Gguf(#[from] GgufError),
    #[error("tensor {tensor}: {source}")]
    Quantize { tensor: String, source: GgmlError },
    #[error("interrupted: no output written")]
    Interrupted,
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The Hugging Face checkpoint directory.
    pub input: PathBuf,
    /// The GGUF to write (with `split`: the text GGUF).
    pub output: PathBuf,
    pub types: TypeChoice,
    /// Write llama.cpp's pair (text GGUF + mmproj GGUF) instead of our single file.
    pub split: bool,
    /// The mmproj path with `split` (default: `mmproj-<output file name>` next to the output).
    pub mmproj: Option<PathBuf>,
}

/// Size statistics of one part.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartStats {
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

impl PartStats {
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.params as f64
        }
    }
}

/// One tensor whose requested type did not fit its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub tensor: String,
    pub row_len: usize,
    pub requested: GgmlType,
    pub chosen: GgmlType,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Written files and their sizes.
    pub outputs: Vec<(PathBuf, u64)>,
    pub parts: Vec<(Part, PartStats)>,
    pub fallbacks: Vec<Fallback>,
    pub recipe: String,
    pub seconds: f64,
}

/// One output tensor: a whole source tensor, or (split mode) a slice of the fused ViT qkv.
#[derive(Debug, Clone)]
struct OutTensor {
    name: String,
    ne: Vec<usize>,
    ty: GgmlType,
    requested: GgmlType,
    part: Part,
    src: String,
    /// First source element and element count (storage order).
    first: usize,
    count: usize,
    row_len: usize,
}

/// The tokenizer as stored in the GGUF.
struct TokenizerData {
    hf_json: String,
    vocab: LlamaCppVocab,
    ids: SpecialIds,
}

fn load_tokenizer(dir: &Path, n_vocab: usize) -> Result<TokenizerData, ConvertError> {
    let err = |source| ConvertError::Tokenizer {
        dir: dir.to_path_buf(),
        source,
    };
    let files = SlowTokenizerFiles::load(dir).map_err(err)?;
    let vocab = tokenizer::llama_cpp_vocab(&files, Some(n_vocab)).map_err(err)?;
    let hf_json = files.to_hf_json();
    // Build it once the way the runtime will, so a tokenizer the runtime cannot load is refused now.
    let tok = tokenizer::Tokenizer::from_json(&hf_json).map_err(err)?;
    Ok(TokenizerData {
        hf_json,
        vocab,
        ids: tok.ids,
    })
}

/// Lists at most `max` items, then how many more.
fn list(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .map(|x| format!("    {x}"))
        .collect::<Vec<_>>()
        .join("\n");
    if items.len() > max {
        s.push_str(&format!("\n    ... and {} more", items.len() - max));
    }
    s
}

/// Checks the checkpoint against `specs`: every tensor present, nothing unexpected, shapes and dtypes.
pub fn check_tensors(ck: &Checkpoint, specs: &[TensorSpec]) -> Result<(), ConvertError> {
    let mut missing = Vec::new();
    let mut bad = Vec::new();
    for s in specs {
        match ck.get(&s.hf_name) {
            None => missing.push(s.hf_name.clone()),
            Some(t) => {
                if t.shape != s.hf_shape {
                    bad.push(format!("{}: shape {:?}, expected {:?}", s.hf_name, t.shape, s.hf_shape));
                }
                if !t.dtype.is_float_source() {
                    bad.push(format!(
                        "{}: dtype {}, expected BF16 (or F16/F32)",
                        s.hf_name,
                        t.dtype.name()
                    ));
                }
            }
        }
    }
    let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.hf_name.as_str()).collect();
    let unexpected: Vec<String> = ck
        .tensors()
        .filter(|t| !known.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    if missing.is_empty() && unexpected.is_empty() && bad.is_empty() {
        return Ok(());
    }
    let mut msg = Vec::new();
    if !missing.is_empty() {
        msg.push(format!(
            "  {} missing tensor(s):\n{}",
            missing.len(),
            list(&missing, 20)
        ));
    }
    if !unexpected.is_empty() {
        msg.push(format!(
            "  {} unexpected tensor(s):\n{}",
            unexpected.len(),
            list(&unexpected, 20)
        ));
    }
    if !bad.is_empty() {
        msg.push(format!(
            "  {} tensor(s) with a wrong shape or dtype:\n{}",
            bad.len(),
            list(&bad, 20)
        ));
    }
    Err(ConvertError::Tensors(msg.join("\n")))
}

/// The output tensors for `specs`, in order. With `split_qkv` the ViT's fused qkv weight and bias are
/// cut into `attn_q`, `attn_k`, `attn_v` (rows 0..d, d..2d, 2d..3d: spec §2.1) as llama.cpp's mmproj wants.
fn plan(specs: &[TensorSpec], types: &TypeChoice, split_qkv: bool) -> Vec<OutTensor> {
    let mut out = Vec::with_capacity(specs.len() + 96);
    for s in specs {
        let d = policy::decide(s, types);
        let row_len = s.ne.first().copied().unwrap_or(1);
        let n = s.n_elements();
        let qkv_parts = s.name.qkv_parts().filter(|_| split_qkv);
        if let Some(parts) = qkv_parts {
            // Weight ne [d, 3d] -> three [d, d]; bias ne [3d] -> three [d].
            let mut ne = s.ne.clone();
            let last = ne.len() - 1;
            ne[last] /= 3;
            let part_row = if s.ne.len() == 1 { ne[0] } else { row_len };
            let ty = policy::fit_row(d.requested, part_row);
            for (k, which) in parts.iter().enumerate() {
                out.push(OutTensor {
                    name: which.gguf(s.layer),
                    ne: ne.clone(),
                    ty,
                    requested: d.requested,
                    part: s.part,
                    src: s.hf_name.clone(),
                    first: k * n / 3,
                    count: n / 3,
                    row_len: part_row,
                });
            }
        } else {
            out.push(OutTensor {
                name: s.gguf_name.clone(),
                ne: s.ne.clone(),
                ty: d.chosen,
                requested: d.requested,
                part: s.part,
                src: s.hf_name.clone(),
                first: 0,
                count: n,
                row_len,
            });
        }
    }
    out
}

/// The Hermes-2 template (spec §5.1) as a Jinja chat template for llama.cpp and other GGUF readers: no
/// newline between turns, the InternVL system message unless the conversation starts with its own.
pub fn hermes2_jinja(system_message: &str) -> String {
    let sys = system_message.replace('\\', "\\\\").replace('\'', "\\'");
    format!(
        "{{%- if messages and messages[0]['role'] == 'system' -%}}\
{{%- set system_message = messages[0]['content'] -%}}{{%- set loop_messages = messages[1:] -%}}\
{{%- else -%}}{{%- set system_message = '{sys}' -%}}{{%- set loop_messages = messages -%}}{{%- endif -%}}\
{{{{- '<|im_start|>system\\n' + system_message + '<|im_end|>' -}}}}\
{{%- for message in loop_messages -%}}\
{{{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' -}}}}\
{{%- endfor -%}}\
{{%- if add_generation_prompt -%}}{{{{- '<|im_start|>assistant\\n' -}}}}{{%- endif -%}}"
    )
}

fn u32v(x: usize) -> Value {
    Value::U32(u32::try_from(x).unwrap_or(u32::MAX))
}

fn add_general(w: &mut GgufWriter, arch: &str, name: &str, types: &TypeChoice) -> Result<(), GgufError> {
    w.add_kv(key::ARCH, Value::Str(arch.into()))?;
    w.add_kv(key::NAME, Value::Str(name.into()))?;
    w.add_kv(key::FILE_TYPE, Value::U32(policy::llama_ftype(types.base)))?;
    w.add_kv(key::QUANT_VERSION, Value::U32(2))
}

fn add_llm(w: &mut GgufWriter, hp: &Hparams) -> Result<(), GgufError> {
    let l = &hp.llm;
    w.add_kv(key::LLM_BLOCK_COUNT, u32v(l.n_layer))?;
    w.add_kv(key::LLM_CONTEXT_LENGTH, u32v(l.n_ctx_train))?;
    w.add_kv(key::LLM_EMBD, u32v(l.n_embd))?;
    w.add_kv(key::LLM_FF, u32v(l.n_ff))?;
    w.add_kv(key::LLM_HEAD_COUNT, u32v(l.n_head))?;
    w.add_kv(key::LLM_HEAD_COUNT_KV, u32v(l.n_head_kv))?;
    w.add_kv(key::LLM_ROPE_FREQ_BASE, Value::F32(l.rope_theta))?;
    w.add_kv(key::LLM_RMS_EPS, Value::F32(l.rms_eps))?;
    w.add_kv(key::LLM_VOCAB_SIZE, u32v(l.n_vocab))
}

fn add_clip(w: &mut GgufWriter, hp: &Hparams, cfg: &ModelConfig) -> Result<(), GgufError> {
    let v = &hp.vision;
    w.add_kv(key::CLIP_PROJECTOR_TYPE, Value::Str("internvl".into()))?;
    w.add_kv(key::CLIP_HAS_VISION, Value::Bool(true))?;
    w.add_kv(key::CLIP_USE_GELU, Value::Bool(true))?;
    w.add_kv(key::V_IMAGE_SIZE, u32v(v.image_size))?;
    w.add_kv(key::V_PATCH_SIZE, u32v(v.patch_size))?;
    w.add_kv(key::V_EMBD, u32v(v.n_embd))?;
    w.add_kv(key::V_FF, u32v(v.n_ff))?;
    w.add_kv(key::V_BLOCK_COUNT, u32v(v.n_layer))?;
    w.add_kv(key::V_HEAD_COUNT, u32v(v.n_head))?;
    w.add_kv(key::V_LN_EPS, Value::F32(v.ln_eps))?;
    w.add_kv(key::V_PROJ_DIM, u32v(hp.llm.n_embd))?;
    w.add_kv(key::V_IMAGE_MEAN, Value::Array(Array::F32(cfg.image_mean.to_vec())))?;
    w.add_kv(key::V_IMAGE_STD, Value::Array(Array::F32(cfg.image_std.to_vec())))?;
    w.add_kv(key::V_SCALE_FACTOR, u32v(hp.shuffle_factor()))?;
    w.add_kv(key::V_MIN_TILES, Value::U32(cfg.min_tiles))?;
    w.add_kv(key::V_MAX_TILES, Value::U32(cfg.max_tiles))
}

fn add_internvl(w: &mut GgufWriter, hp: &Hparams, cfg: &ModelConfig, ids: &SpecialIds) -> Result<(), GgufError> {
    w.add_kv(key::PROJ_LN_EPS, Value::F32(hp.proj_ln_eps))?;
    w.add_kv(key::DOWNSAMPLE_RATIO, Value::F32(hp.downsample_ratio))?;
    w.add_kv(key::PS_VERSION, Value::Str(hp.ps_version.clone()))?;
    w.add_kv(key::USE_THUMBNAIL, Value::Bool(cfg.use_thumbnail))?;
    w.add_kv(key::DYNAMIC_IMAGE_SIZE, Value::Bool(cfg.dynamic_image_size))?;
    w.add_kv(key::NUM_IMAGE_TOKEN, u32v(hp.num_image_token()))?;
    w.add_kv(key::TEMPLATE_NAME, Value::Str(cfg.template.clone()))?;
    w.add_kv(key::SYSTEM_MESSAGE, Value::Str(cfg.system_message.clone()))?;
    w.add_kv(key::IMG_START_ID, Value::U32(ids.img_start))?;
    w.add_kv(key::IMG_END_ID, Value::U32(ids.img_end))?;
    w.add_kv(key::IMG_CONTEXT_ID, Value::U32(ids.img_context))?;
    w.add_kv(key::STOP_IDS, Value::Array(Array::U32(ids.stop_ids().to_vec())))
}

fn add_tokenizer(w: &mut GgufWriter, tok: &TokenizerData, cfg: &ModelConfig) -> Result<(), GgufError> {
    w.add_kv(key::TOKENIZER_HF_JSON, Value::Str(tok.hf_json.clone()))?;
    w.add_kv(key::TOKENIZER_MODEL, Value::Str("gpt2".into()))?;
    w.add_kv(key::TOKENIZER_PRE, Value::Str("qwen2".into()))?;
    w.add_kv(
        key::TOKENIZER_TOKENS,
        Value::Array(Array::Str(tok.vocab.tokens.clone())),
    )?;
    w.add_kv(
        key::TOKENIZER_TOKEN_TYPE,
        Value::Array(Array::I32(tok.vocab.token_type.clone())),
    )?;
    w.add_kv(
        key::TOKENIZER_MERGES,
        Value::Array(Array::Str(tok.vocab.merges.clone())),
    )?;
    // Chat's stop token <|im_end|> (spec §5.4), so llama.cpp stops where InternVL's chat() does.
    w.add_kv(key::TOKENIZER_EOS_ID, Value::U32(tok.ids.im_end))?;
    if let Some(bos) = cfg.bos_id {
        w.add_kv(key::TOKENIZER_BOS_ID, Value::U32(bos))?;
    }
    w.add_kv(key::TOKENIZER_PAD_ID, Value::U32(tok.ids.endoftext))?;
    // Qwen2 prepends nothing (spec §6.1).
    w.add_kv(key::TOKENIZER_ADD_BOS, Value::Bool(false))?;
    w.add_kv(
        key::TOKENIZER_CHAT_TEMPLATE,
        Value::Str(hermes2_jinja(&cfg.system_message)),
    )
}

fn add_provenance(w: &mut GgufWriter, sha: &str, recipe: &str) -> Result<(), GgufError> {
    w.add_kv(key::SOURCE_SHA256, Value::Str(sha.into()))?;
    w.add_kv(key::CONVERTER_VERSION, Value::Str(CONVERTER_VERSION.into()))?;
    w.add_kv(key::QUANT_RECIPE, Value::Str(recipe.into()))
}

/// Converts a chunk of f32 rows to `ty`.
fn encode(ty: GgmlType, src: &[f32], row_len: usize, tensor: &str) -> Result<Vec<u8>, ConvertError> {
    internvl::ggml::quantize(ty, src, row_len).map_err(|source| ConvertError::Quantize {
        tensor: tensor.into(),
        source,
    })
}

/// The default mmproj path: `mmproj-<file name>` next to the text GGUF.
pub fn default_mmproj_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    output.with_file_name(format!("mmproj-{name}"))
}

/// Runs the conversion. `should_stop` is polled between chunks (Ctrl-C).
pub fn convert(
    opts: &ConvertOptions,
    progress: &mut Progress,
    should_stop: &dyn Fn() -> bool,
) -> Result<ConvertReport, ConvertError> {
    let t0 = Instant::now();
    let cfg = read_model_config(&opts.input)?;
    let hp = cfg.hparams.clone();
    let specs = names::tensor_specs(&hp);
    let tok = load_tokenizer(&opts.input, hp.llm.n_vocab)?;
    let ck = Checkpoint::open_dir(&opts.input)?;
    check_tensors(&ck, &specs)?;
    let recipe = opts.types.recipe();
    let model_name = opts
        .input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "InternVL2-1B".into());

    let tensors = plan(&specs, &opts.types, opts.split);
    let fallbacks: Vec<Fallback> = tensors
        .iter()
        .filter(|t| t.ty != t.requested)
        .map(|t| Fallback {
            tensor: t.name.clone(),
            row_len: t.row_len,
            requested: t.requested,
            chosen: t.ty,
        })
        .collect();

    // Writers first: an unwritable destination fails before the long work.
    let mmproj_path = opts.mmproj.clone().unwrap_or_else(|| default_mmproj_path(&opts.output));
    if opts.split && mmproj_path == opts.output {
        return Err(ConvertError::Output {
            path: mmproj_path,
            reason: "the mmproj and text outputs are the same file".into(),
        });
    }
    // Refuse destinations that would end badly only after all the work.
    let sources: Vec<PathBuf> = ck.paths().iter().filter_map(|p| p.canonicalize().ok()).collect();
    for out in std::iter::once(&opts.output).chain(opts.split.then_some(&mmproj_path)) {
        if out.is_dir() {
            return Err(ConvertError::Output {
                path: out.clone(),
                reason: "is a directory; give a file name".into(),
            });
        }
        if out.canonicalize().is_ok_and(|c| sources.contains(&c)) {
            return Err(ConvertError::Output {
                path: out.clone(),
                reason: "would overwrite the source weights".into(),
            });
        }
    }
    let mut main_w = GgufWriter::create(&opts.output)?;
    let mut mmproj_w = if opts.split {
        Some(GgufWriter::create(&mmproj_path)?)
    } else {
        None
    };

    // Provenance: sha256 of the source weights in sha256sum's format, one line per file.
    let mut sha_lines = Vec::new();
    let paths: Vec<PathBuf> = ck.paths().iter().map(|p| p.to_path_buf()).collect();
    let hash_total: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    progress.start("sha256 ", hash_total);
    for p in &paths {
        let Some(hex) = sha256_file(p, should_stop)? else {
            return Err(ConvertError::Interrupted);
        };
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sha_lines.push(format!("{hex}  {name}"));
    }
    progress.update(hash_total, "");
    progress.finish();
    let sha = sha_lines.join("\n");

    // Metadata.
    if let Some(mw) = mmproj_w.as_mut() {
        add_general(&mut main_w, ARCH_QWEN2, &model_name, &opts.types)?;
        add_llm(&mut main_w, &hp)?;
        add_tokenizer(&mut main_w, &tok, &cfg)?;
        add_provenance(&mut main_w, &sha, &recipe)?;
        add_general(mw, ARCH_CLIP, &model_name, &opts.types)?;
        add_clip(mw, &hp, &cfg)?;
        add_provenance(mw, &sha, &recipe)?;
    } else {
        add_general(&mut main_w, ARCH_INTERNVL, &model_name, &opts.types)?;
        add_llm(&mut main_w, &hp)?;
        add_clip(&mut main_w, &hp, &cfg)?;
        add_internvl(&mut main_w, &hp, &cfg, &tok.ids)?;
        add_tokenizer(&mut main_w, &tok, &cfg)?;
        add_provenance(&mut main_w, &sha, &recipe)?;
    }
    drop(tok);
    let target = |t: &OutTensor| opts.split && t.part != Part::Llm;
    for t in &tensors {
        let w = match mmproj_w.as_mut() {
            Some(mw) if target(t) => mw,
            _ => &mut main_w,
        };
        w.add_tensor(&t.name, &t.ne, t.ty)?;
    }

    // Data, one tensor at a time.
    let mut parts: BTreeMap<u8, (Part, PartStats)> = BTreeMap::new();
    let total_elems: u64 = tensors.iter().map(|t| t.count as u64).sum();
    progress.start("convert", total_elems);
    let mut done = 0u64;
    let mut scratch = Vec::new();
    let mut rows_f32 = Vec::new();
    for t in &tensors {
        let src = ck
            .get(&t.src)
            .ok_or_else(|| ConvertError::Tensors(format!("  missing tensor {}", t.src)))?;
        let nbytes = t.ty.nbytes(&t.ne).ok_or_else(|| ConvertError::Output {
            path: opts.output.clone(),
            reason: format!("tensor {}: {:?} does not fit {}", t.name, t.ne, t.ty),
        })?;
        let mut data = Vec::with_capacity(nbytes);
        let rows_per_chunk = (CHUNK_ELEMS / t.row_len).max(1);
        let n_rows = t.count / t.row_len;
        let mut r = 0;
        while r < n_rows {
            if should_stop() {
                return Err(ConvertError::Interrupted);
            }
            let nr = rows_per_chunk.min(n_rows - r);
            ck.read_f32_range(
                src,
                t.first + r * t.row_len,
                nr * t.row_len,
                &mut scratch,
                &mut rows_f32,
            )?;
            data.extend_from_slice(&encode(t.ty, &rows_f32, t.row_len, &t.name)?);
            r += nr;
            done += (nr * t.row_len) as u64;
            progress.update(done, &t.name);
        }
        let w = match mmproj_w.as_mut() {
            Some(mw) if target(t) => mw,
            _ => &mut main_w,
        };
        w.write_tensor_data(&t.name, &data)?;
        let key = match t.part {
            Part::Vision => 0,
            Part::Projector => 1,
            Part::Llm => 2,
        };
        let e = parts.entry(key).or_insert((t.part, PartStats::default()));
        e.1.tensors += 1;
        e.1.params += t.count as u64;
        e.1.bytes += data.len() as u64;
    }
    progress.finish();
    if should_stop() {
        return Err(ConvertError::Interrupted);
    }

    let mut outputs = Vec::new();
    if let Some(mw) = mmproj_w {
        let size = mw.finish()?;
        outputs.push((mmproj_path.clone(), size));
    }
    match main_w.finish() {
        Ok(size) => outputs.push((opts.output.clone(), size)),
        Err(e) => {
            // Keep the all-or-nothing promise for the pair too.
            if opts.split {
                let _ = std::fs::remove_file(&mmproj_path);
            }
            return Err(e.into());
        }
    }
    Ok(ConvertReport {
        outputs,
        parts: parts.into_values().collect(),
        fallbacks,
        recipe,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Fallbacks grouped for the summary: layer numbers folded (`blk.*.attn_q.weight x24`).
pub fn summarize_fallbacks(f: &[Fallback]) -> Vec<String> {
    let mut groups: BTreeMap<(String, String, String, usize), usize> = BTreeMap::new();
    for x in f {
        // Fold the layer number after `blk` only (the projector's `mlp.1`/`mlp.3` are different tensors).
        let parts: Vec<&str> = x.tensor.split('.').collect();
        let folded: String = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i > 0 && parts[i - 1] == "blk" && p.bytes().all(|b| b.is_ascii_digit()) {
                    "*"
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        *groups
            .entry((x.requested.name().into(), x.chosen.name().into(), folded, x.row_len))
            .or_default() += 1;
    }
    groups
        .into_iter()
        .map(|((req, chosen, name, row), n)| {
            let count = if n > 1 { format!(" x{n}") } else { String::new() };
            format!("{name}{count}: {req} -> {chosen} (rows of {row})")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qkv_split_slices_rows() {
        let hp = Hparams::tiny();
        let specs = names::tensor_specs(&hp);
        let t = plan(&specs, &TypeChoice::uniform(GgmlType::Q8_0), true);
        assert_eq!(t.len(), specs.len() + 4 * hp.vision.n_layer);
        let d = hp.vision.n_embd;
        let k = t.iter().find(|x| x.name == "v.blk.1.attn_k.weight").unwrap();
        assert_eq!(k.ne, vec![d, d]);
        assert_eq!((k.first, k.count, k.row_len), (d * d, d * d, d));
        let vb = t.iter().find(|x| x.name == "v.blk.0.attn_v.bias").unwrap();
        assert_eq!(
            (vb.first, vb.count, vb.ne.clone(), vb.ty),
            (2 * d, d, vec![d], GgmlType::F32)
        );
        assert!(!t.iter().any(|x| x.name.contains("attn_qkv")));
        let single = plan(&specs, &TypeChoice::uniform(GgmlType::Q8_0), false);
        assert_eq!(single.len(), specs.len());
    }

    #[test]
    fn fallback_summary_folds_layers() {
        let f: Vec<Fallback> = (0..3)
            .map(|l| Fallback {
                tensor: format!("blk.{l}.attn_q.weight"),
                row_len: 896,
                requested: GgmlType::Q6_K,
                chosen: GgmlType::Q8_0,
            })
            .collect();
        assert_eq!(
            summarize_fallbacks(&f),
            vec!["blk.*.attn_q.weight x3: q6_K -> q8_0 (rows of 896)".to_string()]
        );
    }
}
