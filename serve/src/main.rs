//! `internvl-serve -m model.gguf --host 127.0.0.1 --port 8080`: see docs/server.md.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use internvl::engine::args::{ModelArgs, SessionArgs};
use internvl::engine::{ChatParams, Model, SharedEmbeddingCache};
use internvl_serve::api::RequestLimits;
use internvl_serve::images::ImagePolicy;
use internvl_serve::keys;
use internvl_serve::limits::{self, ConnLimits};
use internvl_serve::pool::{Pool, PoolConfig};
use internvl_serve::{router, AppState, Config};

/// An OpenAI-compatible HTTP server for InternVL2-1B: POST /v1/chat/completions (text and images,
/// streaming), GET /v1/models, GET /health.
#[derive(Debug, Parser)]
#[command(name = "internvl-serve", version)]
struct Args {
    /// The model GGUF (ours, or a llama.cpp text GGUF with --mmproj).
    #[arg(short = 'm', long, value_name = "FILE")]
    model: PathBuf,
    #[command(flatten)]
    load: ModelArgs,
    /// The model name /v1/models lists (default: the file name without extension).
    #[arg(long, value_name = "NAME")]
    model_id: Option<String>,

    /// Address to listen on. Anything but loopback exposes the server to the network: use --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the chosen address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// API key clients must send as `Authorization: Bearer KEY` (/health stays open). Repeat it for
    /// several keys; an empty key is refused.
    #[arg(long, value_name = "KEY", env = "INTERNVL_API_KEY", hide_env_values = true)]
    api_key: Vec<String>,
    /// A file of API keys, one per line (blank lines and lines starting with `#` are ignored).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,

    /// Sessions: requests evaluated at the same time (each has its own KV cache of --ctx-size).
    #[arg(long, value_name = "N", default_value_t = 2)]
    parallel: usize,
    /// Requests that may wait for a free session; more are refused with 503.
    #[arg(long, value_name = "N", default_value_t = 16)]
    queue: usize,
    /// Seconds a request may wait for a session before it is refused with 503.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    queue_timeout: f64,
    /// Seconds a request may run once it has a session (504 after that).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    timeout: f64,

    #[command(flatten)]
    session: SessionArgs,
    /// Budget of the image-embedding cache shared by all sessions, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    image_cache_mb: usize,

    /// Largest request body in bytes (images inline as base64 count).
    #[arg(long, value_name = "BYTES", default_value_t = 20 << 20)]
    max_body_bytes: usize,
    /// Largest image (width * height), checked before decoding.
    #[arg(long, value_name = "N", default_value_t = 25_000_000)]
    max_image_pixels: u64,
    /// Most images in one request.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_images: usize,
    /// Largest max_tokens a request may ask for; also the value when it asks for none.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_tokens: usize,
    /// Temperature for requests that give none (0: greedy, the model's reference decoding).
    #[arg(long = "temp", value_name = "T", default_value_t = 0.0)]
    temp: f32,

    /// Accept image URLs that are local paths or file:// URLs (read with the server's rights).
    #[arg(long)]
    allow_local_files: bool,
    /// With --allow-local-files: only files under this directory.
    #[arg(long, value_name = "DIR", requires = "allow_local_files")]
    local_files_root: Option<PathBuf>,
    /// Accept http(s) image URLs (the server fetches them: only where it may reach those hosts).
    #[arg(long)]
    allow_remote_urls: bool,
    /// With --allow-remote-urls: also fetch from loopback, private, link-local, CGNAT, multicast and
    /// other non-public addresses (refused by default, after every DNS resolution and redirect).
    #[arg(long, requires = "allow_remote_urls")]
    allow_private_urls: bool,
    /// Seconds a remote image download may take (redirects included).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    remote_timeout: f64,

    /// Connections served at once; at the cap the server stops accepting until one closes.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// Seconds a connection may take to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a request body may take before --min-body-rate applies.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    body_timeout: f64,
    /// Bytes per second a request body must average after --body-timeout (slower: 408).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10)]
    min_body_rate: u64,
    /// Request-body bytes held in memory at once across all requests (at least --max-body-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_buffered_body_bytes: usize,
    /// Serve GET /metrics without the API key.
    #[arg(long)]
    metrics_public: bool,

    /// One line per request on stderr.
    #[arg(short = 'v', long)]
    verbose: bool,
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be a non-negative number of seconds, got {v}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("internvl-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let queue_timeout = seconds("queue-timeout", args.queue_timeout)?;
    let timeout = seconds("timeout", args.timeout)?;
    let remote_timeout = seconds("remote-timeout", args.remote_timeout)?;
    let header_timeout = seconds("header-timeout", args.header_timeout)?;
    let body_timeout = seconds("body-timeout", args.body_timeout)?;
    if header_timeout.is_zero() {
        return Err("--header-timeout must be above 0".into());
    }
    if !(1..=1_000_000).contains(&args.max_connections) {
        return Err(format!(
            "--max-connections must be 1 to 1000000, got {}",
            args.max_connections
        ));
    }
    if args.min_body_rate == 0 {
        return Err("--min-body-rate must be at least 1 byte/s".into());
    }
    if args.max_buffered_body_bytes < args.max_body_bytes {
        return Err(format!(
            "--max-buffered-body-bytes ({}) is below --max-body-bytes ({}): no body of the largest size could be read",
            args.max_buffered_body_bytes, args.max_body_bytes
        ));
    }
    if args.max_tokens == 0 {
        return Err("--max-tokens must be at least 1".into());
    }
    let api_keys = keys::collect(&args.api_key, args.api_key_file.as_deref())?;
    let model = Model::load_on(&args.model, &args.load.load_params(), args.load.device).map_err(|e| e.to_string())?;

    let parallel = args.parallel.max(1);
    let threads = args
        .session
        .threads
        .unwrap_or_else(|| (internvl::session::physical_cores() / parallel).max(1));
    let chat = ChatParams {
        // The shared cache holds the embeddings; each session keeps only its latest image.
        image_cache_bytes: 0,
        ..args.session.chat_params(&model, threads).map_err(|e| e.to_string())?
    };
    // The tiling the sessions use (the model's, with --max-tiles) also bounds what requests may send.
    let tiling = chat.tiling.unwrap_or_else(|| model.tiling());
    let images = SharedEmbeddingCache::new(args.image_cache_mb << 20);
    let pool_cfg = PoolConfig {
        sessions: parallel,
        max_queue: args.queue,
        queue_timeout,
    };
    let pool = Pool::new(model, chat, images, pool_cfg).map_err(|e| e.to_string())?;

    let model_id = args.model_id.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map_or_else(|| "internvl".into(), |s| s.to_string_lossy().into_owned())
    });
    let cfg = Config {
        model_id,
        limits: RequestLimits {
            max_tokens: args.max_tokens,
            default_temperature: args.temp,
            max_images: args.max_images,
        },
        images: ImagePolicy {
            allow_local_files: args.allow_local_files,
            local_root: args.local_files_root.clone(),
            allow_remote_urls: args.allow_remote_urls,
            allow_private_urls: args.allow_private_urls,
            remote_timeout,
            // An encoded image cannot be larger than the body that carries it.
            max_image_bytes: args.max_body_bytes as u64,
            max_pixels: args.max_image_pixels,
            tiling,
        },
        max_body_bytes: args.max_body_bytes,
        timeout,
        api_keys: api_keys.clone(),
        log_requests: args.verbose,
        conn: ConnLimits {
            max_connections: args.max_connections,
            header_timeout,
            body_timeout,
            min_body_rate: args.min_body_rate,
            max_buffered_body_bytes: args.max_buffered_body_bytes,
        },
        metrics_public: args.metrics_public,
    };
    let conn_limits = cfg.conn.clone();
    let state = AppState::new(cfg, pool);
    let metrics = state.metrics();
    let app = router(state);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!(
            "internvl-serve: {} session(s) x {} thread(s), context {}, queue {}, {}",
            parallel,
            threads,
            args.session.ctx_size,
            args.queue,
            keys::describe(api_keys.len())
        );
        eprintln!(
            "internvl-serve: at most {} connections, header timeout {:.0} s, bodies at {} bytes/s after {:.0} s, \
             {} MiB of bodies in memory",
            conn_limits.max_connections,
            conn_limits.header_timeout.as_secs_f64(),
            conn_limits.min_body_rate,
            conn_limits.body_timeout.as_secs_f64(),
            conn_limits.max_buffered_body_bytes >> 20
        );
        // Tests and scripts read this line to learn the port; it comes after the settings on stderr, so that
        // whoever sees it can already read them there (the keys test did, and raced before).
        println!("internvl-serve: listening on http://{addr}");
        limits::serve(listener, app, &conn_limits, metrics, shutdown()).await;
        Ok(())
    })
}

/// Ctrl-C or SIGTERM: stop accepting, finish what is running.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("internvl-serve: shutting down");
}
