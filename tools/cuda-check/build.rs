//! `internvl --features cuda` pulls this crate in. Its build script has no dependencies, so Cargo runs it
//! at once, next to ggml's long CMake build, and it fails within a second with a message that says what is
//! missing (CMake's own failure is an opaque "CUDA compiler not found" or "No rule to make target").
use std::env;
use std::path::{Path, PathBuf};

fn main() {
    if env::var_os("CARGO_FEATURE_ENFORCE").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    println!("cargo:rerun-if-env-changed=CUDACXX");
    println!("cargo:rerun-if-env-changed=PATH");
    let in_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("nvcc").is_file()))
        .unwrap_or(false);
    let cuda_path = env::var_os("CUDA_PATH")
        .map(PathBuf::from)
        .map(|p| p.join("bin/nvcc").is_file())
        .unwrap_or(false);
    let cudacxx = env::var_os("CUDACXX").map(|p| Path::new(&p).is_file()).unwrap_or(false);
    let default = Path::new("/usr/local/cuda/bin/nvcc").is_file();
    if !(in_path || cuda_path || cudacxx || default) {
        eprintln!(
            "error: the `cuda` feature needs the CUDA toolkit, but nvcc was not found (not in PATH, not in \
             $CUDA_PATH/bin, not $CUDACXX, not /usr/local/cuda/bin). Install CUDA 12 (JetPack 6 on Jetson), put \
             nvcc in PATH or set CUDA_PATH, or build without `--features cuda`."
        );
        std::process::exit(1);
    }
}
