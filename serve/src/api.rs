//! The OpenAI chat-completions request: parsing and checking, into what the engine needs
//! ([`Request`]). Images are only named here (URLs); [`crate::images`] fetches and decodes them.
//!
//! Mapping of the message list onto the engine's turns (spec §5.2: a conversation is a system
//! message, then user/assistant pairs, the last question open): `system` (and `developer`) messages
//! form the system message; consecutive `user` messages are merged into one question (texts joined
//! by a newline, images appended); an `assistant` message answers the question before it.
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::Value;

use internvl::engine::{Constraint, SamplingParams};

use crate::error::ApiError;

/// The fields we read. Fields of OpenAI's API that we do not implement ([`UNSUPPORTED`]) are refused
/// with a 400 naming them; other unknown fields are ignored (clients send `user`, `store`, `metadata`...).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<RawMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens`; wins when both are given.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// A string or an array of up to 4 strings.
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub n: Option<u64>,
    /// Extensions (llama.cpp's server has them too).
    #[serde(default)]
    pub top_k: Option<u64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    /// `{"type": "text" | "json_object" | "json_schema" | "regex" | "grammar", ...}` (the last two are
    /// extensions).
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    // Fields of OpenAI's API we do not implement, read only to refuse them (see [`UNSUPPORTED`]); named
    // one by one rather than through `#[serde(flatten)]`, which would lose the field paths in errors.
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<Value>,
    #[serde(default)]
    pub functions: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub modalities: Option<Value>,
    #[serde(default)]
    pub prediction: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    #[serde(default)]
    pub presence_penalty: Option<Value>,
    #[serde(default)]
    pub frequency_penalty: Option<Value>,
    #[serde(default)]
    pub web_search_options: Option<Value>,
    #[serde(default)]
    pub reasoning_effort: Option<Value>,
    #[serde(default)]
    pub verbosity: Option<Value>,
}

impl ChatRequest {
    /// The fields of [`UNSUPPORTED`] with the values given (in that order).
    fn unsupported(&self) -> [Option<&Value>; 14] {
        [
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls.as_ref(),
            self.functions.as_ref(),
            self.function_call.as_ref(),
            self.audio.as_ref(),
            self.modalities.as_ref(),
            self.prediction.as_ref(),
            self.logit_bias.as_ref(),
            self.presence_penalty.as_ref(),
            self.frequency_penalty.as_ref(),
            self.web_search_options.as_ref(),
            self.reasoning_effort.as_ref(),
            self.verbosity.as_ref(),
        ]
    }
}

/// Fields of OpenAI's chat API this server does not implement: a request that sets one (to anything
/// but null, or a neutral value for the penalties) gets a 400 naming it instead of an answer that
/// silently ignores it.
pub const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "web_search_options",
    "reasoning_effort",
    "verbosity",
];

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    /// A string, an array of parts, or null (an assistant message that only called tools).
    #[serde(default)]
    pub content: Option<Value>,
}

/// Server-side bounds and defaults that requests are checked against.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest `max_tokens`; also the value used when a request gives none.
    pub max_tokens: usize,
    /// Used when a request gives no `temperature` (0: greedy, the model's reference decoding, spec §8).
    pub default_temperature: f32,
    /// Most images in one request (all messages together).
    pub max_images: usize,
}

/// An image part: its URL and where it was in the request (for error messages).
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub url: String,
    /// `messages[i].content[j]`.
    pub param: String,
}

/// One question and its answer (`None` for the last, open question).
#[derive(Debug, Clone, Default)]
pub struct PendingTurn {
    pub text: String,
    pub images: Vec<ImageRef>,
    pub assistant: Option<String>,
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct Request {
    pub system: Option<String>,
    pub turns: Vec<PendingTurn>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stops: Vec<String>,
    /// From `response_format`.
    pub constraint: Option<Constraint>,
    /// `top_logprobs` when `logprobs` is true.
    pub logprobs: Option<usize>,
}

impl Request {
    pub fn n_images(&self) -> usize {
        self.turns.iter().map(|t| t.images.len()).sum()
    }
}

/// Parses and checks a request body.
pub fn parse(body: &[u8], limits: &RequestLimits) -> Result<Request, ApiError> {
    // The error names the field that is wrong (`messages[0].content: invalid type ...`).
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: ChatRequest = serde_path_to_error::deserialize(de).map_err(|e| ApiError::BadJson(e.to_string()))?;
    check(req, limits)
}

fn check(req: ChatRequest, limits: &RequestLimits) -> Result<Request, ApiError> {
    for (&k, v) in UNSUPPORTED.iter().zip(req.unsupported()) {
        // Clients send zero penalties by default: those change nothing.
        let neutral = |v: &Value| v.is_null() || (k.ends_with("_penalty") && v.as_f64() == Some(0.0));
        if v.is_some_and(|v| !neutral(v)) {
            return Err(ApiError::invalid(k, format!("`{k}` is not supported by this server")));
        }
    }
    let constraint = response_format(req.response_format)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(n)) if n > 20 => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and 20, got {n}"),
            ))
        }
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs `logprobs: true`")),
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, None) => None,
    };
    if let Some(n) = req.n {
        if n != 1 {
            return Err(ApiError::invalid("n", format!("only n = 1 is supported, got {n}")));
        }
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => limits.max_tokens,
        Some(0) => return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1")),
        Some(m) if m > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens is {m}, over this server's limit of {} (--max-tokens)",
                    limits.max_tokens
                ),
            ))
        }
        Some(m) => m as usize,
    };
    let temperature = match req.temperature {
        None => limits.default_temperature,
        Some(t) if (0.0..=2.0).contains(&t) => t as f32,
        Some(t) => {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {t}"),
            ))
        }
    };
    let top_p = match req.top_p {
        None => 1.0,
        Some(p) if p > 0.0 && p <= 1.0 => p as f32,
        Some(p) => return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {p}"))),
    };
    let repetition_penalty = match req.repetition_penalty {
        None => 1.0,
        Some(r) if r > 0.0 && r.is_finite() => r as f32,
        Some(r) => {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {r}"),
            ))
        }
    };
    let top_k = usize::try_from(req.top_k.unwrap_or(0)).unwrap_or(usize::MAX);
    // Without a seed each request draws its own (two identical sampled requests may differ, as with OpenAI).
    let seed = req.seed.map_or_else(fresh_seed, |s| s as u64);
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p: 0.0,
        repetition_penalty,
        seed,
    };
    let stops = parse_stop(req.stop)?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = stream && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let (system, turns) = conversation(req.messages)?;
    let out = Request {
        system,
        turns,
        stream,
        include_usage,
        max_tokens,
        sampling,
        stops,
        constraint,
        logprobs,
    };
    if out.n_images() > limits.max_images {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the request has {} images, over this server's limit of {} (--max-images)",
                out.n_images(),
                limits.max_images
            ),
        ));
    }
    Ok(out)
}

/// The constraint `response_format` asks for (compiled by the engine before generation; a schema it
/// cannot compile is a 400 about `response_format` too).
fn response_format(v: Option<Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    let text = |field: &str| -> Result<String, ApiError> {
        match v.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::invalid(
                format!("response_format.{field}"),
                format!("response_format of type {kind:?} needs a string `{field}`"),
            )),
        }
    };
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let spec = v.get("json_schema").filter(|s| s.is_object()).ok_or_else(|| {
                ApiError::invalid(
                    "response_format.json_schema",
                    "response_format of type \"json_schema\" needs `json_schema: {\"name\", \"schema\", \"strict\"}`",
                )
            })?;
            // OpenAI requires `schema` in practice; without one any JSON value is valid.
            let schema = spec.get("schema").cloned().unwrap_or_else(|| serde_json::json!({}));
            if !schema.is_object() && !schema.is_boolean() {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    format!("a JSON schema is an object, got {schema}"),
                ));
            }
            if spec.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(ApiError::invalid(
                    "response_format.json_schema.strict",
                    "strict must be a boolean",
                ));
            }
            // The schema is enforced token by token whether `strict` is true or not.
            Ok(Some(Constraint::JsonSchema(schema)))
        }
        "regex" => Ok(Some(Constraint::Regex(text("regex")?))),
        "grammar" => Ok(Some(Constraint::Grammar(text("grammar")?))),
        other => Err(ApiError::invalid(
            "response_format.type",
            format!(
                "response_format type {other:?} is not supported (text, json_object, json_schema, regex, grammar are)"
            ),
        )),
    }
}

fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn parse_stop(v: Option<Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                other => Err(ApiError::invalid(
                    "stop",
                    format!("stop sequences must be strings, got {other}"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(
                "stop",
                format!("stop must be a string or an array of strings, got {other}"),
            ))
        }
    };
    if stops.len() > 4 {
        return Err(ApiError::invalid(
            "stop",
            format!("at most 4 stop sequences, got {}", stops.len()),
        ));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

enum Part {
    Text(String),
    Image(ImageRef),
}

/// The parts of one message's content.
fn parts(i: usize, content: Option<Value>) -> Result<Vec<Part>, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s)]),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(j, item)| part(&format!("{param}[{j}]"), item))
            .collect(),
        Some(other) => Err(ApiError::invalid(
            param,
            format!("content must be a string or an array of parts, got {other}"),
        )),
    }
}

fn part(param: &str, item: Value) -> Result<Part, ApiError> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => match item.get("text") {
            Some(Value::String(s)) => Ok(Part::Text(s.clone())),
            _ => Err(ApiError::invalid(param, "a text part needs a string `text`")),
        },
        "image_url" => {
            // `image_url` is {"url": ...} in OpenAI's API; a bare string is accepted too.
            let url = match item.get("image_url") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(obj) => obj.get("url").and_then(Value::as_str).map(str::to_owned),
                None => None,
            };
            match url {
                Some(url) => Ok(Part::Image(ImageRef {
                    url,
                    param: param.to_owned(),
                })),
                None => Err(ApiError::invalid(
                    param,
                    "an image_url part needs `image_url: {\"url\": ...}`",
                )),
            }
        }
        "" => Err(ApiError::invalid(
            param,
            "a content part needs a `type` (\"text\" or \"image_url\")",
        )),
        other => Err(ApiError::invalid(
            param,
            format!("content parts of type {other:?} are not supported (\"text\" and \"image_url\" are)"),
        )),
    }
}

/// System message and turns from the message list (see the module docs).
fn conversation(messages: Vec<RawMessage>) -> Result<(Option<String>, Vec<PendingTurn>), ApiError> {
    let mut system: Option<String> = None;
    let mut turns: Vec<PendingTurn> = Vec::new();
    let join = |acc: &mut String, s: &str| {
        if !acc.is_empty() && !s.is_empty() {
            acc.push('\n');
        }
        acc.push_str(s);
    };
    for (i, m) in messages.into_iter().enumerate() {
        let parts = parts(i, m.content)?;
        let mut text = String::new();
        let mut images = Vec::new();
        for p in parts {
            match p {
                Part::Text(t) => join(&mut text, &t),
                Part::Image(r) => images.push(r),
            }
        }
        match m.role.as_str() {
            "system" | "developer" => {
                if let Some(r) = images.first() {
                    return Err(ApiError::invalid(
                        r.param.clone(),
                        "images are only accepted in user messages",
                    ));
                }
                join(system.get_or_insert_with(String::new), &text);
            }
            "user" => match turns.last_mut() {
                Some(t) if t.assistant.is_none() => {
                    join(&mut t.text, &text);
                    t.images.extend(images);
                }
                _ => turns.push(PendingTurn {
                    text,
                    images,
                    assistant: None,
                }),
            },
            "assistant" => {
                if let Some(r) = images.first() {
                    return Err(ApiError::invalid(
                        r.param.clone(),
                        "images are only accepted in user messages",
                    ));
                }
                match turns.last_mut() {
                    Some(t) => join(t.assistant.get_or_insert_with(String::new), &text),
                    None => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}]"),
                            "an assistant message must follow a user message",
                        ))
                    }
                }
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("role {other:?} is not supported (system, developer, user, assistant are)"),
                ))
            }
        }
    }
    match turns.last() {
        None => Err(ApiError::invalid(
            "messages",
            "the messages must contain a user message",
        )),
        Some(t) if t.assistant.is_some() => {
            Err(ApiError::invalid("messages", "the last message must be a user message"))
        }
        Some(_) => Ok((system, turns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_tokens: 100,
            default_temperature: 0.0,
            max_images: 2,
        }
    }

    fn parse_json(v: Value) -> Result<Request, ApiError> {
        parse(v.to_string().as_bytes(), &limits())
    }

    #[test]
    fn maps_messages_onto_turns() {
        let r = parse_json(serde_json::json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "this?"}]},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "colour?"},
                {"role": "user", "content": "answer in one word"}
            ],
            "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n", ""],
            "stream": true, "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert_eq!(r.system.as_deref(), Some("be brief"));
        assert_eq!(r.turns.len(), 2);
        assert_eq!(r.turns[0].text, "what is\nthis?");
        assert_eq!(r.turns[0].images[0].param, "messages[1].content[1]");
        assert_eq!(r.turns[0].assistant.as_deref(), Some("a cat"));
        assert_eq!(r.turns[1].text, "colour?\nanswer in one word");
        assert!(r.turns[1].assistant.is_none());
        assert_eq!(
            (r.max_tokens, r.sampling.temperature, r.sampling.top_p, r.sampling.seed),
            (7, 0.5, 0.9, 3)
        );
        assert_eq!(r.stops, vec!["\n".to_string()]);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn defaults_follow_the_server() {
        let r = parse_json(serde_json::json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!((r.max_tokens, r.sampling.temperature), (100, 0.0));
        assert!(!r.stream && !r.include_usage && r.stops.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_do_with_the_field_named() {
        let bad = |v: Value, param: &str, needle: &str| {
            let e = parse_json(v).unwrap_err();
            assert_eq!(e.param(), Some(param), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        };
        let user = serde_json::json!([{"role": "user", "content": "hi"}]);
        bad(
            serde_json::json!({"messages": user, "max_tokens": 101}),
            "max_tokens",
            "limit of 100",
        );
        bad(
            serde_json::json!({"messages": user, "max_tokens": 0}),
            "max_tokens",
            "at least 1",
        );
        bad(
            serde_json::json!({"messages": user, "temperature": 3}),
            "temperature",
            "between 0 and 2",
        );
        bad(serde_json::json!({"messages": user, "top_p": 0}), "top_p", "(0, 1]");
        bad(serde_json::json!({"messages": user, "n": 2}), "n", "n = 1");
        for field in UNSUPPORTED {
            bad(
                serde_json::json!({"messages": user, *field: [{"type": "function"}]}),
                field,
                "not supported",
            );
        }
        bad(
            serde_json::json!({"messages": user, "presence_penalty": 0.5}),
            "presence_penalty",
            "not supported",
        );
        bad(
            serde_json::json!({"messages": user, "top_logprobs": 3}),
            "top_logprobs",
            "logprobs: true",
        );
        bad(
            serde_json::json!({"messages": user, "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
            "0 and 20",
        );
        bad(
            serde_json::json!({"messages": user, "response_format": {"type": "xml"}}),
            "response_format.type",
            "xml",
        );
        bad(
            serde_json::json!({"messages": user, "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
            "needs",
        );
        bad(
            serde_json::json!({"messages": user, "response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}),
            "response_format.json_schema.schema",
            "object",
        );
        bad(
            serde_json::json!({"messages": user, "response_format": {"type": "regex"}}),
            "response_format.regex",
            "string",
        );
        bad(
            serde_json::json!({"messages": user, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
            "at most 4",
        );
        bad(serde_json::json!({"messages": user, "stop": 5}), "stop", "string");
        bad(serde_json::json!({"messages": []}), "messages", "user message");
        bad(
            serde_json::json!({"messages": [{"role": "assistant", "content": "x"}]}),
            "messages[0]",
            "must follow",
        );
        bad(
            serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
            "not supported",
        );
        bad(
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
            "messages",
            "last message",
        );
        bad(
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "messages[0].content[0]",
            "input_audio",
        );
        let img = serde_json::json!({"type": "image_url", "image_url": {"url": "data:,"}});
        bad(
            serde_json::json!({"messages": [{"role": "user", "content": [img, img, img]}]}),
            "messages",
            "limit of 2",
        );
        bad(
            serde_json::json!({"messages": [{"role": "system", "content": [img]}, {"role": "user", "content": "q"}]}),
            "messages[0].content[0]",
            "only accepted",
        );
    }

    #[test]
    fn structured_output_and_logprobs_fields() {
        let user = serde_json::json!([{"role": "user", "content": "hi"}]);
        let r = parse_json(serde_json::json!({
            "messages": user, "logprobs": true, "top_logprobs": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
            // Harmless fields clients send are accepted.
            "user": "u", "store": false, "metadata": {"a": "b"}, "presence_penalty": 0, "tools": null, "service_tier": "auto"
        }))
        .unwrap();
        assert_eq!(
            r.constraint,
            Some(Constraint::JsonSchema(serde_json::json!({"type": "object"})))
        );
        assert_eq!(r.logprobs, Some(3));
        let r = parse_json(
            serde_json::json!({"messages": user, "response_format": {"type": "json_object"}, "logprobs": true}),
        )
        .unwrap();
        assert_eq!((r.constraint, r.logprobs), (Some(Constraint::JsonObject), Some(0)));
        let r =
            parse_json(serde_json::json!({"messages": user, "response_format": {"type": "text"}, "logprobs": false}))
                .unwrap();
        assert_eq!((r.constraint, r.logprobs), (None, None));
        let r =
            parse_json(serde_json::json!({"messages": user, "response_format": {"type": "regex", "regex": "[ab]+"}}))
                .unwrap();
        assert_eq!(r.constraint, Some(Constraint::Regex("[ab]+".into())));
    }

    #[test]
    fn bad_json_is_reported_with_its_position() {
        let e = parse(b"{\"messages\": [", &limits()).unwrap_err();
        assert!(matches!(e, ApiError::BadJson(_)));
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse(b"{}", &limits()).unwrap_err();
        assert!(e.to_string().contains("messages"), "{e}");
        let e = parse(br#"{"messages": [{"role": 5}]}"#, &limits()).unwrap_err();
        assert!(e.to_string().contains("messages[0].role: invalid type"), "{e}");
    }
}
