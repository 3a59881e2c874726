//! `--hf OWNER/NAME`: find a checkpoint in the local Hugging Face cache, convert it once with the
//! `internvl-convert` binary into a cached GGUF, and hand back the GGUF's path.
//!
//! A checkpoint that is not in the cache is downloaded into it with the `hf-hub` crate's blocking client
//! (the default `hf` feature; an edge build can drop it). Without the feature, or with `HF_HUB_OFFLINE=1`,
//! a missing checkpoint is an immediate error that says how to get it by hand.
//!
//! Cache layout read (huggingface_hub's): `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; inside it
//! `models--OWNER--NAME/refs/main` names the revision and `snapshots/REV/` holds the files.
//! Converted GGUFs go to `$INTERNVL_CACHE`, else `$XDG_CACHE_HOME/internvl`, else
//! `~/.cache/internvl`, as `OWNER--NAME/REV-TYPE.gguf`. These variables are read through [`crate::env`].
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{self, DirVar};

/// Files the converter needs from a checkpoint (besides the weights).
pub const REQUIRED_FILES: &[&str] = &["config.json", "vocab.json", "merges.txt", "added_tokens.json"];
/// The names of the weight types `internvl-convert --type` accepts ([`crate::gguf::CONVERT_TYPES`]), in
/// lower case as they appear in the cached file names (`q6_k`, not ggml's `q6_K`).
pub fn type_names() -> impl Iterator<Item = String> {
    crate::gguf::CONVERT_TYPES.iter().map(|t| t.name().to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("invalid repository id {0:?}: expected OWNER/NAME")]
    BadRepo(String),
    #[error("unknown weight type {0:?} (one of: {types})", types = type_names().collect::<Vec<_>>().join(", "))]
    BadType(String),
    #[error("no Hugging Face cache directory: set HF_HOME or HOME")]
    NoCacheDir,
    #[error(
        "{repo} is not in the Hugging Face cache (looked for {path}), and it was not downloaded (HF_HUB_OFFLINE is set, or this build has no `hf` feature). \
         Get it with `huggingface-cli download {repo}` (or `git clone https://huggingface.co/{repo}`), \
         then convert by hand: `internvl-convert convert CHECKPOINT_DIR -o model.gguf --type {ty}` \
         and run `internvl-run -m model.gguf ...`"
    )]
    NotCached { repo: String, path: PathBuf, ty: String },
    #[error(
        "{repo}: the cached snapshot {dir} lacks {missing} (an interrupted download?); run \
         `huggingface-cli download {repo}` again, or convert a complete checkpoint by hand with `internvl-convert convert`"
    )]
    Incomplete {
        repo: String,
        dir: PathBuf,
        missing: String,
    },
    #[error(
        "cannot find the internvl-convert binary next to {exe} or on PATH; build it with \
         `cargo build --release -p internvl-convert`, or convert by hand: `internvl-convert convert {dir} -o model.gguf --type {ty}`"
    )]
    NoConverter { exe: PathBuf, dir: PathBuf, ty: String },
    #[error("internvl-convert ({converter}) failed on {dir} ({status}): {stderr}")]
    ConvertFailed {
        converter: PathBuf,
        dir: PathBuf,
        status: String,
        stderr: String,
    },
    #[error(
        "downloading {repo} failed: {detail}. Offline? Download it elsewhere with `huggingface-cli download {repo}` \
         into the Hugging Face cache, or convert a checkpoint directory by hand: \
         `internvl-convert convert CHECKPOINT_DIR -o model.gguf --type {ty}`"
    )]
    Download { repo: String, detail: String, ty: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, HfError>;

/// The Hub cache directory (see the module docs), if one can be named.
pub fn hub_cache_dir() -> Option<PathBuf> {
    env::dir(DirVar::HfHubCache)
        .or_else(|| env::dir(DirVar::HfHome).map(|h| h.join("hub")))
        .or_else(|| env::dir(DirVar::XdgCacheHome).map(|c| c.join("huggingface/hub")))
        .or_else(|| env::dir(DirVar::Home).map(|h| h.join(".cache/huggingface/hub")))
}

/// Where converted GGUFs are kept (see the module docs).
pub fn gguf_cache_dir() -> Option<PathBuf> {
    env::dir(DirVar::InternvlCache)
        .or_else(|| env::dir(DirVar::XdgCacheHome).map(|c| c.join("internvl")))
        .or_else(|| env::dir(DirVar::Home).map(|h| h.join(".cache/internvl")))
}

/// `OWNER/NAME` split and checked (letters, digits, `-`, `_`, `.`; no `..`), since both parts
/// become path components.
pub fn parse_repo(repo: &str) -> Result<(&str, &str)> {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && !s.contains("..")
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match repo.split_once('/') {
        Some((o, n)) if ok(o) && ok(n) => Ok((o, n)),
        _ => Err(HfError::BadRepo(repo.to_owned())),
    }
}

/// A checkpoint found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub revision: String,
}

/// Finds `repo`'s snapshot under `cache` (the revision `refs/main` names, else the newest
/// snapshot) and checks it holds the weights and the files in [`REQUIRED_FILES`].
pub fn find_snapshot(repo: &str, cache: &Path, ty: &str) -> Result<Snapshot> {
    let (owner, name) = parse_repo(repo)?;
    let root = cache.join(format!("models--{owner}--{name}"));
    let snapshots = root.join("snapshots");
    let not_cached = || HfError::NotCached {
        repo: repo.to_owned(),
        path: snapshots.clone(),
        ty: ty.to_owned(),
    };
    let refs_main = std::fs::read_to_string(root.join("refs/main"))
        .ok()
        .map(|s| s.trim().to_owned());
    let revision = match refs_main.filter(|r| !r.is_empty() && snapshots.join(r).is_dir()) {
        Some(r) => r,
        None => {
            let entries = std::fs::read_dir(&snapshots).map_err(|_| not_cached())?;
            let mut best: Option<(std::time::SystemTime, String)> = None;
            for e in entries.flatten() {
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                let newer = match &best {
                    Some((t, _)) => modified > *t,
                    None => true,
                };
                if e.path().is_dir() && newer {
                    best = Some((modified, name));
                }
            }
            best.map(|(_, n)| n).ok_or_else(not_cached)?
        }
    };
    if parse_repo(&format!("r/{revision}")).is_err() {
        return Err(not_cached());
    }
    let dir = snapshots.join(&revision);
    let mut missing: Vec<String> = REQUIRED_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if !dir.join("model.safetensors").is_file() && !dir.join("model.safetensors.index.json").is_file() {
        missing.push("model.safetensors (or model.safetensors.index.json and its shards)".into());
    }
    if !missing.is_empty() {
        return Err(HfError::Incomplete {
            repo: repo.to_owned(),
            dir,
            missing: missing.join(", "),
        });
    }
    Ok(Snapshot { dir, revision })
}

/// Downloads are attempted only in builds with the `hf` feature and when `HF_HUB_OFFLINE` is not set to
/// a true value (the Hugging Face convention; with it, a missing model fails at once).
fn download_allowed() -> bool {
    cfg!(feature = "hf") && !env::hf_hub_offline()
}

/// Fetches the checkpoint's files into the Hugging Face cache layout (`models--OWNER--NAME/...`).
#[cfg(feature = "hf")]
fn download(repo: &str, hub: &Path, ty: &str) -> Result<()> {
    let err = |detail: String| HfError::Download {
        repo: repo.to_owned(),
        detail,
        ty: ty.to_owned(),
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(hub.to_path_buf())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let model = api.model(repo.to_owned());
    let info = model.info().map_err(|e| err(e.to_string()))?;
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = |n: &str| {
        n.ends_with(".json")
            || n.ends_with(".safetensors")
            || n == "merges.txt"
            || n.ends_with(".py")
            || n.ends_with(".txt")
    };
    for name in names.iter().filter(|n| wanted(n)) {
        model.get(name).map_err(|e| err(format!("{name}: {e}")))?;
    }
    Ok(())
}

#[cfg(not(feature = "hf"))]
fn download(repo: &str, _hub: &Path, ty: &str) -> Result<()> {
    Err(HfError::Download {
        repo: repo.to_owned(),
        detail: "this build has no `hf` feature".into(),
        ty: ty.to_owned(),
    })
}

/// The converter: `internvl-convert` beside `exe`, else on `PATH`.
pub fn find_converter(exe: &Path) -> Option<PathBuf> {
    let name = format!("internvl-convert{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.parent().map(|d| d.join(&name)).filter(|p| p.is_file());
    beside.or_else(|| env::path().and_then(|p| std::env::split_paths(&p).map(|d| d.join(&name)).find(|p| p.is_file())))
}

/// Resolves `repo` to a GGUF of weight type `ty`: the cached conversion if present, else converts
/// the cached checkpoint with the converter found beside `exe`. `notice` gets one-line progress
/// messages. When the checkpoint is not cached it is downloaded (feature `hf`), unless `HF_HUB_OFFLINE=1`,
/// in which case it fails at once, naming what is missing and how to convert by hand.
pub fn resolve(repo: &str, ty: &str, exe: &Path, notice: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if !type_names().any(|t| t == ty) {
        return Err(HfError::BadType(ty.to_owned()));
    }
    let (owner, name) = parse_repo(repo)?;
    let hub = hub_cache_dir().ok_or(HfError::NoCacheDir)?;
    let snap = match find_snapshot(repo, &hub, ty) {
        Ok(s) => s,
        Err(HfError::NotCached { .. } | HfError::Incomplete { .. }) if download_allowed() => {
            notice(&format!(
                "{repo} is not in the Hugging Face cache: downloading into {}",
                hub.display()
            ));
            download(repo, &hub, ty)?;
            find_snapshot(repo, &hub, ty)?
        }
        Err(e) => return Err(e),
    };
    let out_dir = gguf_cache_dir()
        .ok_or(HfError::NoCacheDir)?
        .join(format!("{owner}--{name}"));
    let out = out_dir.join(format!("{}-{ty}.gguf", snap.revision));
    if out.is_file() {
        notice(&format!("using the cached conversion {}", out.display()));
        return Ok(out);
    }
    let converter = find_converter(exe).ok_or_else(|| HfError::NoConverter {
        exe: exe.to_path_buf(),
        dir: snap.dir.clone(),
        ty: ty.to_owned(),
    })?;
    std::fs::create_dir_all(&out_dir).map_err(|e| HfError::Io {
        path: out_dir.clone(),
        source: e,
    })?;
    notice(&format!(
        "converting {} to {} (once) with {}",
        snap.dir.display(),
        out.display(),
        converter.display()
    ));
    // The converter writes to a temporary file and renames it when complete, so an interrupted
    // conversion never leaves a partial GGUF under the final name.
    let status = Command::new(&converter)
        .arg("convert")
        .arg(&snap.dir)
        .arg("-o")
        .arg(&out)
        .args(["--type", ty, "--quiet"])
        .output()
        .map_err(|e| HfError::Io {
            path: converter.clone(),
            source: e,
        })?;
    if !status.status.success() || !out.is_file() {
        return Err(HfError::ConvertFailed {
            converter,
            dir: snap.dir,
            status: status.status.to_string(),
            stderr: String::from_utf8_lossy(&status.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_types_are_the_converter_types_in_lower_case() {
        let names: Vec<String> = type_names().collect();
        assert_eq!(
            names,
            ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_0", "q5_1", "q4_0", "q4_1", "iq4_nl"]
        );
        assert!(matches!(
            resolve("OpenGVLab/InternVL2-1B", "q6_K", Path::new("/nonexistent"), &mut |_| {}),
            Err(HfError::BadType(_))
        ));
    }

    #[test]
    fn repo_ids_are_checked() {
        assert_eq!(
            parse_repo("OpenGVLab/InternVL2-1B").unwrap(),
            ("OpenGVLab", "InternVL2-1B")
        );
        for bad in ["", "a", "a/b/c", "../x", "a/..", "a/b c", "/b", "a/"] {
            assert!(parse_repo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_lookup_names_what_is_missing() {
        let tmp = std::env::temp_dir().join(format!("ivl-hf-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let repo = "OpenGVLab/InternVL2-1B";
        match find_snapshot(repo, &tmp, "q8_0") {
            Err(HfError::NotCached { path, .. }) => {
                assert!(path.ends_with("models--OpenGVLab--InternVL2-1B/snapshots"))
            }
            other => panic!("{other:?}"),
        }
        let snap = tmp.join("models--OpenGVLab--InternVL2-1B/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(tmp.join("models--OpenGVLab--InternVL2-1B/refs")).unwrap();
        std::fs::write(tmp.join("models--OpenGVLab--InternVL2-1B/refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        match find_snapshot(repo, &tmp, "q8_0") {
            Err(HfError::Incomplete { missing, .. }) => {
                assert!(
                    missing.contains("vocab.json") && missing.contains("model.safetensors"),
                    "{missing}"
                );
                assert!(!missing.contains("config.json"));
            }
            other => panic!("{other:?}"),
        }
        for f in REQUIRED_FILES.iter().chain(&["model.safetensors"]) {
            std::fs::write(snap.join(f), "x").unwrap();
        }
        let s = find_snapshot(repo, &tmp, "q8_0").unwrap();
        assert_eq!(s.revision, "abc123");
        assert_eq!(s.dir, snap);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
