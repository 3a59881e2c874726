//! Hermes-2 chat rendering and `<image>` expansion, exactly as HF `chat()` does it (spec §5), plus the
//! grounding-answer parser (spec §9, [`grounding`]).
//!
//! The rendered prompt (spec §5.1) is
//! `<|im_start|>system\n{SYS}<|im_end|><|im_start|>user\n{Q1}<|im_end|><|im_start|>assistant\n{A1}<|im_end|>…<|im_start|>assistant\n`
//! with no newline after `<|im_end|>`. Each `<image>` placeholder, in order, becomes
//! `<img>` + `<IMG_CONTEXT>`·(num_image_token·tiles) + `</img>` (spec §5.2 step 4).
//!
//! [`build_prompt_ids`] does not tokenize thousands of `<IMG_CONTEXT>` strings: it tokenizes the text
//! between image blocks and inserts the id runs directly. That is exact because `<img>`/`</img>` are
//! added tokens, which `tokenizers` splits out before normalization and BPE, so text on either side is
//! tokenized independently anyway (tests/chat.rs checks equality with the full expanded string).

use std::ops::Range;

use crate::tokenizer::{tokens, Tokenizer, TokenizerError};

/// The Hermes-2 system message (spec §5.1), verbatim: ASCII ", " after "InternVL", all else full-width.
pub const DEFAULT_SYSTEM_MESSAGE: &str =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";
/// The placeholder users write for an image.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
pub const SYSTEM_ROLE: &str = "<|im_start|>system\n";
pub const USER_ROLE: &str = "<|im_start|>user\n";
pub const ASSISTANT_ROLE: &str = "<|im_start|>assistant\n";
/// MPT separator: `<|im_end|>` with no trailing newline.
pub const SEP: &str = "<|im_end|>";

/// Upper bound on the image context tokens of one prompt. Far above any context window (Qwen2-0.5B
/// trained at 32768), it only stops absurd tile counts from exhausting memory before the runtime's own
/// context-length check.
pub const MAX_IMAGE_TOKENS: usize = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{images} image(s) given but the prompt has {placeholders} `<image>` placeholder(s)")]
    PlaceholderMismatch { images: usize, placeholders: usize },
    #[error("image {index} has 0 tiles")]
    ZeroTiles { index: usize },
    #[error("image {index}: {tiles} tiles × {num_image_token} tokens per tile brings the prompt over {MAX_IMAGE_TOKENS} image tokens")]
    TooManyTokens {
        index: usize,
        tiles: usize,
        num_image_token: usize,
    },
    #[error("num_image_token must be > 0")]
    ZeroImageTokens,
    #[error("the conversation has no turns")]
    Empty,
    #[error("turn {index} has no assistant answer; only the last turn may be open")]
    UnansweredTurn { index: usize },
    #[error("the last turn already has an answer; add a new question before generating")]
    NoOpenTurn,
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

type Result<T> = std::result::Result<T, PromptError>;

/// One exchange: the user's text and, for past turns, the assistant's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub user: String,
    pub assistant: Option<String>,
}

/// A Hermes-2 conversation: the history plus the open question (the last turn, `assistant: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub system: String,
    pub turns: Vec<Turn>,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            system: DEFAULT_SYSTEM_MESSAGE.to_owned(),
            turns: Vec::new(),
        }
    }
}

impl Conversation {
    /// A conversation with the default system message and no turns.
    pub fn new() -> Self {
        Self::default()
    }

    /// A conversation with a custom system message (HF: `model.system_message = ...`).
    pub fn with_system(system: impl Into<String>) -> Self {
        Conversation {
            system: system.into(),
            turns: Vec::new(),
        }
    }

    /// Shorthand for a one-question conversation with the default system message.
    pub fn single(question: impl Into<String>) -> Self {
        let mut c = Self::new();
        c.ask(question);
        c
    }

    /// Appends an open turn.
    pub fn ask(&mut self, question: impl Into<String>) -> &mut Self {
        self.turns.push(Turn {
            user: question.into(),
            assistant: None,
        });
        self
    }

    /// Stores the answer of the open last turn (HF appends `(question, response)` to history).
    pub fn answer(&mut self, answer: impl Into<String>) -> Result<&mut Self> {
        match self.turns.last_mut() {
            Some(t) if t.assistant.is_none() => {
                t.assistant = Some(answer.into());
                Ok(self)
            }
            Some(_) => Err(PromptError::NoOpenTurn),
            None => Err(PromptError::Empty),
        }
    }

    /// MPT rendering (spec §5.1): `SYSTEM_ROLE + system + SEP`, then `role + text + SEP` per message; a
    /// message without text renders as just its role. Placeholders are left as `<image>`.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(
            SYSTEM_ROLE.len()
                + self.system.len()
                + SEP.len()
                + self
                    .turns
                    .iter()
                    .map(|t| t.user.len() + t.assistant.as_ref().map_or(0, String::len) + 64)
                    .sum::<usize>(),
        );
        s.push_str(SYSTEM_ROLE);
        s.push_str(&self.system);
        s.push_str(SEP);
        for t in &self.turns {
            s.push_str(USER_ROLE);
            s.push_str(&t.user);
            s.push_str(SEP);
            s.push_str(ASSISTANT_ROLE);
            if let Some(a) = &t.assistant {
                s.push_str(a);
                s.push_str(SEP);
            }
        }
        s
    }

    /// Checks the conversation is ready for generation: at least one turn, only the last one open.
    pub fn validate_for_generation(&self) -> Result<()> {
        let last = self.turns.len().checked_sub(1).ok_or(PromptError::Empty)?;
        for (i, t) in self.turns.iter().enumerate() {
            match (&t.assistant, i == last) {
                (None, false) => return Err(PromptError::UnansweredTurn { index: i }),
                (Some(_), true) => return Err(PromptError::NoOpenTurn),
                _ => {}
            }
        }
        Ok(())
    }
}

/// `Image-1: <image>\nImage-2: <image>\n…{text}` (spec §5.3, separate images).
pub fn multi_image_question(n_images: usize, text: &str) -> String {
    let mut q: String = (1..=n_images)
        .map(|i| format!("Image-{i}: {IMAGE_PLACEHOLDER}\n"))
        .collect();
    q.push_str(text);
    q
}

/// `Frame1: <image>\n…FrameK: <image>\n{text}` (spec §5.3, video, one tile per frame).
pub fn video_question(n_frames: usize, text: &str) -> String {
    let mut q: String = (1..=n_frames)
        .map(|i| format!("Frame{i}: {IMAGE_PLACEHOLDER}\n"))
        .collect();
    q.push_str(text);
    q
}

/// A piece of the expanded prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    /// `<img>` + `<IMG_CONTEXT>`·n_context + `</img>` for image `index`.
    Image {
        index: usize,
        n_context: usize,
    },
}

/// The prompt split at image blocks (spec §5.2 steps 1–4 applied, nothing tokenized yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptPlan {
    pub segments: Vec<Segment>,
}

impl PromptPlan {
    /// Applies spec §5.2 to a conversation.
    ///
    /// `image_tiles[i]` is the tile count of image i (HF `num_patches_list`); pass one entry per
    /// `<image>` block (a single entry with all tiles for "images combined", spec §5.3).
    ///
    /// Rule 1 (`<image>\n` prefix): HF prefixes the question when `history is None`, images are given
    /// and the question has no `<image>`; the prefixed question is what HF stores in its history. We
    /// prefix the first turn's question when images are given and no user turn has a placeholder, which
    /// is the same string for a first turn and for every later turn of an HF conversation.
    ///
    /// With images, the placeholder count in the rendered prompt (system message included, since HF
    /// replaces in the whole string) must equal `image_tiles.len()`. HF would silently leave extra
    /// placeholders as text or drop extra images. Without images, `<image>` stays literal text, as in HF.
    pub fn new(conv: &Conversation, image_tiles: &[usize], num_image_token: usize) -> Result<Self> {
        conv.validate_for_generation()?;
        if !image_tiles.is_empty() && num_image_token == 0 {
            return Err(PromptError::ZeroImageTokens);
        }
        let mut n_contexts = Vec::with_capacity(image_tiles.len());
        let mut total = 0usize;
        for (index, &tiles) in image_tiles.iter().enumerate() {
            if tiles == 0 {
                return Err(PromptError::ZeroTiles { index });
            }
            let n = tiles
                .checked_mul(num_image_token)
                .and_then(|n| Some((n, total.checked_add(n)?)))
                .filter(|&(_, t)| t <= MAX_IMAGE_TOKENS);
            let Some((n, t)) = n else {
                return Err(PromptError::TooManyTokens {
                    index,
                    tiles,
                    num_image_token,
                });
            };
            total = t;
            n_contexts.push(n);
        }

        let rendered = if !image_tiles.is_empty() && !conv.turns.iter().any(|t| t.user.contains(IMAGE_PLACEHOLDER)) {
            let mut c = conv.clone();
            if let Some(first) = c.turns.first_mut() {
                first.user = format!("{IMAGE_PLACEHOLDER}\n{}", first.user);
            }
            c.render()
        } else {
            conv.render()
        };

        if image_tiles.is_empty() {
            return Ok(PromptPlan {
                segments: vec![Segment::Text(rendered)],
            });
        }
        let pieces: Vec<&str> = rendered.split(IMAGE_PLACEHOLDER).collect();
        let placeholders = pieces.len().saturating_sub(1);
        if placeholders != image_tiles.len() {
            return Err(PromptError::PlaceholderMismatch {
                images: image_tiles.len(),
                placeholders,
            });
        }
        let mut segments = Vec::with_capacity(pieces.len() * 2);
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                let n_context = n_contexts.get(i - 1).copied().unwrap_or(0);
                segments.push(Segment::Image {
                    index: i - 1,
                    n_context,
                });
            }
            if !piece.is_empty() {
                segments.push(Segment::Text((*piece).to_owned()));
            }
        }
        Ok(PromptPlan { segments })
    }

    /// The fully expanded prompt string (what HF tokenizes).
    pub fn expanded(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => s.push_str(t),
                Segment::Image { n_context, .. } => {
                    s.push_str(tokens::IMG_START);
                    s.reserve(tokens::IMG_CONTEXT.len() * n_context + tokens::IMG_END.len());
                    for _ in 0..*n_context {
                        s.push_str(tokens::IMG_CONTEXT);
                    }
                    s.push_str(tokens::IMG_END);
                }
            }
        }
        s
    }

    /// Token ids of the prompt, with the positions of each image's `<IMG_CONTEXT>` run.
    pub fn to_ids(&self, tok: &Tokenizer) -> Result<PromptIds> {
        let mut ids = Vec::new();
        let mut image_spans = Vec::new();
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => ids.extend(tok.encode(t)?),
                Segment::Image { n_context, .. } => {
                    ids.push(tok.ids.img_start);
                    let start = ids.len();
                    ids.resize(start + n_context, tok.ids.img_context);
                    image_spans.push(start..ids.len());
                    ids.push(tok.ids.img_end);
                }
            }
        }
        Ok(PromptIds { ids, image_spans })
    }
}

/// Prompt token ids ready for the LLM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptIds {
    pub ids: Vec<u32>,
    /// For image i, the range of `ids` holding its `<IMG_CONTEXT>` tokens (where its embeddings go).
    pub image_spans: Vec<Range<usize>>,
}

/// The expanded prompt string of spec §5.2 (see [`PromptPlan::new`] for the rules).
pub fn expand_prompt(conv: &Conversation, image_tiles: &[usize], num_image_token: usize) -> Result<String> {
    Ok(PromptPlan::new(conv, image_tiles, num_image_token)?.expanded())
}

/// Token ids of the prompt for `conv` with images of `image_tiles` tiles each (spec §5.2), equal to
/// tokenizing [`expand_prompt`]'s string, but without tokenizing the `<IMG_CONTEXT>` runs.
pub fn build_prompt_ids(
    tok: &Tokenizer,
    conv: &Conversation,
    image_tiles: &[usize],
    num_image_token: usize,
) -> Result<PromptIds> {
    PromptPlan::new(conv, image_tiles, num_image_token)?.to_ids(tok)
}

/// Post-processing of chat() (spec §5.4): the text before the first `<|im_end|>`, trimmed.
pub fn clean_answer(decoded: &str) -> &str {
    decoded.split(SEP).next().unwrap_or("").trim()
}

/// Parsing of grounded answers (spec §9): `<ref>phrase</ref><box>[[x1, y1, x2, y2], …]</box>`, with
/// coordinates normalized to 0–1000 of the original image. Decode with special tokens kept, or the tags
/// are gone ([`parse_bare`] handles that case). Garbage never panics: malformed boxes are skipped.
pub mod grounding {
    use crate::tokenizer::tokens::{BOX_END, BOX_START, REF_END, REF_START};

    /// Upper end of the normalized coordinate range.
    pub const NORM: f32 = 1000.0;

    /// One box in normalized coordinates (0..=1000; values outside are clamped).
    #[derive(Debug, Clone, PartialEq)]
    pub struct GroundedBox {
        /// The `<ref>` phrase right before the `<box>` (trimmed), if any.
        pub label: Option<String>,
        pub x1: f32,
        pub y1: f32,
        pub x2: f32,
        pub y2: f32,
    }

    /// A box in pixels of the original image.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PixelBox {
        pub label: Option<String>,
        pub x1: f32,
        pub y1: f32,
        pub x2: f32,
        pub y2: f32,
    }

    impl GroundedBox {
        /// Scales to pixels: x·W/1000, y·H/1000 (spec §9).
        pub fn to_pixels(&self, width: u32, height: u32) -> PixelBox {
            let (w, h) = (width as f32, height as f32);
            PixelBox {
                label: self.label.clone(),
                x1: self.x1 * w / NORM,
                y1: self.y1 * h / NORM,
                x2: self.x2 * w / NORM,
                y2: self.y2 * h / NORM,
            }
        }
    }

    /// All boxes of `<box>…</box>` tags; each takes the label of a `<ref>…</ref>` that precedes it with
    /// only whitespace in between. A `<box>` without `</box>` is ignored.
    pub fn parse(text: &str) -> Vec<GroundedBox> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(rel) = text.get(pos..).and_then(|t| t.find(BOX_START)) {
            let open = pos + rel;
            let body_start = open + BOX_START.len();
            let Some(body_len) = text.get(body_start..).and_then(|t| t.find(BOX_END)) else {
                break;
            };
            let body = text.get(body_start..body_start + body_len).unwrap_or("");
            let label = text.get(..open).and_then(ref_before);
            for [x1, y1, x2, y2] in quads(body) {
                out.push(GroundedBox {
                    label: label.clone(),
                    x1,
                    y1,
                    x2,
                    y2,
                });
            }
            pos = body_start + body_len + BOX_END.len();
        }
        out
    }

    /// Boxes written without tags (text decoded with `skip_special_tokens=True`): every `[a, b, c, d]`
    /// list of four numbers found inside `[[…]]` groups. No labels.
    pub fn parse_bare(text: &str) -> Vec<GroundedBox> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(rel) = text.get(pos..).and_then(|t| t.find("[[")) {
            let start = pos + rel;
            let Some(len) = text.get(start..).and_then(|t| t.find("]]")) else {
                break;
            };
            let end = start + len + 2;
            let group = text.get(start..end).unwrap_or("");
            for [x1, y1, x2, y2] in quads(group) {
                out.push(GroundedBox {
                    label: None,
                    x1,
                    y1,
                    x2,
                    y2,
                });
            }
            pos = end;
        }
        out
    }

    /// The phrase of a `<ref>…</ref>` at the end of `before` (ignoring trailing whitespace).
    fn ref_before(before: &str) -> Option<String> {
        let t = before.trim_end();
        let inner_end = t.strip_suffix(REF_END)?.len();
        let open = t.get(..inner_end)?.rfind(REF_START)?;
        let phrase = t.get(open + REF_START.len()..inner_end)?.trim();
        Some(phrase.to_owned())
    }

    /// Every innermost `[…]` holding exactly four numbers, clamped into 0..=1000.
    fn quads(s: &str) -> Vec<[f32; 4]> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(close) = rest.find(']') {
            let (head, tail) = rest.split_at(close);
            // The innermost list is what follows the last '[' before this ']'.
            if let Some(open) = head.rfind('[') {
                if let Some(q) = head.get(open + 1..).and_then(four_numbers) {
                    out.push(q);
                }
            }
            rest = tail.get(1..).unwrap_or("");
        }
        out
    }

    fn four_numbers(list: &str) -> Option<[f32; 4]> {
        let mut v = [0f32; 4];
        let mut n = 0;
        for part in list.split(',') {
            let x: f64 = part.trim().parse().ok()?;
            if !x.is_finite() {
                return None;
            }
            *v.get_mut(n)? = x.clamp(0.0, NORM as f64) as f32;
            n += 1;
        }
        (n == 4).then_some(v)
    }
}
