//! The checkpoint's JSON configuration: config.json (spec §1), generation_config.json and
//! preprocessor_config.json. Every hyperparameter comes from these files; a configuration the runtime
//! cannot run is refused with one message listing every difference.

use std::path::{Path, PathBuf};

use internvl::hparams::{Hparams, LlmHparams, VisionHparams};
use serde_json::Value;

/// The Hermes-2 system message of InternVL's conversation.py (spec §5.1). config.json has no
/// `system_message` key, so chat() uses the template's built-in one; the converter stores it in the GGUF.
pub const HERMES2_SYSTEM_MESSAGE: &str =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";

/// The one conversation template the runtime implements (spec §5.1).
pub const HERMES2: &str = "Hermes-2";

/// Projector LayerNorm eps: `nn.LayerNorm(4096)` in modeling_internvl_chat.py uses PyTorch's default
/// (spec §3.9). It is code, not configuration, so config.json cannot carry it.
pub const PROJECTOR_LN_EPS: f32 = 1e-5;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("config.json: key {key}: {reason}")]
    Key { key: String, reason: String },
    #[error("config.json describes a model the runtime cannot run:\n  - {}", .0.join("\n  - "))]
    Unsupported(Vec<String>),
    #[error("{path}: {reason}")]
    Other { path: PathBuf, reason: String },
}

/// Everything the converter takes from the JSON files besides the tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub hparams: Hparams,
    pub template: String,
    pub system_message: String,
    pub min_tiles: u32,
    pub max_tiles: u32,
    pub use_thumbnail: bool,
    pub dynamic_image_size: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// llm_config.bos_token_id (151643; Qwen2 prepends nothing, but llama.cpp wants the id).
    pub bos_id: Option<u32>,
    /// llm_config.eos_token_id (151645).
    pub eos_id: u32,
    /// generation_config.json eos_token_id (151644, 151645).
    pub generation_eos_ids: Vec<u32>,
}

fn key_err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn req<'a>(v: &'a Value, path: &str) -> Result<&'a Value, ConfigError> {
    get(v, path)
        .filter(|x| !x.is_null())
        .ok_or_else(|| key_err(path, "missing"))
}

fn req_usize(v: &Value, path: &str) -> Result<usize, ConfigError> {
    let x = req(v, path)?;
    x.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| key_err(path, format!("{x} is not a positive integer")))
}

fn req_f64(v: &Value, path: &str) -> Result<f64, ConfigError> {
    let x = req(v, path)?;
    x.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| key_err(path, format!("{x} is not a number")))
}

fn req_str<'a>(v: &'a Value, path: &str) -> Result<&'a str, ConfigError> {
    let x = req(v, path)?;
    x.as_str().ok_or_else(|| key_err(path, format!("{x} is not a string")))
}

/// A boolean that may also be written 0/1 (config.json uses 0 for use_backbone_lora).
fn as_flag(x: &Value) -> Option<bool> {
    x.as_bool().or_else(|| x.as_u64().map(|n| n != 0))
}

fn req_bool(v: &Value, path: &str) -> Result<bool, ConfigError> {
    let x = req(v, path)?;
    as_flag(x).ok_or_else(|| key_err(path, format!("{x} is not a boolean")))
}

/// Reads the dimensions of the three parts from config.json (spec §1) and refuses a configuration that
/// the runtime does not implement, listing every difference at once.
pub fn hparams_from_config_json(cfg: &Value) -> Result<Hparams, ConfigError> {
    let mut diffs: Vec<String> = Vec::new();
    let expect_str = |path: &str, want: &str, diffs: &mut Vec<String>| -> Result<(), ConfigError> {
        let got = req_str(cfg, path)?;
        if got != want {
            diffs.push(format!("{path} is {got:?}; the runtime implements only {want:?}"));
        }
        Ok(())
    };
    expect_str("vision_config.norm_type", "layer_norm", &mut diffs)?;
    expect_str("vision_config.hidden_act", "gelu", &mut diffs)?;
    expect_str("llm_config.hidden_act", "silu", &mut diffs)?;
    expect_str("llm_config.model_type", "qwen2", &mut diffs)?;
    expect_str("ps_version", "v2", &mut diffs)?;

    let expect_flag = |path: &str, want: bool, why: &str, diffs: &mut Vec<String>| -> Result<(), ConfigError> {
        if req_bool(cfg, path)? != want {
            diffs.push(format!("{path} is {}; the runtime needs {want} ({why})", !want));
        }
        Ok(())
    };
    expect_flag("vision_config.qk_normalization", false, "no q_norm/k_norm", &mut diffs)?;
    expect_flag("vision_config.qkv_bias", true, "the ViT qkv has a bias", &mut diffs)?;
    expect_flag(
        "llm_config.tie_word_embeddings",
        false,
        "lm_head is a separate tensor",
        &mut diffs,
    )?;
    expect_flag(
        "llm_config.use_sliding_window",
        false,
        "no sliding-window attention",
        &mut diffs,
    )?;
    // Optional keys that must not switch on something unimplemented when present.
    for (path, why) in [
        ("tie_word_embeddings", "lm_head is a separate tensor"),
        ("use_backbone_lora", "LoRA adapters are not merged"),
        ("use_llm_lora", "LoRA adapters are not merged"),
    ] {
        if let Some(x) = get(cfg, path).filter(|x| !x.is_null()) {
            match as_flag(x) {
                Some(false) => {}
                Some(true) => diffs.push(format!("{path} is {x}; the runtime needs false/0 ({why})")),
                None => return Err(key_err(path, format!("{x} is not a boolean"))),
            }
        }
    }
    if let Some(x) = get(cfg, "llm_config.rope_scaling").filter(|x| !x.is_null()) {
        diffs.push(format!(
            "llm_config.rope_scaling is {x}; the runtime implements plain RoPE only"
        ));
    }
    if let Some(archs) = get(cfg, "llm_config.architectures").and_then(Value::as_array) {
        if !archs.iter().any(|a| a.as_str() == Some("Qwen2ForCausalLM")) {
            diffs.push(format!(
                "llm_config.architectures is {archs:?}; the runtime implements Qwen2ForCausalLM"
            ));
        }
    }
    let select_layer = req(cfg, "select_layer")?
        .as_i64()
        .ok_or_else(|| key_err("select_layer", "not an integer"))?;
    if select_layer != -1 {
        diffs.push(format!(
            "select_layer is {select_layer}; the runtime uses the last ViT layer (-1)"
        ));
    }
    let template = req_str(cfg, "template")?;
    if template != HERMES2 {
        diffs.push(format!(
            "template is {template:?}; the runtime implements {HERMES2:?} only"
        ));
    }

    let vision = VisionHparams {
        image_size: req_usize(cfg, "vision_config.image_size")?,
        patch_size: req_usize(cfg, "vision_config.patch_size")?,
        n_channels: req_usize(cfg, "vision_config.num_channels")?,
        n_embd: req_usize(cfg, "vision_config.hidden_size")?,
        n_ff: req_usize(cfg, "vision_config.intermediate_size")?,
        n_layer: req_usize(cfg, "vision_config.num_hidden_layers")?,
        n_head: req_usize(cfg, "vision_config.num_attention_heads")?,
        ln_eps: req_f64(cfg, "vision_config.layer_norm_eps")? as f32,
    };
    let llm = LlmHparams {
        n_vocab: req_usize(cfg, "llm_config.vocab_size")?,
        n_embd: req_usize(cfg, "llm_config.hidden_size")?,
        n_ff: req_usize(cfg, "llm_config.intermediate_size")?,
        n_layer: req_usize(cfg, "llm_config.num_hidden_layers")?,
        n_head: req_usize(cfg, "llm_config.num_attention_heads")?,
        n_head_kv: req_usize(cfg, "llm_config.num_key_value_heads")?,
        n_ctx_train: req_usize(cfg, "llm_config.max_position_embeddings")?,
        rope_theta: req_f64(cfg, "llm_config.rope_theta")? as f32,
        rms_eps: req_f64(cfg, "llm_config.rms_norm_eps")? as f32,
    };
    let downsample_ratio = req_f64(cfg, "downsample_ratio")?;
    if let Some(f) = get(cfg, "force_image_size").and_then(Value::as_u64) {
        if f as usize != vision.image_size {
            diffs.push(format!(
                "force_image_size {f} differs from vision_config.image_size {}; the runtime feeds the ViT its own size",
                vision.image_size
            ));
        }
    }

    // Structural constraints of the graphs: the runtime's own checks (`internvl::model::config`).
    let hp = Hparams {
        vision,
        llm,
        downsample_ratio: downsample_ratio as f32,
        ps_version: "v2".into(),
        proj_ln_eps: PROJECTOR_LN_EPS,
    };
    diffs.extend(internvl::model::config::structural_problems(&hp));
    if !diffs.is_empty() {
        return Err(ConfigError::Unsupported(diffs));
    }
    Ok(hp)
}

fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ConfigError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn u32_list(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Number(_) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(|n| vec![n]),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => None,
    }
}

fn three_floats(v: &Value, path: &Path, key: &str) -> Result<[f32; 3], ConfigError> {
    let bad = || ConfigError::Other {
        path: path.to_path_buf(),
        reason: format!("{key} is not three numbers"),
    };
    let a = v
        .get(key)
        .and_then(Value::as_array)
        .filter(|a| a.len() == 3)
        .ok_or_else(bad)?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_f64().ok_or_else(bad)? as f32;
    }
    Ok(out)
}

/// Reads config.json, generation_config.json and preprocessor_config.json of a checkpoint directory.
pub fn read_model_config(dir: &Path) -> Result<ModelConfig, ConfigError> {
    let cfg = read_json(&dir.join("config.json"))?;
    let hparams = hparams_from_config_json(&cfg)?;
    let template = req_str(&cfg, "template")?.to_string();
    let min_tiles = req_usize(&cfg, "min_dynamic_patch")? as u32;
    let max_tiles = req_usize(&cfg, "max_dynamic_patch")? as u32;
    if min_tiles > max_tiles {
        return Err(key_err(
            "min_dynamic_patch",
            format!("{min_tiles} exceeds max_dynamic_patch {max_tiles}"),
        ));
    }
    let use_thumbnail = req_bool(&cfg, "use_thumbnail")?;
    let dynamic_image_size = req_bool(&cfg, "dynamic_image_size")?;
    let bos_id = get(&cfg, "llm_config.bos_token_id")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let eos = req(&cfg, "llm_config.eos_token_id")?;
    let eos_id = u32_list(eos)
        .and_then(|l| l.first().copied())
        .ok_or_else(|| key_err("llm_config.eos_token_id", format!("{eos} is not a token id")))?;

    let gen_path = dir.join("generation_config.json");
    let gen = read_json(&gen_path)?;
    let generation_eos_ids = match gen.get("eos_token_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => u32_list(v).ok_or_else(|| ConfigError::Other {
            path: gen_path.clone(),
            reason: format!("eos_token_id {v} is not a token id or a list of them"),
        })?,
    };
    let pre_path = dir.join("preprocessor_config.json");
    let pre = read_json(&pre_path)?;
    let image_mean = three_floats(&pre, &pre_path, "image_mean")?;
    let image_std = three_floats(&pre, &pre_path, "image_std")?;
    if image_std.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return Err(ConfigError::Other {
            path: pre_path,
            reason: format!("image_std {image_std:?} must be positive"),
        });
    }
    if let Some(size) = pre.get("size").and_then(Value::as_u64) {
        if size as usize != hparams.vision.image_size {
            return Err(ConfigError::Other {
                path: pre_path,
                reason: format!(
                    "size {size} differs from vision_config.image_size {}",
                    hparams.vision.image_size
                ),
            });
        }
    }
    Ok(ModelConfig {
        hparams,
        system_message: HERMES2_SYSTEM_MESSAGE.to_string(),
        template,
        min_tiles,
        max_tiles,
        use_thumbnail,
        dynamic_image_size,
        image_mean,
        image_std,
        bos_id,
        eos_id,
        generation_eos_ids,
    })
}

/// config.json for `hp`: a copy of `base` (the real config.json) with every size replaced. Used by
/// `synth`; for the full preset the result equals the real file's values.
pub fn config_json_for(base: &Value, hp: &Hparams) -> Result<Value, ConfigError> {
    let mut v = base.clone();
    let set = |v: &mut Value, path: &str, x: Value| -> Result<(), ConfigError> {
        let mut cur = v;
        let parts: Vec<&str> = path.split('.').collect();
        let (last, head) = parts.split_last().ok_or_else(|| key_err(path, "empty path"))?;
        for p in head {
            cur = cur
                .get_mut(*p)
                .ok_or_else(|| key_err(path, "missing in the base config.json"))?;
        }
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| key_err(path, "parent is not an object"))?;
        obj.insert((*last).to_string(), x);
        Ok(())
    };
    let vh = &hp.vision;
    let l = &hp.llm;
    set(&mut v, "vision_config.image_size", vh.image_size.into())?;
    set(&mut v, "vision_config.patch_size", vh.patch_size.into())?;
    set(&mut v, "vision_config.num_channels", vh.n_channels.into())?;
    set(&mut v, "vision_config.hidden_size", vh.n_embd.into())?;
    set(&mut v, "vision_config.intermediate_size", vh.n_ff.into())?;
    set(&mut v, "vision_config.num_hidden_layers", vh.n_layer.into())?;
    set(&mut v, "vision_config.num_attention_heads", vh.n_head.into())?;
    set(&mut v, "vision_config.layer_norm_eps", f32_json(vh.ln_eps))?;
    set(&mut v, "llm_config.vocab_size", l.n_vocab.into())?;
    set(&mut v, "llm_config.hidden_size", l.n_embd.into())?;
    set(&mut v, "llm_config.intermediate_size", l.n_ff.into())?;
    set(&mut v, "llm_config.num_hidden_layers", l.n_layer.into())?;
    set(&mut v, "llm_config.num_attention_heads", l.n_head.into())?;
    set(&mut v, "llm_config.num_key_value_heads", l.n_head_kv.into())?;
    set(&mut v, "llm_config.max_position_embeddings", l.n_ctx_train.into())?;
    set(&mut v, "llm_config.max_window_layers", l.n_layer.into())?;
    set(&mut v, "llm_config.rope_theta", f32_json(l.rope_theta))?;
    set(&mut v, "llm_config.rms_norm_eps", f32_json(l.rms_eps))?;
    set(&mut v, "downsample_ratio", f32_json(hp.downsample_ratio))?;
    set(&mut v, "ps_version", hp.ps_version.clone().into())?;
    set(&mut v, "force_image_size", vh.image_size.into())?;
    Ok(v)
}

/// f32 -> JSON number via its shortest decimal form (so 1e-6f32 is written 1e-6, not 9.99999997e-7).
fn f32_json(x: f32) -> Value {
    let s = format!("{x:e}");
    s.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_config() -> Value {
        let p = crate::test_model_files_dir().join("config.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    #[test]
    fn real_config_gives_internvl2_1b() {
        let hp = hparams_from_config_json(&real_config()).unwrap();
        assert_eq!(hp, Hparams::internvl2_1b());
    }

    #[test]
    fn tiny_config_roundtrips() {
        let tiny = Hparams::tiny();
        let v = config_json_for(&real_config(), &tiny).unwrap();
        assert_eq!(hparams_from_config_json(&v).unwrap(), tiny);
        let full = config_json_for(&real_config(), &Hparams::internvl2_1b()).unwrap();
        assert_eq!(
            full,
            real_config(),
            "the full preset must reproduce the real config.json"
        );
    }

    #[test]
    fn refuses_what_the_runtime_cannot_run_listing_all() {
        let mut v = real_config();
        v["vision_config"]["norm_type"] = "rms_norm".into();
        v["vision_config"]["qk_normalization"] = true.into();
        v["ps_version"] = "v1".into();
        v["llm_config"]["tie_word_embeddings"] = true.into();
        let e = hparams_from_config_json(&v).unwrap_err().to_string();
        for needle in ["norm_type", "qk_normalization", "ps_version", "tie_word_embeddings"] {
            assert!(e.contains(needle), "{needle} missing from: {e}");
        }
        let mut v = real_config();
        v["llm_config"]["num_key_value_heads"] = 3.into();
        assert!(hparams_from_config_json(&v)
            .unwrap_err()
            .to_string()
            .contains("num_key_value_heads"));
        let mut v = real_config();
        v["vision_config"].as_object_mut().unwrap().remove("hidden_size");
        let e = hparams_from_config_json(&v).unwrap_err().to_string();
        assert!(e.contains("vision_config.hidden_size") && e.contains("missing"), "{e}");
    }
}
