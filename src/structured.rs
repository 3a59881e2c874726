//! Constrained decoding: a JSON Schema, "any JSON object", a regular expression or a Lark-like grammar
//! limits which tokens may come next. The grammar engine is `llguidance` (the one llama.cpp and vLLM
//! integrate): it compiles the constraint and computes, at each step, the set of tokens that keep the
//! answer valid; [`Guide::mask`] turns every other logit into -inf before any sampling transform.
//!
//! The token trie is built from our own tokenizer's byte table (byte-level BPE: each id's raw bytes;
//! added tokens flagged special are marked special, so a grammar never produces them as text). It is
//! built once per tokenizer (about 151k tokens) and shared. The end-of-turn tokens (the model's stop ids)
//! are the trie's end-of-sequence: they are allowed only where the grammar may end.
//!
//! Bounds: every compilation and mask computation runs under llguidance's [`ParserLimits`] (lexer fuel,
//! Earley items per mask, lexer states, grammar size), so a pathological grammar (deep nesting, huge
//! repetition bounds) fails with an error instead of running away in time or memory.
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use crate::tokenizer::Tokenizer;

/// What the answer must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A JSON Schema (draft 2020-12 subset that llguidance supports; unsupported keywords are refused).
    JsonSchema(serde_json::Value),
    /// Any JSON object.
    JsonObject,
    /// A regular expression the whole answer matches (Rust `regex` syntax, anchored at both ends).
    Regex(String),
    /// A Lark-like grammar (llguidance's dialect: `start: ...`, regex terminals, `%json {...}`).
    Grammar(String),
}

impl Constraint {
    /// The field or flag that carries this kind of constraint, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::JsonObject => "JSON object",
            Constraint::Regex(_) => "regex",
            Constraint::Grammar(_) => "grammar",
        }
    }

    fn to_grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
            Constraint::Regex(re) => TopLevelGrammar::from_regex(re),
            Constraint::Grammar(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// Answers in JSON without free whitespace between tokens (`{"a":1}`), unless the schema says otherwise
/// through llguidance's `x-guidance` options: shorter answers, and no run of blanks a weak model can
/// fall into.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// A constraint that could not be compiled (it does not parse, uses an unsupported feature, or exceeds
/// the limits).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ConstraintError {
    pub kind: &'static str,
    pub message: String,
}

/// Our tokenizer seen through llguidance's tokenizer interface.
struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Canonical tokens of valid UTF-8 (our BPE), else the trie's greedy split.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        match std::str::from_utf8(s).ok().and_then(|t| self.tokenizer.encode(t).ok()) {
            Some(ids) => ids,
            None => self.trie.greedy_tokenize(s),
        }
    }
}

/// The trie and the compiler of one tokenizer.
pub struct Grammars {
    factory: ParserFactory,
    /// The end-of-turn ids (allowed where the grammar may end).
    eos: Vec<u32>,
    vocab: usize,
}

/// Factories already built, per tokenizer (a few hundred milliseconds each; shared by every chat).
static FACTORIES: Mutex<Vec<(Weak<Tokenizer>, Arc<Grammars>)>> = Mutex::new(Vec::new());

impl Grammars {
    /// The shared compiler for `tokenizer` (built on first use).
    pub fn of(tokenizer: &Arc<Tokenizer>, stop_ids: &[u32]) -> Result<Arc<Grammars>, ConstraintError> {
        let mut cache = FACTORIES.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(w, _)| w.strong_count() > 0);
        if let Some((_, g)) = cache
            .iter()
            .find(|(w, g)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(tokenizer)) && g.eos == stop_ids)
        {
            return Ok(g.clone());
        }
        let g = Arc::new(Self::build(tokenizer, stop_ids)?);
        cache.push((Arc::downgrade(tokenizer), g.clone()));
        Ok(g)
    }

    fn build(tokenizer: &Arc<Tokenizer>, stop_ids: &[u32]) -> Result<Grammars, ConstraintError> {
        let err = |message: String| ConstraintError {
            kind: "tokenizer",
            message,
        };
        let vocab = tokenizer.vocab_size();
        let eos = *stop_ids
            .first()
            .ok_or_else(|| err("the model has no end-of-turn token".into()))?;
        let mut words = Vec::with_capacity(vocab);
        for id in 0..vocab as u32 {
            let bytes = tokenizer.token_bytes(id).unwrap_or(&[]);
            if tokenizer.is_special(id) || stop_ids.contains(&id) {
                // The trie's convention for special tokens: a 0xFF byte, then the name.
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(bytes);
                words.push(w);
            } else {
                words.push(bytes.to_vec());
            }
        }
        let mut info = TokRxInfo::new(vocab as u32, eos);
        info.tok_end_of_turn = Some(eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| err(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(Grammars {
            factory,
            eos: stop_ids.to_vec(),
            vocab,
        })
    }

    /// Compiles `c` into a [`Guide`] for one answer.
    pub fn compile(&self, c: &Constraint) -> Result<Guide, ConstraintError> {
        let t = Instant::now();
        let err = |message: String| ConstraintError {
            kind: c.kind(),
            message,
        };
        if let Constraint::JsonSchema(s) = c {
            if !s.is_object() && !s.is_boolean() {
                return Err(err(format!("a schema is a JSON object, not {s}")));
            }
        }
        // llguidance compiles nested schemas and grammars recursively: thousands of levels overflow the
        // thread's stack (an abort, not an error), so deep nesting is refused first.
        let depth = match c {
            Constraint::JsonSchema(s) => json_depth(s),
            Constraint::JsonObject => 1,
            Constraint::Regex(t) | Constraint::Grammar(t) => bracket_depth(t),
        };
        if depth > MAX_DEPTH {
            return Err(err(format!(
                "nested {depth} levels deep, more than the {MAX_DEPTH} allowed"
            )));
        }
        let parser = self
            .factory
            .create_parser(c.to_grammar())
            .map_err(|e| err(e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(err(e));
        }
        // An empty language (a schema nothing satisfies) shows at the first mask.
        let first = matcher.compute_mask().map_err(|e| err(e.to_string()))?;
        if first.is_zero() {
            return Err(err("nothing satisfies it".into()));
        }
        Ok(Guide {
            matcher,
            eos: self.eos.clone(),
            vocab: self.vocab,
            first: Some(first),
            compile_time: t.elapsed(),
        })
    }
}

/// Deepest nesting accepted (JSON values for a schema, brackets for a regex or grammar).
pub const MAX_DEPTH: usize = 64;

/// Nesting depth of a JSON value (iterative: the value may be deeper than the stack allows).
fn json_depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Deepest nesting of `(`, `[` and `{` in a regex or grammar text (escapes and quotes not parsed: an
/// over-estimate at worst).
fn bracket_depth(t: &str) -> usize {
    let (mut d, mut max) = (0usize, 0usize);
    for ch in t.chars() {
        match ch {
            '(' | '[' | '{' => {
                d += 1;
                max = max.max(d);
            }
            ')' | ']' | '}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// llguidance's defaults, which bound compile time and memory; kept explicit here so that the bound is
/// visible (see the module docs).
fn limits() -> ParserLimits {
    ParserLimits {
        verbose_errors: false,
        ..ParserLimits::default()
    }
}

/// The state of one constrained answer.
pub struct Guide {
    matcher: Matcher,
    eos: Vec<u32>,
    vocab: usize,
    /// The mask computed while compiling (used for the first token).
    first: Option<toktrie::SimpleVob>,
    compile_time: Duration,
}

impl Guide {
    /// How long compiling the constraint took (grammar, lexer, first mask).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Sets every logit the grammar forbids to -inf (logits beyond the vocabulary too); the end-of-turn
    /// ids only where the grammar may end. Errors when the grammar engine fails (limits exceeded).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = match self.first.take() {
            Some(m) => m,
            None => self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| self.error(e.to_string()))?,
        };
        let may_end = self.eos.first().is_some_and(|&e| mask.is_allowed(e));
        for (id, l) in logits.iter_mut().enumerate() {
            let ok = if self.eos.contains(&(id as u32)) {
                may_end
            } else {
                id < self.vocab && mask.is_allowed(id as u32)
            };
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the sampled token (not for end-of-turn ids).
    pub fn consume(&mut self, id: u32) -> Result<(), ConstraintError> {
        self.matcher.consume_token(id).map_err(|e| self.error(e.to_string()))
    }

    /// The answer so far is complete (the grammar may end here).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// The grammar allows nothing more than the end of the answer.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    fn error(&self, message: String) -> ConstraintError {
        ConstraintError {
            kind: "constrained decoding",
            message,
        }
    }
}
