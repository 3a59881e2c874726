//! Tokenizer for InternVL2-1B (spec §6).
//!
//! The checkpoint ships only the slow-tokenizer files (`vocab.json`, `merges.txt`, `added_tokens.json`,
//! `tokenizer_config.json`), spec §6.3. [`build_hf_tokenizer_json`] turns them into a Hugging Face
//! `tokenizers` JSON, which the converter stores in the GGUF and the runtime loads with
//! [`Tokenizer::from_json`]. [`llama_cpp_vocab`] gives the `tokenizer.ggml.*` arrays for llama.cpp interop.
//!
//! Two quirks are preserved on purpose:
//! - merges.txt has 151,291 merges; the 96 merges whose first symbol starts with `#` are missing (§6.2).
//!   We keep them missing, so `"##"` encodes to `[2, 2]` as in HF. This also requires `ignore_merges=false`
//!   in the BPE model: with `true`, a word found whole in the vocabulary (`"##"` is id 565) would skip merges.
//! - the 12 added tokens are matched verbatim in raw text before BPE (`split_special_tokens=false`, §6.1).
//!
//! [`StreamDecoder`] turns generated ids into text piece by piece without ever emitting broken UTF-8.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{json, Value};

/// Token strings of the added tokens (spec §6.1 table).
pub mod tokens {
    pub const ENDOFTEXT: &str = "<|endoftext|>";
    pub const IM_START: &str = "<|im_start|>";
    pub const IM_END: &str = "<|im_end|>";
    pub const IMG_START: &str = "<img>";
    pub const IMG_END: &str = "</img>";
    pub const IMG_CONTEXT: &str = "<IMG_CONTEXT>";
    pub const QUAD_START: &str = "<quad>";
    pub const QUAD_END: &str = "</quad>";
    pub const REF_START: &str = "<ref>";
    pub const REF_END: &str = "</ref>";
    pub const BOX_START: &str = "<box>";
    pub const BOX_END: &str = "</box>";
}

/// The Qwen2 pre-tokenizer regex (spec §6.1), used with behaviour `Isolated`.
pub const QWEN2_PRETOKENIZE_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp `tokenizer.ggml.token_type` values (gguf-py `TokenType`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },
    #[error("{path} line {line}: expected two symbols separated by one space, found {text:?}")]
    BadMergeLine { path: PathBuf, line: usize, text: String },
    #[error("{path} line {line}: merge symbol {symbol:?} is not in vocab.json")]
    MergeSymbolUnknown { path: PathBuf, line: usize, symbol: String },
    #[error("{path}: ids collide: {first:?} and {second:?} both have id {id}")]
    IdCollision {
        path: PathBuf,
        id: u32,
        first: String,
        second: String,
    },
    #[error("{path}: token {content:?} has id {id} here but id {other_id} in {other_path}")]
    AddedTokenConflict {
        path: PathBuf,
        content: String,
        id: u32,
        other_id: u32,
        other_path: PathBuf,
    },
    #[error("tokenizer has no token {0:?}, which InternVL needs")]
    MissingSpecialToken(&'static str),
    #[error("vocab_size {vocab_size} is smaller than the highest token id {max_id} + 1")]
    VocabSizeTooSmall { vocab_size: usize, max_id: u32 },
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownTokenId { id: u32, vocab_size: usize },
    #[error(
        "tokenizer JSON has token id {max_id} ({n_tokens} tokens in all); ids above {} are refused \
         (the id-indexed tables would take {table_bytes} bytes)",
        MAX_TOKEN_ID
    )]
    TokenIdTooLarge {
        max_id: u32,
        n_tokens: usize,
        table_bytes: u64,
    },
    #[error("tokenizers library: {0}")]
    Library(String),
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// Highest token id [`Tokenizer::from_json`] accepts: 2^21 - 1, about 14 times InternVL2-1B's 151,655
/// tokens and 8 times the largest vocabularies in use (256k). The runtime keeps a few bytes per id, for
/// every id up to the highest one, so without a bound one hostile id (`4294967295` in the JSON of a GGUF)
/// would ask for tens of GiB before anything else could check it.
pub const MAX_TOKEN_ID: u32 = (1 << 21) - 1;

/// One added token with its flags (tokenizer_config.json `added_tokens_decoder`, spec §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokenSpec {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub normalized: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub single_word: bool,
}

/// The parsed slow-tokenizer files of a checkpoint directory (spec §6.3).
#[derive(Debug, Clone)]
pub struct SlowTokenizerFiles {
    /// Regular BPE tokens, id -> byte-level token string (vocab.json).
    pub vocab: BTreeMap<u32, String>,
    /// Merges in rank order (merges.txt, header line skipped).
    pub merges: Vec<(String, String)>,
    /// Added tokens sorted by id (added_tokens.json, flags from tokenizer_config.json).
    pub added_tokens: Vec<AddedTokenSpec>,
    /// `eos_token` / `pad_token` / `bos_token` of tokenizer_config.json, when set.
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub bos_token: Option<String>,
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A token in tokenizer_config.json is either a plain string or `{"content": ...}` (or null).
fn token_field(cfg: &Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

impl SlowTokenizerFiles {
    /// Reads `vocab.json`, `merges.txt`, `added_tokens.json` and (optional) `tokenizer_config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let raw_vocab: HashMap<String, u32> = read_json(&vocab_path)?;
        let mut vocab: BTreeMap<u32, String> = BTreeMap::new();
        for (token, id) in raw_vocab {
            if let Some(first) = vocab.get(&id) {
                // Report the pair in a stable order so the message does not depend on hash order.
                let (first, second) = if *first <= token {
                    (first.clone(), token)
                } else {
                    (token, first.clone())
                };
                return Err(TokenizerError::IdCollision {
                    path: vocab_path,
                    id,
                    first,
                    second,
                });
            }
            vocab.insert(id, token);
        }
        let token_to_id: HashMap<&str, u32> = vocab.iter().map(|(id, t)| (t.as_str(), *id)).collect();

        let merges_path = dir.join("merges.txt");
        let merges = parse_merges(&read_text(&merges_path)?, &merges_path, &token_to_id)?;

        let added_path = dir.join("added_tokens.json");
        let added_raw: HashMap<String, u32> = read_json(&added_path)?;

        // tokenizer_config.json is optional: it only contributes flags and the eos/pad/bos names.
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Null
        };
        let mut decoder_flags: HashMap<u32, AddedTokenSpec> = HashMap::new();
        if let Some(dec) = cfg.get("added_tokens_decoder") {
            let obj = dec.as_object().ok_or_else(|| TokenizerError::BadFile {
                path: cfg_path.clone(),
                what: "added_tokens_decoder is not an object".into(),
            })?;
            for (id_str, entry) in obj {
                let id: u32 = id_str.parse().map_err(|_| TokenizerError::BadFile {
                    path: cfg_path.clone(),
                    what: format!("added_tokens_decoder key {id_str:?} is not a token id"),
                })?;
                let content = entry
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TokenizerError::BadFile {
                        path: cfg_path.clone(),
                        what: format!("added_tokens_decoder[{id}] has no string \"content\""),
                    })?;
                let flag = |k: &str, default: bool| entry.get(k).and_then(Value::as_bool).unwrap_or(default);
                decoder_flags.insert(
                    id,
                    AddedTokenSpec {
                        id,
                        content: content.to_owned(),
                        special: flag("special", true),
                        normalized: flag("normalized", false),
                        lstrip: flag("lstrip", false),
                        rstrip: flag("rstrip", false),
                        single_word: flag("single_word", false),
                    },
                );
            }
        }

        // added_tokens.json is authoritative for which tokens exist; the decoder must agree with it.
        let mut added: BTreeMap<u32, AddedTokenSpec> = BTreeMap::new();
        for (content, id) in added_raw {
            if let Some(prev) = added.get(&id) {
                let (first, second) = if prev.content <= content {
                    (prev.content.clone(), content)
                } else {
                    (content, prev.content.clone())
                };
                return Err(TokenizerError::IdCollision {
                    path: added_path,
                    id,
                    first,
                    second,
                });
            }
            let spec = match decoder_flags.remove(&id) {
                Some(spec) if spec.content == content => spec,
                Some(spec) => {
                    return Err(TokenizerError::IdCollision {
                        path: cfg_path,
                        id,
                        first: content,
                        second: spec.content,
                    })
                }
                // Not in the decoder: treat it as the brief/spec says every InternVL added token is.
                None => AddedTokenSpec {
                    id,
                    content,
                    special: true,
                    normalized: false,
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                },
            };
            added.insert(id, spec);
        }
        // Tokens listed only in tokenizer_config.json are added tokens too (transformers loads both).
        for (id, spec) in decoder_flags {
            if let Some(other) = added.values().find(|a| a.content == spec.content) {
                return Err(TokenizerError::AddedTokenConflict {
                    path: cfg_path,
                    content: spec.content,
                    id,
                    other_id: other.id,
                    other_path: added_path,
                });
            }
            added.insert(id, spec);
        }
        // An added token may reuse a vocab entry only with the same content and the same id.
        for spec in added.values() {
            if let Some(existing) = vocab.get(&spec.id) {
                if *existing != spec.content {
                    return Err(TokenizerError::IdCollision {
                        path: added_path,
                        id: spec.id,
                        first: existing.clone(),
                        second: spec.content.clone(),
                    });
                }
            }
            if let Some(&vid) = token_to_id.get(spec.content.as_str()) {
                if vid != spec.id {
                    return Err(TokenizerError::AddedTokenConflict {
                        path: added_path,
                        content: spec.content.clone(),
                        id: spec.id,
                        other_id: vid,
                        other_path: vocab_path,
                    });
                }
            }
        }

        Ok(SlowTokenizerFiles {
            vocab,
            merges,
            added_tokens: added.into_values().collect(),
            eos_token: token_field(&cfg, "eos_token"),
            pad_token: token_field(&cfg, "pad_token"),
            bos_token: token_field(&cfg, "bos_token"),
        })
    }

    /// Highest id over regular and added tokens, or None for an empty tokenizer.
    pub fn max_id(&self) -> Option<u32> {
        let v = self.vocab.keys().next_back().copied();
        let a = self.added_tokens.iter().map(|a| a.id).max();
        v.max(a)
    }

    /// The Hugging Face `tokenizers` JSON (spec §6.3). Deterministic: same files, same bytes.
    pub fn to_hf_json(&self) -> String {
        let vocab: serde_json::Map<String, Value> = self.vocab.iter().map(|(id, t)| (t.clone(), json!(id))).collect();
        let merges: Vec<Value> = self.merges.iter().map(|(a, b)| json!([a, b])).collect();
        let added: Vec<Value> = self
            .added_tokens
            .iter()
            .map(|a| {
                json!({
                    "id": a.id,
                    "content": a.content,
                    "single_word": a.single_word,
                    "lstrip": a.lstrip,
                    "rstrip": a.rstrip,
                    "normalized": a.normalized,
                    "special": a.special,
                })
            })
            .collect();
        let byte_level = json!({
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": false,
        });
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": { "type": "NFC" },
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": { "Regex": QWEN2_PRETOKENIZE_REGEX },
                        "behavior": "Isolated",
                        "invert": false,
                    },
                    byte_level.clone(),
                ],
            },
            "post_processor": byte_level.clone(),
            "decoder": byte_level,
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                // Must stay false, see the module comment (the `##` quirk).
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            },
        });
        doc.to_string()
    }
}

/// Parses merges.txt like transformers' `Qwen2Tokenizer`: skip a first `#version` line and blank lines,
/// every other line is exactly two symbols. Both symbols and their concatenation must be in the vocab
/// (the `tokenizers` BPE model would reject it later with a less precise message).
fn parse_merges(text: &str, path: &Path, token_to_id: &HashMap<&str, u32>) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || (i == 0 && line.starts_with("#version")) {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (a, b) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => (a, b),
            _ => {
                return Err(TokenizerError::BadMergeLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: raw.to_owned(),
                })
            }
        };
        let merged = format!("{a}{b}");
        for sym in [a, b, merged.as_str()] {
            if !token_to_id.contains_key(sym) {
                return Err(TokenizerError::MergeSymbolUnknown {
                    path: path.to_path_buf(),
                    line: i + 1,
                    symbol: sym.to_owned(),
                });
            }
        }
        merges.push((a.to_owned(), b.to_owned()));
    }
    Ok(merges)
}

/// Builds the Hugging Face `tokenizers` JSON from a checkpoint directory's slow-tokenizer files (spec §6.3).
/// This string is what the converter stores under `names::key::TOKENIZER_HF_JSON`.
pub fn build_hf_tokenizer_json(dir: &Path) -> Result<String> {
    Ok(SlowTokenizerFiles::load(dir)?.to_hf_json())
}

/// The llama.cpp vocabulary arrays (`tokenizer.ggml.tokens`, `.token_type`, `.merges`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaCppVocab {
    pub tokens: Vec<String>,
    pub token_type: Vec<i32>,
    pub merges: Vec<String>,
}

/// llama.cpp's `does_token_look_special` (convert_hf_to_gguf.py), for non-special added tokens.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Builds the llama.cpp arrays the way convert_hf_to_gguf.py `get_vocab_base` does: ids `0..vocab_size`
/// (`vocab_size` defaults to the highest id + 1; config.json's `llm_config.vocab_size` is the usual value),
/// a hole becomes `[PAD{id}]` of type UNUSED, an added special (or special-looking) token is CONTROL,
/// another added token USER_DEFINED, everything else NORMAL. Merges are `"a b"` strings in rank order.
pub fn llama_cpp_vocab(files: &SlowTokenizerFiles, vocab_size: Option<usize>) -> Result<LlamaCppVocab> {
    let needed = files.max_id().map_or(0, |m| m as usize + 1);
    let n = vocab_size.unwrap_or(needed);
    if n < needed {
        return Err(TokenizerError::VocabSizeTooSmall {
            vocab_size: n,
            max_id: files.max_id().unwrap_or(0),
        });
    }
    let added: HashMap<u32, &AddedTokenSpec> = files.added_tokens.iter().map(|a| (a.id, a)).collect();
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n {
        // n <= max_id + 1 <= u32::MAX + 1 unless vocab_size was larger; ids beyond u32 are holes.
        let id32 = u32::try_from(id).ok();
        let spec = id32.and_then(|i| added.get(&i));
        if let Some(spec) = spec {
            let ty = if spec.special || looks_special(&spec.content) {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
            tokens.push(spec.content.clone());
            types.push(ty);
        } else if let Some(t) = id32.and_then(|i| files.vocab.get(&i)) {
            tokens.push(t.clone());
            types.push(token_type::NORMAL);
        } else {
            tokens.push(format!("[PAD{id}]"));
            types.push(token_type::UNUSED);
        }
    }
    let merges = files.merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    Ok(LlamaCppVocab {
        tokens,
        token_type: types,
        merges,
    })
}

/// GPT-2 byte-level alphabet, inverted: char code -> byte. Printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100.. in byte order (the `bytes_to_unicode` table).
fn byte_level_inverse() -> [Option<u8>; 324] {
    let mut inv = [None; 324];
    let mut next = 256usize;
    for b in 0u16..=255 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let code = if printable {
            b as usize
        } else {
            let c = next;
            next += 1;
            c
        };
        if let Some(slot) = inv.get_mut(code) {
            *slot = Some(b as u8);
        }
    }
    inv
}

/// Raw bytes of a token as the ByteLevel decoder produces them: every char through the byte-level
/// alphabet, or, if some char is outside it (added tokens with such chars), the token's own UTF-8.
fn token_to_bytes(token: &str, inv: &[Option<u8>; 324]) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = token.chars().map(|c| inv.get(c as usize).copied().flatten()).collect();
    mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Ids of the tokens InternVL's prompt format needs. The first six are required; the grounding tags
/// are optional so that small test tokenizers can omit them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub endoftext: u32,
    pub im_start: u32,
    pub im_end: u32,
    pub img_start: u32,
    pub img_end: u32,
    pub img_context: u32,
    pub quad_start: Option<u32>,
    pub quad_end: Option<u32>,
    pub ref_start: Option<u32>,
    pub ref_end: Option<u32>,
    pub box_start: Option<u32>,
    pub box_end: Option<u32>,
}

impl SpecialIds {
    /// Stop ids for generation (spec §5.4/§8): `<|im_end|>`, `<|im_start|>`, `<|endoftext|>`.
    pub fn stop_ids(&self) -> [u32; 3] {
        [self.im_end, self.im_start, self.endoftext]
    }
}

/// The runtime tokenizer: a `tokenizers::Tokenizer` plus a byte table for streaming decode.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Concatenated raw bytes of every id; `offsets[id]..offsets[id + 1]` slices them.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// True for added tokens flagged special (the ones `skip_special` drops).
    special: Vec<bool>,
    pub ids: SpecialIds,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("ids", &self.ids)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizers` JSON (as produced by [`build_hf_tokenizer_json`]).
    pub fn from_json(json: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_str(json).map_err(|e| TokenizerError::Library(e.to_string()))?;
        // Highest id + 1 rather than the token count, so that a vocabulary with holes keeps every id.
        // The tables below are indexed by id: refuse absurd ids before allocating them.
        let vocab = inner.get_vocab(true);
        let max_id = vocab.values().max().copied();
        if let Some(max_id) = max_id.filter(|&m| m > MAX_TOKEN_ID) {
            return Err(TokenizerError::TokenIdTooLarge {
                max_id,
                n_tokens: vocab.len(),
                // offsets (u32) + special flag (bool) per id
                table_bytes: (u64::from(max_id) + 1) * 5,
            });
        }
        drop(vocab);
        let n = max_id.map_or(0, |m| m as usize + 1);
        let added = inner.get_added_tokens_decoder();
        let inv = byte_level_inverse();
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut special = vec![false; n];
        offsets.push(0u32);
        for id in 0..n {
            let id32 = u32::try_from(id).map_err(|_| TokenizerError::Library(format!("vocab size {n} too large")))?;
            if let Some(t) = inner.id_to_token(id32) {
                bytes.extend_from_slice(&token_to_bytes(&t, &inv));
            }
            if let (Some(tok), Some(flag)) = (added.get(&id32), special.get_mut(id)) {
                *flag = tok.special;
            }
            let end = u32::try_from(bytes.len())
                .map_err(|_| TokenizerError::Library("token table larger than 4 GiB".into()))?;
            offsets.push(end);
        }
        let need = |t: &'static str| inner.token_to_id(t).ok_or(TokenizerError::MissingSpecialToken(t));
        let ids = SpecialIds {
            endoftext: need(tokens::ENDOFTEXT)?,
            im_start: need(tokens::IM_START)?,
            im_end: need(tokens::IM_END)?,
            img_start: need(tokens::IMG_START)?,
            img_end: need(tokens::IMG_END)?,
            img_context: need(tokens::IMG_CONTEXT)?,
            quad_start: inner.token_to_id(tokens::QUAD_START),
            quad_end: inner.token_to_id(tokens::QUAD_END),
            ref_start: inner.token_to_id(tokens::REF_START),
            ref_end: inner.token_to_id(tokens::REF_END),
            box_start: inner.token_to_id(tokens::BOX_START),
            box_end: inner.token_to_id(tokens::BOX_END),
        };
        Ok(Tokenizer {
            inner,
            bytes,
            offsets,
            special,
            ids,
        })
    }

    /// Builds the tokenizer straight from a checkpoint directory (the converter's path, and tests).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_json(&build_hf_tokenizer_json(dir)?)
    }

    /// Encodes text with no BOS and no added special tokens (spec §5.2 step 5). Added tokens written in
    /// the text (`<|im_start|>`, `<img>`, ...) are recognised, as in HF (`split_special_tokens=false`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Library(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids; invalid UTF-8 becomes U+FFFD (HF `errors="replace"`). Unknown ids are an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Library(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id (byte-level form for regular tokens, e.g. `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens (151655 for InternVL2-1B).
    pub fn vocab_size(&self) -> usize {
        self.special.len()
    }

    /// True for an added token flagged special.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The raw bytes a token decodes to (before UTF-8 assembly), or None for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let start = *self.offsets.get(i)? as usize;
        let end = *self.offsets.get(i + 1)? as usize;
        self.bytes.get(start..end)
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            Some(&id) => Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size(),
            }),
            None => Ok(()),
        }
    }
}

/// Incremental detokenizer for streaming generation.
///
/// Tokens are byte-level, so one character (Chinese, emoji) can span several tokens. The decoder keeps
/// the bytes of an incomplete UTF-8 sequence until it completes; a sequence that can never become valid
/// is replaced by U+FFFD right away, as `String::from_utf8_lossy` (and HF `errors="replace"`) does. The
/// concatenation of all `push` results and `finish` equals [`Tokenizer::decode`] of the same ids.
///
/// It does not borrow the tokenizer, so a session can own both; pass the tokenizer to each call.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// `skip_special`: drop special added tokens (as chat() does, spec §5.4). Keep them to parse
    /// grounding tags (spec §9).
    pub fn new(skip_special: bool) -> Self {
        StreamDecoder {
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        let bytes = tokenizer.token_bytes(id).ok_or(TokenizerError::UnknownTokenId {
            id,
            vocab_size: tokenizer.vocab_size(),
        })?;
        if self.skip_special && tokenizer.is_special(id) {
            return Ok(None);
        }
        self.pending.extend_from_slice(bytes);
        Ok(self.drain_complete())
    }

    /// Flushes what is left: an incomplete tail becomes U+FFFD. Returns None when nothing was pending.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(out)
    }

    /// Bytes held back because they may still become a complete character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn drain_complete(&mut self) -> Option<String> {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction; lossy conversion never allocates replacements here.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        // A definitely invalid sequence: replace it and continue after it.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = after.get(n..).unwrap_or(&[]);
                        }
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.to_vec();
        self.pending = keep;
        if out.is_empty() {
            None
        } else {
            Some(out)
        }
    }
}
