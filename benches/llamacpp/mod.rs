//! llama.cpp through the C API inside the ggml crate we depend on (`llama-cpp-sys-2`), for side-by-side
//! measurements only: its text model (the text GGUF of `internvl-convert convert --split`) and, with the
//! `bench-mtmd` feature, its vision library mtmd (the mmproj GGUF of `--split`). This module is the one place
//! outside `src/ggml` that calls C, so each block says why it is sound.
//!
//! Tiles: mtmd takes RGB bitmaps, not tensors. Every 448×448 uint8 tile of the shared input set is given as
//! its own 448×448 bitmap; for an image no larger than one tile mtmd's InternVL preprocessor makes no slices
//! and copies the bitmap unresized (`img_tool::resize` short-cuts equal sizes), then normalizes it with the
//! mmproj's mean/std, so llama.cpp encodes exactly our tiles. Each tile is then its own image chunk (256
//! embeddings), the way mtmd itself splits a multi-tile InternVL image, and the chunks are encoded through
//! mtmd's batch API (`mtmd_batch_*`, up to `batch_max_tokens` = 1024 output tokens, i.e. 4 tiles, per
//! graph: its default). The embeddings go into the text model through `llama_batch.embd` at the positions of
//! the `<IMG_CONTEXT>` ids of the shared prompt, so both systems prefill the same sequence.

use std::ffi::CString;
use std::time::Instant;

use llama_cpp_sys_2 as ll;
use serde_json::{json, Value};

use super::{median, peak_rss_mb, repeat_rows, Inputs};

/// llama.cpp's name of the token-embedding table (its `LLM_TENSOR_TOKEN_EMBD`), read one row per token.
pub const TOKEN_EMBD: &str = "token_embd.weight";

unsafe extern "C" fn quiet_log(
    _level: ll::ggml_log_level,
    _text: *const std::os::raw::c_char,
    _data: *mut std::ffi::c_void,
) {
}

/// What llama.cpp's ggml was compiled with (`llama_print_system_info`), e.g. "CPU : AVX512 = 1 | ...".
pub fn system_info() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string owned by llama.cpp (or NULL).
    unsafe {
        let p = ll::llama_print_system_info();
        if p.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().trim().to_string()
    }
}

/// A loaded text model, its context and (with `bench-mtmd`) the mtmd context of the mmproj.
struct Llama {
    model: *mut ll::llama_model,
    ctx: *mut ll::llama_context,
    #[cfg(feature = "bench-mtmd")]
    mtmd: *mut ll::mtmd_context,
    n_vocab: usize,
    n_embd: usize,
    n_batch: usize,
}

impl Drop for Llama {
    fn drop(&mut self) {
        // SAFETY: each pointer was returned non-NULL by its constructor and is freed exactly once, the mtmd
        // context (which refers to the model) first, then the context, then the model.
        unsafe {
            #[cfg(feature = "bench-mtmd")]
            if !self.mtmd.is_null() {
                ll::mtmd_free(self.mtmd);
            }
            if !self.ctx.is_null() {
                ll::llama_free(self.ctx);
            }
            if !self.model.is_null() {
                ll::llama_model_free(self.model);
            }
        }
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("path {s:?} contains a NUL byte"))
}

impl Llama {
    /// Loads the text GGUF (and the mmproj when given), creates a context of `n_ctx` tokens with llama.cpp's
    /// default batch sizes (n_batch 2048, n_ubatch 512), KV type (f16) and flash-attention setting (auto).
    fn load(text: &str, mmproj: Option<&str>, n_ctx: usize, threads: usize) -> Result<Self, String> {
        let cpath = cstring(text)?;
        // SAFETY: plain calls with valid arguments; every returned pointer is checked for NULL before use and
        // owned by the returned value (freed in Drop).
        unsafe {
            ll::llama_log_set(Some(quiet_log), std::ptr::null_mut());
            ll::llama_backend_init();
            let mparams = ll::llama_model_default_params();
            let model = ll::llama_model_load_from_file(cpath.as_ptr(), mparams);
            if model.is_null() {
                return Err(format!("llama.cpp could not load {text}"));
            }
            let mut me = Llama {
                model,
                ctx: std::ptr::null_mut(),
                #[cfg(feature = "bench-mtmd")]
                mtmd: std::ptr::null_mut(),
                n_vocab: 0,
                n_embd: ll::llama_model_n_embd(model).max(0) as usize,
                n_batch: 0,
            };
            let mut cparams = ll::llama_context_default_params();
            cparams.n_ctx = n_ctx as u32;
            cparams.n_threads = threads as i32;
            cparams.n_threads_batch = threads as i32;
            me.ctx = ll::llama_init_from_model(model, cparams);
            if me.ctx.is_null() {
                return Err(format!(
                    "llama.cpp could not create a context of {n_ctx} tokens for {text}"
                ));
            }
            me.n_batch = ll::llama_n_batch(me.ctx).max(1) as usize;
            me.n_vocab = ll::llama_vocab_n_tokens(ll::llama_model_get_vocab(model)).max(0) as usize;
            if let Some(mm) = mmproj {
                me.init_mtmd(mm, threads)?;
            }
            Ok(me)
        }
    }

    #[cfg(feature = "bench-mtmd")]
    fn init_mtmd(&mut self, mmproj: &str, threads: usize) -> Result<(), String> {
        let cpath = cstring(mmproj)?;
        // SAFETY: the model pointer is valid (non-NULL, alive until Drop, which frees mtmd first); the params
        // struct comes from mtmd's own default constructor and only plain fields are changed.
        unsafe {
            ll::mtmd_log_set(Some(quiet_log), std::ptr::null_mut());
            let mut p = ll::mtmd_context_params_default();
            p.use_gpu = false;
            p.n_threads = threads as i32;
            p.print_timings = false;
            self.mtmd = ll::mtmd_init_from_file(cpath.as_ptr(), self.model, p);
            if self.mtmd.is_null() {
                return Err(format!("mtmd could not load the mmproj {mmproj}"));
            }
            if !ll::mtmd_support_vision(self.mtmd) {
                return Err(format!("mtmd: {mmproj} has no vision encoder"));
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "bench-mtmd"))]
    fn init_mtmd(&mut self, _mmproj: &str, _threads: usize) -> Result<(), String> {
        Err("llama.cpp's vision (mtmd) needs the bench built with --features bench-mtmd".into())
    }

    fn clear(&mut self) {
        // SAFETY: the context is valid; clearing the memory of a context is always allowed.
        unsafe { ll::llama_memory_clear(ll::llama_get_memory(self.ctx), true) }
    }

    /// Drops the cached positions `from..` of sequence 0.
    fn truncate(&mut self, from: usize) -> Result<(), String> {
        // SAFETY: the context is valid; p1 = -1 means "to the end".
        let ok = unsafe { ll::llama_memory_seq_rm(ll::llama_get_memory(self.ctx), 0, from as i32, -1) };
        if ok {
            Ok(())
        } else {
            Err(format!("llama_memory_seq_rm({from}..) failed"))
        }
    }

    /// Decodes `n` rows at positions `pos0..`, tokens or embeddings (`embd` is `[n, n_embd]`), in chunks of
    /// n_batch; logits only for the last row when `logits_last`.
    fn decode_rows(
        &mut self,
        tokens: Option<&[u32]>,
        embd: Option<&[f32]>,
        pos0: usize,
        logits_last: bool,
    ) -> Result<(), String> {
        let n = match (tokens, embd) {
            (Some(t), None) => t.len(),
            (None, Some(e)) if self.n_embd > 0 && e.len() % self.n_embd == 0 => e.len() / self.n_embd,
            _ => return Err("decode_rows: give tokens or whole embedding rows".into()),
        };
        let mut start = 0;
        while start < n {
            let m = self.n_batch.min(n - start);
            let last_chunk = start + m == n;
            // SAFETY: llama_batch_init allocates room for m rows (embd rows of n_embd floats when embd is given,
            // token ids otherwise) and one seq id per row; we write exactly m rows into those arrays, then free
            // the batch after llama_decode returned (llama.cpp copies what it needs).
            let rc = unsafe {
                let batch = ll::llama_batch_init(m as i32, if embd.is_some() { self.n_embd as i32 } else { 0 }, 1);
                for i in 0..m {
                    if let Some(t) = tokens {
                        *batch.token.add(i) = t[start + i] as i32;
                    }
                    *batch.pos.add(i) = (pos0 + start + i) as i32;
                    *batch.n_seq_id.add(i) = 1;
                    *(*batch.seq_id.add(i)) = 0;
                    *batch.logits.add(i) = (logits_last && last_chunk && i == m - 1) as i8;
                }
                if let Some(e) = embd {
                    let src = &e[start * self.n_embd..(start + m) * self.n_embd];
                    std::ptr::copy_nonoverlapping(src.as_ptr(), batch.embd, src.len());
                }
                let mut b = batch;
                b.n_tokens = m as i32;
                let rc = ll::llama_decode(self.ctx, b);
                ll::llama_batch_free(batch);
                rc
            };
            if rc != 0 {
                return Err(format!(
                    "llama_decode returned {rc} (rows {}..{} at position {pos0})",
                    start,
                    start + m
                ));
            }
            start += m;
        }
        Ok(())
    }

    /// Prefills `ids` from position `pos0`, the `<IMG_CONTEXT>` ids taking the next rows of `rows`.
    fn prefill(&mut self, ids: &[u32], img_ctx: u32, rows: &[f32], pos0: usize) -> Result<(), String> {
        let mut i = 0;
        let mut used = 0;
        while i < ids.len() {
            let is_img = ids[i] == img_ctx;
            let mut j = i;
            while j < ids.len() && (ids[j] == img_ctx) == is_img {
                j += 1;
            }
            let last = j == ids.len();
            if is_img {
                let need = (j - i) * self.n_embd;
                let r = rows.get(used..used + need).ok_or_else(|| {
                    format!(
                        "{} image-context ids but only {} embedding rows",
                        j - i,
                        rows.len() / self.n_embd.max(1)
                    )
                })?;
                self.decode_rows(None, Some(r), pos0 + i, last)?;
                used += need;
            } else {
                self.decode_rows(Some(&ids[i..j]), None, pos0 + i, last)?;
            }
            i = j;
        }
        Ok(())
    }

    fn argmax(&self) -> Result<u32, String> {
        // SAFETY: the last decode asked for the logits of its last row; llama.cpp returns n_vocab floats
        // (checked for NULL) that stay valid until the next decode.
        unsafe {
            let p = ll::llama_get_logits_ith(self.ctx, -1);
            if p.is_null() {
                return Err("llama.cpp returned no logits".into());
            }
            let l = std::slice::from_raw_parts(p, self.n_vocab);
            let mut best = 0;
            for (i, v) in l.iter().enumerate() {
                if *v > l[best] {
                    best = i;
                }
            }
            Ok(best as u32)
        }
    }

    /// Encodes `n` 448×448 RGB tiles (`u8`, HWC, concatenated) with mtmd; returns the projector rows
    /// `[n * 256, n_embd]` and the seconds spent encoding (mtmd's tokenization, which normalizes the pixels,
    /// is excluded: the other systems get normalized tiles).
    #[cfg(feature = "bench-mtmd")]
    fn encode_tiles(&mut self, tiles: &[u8], side: usize) -> Result<(Vec<f32>, f64), String> {
        let per = side * side * 3;
        if per == 0 || tiles.len() % per != 0 {
            return Err(format!("{} bytes are not whole {side}x{side} RGB tiles", tiles.len()));
        }
        let n = tiles.len() / per;
        // SAFETY: mtmd copies the bitmap data in mtmd_bitmap_init; bitmaps, chunks and batches are freed
        // below on every path; chunk pointers come from mtmd_input_chunks_get on the live chunk list; output
        // embeddings are read (n_tokens * n_embd floats, as mtmd.h documents) before their batch is freed.
        unsafe {
            let marker = std::ffi::CStr::from_ptr(ll::mtmd_default_marker())
                .to_string_lossy()
                .into_owned();
            let text = cstring(&marker.repeat(n))?;
            let bitmaps: Vec<*mut ll::mtmd_bitmap> = (0..n)
                .map(|k| ll::mtmd_bitmap_init(side as u32, side as u32, tiles[k * per..(k + 1) * per].as_ptr()))
                .collect();
            let chunks = ll::mtmd_input_chunks_init();
            let input = ll::mtmd_input_text {
                text: text.as_ptr(),
                text_len: text.as_bytes().len(),
                add_special: false,
                parse_special: true,
            };
            let bm: Vec<*const ll::mtmd_bitmap> = bitmaps.iter().map(|b| *b as *const _).collect();
            let rc = ll::mtmd_tokenize(self.mtmd, chunks, &input, bm.as_ptr(), n);
            for b in &bitmaps {
                ll::mtmd_bitmap_free(*b);
            }
            if rc != 0 {
                ll::mtmd_input_chunks_free(chunks);
                return Err(format!("mtmd_tokenize returned {rc}"));
            }
            let mut img = Vec::new();
            for i in 0..ll::mtmd_input_chunks_size(chunks) {
                let c = ll::mtmd_input_chunks_get(chunks, i);
                if ll::mtmd_input_chunk_get_type(c) == ll::MTMD_INPUT_CHUNK_TYPE_IMAGE {
                    img.push(c);
                }
            }
            if img.len() != n {
                ll::mtmd_input_chunks_free(chunks);
                return Err(format!(
                    "mtmd made {} image chunks of {n} tiles (a tile was sliced?)",
                    img.len()
                ));
            }
            let mut rows = Vec::new();
            let t = Instant::now();
            let mut k = 0;
            let mut err = None;
            while k < img.len() && err.is_none() {
                let batch = ll::mtmd_batch_init(self.mtmd);
                let first = k;
                while k < img.len() {
                    match ll::mtmd_batch_add_chunk(batch, img[k]) {
                        0 => k += 1,
                        _ if k > first => break,
                        rc => {
                            err = Some(format!("mtmd_batch_add_chunk returned {rc}"));
                            break;
                        }
                    }
                }
                if err.is_none() {
                    let rc = ll::mtmd_batch_encode(batch);
                    if rc != 0 {
                        err = Some(format!("mtmd_batch_encode returned {rc}"));
                    } else {
                        for &c in &img[first..k] {
                            let p = ll::mtmd_batch_get_output_embd(batch, c);
                            let m = ll::mtmd_input_chunk_get_n_tokens(c) * self.n_embd;
                            if p.is_null() {
                                err = Some("mtmd returned no embeddings".into());
                                break;
                            }
                            rows.extend_from_slice(std::slice::from_raw_parts(p, m));
                        }
                    }
                }
                ll::mtmd_batch_free(batch);
            }
            let secs = t.elapsed().as_secs_f64();
            ll::mtmd_input_chunks_free(chunks);
            match err {
                Some(e) => Err(e),
                None => Ok((rows, secs)),
            }
        }
    }

    #[cfg(not(feature = "bench-mtmd"))]
    fn encode_tiles(&mut self, _tiles: &[u8], _side: usize) -> Result<(Vec<f32>, f64), String> {
        Err("llama.cpp's vision (mtmd) needs the bench built with --features bench-mtmd".into())
    }
}

/// Vision: ms per tile on the 1-tile and the 13-tile image (after one warm-up tile).
pub fn vision(inp: &Inputs, text: &str, mmproj: &str, threads: usize) -> Result<Value, String> {
    let t0 = Instant::now();
    let mut m = Llama::load(text, Some(mmproj), 256, threads)?;
    let load_s = t0.elapsed().as_secs_f64();
    let side = inp.image_size;
    let t1 = inp.tiles_u8("t1")?;
    let t13 = inp.tiles_u8("t13")?;
    m.encode_tiles(&t1, side)?;
    let mut one = Vec::new();
    for _ in 0..inp.reps.vision1 {
        one.push(m.encode_tiles(&t1, side)?.1 * 1e3);
    }
    let mut thirteen = Vec::new();
    let n13 = t13.len() / (side * side * 3);
    for _ in 0..inp.reps.vision13 {
        thirteen.push(m.encode_tiles(&t13, side)?.1 * 1e3 / n13 as f64);
    }
    Ok(json!({
        "load_s": load_s,
        "vision1_ms": median(&one),
        "vision13_ms": median(&thirteen),
        "vision13_tiles": n13,
        "rss_mb": peak_rss_mb(),
        "system_info": system_info(),
    }))
}

/// Text: prefill of the 512 text ids (median of reps, fresh cache each), then decode steps after the
/// 1-tile image prompt (image rows from mtmd when available, else the warm-up's rows are not needed: the
/// same prompt is prefilled with mtmd's rows).
pub fn text(inp: &Inputs, text: &str, mmproj: Option<&str>, threads: usize) -> Result<Value, String> {
    let n_ctx = inp.prefill_ids.len().max(inp.decode_ids.len()) + inp.n_decode + 16;
    let t0 = Instant::now();
    let mut m = Llama::load(text, mmproj, n_ctx, threads)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Warm-up: a few tokens and decode steps.
    m.prefill(&inp.prefill_ids[..32.min(inp.prefill_ids.len())], u32::MAX, &[], 0)?;
    let mut tok = m.argmax()?;
    for p in 0..2 {
        m.decode_rows(Some(&[tok]), None, 32 + p, true)?;
        tok = m.argmax()?;
    }
    let mut prefill = Vec::new();
    for _ in 0..inp.reps.prefill {
        m.clear();
        let t = Instant::now();
        m.prefill(&inp.prefill_ids, u32::MAX, &[], 0)?;
        m.argmax()?;
        prefill.push(inp.prefill_ids.len() as f64 / t.elapsed().as_secs_f64());
    }
    // The image prompt: 1 tile through mtmd (not timed), then the shared ids.
    let rows = match mmproj {
        Some(_) => m.encode_tiles(&inp.tiles_u8("t1")?, inp.image_size)?.0,
        None => vec![0.01f32; inp.n_image_ctx(&inp.decode_ids) * m.n_embd],
    };
    m.clear();
    let n0 = inp.decode_ids.len();
    m.prefill(&inp.decode_ids, inp.img_context_id, &rows, 0)?;
    let first = m.argmax()?;
    let decode = timed_decode(&mut m, inp, n0, first)?;
    Ok(json!({
        "load_s": load_s,
        "prefill_tps": median(&prefill),
        "decode_tps": median(&decode),
        "decode_ctx": n0,
        "decode_image_rows": if mmproj.is_some() { "mtmd" } else { "constant (no mtmd)" },
        "rss_mb": peak_rss_mb(),
    }))
}

/// `inp.reps.decode` timed runs of `inp.n_decode` greedy steps from token `first` after the `n0`-token
/// context (cut back to it before each): tokens per second, one a run.
fn timed_decode(m: &mut Llama, inp: &Inputs, n0: usize, first: u32) -> Result<Vec<f64>, String> {
    let mut decode = Vec::new();
    for _ in 0..inp.reps.decode {
        m.truncate(n0)?;
        let mut tok = first;
        let t = Instant::now();
        for s in 0..inp.n_decode {
            m.decode_rows(Some(&[tok]), None, n0 + s, true)?;
            tok = m.argmax()?;
        }
        decode.push(inp.n_decode as f64 / t.elapsed().as_secs_f64());
    }
    Ok(decode)
}

/// Decode steps with image1.jpg's 13 tiles in the context (~3.4k tokens): the image rows are the 1-tile
/// image's rows from mtmd repeated 13 times (constants without mtmd), as ours gets its own 1-tile rows.
pub fn decode13(inp: &Inputs, text: &str, mmproj: Option<&str>, threads: usize) -> Result<Value, String> {
    let n_ctx = inp.decode13_ids.len() + inp.n_decode + 16;
    let t0 = Instant::now();
    let mut m = Llama::load(text, mmproj, n_ctx, threads)?;
    let load_s = t0.elapsed().as_secs_f64();
    let one_rows = inp.n_image_ctx(&inp.decode_ids);
    let one = match mmproj {
        Some(_) => m.encode_tiles(&inp.tiles_u8("t1")?, inp.image_size)?.0,
        None => vec![0.01f32; one_rows * m.n_embd],
    };
    let rows = repeat_rows(&one, one_rows, inp.n_image_ctx(&inp.decode13_ids))?;
    let n0 = inp.decode13_ids.len();
    let t = Instant::now();
    m.prefill(&inp.decode13_ids, inp.img_context_id, &rows, 0)?;
    let first = m.argmax()?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut tok = first;
    for p in 0..2 {
        m.decode_rows(Some(&[tok]), None, n0 + p, true)?;
        tok = m.argmax()?;
    }
    let decode = timed_decode(&mut m, inp, n0, first)?;
    Ok(json!({
        "load_s": load_s,
        "decode13_tps": median(&decode),
        "decode13_ctx": n0,
        "prefill13_tps": n0 as f64 / prefill_s,
        "decode_image_rows": if mmproj.is_some() { "mtmd, 1 tile x13" } else { "constant (no mtmd)" },
        "rss_mb": peak_rss_mb(),
    }))
}

/// Time to first token: the first request after load (vision of the 7 tiles, prefill of the whole prompt,
/// argmax), then peak RSS of the process (q4_0 with n_ctx 4096 is the memory job).
pub fn ttft(inp: &Inputs, text: &str, mmproj: &str, threads: usize, n_ctx: usize) -> Result<Value, String> {
    let t0 = Instant::now();
    let mut m = Llama::load(text, Some(mmproj), n_ctx, threads)?;
    let load_s = t0.elapsed().as_secs_f64();
    let tiles = inp.tiles_u8("t7")?;
    // The clock covers encoding and prefill; mtmd's tokenization (uint8 -> normalized f32, the one step
    // the other systems do not do here since they get normalized tiles) is left out.
    let (rows, vision_s) = m.encode_tiles(&tiles, inp.image_size)?;
    let t = Instant::now();
    m.prefill(&inp.ttft_ids, inp.img_context_id, &rows, 0)?;
    let first = m.argmax()?;
    let prefill_s = t.elapsed().as_secs_f64();
    Ok(json!({
        "load_s": load_s,
        "ttft_ms": (vision_s + prefill_s) * 1e3,
        "vision_ms": vision_s * 1e3,
        "prefill_ms": prefill_s * 1e3,
        "n_prompt": inp.ttft_ids.len(),
        "first_token": first,
        "n_ctx": n_ctx,
        "rss_mb": peak_rss_mb(),
    }))
}
