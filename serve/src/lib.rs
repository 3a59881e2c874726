//! `internvl-serve`: an OpenAI-compatible HTTP server for the internvl runtime (see docs/server.md).
//!
//! Modules: `api` (the request: parsing, checks, messages onto turns), `images` (data:, file and
//! http(s) image URLs, under limits), `pool` (sessions and the queue), `worker` (one generation on a
//! blocking thread), `stop` (the engine's stop sequences, re-exported), `server` (routes, authentication,
//! JSON and server-sent-event responses), `error` (OpenAI's error shape).
pub mod api;
pub mod error;
pub mod images;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod remote;
pub mod server;
pub use internvl::stop;
pub mod worker;

pub use error::ApiError;
pub use server::{router, AppState, Config};
