//! The tokenizer stored in the GGUF (the Hugging Face JSON rebuilt from the checkpoint's slow-tokenizer
//! files) reproduces the reference token ids of spec §10 through `internvl::tokenizer`.

mod common;

use common::*;
use internvl::gguf::{GgmlType, GgufFile};
use internvl::names::key;
use internvl::tokenizer::Tokenizer;
use internvl_convert::config::HERMES2_SYSTEM_MESSAGE;
use internvl_convert::policy::TypeChoice;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The Hermes-2 rendering of spec §5.1 for one user turn.
fn render(question: &str) -> String {
    format!("<|im_start|>system\n{HERMES2_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n{question}<|im_end|><|im_start|>assistant\n")
}

#[test]
fn embedded_tokenizer_reproduces_reference_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("micro.gguf");
    convert_to(micro_checkpoint(), &p, TypeChoice::uniform(GgmlType::F16), false);
    let g = GgufFile::open(&p).unwrap();
    let tok = Tokenizer::from_json(g.get_str(key::TOKENIZER_HF_JSON).unwrap()).unwrap();
    let stop = g.get_u32_array(key::STOP_IDS).unwrap();
    assert_eq!(stop, tok.ids.stop_ids().to_vec());

    let refs: Value =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join("prompt_token_vectors.json")).unwrap())
            .unwrap();
    // Pure text, first and second round.
    for k in ["pure_text", "pure_text_second_round"] {
        let e = &refs[k];
        assert_eq!(
            tok.encode(e["prompt"].as_str().unwrap()).unwrap(),
            ids(&e["ids"]),
            "{k}"
        );
    }
    // One image of 13 tiles: <img> + 3328 x <IMG_CONTEXT> + </img>.
    let e = &refs["image1_describe_shortly"];
    let n_ctx = e["n_img_context"].as_u64().unwrap() as usize;
    let text = e["prompt_text_without_ctx"]
        .as_str()
        .unwrap()
        .replace("<img></img>", &format!("<img>{}</img>", "<IMG_CONTEXT>".repeat(n_ctx)));
    let got = tok.encode(&text).unwrap();
    let ctx_id = g.get_u32(key::IMG_CONTEXT_ID).unwrap();
    let mut want = ids(&e["prefix_ids"]);
    want.resize(want.len() + n_ctx, ctx_id);
    want.extend(ids(&e["suffix_ids"]));
    assert_eq!(got.len(), e["n_tokens"].as_u64().unwrap() as usize);
    assert_eq!(got, want);
    // Two images and an 8-frame video, without the context runs.
    for k in ["two_images_separate", "video_8_frames"] {
        let e = &refs[k];
        let text = render(&e["question"].as_str().unwrap().replace("<image>", "<img></img>"));
        assert_eq!(tok.encode(&text).unwrap(), ids(&e["ids_no_ctx"]), "{k}");
    }
    // The `#` quirk of spec §6.2 survives: "##" is two tokens with the 151,291 merges.
    assert_eq!(tok.encode("##").unwrap(), vec![2, 2]);
}
