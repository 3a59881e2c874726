//! The C ABI (src/capi.rs, include/internvl.h) as C and C++ programs see it: the examples are compiled
//! against the committed header with the system compiler (`cc`/`c++`, or `$CC`/`$CXX`), linked with
//! target/release/libinternvl.a and libinternvl.so, and run on the tiny synthetic model.
//!
//! Also: the header is not stale (always: the functions of the header, src/capi.rs and the .so agree,
//! and the structs have the same layout in C and Rust; with cbindgen on PATH: byte-identical
//! regeneration), bad input gives error statuses (tests/c/bad_input.c), four threads sharing one
//! model answer as one thread does (examples/cpp/threads.cpp), and, when valgrind is installed, the C
//! example runs without memory errors or definite leaks.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use internvl::capi::{self, ivl_box, ivl_generate_params, ivl_model_params, ivl_reply, ivl_session_params, ivl_status};

/// target/release (the directory above this test binary's `deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

fn repo() -> PathBuf {
    common::repo()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn lib(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build with `cargo test --release` (the crate is lib + cdylib + staticlib)",
        p.display()
    );
    p
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    Static,
    Dynamic,
}

/// Libraries the static archive needs from the system (ggml is C++; Rust's std needs the rest): rustc's
/// `native-static-libs` for the default features on Linux, as in scripts/install.sh.
const STATIC_SYSTEM_LIBS: &[&str] = &[
    "-lstdc++",
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// The system libraries for a static link of this build: the `video` feature adds FFmpeg's.
fn static_system_libs() -> Vec<String> {
    let mut libs: Vec<String> = Vec::new();
    if cfg!(feature = "video") {
        let ffmpeg = ["libavformat", "libavcodec", "libswscale", "libavutil"];
        let out = Command::new("pkg-config").arg("--libs").args(ffmpeg).output();
        match out {
            Ok(o) if o.status.success() => libs.extend(text(&o.stdout).split_whitespace().map(str::to_string)),
            _ => libs.extend(["-lavformat", "-lavcodec", "-lswscale", "-lavutil"].map(str::to_string)),
        }
    }
    libs.extend(STATIC_SYSTEM_LIBS.iter().map(|s| s.to_string()));
    libs
}

/// The static variants are skipped in CUDA builds: the archive then needs the CUDA toolkit's
/// libraries, whose location this test does not know (the dynamic variants still run).
fn static_link_supported() -> bool {
    if cfg!(feature = "cuda") {
        eprintln!("note: CUDA build; skipping the statically linked variant");
        return false;
    }
    true
}

/// Compiles and links one example with warnings as errors; returns the executable.
fn build(source: &str, link: Link, dir: &Path) -> PathBuf {
    let cxx = source.ends_with(".cpp");
    let compiler =
        std::env::var(if cxx { "CXX" } else { "CC" }).unwrap_or_else(|_| (if cxx { "c++" } else { "cc" }).into());
    let stem = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("source name");
    let exe = dir.join(format!("{stem}-{link:?}").to_lowercase());
    let mut cmd = Command::new(&compiler);
    cmd.arg(if cxx { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg(repo().join(source))
        .arg("-o")
        .arg(&exe);
    match link {
        Link::Static => {
            cmd.arg(lib("libinternvl.a")).args(static_system_libs());
        }
        Link::Dynamic => {
            let so = lib("libinternvl.so");
            let dir = so.parent().expect("lib dir");
            cmd.arg("-L")
                .arg(dir)
                .arg("-linternvl")
                .arg(format!("-Wl,-rpath,{}", dir.display()));
        }
    }
    cmd.args(["-lm", "-pthread"]);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs a command, killing it after `limit`; stdout and stderr go through files so that a chatty
/// child cannot block on a full pipe.
fn run_bounded(cmd: &mut Command, limit: Duration, dir: &Path) -> Output {
    let tag = format!("{:?}", Instant::now()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let (out_path, err_path) = (dir.join(format!("out-{tag}")), dir.join(format!("err-{tag}")));
    let stdout = std::fs::File::create(&out_path).expect("stdout file");
    let stderr = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} ran longer than {limit:?}:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).expect("stdout"),
        stderr: std::fs::read(&err_path).expect("stderr"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn model() -> PathBuf {
    common::tiny_gguf(42, "f32", &[])
}

/// A small deterministic PNG (96x64 gradient) to describe.
fn test_image(dir: &Path) -> PathBuf {
    let p = dir.join("frame.png");
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    img.save(&p).expect("write png");
    p
}

// ---- the header is not stale ----

/// Function names declared in the header (identifiers followed by `(` on non-comment lines).
fn header_functions(header: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in header
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//") && !l.starts_with('*') && !l.starts_with("/*"))
    {
        let mut rest = line;
        while let Some(i) = rest.find("ivl_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let preceded_ok = i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if preceded_ok && tail[end..].starts_with('(') {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// `#[no_mangle]` `extern "C"` functions of src/capi.rs.
fn rust_exports(src: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = src.lines().map(str::trim).collect();
    let mut out = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(pos) = l.find("extern \"C\" fn ") else {
            continue;
        };
        if !l.starts_with("pub ") || i == 0 || lines[i - 1] != "#[no_mangle]" {
            continue;
        }
        let name: String = l[pos + 14..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

fn header() -> String {
    std::fs::read_to_string(repo().join("include/internvl.h")).expect("include/internvl.h")
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    let declared = header_functions(&header());
    let src = std::fs::read_to_string(repo().join("src/capi.rs")).expect("src/capi.rs");
    let exported = rust_exports(&src);
    assert!(
        exported.len() >= 15,
        "too few exports found in src/capi.rs: {exported:?}"
    );
    assert_eq!(
        declared, exported,
        "include/internvl.h is stale: regenerate it with `cbindgen --config cbindgen.toml --output include/internvl.h src/capi.rs`"
    );
    // Every exported function goes through the panic boundary.
    for name in &exported {
        let start = src.find(&format!("fn {name}(")).expect("function");
        let body = &src[start..];
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        let guarded = body.contains("guard(") || body.contains("guard_session(") || body.contains("catch_unwind(");
        let trivial = !body.contains("unsafe {") && !body.contains('?');
        assert!(
            guarded || trivial,
            "{name} neither runs under the panic boundary nor is trivial"
        );
    }
    if have("nm") {
        let so = lib("libinternvl.so");
        let out = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&so)
            .output()
            .expect("nm");
        let symbols: BTreeSet<String> = text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .map(str::to_string)
            .collect();
        for f in &declared {
            assert!(
                symbols.contains(f),
                "{f} is declared in the header but not exported by {}",
                so.display()
            );
        }
    } else {
        eprintln!("note: nm not found; the .so's symbol table was not checked");
    }
}

#[test]
fn header_constants_match_the_rust_values() {
    let h = header();
    let value_of = |name: &str| -> i64 {
        let line = h
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("#define {name} ")) || l.starts_with(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("{name} is not in the header"));
        let v = line
            .trim_start_matches("#define ")
            .trim_start_matches(name)
            .trim_start_matches(" = ")
            .trim_end_matches(',');
        v.trim().parse().unwrap_or_else(|_| panic!("cannot parse {line}"))
    };
    let consts: &[(&str, u32)] = &[
        ("IVL_PIXEL_FORMAT_RGB", capi::IVL_PIXEL_FORMAT_RGB),
        ("IVL_PIXEL_FORMAT_BGR", capi::IVL_PIXEL_FORMAT_BGR),
        ("IVL_PIXEL_FORMAT_RGBA", capi::IVL_PIXEL_FORMAT_RGBA),
        ("IVL_PIXEL_FORMAT_BGRA", capi::IVL_PIXEL_FORMAT_BGRA),
        ("IVL_DEVICE_AUTO", capi::IVL_DEVICE_AUTO),
        ("IVL_DEVICE_CPU", capi::IVL_DEVICE_CPU),
        ("IVL_DEVICE_GPU", capi::IVL_DEVICE_GPU),
        ("IVL_KV_F16", capi::IVL_KV_F16),
        ("IVL_KV_F32", capi::IVL_KV_F32),
        ("IVL_KV_Q8_0", capi::IVL_KV_Q8_0),
        ("IVL_KV_Q4_0", capi::IVL_KV_Q4_0),
    ];
    for (name, v) in consts {
        assert_eq!(value_of(name), i64::from(*v), "{name}");
    }
    use ivl_status::*;
    for s in [
        IVL_STATUS_OK,
        IVL_STATUS_INVALID_ARGUMENT,
        IVL_STATUS_IO,
        IVL_STATUS_INVALID_MODEL,
        IVL_STATUS_INVALID_IMAGE,
        IVL_STATUS_CONTEXT_FULL,
        IVL_STATUS_BAD_STATE,
        IVL_STATUS_DEVICE,
        IVL_STATUS_COMPUTE,
        IVL_STATUS_INTERNAL,
        IVL_STATUS_BUDGET,
    ] {
        assert_eq!(value_of(&format!("{s:?}")), s as i64);
    }
}

#[test]
fn structs_have_the_same_layout_in_c_and_rust() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("layout.c");
    let fields: &[(&str, &str)] = &[
        ("ivl_model_params", "tokenizer_dir"),
        ("ivl_session_params", "system_prompt"),
        ("ivl_session_params", "mem_budget"),
        ("ivl_generate_params", "keep_special"),
        ("ivl_reply", "total_ms"),
        ("ivl_reply", "finish"),
        ("ivl_box", "py2"),
    ];
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"internvl.h\"\nint main(void) {\n");
    for (ty, field) in fields {
        c.push_str(&format!(
            "    printf(\"%zu %zu\\n\", sizeof({ty}), offsetof({ty}, {field}));\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    std::fs::write(&src, c).expect("write layout.c");
    let exe = dir.path().join("layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(repo().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(&exe).output().expect("run layout");
    let c_layout: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    use std::mem::{offset_of, size_of};
    let rust_layout = [
        format!(
            "{} {}",
            size_of::<ivl_model_params>(),
            offset_of!(ivl_model_params, tokenizer_dir)
        ),
        format!(
            "{} {}",
            size_of::<ivl_session_params>(),
            offset_of!(ivl_session_params, system_prompt)
        ),
        format!(
            "{} {}",
            size_of::<ivl_session_params>(),
            offset_of!(ivl_session_params, mem_budget)
        ),
        format!(
            "{} {}",
            size_of::<ivl_generate_params>(),
            offset_of!(ivl_generate_params, keep_special)
        ),
        format!("{} {}", size_of::<ivl_reply>(), offset_of!(ivl_reply, total_ms)),
        format!("{} {}", size_of::<ivl_reply>(), offset_of!(ivl_reply, finish)),
        format!("{} {}", size_of::<ivl_box>(), offset_of!(ivl_box, py2)),
    ];
    assert_eq!(
        c_layout, rust_layout,
        "struct layouts differ between include/internvl.h and src/capi.rs: regenerate the header"
    );
}

#[test]
fn header_is_what_cbindgen_generates() {
    if !have("cbindgen") {
        eprintln!(
            "note: cbindgen is not on PATH; skipping the byte-for-byte header check (the other header tests still run)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = dir.path().join("internvl.h");
    let out = Command::new("cbindgen")
        .current_dir(repo())
        .args(["--config", "cbindgen.toml", "--output"])
        .arg(&fresh)
        .arg("src/capi.rs")
        .output()
        .expect("cbindgen");
    assert!(out.status.success(), "cbindgen failed:\n{}", text(&out.stderr));
    let fresh = std::fs::read_to_string(&fresh).expect("fresh header");
    assert!(
        fresh == header(),
        "include/internvl.h is stale: regenerate it with `cbindgen --config cbindgen.toml --output include/internvl.h src/capi.rs`"
    );
}

// ---- the examples ----

#[test]
fn c_example_links_statically_and_dynamically_and_matches_the_rust_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model();
    let image = test_image(dir.path());
    let question = "What is in the picture?";
    let mut answers = Vec::new();
    let links = if static_link_supported() {
        vec![Link::Static, Link::Dynamic]
    } else {
        vec![Link::Dynamic]
    };
    for &link in &links {
        let exe = build("examples/c/describe.c", link, dir.path());
        let out = run_bounded(
            Command::new(&exe)
                .args(["-n", "6", "-t", "1", "-c", "1024", "-m", "1"])
                .arg(&model)
                .arg(&image)
                .arg(question),
            Duration::from_secs(300),
            dir.path(),
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{link:?} describe failed:\n{stderr}");
        let n_img = internvl::hparams::Hparams::tiny().num_image_token();
        assert!(
            stderr.contains(&format!("({n_img} image)")),
            "{link:?}: one tile of image tokens expected:\n{stderr}"
        );
        assert!(stderr.contains("6 generated"), "{link:?}: 6 tokens expected:\n{stderr}");
        answers.push(stdout);
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "static and dynamic builds answer differently: {answers:?}"
    );

    // The same question through the Rust API gives the same answer.
    use internvl::engine::{
        ChatParams, GenerateParams, Image, LoadParams, Message, Model, SessionParams, TilingParams,
    };
    let m = Model::load(&model, &LoadParams::default()).expect("load");
    let params = ChatParams {
        session: SessionParams {
            n_ctx: 1024,
            n_threads: 1,
            ..Default::default()
        },
        tiling: Some(TilingParams {
            max_tiles: 1,
            min_tiles: 1,
            ..m.tiling()
        }),
        ..Default::default()
    };
    let mut chat = m.chat(params).expect("chat");
    let img = Image::open(&image, &chat.tiling()).expect("image");
    let gen = GenerateParams {
        max_new_tokens: 6,
        ..Default::default()
    };
    let reply = chat
        .send(Message::text(question).with_image(img), &gen, |_| {
            internvl::engine::Flow::Continue
        })
        .expect("send");
    assert!(!reply.text.is_empty());
    assert!(
        answers[0].contains(&reply.text),
        "C answer {:?} does not contain the Rust answer {:?}",
        answers[0],
        reply.text
    );
}

#[test]
fn camera_loop_streams_an_answer_per_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build("examples/c/camera_loop.c", Link::Dynamic, dir.path());
    let out = run_bounded(
        Command::new(&exe).args(["-f", "3", "-n", "4", "-t", "1"]).arg(model()),
        Duration::from_secs(300),
        dir.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "camera_loop failed:\n{stderr}");
    for f in 0..3 {
        assert!(
            stdout.contains(&format!("frame {f}: ")),
            "no answer for frame {f}:\n{stdout}"
        );
        assert!(stderr.contains(&format!("frame {f}: 4 tokens")), "frame {f}:\n{stderr}");
    }
    // From the second frame on, the system prompt's KV rows are reused.
    let reused: Vec<u32> = stderr
        .lines()
        .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" reused")?.parse().ok())
        .collect();
    assert_eq!(reused.len(), 3, "{stderr}");
    assert!(
        reused[0] == 0 && reused[1] > 0 && reused[1] == reused[2],
        "reused tokens per frame: {reused:?}"
    );
}

#[test]
fn four_threads_sharing_one_model_answer_as_one_thread_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build(
        "examples/cpp/threads.cpp",
        if static_link_supported() {
            Link::Static
        } else {
            Link::Dynamic
        },
        dir.path(),
    );
    let out = run_bounded(
        Command::new(&exe).args(["-j", "4", "-n", "6"]).arg(model()),
        Duration::from_secs(300),
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "threads failed ({:?}):\n{stdout}\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    let same = stdout.lines().filter(|l| l.contains(": same: ")).count();
    assert_eq!(same, 4, "{stdout}");
    // The cameras see different frames and questions: the comparison is not between identical runs.
    let answers: BTreeSet<&str> = stdout.lines().filter_map(|l| l.split(": same: ").nth(1)).collect();
    assert!(
        answers.len() > 1,
        "all four answers are identical, the check would be weak: {stdout}"
    );
}

#[test]
fn bad_input_returns_errors_and_the_process_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model();
    // A GGUF header followed by garbage, and the real model cut after 1 MiB.
    let corrupt = dir.path().join("corrupt.gguf");
    let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
    bytes.extend((0..200u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    std::fs::write(&corrupt, bytes).expect("write corrupt");
    let truncated = dir.path().join("truncated.gguf");
    let head = {
        use std::io::Read;
        let mut v = Vec::new();
        std::fs::File::open(&model)
            .expect("model")
            .take(1 << 20)
            .read_to_end(&mut v)
            .expect("read");
        v
    };
    std::fs::write(&truncated, head).expect("write truncated");
    let image = test_image(dir.path());

    let exe = build("tests/c/bad_input.c", Link::Dynamic, dir.path());
    let out = run_bounded(
        Command::new(&exe).arg(&model).arg(&corrupt).arg(&truncated).arg(&image),
        Duration::from_secs(300),
        dir.path(),
    );
    assert_checks_passed("bad_input", &out, 60);
}

/// A C check program (tests/c/*.c) printed "ok ..." per check and "N failure(s)": it exited 0, reported
/// 0 failures, and ran at least `min_checks` checks.
fn assert_checks_passed(program: &str, out: &Output, min_checks: usize) {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{program} reported failures ({:?}):\n{stdout}\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(stdout.contains("0 failure(s)"), "{stdout}");
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checks >= min_checks, "only {checks} checks ran:\n{stdout}");
}

/// API misuse (tests/c/misuse.c): wrong order, double frees, stale and foreign handles, re-entrant
/// calls from the token callback, the model freed while sessions on two threads use it, memory budget
/// refusals. Run directly, then under valgrind when installed: the stale handles must be refused
/// without the freed memory being read.
#[test]
fn misuse_is_refused_and_the_model_outlives_its_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build("tests/c/misuse.c", Link::Dynamic, dir.path());
    let check = |out: &Output| assert_checks_passed("misuse", out, 45);
    let out = run_bounded(Command::new(&exe).arg(model()), Duration::from_secs(300), dir.path());
    check(&out);
    if !have("valgrind") {
        eprintln!("note: valgrind is not installed; tests/c/misuse.c ran without the memory check");
        return;
    }
    let out = run_bounded(
        Command::new("valgrind")
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
            ])
            .arg(&exe)
            .arg(model()),
        Duration::from_secs(900),
        dir.path(),
    );
    check(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
    assert!(
        stderr.contains("definitely lost: 0 bytes") || stderr.contains("All heap blocks were freed"),
        "definite leaks:\n{stderr}"
    );
}

#[test]
fn c_example_is_clean_under_valgrind() {
    if !have("valgrind") {
        eprintln!("note: valgrind is not installed; skipping the memory check of examples/c/describe.c");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build("examples/c/describe.c", Link::Dynamic, dir.path());
    // A JPEG: describe.c reads it into memory and passes the bytes (ivl_session_add_image_bytes). A small
    // committed fixture (Pillow-made, 4:2:0), so that valgrind's run stays short.
    let image = common::repo().join("tests/fixtures/images/jpeg/q90_420_160x120.jpg");
    let out = run_bounded(
        Command::new("valgrind")
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
            ])
            .arg(&exe)
            .args(["-n", "3", "-t", "1", "-c", "512", "-m", "1"])
            .arg(model())
            .arg(&image),
        Duration::from_secs(900),
        dir.path(),
    );
    let stderr = text(&out.stderr);
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY") || l.contains("definitely lost") || l.contains("in use at exit"))
        .collect();
    eprintln!("valgrind:\n{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "valgrind found errors (exit {:?}):\n{stderr}",
        out.status.code()
    );
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
    assert!(
        stderr.contains("definitely lost: 0 bytes") || stderr.contains("All heap blocks were freed"),
        "definite leaks:\n{stderr}"
    );
}

/// The SONAME of a shared library (`readelf -d`), `None` without one or without readelf.
fn soname(lib: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-d").arg(lib).output().ok()?;
    let t = text(&out.stdout);
    let line = t.lines().find(|l| l.contains("(SONAME)"))?;
    Some(line.split('[').nth(1)?.trim_end_matches(']').to_owned())
}

/// The build's cdylib records libinternvl.so.<major> (build.rs), and the link of that name beside it
/// lets programs linked in the build tree run; a program linked with -linternvl records the SONAME.
#[test]
fn the_shared_library_has_a_versioned_soname() {
    if !have("readelf") {
        eprintln!("note: readelf is not installed; skipping the SONAME check");
        return;
    }
    let so = lib("libinternvl.so");
    let want = format!("libinternvl.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(soname(&so).as_deref(), Some(want.as_str()));
    let alias = so.with_file_name(&want);
    assert_eq!(std::fs::read_link(&alias).ok(), Some(PathBuf::from("libinternvl.so")));
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build("examples/c/describe.c", Link::Dynamic, dir.path());
    let needed = text(
        &Command::new("readelf")
            .arg("-d")
            .arg(&exe)
            .output()
            .expect("readelf")
            .stdout,
    );
    assert!(needed.contains(&format!("Shared library: [{want}]")), "{needed}");
}

/// Cancellation from another thread during the vision encoding of a 13-tile image, progress reports,
/// encoded images from memory (tests/c/cancel.c). Prints the timing figures it measured.
#[test]
fn cancel_from_another_thread_returns_within_one_vision_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1792x1344 (4:3): a 4x3 grid of 448-pixel tiles and the thumbnail, 13 tiles.
    // Encoded with libjpeg-turbo (the `image` crate is built without its JPEG codec: the runtime decodes
    // JPEG with libjpeg-turbo only).
    let p = dir.path().join("big.jpg");
    let rgb = image::RgbImage::from_fn(1792, 1344, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 256) as u8])
    });
    let pixels = turbojpeg::Image {
        pixels: rgb.as_raw().as_slice(),
        width: 1792,
        pitch: 1792 * 3,
        height: 1344,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg = turbojpeg::compress(pixels, 90, turbojpeg::Subsamp::Sub2x2).expect("encode jpeg");
    std::fs::write(&p, &*jpeg).expect("write jpeg");
    let exe = build("tests/c/cancel.c", Link::Dynamic, dir.path());
    let out = run_bounded(
        Command::new(&exe).arg(model()).arg(&p),
        Duration::from_secs(300),
        dir.path(),
    );
    let stdout = text(&out.stdout);
    for l in stdout.lines().filter(|l| l.starts_with("figures:")) {
        eprintln!("{l}");
    }
    assert_checks_passed("cancel", &out, 30);
}

#[test]
fn install_script_writes_a_working_pkg_config_file() {
    if !have("pkg-config") || !have("bash") {
        eprintln!("note: pkg-config or bash missing; skipping the install script check");
        return;
    }
    // The libraries are built by this test run; SKIP_BUILD installs them without calling cargo.
    lib("libinternvl.so");
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("prefix");
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("PREFIX", &prefix)
        .env("SKIP_BUILD", "1")
        .env("CARGO_TARGET_DIR", target_dir().parent().expect("target"))
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "install.sh failed:\n{}", text(&out.stderr));
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    // The library under its full version, the SONAME link to it and the development link to that.
    let lib_dir = prefix.join("lib");
    let link = |name: &str| std::fs::read_link(lib_dir.join(name)).map(|p| p.display().to_string());
    assert_eq!(
        link(&format!("libinternvl.so.{major}")).ok(),
        Some(format!("libinternvl.so.{version}"))
    );
    assert_eq!(link("libinternvl.so").ok(), Some(format!("libinternvl.so.{major}")));
    assert_eq!(
        soname(&lib_dir.join(format!("libinternvl.so.{version}"))).as_deref(),
        Some(format!("libinternvl.so.{major}").as_str())
    );
    for f in [
        "include/internvl.h",
        "lib/libinternvl.so",
        &format!("lib/libinternvl.so.{version}"),
        "lib/libinternvl.a",
        "lib/pkgconfig/internvl.pc",
        "lib/pkgconfig/internvl-static.pc",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    let pc_dir = prefix.join("lib/pkgconfig");
    let flags = |pkg: &str| -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(["--cflags", "--libs", pkg])
            .env("PKG_CONFIG_PATH", &pc_dir)
            .output()
            .expect("pkg-config");
        assert!(out.status.success(), "pkg-config {pkg}: {}", text(&out.stderr));
        text(&out.stdout).split_whitespace().map(str::to_string).collect()
    };
    let dynamic = flags("internvl");
    assert!(
        dynamic
            .iter()
            .any(|f| f == &format!("-I{}", prefix.join("include").display())),
        "{dynamic:?}"
    );
    assert!(dynamic.iter().any(|f| f == "-linternvl"), "{dynamic:?}");
    let stat = flags("internvl-static");
    assert!(stat.iter().any(|f| f.ends_with("/lib/libinternvl.a")), "{stat:?}");

    // The installed files are enough to build and run the example, both ways.
    let image = test_image(dir.path());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut variants = vec![("dyn", dynamic, true)];
    if static_link_supported() && !cfg!(feature = "video") {
        // (SKIP_BUILD writes the default-feature list of system libraries, without FFmpeg's.)
        variants.push(("static", stat, false));
    }
    for (name, pc_flags, rpath) in variants {
        let exe = dir.path().join(format!("describe-pc-{name}"));
        let mut cmd = Command::new(&cc);
        cmd.arg("-std=c11")
            .arg(repo().join("examples/c/describe.c"))
            .arg("-o")
            .arg(&exe)
            .args(&pc_flags);
        if rpath {
            cmd.arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
        }
        let out = cmd.output().expect("cc");
        assert!(out.status.success(), "{cmd:?}:\n{}", text(&out.stderr));
        let out = run_bounded(
            Command::new(&exe)
                .args(["-n", "2", "-t", "1", "-c", "512", "-m", "1"])
                .arg(model())
                .arg(&image),
            Duration::from_secs(300),
            dir.path(),
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
}
