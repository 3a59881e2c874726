//! Hyperparameters and model metadata read from GGUF keys (`names::key`), every required key checked
//! before any graph is built. Works on our single file and on a llama.cpp pair (text GGUF + mmproj GGUF).

use crate::gguf::{GgufFile, Value};
use crate::hparams::{Hparams, LlmHparams, VisionHparams};
use crate::names::key;

use super::ModelError;

/// Finds `k` in the first file that has it.
fn find<'a>(files: &[&'a GgufFile], k: &str) -> Option<&'a Value> {
    files.iter().find_map(|f| f.get(k))
}

fn req_usize(files: &[&GgufFile], k: &'static str) -> Result<usize, ModelError> {
    let v = find(files, k).ok_or(ModelError::MissingKey(k))?;
    let n = v.as_u64().ok_or_else(|| ModelError::BadKey {
        key: k,
        detail: format!("expected an integer, found {}", v.type_description()),
    })?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n < (1 << 31))
        .ok_or_else(|| ModelError::BadKey {
            key: k,
            detail: format!("{n} is out of range"),
        })
}

fn req_f32(files: &[&GgufFile], k: &'static str) -> Result<f32, ModelError> {
    let v = find(files, k).ok_or(ModelError::MissingKey(k))?;
    let x = v.as_f32().ok_or_else(|| ModelError::BadKey {
        key: k,
        detail: format!("expected a float, found {}", v.type_description()),
    })?;
    if !x.is_finite() || x <= 0.0 {
        return Err(ModelError::BadKey {
            key: k,
            detail: format!("{x} must be a positive finite number"),
        });
    }
    Ok(x)
}

fn opt_f32(files: &[&GgufFile], k: &'static str, default: f32) -> Result<f32, ModelError> {
    if find(files, k).is_some() {
        req_f32(files, k)
    } else {
        Ok(default)
    }
}

/// Reads the hyperparameters of all three parts.
pub fn hparams_from_gguf(files: &[&GgufFile]) -> Result<Hparams, ModelError> {
    let vision = VisionHparams {
        image_size: req_usize(files, key::V_IMAGE_SIZE)?,
        patch_size: req_usize(files, key::V_PATCH_SIZE)?,
        n_channels: 3,
        n_embd: req_usize(files, key::V_EMBD)?,
        n_ff: req_usize(files, key::V_FF)?,
        n_layer: req_usize(files, key::V_BLOCK_COUNT)?,
        n_head: req_usize(files, key::V_HEAD_COUNT)?,
        ln_eps: req_f32(files, key::V_LN_EPS)?,
    };
    let n_vocab = match find(files, key::LLM_VOCAB_SIZE) {
        Some(_) => req_usize(files, key::LLM_VOCAB_SIZE)?,
        // llama.cpp text files carry no vocab-size key: the embedding table tells.
        None => files
            .iter()
            .find_map(|f| f.tensor(crate::names::TensorName::TokenEmbd.pattern()))
            .and_then(|t| t.ne.get(1).copied())
            .ok_or(ModelError::MissingKey(key::LLM_VOCAB_SIZE))?,
    };
    let llm = LlmHparams {
        n_vocab,
        n_embd: req_usize(files, key::LLM_EMBD)?,
        n_ff: req_usize(files, key::LLM_FF)?,
        n_layer: req_usize(files, key::LLM_BLOCK_COUNT)?,
        n_head: req_usize(files, key::LLM_HEAD_COUNT)?,
        n_head_kv: req_usize(files, key::LLM_HEAD_COUNT_KV)?,
        n_ctx_train: req_usize(files, key::LLM_CONTEXT_LENGTH)?,
        rope_theta: req_f32(files, key::LLM_ROPE_FREQ_BASE)?,
        rms_eps: req_f32(files, key::LLM_RMS_EPS)?,
    };
    let downsample_ratio = match find(files, key::DOWNSAMPLE_RATIO) {
        Some(_) => req_f32(files, key::DOWNSAMPLE_RATIO)?,
        None => 1.0 / req_usize(files, key::V_SCALE_FACTOR)? as f32,
    };
    let ps_version = match find(files, key::PS_VERSION) {
        Some(v) => v
            .as_str()
            .ok_or(ModelError::BadKey {
                key: key::PS_VERSION,
                detail: "expected a string".into(),
            })?
            .to_string(),
        None => "v2".to_string(),
    };
    let hp = Hparams {
        vision,
        llm,
        downsample_ratio,
        ps_version,
        proj_ln_eps: opt_f32(files, key::PROJ_LN_EPS, 1e-5)?,
    };
    check_runnable(&hp)?;
    // Every layer owns several tensors, so a layer count above the files' tensor count is a lie; checked
    // before the per-layer name table is built (a count of 10^6 would cost gigabytes to find the first
    // missing tensor).
    let n_tensors: usize = files.iter().map(|f| f.tensors().len()).sum();
    for (k, n) in [
        (key::V_BLOCK_COUNT, hp.vision.n_layer),
        (key::LLM_BLOCK_COUNT, hp.llm.n_layer),
    ] {
        if n > n_tensors {
            return Err(ModelError::BadKey {
                key: k,
                detail: format!("{n} layers, but the file(s) hold only {n_tensors} tensors"),
            });
        }
    }
    Ok(hp)
}

/// Refuses dimensions the graphs cannot run, before ggml sees them.
pub fn check_runnable(hp: &Hparams) -> Result<(), ModelError> {
    let problems = structural_problems(hp);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Unsupported(problems.join("; ")))
    }
}

/// Every structural constraint of the graphs that `hp` breaks, each named with the config.json field it
/// comes from. The one set of checks: the runtime applies it to a GGUF's keys (`check_runnable`), the
/// converter to a checkpoint's config.json before it writes anything.
pub fn structural_problems(hp: &Hparams) -> Vec<String> {
    let v = &hp.vision;
    let t = &hp.llm;
    let mut problems = Vec::new();
    if !v.image_size.is_multiple_of(v.patch_size) {
        problems.push(format!(
            "vision image_size {} is not a multiple of patch_size {}",
            v.image_size, v.patch_size
        ));
    }
    if !v.n_embd.is_multiple_of(v.n_head) {
        problems.push(format!(
            "vision hidden_size {} is not divisible by {} heads (num_attention_heads)",
            v.n_embd, v.n_head
        ));
    }
    let ratio = hp.downsample_ratio;
    let inv = 1.0 / ratio as f64;
    let factor = inv.round();
    if !(ratio > 0.0 && (inv - factor).abs() < 1e-6 && factor >= 1.0) {
        problems.push(format!("downsample_ratio {ratio} is not 1/n for an integer n"));
    } else if v.image_size.is_multiple_of(v.patch_size) && !v.grid().is_multiple_of(factor as usize) {
        problems.push(format!(
            "the {0}x{0} patch grid cannot be pixel-shuffled by {factor} (downsample_ratio {ratio})",
            v.grid()
        ));
    }
    if hp.ps_version != "v2" {
        problems.push(format!(
            "ps_version is {:?}; only pixel shuffle \"v2\" is implemented",
            hp.ps_version
        ));
    }
    if !t.n_embd.is_multiple_of(t.n_head) {
        problems.push(format!(
            "llm hidden_size {} is not divisible by {} heads (num_attention_heads)",
            t.n_embd, t.n_head
        ));
    } else if !t.head_dim().is_multiple_of(2) {
        problems.push(format!(
            "llm head_dim {} is odd; NEOX RoPE rotates halves",
            t.head_dim()
        ));
    }
    if !t.n_head.is_multiple_of(t.n_head_kv) {
        problems.push(format!(
            "llm num_attention_heads {} is not a multiple of num_key_value_heads {}",
            t.n_head, t.n_head_kv
        ));
    }
    problems
}

/// What the chat layer needs besides the weights.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    /// The Hugging Face tokenizer JSON, when the file carries it (ours does).
    pub tokenizer_json: Option<String>,
    pub system_message: Option<String>,
    pub stop_ids: Vec<u32>,
    pub img_start_id: u32,
    pub img_end_id: u32,
    pub img_context_id: u32,
    /// The image statistics tiles are normalized with (checked: finite, std above 0).
    pub normalization: crate::image::Normalization,
    pub min_tiles: usize,
    pub max_tiles: usize,
    pub use_thumbnail: bool,
}

/// Reads the metadata, falling back to InternVL2-1B's values (spec §5, §6, §7) where a llama.cpp file has
/// no key for them.
pub fn meta_from_gguf(files: &[&GgufFile]) -> Result<ModelMeta, ModelError> {
    let get_u32 = |k: &'static str, d: u32| -> Result<u32, ModelError> {
        match find(files, k) {
            Some(v) => v.as_u32().ok_or(ModelError::BadKey {
                key: k,
                detail: format!("expected u32, found {}", v.type_description()),
            }),
            None => Ok(d),
        }
    };
    let get_str = |k: &'static str| -> Option<String> { find(files, k).and_then(|v| v.as_str()).map(str::to_string) };
    let get_f3 = |k: &'static str, d: [f32; 3]| -> Result<[f32; 3], ModelError> {
        match find(files, k).and_then(|v| v.as_array()) {
            None => Ok(d),
            Some(a) => {
                let v: Vec<f32> = files.iter().find_map(|f| f.get_f32_array(k).ok()).unwrap_or_default();
                if v.len() != 3 || a.len() != 3 {
                    return Err(ModelError::BadKey {
                        key: k,
                        detail: format!("expected 3 floats, found {}", a.len()),
                    });
                }
                Ok([v[0], v[1], v[2]])
            }
        }
    };
    let stop_ids = match files
        .iter()
        .find_map(|f| f.get(key::STOP_IDS).map(|_| f.get_u32_array(key::STOP_IDS)))
    {
        Some(r) => r.map_err(|e| ModelError::BadKey {
            key: key::STOP_IDS,
            detail: e.to_string(),
        })?,
        None => vec![151645, 151644, 151643],
    };
    Ok(ModelMeta {
        tokenizer_json: get_str(key::TOKENIZER_HF_JSON),
        system_message: get_str(key::SYSTEM_MESSAGE),
        stop_ids,
        img_start_id: get_u32(key::IMG_START_ID, 151646)?,
        img_end_id: get_u32(key::IMG_END_ID, 151647)?,
        img_context_id: get_u32(key::IMG_CONTEXT_ID, 151648)?,
        normalization: {
            let imagenet = crate::image::Normalization::IMAGENET;
            let (mean, std) = (
                get_f3(key::V_IMAGE_MEAN, imagenet.mean())?,
                get_f3(key::V_IMAGE_STD, imagenet.std())?,
            );
            crate::image::Normalization::new(mean, std).map_err(|e| ModelError::BadKey {
                key: match e {
                    crate::image::Error::BadNormalization { which: "mean", .. } => key::V_IMAGE_MEAN,
                    _ => key::V_IMAGE_STD,
                },
                detail: e.to_string(),
            })?
        },
        min_tiles: get_u32(key::V_MIN_TILES, 1)? as usize,
        max_tiles: get_u32(key::V_MAX_TILES, 12)? as usize,
        use_thumbnail: find(files, key::USE_THUMBNAIL)
            .and_then(|v| v.as_bool())
            .unwrap_or(true),
    })
}
