//! The C ABI's structured answers and its growth rule (docs/c-api.md, "How the ABI grows"):
//! - an app compiled with the first layout of `ivl_generate_params` (before the structured-answer
//!   fields) gets their defaults, whatever bytes follow its struct; a too-small `struct_size` is refused
//!   with the struct named; a larger struct is accepted only when the fields past ours are zero;
//! - examples/c/structured.c (a schema-constrained answer about a raw RGB frame) gives JSON that
//!   validates against its schema for several seeds, and runs clean under valgrind when installed.
mod common;

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;

use internvl::capi::*;

fn model() -> PathBuf {
    common::tiny_gguf(42, "f32", &[])
}

fn last_error() -> String {
    // SAFETY: ivl_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(ivl_last_error()) }
        .to_string_lossy()
        .into_owned()
}

struct Session {
    model: *mut ivl_model,
    session: *mut ivl_session,
}

impl Session {
    fn open() -> Session {
        let path = std::ffi::CString::new(model().to_str().expect("utf-8 path")).expect("path");
        let mut mp = ivl_model_default_params();
        mp.n_threads = 1;
        let mut model = std::ptr::null_mut();
        // SAFETY: valid arguments.
        assert_eq!(
            unsafe { ivl_model_load(path.as_ptr(), &mp, &mut model) },
            ivl_status::IVL_STATUS_OK
        );
        let mut sp = ivl_session_default_params();
        sp.n_ctx = 512;
        let mut session = std::ptr::null_mut();
        // SAFETY: a live model.
        assert_eq!(
            unsafe { ivl_session_new(model, &sp, &mut session) },
            ivl_status::IVL_STATUS_OK
        );
        Session { model, session }
    }

    /// Asks a question and generates with `params` (any struct whose first field is its size).
    fn generate<T>(&self, params: &T) -> (ivl_status, String) {
        // SAFETY: a live session; the text is NUL-terminated.
        let st = unsafe { ivl_session_prompt(self.session, c"hi".as_ptr()) };
        // BAD_STATE: the last call refused its parameters before generating, so its question is still
        // open and is answered now.
        assert!(
            matches!(st, ivl_status::IVL_STATUS_OK | ivl_status::IVL_STATUS_BAD_STATE),
            "{st:?}"
        );
        let mut reply = std::mem::MaybeUninit::<ivl_reply>::zeroed();
        // SAFETY: `params` starts with an ivl_generate_params-compatible prefix of its `struct_size`.
        let st = unsafe {
            ivl_session_generate(
                self.session,
                (params as *const T).cast(),
                None,
                std::ptr::null_mut(),
                reply.as_mut_ptr(),
            )
        };
        if st != ivl_status::IVL_STATUS_OK {
            return (st, last_error());
        }
        // SAFETY: written on success.
        let r = unsafe { reply.assume_init() };
        // SAFETY: the reply's text is valid until the next call on the session.
        (st, unsafe { CStr::from_ptr(r.text) }.to_string_lossy().into_owned())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: live handles, freed once.
        unsafe {
            ivl_session_free(self.session);
            ivl_model_free(self.model);
        }
    }
}

const BAD_SCHEMA: &CStr = c"{\"type\": \"frobnicate\"}";

#[test]
fn the_first_layout_gets_defaults_for_the_new_fields() {
    let s = Session::open();
    let mut p = ivl_generate_default_params();
    assert_eq!(p.struct_size, std::mem::size_of::<ivl_generate_params>());
    p.max_new_tokens = 4;
    // With the current layout the bad schema is read and refused, before anything is evaluated.
    p.json_schema = BAD_SCHEMA.as_ptr();
    let (st, err) = s.generate(&p);
    assert_eq!(st, ivl_status::IVL_STATUS_INVALID_ARGUMENT, "{err}");
    assert!(err.contains("JSON schema"), "{err}");
    // An app of the first layout (up to keep_special) sets struct_size to that: the bytes after it
    // (here the bad schema, a stop list with a NULL pointer) are not read, the defaults apply.
    p.struct_size = std::mem::offset_of!(ivl_generate_params, json_schema);
    p.n_stop = 3;
    let (st, text) = s.generate(&p);
    assert_eq!(st, ivl_status::IVL_STATUS_OK, "{text}");
}

#[test]
fn too_small_and_unknown_set_fields_are_refused() {
    let s = Session::open();
    let mut p = ivl_generate_default_params();
    p.max_new_tokens = 2;
    p.struct_size = std::mem::offset_of!(ivl_generate_params, json_schema) - 1;
    let (st, err) = s.generate(&p);
    assert_eq!(st, ivl_status::IVL_STATUS_INVALID_ARGUMENT);
    assert!(err.contains("ivl_generate_params.struct_size"), "{err}");
    // A newer app: a bigger struct. Zero extra bytes are fine; a set unknown field is refused.
    #[repr(C)]
    struct Newer {
        p: ivl_generate_params,
        future: u64,
    }
    let mut n = Newer {
        p: ivl_generate_default_params(),
        future: 0,
    };
    n.p.max_new_tokens = 2;
    n.p.struct_size = std::mem::size_of::<Newer>();
    assert_eq!(s.generate(&n).0, ivl_status::IVL_STATUS_OK);
    n.future = 7;
    let (st, err) = s.generate(&n);
    assert_eq!(st, ivl_status::IVL_STATUS_INVALID_ARGUMENT);
    assert!(err.contains("older"), "{err}");
    // The other two structs follow the same rule.
    let mut mp = ivl_model_default_params();
    mp.struct_size = 4;
    let path = std::ffi::CString::new(model().to_str().expect("utf-8")).expect("path");
    let mut m = std::ptr::null_mut();
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { ivl_model_load(path.as_ptr(), &mp, &mut m) },
        ivl_status::IVL_STATUS_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("ivl_model_params.struct_size"),
        "{}",
        last_error()
    );
    let mut sp = ivl_session_default_params();
    sp.struct_size = 0;
    let mut out = std::ptr::null_mut();
    // SAFETY: a live model.
    assert_eq!(
        unsafe { ivl_session_new(s.model, &sp, &mut out) },
        ivl_status::IVL_STATUS_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("ivl_session_params.struct_size"),
        "{}",
        last_error()
    );
}

unsafe extern "C" fn count_logprobs(lp: *const ivl_logprob, user_data: *mut c_void) -> i32 {
    // SAFETY: the library passes a valid entry and our counter.
    let (lp, n) = unsafe { (&*lp, &mut *user_data.cast::<usize>()) };
    assert!(lp.logprob <= 0.0 && lp.n_top == 2);
    *n += 1;
    0
}

#[test]
fn constraints_stops_and_logprobs_through_the_struct() {
    let s = Session::open();
    let mut p = ivl_generate_default_params();
    p.max_new_tokens = 16;
    p.regex = c"[0-9]{3}".as_ptr();
    let (st, text) = s.generate(&p);
    assert_eq!(st, ivl_status::IVL_STATUS_OK, "{text}");
    assert!(text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
    // Two constraints at once are refused.
    p.json_object = true;
    let (st, err) = s.generate(&p);
    assert_eq!(st, ivl_status::IVL_STATUS_INVALID_ARGUMENT);
    assert!(err.contains("at most one"), "{err}");
    // A stop string: "x5" stops at the 5 of "12345".
    p.json_object = false;
    p.regex = c"12345".as_ptr();
    let stops: [*const c_char; 1] = [c"4".as_ptr()];
    p.stop = stops.as_ptr();
    p.n_stop = 1;
    let mut n = 0usize;
    p.logprob_callback = Some(count_logprobs);
    p.top_logprobs = 2;
    // The question refused above (two constraints) is still open: answer it.
    let mut reply = std::mem::MaybeUninit::<ivl_reply>::zeroed();
    // SAFETY: valid arguments; the counter outlives the call.
    let st = unsafe { ivl_session_generate(s.session, &p, None, (&mut n as *mut usize).cast(), reply.as_mut_ptr()) };
    assert_eq!(st, ivl_status::IVL_STATUS_OK, "{}", last_error());
    // SAFETY: written on success.
    let r = unsafe { reply.assume_init() };
    // SAFETY: valid until the next call.
    let text = unsafe { CStr::from_ptr(r.text) }.to_string_lossy().into_owned();
    assert_eq!(text, "123");
    assert_eq!(r.finish, ivl_finish_reason::IVL_FINISH_STOP);
    assert_eq!(n as u32, r.generated_tokens);
}

fn build_example(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let lib_dir = exe.parent().and_then(Path::parent).expect("target/release");
    assert!(
        lib_dir.join("libinternvl.so").is_file(),
        "build with cargo test --release first"
    );
    let out_exe = dir.join("structured");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-I"])
        .arg(common::repo().join("include"))
        .arg(common::repo().join("examples/c/structured.c"))
        .arg("-o")
        .arg(&out_exe)
        .arg("-L")
        .arg(lib_dir)
        .arg("-linternvl")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lm", "-pthread"])
        .output()
        .expect("cc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out_exe
}

/// The schema of examples/c/structured.c, read from its source (so the two cannot drift).
fn example_schema() -> serde_json::Value {
    let src = std::fs::read_to_string(common::repo().join("examples/c/structured.c")).expect("source");
    let start = src.find("SCHEMA =").expect("SCHEMA");
    let end = start + src[start..].find(';').expect("end of SCHEMA");
    // The C string literals, one per line, joined, with `\"` unescaped.
    let raw: String = src[start..end]
        .lines()
        .map(|l| l.trim().trim_start_matches("SCHEMA =").trim())
        .filter_map(|l| l.strip_prefix('"').and_then(|l| l.strip_suffix('"')))
        .collect::<Vec<_>>()
        .join("")
        .replace("\\\"", "\"");
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("schema of structured.c: {e}: {raw}"))
}

#[test]
fn c_example_answers_validate_against_its_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_example(dir.path());
    let schema = example_schema();
    let validator = jsonschema::validator_for(&schema).expect("schema");
    for seed in 0..6 {
        let out = Command::new(&exe)
            .args(["-t", "1", "-s", &seed.to_string()])
            .arg(model())
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "seed {seed}: {stdout}\n{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert!(validator.is_valid(&v), "seed {seed}: {stdout}");
        assert!(stderr.contains("bad schema: IVL_STATUS_INVALID_ARGUMENT"), "{stderr}");
        eprintln!("seed {seed}: {}", stdout.trim());
    }
}

#[test]
fn c_example_is_clean_under_valgrind() {
    if !Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("note: valgrind is not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_example(dir.path());
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--error-exitcode=1",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&exe)
        .args(["-t", "1", "-n", "48"])
        .arg(model())
        .output()
        .expect("valgrind");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY") || l.contains("definitely lost") || l.contains("in use at exit"))
        .collect();
    eprintln!("{}\n{}", String::from_utf8_lossy(&out.stdout), summary.join("\n"));
    // 0: a complete answer; 3: the answer ran out of tokens (still a clean run).
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "valgrind: {stderr}");
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
}

#[test]
fn new_fields_have_the_same_layout_in_c_and_rust() {
    use std::mem::{offset_of, size_of};
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("layout.c");
    let c = "#include <stdio.h>\n#include <stddef.h>\n#include \"internvl.h\"\nint main(void) {\n\
        printf(\"%zu %zu %zu %zu\\n\", sizeof(ivl_generate_params), offsetof(ivl_generate_params, json_schema),\n\
               offsetof(ivl_generate_params, stop), offsetof(ivl_generate_params, top_logprobs));\n\
        printf(\"%zu %zu\\n\", sizeof(ivl_logprob), offsetof(ivl_logprob, n_top));\n\
        printf(\"%zu %zu\\n\", offsetof(ivl_model_params, n_threads), offsetof(ivl_session_params, n_ctx));\n\
        return 0;\n}\n";
    std::fs::write(&src, c).expect("write");
    let exe = dir.path().join("layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(common::repo().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8(Command::new(&exe).output().expect("run").stdout).expect("utf-8");
    let want = format!(
        "{} {} {} {}\n{} {}\n{} {}\n",
        size_of::<ivl_generate_params>(),
        offset_of!(ivl_generate_params, json_schema),
        offset_of!(ivl_generate_params, stop),
        offset_of!(ivl_generate_params, top_logprobs),
        size_of::<ivl_logprob>(),
        offset_of!(ivl_logprob, n_top),
        offset_of!(ivl_model_params, n_threads),
        offset_of!(ivl_session_params, n_ctx),
    );
    assert_eq!(
        got, want,
        "include/internvl.h and src/capi.rs disagree: regenerate the header"
    );
}
