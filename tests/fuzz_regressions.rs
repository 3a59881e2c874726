//! Regression tests for what the fuzz targets in `fuzz/` found (issue 11). Each test rebuilds the
//! offending input through the public API, so it runs in the normal test suite without cargo-fuzz; the
//! raw fuzzer inputs are kept under `tests/fixtures/fuzz/` (and in the fuzz seed corpora) and replay with
//! `cd fuzz && cargo +nightly fuzz run <target> ../tests/fixtures/fuzz/<file>`.

use internvl::tokenizer::{Tokenizer, TokenizerError, MAX_TOKEN_ID};
use serde_json::{json, Value};

/// A minimal valid InternVL tokenizer: a WordLevel model with three words (ids 0-2) and the six added
/// tokens that `Tokenizer::from_json` requires (ids 3-8).
fn tiny_tokenizer() -> Value {
    let added: Vec<Value> = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
    ]
    .iter()
    .zip(3u64..)
    .map(|(content, id)| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    })
    .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "[UNK]": 2}, "unk_token": "[UNK]"}
    })
}

#[test]
fn tiny_tokenizer_loads() {
    let tok = Tokenizer::from_json(&tiny_tokenizer().to_string()).expect("the baseline tokenizer loads");
    assert_eq!(tok.vocab_size(), 9);
    assert_eq!(tok.encode("a b").expect("encode"), [0, 1]);
}

/// Finding 1 (tokenizer_data, fuzz/artifacts oom-93efd730): a vocabulary id of 4294967295 in the
/// tokenizer JSON made `Tokenizer::from_json` size its id-indexed tables by the highest id: a 16 GiB
/// allocation (libFuzzer: `out-of-memory (malloc(17179869188))`, i.e. 4 bytes × 2^32 offsets). Now ids
/// above `MAX_TOKEN_ID` are refused before anything is allocated. (Ids of `added_tokens` entries that
/// are not in the model's vocabulary are renumbered by the tokenizers library, so the vocabulary is the
/// way in.)
#[test]
fn huge_token_id_is_refused_before_allocating() {
    let mut doc = tiny_tokenizer();
    doc["model"]["vocab"]["b"] = json!(u32::MAX);
    let err = Tokenizer::from_json(&doc.to_string()).expect_err("id 4294967295 must be refused");
    match &err {
        TokenizerError::TokenIdTooLarge {
            max_id,
            n_tokens,
            table_bytes,
        } => {
            assert_eq!(*max_id, u32::MAX);
            assert_eq!(*n_tokens, 9);
            assert_eq!(*table_bytes, (u64::from(u32::MAX) + 1) * 5);
        }
        other => panic!("expected TokenIdTooLarge, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("4294967295") && msg.contains(&MAX_TOKEN_ID.to_string()),
        "{msg}"
    );
}

#[test]
fn large_vocab_id_is_refused() {
    let mut doc = tiny_tokenizer();
    doc["model"]["vocab"]["a"] = json!(3_000_000_000u64);
    let err = Tokenizer::from_json(&doc.to_string()).expect_err("vocab id 3e9 must be refused");
    assert!(
        matches!(
            err,
            TokenizerError::TokenIdTooLarge {
                max_id: 3_000_000_000,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The bound itself: the highest accepted id loads (its tables are 5 bytes per id, about 10 MB), one
/// more is refused. A vocabulary with holes keeps every id up to the highest one.
#[test]
fn token_id_limit_is_exact() {
    let mut at_limit = tiny_tokenizer();
    at_limit["model"]["vocab"]["b"] = json!(MAX_TOKEN_ID);
    let tok = Tokenizer::from_json(&at_limit.to_string()).expect("ids up to MAX_TOKEN_ID load");
    assert_eq!(tok.vocab_size(), MAX_TOKEN_ID as usize + 1);
    assert_eq!(tok.encode("a b <IMG_CONTEXT>").expect("encode"), [0, MAX_TOKEN_ID, 8]);
    assert_eq!(tok.decode(&[MAX_TOKEN_ID], false).expect("decode"), "b");
    assert!(
        tok.token_bytes(1000).is_some_and(<[u8]>::is_empty),
        "a hole has no bytes"
    );

    let mut over = tiny_tokenizer();
    over["model"]["vocab"]["b"] = json!(MAX_TOKEN_ID + 1);
    let err = Tokenizer::from_json(&over.to_string()).expect_err("MAX_TOKEN_ID + 1 is refused");
    assert!(
        matches!(err, TokenizerError::TokenIdTooLarge { max_id, .. } if max_id == MAX_TOKEN_ID + 1),
        "{err:?}"
    );
}
