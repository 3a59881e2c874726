//! Generates our own ggml/gguf bindings.
//!
//! ggml comes from the pinned `llama-cpp-sys-2` crate, which builds it with CMake and installs the public
//! headers under `$DEP_LLAMA_ROOT/include`; we run bindgen over those headers so that we decide what we bind.
//! With the `system-ggml` feature the headers and libraries come from `$GGML_DIR` instead (Jetson users who
//! build ggml themselves).
use std::env;
use std::path::{Path, PathBuf};

const HEADERS: &[&str] = &["ggml.h", "ggml-alloc.h", "ggml-backend.h", "ggml-cpu.h", "gguf.h"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GGML_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        soname();
    }

    let include_dir = if env::var_os("CARGO_FEATURE_SYSTEM_GGML").is_some() {
        let dir = match env::var("GGML_DIR") {
            Ok(d) => PathBuf::from(d),
            Err(_) => fail("feature `system-ggml` needs GGML_DIR=<prefix> with include/ggml.h and lib/libggml*"),
        };
        link_system_ggml(&dir);
        dir.join("include")
    } else {
        match env::var("DEP_LLAMA_ROOT") {
            Ok(root) => PathBuf::from(root).join("include"),
            Err(_) => fail("DEP_LLAMA_ROOT is not set: the llama-cpp-sys-2 dependency did not build ggml"),
        }
    };
    for h in HEADERS {
        if !include_dir.join(h).is_file() {
            fail(&format!("ggml header {h} not found in {}", include_dir.display()));
        }
    }

    let mut wrapper = String::new();
    for h in HEADERS {
        wrapper.push_str(&format!("#include \"{h}\"\n"));
    }
    let cuda_header = include_dir.join("ggml-cuda.h");
    if cuda_header.is_file() {
        wrapper.push_str("#include \"ggml-cuda.h\"\n");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let wrapper_path = out.join("ggml_wrapper.h");
    std::fs::write(&wrapper_path, wrapper).expect("write wrapper header");

    let bindings = bindgen::Builder::default()
        .header(wrapper_path.to_string_lossy())
        .clang_arg(format!("-I{}", include_dir.display()))
        .allowlist_function("ggml_.*|gguf_.*")
        .allowlist_type("ggml_.*|gguf_.*")
        .allowlist_var("GGML_.*|GGUF_.*")
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen over the ggml headers failed: {e}")));
    bindings
        .write_to_file(out.join("ggml_bindings.rs"))
        .expect("write bindings");
}

/// The C library's SONAME, `libinternvl.so.<major>` (docs/c-api.md: what changes it), so that programs
/// record the ABI they were linked against; scripts/install.sh installs the library as
/// `libinternvl.so.<version>` with the `.so.<major>` and `.so` links. Cargo names its output
/// `libinternvl.so` only: a program linked in the build tree records `libinternvl.so.<major>`, so the
/// same link is made beside cargo's output (target/<profile>/) for such programs (tests, examples) to
/// run. It points at `libinternvl.so` by name and is dangling until cargo has linked the library.
fn soname() {
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    let name = format!("libinternvl.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{name}");
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    let link = profile_dir.join(&name);
    if std::fs::read_link(&link).is_err() {
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        if let Err(e) = std::os::unix::fs::symlink("libinternvl.so", &link) {
            println!("cargo:warning=cannot create {}: {e}", link.display());
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    panic!("{msg}");
}

fn link_system_ggml(dir: &Path) {
    let mut found = false;
    for sub in ["lib", "lib64"] {
        let lib = dir.join(sub);
        if lib.is_dir() {
            println!("cargo:rustc-link-search=native={}", lib.display());
            found = true;
        }
    }
    if !found {
        fail(&format!("GGML_DIR={} has no lib/ or lib64/ folder", dir.display()));
    }
    for name in ["ggml", "ggml-base", "ggml-cpu"] {
        println!("cargo:rustc-link-lib={name}");
    }
    let has_cuda = ["lib", "lib64"].iter().any(|s| {
        let l = dir.join(s);
        l.join("libggml-cuda.so").exists() || l.join("libggml-cuda.a").exists()
    });
    if has_cuda {
        println!("cargo:rustc-link-lib=ggml-cuda");
    }
}
