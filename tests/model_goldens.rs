//! The runtime against the PyTorch reference (transformers' InternVLForConditionalGeneration, f32, eager)
//! on the tiny synthetic checkpoint, stage by stage: ViT output, projector output, final hidden states,
//! logits, and 8 greedy decode steps. Goldens: tests/fixtures/goldens/tiny (see tests/reference/README.md).
//!
//! Tolerances (stated per weight type, always against the f32 reference):
//! - f32 weights: max |diff| <= 1e-5 of max |ref| at every stage (the issue asks 1e-4; we reach ~1e-6, and
//!   1e-5 catches a wrong ViT LayerNorm eps, which moves vit_out by 6.5e-5);
//! - f16 weights: max |diff| <= 1e-2 of max |ref|, and the same 8 greedy tokens;
//! - q8_0: logits cosine >= 0.999; q4_0 (the converter's recipe): >= 0.98, pure q4_0 >= 0.97;
//! - every decode step's logits, for f32 and f16 weights and each KV cache type (f32/f16/q8_0/q4_0), against
//!   the reference with the bounds in `decode_logits_against_reference_per_weight_and_kv_type`.
mod common;

use std::path::PathBuf;
use std::sync::Arc;

use internvl::ggml::dequantize;
use internvl::gguf::GgufFile;
use internvl::model::kv_cache::KvType;
use internvl::model::{Device, WeightLayout, Weights};
use internvl::sampling::argmax;
use internvl::session::{Session, SessionParams};
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Golden {
    dir: PathBuf,
    m: Value,
}

impl Golden {
    fn load() -> Golden {
        // INTERNVL_GOLDENS_DIR points at freshly generated goldens (for checking a regeneration).
        let dir = std::env::var_os("INTERNVL_GOLDENS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| common::repo().join("tests/fixtures/goldens/tiny"));
        let text = std::fs::read_to_string(dir.join("manifest.json")).expect("goldens manifest");
        let m: Value = serde_json::from_str(&text).expect("manifest JSON");
        assert_eq!(m["magic"], "internvl-goldens");
        assert_eq!(
            m["version"], 1,
            "goldens version; regenerate with tests/reference/README.md"
        );
        Golden { dir, m }
    }
    fn array(&self, name: &str) -> Vec<f32> {
        let a = &self.m["arrays"][name];
        let bytes = std::fs::read(self.dir.join(a["file"].as_str().expect("file"))).expect("golden array");
        let n: u64 = a["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product();
        assert_eq!(bytes.len() as u64, n * 4, "{name}: size");
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn u32s(&self, key: &str) -> Vec<u32> {
        self.m[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect()
    }
    /// `greedy_top5`: per decode step, the reference's full-vocabulary top-5 ids and logits.
    fn top5(&self) -> Vec<(Vec<u32>, Vec<f32>)> {
        self.m["greedy_top5"]
            .as_array()
            .expect("greedy_top5")
            .iter()
            .map(|s| {
                let ids = s["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32);
                let vals = s["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("v") as f32);
                (ids.collect(), vals.collect())
            })
            .collect()
    }
    fn margins(&self) -> Vec<f64> {
        self.m["greedy_top1_margin"]
            .as_array()
            .expect("greedy_top1_margin")
            .iter()
            .map(|v| v.as_f64().expect("margin"))
            .collect()
    }
    fn seed(&self) -> u64 {
        self.m["checkpoint"]["seed"].as_u64().expect("seed")
    }
    /// The normalized tiles the reference used.
    fn pixels(&self) -> Vec<f32> {
        let (shape, bytes) = common::read_npy_u8(&common::shared().join("reference/image1_tiles_uint8.npy"));
        let size = shape[1];
        let per = size * size * 3;
        let mut out = Vec::new();
        for t in self.m["tiles"].as_array().expect("tiles") {
            let t = t.as_u64().expect("tile") as usize;
            out.extend(common::normalize_hwc_u8(&bytes[t * per..(t + 1) * per], size));
        }
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            self.m["pixel_sha256"].as_str().expect("sha"),
            "pixel input differs"
        );
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Outputs {
    vit: Vec<f32>,
    proj: Vec<f32>,
    hidden: Vec<f32>,
    logits_last: Vec<f32>,
    logits_subset: Vec<f32>,
    greedy: Vec<u32>,
    decode_subset: Vec<f32>,
    /// Each step's logits at the reference's top-5 ids of that step (`greedy_top5`).
    decode_top5: Vec<f32>,
}

/// How a run is made: KV cache type, threads, weight layout, and teacher forcing.
#[derive(Clone, Copy)]
struct Opts<'a> {
    kv: KvType,
    threads: usize,
    layout: WeightLayout,
    /// Decode steps feed these tokens when given (teacher forcing), else our own greedy choice.
    force: Option<&'a [u32]>,
}

impl Opts<'_> {
    fn kv(kv: KvType) -> Self {
        Opts {
            kv,
            threads: 2,
            layout: WeightLayout::default(),
            force: None,
        }
    }
}

/// Runs the golden prompt and its decode steps.
fn run(g: &Golden, gguf: &std::path::Path, opts: Opts) -> Outputs {
    let Opts {
        kv,
        threads,
        layout,
        force,
    } = opts;
    let model = Arc::new(Weights::load_with(&[gguf], Device::Cpu, layout).expect("load"));
    let n_embd = model.hp.llm.n_embd;
    let mut s = Session::new(
        model.clone(),
        SessionParams {
            n_ctx: 1024,
            kv_type: kv,
            n_threads: threads,
            ..Default::default()
        },
    )
    .unwrap();
    let v = s.encode_tiles(&g.pixels(), true).unwrap();
    let ids = g.u32s("ids");
    let out = s.eval(&ids, &v.proj, true).unwrap();
    let hidden = out.hidden.unwrap();
    // Logits at every position on the subset: hidden · W_out[subset]ᵀ (the full-vocab product for all
    // positions would be 600 MB; the last position's full logits come from the graph).
    let subset = g.u32s("subset_ids");
    let file = GgufFile::open(gguf).unwrap();
    let w = file.tensor("output.weight").unwrap();
    let row = w.ty.row_size(n_embd).unwrap();
    let data = file.tensor_data(w);
    let rows: Vec<Vec<f32>> = subset
        .iter()
        .map(|&i| dequantize(w.ty, &data[i as usize * row..(i as usize + 1) * row], n_embd).unwrap())
        .collect();
    let dot = |h: &[f32], r: &[f32]| h.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
    let n = ids.len();
    let mut logits_subset = Vec::with_capacity(n * subset.len());
    for p in 0..n {
        let h = &hidden[p * n_embd..(p + 1) * n_embd];
        logits_subset.extend(rows.iter().map(|r| dot(h, r)));
    }
    // Greedy steps: step 0 from the prompt's logits, then feed each choice.
    let steps = g.u32s("greedy_ids").len();
    let mut greedy = Vec::new();
    let mut decode_subset = Vec::new();
    let mut decode_top5 = Vec::new();
    let top5 = g.top5();
    let mut cur = out.logits.clone();
    for k in 0..steps {
        decode_subset.extend(subset.iter().map(|&i| cur[i as usize]));
        decode_top5.extend(top5[k].0.iter().map(|&i| cur[i as usize]));
        let next = argmax(&cur);
        greedy.push(next);
        let next = force.map(|f| f[k]).unwrap_or(next);
        if k + 1 < steps {
            cur = s.decode(next).unwrap();
        }
    }
    Outputs {
        vit: v.vit.unwrap(),
        proj: v.proj,
        hidden,
        logits_last: out.logits,
        logits_subset,
        greedy,
        decode_subset,
        decode_top5,
    }
}

fn golden_model(g: &Golden, ty: &str) -> PathBuf {
    let path = common::tiny_gguf(g.seed(), ty, &[]);
    // The goldens belong to one checkpoint: say so clearly when the generator changed.
    let ck = common::tiny_checkpoint(g.seed());
    let sha = hex(&Sha256::digest(std::fs::read(ck.join("model.safetensors")).unwrap()));
    assert_eq!(
        sha,
        g.m["checkpoint"]["safetensors_sha256"].as_str().unwrap_or(""),
        "the synthetic checkpoint no longer matches the goldens: regenerate them (tests/reference/README.md)"
    );
    path
}

fn report(name: &str, ours: &[f32], reference: &[f32]) -> (f64, f64) {
    let rel = common::rel_max_diff(ours, reference);
    let cos = common::cosine(ours, reference);
    eprintln!(
        "{name:>22}: max|diff|/max|ref| {rel:.3e}  cosine {cos:.8} (1 - cosine {:.2e})",
        1.0 - cos
    );
    (rel, cos)
}

/// Every decode step against the reference: step k's logits on `subset_ids` (`decode_logits_subset`) and
/// at the reference's full-vocabulary top-5 ids (`greedy_top5`). Steps k >= 1 are only comparable in the
/// reference's context, so `o` must come from a run teacher-forced with `greedy_ids` (or one whose greedy
/// ids equal them). Returns the worst step's max|diff|/max|ref| (over subset and top-5) and the worst step's
/// cosine over the subset; both are NaN when any logit is. Also checks that our argmax is the reference's at
/// every step whose top-1 margin is more than 4x that step's max|diff| (closer calls may flip legitimately).
fn decode_against_reference(name: &str, g: &Golden, o: &Outputs) -> (f64, f64) {
    let subset_ref = g.array("decode_logits_subset");
    let top5 = g.top5();
    let margins = g.margins();
    let golden_ids = g.u32s("greedy_ids");
    let steps = top5.len();
    let s = subset_ref.len() / steps;
    assert_eq!(o.decode_subset.len(), steps * s, "{name}: decode steps");
    let (mut worst_rel, mut worst_cos) = (0f64, 1f64);
    for k in 0..steps {
        let ours: Vec<f32> = o.decode_subset[k * s..(k + 1) * s]
            .iter()
            .chain(&o.decode_top5[k * 5..k * 5 + 5])
            .copied()
            .collect();
        let r: Vec<f32> = subset_ref[k * s..(k + 1) * s]
            .iter()
            .chain(&top5[k].1)
            .copied()
            .collect();
        let abs = common::max_abs_diff(&ours, &r);
        let rel = common::rel_max_diff(&ours, &r);
        let cos = common::cosine(&o.decode_subset[k * s..(k + 1) * s], &subset_ref[k * s..(k + 1) * s]);
        worst_rel = common::nan_max([worst_rel, rel]);
        worst_cos = if worst_cos.is_nan() || cos.is_nan() {
            f64::NAN
        } else {
            worst_cos.min(cos)
        };
        if margins[k] > 4.0 * abs {
            assert_eq!(
                o.greedy[k], golden_ids[k],
                "{name}: step {k} argmax differs (margin {:.4}, max|diff| {abs:.2e})",
                margins[k]
            );
        }
    }
    eprintln!(
        "{name:>28}: decode steps max|diff|/max|ref| {worst_rel:.3e}  min cosine {worst_cos:.9} (1 - cosine {:.2e})",
        1.0 - worst_cos
    );
    (worst_rel, worst_cos)
}

#[test]
fn helpers_fail_on_nan_and_infinity() {
    // A bound written `rel <= tol` must fail when our output holds a NaN (f64::max used to drop it).
    let passes = |v: f64| v <= 1e-5;
    let r = [1.0f32, -2.0, 0.5];
    for bad in [f32::NAN, f32::INFINITY] {
        let ours = [1.0f32, bad, 0.5];
        let rel = common::rel_max_diff(&ours, &r);
        assert!(!passes(rel), "ours with {bad}: rel {rel}");
        let rel = common::rel_max_diff(&r, &ours);
        assert!(!passes(rel), "reference with {bad}: rel {rel}");
        assert!(!passes(common::max_abs_diff(&ours, &r)));
    }
    assert!(common::nan_max([1.0, f64::NAN, 3.0]).is_nan());
    assert!(common::nan_max([f64::NAN, 1.0]).is_nan());
    assert_eq!(common::nan_max([1.0, 3.0, 2.0]), 3.0);
    assert_eq!(common::rel_max_diff(&[1.0, -2.5], &[1.0, -2.0]), 0.25);
}

#[test]
fn f32_weights_match_reference_at_every_stage() {
    let g = Golden::load();
    // Not teacher-forced: with f32 weights and cache our own greedy choices must be the reference's.
    let o = run(&g, &golden_model(&g, "f32"), Opts::kv(KvType::F32));
    assert_eq!(o.greedy, g.u32s("greedy_ids"), "greedy tokens");
    let vit_ref = g.array("vit_out");
    let n = vit_ref.len();
    for (name, ours, r) in [
        ("vit_out", &o.vit[..n], vit_ref),
        ("proj_out", &o.proj[..], g.array("proj_out")),
        ("hidden_final", &o.hidden[..], g.array("hidden_final")),
        ("logits_last", &o.logits_last[..], g.array("logits_last")),
        ("logits_subset", &o.logits_subset[..], g.array("logits_subset")),
    ] {
        let (rel, _) = report(name, ours, &r);
        assert!(rel <= 1e-5, "{name}: max|diff| {rel:.3e} of max|ref| > 1e-5");
    }
    let (rel, _) = decode_against_reference("f32 weights, f32 KV", &g, &o);
    assert!(rel <= 1e-5, "decode logits: max|diff| {rel:.3e} of max|ref| > 1e-5");
}

#[test]
fn f16_weights_within_1e_2_and_same_greedy_tokens() {
    let g = Golden::load();
    let o = run(&g, &golden_model(&g, "f16"), Opts::kv(KvType::F16));
    for (name, ours, r) in [
        ("proj_out", &o.proj[..], g.array("proj_out")),
        ("hidden_final", &o.hidden[..], g.array("hidden_final")),
        ("logits_last", &o.logits_last[..], g.array("logits_last")),
        ("logits_subset", &o.logits_subset[..], g.array("logits_subset")),
    ] {
        let (rel, _) = report(name, ours, &r);
        assert!(rel <= 1e-2, "{name}: {rel:.3e} > 1e-2");
    }
    assert_eq!(o.greedy, g.u32s("greedy_ids"), "greedy tokens with f16 weights");
}

/// The decode path against the reference for each weight type and KV cache type, with 1 and 2 threads:
/// every step's logits, teacher-forced with the reference's greedy ids (on random weights the top-2 margins
/// are small, so a flipped argmax would otherwise compare logits of different contexts), and the prompt's
/// logits at every position (the prefill writes and reads the same cache).
///
/// Each bound is 2x (rounded up) the worst value measured on AMD EPYC Zen 4 over 1 and 2 threads and over the
/// ViT's attention on our AVX-512 kernel and on ggml's flash attention (`--kernels ggml`, what a CPU
/// without AVX-512 runs); the measured worst is written beside it. `WeightLayout::Mapped` gave the same bits
/// as the default layout for these f32/f16 files (only q4_0/q8_0 matrices are laid out differently), so it
/// is not repeated here. Relative = max|diff| / max|ref| over a step's subset and top-5 logits.
#[test]
fn decode_logits_against_reference_per_weight_and_kv_type() {
    struct Bound {
        weights: &'static str,
        kv: KvType,
        /// Decode steps: max relative difference, max 1 - cosine.
        decode: (f64, f64),
        /// Prompt logits (all 566 positions on the subset): the same two.
        prompt: (f64, f64),
    }
    #[rustfmt::skip]
    let cases = [
        // measured: decode 7.5e-7 / 3.4e-13, prompt 7.9e-7 / 4.1e-13
        Bound { weights: "f32", kv: KvType::F32, decode: (1.6e-6, 1e-12), prompt: (1.6e-6, 1e-12) },
        // measured: decode 3.0e-3 / 5.5e-6, prompt 2.6e-3 / 3.5e-7
        Bound { weights: "f32", kv: KvType::F16, decode: (6.1e-3, 1.1e-5), prompt: (5.3e-3, 7.1e-7) },
        // measured: decode 1.04e-3 / 8.7e-7, prompt 6.7e-3 / 5.3e-6
        Bound { weights: "f32", kv: KvType::Q8_0, decode: (2.1e-3, 1.8e-6), prompt: (1.4e-2, 1.1e-5) },
        // measured: decode 1.46e-2 / 1.22e-4, prompt 1.03e-1 / 1.02e-3
        Bound { weights: "f32", kv: KvType::Q4_0, decode: (3.0e-2, 2.5e-4), prompt: (2.1e-1, 2.1e-3) },
        // measured: decode 3.6e-4 / 6.9e-8, prompt 4.5e-4 / 6.0e-8
        Bound { weights: "f16", kv: KvType::F32, decode: (7.2e-4, 1.4e-7), prompt: (9.1e-4, 1.2e-7) },
        // measured: decode 3.1e-3 / 5.7e-6, prompt 2.8e-3 / 4.1e-7
        Bound { weights: "f16", kv: KvType::F16, decode: (6.3e-3, 1.2e-5), prompt: (5.6e-3, 8.2e-7) },
        // measured: decode 1.23e-3 / 9.2e-7, prompt 6.2e-3 / 5.1e-6
        Bound { weights: "f16", kv: KvType::Q8_0, decode: (2.5e-3, 1.9e-6), prompt: (1.3e-2, 1.1e-5) },
        // measured: decode 1.47e-2 / 1.25e-4, prompt 1.02e-1 / 1.03e-3
        Bound { weights: "f16", kv: KvType::Q4_0, decode: (3.0e-2, 2.5e-4), prompt: (2.1e-1, 2.1e-3) },
    ];
    let g = Golden::load();
    let golden_ids = g.u32s("greedy_ids");
    let prompt_ref = g.array("logits_subset");
    for b in cases {
        let model = golden_model(&g, b.weights);
        for threads in [1, 2] {
            let o = run(
                &g,
                &model,
                Opts {
                    kv: b.kv,
                    threads,
                    layout: WeightLayout::default(),
                    force: Some(&golden_ids),
                },
            );
            let name = format!("{} weights, {:?} KV, {threads}t", b.weights, b.kv);
            let (rel, cos) = decode_against_reference(&name, &g, &o);
            let (prel, pcos) = report("prompt logits_subset", &o.logits_subset, &prompt_ref);
            for (what, rel, cos, (max_rel, max_1mc)) in
                [("decode", rel, cos, b.decode), ("prompt", prel, pcos, b.prompt)]
            {
                assert!(
                    rel <= max_rel,
                    "{name}: {what} max|diff|/max|ref| {rel:.3e} > {max_rel:.1e}"
                );
                assert!(
                    1.0 - cos <= max_1mc,
                    "{name}: {what} 1 - cosine {:.3e} > {max_1mc:.1e}",
                    1.0 - cos
                );
            }
        }
    }
}

#[test]
fn quantized_weights_logits_cosine() {
    // The asserted figure is the cosine over the logits of every prompt position (566 positions x 1024
    // vocabulary ids); the last position alone is printed too. Random weights have no outliers and tiny
    // logit ranges, so these are lower bounds of what trained weights give.
    //
    // q4_0 is the converter's recipe (vision tower, projector, token_embd and lm_head at q8_0; convert/src/
    // policy.rs): 0.9853 measured, on our panels (the default layout on AVX-512 VNNI) and on ggml's kernels
    // (`Mapped`). Pure q4_0 (every matrix) measured 0.9745: each of the 14 LLM and 4 ViT matrices carries
    // q4_0's ~8.6% relative weight error and random weights have no structure to absorb it; it keeps 0.97
    // as a regression bound. q8_0 through the same code path loses only 1.4e-4.
    let g = Golden::load();
    golden_model(&g, "f32");
    for (ty, extra, min_cos) in [
        ("q8_0", &[][..], 0.999),
        ("q4_0", &[][..], 0.98),
        ("q4_0", common::PURE_Q4_0, 0.97),
    ] {
        let path = common::tiny_gguf(g.seed(), ty, extra);
        for layout in [WeightLayout::Repacked, WeightLayout::Mapped] {
            eprintln!("--- {ty} {extra:?} {layout:?}");
            let o = run(
                &g,
                &path,
                Opts {
                    layout,
                    ..Opts::kv(KvType::F16)
                },
            );
            report("proj_out", &o.proj, &g.array("proj_out"));
            report("logits_last", &o.logits_last, &g.array("logits_last"));
            let (_, c) = report("logits_subset", &o.logits_subset, &g.array("logits_subset"));
            assert!(
                c >= min_cos,
                "{ty} {extra:?} {layout:?}: logits cosine over all positions {c:.6} < {min_cos}"
            );
        }
    }
}

/// Full-size check (spec model dimensions, random weights), ignored by default: it needs the full synthetic
/// checkpoint converted and minimal goldens from `make_goldens.py --save-minimal` (tests/reference/README.md).
///   INTERNVL_FULL_GOLDENS=/tmp/goldfull INTERNVL_FULL_GGUF=/tmp/full1-f32.gguf,/tmp/full1-f16.gguf \
///   cargo test --release -p internvl --test model_goldens full_size -- --ignored --nocapture
/// Targets: logits cosine >= 0.99999 with f32 weights, >= 0.9999 with f16.
#[test]
#[ignore]
fn full_size_against_reference() {
    let dir = PathBuf::from(std::env::var("INTERNVL_FULL_GOLDENS").expect("INTERNVL_FULL_GOLDENS"));
    let g = Golden {
        m: serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap(),
        dir,
    };
    let ggufs = std::env::var("INTERNVL_FULL_GGUF").expect("INTERNVL_FULL_GGUF");
    for path in ggufs.split(',') {
        let model = Arc::new(Weights::load(&[std::path::Path::new(path)]).unwrap());
        let mut s = Session::new(
            model,
            SessionParams {
                n_ctx: 1024,
                kv_type: KvType::F32,
                n_threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let v = s.encode_tiles(&g.pixels(), false).unwrap();
        let out = s.eval(&g.u32s("ids"), &v.proj, true).unwrap();
        eprintln!("--- {path}");
        report("proj_out", &v.proj, &g.array("proj_out"));
        report("hidden_final", &out.hidden.unwrap(), &g.array("hidden_final"));
        let (_, c) = report("logits_last", &out.logits, &g.array("logits_last"));
        // Bounds for the types the issue names; other types are reported only.
        let min = if path.contains("f32") {
            Some(0.99999)
        } else if path.contains("f16") {
            Some(0.9999)
        } else {
            None
        };
        if let Some(min) = min {
            assert!(c >= min, "{path}: logits cosine {c:.7} < {min}");
        }
    }
}
