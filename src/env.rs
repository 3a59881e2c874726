//! Every environment variable the library reads, in one place (README.md, "Environment variables",
//! lists the same). Nothing else in the library calls `std::env::var`: a switch that changes behaviour is
//! documented here or does not exist. What users choose for a run is a parameter (`LoadParams`,
//! `SessionParams`, the CLI flags, the C ABI fields); what remains here is a diagnostic override or a
//! convention of another tool that users already set for it.
//!
//! | variable | read by | effect |
//! |---|---|---|
//! | `INTERNVL_GGML_LOG` | `ggml` (log filter) | `1` (any value but `0`): let every ggml log line through, debug included; default: warnings and errors only |
//! | `INTERNVL_CACHE` | `engine::hf` | where `--hf` keeps converted GGUFs (default `$XDG_CACHE_HOME/internvl`, else `~/.cache/internvl`) |
//! | `HF_HUB_OFFLINE` | `engine::hf` | `1`/`true`/`yes`/`on`: never download; a model missing from the cache is an error at once |
//! | `HF_HUB_CACHE`, `HF_HOME` | `engine::hf` | the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`); `hf-hub` reads `HF_HOME` for the token file |
//! | `XDG_CACHE_HOME`, `HOME` | `engine::hf` | the default cache directories above |
//! | `PATH` | `engine::hf` | where `internvl-convert` is looked for when it is not beside the running binary |
//! | `INTERNVL_MODEL_FILES` | `internvl-convert` (tests, `synth --tokenizer-from`) | the directory with the real InternVL2-1B JSON and tokenizer files (default `../shared/model/InternVL2-1B`) |
//!
//! Values are read when asked for, not cached, so that a test or an embedding program may set them
//! before the call that uses them.
use std::ffi::OsString;
use std::path::PathBuf;

/// Name of the variable that lets every ggml log line through.
pub const GGML_LOG: &str = "INTERNVL_GGML_LOG";
/// Name of the variable that moves the cache of converted GGUFs.
pub const CACHE: &str = "INTERNVL_CACHE";
/// Name of the variable that names the real model's JSON and tokenizer files (tests, `synth`).
pub const MODEL_FILES: &str = "INTERNVL_MODEL_FILES";
/// Name of the Hugging Face convention that forbids downloads.
pub const HF_HUB_OFFLINE: &str = "HF_HUB_OFFLINE";

/// `INTERNVL_GGML_LOG` set to anything but `0`: ggml's debug and info lines are printed too.
pub fn ggml_log_verbose() -> bool {
    std::env::var_os(GGML_LOG).is_some_and(|v| v != "0")
}

/// `HF_HUB_OFFLINE` set to a true value (`1`, `true`, `yes`, `on`, any case), as huggingface_hub reads it.
pub fn hf_hub_offline() -> bool {
    std::env::var(HF_HUB_OFFLINE).is_ok_and(|v| is_true(&v))
}

fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// A directory-valued variable (`HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`, `INTERNVL_CACHE`,
/// `INTERNVL_MODEL_FILES`); unset or empty is `None`.
pub fn dir(name: DirVar) -> Option<PathBuf> {
    std::env::var_os(name.as_str())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The directory-valued variables [`dir`] reads (a closed list, so that every one is documented above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirVar {
    HfHubCache,
    HfHome,
    XdgCacheHome,
    Home,
    InternvlCache,
    ModelFiles,
}

impl DirVar {
    pub fn as_str(self) -> &'static str {
        match self {
            DirVar::HfHubCache => "HF_HUB_CACHE",
            DirVar::HfHome => "HF_HOME",
            DirVar::XdgCacheHome => "XDG_CACHE_HOME",
            DirVar::Home => "HOME",
            DirVar::InternvlCache => CACHE,
            DirVar::ModelFiles => MODEL_FILES,
        }
    }
}

/// `PATH`, for finding a program by name.
pub fn path() -> Option<OsString> {
    std::env::var_os("PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_values_follow_huggingface_hub() {
        for v in ["1", "true", "TRUE", "yes", "On", " on "] {
            assert!(is_true(v), "{v:?}");
        }
        for v in ["", "0", "false", "no", "off", "2"] {
            assert!(!is_true(v), "{v:?}");
        }
    }
}
