//! Synthetic checkpoints: random weights in the exact layout of OpenGVLab/InternVL2-1B (spec §2.1), so the
//! converter and the runtime can be tested end to end without the real 1.9 GB download.
//!
//! The directory gets: `model.safetensors` (BF16, the tensors of `names::tensor_specs` in checkpoint order)
//! or `--shards N` files `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`;
//! `config.json` (the real one with every size replaced by the preset's); and the real
//! generation/preprocessor/tokenizer files copied from `--tokenizer-from`.
//!
//! Values (realistic scales, so activations stay in a realistic range):
//! Linear weights, token embedding, lm_head, patch kernel, class and position embeddings, and all biases
//! N(0, 0.02); LayerNorm/RMSNorm weights 1 + N(0, 0.02); LayerNorm biases N(0, 0.02); layer scales
//! uniform in [0.1, 1). Deterministic from the seed: chunk `c` of tensor `t` draws from its own stream
//! `Rng::for_stream(seed, t << 32 | c)`, so the bytes do not depend on threads or sharding.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use internvl::hparams::Hparams;
use internvl::names::{tensor_specs, Role, TensorSpec};
use rayon::prelude::*;
use serde_json::Value;

use crate::config::{config_json_for, ConfigError};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::safetensors::{BF16Writer, StError, INDEX_FILE, SINGLE_FILE};

/// Files copied verbatim from the real checkpoint (everything but config.json and the weights).
pub const COPIED_FILES: [&str; 7] = [
    "generation_config.json",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Elements per generated chunk (one PRNG stream each).
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Safetensors(#[from] StError),
    #[error("output directory {0} is not empty; choose a new or empty directory")]
    NotEmpty(PathBuf),
    #[error("--shards {shards}: must be between 1 and the number of tensors ({n_tensors})")]
    Shards { shards: usize, n_tensors: usize },
    #[error("{path}: missing; --tokenizer-from must point at a directory with the real InternVL2-1B JSON and tokenizer files")]
    MissingSource { path: PathBuf },
    #[error("interrupted")]
    Interrupted,
}

/// The presets of `synth --preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// `Hparams::tiny()`: every structural ratio of the real model, small widths, 2 layers per part.
    Tiny,
    /// InternVL2-1B's real sizes (637 tensors, 938M parameters, 1.9 GB).
    Full,
}

impl Preset {
    pub fn hparams(self) -> Hparams {
        match self {
            Preset::Tiny => Hparams::tiny(),
            Preset::Full => Hparams::internvl2_1b(),
        }
    }
}

/// What `synth` wrote.
#[derive(Debug, Clone)]
pub struct SynthReport {
    pub files: Vec<PathBuf>,
    pub n_tensors: usize,
    pub n_params: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The distribution a tensor's values are drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal { mean: f64, std: f64 },
    Uniform { lo: f64, hi: f64 },
}

pub fn init_for(spec: &TensorSpec) -> Init {
    const STD: f64 = 0.02;
    match spec.role {
        Role::Norm if spec.hf_name.ends_with(".bias") => Init::Normal { mean: 0.0, std: STD },
        Role::Norm => Init::Normal { mean: 1.0, std: STD },
        Role::LayerScale => Init::Uniform { lo: 0.1, hi: 1.0 },
        _ => Init::Normal { mean: 0.0, std: STD },
    }
}

/// Chunk `chunk` (of `CHUNK` elements, the last one shorter) of tensor number `index`, as bf16 bits.
pub fn chunk_bf16(seed: u64, index: usize, chunk: usize, len: usize, init: Init) -> Vec<u16> {
    let mut rng = Rng::for_stream(seed, ((index as u64) << 32) | chunk as u64);
    (0..len)
        .map(|_| {
            let x = match init {
                Init::Normal { mean, std } => mean + std * rng.normal(),
                Init::Uniform { lo, hi } => lo + (hi - lo) * rng.uniform(),
            };
            half::bf16::from_f32(x as f32).to_bits()
        })
        .collect()
}

/// Splits tensors (in order) into `n` contiguous groups of roughly equal bytes.
fn shard_groups(specs: &[TensorSpec], n: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = specs.iter().map(|s| 2 * s.n_elements()).sum();
    let mut groups = Vec::with_capacity(n);
    let mut start = 0;
    let mut acc = 0usize;
    for (i, s) in specs.iter().enumerate() {
        acc += 2 * s.n_elements();
        let remaining_tensors = specs.len() - (i + 1);
        let remaining_groups = n - groups.len() - 1;
        // Close the group when its share is reached, keeping at least one tensor for each later group.
        let target = total * (groups.len() + 1) / n;
        if remaining_groups > 0 && (acc >= target || remaining_tensors == remaining_groups) {
            groups.push(start..i + 1);
            start = i + 1;
        }
    }
    groups.push(start..specs.len());
    groups
}

fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a synthetic checkpoint for `hp` into `out_dir` (created; must be new or empty). On failure or
/// interruption the directory is left as it was found (removed if it was created, emptied otherwise).
pub fn synth(
    hp: &Hparams,
    seed: u64,
    out_dir: &Path,
    shards: usize,
    files_from: &Path,
    progress: &mut Progress,
    should_stop: &dyn Fn() -> bool,
) -> Result<SynthReport, SynthError> {
    let specs = tensor_specs(hp);
    if shards == 0 || shards > specs.len() {
        return Err(SynthError::Shards {
            shards,
            n_tensors: specs.len(),
        });
    }
    let base_cfg_path = files_from.join("config.json");
    if !base_cfg_path.is_file() {
        return Err(SynthError::MissingSource { path: base_cfg_path });
    }
    for f in COPIED_FILES {
        if !files_from.join(f).is_file() {
            return Err(SynthError::MissingSource {
                path: files_from.join(f),
            });
        }
    }
    let existed = out_dir.exists();
    if existed {
        let mut entries = std::fs::read_dir(out_dir).map_err(io(out_dir))?;
        if entries.next().is_some() {
            return Err(SynthError::NotEmpty(out_dir.to_path_buf()));
        }
    } else {
        std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    }
    let result = write_checkpoint(hp, &specs, seed, out_dir, shards, files_from, progress, should_stop);
    if result.is_err() {
        // Best effort: the error being returned matters more than a cleanup failure.
        let _ = std::fs::remove_dir_all(out_dir);
        if existed {
            let _ = std::fs::create_dir(out_dir);
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn write_checkpoint(
    hp: &Hparams,
    specs: &[TensorSpec],
    seed: u64,
    out_dir: &Path,
    shards: usize,
    files_from: &Path,
    progress: &mut Progress,
    should_stop: &dyn Fn() -> bool,
) -> Result<SynthReport, SynthError> {
    let t0 = Instant::now();
    let base_cfg_path = files_from.join("config.json");

    // JSON and tokenizer files first: small, and a failure here leaves no weights behind.
    let base_text = std::fs::read_to_string(&base_cfg_path).map_err(io(&base_cfg_path))?;
    let base: Value = serde_json::from_str(&base_text).map_err(|e| ConfigError::Json {
        path: base_cfg_path.clone(),
        reason: e.to_string(),
    })?;
    let cfg = config_json_for(&base, hp)?;
    let cfg_path = out_dir.join("config.json");
    let mut cfg_text = serde_json::to_string_pretty(&cfg).map_err(|e| ConfigError::Json {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    cfg_text.push('\n');
    std::fs::write(&cfg_path, cfg_text).map_err(io(&cfg_path))?;
    let mut files = vec![cfg_path];
    for f in COPIED_FILES {
        let dst = out_dir.join(f);
        std::fs::copy(files_from.join(f), &dst).map_err(io(&dst))?;
        // fs::copy keeps the source's mode; the shared originals are read-only, the copies need not be.
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).map_err(io(&dst))?;
        files.push(dst);
    }

    let groups = shard_groups(specs, shards);
    let total_bytes: u64 = specs.iter().map(|s| 2 * s.n_elements() as u64).sum();
    progress.start("synth", total_bytes);
    let mut done = 0u64;
    let mut weight_map = serde_json::Map::new();
    for (gi, range) in groups.iter().enumerate() {
        let name = if shards == 1 {
            SINGLE_FILE.to_string()
        } else {
            shard_name(gi, shards)
        };
        let path = out_dir.join(&name);
        let group = &specs[range.clone()];
        let shapes: Vec<(String, Vec<usize>)> = group.iter().map(|s| (s.hf_name.clone(), s.hf_shape.clone())).collect();
        let mut w = BF16Writer::create(&path, &shapes)?;
        for (offset, spec) in group.iter().enumerate() {
            let index = range.start + offset;
            let init = init_for(spec);
            let n = spec.n_elements();
            let n_chunks = n.div_ceil(CHUNK);
            // Generate a few chunks in parallel, then write them in order.
            let batch = rayon::current_num_threads().max(1) * 2;
            let mut c0 = 0;
            while c0 < n_chunks {
                if should_stop() {
                    return Err(SynthError::Interrupted);
                }
                let c1 = (c0 + batch).min(n_chunks);
                let chunks: Vec<Vec<u16>> = (c0..c1)
                    .into_par_iter()
                    .map(|c| chunk_bf16(seed, index, c, CHUNK.min(n - c * CHUNK), init))
                    .collect();
                for bits in &chunks {
                    w.write_bf16_bits(bits)?;
                    done += 2 * bits.len() as u64;
                }
                progress.update(done, &spec.hf_name);
                c0 = c1;
            }
            weight_map.insert(spec.hf_name.clone(), Value::String(name.clone()));
        }
        w.finish()?;
        files.push(path);
    }
    if shards > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_bytes },
            "weight_map": weight_map,
        });
        let path = out_dir.join(INDEX_FILE);
        let text = serde_json::to_string_pretty(&index).map_err(|e| ConfigError::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io(&path))?;
        files.push(path);
    }
    progress.finish();
    Ok(SynthReport {
        files,
        n_tensors: specs.len(),
        n_params: specs.iter().map(TensorSpec::n_elements).sum(),
        bytes: total_bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_contiguous_and_balanced() {
        let specs = tensor_specs(&Hparams::internvl2_1b());
        for n in [1, 2, 3, 7] {
            let g = shard_groups(&specs, n);
            assert_eq!(g.len(), n);
            assert_eq!(g[0].start, 0);
            assert_eq!(g[n - 1].end, specs.len());
            for w in g.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(!w[0].is_empty());
            }
        }
        let few = &specs[..3];
        let g = shard_groups(few, 3);
        assert_eq!(g, vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn interrupted_or_refused_synth_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ck");
        let files = crate::test_model_files_dir();
        let r = synth(&Hparams::tiny(), 0, &out, 1, &files, &mut Progress::hidden(), &|| true);
        assert!(matches!(r, Err(SynthError::Interrupted)), "{r:?}");
        assert!(!out.exists());
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("x"), "").unwrap();
        let r = synth(&Hparams::tiny(), 0, &out, 1, &files, &mut Progress::hidden(), &|| false);
        assert!(matches!(r, Err(SynthError::NotEmpty(_))), "{r:?}");
        let r = synth(
            &Hparams::tiny(),
            0,
            &tmp.path().join("n"),
            0,
            &files,
            &mut Progress::hidden(),
            &|| false,
        );
        assert!(matches!(r, Err(SynthError::Shards { .. })), "{r:?}");
    }

    #[test]
    fn chunks_are_deterministic_and_scaled() {
        let a = chunk_bf16(5, 3, 0, 1000, Init::Normal { mean: 0.0, std: 0.02 });
        assert_eq!(a, chunk_bf16(5, 3, 0, 1000, Init::Normal { mean: 0.0, std: 0.02 }));
        assert_ne!(a, chunk_bf16(6, 3, 0, 1000, Init::Normal { mean: 0.0, std: 0.02 }));
        assert_ne!(a, chunk_bf16(5, 3, 1, 1000, Init::Normal { mean: 0.0, std: 0.02 }));
        let v: Vec<f32> = a.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
        let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((rms - 0.02).abs() < 0.002, "rms {rms}");
        let u = chunk_bf16(1, 0, 0, 1000, Init::Uniform { lo: 0.1, hi: 1.0 });
        assert!(u
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .all(|x| (0.1..=1.0).contains(&x)));
    }
}
