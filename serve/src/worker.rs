//! One request on one session, on a blocking thread: generation with streaming, stop sequences,
//! a time limit and cancellation, reported to the async side through a channel.
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use internvl::engine::{EngineError, Event, FinishReason, Flow, GenerateParams, ImageKey, TurnRecord, TurnStats};

use crate::error::ApiError;
use crate::pool::Lease;
use crate::stop::StopMatcher;

/// What to run.
pub struct Job {
    /// `None`: the model's system message.
    pub system: Option<String>,
    /// The conversation; the last turn is the open question.
    pub turns: Vec<TurnRecord>,
    pub gen: GenerateParams,
    pub stops: Vec<String>,
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
    Delta(String),
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

    let mut stop = StopMatcher::new(job.stops);
    let mut emitted = String::new();
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
        if let Event::Token(piece) = event {
            let out = stop.push(piece);
            if !out.is_empty() {
                emitted.push_str(&out);
                if tx.send(Msg::Delta(out)).is_err() {
                    gone = true;
                    return Flow::Stop;
                }
            }
            if stop.stopped() {
                return Flow::Stop;
            }
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
    let (text, finish) = if stop.stopped() {
        (internvl::chat::clean_answer(&emitted).to_owned(), "stop")
    } else {
        let rest = stop.finish();
        if !rest.is_empty() && tx.send(Msg::Delta(rest)).is_err() {
            return Ok(None);
        }
        let finish = match reply.finish {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
            // Only our callback cancels, and every such case is handled above.
            FinishReason::Cancelled => "stop",
        };
        (reply.text, finish)
    };
    Ok(Some(Outcome {
        text,
        finish,
        stats: reply.stats,
        session: 0,
    }))
}

/// The client's error, and whether the session is still in a known state.
fn classify(e: EngineError) -> (ApiError, bool) {
    match e {
        // Found before anything is evaluated: the session is untouched.
        EngineError::ContextOverflow { .. } => (ApiError::ContextLength(format!("the prompt does not fit: {e}")), true),
        EngineError::Placeholders { .. } => (ApiError::invalid("messages", e.to_string()), true),
        // Refused before the images were preprocessed (--mem-budget): the session is untouched.
        EngineError::Budget(_) => (ApiError::invalid("messages", e.to_string()), true),
        other => (ApiError::Internal(other.to_string()), false),
    }
}
