//! Load figure (ignored by default; run by hand):
//!
//! ```text
//! LOAD_CLIENTS=4 LOAD_SECS=60 cargo test --release -p internvl-serve --test load -- --ignored --nocapture
//! ```
//!
//! N clients on 127.0.0.1 send requests back to back for a fixed time against a server on the tiny
//! synthetic model (2 sessions, queue 16): half text-only, half with the same camera frame and a
//! different question (the robot case). Prints requests served, errors, latency percentiles and the
//! server's RSS before and after. Stops by itself.
mod common;

use std::time::{Duration, Instant};

use common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
#[ignore = "load figure: minutes of CPU; run by hand"]
fn load() {
    let clients = env_or("LOAD_CLIENTS", 4) as usize;
    let secs = env_or("LOAD_SECS", 60);
    let max_tokens = env_or("LOAD_MAX_TOKENS", 16) as usize;
    let sessions = env_or("LOAD_SESSIONS", 2).to_string();
    let s = Server::start(&["--parallel", &sessions, "--queue", "16"]);
    let url = s.url("/v1/chat/completions");
    let frame = data_url(&test_image(640, 480, 11));
    let rss_start = s.rss_kib();
    // Warm up every session with an image and with text, so that "before" includes the compute
    // buffers that the first image and the first prefill allocate.
    std::thread::scope(|sc| {
        for i in 0..sessions.parse::<usize>().unwrap_or(1) {
            let (url, frame) = (&url, &frame);
            sc.spawn(move || assert_eq!(post(url, &ask_image(&format!("warm up {i}"), frame, 2)).status, 200));
        }
    });
    assert_eq!(post(&url, &ask("warm up", 2)).status, 200);
    let rss_before = s.rss_kib();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // Several rounds (LOAD_ROUNDS) show whether memory keeps growing or levels off.
    let rounds = env_or("LOAD_ROUNDS", 1);
    let mut results: Vec<(Vec<Duration>, Vec<String>)> = Vec::new();
    let mut rss_rounds = Vec::new();
    for _ in 0..rounds {
        results.extend(round(clients, secs, max_tokens, &url, &frame));
        rss_rounds.push(s.rss_kib());
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rss_after = s.rss_kib();
    let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    lat.sort();
    let errors: Vec<&String> = results.iter().flat_map(|r| r.1.iter()).collect();
    let health = get(&s.url("/health"), None).body;
    let secs = secs * rounds;
    println!("load: {clients} clients x {secs} s, {sessions} sessions, max_tokens {max_tokens}, tiny model");
    println!(
        "served {} requests ({:.1}/s), errors {}",
        lat.len(),
        lat.len() as f64 / secs as f64,
        errors.len()
    );
    if !errors.is_empty() {
        println!("first errors: {:?}", &errors[..errors.len().min(5)]);
    }
    println!(
        "latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("server RSS at start {rss_start:?} KiB, after warm-up (before load) {rss_before:?} KiB, after load {rss_after:?} KiB (after each round: {rss_rounds:?})");
    println!("image cache: {}", health["image_cache"]);
    println!("loadavg before: {}loadavg after:  {}", load_before, load_after);
    assert!(!lat.is_empty(), "nothing was served");
    assert!(errors.is_empty(), "errors under load: {errors:?}");
    assert!(
        s.log().lines().all(|l| !l.contains(" 500 ")),
        "server errors:\n{}",
        s.log()
    );
}

/// One round: `clients` threads sending requests back to back for `secs` seconds.
fn round(clients: usize, secs: u64, max_tokens: usize, url: &str, frame: &str) -> Vec<(Vec<Duration>, Vec<String>)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                sc.spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = Vec::new();
                    let mut i = 0usize;
                    while Instant::now() < deadline {
                        let body = if i.is_multiple_of(2) {
                            ask(&format!("client {c} question {i}: what do you see?"), max_tokens)
                        } else {
                            ask_image(
                                &format!("client {c} question {i}: where is the door?"),
                                frame,
                                max_tokens,
                            )
                        };
                        let t = Instant::now();
                        let r = post(url, &body);
                        if r.status == 200 {
                            lat.push(t.elapsed());
                        } else {
                            errors.push(format!("{} {}", r.status, r.body["error"]["code"]));
                        }
                        i += 1;
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).collect()
    })
}
