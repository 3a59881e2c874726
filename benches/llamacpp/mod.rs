//! llama.cpp through the C API inside the ggml crate we depend on (`llama-cpp-sys-2`), for side-by-side
//! measurements only. This module is the one place outside `src/ggml` that calls C, so each block says why
//! it is sound.

use std::ffi::CString;
use std::time::Instant;

use llama_cpp_sys_2 as ll;

unsafe extern "C" fn quiet_log(
    _level: ll::ggml_log_level,
    _text: *const std::os::raw::c_char,
    _data: *mut std::ffi::c_void,
) {
}

/// Loads the text GGUF, prefills `ids` in one batch, then decodes `n_decode` greedy tokens; prints JSON.
pub fn child(path: &str, threads: usize, ids: &[u32], n_decode: usize) -> String {
    let cpath = CString::new(path).expect("path");
    // SAFETY: plain calls into llama.cpp with valid arguments; every returned pointer is checked for NULL
    // before use, buffers passed in outlive the calls, and the model/context are freed once at the end.
    unsafe {
        ll::llama_log_set(Some(quiet_log), std::ptr::null_mut());
        ll::llama_backend_init();
        let t0 = Instant::now();
        let mparams = ll::llama_model_default_params();
        let model = ll::llama_model_load_from_file(cpath.as_ptr(), mparams);
        assert!(!model.is_null(), "llama.cpp could not load {path}");
        let load_s = t0.elapsed().as_secs_f64();
        let mut cparams = ll::llama_context_default_params();
        cparams.n_ctx = (ids.len() + n_decode + 16) as u32;
        cparams.n_batch = ids.len() as u32;
        cparams.n_ubatch = ids.len() as u32;
        cparams.n_threads = threads as i32;
        cparams.n_threads_batch = threads as i32;
        let ctx = ll::llama_init_from_model(model, cparams);
        assert!(!ctx.is_null(), "llama.cpp context");
        let vocab = ll::llama_model_get_vocab(model);
        let n_vocab = ll::llama_vocab_n_tokens(vocab) as usize;

        let mut toks: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        let t = Instant::now();
        let batch = ll::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32);
        assert_eq!(ll::llama_decode(ctx, batch), 0, "prefill");
        let argmax = |ctx| {
            let p = ll::llama_get_logits_ith(ctx, -1);
            let l = std::slice::from_raw_parts(p, n_vocab);
            let mut best = 0;
            for i in 0..n_vocab {
                if l[i] > l[best] {
                    best = i;
                }
            }
            best as i32
        };
        let mut next = argmax(ctx);
        let prefill_tps = ids.len() as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..n_decode {
            let mut one = [next];
            let b = ll::llama_batch_get_one(one.as_mut_ptr(), 1);
            assert_eq!(ll::llama_decode(ctx, b), 0, "decode");
            next = argmax(ctx);
        }
        let decode_tps = n_decode as f64 / t.elapsed().as_secs_f64();
        let rss = super::peak_rss_mb();
        ll::llama_free(ctx);
        ll::llama_model_free(model);
        format!("{{\"load_s\":{load_s:.3},\"prefill_tps\":{prefill_tps:.2},\"decode_tps\":{decode_tps:.2},\"rss_mb\":{rss:.1}}}")
    }
}
