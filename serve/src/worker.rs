//! One request on one session, on a blocking thread: generation with streaming, stop sequences (the
//! engine's), log-probabilities, grounding boxes, a time limit and cancellation, reported to the async
//! side through a channel.
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use serde_json::{json, Value};

use internvl::engine::{
    Chat, EngineError, Event, FinishReason, Flow, GenerateParams, ImageKey, TokenLogprob, TurnRecord, TurnStats,
};
use internvl::prompt::{clean_answer, grounding};

use crate::error::ApiError;
use crate::pool::Lease;

/// What to run.
pub struct Job {
    /// `None`: the model's system message.
    pub system: Option<String>,
    /// The conversation; the last turn is the open question.
    pub turns: Vec<TurnRecord>,
    /// With the stop sequences, constraint and logprobs of the request.
    pub gen: GenerateParams,
    /// Generation stops (with [`ApiError::Timeout`]) past this instant.
    pub deadline: Instant,
    pub timeout: Duration,
    pub first_image: Option<ImageKey>,
}

/// Messages from the worker, in this order: `Started` (the prompt fits and evaluation began),
/// any number of `Delta`, then `Done` or `Failed` (which may also come first).
#[derive(Debug)]
pub enum Msg {
    Started,
    /// Text, and OpenAI's `logprobs.content` entries of the tokens it completes (with `logprobs`).
    Delta(String, Vec<Value>),
    Done(Outcome),
    Failed(ApiError),
}

/// A finished generation.
#[derive(Debug)]
pub struct Outcome {
    /// The whole answer (cleaned as the model's chat() does, spec §5.4), cut at a stop sequence.
    pub text: String,
    /// OpenAI's `finish_reason`: "stop" or "length".
    pub finish: &'static str,
    pub stats: TurnStats,
    pub session: usize,
    /// OpenAI's `choices[].logprobs`: `{"content": [...]}` when asked for, else null.
    pub logprobs: Value,
    /// Grounding boxes of the answer (spec §9), as data: `[{"label", "box_norm", "box_px"}]`.
    pub boxes: Value,
}

/// Runs `job` on the leased session; the lease goes back to the pool when this returns (or unwinds).
pub fn run(mut lease: Lease, job: Job, tx: UnboundedSender<Msg>) {
    let session = lease.session_id();
    let result = generate(&mut lease, job, &tx);
    // The session is free before the client hears the end: its next request finds it idle.
    drop(lease);
    match result {
        Ok(Some(mut out)) => {
            out.session = session;
            let _ = tx.send(Msg::Done(out));
        }
        // The client went away: nobody to tell.
        Ok(None) => {}
        Err(e) => {
            let _ = tx.send(Msg::Failed(e));
        }
    }
}

fn generate(lease: &mut Lease, job: Job, tx: &UnboundedSender<Msg>) -> Result<Option<Outcome>, ApiError> {
    let first_image = job.first_image;
    let chat = lease
        .chat()
        .ok_or_else(|| ApiError::Internal("the session is missing".into()))?;
    let system = job.system.unwrap_or_else(|| chat.model().default_system().to_owned());
    chat.set_system(system);
    chat.set_turns(job.turns)
        .map_err(|e| ApiError::Internal(e.to_string()))?;

    let tok = chat.model().tokenizer().clone();
    // Entries of tokens whose text has not been released yet (a character split over tokens, text
    // held back for a stop sequence): they go out with the next text.
    let mut pending: Vec<Value> = Vec::new();
    let mut all: Vec<Value> = Vec::new();
    let (mut started, mut gone, mut timed_out) = (false, false, false);
    let result = chat.generate(&job.gen, |event| {
        if !started {
            started = true;
            if tx.send(Msg::Started).is_err() {
                gone = true;
                return Flow::Stop;
            }
        }
        if Instant::now() > job.deadline {
            timed_out = true;
            return Flow::Stop;
        }
        match event {
            Event::Logprob(lp) => pending.push(logprob_json(&tok, lp)),
            Event::Token(piece) => {
                all.extend(pending.iter().cloned());
                if tx
                    .send(Msg::Delta(piece.to_owned(), std::mem::take(&mut pending)))
                    .is_err()
                {
                    gone = true;
                    return Flow::Stop;
                }
            }
            _ => {}
        }
        Flow::Continue
    });
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            let (err, healthy) = classify(e);
            if healthy {
                lease.finish(None);
            }
            return Err(err);
        }
    };
    let boxes = lease
        .chat()
        .map_or(Value::Null, |c| boxes_json(c, &reply.token_ids, &reply.text));
    lease.finish(first_image);
    if gone || job.gen.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
        return Ok(None);
    }
    if timed_out {
        return Err(ApiError::Timeout {
            secs: job.timeout.as_secs_f64(),
        });
    }
    if !started && tx.send(Msg::Started).is_err() {
        return Ok(None);
    }
    let finish = match reply.finish {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
        // Only our callback cancels, and every such case is handled above.
        FinishReason::Cancelled => "stop",
    };
    let logprobs = match job.gen.logprobs {
        Some(_) => json!({"content": all, "refusal": null}),
        None => Value::Null,
    };
    Ok(Some(Outcome {
        text: reply.text,
        finish,
        stats: reply.stats,
        session: 0,
        logprobs,
        boxes,
    }))
}

/// OpenAI's entry for one token: `token`, `logprob`, `bytes` and `top_logprobs` (same fields, no nesting).
pub fn logprob_json(tok: &internvl::tokenizer::Tokenizer, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let bytes = tok.token_bytes(id).unwrap_or(&[]);
        json!({"token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes})
    };
    let mut v = entry(lp.id, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    v
}

/// The grounding boxes of an answer: from the `<ref>`/`<box>` tags (special tokens, so read from the
/// ids), else from bare `[[x1, y1, x2, y2]]` lists; pixels of the question's first image when it has one.
fn boxes_json(chat: &Chat, ids: &[u32], text: &str) -> Value {
    let tagged = chat.model().tokenizer().decode(ids, false).unwrap_or_default();
    let mut boxes = grounding::parse(clean_answer(&tagged));
    if boxes.is_empty() {
        boxes = grounding::parse_bare(text);
    }
    let size = chat.turns().last().and_then(|t| t.images.first()).map(|im| im.size());
    boxes
        .iter()
        .map(|b| {
            let mut v = json!({"label": b.label, "box_norm": [b.x1, b.y1, b.x2, b.y2]});
            if let Some((w, h)) = size {
                let p = b.to_pixels(w, h);
                v["box_px"] = json!([p.x1, p.y1, p.x2, p.y2]);
            }
            v
        })
        .collect()
}

/// The client's error, and whether the session is still in a known state.
fn classify(e: EngineError) -> (ApiError, bool) {
    match e {
        // Found before anything is evaluated: the session is untouched.
        EngineError::ContextOverflow { .. } => (ApiError::ContextLength(format!("the prompt does not fit: {e}")), true),
        EngineError::Placeholders { .. } => (ApiError::invalid("messages", e.to_string()), true),
        // Refused before the images were preprocessed (--mem-budget): the session is untouched.
        EngineError::Budget(_) => (ApiError::invalid("messages", e.to_string()), true),
        // Compiled before anything is evaluated (the request's checks compile it first too).
        EngineError::Constraint(_) => (ApiError::invalid("response_format", e.to_string()), true),
        other => (ApiError::Internal(other.to_string()), false),
    }
}
