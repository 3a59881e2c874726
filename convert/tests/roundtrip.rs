//! Every tensor of a converted GGUF, read back with our GGUF reader and dequantized with ggml's own
//! `to_float`, matches its source tensor: f32/bf16 exactly, f16 to f16 rounding, quantized types within
//! a relative RMS error bound (q8_0 0.6 %, q4_0 9.5 %). Plus metadata, sharding, overrides and --split.

mod common;

use std::collections::HashMap;

use common::*;
use internvl::gguf::{GgmlType, GgufFile};
use internvl::hparams::Hparams;
use internvl::names::{self, key, tensor_specs, Part};
use internvl_convert::config::HERMES2_SYSTEM_MESSAGE;
use internvl_convert::policy::{self, TypeChoice};
use internvl_convert::safetensors::{sha256_file, Checkpoint};

/// Relative RMS bounds for N(0, 0.02) weights (the acceptance: q8_0 0.6 %, q4_0 9.5 %).
fn bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::Q8_0 => 0.006,
        GgmlType::Q6_K => 0.03,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 0.05,
        GgmlType::Q4_0 | GgmlType::IQ4_NL => 0.095,
        GgmlType::Q4_1 => 0.10,
        other => panic!("no bound for {other}"),
    }
}

/// Compares one stored tensor with its source values; returns the relative RMS error.
fn compare(name: &str, ty: GgmlType, data: &[u8], src: &[f32]) -> f64 {
    let got = internvl::ggml::dequantize(ty, data, src.len()).unwrap();
    match ty {
        GgmlType::F32 | GgmlType::BF16 => {
            for (i, (g, s)) in got.iter().zip(src).enumerate() {
                assert_eq!(g.to_bits(), s.to_bits(), "{name}[{i}] {ty}: {g} vs source {s}");
            }
            0.0
        }
        GgmlType::F16 => {
            for (i, (g, s)) in got.iter().zip(src).enumerate() {
                let want = half::f16::from_f32(*s).to_f32();
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "{name}[{i}] f16: {g} vs rounded source {want}"
                );
            }
            0.0
        }
        q => {
            let num: f64 = got.iter().zip(src).map(|(g, s)| ((g - s) as f64).powi(2)).sum();
            let den: f64 = src.iter().map(|s| (*s as f64).powi(2)).sum();
            let rel = (num / den).sqrt();
            assert!(
                rel <= bound(q),
                "{name} {q}: relative RMS error {rel:.5} > {}",
                bound(q)
            );
            // A quantized tensor cannot be exact: guards against a "quantizer" that stored floats.
            assert!(rel > 1e-4, "{name} {q}: suspiciously exact ({rel})");
            rel
        }
    }
}

/// Checks every tensor of a single-file GGUF against the checkpoint and the policy; returns the worst
/// relative error per stored type.
fn check_file(
    ck_dir: &std::path::Path,
    gguf: &std::path::Path,
    hp: &Hparams,
    types: &TypeChoice,
) -> HashMap<GgmlType, f64> {
    let ck = Checkpoint::open_dir(ck_dir).unwrap();
    let g = GgufFile::open(gguf).unwrap();
    let specs = tensor_specs(hp);
    assert_eq!(g.tensors().len(), specs.len());
    let mut worst: HashMap<GgmlType, f64> = HashMap::new();
    for s in &specs {
        let t = g
            .tensor(&s.gguf_name)
            .unwrap_or_else(|| panic!("{} missing", s.gguf_name));
        assert_eq!(t.ne, s.ne, "{}", s.gguf_name);
        assert_eq!(t.ty, policy::decide(s, types).chosen, "{} type", s.gguf_name);
        let src = ck.read_f32(ck.get(&s.hf_name).unwrap()).unwrap();
        let rel = compare(&s.gguf_name, t.ty, g.tensor_data(t), &src);
        let w = worst.entry(t.ty).or_default();
        *w = w.max(rel);
    }
    worst
}

#[test]
fn float_types_are_exact() {
    let out = tempfile::tempdir().unwrap();
    for (ck, hp, ty) in [
        (micro_checkpoint(), micro(), GgmlType::F32),
        (micro_checkpoint(), micro(), GgmlType::BF16),
        (tiny_checkpoint(), Hparams::tiny(), GgmlType::F16),
    ] {
        let p = out.path().join(format!("{ty}.gguf"));
        let types = TypeChoice::uniform(ty);
        let r = convert_to(ck, &p, types, false);
        assert!(r.fallbacks.is_empty(), "{ty}: {:?}", r.fallbacks);
        check_file(ck, &p, &hp, &types);
        std::fs::remove_file(&p).unwrap();
    }
}

/// Checks that the report lists exactly the tensors whose stored type differs from the requested one.
fn check_fallback_report(
    p: &std::path::Path,
    hp: &Hparams,
    types: &TypeChoice,
    r: &internvl_convert::convert::ConvertReport,
) {
    let g = GgufFile::open(p).unwrap();
    let fell: Vec<&str> = r.fallbacks.iter().map(|f| f.tensor.as_str()).collect();
    for s in tensor_specs(hp) {
        let t = g.tensor(&s.gguf_name).unwrap();
        let requested = policy::decide(&s, types).requested;
        assert_eq!(fell.contains(&t.name.as_str()), requested != t.ty, "{}", t.name);
    }
}

#[test]
fn tiny_quantized_within_bounds() {
    // tiny's rows (64, 224, 256, 608) are whole 32-blocks: q8_0 and q4_0 quantize every matrix.
    let out = tempfile::tempdir().unwrap();
    let hp = Hparams::tiny();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        let p = out.path().join(format!("tiny-{ty}.gguf"));
        let types = TypeChoice::uniform(ty);
        let r = convert_to(tiny_checkpoint(), &p, types, false);
        assert!(r.fallbacks.is_empty(), "{ty}: {:?}", r.fallbacks);
        let worst = check_file(tiny_checkpoint(), &p, &hp, &types);
        eprintln!("tiny {ty}: worst relative RMS error {:.5}", worst[&ty]);
        let llm = r.parts.iter().find(|(p, _)| *p == Part::Llm).unwrap().1;
        let want = ty.type_size() as f64 * 8.0 / ty.block_size() as f64;
        assert!(
            (llm.bits_per_weight() - want).abs() < 0.05,
            "{ty}: LLM {} bpw, expected about {want}",
            llm.bits_per_weight()
        );
        std::fs::remove_file(&p).unwrap();
    }
    // q6_K: rows that are not whole 256-blocks (224, 608, 64) fall back to q8_0, and are reported.
    let p = out.path().join("tiny-q6_k.gguf");
    let types = TypeChoice::uniform(GgmlType::Q6_K);
    let r = convert_to(tiny_checkpoint(), &p, types, false);
    check_file(tiny_checkpoint(), &p, &hp, &types);
    check_fallback_report(&p, &hp, &types, &r);
    let fell: Vec<&str> = r.fallbacks.iter().map(|f| f.tensor.as_str()).collect();
    assert!(
        fell.contains(&"token_embd.weight") && fell.contains(&"v.blk.0.attn_qkv.weight"),
        "{fell:?}"
    );
    assert!(!fell.contains(&"v.blk.0.ffn_down.weight"), "rows of 256 fit q6_K");
    assert!(r
        .fallbacks
        .iter()
        .all(|f| f.row_len % 256 != 0 && f.chosen == GgmlType::Q8_0));
}

#[test]
fn rows_that_fit_no_block_fall_back_to_f16() {
    // micro's rows of 16 fit neither 32- nor 256-blocks.
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("micro-q4_0.gguf");
    let types = TypeChoice::uniform(GgmlType::Q4_0);
    let r = convert_to(micro_checkpoint(), &p, types, false);
    check_file(micro_checkpoint(), &p, &micro(), &types);
    check_fallback_report(&p, &micro(), &types, &r);
    assert!(r.fallbacks.iter().any(|f| f.tensor == "output.weight"));
    assert!(r
        .fallbacks
        .iter()
        .all(|f| f.row_len % 32 != 0 && f.chosen == GgmlType::F16));
}

#[test]
fn every_offered_block_type_within_bounds() {
    let out = tempfile::tempdir().unwrap();
    let ck = aligned_checkpoint();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::IQ4_NL,
    ] {
        let p = out.path().join(format!("aligned-{ty}.gguf"));
        let types = TypeChoice::uniform(ty);
        let r = convert_to(ck, &p, types, false);
        assert!(r.fallbacks.is_empty(), "{ty}: {:?}", r.fallbacks);
        let worst = check_file(ck, &p, &aligned(), &types);
        eprintln!("aligned {ty}: worst relative RMS error {:.5}", worst[&ty]);
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn per_part_overrides() {
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("mixed.gguf");
    let types = TypeChoice {
        base: GgmlType::Q4_0,
        vision: Some(GgmlType::Q8_0),
        llm: Some(GgmlType::Q5_0),
        embd: Some(GgmlType::F32),
        output: Some(GgmlType::Q6_K),
    };
    let r = convert_to(aligned_checkpoint(), &p, types, false);
    check_file(aligned_checkpoint(), &p, &aligned(), &types);
    let g = GgufFile::open(&p).unwrap();
    let ty = |n: &str| g.tensor(n).unwrap().ty;
    assert_eq!(ty("v.blk.0.attn_qkv.weight"), GgmlType::Q8_0);
    assert_eq!(ty("mm.model.mlp.1.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.ffn_up.weight"), GgmlType::Q5_0);
    assert_eq!(ty("token_embd.weight"), GgmlType::F32);
    // lm_head rows of 32 do not fit q6_K's 256-blocks: q8_0, and reported.
    assert_eq!(ty("output.weight"), GgmlType::Q8_0);
    assert_eq!(r.fallbacks.len(), 1);
    assert_eq!(r.fallbacks[0].tensor, "output.weight");
    assert_eq!(ty("v.patch_embd.weight"), GgmlType::F16);
    assert_eq!(ty("v.position_embd.weight"), GgmlType::F32);
    assert_eq!(ty("v.blk.0.ls2.weight"), GgmlType::F32);
}

#[test]
fn metadata_is_complete() {
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("tiny.gguf");
    convert_to(micro_checkpoint(), &p, TypeChoice::uniform(GgmlType::F16), false);
    let g = GgufFile::open(&p).unwrap();
    let hp = micro();
    assert_eq!(g.get_str(key::ARCH).unwrap(), "internvl");
    assert_eq!(g.get_u32(key::FILE_TYPE).unwrap(), 1);
    assert_eq!(g.get_u32(key::LLM_BLOCK_COUNT).unwrap() as usize, hp.llm.n_layer);
    assert_eq!(g.get_u32(key::LLM_EMBD).unwrap() as usize, hp.llm.n_embd);
    assert_eq!(g.get_u32(key::LLM_FF).unwrap() as usize, hp.llm.n_ff);
    assert_eq!(g.get_u32(key::LLM_HEAD_COUNT).unwrap() as usize, hp.llm.n_head);
    assert_eq!(g.get_u32(key::LLM_HEAD_COUNT_KV).unwrap() as usize, hp.llm.n_head_kv);
    assert_eq!(g.get_u32(key::LLM_CONTEXT_LENGTH).unwrap(), 32768);
    assert_eq!(g.get_u32(key::LLM_VOCAB_SIZE).unwrap(), 151655);
    assert_eq!(g.get_f32(key::LLM_ROPE_FREQ_BASE).unwrap(), 1e6);
    assert_eq!(g.get_f32(key::LLM_RMS_EPS).unwrap(), 1e-6);
    assert_eq!(g.get_str(key::CLIP_PROJECTOR_TYPE).unwrap(), "internvl");
    assert_eq!(g.get_u32(key::V_EMBD).unwrap() as usize, hp.vision.n_embd);
    assert_eq!(g.get_u32(key::V_FF).unwrap() as usize, hp.vision.n_ff);
    assert_eq!(g.get_u32(key::V_BLOCK_COUNT).unwrap() as usize, hp.vision.n_layer);
    assert_eq!(g.get_u32(key::V_HEAD_COUNT).unwrap() as usize, hp.vision.n_head);
    assert_eq!(g.get_u32(key::V_IMAGE_SIZE).unwrap(), 448);
    assert_eq!(g.get_u32(key::V_PATCH_SIZE).unwrap(), 14);
    assert_eq!(g.get_f32(key::V_LN_EPS).unwrap(), 1e-6);
    assert_eq!(g.get_u32(key::V_PROJ_DIM).unwrap() as usize, hp.llm.n_embd);
    assert_eq!(g.get_f32_array(key::V_IMAGE_MEAN).unwrap(), vec![0.485, 0.456, 0.406]);
    assert_eq!(g.get_f32_array(key::V_IMAGE_STD).unwrap(), vec![0.229, 0.224, 0.225]);
    assert_eq!(g.get_u32(key::V_SCALE_FACTOR).unwrap(), 2);
    assert_eq!(g.get_u32(key::V_MIN_TILES).unwrap(), 1);
    assert_eq!(g.get_u32(key::V_MAX_TILES).unwrap(), 12);
    assert_eq!(g.get_f32(key::PROJ_LN_EPS).unwrap(), 1e-5);
    assert_eq!(g.get_f32(key::DOWNSAMPLE_RATIO).unwrap(), 0.5);
    assert_eq!(g.get_str(key::PS_VERSION).unwrap(), "v2");
    assert!(g.get_bool(key::USE_THUMBNAIL).unwrap());
    assert!(g.get_bool(key::DYNAMIC_IMAGE_SIZE).unwrap());
    assert_eq!(g.get_u32(key::NUM_IMAGE_TOKEN).unwrap(), 256);
    assert_eq!(g.get_str(key::TEMPLATE_NAME).unwrap(), "Hermes-2");
    assert_eq!(g.get_str(key::SYSTEM_MESSAGE).unwrap(), HERMES2_SYSTEM_MESSAGE);
    assert_eq!(
        g.get_str(key::SYSTEM_MESSAGE).unwrap(),
        "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
    );
    assert_eq!(g.get_u32(key::IMG_START_ID).unwrap(), 151646);
    assert_eq!(g.get_u32(key::IMG_END_ID).unwrap(), 151647);
    assert_eq!(g.get_u32(key::IMG_CONTEXT_ID).unwrap(), 151648);
    assert_eq!(g.get_u32_array(key::STOP_IDS).unwrap(), vec![151645, 151644, 151643]);
    assert_eq!(g.get_u32(key::TOKENIZER_EOS_ID).unwrap(), 151645);
    assert_eq!(g.get_u32(key::TOKENIZER_BOS_ID).unwrap(), 151643);
    assert_eq!(g.get_u32(key::TOKENIZER_PAD_ID).unwrap(), 151643);
    assert!(!g.get_bool(key::TOKENIZER_ADD_BOS).unwrap());
    assert_eq!(g.get_str(key::TOKENIZER_MODEL).unwrap(), "gpt2");
    assert_eq!(g.get_str(key::TOKENIZER_PRE).unwrap(), "qwen2");
    assert_eq!(g.get_str_array(key::TOKENIZER_TOKENS).unwrap().len(), 151655);
    assert_eq!(g.get_i32_array(key::TOKENIZER_TOKEN_TYPE).unwrap().len(), 151655);
    assert_eq!(
        g.get_str_array(key::TOKENIZER_MERGES).unwrap().len(),
        151_291,
        "the 151,291 merges of spec §6.2"
    );
    let tpl = g.get_str(key::TOKENIZER_CHAT_TEMPLATE).unwrap();
    assert!(tpl.contains(HERMES2_SYSTEM_MESSAGE) && tpl.contains("<|im_start|>"));
    // Provenance.
    let hex = sha256_file(&micro_checkpoint().join("model.safetensors"), &|| false)
        .unwrap()
        .unwrap();
    assert_eq!(
        g.get_str(key::SOURCE_SHA256).unwrap(),
        format!("{hex}  model.safetensors")
    );
    assert!(g
        .get_str(key::CONVERTER_VERSION)
        .unwrap()
        .starts_with("internvl-convert "));
    assert!(g.get_str(key::QUANT_RECIPE).unwrap().starts_with("type=f16 "));
}

#[test]
fn sharded_checkpoint_converts_to_the_same_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    synth_into(&micro(), 2, &sharded, 3);
    let files = listing(&sharded);
    for f in [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing: {files:?}");
    }
    assert!(!files.contains(&"model.safetensors".to_string()));
    let a = tmp.path().join("a.gguf");
    let b = tmp.path().join("b.gguf");
    let types = TypeChoice::uniform(GgmlType::Q8_0);
    convert_to(micro_checkpoint(), &a, types, false);
    convert_to(&sharded, &b, types, false);
    let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(ga.tensors().len(), gb.tensors().len());
    for (ta, tb) in ga.tensors().iter().zip(gb.tensors()) {
        assert_eq!((&ta.name, &ta.ne, ta.ty), (&tb.name, &tb.ne, tb.ty));
        assert!(
            ga.tensor_data(ta) == gb.tensor_data(tb),
            "{} differs between layouts",
            ta.name
        );
    }
    let sha = gb.get_str(key::SOURCE_SHA256).unwrap();
    assert_eq!(sha.lines().count(), 3, "{sha}");
    assert!(sha
        .lines()
        .all(|l| l.len() == 64 + 2 + 32 && l.contains("-of-00003.safetensors")));
}

#[test]
fn synth_is_deterministic_from_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    synth_into(&micro(), 2, &a, 1);
    synth_into(&micro(), 9, &b, 1);
    let fa = std::fs::read(a.join("model.safetensors")).unwrap();
    let fb = std::fs::read(b.join("model.safetensors")).unwrap();
    let fm = std::fs::read(micro_checkpoint().join("model.safetensors")).unwrap();
    assert!(fa == fm, "same seed, different bytes");
    assert!(fa != fb, "different seeds, same bytes");
    assert_eq!(fa.len(), fb.len());
    // Realistic scales: norm weights near 1, layer scales in [0.1, 1), matrices N(0, 0.02).
    let ck = Checkpoint::open_dir(&a).unwrap();
    let stat = |name: &str| {
        let v = ck.read_f32(ck.get(name).unwrap()).unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        (mean, sd, v)
    };
    let (m, sd, _) = stat("language_model.model.embed_tokens.weight");
    assert!(m.abs() < 1e-3 && (sd - 0.02).abs() < 1e-3, "embed mean {m} sd {sd}");
    let (m, _, _) = stat("vision_model.encoder.layers.0.norm1.weight");
    assert!((m - 1.0).abs() < 0.02, "norm weight mean {m}");
    let (_, _, ls) = stat("vision_model.encoder.layers.0.ls1");
    assert!(ls.iter().all(|&x| (0.1..=1.0).contains(&x)));
    // config.json carries the preset's sizes.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        internvl_convert::config::hparams_from_config_json(&cfg).unwrap(),
        micro()
    );
}

#[test]
fn split_writes_llama_cpp_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.gguf");
    let types = TypeChoice::uniform(GgmlType::Q8_0);
    let r = convert_to(aligned_checkpoint(), &text, types, true);
    let mmproj = tmp.path().join("mmproj-text.gguf");
    assert_eq!(
        listing(tmp.path()),
        vec!["mmproj-text.gguf".to_string(), "text.gguf".to_string()]
    );
    assert_eq!(r.outputs.len(), 2);
    let hp = aligned();
    let specs = tensor_specs(&hp);
    let (gt, gm) = (GgufFile::open(&text).unwrap(), GgufFile::open(&mmproj).unwrap());
    assert_eq!(gt.get_str(key::ARCH).unwrap(), "qwen2");
    assert_eq!(gm.get_str(key::ARCH).unwrap(), "clip");
    assert_eq!(gm.get_str(key::CLIP_PROJECTOR_TYPE).unwrap(), "internvl");
    assert!(gt.get(key::CLIP_PROJECTOR_TYPE).is_none() && gm.get(key::LLM_EMBD).is_none());
    let n_llm = specs.iter().filter(|s| s.part == Part::Llm).count();
    assert_eq!(gt.tensors().len(), n_llm);
    assert_eq!(gm.tensors().len(), specs.len() - n_llm + 2 * hp.vision.n_layer * 2);
    // The split q/k/v are the row blocks of the fused qkv.
    let ck = Checkpoint::open_dir(aligned_checkpoint()).unwrap();
    let d = hp.vision.n_embd;
    for l in 0..hp.vision.n_layer {
        let w = ck
            .read_f32(
                ck.get(&format!("vision_model.encoder.layers.{l}.attn.qkv.weight"))
                    .unwrap(),
            )
            .unwrap();
        let b = ck
            .read_f32(
                ck.get(&format!("vision_model.encoder.layers.{l}.attn.qkv.bias"))
                    .unwrap(),
            )
            .unwrap();
        let parts = names::TensorName::VAttnQkv.qkv_parts().unwrap();
        let bias_parts = names::TensorName::VAttnQkvBias.qkv_parts().unwrap();
        for (k, (which, bias)) in parts.iter().zip(bias_parts).enumerate() {
            let tw = gm.tensor(&which.at(l)).unwrap();
            assert_eq!(tw.ne, vec![d, d]);
            compare(&tw.name, tw.ty, gm.tensor_data(tw), &w[k * d * d..(k + 1) * d * d]);
            let tb = gm.tensor(&bias.at(l)).unwrap();
            assert_eq!(tb.ty, GgmlType::F32);
            compare(&tb.name, tb.ty, gm.tensor_data(tb), &b[k * d..(k + 1) * d]);
        }
    }
    assert_eq!(gm.tensor("v.position_embd.weight").unwrap().ty, GgmlType::F32);
    assert!(gm.tensor("v.class_embd").is_some());
}
