//! A fixed set of sessions (one engine [`Chat`] each: a KV cache and a compute scheduler) and a
//! bounded, first-come-first-served queue in front of them.
//!
//! A request holds one session from start to end. When every session is busy it waits, at most
//! `queue_timeout`, behind at most `max_queue` others; beyond that it is refused at once. A session
//! keeps its KV cache between requests, so a request whose prompt starts like the previous one of
//! that session (same system message, same first image: a robot asking several questions about one
//! frame) only prefills what differs; [`Pool::acquire`] therefore prefers the idle session that last
//! saw the request's first image, and sends text-only requests to sessions that hold no image. Image
//! embeddings are shared by all sessions
//! ([`SharedEmbeddingCache`]), so an image is encoded once whichever session gets it.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use internvl::engine::{Chat, ChatParams, EngineError, ImageKey, Model, SharedEmbeddingCache};

use crate::error::ApiError;

/// Sizes of the pool and its queue.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub sessions: usize,
    /// Requests allowed to wait for a session (0: refuse when all are busy).
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

struct Slot {
    chat: Chat,
    id: usize,
    /// First image of the last prompt this session evaluated (its KV cache starts with it).
    first_image: Option<ImageKey>,
    last_used: u64,
}

/// The sessions and the queue.
pub struct Pool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Slot>>,
    waiting: AtomicUsize,
    clock: AtomicU64,
    cfg: PoolConfig,
    model: Model,
    chat_params: ChatParams,
    images: SharedEmbeddingCache,
}

impl Pool {
    /// Opens every session now, so that a lack of memory shows at start-up, not under load.
    pub fn new(
        model: Model,
        chat_params: ChatParams,
        images: SharedEmbeddingCache,
        cfg: PoolConfig,
    ) -> Result<Arc<Pool>, EngineError> {
        if cfg.sessions == 0 {
            return Err(EngineError::Param("at least one session is needed (--parallel)".into()));
        }
        let mut slots = Vec::with_capacity(cfg.sessions);
        for id in 0..cfg.sessions {
            let mut chat = model.chat(chat_params.clone())?;
            chat.share_image_cache(images.clone());
            slots.push(Slot {
                chat,
                id,
                first_image: None,
                last_used: 0,
            });
        }
        Ok(Arc::new(Pool {
            permits: Arc::new(Semaphore::new(cfg.sessions)),
            idle: Mutex::new(slots),
            waiting: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            cfg,
            model,
            chat_params,
            images,
        }))
    }

    pub fn sessions(&self) -> usize {
        self.cfg.sessions
    }
    /// Sessions running a request now.
    pub fn busy(&self) -> usize {
        self.cfg.sessions.saturating_sub(self.permits.available_permits())
    }
    /// Requests waiting for a session now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
    pub fn images(&self) -> &SharedEmbeddingCache {
        &self.images
    }
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Waits for a session (see the module docs); `prefer` is the request's first image.
    pub async fn acquire(self: &Arc<Self>, prefer: Option<ImageKey>) -> Result<Lease, ApiError> {
        // tokio's semaphore is fair: a free permit goes to the longest waiter, so trying first
        // cannot jump the queue.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let before = self.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Decrement(&self.waiting);
                if before >= self.cfg.max_queue {
                    return Err(ApiError::QueueFull {
                        sessions: self.cfg.sessions,
                        limit: self.cfg.max_queue,
                    });
                }
                match tokio::time::timeout(self.cfg.queue_timeout, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(ApiError::Internal("the session pool is closed".into())),
                    Err(_) => {
                        return Err(ApiError::QueueTimeout {
                            secs: self.cfg.queue_timeout.as_secs_f64(),
                        })
                    }
                }
            }
        };
        let slot = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let lru = |keep: &dyn Fn(&Slot) -> bool| {
                idle.iter()
                    .enumerate()
                    .filter(|(_, s)| keep(s))
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(i, _)| i)
            };
            let pick = match prefer {
                // The session that holds this image's rows, else the least recently used one.
                Some(k) => idle
                    .iter()
                    .position(|s| s.first_image == Some(k))
                    .or_else(|| lru(&|_| true)),
                // A text-only request goes where it evicts no image, if it can.
                None => lru(&|s| s.first_image.is_none()).or_else(|| lru(&|_| true)),
            };
            pick.map(|i| idle.swap_remove(i))
        };
        // Permits and idle sessions are equal in number; a missing session means one was lost.
        let slot = slot.ok_or_else(|| ApiError::Internal("no idle session although a permit was free".into()))?;
        Ok(Lease {
            pool: self.clone(),
            slot: Some(slot),
            _permit: permit,
            healthy: false,
        })
    }

    fn put_back(&self, mut slot: Slot, healthy: bool) {
        if !healthy {
            // After an engine error or a panic the KV cache may not match its description: start
            // this session afresh (a new chat; failing that, cleared caches).
            match self.model.chat(self.chat_params.clone()) {
                Ok(mut chat) => {
                    chat.share_image_cache(self.images.clone());
                    slot.chat = chat;
                }
                Err(_) => slot.chat.clear_caches(),
            }
            slot.first_image = None;
        }
        slot.chat.reset();
        slot.last_used = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One session, held until dropped (then it goes back to the pool and the next waiter gets it).
/// Unless [`Lease::finish`] is called, the session is assumed damaged and rebuilt.
pub struct Lease {
    pool: Arc<Pool>,
    slot: Option<Slot>,
    // Dropped after `Drop::drop` has put the session back.
    _permit: OwnedSemaphorePermit,
    healthy: bool,
}

impl Lease {
    pub fn chat(&mut self) -> Option<&mut Chat> {
        self.slot.as_mut().map(|s| &mut s.chat)
    }
    pub fn session_id(&self) -> usize {
        self.slot.as_ref().map_or(usize::MAX, |s| s.id)
    }
    /// The session ended its request in a known state; its KV cache starts with `first_image`.
    pub fn finish(&mut self, first_image: Option<ImageKey>) {
        self.healthy = true;
        if let Some(s) = self.slot.as_mut() {
            s.first_image = first_image;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.put_back(slot, self.healthy);
        }
    }
}
