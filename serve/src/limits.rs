//! What a client may hold of the server, whatever it does: connections, time and body memory.
//!
//! - Connections: at most `max_connections` are served at once; at the cap the accept loop stops
//!   accepting (new clients wait in the kernel's listen backlog) until one closes.
//! - Headers: a connection must deliver a request's headers within `header_timeout` of the server
//!   starting to wait for them. hyper starts that timer as soon as a connection is idle, so the
//!   same limit closes idle keep-alive connections.
//! - Bodies: a body must keep up a minimum average rate after a grace period (see
//!   [`BodyDeadline`]), and the bytes of all bodies held in memory at once, beyond the first
//!   [`BODY_FREE_BYTES`] of each, are capped by `max_buffered_body_bytes` (a semaphore of bytes
//!   taken as chunks arrive and given back when the request no longer needs its body).
//!
//! Together with hyper's read buffer (at most [`READ_BUFFER_BYTES`] per connection), this bounds
//! the memory clients can make the server hold before a request reaches the session queue:
//! `max_buffered_body_bytes + max_connections x (READ_BUFFER_BYTES + BODY_FREE_BYTES)`.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// hyper's per-connection read buffer (its default is ~400 KiB); also the largest request head.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// The first bytes of every body are not counted against the shared budget (the connection cap
/// bounds them: at most `max_connections` x this): a text request never waits behind large bodies
/// that slow clients hold, only bodies larger than this compete for the budget.
pub const BODY_FREE_BYTES: usize = 64 << 10;

/// The limits (flags of the same names; defaults in docs/server.md).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Grace before `min_body_rate` applies.
    pub body_timeout: Duration,
    /// Bytes per second a body must average after the grace.
    pub min_body_rate: u64,
    pub max_buffered_body_bytes: usize,
}

/// When a body must be complete: `start + body_timeout + received / min_body_rate`, so that a client
/// sending at least `min_body_rate` never runs out of time and one that stalls is cut off
/// `body_timeout` after it fell behind.
pub struct BodyDeadline {
    start: Instant,
    grace: Duration,
    rate: u64,
}

impl BodyDeadline {
    pub fn new(limits: &ConnLimits) -> Self {
        BodyDeadline {
            start: Instant::now(),
            grace: limits.body_timeout,
            rate: limits.min_body_rate.max(1),
        }
    }

    pub fn at(&self, received: usize) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.rate as f64);
        self.start + self.grace + earned
    }

    pub fn error(&self, received: usize) -> ApiError {
        ApiError::BodyTimeout(format!(
            "{received} bytes in {:.1} s; a body must arrive at {} bytes/s or more after the first {:.0} s \
             (--min-body-rate, --body-timeout)",
            self.start.elapsed().as_secs_f64(),
            self.rate,
            self.grace.as_secs_f64()
        ))
    }
}

/// Request-body bytes held in memory across all requests.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// A request's share of the budget, given back when dropped.
#[derive(Default)]
pub struct BodyHold(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.total.saturating_sub(self.bytes.available_permits())
    }

    /// Adds `n` bytes to `hold`, waiting (until `deadline`) while other requests hold the budget.
    pub async fn take(&self, hold: &mut BodyHold, n: usize, deadline: Instant) -> Result<(), ()> {
        if n == 0 {
            return Ok(());
        }
        let n32 = u32::try_from(n).map_err(|_| ())?;
        let permit = tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(n32))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        match &mut hold.0 {
            Some(p) => p.merge(permit),
            None => hold.0 = Some(permit),
        }
        Ok(())
    }
}

/// The request body, at most `limit` bytes, under the deadline and the budget. Over `limit`:
/// `BodyTooLarge` once the rest is drained (within the bounds below) without holding it.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    limits: &ConnLimits,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyHold), ApiError> {
    use futures_util::StreamExt;
    let deadline = BodyDeadline::new(limits);
    let mut chunks = body.into_data_stream();
    let mut buf = Vec::new();
    let mut hold = BodyHold::default();
    loop {
        let next = match tokio::time::timeout_at(deadline.at(buf.len()), chunks.next()).await {
            Ok(n) => n,
            Err(_) => return Err(deadline.error(buf.len())),
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("the request body could not be read: {e}")))?;
        if buf.len() + chunk.len() > limit {
            let mut seen = buf.len() + chunk.len();
            drop(buf);
            drop(hold);
            let drain = async {
                while seen <= limit.saturating_add(OVERLIMIT_DRAIN_BYTES) {
                    match chunks.next().await {
                        Some(Ok(c)) => seen += c.len(),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(OVERLIMIT_DRAIN_TIME, drain).await;
            return Err(ApiError::BodyTooLarge { limit });
        }
        let counted =
            (buf.len() + chunk.len()).saturating_sub(BODY_FREE_BYTES) - buf.len().saturating_sub(BODY_FREE_BYTES);
        if budget.take(&mut hold, counted, deadline.at(buf.len())).await.is_err() {
            return Err(ApiError::BodyTimeout(format!(
                "the server holds --max-buffered-body-bytes ({} bytes) of other request bodies and none \
                 was freed in time; retry later",
                budget.total()
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), hold))
}

/// After a body goes over `--max-body-bytes`, how much more of it is read (and dropped) before the
/// 413 goes out, and for how long at most. A client that sends the whole body before it reads the
/// answer (most do) would otherwise find the connection closed under it mid-send ("broken pipe")
/// and never see the 413; past these bounds the server answers and closes anyway.
const OVERLIMIT_DRAIN_BYTES: usize = 64 << 20;
const OVERLIMIT_DRAIN_TIME: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then lets open requests
/// finish (idle connections close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER_BYTES);
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: the kernel's backlog holds the next clients.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("internvl-serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut stop = stop_rx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _open = metrics.connection_opened();
            tokio::pin!(conn);
            // The watch guard must not live across an await (it is not Send).
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {},
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it ends.
    let n = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(n).await;
}
