//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4). Written here rather than
//! with a metrics crate: a dozen series, counters and gauges are atomics, and the two histograms
//! have fixed buckets; the format is a few lines per series (a test parses it with
//! `prometheus-parse`).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use internvl::engine::TurnStats;

/// A histogram over seconds with fixed upper bounds.
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<AtomicU64>,
    /// Sum in microseconds (an integer keeps it atomic).
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| s <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }
}

const TTFT_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const TPOT_BOUNDS: &[f64] = &[0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28];

/// Everything `/metrics` counts (the gauges it reads from the pool at scrape time).
pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    tiles_encoded: AtomicU64,
    tiles_cached: AtomicU64,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    ttft: Histogram,
    tpot: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            by_status: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            tiles_encoded: AtomicU64::new(0),
            tiles_cached: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            tpot: Histogram::new(TPOT_BOUNDS),
        }
    }
}

/// Counts an open connection until dropped.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the pool and the server report at scrape time.
pub struct Gauges {
    pub sessions: usize,
    pub sessions_busy: usize,
    pub queue_length: usize,
    pub image_cache_images: usize,
    pub image_cache_bytes: usize,
    pub body_bytes_held: usize,
    pub rss_bytes: Option<u64>,
}

impl Metrics {
    pub fn response(&self, status: u16) {
        *self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_insert(0) += 1;
    }

    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// A finished generation.
    pub fn completion(&self, s: &TurnStats) {
        self.prompt_tokens.fetch_add(s.prompt_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(s.generated_tokens as u64, Ordering::Relaxed);
        self.tiles_encoded.fetch_add(s.tiles_encoded as u64, Ordering::Relaxed);
        self.tiles_cached.fetch_add(s.tiles_cached as u64, Ordering::Relaxed);
        if s.generated_tokens > 0 {
            self.ttft.observe(s.time_to_first_token);
        }
        // The first token's time is in TTFT; the decode time covers the tokens after it.
        if s.generated_tokens > 1 {
            self.tpot.observe(s.decode / (s.generated_tokens as u32 - 1));
        }
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        one(
            "internvl_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished completions (reused ones included).",
            load(&self.prompt_tokens),
        );
        one(
            "internvl_completion_tokens_total",
            "counter",
            "Tokens generated by finished completions.",
            load(&self.completion_tokens),
        );
        one(
            "internvl_queue_length",
            "gauge",
            "Requests waiting for a session.",
            g.queue_length.to_string(),
        );
        one(
            "internvl_sessions",
            "gauge",
            "Sessions (--parallel).",
            g.sessions.to_string(),
        );
        one(
            "internvl_sessions_busy",
            "gauge",
            "Sessions running a request.",
            g.sessions_busy.to_string(),
        );
        one(
            "internvl_image_cache_images",
            "gauge",
            "Images in the shared embedding cache.",
            g.image_cache_images.to_string(),
        );
        one(
            "internvl_image_cache_bytes",
            "gauge",
            "Bytes of the shared embedding cache.",
            g.image_cache_bytes.to_string(),
        );
        one(
            "internvl_connections_open",
            "gauge",
            "Open HTTP connections (--max-connections caps them).",
            load(&self.connections_open),
        );
        one(
            "internvl_connections_total",
            "counter",
            "HTTP connections accepted.",
            load(&self.connections_total),
        );
        one(
            "internvl_request_body_bytes_held",
            "gauge",
            "Request-body bytes held in memory (--max-buffered-body-bytes caps them).",
            g.body_bytes_held.to_string(),
        );
        if let Some(rss) = g.rss_bytes {
            one(
                "process_resident_memory_bytes",
                "gauge",
                "Resident set size of the server process.",
                rss.to_string(),
            );
        }
        let _ = writeln!(
            out,
            "# HELP internvl_image_tiles_total Image tiles of finished completions, by where their embeddings came from (cached: image cache hits).\n# TYPE internvl_image_tiles_total counter"
        );
        let _ = writeln!(
            out,
            "internvl_image_tiles_total{{source=\"encoded\"}} {}",
            load(&self.tiles_encoded)
        );
        let _ = writeln!(
            out,
            "internvl_image_tiles_total{{source=\"cached\"}} {}",
            load(&self.tiles_cached)
        );
        let _ = writeln!(
            out,
            "# HELP internvl_requests_total HTTP responses, by status code.\n# TYPE internvl_requests_total counter"
        );
        for (status, n) in self.by_status.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "internvl_requests_total{{status=\"{status}\"}} {n}");
        }
        self.ttft.write(
            &mut out,
            "internvl_time_to_first_token_seconds",
            "From the start of evaluation (after the queue) to the first generated token.",
        );
        self.tpot.write(
            &mut out,
            "internvl_time_per_output_token_seconds",
            "Per completion: decode time divided by the tokens after the first (one observation per completion).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.write(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_sum 5.55\nx_count 3\n"), "{s}");
    }
}
