//! Bounded memory (src/budget.rs) and hostile prompts on the tiny synthetic model.
//!
//! The budget's figures are recomputed here from the hyperparameters with the formulas written out (KV
//! cache: n_ctx x layers x KV heads x head dim x 2 x bytes per element; q8_0 34 bytes and q4_0 18 bytes
//! per block of 32), and checked against what ggml really allocates: the KV cache buffer, and the
//! scheduler's compute buffer after a vision batch or a prefill.
mod common;

use std::sync::Arc;

use internvl::budget::{self, BudgetError};
use internvl::engine::{
    ChatParams, EngineError, Flow, GenerateParams, Image, KvType, LoadParams, Message, Model, SessionParams,
    TilingParams,
};
use internvl::session::Session;

fn model() -> Model {
    Model::load(common::tiny_gguf(42, "f32", &[]), &LoadParams::default()).expect("tiny model")
}

fn session(n_ctx: usize, kv_type: KvType) -> SessionParams {
    SessionParams {
        n_ctx,
        kv_type,
        n_threads: 2,
        n_batch: 256,
        vision_batch: 4,
    }
}

fn params(n_ctx: usize, kv_type: KvType, mem_budget: u64) -> ChatParams {
    ChatParams {
        session: session(n_ctx, kv_type),
        mem_budget,
        ..Default::default()
    }
}

/// KV bytes written out: n_ctx x layers x KV heads x head dim x 2 (K, V) x bytes per element.
fn kv_bytes_by_hand(m: &Model, n_ctx: usize, ty: KvType) -> u64 {
    let t = &m.hparams().llm;
    let elems = (n_ctx * t.n_layer * t.n_head_kv * t.head_dim() * 2) as u64;
    match ty {
        KvType::F32 => elems * 4,
        KvType::F16 => elems * 2,
        KvType::Q8_0 => elems / 32 * 34,
        KvType::Q4_0 => elems / 32 * 18,
    }
}

/// An image the model's tiling cuts into 12 tiles plus a thumbnail (4:3, 4 x 3 grid).
fn thirteen_tile_image(tiling: &TilingParams) -> Image {
    let rgb = image::RgbImage::from_fn(1792, 1344, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 128]));
    Image::from_rgb(rgb, tiling).expect("image")
}

fn small_image(tiling: &TilingParams) -> Image {
    // Square: one tile (InternVL picks the grid by aspect ratio; 4:3 would give 12 + a thumbnail).
    let rgb = image::RgbImage::from_fn(48, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 40]));
    Image::from_rgb(rgb, tiling).expect("image")
}

fn gen() -> GenerateParams {
    GenerateParams {
        max_new_tokens: 2,
        ..Default::default()
    }
}

#[test]
fn kv_cache_estimate_is_what_ggml_allocates() {
    let m = model();
    for ty in [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0] {
        for n_ctx in [64, 1000, 2048] {
            let by_hand = kv_bytes_by_hand(&m, n_ctx, ty);
            assert_eq!(
                budget::kv_cache_bytes(&m.hparams().llm, n_ctx, ty),
                by_hand,
                "{ty:?} {n_ctx}"
            );
            let chat = m.chat(params(n_ctx, ty, 0)).expect("chat");
            let real = chat.kv_bytes() as u64;
            // The buffer may round each of the 2 x n_layer tensors up to its alignment.
            let slack = 2 * m.hparams().llm.n_layer as u64 * 256;
            assert!(
                real >= by_hand && real <= by_hand + slack,
                "{ty:?} n_ctx {n_ctx}: allocated {real}, computed {by_hand}"
            );
        }
    }
}

#[test]
fn a_budget_too_small_for_the_kv_cache_fails_at_session_creation() {
    let m = model();
    let hp = m.hparams().clone();
    for (ty, name) in [(KvType::F16, "f16"), (KvType::Q8_0, "q8_0"), (KvType::Q4_0, "q4_0")] {
        let n_ctx = 4096;
        let kv = kv_bytes_by_hand(&m, n_ctx, ty);
        let err = m
            .chat(params(n_ctx, ty, kv - 1))
            .err()
            .expect("a budget below the KV cache must fail");
        let EngineError::Budget(BudgetError::Session {
            kv_bytes,
            compute_bytes,
            budget,
            n_ctx: e_ctx,
            n_layer,
            n_head_kv,
            head_dim,
            kv_type,
            n_batch,
            weight_bytes,
        }) = &err
        else {
            panic!("not a session budget error: {err}");
        };
        assert_eq!(*kv_bytes, kv, "{name}");
        assert_eq!((*e_ctx, *n_layer, *n_head_kv, *head_dim), (n_ctx, 2, 2, 32));
        assert_eq!((*kv_type, *n_batch, *budget), (name, 256, kv - 1));
        assert_eq!(*weight_bytes, m.weight_bytes() as u64);
        assert_eq!(*compute_bytes, budget::llm_compute_bytes(&hp, 256, n_ctx));
        let msg = err.to_string();
        for part in [
            budget::fmt_bytes(kv),
            budget::fmt_bytes(kv - 1),
            budget::fmt_bytes(kv + compute_bytes),
            format!("{n_ctx} tokens x 2 layers x 2 KV heads x 32"),
            name.to_string(),
        ] {
            assert!(msg.contains(&part), "{msg:?} lacks {part:?}");
        }
    }
    // The boundary is exact: the KV cache plus the prefill bound fits, one byte less does not.
    let n_ctx = 1024;
    let need = kv_bytes_by_hand(&m, n_ctx, KvType::F16) + budget::llm_compute_bytes(&hp, 256, n_ctx);
    m.chat(params(n_ctx, KvType::F16, need)).expect("exactly the need fits");
    assert!(m.chat(params(n_ctx, KvType::F16, need - 1)).is_err());
}

#[test]
fn measured_vision_compute_is_what_the_scheduler_allocates() {
    let m = model();
    let hp = m.hparams().clone();
    for tiles in [1usize, 4] {
        let measured = budget::measure_vision_compute(m.inner(), tiles).expect("measure");
        let bound = budget::vision_compute_estimate(&hp, tiles);
        eprintln!("vision compute, {tiles} tile(s) per graph: measured {measured} B, hyperparameter bound {bound} B");
        assert!(
            measured > 0 && measured <= bound,
            "{tiles} tiles: measured {measured}, bound {bound}"
        );
        let mut s = Session::new(
            m.inner().clone(),
            SessionParams {
                vision_batch: tiles,
                ..session(256, KvType::F16)
            },
        )
        .expect("session");
        assert_eq!(s.compute_buffer_bytes(), 0, "nothing allocated before the first graph");
        let per_tile = 3 * 448 * 448;
        let pixels = vec![0.25f32; tiles * per_tile];
        s.encode_tiles(&pixels, false).expect("encode");
        assert_eq!(s.compute_buffer_bytes() as u64, measured, "{tiles} tiles");
    }
}

#[test]
fn llm_compute_bound_holds_and_is_not_loose() {
    let m = model();
    let hp = m.hparams().clone();
    let n_ctx = 1024;
    let n = 256;
    let mut s = Session::new(m.inner().clone(), session(n_ctx, KvType::F16)).expect("session");
    // Fill the context so that the last chunk attends all of it (the worst case the bound covers).
    let ids: Vec<u32> = (0..n_ctx as u32).map(|i| 100 + i % 1000).collect();
    s.eval(&ids, &[], false).expect("prefill");
    let real = s.compute_buffer_bytes() as u64;
    let bound = budget::llm_compute_bytes(&hp, n, n_ctx);
    eprintln!("prefill compute, {n} tokens over {n_ctx}: allocated {real} B, bound {bound} B");
    assert!(real <= bound, "allocated {real} > bound {bound}");
    assert!(real * 4 >= bound, "bound {bound} is more than 4x the allocation {real}");
}

#[test]
fn a_budget_that_fits_passes() {
    let m = model();
    let hp = m.hparams().clone();
    let n_ctx = 2048;
    let kv = kv_bytes_by_hand(&m, n_ctx, KvType::F16);
    let llm = budget::llm_compute_bytes(&hp, 256, n_ctx);
    let vision = budget::measure_vision_compute(m.inner(), 2).expect("measure");
    // A 2-tile image (a 2:1 picture: 2 tiles + thumbnail = 3; batch 3), generously.
    let tiling = TilingParams {
        max_tiles: 2,
        ..m.tiling()
    };
    let rgb = image::RgbImage::from_fn(896, 448, |x, y| image::Rgb([(x % 200) as u8, (y % 100) as u8, 7]));
    let img = Image::from_rgb(rgb, &tiling).expect("image");
    assert_eq!(img.n_tiles(), 3);
    let vision3 = budget::measure_vision_compute(m.inner(), 3).expect("measure");
    assert!(vision3 > vision);
    let pixels = (3 + 3) * 3 * 448 * 448 * 4;
    let emb = 3 * 256 * 448 * 4;
    let need = kv + llm.max(vision3) + pixels + emb;
    let mut chat = m.chat(params(n_ctx, KvType::F16, need)).expect("chat");
    let reply = chat
        .send(Message::text("Describe.").with_image(img.clone()), &gen(), |_| {
            Flow::Continue
        })
        .expect("fits");
    assert_eq!(reply.stats.tiles_encoded, 3);
    let used = chat.memory_in_use();
    assert!(used.total() <= need, "{used:?} > {need}");
    assert!(
        chat.compute_buffer_bytes() as u64 >= vision3,
        "the vision graph ran in the shared buffer"
    );
    // A second turn about the same image encodes nothing and needs nothing more.
    let again = chat
        .send(Message::text("More."), &gen(), |_| Flow::Continue)
        .expect("second turn");
    assert_eq!(again.stats.tiles_encoded, 0);
    // One byte less and the same image in a new chat is refused (the sum is exact).
    let mut tight = m.chat(params(n_ctx, KvType::F16, need - 1)).expect("chat");
    let err = tight
        .send(Message::text("Describe.").with_image(img), &gen(), |_| Flow::Continue)
        .expect_err("one byte short");
    assert!(matches!(err, EngineError::Budget(BudgetError::Images { .. })), "{err}");
}

#[test]
fn an_image_with_too_many_tiles_fails_before_allocating() {
    let m = model();
    let hp = m.hparams().clone();
    let n_ctx = 4096;
    let kv = kv_bytes_by_hand(&m, n_ctx, KvType::F16);
    let llm = budget::llm_compute_bytes(&hp, 256, n_ctx);
    let v1 = budget::measure_vision_compute(m.inner(), 1).expect("measure");
    let v4 = budget::measure_vision_compute(m.inner(), 4).expect("measure");
    let tile_px = 3 * 448 * 448 * 4u64;
    // Room for a 1-tile image (pixels of the image and of its batch), not for the 13-tile one.
    let b = kv + llm.max(v1) + 2 * tile_px + 256 * 448 * 4;
    let mut chat = m.chat(params(n_ctx, KvType::F16, b)).expect("the session fits");
    let tiling = chat.tiling();
    let big = thirteen_tile_image(&tiling);
    assert_eq!(big.n_tiles(), 13);
    let err = chat
        .send(Message::text("Describe.").with_image(big), &gen(), |_| Flow::Continue)
        .expect_err("13 tiles do not fit");
    let EngineError::Budget(BudgetError::Images {
        images,
        tiles,
        batch,
        pixel_bytes,
        compute_bytes,
        compute_growth,
        embedding_bytes,
        budget: e_budget,
        kv_bytes,
        compute_in_use,
        image_cache_bytes,
    }) = &err
    else {
        panic!("not an image budget error: {err}");
    };
    assert_eq!((*images, *tiles, *batch), (1, 13, 4));
    assert_eq!(*pixel_bytes, (13 + 4) * tile_px);
    assert_eq!(*embedding_bytes, 13 * 256 * 448 * 4);
    assert_eq!(*compute_bytes, v4);
    assert_eq!(
        *compute_in_use, llm,
        "nothing ran yet: the prefill bound reserved at creation"
    );
    assert_eq!(*compute_growth, v4.saturating_sub(llm));
    assert_eq!((*e_budget, *kv_bytes, *image_cache_bytes), (b, kv, 0));
    let msg = err.to_string();
    for part in [
        "1 image(s) with 13 tiles".to_string(),
        format!("{} pixels", budget::fmt_bytes(17 * tile_px)),
        format!("{} vision compute for 4 tiles per graph", budget::fmt_bytes(v4)),
        format!("session budget {}", budget::fmt_bytes(b)),
        format!("KV cache {}", budget::fmt_bytes(kv)),
    ] {
        assert!(msg.contains(&part), "{msg:?} lacks {part:?}");
    }
    // Refused before allocating: no tile was encoded and the scheduler holds no compute buffer.
    assert_eq!(chat.session_stats().tiles_encoded, 0);
    assert_eq!(chat.compute_buffer_bytes(), 0);
    // The failed question can be withdrawn and a 1-tile image fits the same budget.
    chat.withdraw();
    let small = small_image(&tiling);
    assert_eq!(small.n_tiles(), 1);
    let reply = chat
        .send(Message::text("Describe.").with_image(small), &gen(), |_| Flow::Continue)
        .expect("one tile fits");
    assert_eq!(reply.stats.tiles_encoded, 1);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_with_the_numbers() {
    let m = model();
    let mut chat = m.chat(params(256, KvType::F16, 0)).expect("chat");
    let long = "word ".repeat(2000);
    let err = chat
        .send(Message::text(long), &gen(), |_| Flow::Continue)
        .expect_err("2000 words in 256 tokens");
    let EngineError::ContextOverflow { needed, n_ctx, .. } = err else {
        panic!("{err}");
    };
    assert!(needed > 2000 && n_ctx == 256, "{needed} {n_ctx}");
    assert_eq!(chat.session_stats().tokens_prefilled, 0, "nothing was evaluated");
}

#[test]
fn thousands_of_image_placeholders_are_refused() {
    let m = model();
    let mut chat = m.chat(params(512, KvType::F16, 0)).expect("chat");
    let text = "<image>".repeat(5000);
    let t = std::time::Instant::now();
    let err = chat.ask(Message::text(text.clone())).expect_err("no images attached");
    assert!(
        matches!(
            err,
            EngineError::Placeholders {
                placeholders: 5000,
                images: 0
            }
        ),
        "{err}"
    );
    let img = small_image(&chat.tiling());
    let err = chat
        .ask(Message::text(text).with_image(img))
        .expect_err("one image attached");
    assert!(
        matches!(
            err,
            EngineError::Placeholders {
                placeholders: 5000,
                images: 1
            }
        ),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 5, "refusing took {:?}", t.elapsed());
    // Still usable.
    chat.send(Message::text("Hi"), &gen(), |_| Flow::Continue)
        .expect("usable");
}

#[test]
fn the_model_outlives_its_handle_in_rust_too() {
    let m = model();
    let weak = Arc::downgrade(m.inner());
    let mut chat = m.chat(params(256, KvType::F16, 0)).expect("chat");
    drop(m);
    assert!(weak.upgrade().is_some(), "the chat holds the weights");
    chat.send(Message::text("Hi"), &gen(), |_| Flow::Continue)
        .expect("answers");
    drop(chat);
    assert!(weak.upgrade().is_none(), "the last holder frees the weights");
}

#[test]
fn nan_weights_give_an_error_not_a_stream_of_exclamation_marks() {
    use std::io::{Seek, SeekFrom, Write};
    let src = common::tiny_gguf(42, "f32", &[]);
    let dir = common::repo().join("target/tmp/robustness");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let dst = dir.join("nan-output-norm.gguf");
    std::fs::copy(&src, &dst).expect("copy");
    let (start, n) = {
        let f = internvl::gguf::GgufFile::open(&src).expect("open");
        let t = f.tensor("output_norm.weight").expect("output_norm.weight");
        assert_eq!(t.ty, internvl::gguf::GgmlType::F32);
        (f.data_offset() + t.offset, t.n_elements())
    };
    let mut file = std::fs::OpenOptions::new().write(true).open(&dst).expect("open copy");
    file.seek(SeekFrom::Start(start as u64)).expect("seek");
    let nan: Vec<u8> = (0..n).flat_map(|_| f32::NAN.to_le_bytes()).collect();
    file.write_all(&nan).expect("write");
    drop(file);
    // The file is structurally valid: it loads (weights are not scanned), and generation refuses.
    let m = Model::load(&dst, &LoadParams::default()).expect("loads");
    let mut chat = m.chat(params(256, KvType::F16, 0)).expect("chat");
    let err = chat
        .send(Message::text("Hi"), &gen(), |_| Flow::Continue)
        .expect_err("NaN logits");
    let EngineError::NonFiniteLogits { count, n_vocab, .. } = err else {
        panic!("{err}");
    };
    assert_eq!((count, n_vocab), (n_vocab, 151655), "every logit is NaN");
    let _ = std::fs::remove_file(&dst);
}

#[test]
fn an_endless_or_special_file_is_not_read_as_an_image() {
    // Found by the hostile-input table: /dev/zero has length 0 in its metadata and never ends; reading it
    // "to the end" grew to 21 GB before the kernel killed the process.
    use internvl::image::{load_path, Limits};
    let limits = Limits::default();
    for p in ["/dev/zero", "/dev/null", "/tmp"] {
        let path = std::path::Path::new(p);
        if !path.exists() {
            continue;
        }
        let err = load_path(path, &limits).expect_err(p).to_string();
        assert!(err.contains("not a regular file"), "{p}: {err}");
    }
}
