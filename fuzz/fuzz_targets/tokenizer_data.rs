//! The tokenizer loader on what a GGUF carries under `tokenizer.huggingface.json` (the runtime builds its
//! tokenizer from that string alone; the `tokenizer.ggml.*` arrays are for llama.cpp and not read back).
//!
//! Input layout: byte 0 even: the rest is the JSON text as is (arbitrary bytes; a GGUF string is UTF-8,
//! so non-UTF-8 stops there as the GGUF reader would). Byte 0 odd: the rest drives structured mutations
//! of a valid small InternVL tokenizer JSON (fuzz/seeds/tokenizer-small.json), then a text to encode and
//! ids to decode. If the tokenizer loads, encode/decode/stream-decode must return values or errors.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use internvl_fuzz::tokenizer::{StreamDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const SEED: &str = include_str!("../seeds/tokenizer-small.json");

fn seed() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    // The seed is a file of this crate, not fuzzer input.
    V.get_or_init(|| serde_json::from_str(SEED).expect("fuzz/seeds/tokenizer-small.json is valid JSON"))
}

#[derive(Arbitrary, Debug)]
enum Normalizer {
    Null,
    Nfc,
    Nfkc,
    Nfd,
    Lowercase,
    Strip,
    Prepend(String),
    Replace(String, String),
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    SetVocabId {
        index: u16,
        id: u32,
    },
    AddVocab {
        token: String,
        id: u32,
    },
    RemoveVocab {
        index: u16,
    },
    SetAddedId {
        index: u8,
        id: u32,
    },
    SetAddedContent {
        index: u8,
        content: String,
    },
    SetAddedFlags {
        index: u8,
        special: bool,
        normalized: bool,
        lstrip: bool,
        rstrip: bool,
        single_word: bool,
    },
    AddAdded {
        id: u32,
        content: String,
        special: bool,
        normalized: bool,
    },
    RemoveAdded {
        index: u8,
    },
    AddMerge {
        a: String,
        b: String,
    },
    MergeFromVocab {
        i: u16,
        j: u16,
    },
    RemoveMerge {
        index: u16,
    },
    SetNormalizer(Normalizer),
    SetRegex(String),
    SetBehavior(u8),
    SetByteFallback(bool),
    SetIgnoreMerges(bool),
    SetUnk(Option<String>),
    SetDropout(Option<f32>),
    SetModelType(u8),
    DropKey(u8),
    SetDecoder(u8),
}

#[derive(Arbitrary, Debug)]
struct Structured {
    mutations: Vec<Mutation>,
    text: String,
    ids: Vec<u32>,
}

fn nth_key(map: &serde_json::Map<String, Value>, index: usize) -> Option<String> {
    if map.is_empty() {
        return None;
    }
    map.keys().nth(index % map.len()).cloned()
}

fn apply(doc: &mut Value, m: Mutation) {
    let Some(root) = doc.as_object_mut() else { return };
    match m {
        Mutation::SetVocabId { index, id } => {
            if let Some(vocab) = root
                .get_mut("model")
                .and_then(|m| m.get_mut("vocab"))
                .and_then(Value::as_object_mut)
            {
                if let Some(k) = nth_key(vocab, index.into()) {
                    vocab.insert(k, json!(id));
                }
            }
        }
        Mutation::AddVocab { token, id } => {
            if let Some(vocab) = root
                .get_mut("model")
                .and_then(|m| m.get_mut("vocab"))
                .and_then(Value::as_object_mut)
            {
                vocab.insert(token, json!(id));
            }
        }
        Mutation::RemoveVocab { index } => {
            if let Some(vocab) = root
                .get_mut("model")
                .and_then(|m| m.get_mut("vocab"))
                .and_then(Value::as_object_mut)
            {
                if let Some(k) = nth_key(vocab, index.into()) {
                    vocab.remove(&k);
                }
            }
        }
        Mutation::SetAddedId { index, id } => {
            if let Some(a) = added(root, index) {
                a["id"] = json!(id);
            }
        }
        Mutation::SetAddedContent { index, content } => {
            if let Some(a) = added(root, index) {
                a["content"] = json!(content);
            }
        }
        Mutation::SetAddedFlags {
            index,
            special,
            normalized,
            lstrip,
            rstrip,
            single_word,
        } => {
            if let Some(a) = added(root, index) {
                a["special"] = json!(special);
                a["normalized"] = json!(normalized);
                a["lstrip"] = json!(lstrip);
                a["rstrip"] = json!(rstrip);
                a["single_word"] = json!(single_word);
            }
        }
        Mutation::AddAdded {
            id,
            content,
            special,
            normalized,
        } => {
            if let Some(list) = root.get_mut("added_tokens").and_then(Value::as_array_mut) {
                list.push(
                    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": normalized, "special": special}),
                );
            }
        }
        Mutation::RemoveAdded { index } => {
            if let Some(list) = root.get_mut("added_tokens").and_then(Value::as_array_mut) {
                if !list.is_empty() {
                    let i = usize::from(index) % list.len();
                    list.remove(i);
                }
            }
        }
        Mutation::AddMerge { a, b } => {
            if let Some(merges) = merges(root) {
                merges.push(json!([a, b]));
            }
        }
        Mutation::MergeFromVocab { i, j } => {
            let pair = root
                .get("model")
                .and_then(|m| m.get("vocab"))
                .and_then(Value::as_object)
                .and_then(|v| Some((nth_key(v, i.into())?, nth_key(v, j.into())?)));
            if let (Some((a, b)), Some(merges)) = (pair, merges(root)) {
                merges.push(json!([a, b]));
            }
        }
        Mutation::RemoveMerge { index } => {
            if let Some(merges) = merges(root) {
                if !merges.is_empty() {
                    let i = usize::from(index) % merges.len();
                    merges.remove(i);
                }
            }
        }
        Mutation::SetNormalizer(n) => {
            let v = match n {
                Normalizer::Null => Value::Null,
                Normalizer::Nfc => json!({"type": "NFC"}),
                Normalizer::Nfkc => json!({"type": "NFKC"}),
                Normalizer::Nfd => json!({"type": "NFD"}),
                Normalizer::Lowercase => json!({"type": "Lowercase"}),
                Normalizer::Strip => json!({"type": "Strip", "strip_left": true, "strip_right": true}),
                Normalizer::Prepend(p) => json!({"type": "Prepend", "prepend": p}),
                Normalizer::Replace(a, b) => json!({"type": "Replace", "pattern": {"String": a}, "content": b}),
            };
            root.insert("normalizer".into(), v);
        }
        Mutation::SetRegex(r) => {
            if let Some(split) = root
                .get_mut("pre_tokenizer")
                .and_then(|p| p.get_mut("pretokenizers"))
                .and_then(|p| p.get_mut(0))
            {
                split["pattern"] = json!({"Regex": r});
            }
        }
        Mutation::SetBehavior(b) => {
            let names = [
                "Removed",
                "Isolated",
                "MergedWithPrevious",
                "MergedWithNext",
                "Contiguous",
                "Bogus",
            ];
            if let Some(split) = root
                .get_mut("pre_tokenizer")
                .and_then(|p| p.get_mut("pretokenizers"))
                .and_then(|p| p.get_mut(0))
            {
                split["behavior"] = json!(names[usize::from(b) % names.len()]);
            }
        }
        Mutation::SetByteFallback(b) => set_model(root, "byte_fallback", json!(b)),
        Mutation::SetIgnoreMerges(b) => set_model(root, "ignore_merges", json!(b)),
        Mutation::SetUnk(u) => set_model(root, "unk_token", json!(u)),
        Mutation::SetDropout(d) => set_model(root, "dropout", d.map_or(Value::Null, |d| json!(d))),
        Mutation::SetModelType(t) => {
            let names = ["BPE", "WordPiece", "WordLevel", "Unigram", "Nope"];
            set_model(root, "type", json!(names[usize::from(t) % names.len()]));
        }
        Mutation::DropKey(k) => {
            let keys = [
                "normalizer",
                "pre_tokenizer",
                "post_processor",
                "decoder",
                "added_tokens",
                "model",
                "version",
            ];
            root.remove(keys[usize::from(k) % keys.len()]);
        }
        Mutation::SetDecoder(d) => {
            let v = match d % 4 {
                0 => Value::Null,
                1 => json!({"type": "ByteFallback"}),
                2 => json!({"type": "Fuse"}),
                _ => json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true}),
            };
            root.insert("decoder".into(), v);
        }
    }
}

fn added(root: &mut serde_json::Map<String, Value>, index: u8) -> Option<&mut Value> {
    let list = root.get_mut("added_tokens")?.as_array_mut()?;
    if list.is_empty() {
        return None;
    }
    let n = list.len();
    list.get_mut(usize::from(index) % n)
}

fn merges(root: &mut serde_json::Map<String, Value>) -> Option<&mut Vec<Value>> {
    root.get_mut("model")?.get_mut("merges")?.as_array_mut()
}

fn set_model(root: &mut serde_json::Map<String, Value>, key: &str, v: Value) {
    if let Some(m) = root.get_mut("model").and_then(Value::as_object_mut) {
        m.insert(key.into(), v);
    }
}

fn exercise(tok: &Tokenizer, text: &str, extra_ids: &[u32]) {
    let mut sink = tok.vocab_size() ^ tok.ids.stop_ids().len();
    if let Ok(ids) = tok.encode(text) {
        sink ^= ids.len();
        for skip in [false, true] {
            let whole = tok.decode(&ids, skip);
            let mut stream = StreamDecoder::new(skip);
            let mut streamed = String::new();
            let mut ok = true;
            for &id in &ids {
                match stream.push(tok, id) {
                    Ok(Some(s)) => streamed.push_str(&s),
                    Ok(None) => {}
                    Err(_) => ok = false,
                }
            }
            if let Some(s) = stream.finish() {
                streamed.push_str(&s);
            }
            sink ^= streamed.len() ^ whole.map_or(0, |s| s.len()) ^ usize::from(ok);
        }
    }
    if let Ok(s) = tok.decode(extra_ids, false) {
        sink ^= s.len();
    }
    let mut stream = StreamDecoder::new(true);
    for &id in extra_ids {
        let _ = stream.push(tok, id);
        sink ^= tok.token_bytes(id).map_or(0, <[u8]>::len) ^ usize::from(tok.is_special(id));
        sink ^= tok.id_to_token(id).map_or(0, |t| t.len());
    }
    let _ = stream.finish();
    std::hint::black_box(sink);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(json) = std::str::from_utf8(rest) else { return };
        if let Ok(tok) = Tokenizer::from_json(json) {
            exercise(
                &tok,
                "Hello <image> <|im_start|>user\nwhat? 你好 <box>[[1, 2, 3, 4]]</box>",
                &[0, 1, 2, u32::MAX],
            );
        }
        return;
    }

    let Ok(input) = Structured::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let mut doc = seed().clone();
    for m in input.mutations.into_iter().take(16) {
        apply(&mut doc, m);
    }
    let json = doc.to_string();
    if let Ok(tok) = Tokenizer::from_json(&json) {
        exercise(&tok, &input.text, &input.ids);
    }
});
