//! The `--split` text GGUF loads in llama.cpp (its own C API from the pinned llama-cpp-sys-2): the model
//! loads, its tokenizer reproduces the reference prompt ids, a context is created and one decode step
//! runs and gives finite logits.

mod common;

use std::ffi::{c_char, c_void, CString};
use std::sync::Mutex;

use common::*;
use internvl::gguf::GgmlType;
use internvl::hparams::Hparams;
use internvl_convert::policy::TypeChoice;
use llama_cpp_sys_2 as ll;

/// llama.cpp's log, kept to explain a failure instead of flooding the test output.
static LOG: Mutex<String> = Mutex::new(String::new());

unsafe extern "C" fn log_cb(_level: ll::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string.
    let s = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
    if let Ok(mut log) = LOG.lock() {
        log.push_str(&s);
    }
}

fn log_tail() -> String {
    let log = LOG.lock().map(|l| l.clone()).unwrap_or_default();
    let start = log.len().saturating_sub(3000);
    log.get(start..).unwrap_or("").to_string()
}

fn reference_prompt() -> (String, Vec<i32>) {
    let p = reference_dir().join("prompt_token_vectors.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let e = &v["pure_text"];
    let ids = e["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect();
    (e["prompt"].as_str().unwrap().to_string(), ids)
}

#[test]
fn split_text_gguf_loads_and_decodes_in_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("tiny-q8_0.gguf");
    convert_to(tiny_checkpoint(), &text, TypeChoice::uniform(GgmlType::Q8_0), true);
    let hp = Hparams::tiny();
    let (prompt, want_ids) = reference_prompt();
    let path = CString::new(text.to_str().unwrap()).unwrap();
    // SAFETY: llama.cpp's C API used as documented in llama.h: every pointer checked for NULL before
    // use, buffers sized by the lengths passed, objects freed once.
    unsafe {
        ll::llama_log_set(Some(log_cb), std::ptr::null_mut());
        ll::llama_backend_init();
        let mut mp = ll::llama_model_default_params();
        mp.n_gpu_layers = 0;
        let model = ll::llama_model_load_from_file(path.as_ptr(), mp);
        assert!(!model.is_null(), "llama.cpp refused the text GGUF:\n{}", log_tail());
        let vocab = ll::llama_model_get_vocab(model);
        assert_eq!(ll::llama_vocab_n_tokens(vocab) as usize, hp.llm.n_vocab);
        assert_eq!(ll::llama_model_n_embd(model) as usize, hp.llm.n_embd);
        assert_eq!(ll::llama_vocab_eos(vocab), 151645);

        // llama.cpp's own BPE over our tokenizer.ggml.* arrays gives the reference ids.
        let mut toks = vec![0i32; 512];
        let n = ll::llama_tokenize(
            vocab,
            prompt.as_ptr() as *const c_char,
            prompt.len() as i32,
            toks.as_mut_ptr(),
            toks.len() as i32,
            false,
            true,
        );
        assert!(n > 0, "llama_tokenize returned {n}");
        toks.truncate(n as usize);
        assert_eq!(toks, want_ids, "llama.cpp tokenizes the reference prompt differently");

        let mut cp = ll::llama_context_default_params();
        cp.n_ctx = 256;
        cp.n_batch = 256;
        cp.n_ubatch = 256;
        cp.n_threads = 2;
        cp.n_threads_batch = 2;
        let ctx = ll::llama_init_from_model(model, cp);
        assert!(!ctx.is_null(), "no llama.cpp context:\n{}", log_tail());
        let batch = ll::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32);
        let rc = ll::llama_decode(ctx, batch);
        assert_eq!(rc, 0, "llama_decode failed:\n{}", log_tail());
        let logits = ll::llama_get_logits_ith(ctx, -1);
        assert!(!logits.is_null());
        let logits = std::slice::from_raw_parts(logits, hp.llm.n_vocab);
        assert!(logits.iter().all(|x| x.is_finite()), "non-finite logits");
        let (min, max) = logits
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(max > min, "constant logits");
        ll::llama_free(ctx);
        ll::llama_model_free(model);
    }
}
