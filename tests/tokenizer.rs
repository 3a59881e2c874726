//! Tokenizer tests (spec §6): built from the real InternVL2-1B slow-tokenizer files, checked against the
//! reference prompt vectors (spec §10) and a golden fixture made by transformers (tests/py/tokenizer_check.py).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use internvl::tokenizer::{
    build_hf_tokenizer_json, llama_cpp_vocab, token_type, SlowTokenizerFiles, StreamDecoder, Tokenizer, TokenizerError,
};
use serde_json::Value;

const SYS: &str =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/model/InternVL2-1B")
}

fn reference() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/prompt_token_vectors.json");
    serde_json::from_str(&fs::read_to_string(p).expect("read prompt_token_vectors.json")).expect("parse")
}

fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn hf_json() -> &'static str {
    static J: OnceLock<String> = OnceLock::new();
    J.get_or_init(|| build_hf_tokenizer_json(&model_dir()).expect("build tokenizer json"))
}

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_json(hf_json()).expect("load tokenizer json"))
}

/// Expected ids of a prompt given with its image context runs removed: after each `<img>` (151646)
/// insert `256 * tiles` context ids (151648), image by image.
fn insert_ctx(ids_no_ctx: &[u32], tiles: &[usize]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut it = tiles.iter();
    for &id in ids_no_ctx {
        out.push(id);
        if id == 151646 {
            let n = *it.next().expect("more <img> than images");
            out.resize(out.len() + 256 * n, 151648);
        }
    }
    assert!(it.next().is_none(), "fewer <img> than images");
    out
}

fn ctx_block(tiles: usize) -> String {
    format!("<img>{}</img>", "<IMG_CONTEXT>".repeat(256 * tiles))
}

/// The spec §5.1 rendering, written out here independently of src/prompt.rs.
fn hermes(question: &str) -> String {
    format!("<|im_start|>system\n{SYS}<|im_end|><|im_start|>user\n{question}<|im_end|><|im_start|>assistant\n")
}

#[test]
fn vocab_facts() {
    let t = tok();
    assert_eq!(t.vocab_size(), 151_655);
    let ids = t.ids;
    assert_eq!(
        [
            ids.endoftext,
            ids.im_start,
            ids.im_end,
            ids.img_start,
            ids.img_end,
            ids.img_context
        ],
        [151643, 151644, 151645, 151646, 151647, 151648]
    );
    assert_eq!(
        [
            ids.quad_start,
            ids.quad_end,
            ids.ref_start,
            ids.ref_end,
            ids.box_start,
            ids.box_end
        ],
        [
            Some(151649),
            Some(151650),
            Some(151651),
            Some(151652),
            Some(151653),
            Some(151654)
        ]
    );
    assert_eq!(t.token_id("<|im_end|>"), Some(151645));
    assert_eq!(t.token_id("\u{010a}"), Some(198)); // "\n" in the byte-level alphabet
    assert!(t.is_special(151648) && !t.is_special(198));
    let files = SlowTokenizerFiles::load(&model_dir()).unwrap();
    assert_eq!(
        files.merges.len(),
        151_291,
        "the 96 `#` merges must stay missing (spec §6.2)"
    );
    assert_eq!(files.vocab.len(), 151_643);
    assert_eq!(files.added_tokens.len(), 12);
    assert_eq!(files.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(files.pad_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(files.bos_token, None);
}

#[test]
fn handy_ids_and_hash_quirk() {
    let t = tok();
    assert_eq!(t.encode("##").unwrap(), vec![2, 2], "missing-merge quirk (spec §6.2)");
    assert_eq!(t.encode("#######").unwrap(), vec![2; 7]);
    assert_eq!(t.encode("\n").unwrap(), vec![198]);
    assert_eq!(t.encode("<|im_start|>user\n").unwrap(), vec![151644, 872, 198]);
    assert_eq!(t.encode("<|im_start|>system\n").unwrap(), vec![151644, 8948, 198]);
    assert_eq!(t.encode("<|im_start|>assistant\n").unwrap(), vec![151644, 77091, 198]);
    assert_eq!(t.encode("").unwrap(), Vec::<u32>::new());
    let sys = t.encode(SYS).unwrap();
    assert_eq!(sys.len(), 34);
    assert_eq!(&sys[..2], &[56568, 104625]);
    assert_eq!(sys.last(), Some(&1773));
}

#[test]
fn reference_single_image() {
    let r = &reference()["image1_describe_shortly"];
    let tiles = r["num_patches_list"][0].as_u64().unwrap() as usize;
    let text = r["prompt_text_without_ctx"]
        .as_str()
        .unwrap()
        .replace("<img></img>", &ctx_block(tiles));
    let mut expected = json_ids(&r["prefix_ids"]);
    expected.resize(expected.len() + r["n_img_context"].as_u64().unwrap() as usize, 151648);
    expected.extend(json_ids(&r["suffix_ids"]));
    assert_eq!(expected.len(), 3382);
    assert_eq!(tok().encode(&text).unwrap(), expected);
}

#[test]
fn reference_two_images_and_video() {
    let r = reference();
    for (key, n_tokens) in [("two_images_separate", 5956), ("video_8_frames", 2156)] {
        let e = &r[key];
        let tiles: Vec<usize> = e["num_patches_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let mut text = hermes(e["question"].as_str().unwrap());
        for &n in &tiles {
            text = text.replacen("<image>", &ctx_block(n), 1);
        }
        let expected = insert_ctx(&json_ids(&e["ids_no_ctx"]), &tiles);
        assert_eq!(expected.len(), n_tokens, "{key}");
        assert_eq!(tok().encode(&text).unwrap(), expected, "{key}");
    }
}

#[test]
fn reference_pure_text() {
    let r = reference();
    for key in ["pure_text", "pure_text_second_round"] {
        let e = &r[key];
        let ids = tok().encode(e["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(ids, json_ids(&e["ids"]), "{key}");
    }
    assert_eq!(
        r["pure_text"]["prompt"].as_str().unwrap(),
        hermes(r["pure_text"]["question"].as_str().unwrap())
    );
}

/// 310 strings whose ids transformers produced (and an independent pure-Python slow BPE agreed with).
#[test]
fn golden_fixture_matches() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_golden.json");
    let doc: Value = serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap();
    assert_eq!(doc["magic"], "internvl-tokenizer-golden");
    assert_eq!(
        doc["version"], 1,
        "stale fixture: rerun tests/py/tokenizer_check.py --write-fixture"
    );
    let entries = doc["entries"].as_array().unwrap();
    assert!(entries.len() >= 300);
    let t = tok();
    let mut bad = Vec::new();
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let want = json_ids(&e["ids"]);
        let got = t.encode(text).unwrap();
        if got != want {
            bad.push(format!("encode {text:?}: got {got:?} want {want:?}"));
            continue;
        }
        if t.decode(&want, false).unwrap() != e["decoded"].as_str().unwrap() {
            bad.push(format!("decode {text:?}"));
        }
        if t.decode(&want, true).unwrap() != e["decoded_skip_special"].as_str().unwrap() {
            bad.push(format!("decode(skip) {text:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        entries.len(),
        bad.join("\n")
    );
}

#[test]
fn hf_json_is_deterministic_and_configured() {
    let again = build_hf_tokenizer_json(&model_dir()).unwrap();
    assert_eq!(again, hf_json());
    let v: Value = serde_json::from_str(hf_json()).unwrap();
    assert_eq!(v["model"]["type"], "BPE");
    assert_eq!(v["model"]["ignore_merges"], false);
    assert_eq!(v["model"]["byte_fallback"], false);
    assert_eq!(v["model"]["unk_token"], Value::Null);
    assert_eq!(v["model"]["merges"].as_array().unwrap().len(), 151_291);
    assert_eq!(v["normalizer"]["type"], "NFC");
    assert_eq!(v["pre_tokenizer"]["pretokenizers"][0]["behavior"], "Isolated");
    assert_eq!(v["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
    let added = v["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 12);
    assert!(added.iter().all(|a| a["special"] == true && a["normalized"] == false));
    // Leave a copy for tests/py/tokenizer_check.py, which loads it with Python `tokenizers`.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("internvl2-1b.tokenizer.json");
    fs::write(out, hf_json()).unwrap();
}

#[test]
fn llama_cpp_arrays() {
    let files = SlowTokenizerFiles::load(&model_dir()).unwrap();
    let v = llama_cpp_vocab(&files, None).unwrap();
    assert_eq!(v.tokens.len(), 151_655);
    assert_eq!(v.token_type.len(), 151_655);
    assert_eq!(v.merges.len(), 151_291);
    assert_eq!(v.merges[0], "Ġ Ġ");
    assert_eq!(v.tokens[198], "Ċ");
    assert_eq!(v.token_type[198], token_type::NORMAL);
    assert_eq!(v.tokens[151648], "<IMG_CONTEXT>");
    assert!(v.token_type[151643..].iter().all(|&t| t == token_type::CONTROL));
    assert!(v.token_type[..151643].iter().all(|&t| t == token_type::NORMAL));
    // Padded to a larger vocab_size, holes are [PAD{id}] UNUSED (convert_hf_to_gguf.py get_vocab_base).
    let padded = llama_cpp_vocab(&files, Some(151_680)).unwrap();
    assert_eq!(padded.tokens[151_655], "[PAD151655]");
    assert_eq!(padded.token_type[151_679], token_type::UNUSED);
    assert!(matches!(
        llama_cpp_vocab(&files, Some(100)),
        Err(TokenizerError::VocabSizeTooSmall {
            vocab_size: 100,
            max_id: 151_654
        })
    ));
}

fn stream_all(t: &Tokenizer, ids: &[u32], skip: bool) -> (Vec<String>, usize) {
    let mut d = StreamDecoder::new(skip);
    let mut chunks = Vec::new();
    let mut held = 0;
    for &id in ids {
        if let Some(c) = d.push(t, id).unwrap() {
            chunks.push(c);
        }
        if d.pending_len() > 0 {
            held += 1;
        }
    }
    chunks.extend(d.finish());
    (chunks, held)
}

#[test]
fn stream_decode_matches_full_decode() {
    let t = tok();
    let text = "熊猫🐼在树上睡觉。👨‍👩‍👧‍👦 Family emoji, 中文和English混合！🇨🇳<|im_end|>尾巴😀";
    let ids = t.encode(text).unwrap();
    for skip in [false, true] {
        let (chunks, held) = stream_all(t, &ids, skip);
        assert!(held > 0, "the text should split some characters across tokens");
        for c in &chunks {
            assert!(!c.contains('\u{FFFD}'), "chunk {c:?} holds a broken character");
        }
        assert_eq!(chunks.concat(), t.decode(&ids, skip).unwrap());
    }
    assert_eq!(stream_all(t, &ids, false).0.concat(), text);
}

#[test]
fn stream_decode_invalid_bytes_like_lossy() {
    let t = tok();
    // Single-byte tokens from the byte-level alphabet: 0xE4 (start of a 3-byte char) = 'ä', 0xFF = 'ÿ'.
    let lead = t.token_id("ä").unwrap();
    let ff = t.token_id("ÿ").unwrap();
    let a = t.token_id("a").unwrap();
    for ids in [
        vec![lead, a],
        vec![ff, a, ff],
        vec![a, lead],
        vec![lead, lead, a],
        vec![lead],
    ] {
        let (chunks, _) = stream_all(t, &ids, false);
        let full = t.decode(&ids, false).unwrap();
        assert!(full.contains('\u{FFFD}'));
        assert_eq!(chunks.concat(), full, "{ids:?}");
    }
    // A special token between the bytes of one character: skipped, the character still completes.
    let mut seq: Vec<u32> = "熊"
        .bytes()
        .map(|b| t.token_id(&byte_char(b).to_string()).unwrap())
        .collect();
    assert_eq!(seq.len(), 3);
    seq.insert(1, t.ids.im_end);
    let mut d = StreamDecoder::new(true);
    let mut out = String::new();
    for &id in &seq {
        out.extend(d.push(t, id).unwrap());
    }
    out.extend(d.finish());
    assert_eq!(out, "熊");
    assert_eq!(out, t.decode(&seq, true).unwrap());
    assert!(matches!(
        d.push(t, 999_999),
        Err(TokenizerError::UnknownTokenId { id: 999_999, .. })
    ));
    assert!(matches!(
        t.decode(&[1, 999_999], false),
        Err(TokenizerError::UnknownTokenId { id: 999_999, .. })
    ));
}

/// GPT-2 byte-level alphabet, forward direction, written out independently of the library.
fn byte_char(b: u8) -> char {
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable {
        return b as char;
    }
    let rank = (0..b)
        .filter(|&x| !((33..=126).contains(&x) || (161..=172).contains(&x) || x >= 174))
        .count();
    char::from_u32(256 + rank as u32).unwrap()
}

// ---- error cases on broken checkpoint directories ----

fn copy_model(dir: &Path) {
    for f in ["vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"] {
        fs::copy(model_dir().join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn missing_files_are_named() {
    let d = tempfile::tempdir().unwrap();
    let err = build_hf_tokenizer_json(d.path()).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Io { path, .. } if path.ends_with("vocab.json")),
        "{err}"
    );
    copy_model(d.path());
    fs::remove_file(d.path().join("merges.txt")).unwrap();
    let err = build_hf_tokenizer_json(d.path()).unwrap_err();
    assert!(err.to_string().contains("merges.txt"), "{err}");
    copy_model(d.path());
    fs::remove_file(d.path().join("added_tokens.json")).unwrap();
    let err = build_hf_tokenizer_json(d.path()).unwrap_err();
    assert!(err.to_string().contains("added_tokens.json"), "{err}");
    // tokenizer_config.json is optional.
    copy_model(d.path());
    fs::remove_file(d.path().join("tokenizer_config.json")).unwrap();
    let t = Tokenizer::from_dir(d.path()).unwrap();
    assert_eq!(t.encode("<|im_start|>user\n").unwrap(), vec![151644, 872, 198]);
}

#[test]
fn malformed_files_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    copy_model(d.path());
    let p = d.path();

    fs::write(p.join("vocab.json"), "{\"a\": 0,").unwrap();
    let err = build_hf_tokenizer_json(p).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Json { path, .. } if path.ends_with("vocab.json")),
        "{err}"
    );

    fs::write(p.join("vocab.json"), r#"{"a": 0, "b": 1, "ab": 1}"#).unwrap();
    fs::write(p.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let err = build_hf_tokenizer_json(p).unwrap_err();
    assert!(matches!(&err, TokenizerError::IdCollision { id: 1, .. }), "{err}");

    fs::write(p.join("vocab.json"), r#"{"a": 0, "b": 1, "ab": 2}"#).unwrap();
    fs::write(p.join("merges.txt"), "#version: 0.2\na b\nab\n").unwrap();
    let err = build_hf_tokenizer_json(p).unwrap_err();
    assert!(matches!(&err, TokenizerError::BadMergeLine { line: 3, .. }), "{err}");
    fs::write(p.join("merges.txt"), "a b c\n").unwrap();
    assert!(matches!(
        build_hf_tokenizer_json(p),
        Err(TokenizerError::BadMergeLine { line: 1, .. })
    ));
    fs::write(p.join("merges.txt"), "#version: 0.2\na c\n").unwrap();
    let err = build_hf_tokenizer_json(p).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::MergeSymbolUnknown { line: 2, symbol, .. } if symbol == "c"),
        "{err}"
    );

    // An added token whose id is a vocab id with other content.
    fs::write(p.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    fs::write(p.join("added_tokens.json"), r#"{"<x>": 1}"#).unwrap();
    fs::write(p.join("tokenizer_config.json"), "{}").unwrap();
    let err = build_hf_tokenizer_json(p).unwrap_err();
    assert!(matches!(&err, TokenizerError::IdCollision { id: 1, .. }), "{err}");
    // Two added tokens with one id.
    fs::write(p.join("added_tokens.json"), r#"{"<x>": 5, "<y>": 5}"#).unwrap();
    assert!(matches!(
        build_hf_tokenizer_json(p),
        Err(TokenizerError::IdCollision { id: 5, .. })
    ));
    // added_tokens.json and tokenizer_config.json disagree.
    fs::write(p.join("added_tokens.json"), r#"{"<x>": 5}"#).unwrap();
    fs::write(
        p.join("tokenizer_config.json"),
        r#"{"added_tokens_decoder": {"5": {"content": "<z>"}}}"#,
    )
    .unwrap();
    assert!(matches!(
        build_hf_tokenizer_json(p),
        Err(TokenizerError::IdCollision { id: 5, .. })
    ));
    fs::write(
        p.join("tokenizer_config.json"),
        r#"{"added_tokens_decoder": {"6": {"content": "<x>"}}}"#,
    )
    .unwrap();
    assert!(matches!(
        build_hf_tokenizer_json(p),
        Err(TokenizerError::AddedTokenConflict { id: 6, other_id: 5, .. })
    ));
    fs::write(
        p.join("tokenizer_config.json"),
        r#"{"added_tokens_decoder": {"five": {"content": "<x>"}}}"#,
    )
    .unwrap();
    assert!(matches!(
        build_hf_tokenizer_json(p),
        Err(TokenizerError::BadFile { .. })
    ));

    // A consistent tiny tokenizer builds, but lacks the InternVL tokens the runtime needs.
    fs::write(p.join("tokenizer_config.json"), "{}").unwrap();
    let json = build_hf_tokenizer_json(p).unwrap();
    assert!(matches!(
        Tokenizer::from_json(&json),
        Err(TokenizerError::MissingSpecialToken("<|endoftext|>"))
    ));
    assert!(matches!(
        Tokenizer::from_json("{not json"),
        Err(TokenizerError::Library(_))
    ));
}
