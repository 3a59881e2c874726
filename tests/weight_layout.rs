//! Repacked CPU weights (ggml's interleaved layouts or our q4_0/q8_0 panels, the default), f32, int8 and
//! panel layouts compute the same model as weights used in place from the mapped file.
mod common;

use std::sync::Arc;

use internvl::model::{Device, WeightLayout, Weights};
use internvl::session::{Session, SessionParams};

/// A session of 128 tokens on `n_threads` threads.
fn session(model: &Arc<Weights>, n_threads: usize) -> Session {
    let p = SessionParams {
        n_ctx: 128,
        n_threads,
        ..Default::default()
    };
    Session::new(model.clone(), p).expect("session")
}

/// `n` text tokens evaluated in one batch on a fresh session: the last token's logits.
fn eval_on(model: &Arc<Weights>, n: u32, n_threads: usize) -> Vec<f32> {
    let ids: Vec<u32> = (0..n).map(|i| 1000 + i * 37).collect();
    session(model, n_threads).eval(&ids, &[], false).expect("eval").logits
}

fn run(model: Arc<Weights>) -> (Vec<f32>, Vec<f32>) {
    let hp = model.hp.clone();
    let mut s = session(&model, 2);
    let per_tile = hp.vision.n_channels * hp.vision.image_size * hp.vision.image_size;
    let tile: Vec<f32> = (0..per_tile)
        .map(|i| (((i * 7919) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let proj = s.encode_tiles(&tile, false).expect("vision").proj;
    // 40 text tokens: a batch, so the GEMM kernels (not the one-row ones) run.
    let ids: Vec<u32> = (0..40u32).map(|i| 1000 + i * 37).collect();
    let logits = s.eval(&ids, &[], false).expect("prefill").logits;
    (proj, logits)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

#[test]
fn repacked_q4_0_matches_mapped() {
    let path = common::tiny_gguf(42, "q4_0", common::PURE_Q4_0);
    let mapped = Arc::new(Weights::load_with(&[&path], Device::Cpu, WeightLayout::Mapped).expect("load mapped"));
    let repacked = Arc::new(Weights::load_with(&[&path], Device::Cpu, WeightLayout::Repacked).expect("load repacked"));
    assert_eq!(mapped.repacked, (0, 0));
    let features = internvl::ggml::cpu_features();
    eprintln!("CPU features {features:?}; repacked {:?}", repacked.repacked);
    if cfg!(target_arch = "x86_64") && features.contains(&"AVX2") {
        // Every q4_0 matrix whose row count is a multiple of 8 (all of the tiny model's).
        assert!(repacked.repacked.0 > 0, "nothing was repacked on an AVX2 CPU");
    }
    let (p_map, l_map) = run(mapped);
    let (p_rep, l_rep) = run(repacked);
    let (cp, cl) = (cosine(&p_map, &p_rep), cosine(&l_map, &l_rep));
    eprintln!("cosine repacked vs mapped: projector {cp:.7}, logits {cl:.7}");
    // Same quantized weights and q8_0-like activations; only the summation order differs (and, where
    // `Repacked` puts q4_0 in our panels, on AVX-512 VNNI, the activation scales' rounding: 0.99991).
    let min = if internvl::kernels::Choice::auto().panels {
        0.9995
    } else {
        0.9999
    };
    assert!(cp > min, "projector cosine {cp}");
    assert!(cl > min, "logits cosine {cl}");
}

#[test]
fn f32_vision_widens_only_the_vision_matrices() {
    let path = common::tiny_gguf(42, "f16", &[]);
    let load = |layout| Arc::new(Weights::load_with(&[&path], Device::Cpu, layout).expect("load"));
    let (mapped, repacked, widened) = (
        load(WeightLayout::Mapped),
        load(WeightLayout::Repacked),
        load(WeightLayout::F32Vision),
    );
    assert_eq!(mapped.widened, (0, 0));
    assert_eq!(repacked.widened, (0, 0));
    // The fused qkv, the output projection and the two MLP matrices of every vision block, 4 bytes a value.
    let v = &widened.hp.vision;
    let per_block = 3 * v.n_embd * v.n_embd + v.n_embd * v.n_embd + 2 * v.n_embd * v.n_ff;
    eprintln!("widened {:?}", widened.widened);
    assert_eq!(widened.widened, (4 * v.n_layer, 4 * v.n_layer * per_block));
    let (p_map, _) = run(mapped);
    let (p_rep, l_rep) = run(repacked);
    let (p_wid, l_wid) = run(widened);
    // The language model is held the same way in both: identical logits.
    assert_eq!(l_rep, l_wid, "f32-vision changed the language model");
    // Vision: the same weight values, multiplied in f32. (Whether that differs at all from the f16 path depends
    // on the CPU's kernels: on x86 ggml's f16 product rounds the activations to f16, on the aarch64 baseline
    // the two came out bit-identical; so only closeness is asserted.)
    let (c, c_rep) = (cosine(&p_map, &p_wid), cosine(&p_map, &p_rep));
    eprintln!("projector cosine vs mapped f16: f32-vision {c:.7}, repacked {c_rep:.7}");
    assert!(c > 0.9999, "projector cosine {c}");
}

#[test]
fn int8_vision_quantizes_only_the_vision_matrices_within_int8_error() {
    let path = common::tiny_gguf(42, "f32", &[]);
    let load = |layout| Arc::new(Weights::load_with(&[&path], Device::Cpu, layout).expect("load"));
    let (exact, int8) = (load(WeightLayout::Repacked), load(WeightLayout::Int8Vision));
    assert_eq!(exact.int8_packed(), (0, 0));
    let v = &int8.hp.vision;
    // The fused qkv, the output projection and the two MLP matrices of every vision block, about 1 byte a
    // value (plus a scale and a sum per row and group of 128, padding to whole panels of 32 rows and 4 inputs).
    let per_block = 3 * v.n_embd * v.n_embd + v.n_embd * v.n_embd + 2 * v.n_embd * v.n_ff;
    let (count, bytes) = int8.int8_packed();
    eprintln!(
        "int8 {count} tensors, {bytes} bytes ({} kernel)",
        int8.kernels.isa.name()
    );
    assert_eq!(count, 4 * v.n_layer);
    assert!(
        bytes >= v.n_layer * per_block && bytes < 2 * v.n_layer * per_block,
        "{bytes} bytes"
    );
    let (p_f32, l_f32) = run(exact);
    let (p_i8, l_i8) = run(int8);
    // The language model is held the same way in both: identical logits.
    assert_eq!(l_f32, l_i8, "int8-vision changed the language model");
    // Vision against the f32 file's exact result: int8 weights and activations (a scale per 128 inputs). The
    // full model gives 0.99971 (docs/benchmarks.md); the tiny one 0.9999995.
    let c = cosine(&p_f32, &p_i8);
    eprintln!("projector cosine int8-vision vs f32: {c:.7}");
    assert!(c > 0.9999, "projector cosine {c}");
    assert!(p_f32 != p_i8, "the int8 path did not run");
}

#[test]
fn int8_copies_serve_batches_and_short_evaluations_keep_the_file_weights() {
    let path = common::tiny_gguf(42, "f32", &[]);
    let load = |layout| Arc::new(Weights::load_with(&[&path], Device::Cpu, layout).expect("load"));
    let (exact, int8) = (load(WeightLayout::Repacked), load(WeightLayout::Int8));
    let (count, _) = int8.int8_packed();
    // The vision matrices (4 per block) and the language model's 7 per block.
    assert_eq!(count, 4 * int8.hp.vision.n_layer + 7 * int8.hp.llm.n_layer);
    let eval = |m: &Arc<Weights>, n: u32| eval_on(m, n, 2);
    let short = internvl::model::INT8_MIN_TOKENS as u32 - 1;
    assert_eq!(
        eval(&exact, short),
        eval(&int8, short),
        "a short evaluation used the int8 copies"
    );
    let (a, b) = (eval(&exact, 40), eval(&int8, 40));
    // Against the q8_0 file's error on the same prompt (the full model: KL 6.5e-4 vs q8_0's 4.8e-4).
    let q8 = Arc::new(Weights::load(&[&common::tiny_gguf(42, "q8_0", &[])]).expect("load q8_0"));
    let (c, c_q8) = (cosine(&a, &b), cosine(&a, &eval(&q8, 40)));
    eprintln!("prefill logits cosine to f32: int8 {c:.7}, q8_0 file {c_q8:.7}");
    assert!(a != b, "the int8 copies did not run");
    // More threads than blocks of 12 tokens (16 tokens: 2 blocks, 6 threads): the idle threads do nothing, and
    // the split does not change the result.
    let n = internvl::model::INT8_MIN_TOKENS as u32;
    assert_eq!(eval_on(&int8, n, 6), eval_on(&int8, n, 1));
    assert!(
        1.0 - c <= 2.0 * (1.0 - c_q8),
        "int8 prefill cosine {c} vs q8_0's {c_q8}"
    );
}

#[test]
fn q4_0_and_q8_0_panels_give_ggml_results_in_every_product() {
    for ty in ["q4_0", "q8_0"] {
        panels_against_ggml(ty);
    }
}

fn panels_against_ggml(ty: &str) {
    // Pure q4_0: every matrix of the type under test.
    let extra = if ty == "q4_0" { common::PURE_Q4_0 } else { &[] };
    let path = common::tiny_gguf(42, ty, extra);
    let load = |layout| Arc::new(Weights::load_with(&[&path], Device::Cpu, layout).expect("load"));
    let (mapped, panels) = (load(WeightLayout::Mapped), load(WeightLayout::Int8));
    assert_eq!(mapped.panels_packed(), (0, 0));
    let (v, l) = (&panels.hp.vision, &panels.hp.llm);
    // Every vision block matrix (4 a block), and with AVX-512 VNNI every language model block matrix (7) and
    // the lm_head: the file's values in panels (as many bytes as the file's), nothing requantized to int8.
    // Without VNNI the language model keeps ggml's kernels for decoding and int8 copies for prefill.
    let (count, bytes) = panels.panels_packed();
    let vnni = internvl::kernels::Choice::auto().panels;
    eprintln!(
        "{ty} panels: {count} tensors, {bytes} bytes ({} kernel)",
        panels.kernels.isa.name()
    );
    assert_eq!(count, 4 * v.n_layer + if vnni { 7 * l.n_layer + 1 } else { 0 });
    assert_eq!(panels.int8_packed().0, if vnni { 0 } else { 7 * l.n_layer });
    // Each Linear layer records the kernel chosen for it at load: as many as were laid out.
    let kinds = panels.linear_kinds();
    assert_eq!(kinds.get("panels").copied().unwrap_or(0), count, "{kinds:?}");
    assert_eq!(
        kinds.get("int8").copied().unwrap_or(0),
        panels.int8_packed().0,
        "{kinds:?}"
    );
    assert_eq!(mapped.linear_kinds().keys().collect::<Vec<_>>(), vec![&"ggml"]);
    let (p_map, l_map) = run(mapped.clone());
    let (p_pan, l_pan) = run(panels.clone());
    let (cp, cl) = (cosine(&p_map, &p_pan), cosine(&l_map, &l_pan));
    eprintln!("{ty}: cosine panels vs ggml on the mapped file: projector {cp:.7}, prefill logits {cl:.7}");
    // The same weights and q8_0-like activations (f32 scales here, f16 in ggml): only roundings and the
    // summation order differ (q4_0 here: 0.99991; a wrong value order would give ~0). Without VNNI the
    // prefill runs on int8 copies (the values quantized again): a looser bound for its logits.
    let min_l = if vnni { 0.9995 } else { 0.999 };
    assert!(cp > 0.9995 && cl > min_l, "{ty}: cosines {cp} {cl}");
    assert!(p_map != p_pan && l_map != l_pan, "{ty}: the panels were not used");
    // Decoding (one token: the matrix-vector kernel, panels split over the threads).
    let decode = |m: &Arc<Weights>, n_threads: usize| {
        let mut s = session(m, n_threads);
        let ids: Vec<u32> = (0..20u32).map(|i| 1000 + i * 37).collect();
        s.eval(&ids, &[], false).expect("prefill");
        s.eval(&[4242], &[], false).expect("decode").logits
    };
    let d_pan = decode(&panels, 2);
    let cd = cosine(&decode(&mapped, 2), &d_pan);
    eprintln!("{ty}: decode logits cosine: {cd:.7}");
    assert!(cd > 0.9995, "{ty}: decode cosine {cd}");
    assert_eq!(decode(&panels, 1), d_pan, "{ty}: the thread split changed the result");
    assert_eq!(decode(&panels, 5), d_pan, "{ty}: the thread split changed the result");
}

/// The int8 layouts on every instruction set this CPU runs (`--kernels portable`, `avx2`, `avx512-vnni`; the
/// AVX-VNNI sets run AVX2's int8 kernel):
/// the same integer sums and float steps in every kernel, so the same projector output and logits, bit for
/// bit (the tiny f32 model's other products are ggml's on every path).
#[test]
fn int8_layouts_give_the_same_bits_on_every_instruction_set() {
    use internvl::kernels::{Isa, Kernels};
    let path = common::tiny_gguf(42, "f32", &[]);
    for layout in [WeightLayout::Int8Vision, WeightLayout::Int8] {
        let load = |k: Kernels| {
            let m = Weights::load_with_kernels(&[&path], Device::Cpu, layout, k).expect("load");
            assert!(m.int8_packed().0 > 0, "{layout:?} {k}: no int8 matrix");
            Arc::new(m)
        };
        let (proj, logits) = run(load(Kernels::Portable));
        // The AVX-VNNI sets differ from AVX2 only in the q4_0/q8_0 products, which this test does not use.
        for isa in Isa::bases_here().into_iter().filter(|&i| i != Isa::Portable) {
            let kernels = Kernels::from(isa);
            eprintln!("{layout:?}: {} kernels against the portable ones", isa.name());
            let (p, l) = run(load(kernels));
            assert!(
                p == proj && l == logits,
                "{layout:?}: {} differs from portable",
                isa.name()
            );
        }
    }
}

/// The language model's products by our panels give the same bits on every instruction set this CPU runs
/// (its other work is ggml's either way): prefill (the tile kernel) and decoding (the row kernel), 2 threads.
#[test]
fn panels_give_the_same_text_logits_on_every_instruction_set() {
    use internvl::kernels::{Isa, Kernels};
    for ty in ["q4_0", "q8_0"] {
        let extra = if ty == "q4_0" { common::PURE_Q4_0 } else { &[] };
        let path = common::tiny_gguf(42, ty, extra);
        let logits = |k: Kernels| {
            let m = Weights::load_with_kernels(&[&path], Device::Cpu, WeightLayout::Repacked, k).expect("load");
            let m = Arc::new(m);
            assert!(m.kernels.panels, "{k}: no panels");
            let mut s = session(&m, 2);
            let ids: Vec<u32> = (0..20u32).map(|i| 1000 + i * 37).collect();
            let prefill = s.eval(&ids, &[], false).expect("prefill").logits;
            (prefill, s.eval(&[4242], &[], false).expect("decode").logits)
        };
        let portable = logits(Kernels::Portable);
        for isa in Isa::all_here().into_iter().filter(|&i| i != Isa::Portable) {
            let k = Kernels::from(isa);
            eprintln!("{ty}: text logits with {k} against the portable kernels");
            assert!(
                logits(k) == portable,
                "{ty}: {k} gives other logits than the portable kernels"
            );
        }
    }
}
