//! Slow clients on loopback (ignored by default; bounded: at most ~75 s, 550 sockets; run by hand):
//!
//! ```text
//! cargo test --release -p internvl-serve --test slow_clients -- --ignored --nocapture
//! ```
//!
//! 500 connections send request headers one byte per second and 50 clients start a 20 MiB body
//! (1 MiB at once, then 1 KiB per second; 50 MiB in all against a budget of 32 MiB). Meanwhile normal requests are timed against the same
//! requests on the quiet server. Checks: the normal requests take at most 2x their quiet time, every
//! slow connection is closed by the server's timeouts, and the server's resident memory stays under
//! its idle resident size plus the configured bound (`--max-buffered-body-bytes` + 128 KiB per
//! connection). Prints the figures.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const SLOW_HEADERS: usize = 500;
const SLOW_BODIES: usize = 50;
const BODY_BYTES: usize = 20 << 20;
const BURST: usize = 1 << 20;
/// Below the 50 MiB of the bursts: some bodies wait for room.
const MAX_BUFFERED: usize = 32 << 20;
const MAX_CONNECTIONS: usize = 1000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed_requests(url: &str, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let r = post(url, &ask(&format!("Question {i}: what is a robot?"), 8));
            assert_eq!(r.status, 200, "{}", r.body);
            t.elapsed()
        })
        .collect()
}

/// A slow client: a socket and what it still has to send.
struct Slow {
    sock: TcpStream,
    rest: Vec<u8>,
    per_tick: usize,
    closed_at: Option<Duration>,
}

fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // A response (the 408) is fine: keep reading until the close.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
#[ignore = "load figure: 550 sockets for up to ~75 s; run by hand"]
fn slow_clients_do_not_starve_normal_ones() {
    let max_conn = MAX_CONNECTIONS.to_string();
    let max_buf = MAX_BUFFERED.to_string();
    let s = Server::start(&[
        "--max-connections",
        &max_conn,
        "--max-buffered-body-bytes",
        &max_buf,
        "--max-body-bytes",
        &(BODY_BYTES + 1024).to_string(),
        "--metrics-public",
    ]);
    let url = s.url("/v1/chat/completions");
    let addr = s.base.trim_start_matches("http://").to_owned();
    // Warm-up, then the quiet figure.
    timed_requests(&url, 3);
    let quiet = median(timed_requests(&url, 7));
    let rss_idle = s.rss_kib().expect("rss") * 1024;
    // The bound of docs/server.md: the budget, and per connection its read buffer and the uncounted start of a body.
    let bound = rss_idle + (MAX_BUFFERED + MAX_CONNECTIONS * (128 << 10)) as u64;

    let t0 = Instant::now();
    let mut slow: Vec<Slow> = Vec::new();
    let header = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n".to_vec();
    for _ in 0..SLOW_HEADERS {
        let sock = TcpStream::connect(&addr).expect("connect");
        sock.set_nonblocking(true).unwrap();
        slow.push(Slow {
            sock,
            rest: header.clone(),
            per_tick: 1,
            closed_at: None,
        });
    }
    for _ in 0..SLOW_BODIES {
        let mut sock = TcpStream::connect(&addr).expect("connect");
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut rest = vec![b' '; BODY_BYTES];
        // The burst goes out as fast as the server takes it.
        let mut sent = 0;
        let burst_end = Instant::now() + Duration::from_millis(200);
        while sent < BURST && Instant::now() < burst_end {
            match sock.write(&rest[sent..BURST]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break,
            }
        }
        rest.drain(..sent);
        slow.push(Slow {
            sock,
            rest,
            per_tick: 1024,
            closed_at: None,
        });
    }
    let opened = t0.elapsed();

    // One thread ticks the slow clients once a second and samples the server's RSS.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pid = s.pid();
    let ticker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            let mut next_tick = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|st| {
                        st.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
                    })
                {
                    peak = peak.max(kib * 1024);
                }
                if Instant::now() >= next_tick {
                    next_tick += Duration::from_secs(1);
                    for c in slow.iter_mut().filter(|c| c.closed_at.is_none()) {
                        let n = c.per_tick.min(c.rest.len());
                        let wrote = c.sock.write(&c.rest[..n]);
                        if matches!(&wrote, Err(e) if e.kind() != ErrorKind::WouldBlock) || closed_by_peer(&mut c.sock)
                        {
                            c.closed_at = Some(t0.elapsed());
                        } else if let Ok(k) = wrote {
                            c.rest.drain(..k);
                        }
                    }
                    if slow.iter().all(|c| c.closed_at.is_some()) {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (slow, peak)
        })
    };

    // Normal requests while the slow clients hold their connections (the first 10 s).
    std::thread::sleep(Duration::from_secs(1));
    let t_busy = Instant::now();
    let busy = timed_requests(&url, 7);
    let busy_window = t_busy.elapsed();
    let busy_median = median(busy.clone());
    let (_, metrics_text) = {
        let r = agent().get(&s.url("/metrics")).call().expect("metrics");
        (r.status(), r.into_string().unwrap_or_default())
    };
    let open_during = metrics_text
        .lines()
        .find(|l| l.starts_with("internvl_connections_open "))
        .unwrap_or("")
        .to_owned();
    let (slow, peak) = ticker.join().expect("ticker");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let headers_closed: Vec<Duration> = slow[..SLOW_HEADERS].iter().filter_map(|c| c.closed_at).collect();
    let bodies_closed: Vec<Duration> = slow[SLOW_HEADERS..].iter().filter_map(|c| c.closed_at).collect();
    let max_of = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    eprintln!(
        "figures: opened {} slow-header and {} slow-body connections in {:.1} s; {}",
        SLOW_HEADERS,
        SLOW_BODIES,
        opened.as_secs_f64(),
        open_during
    );
    eprintln!(
        "figures: normal request median quiet {:.0} ms, under the slow clients {:.0} ms ({:.2}x; {} requests in {:.1} s)",
        quiet.as_secs_f64() * 1e3,
        busy_median.as_secs_f64() * 1e3,
        busy_median.as_secs_f64() / quiet.as_secs_f64(),
        busy.len(),
        busy_window.as_secs_f64()
    );
    eprintln!(
        "figures: closed by the server: {}/{} slow-header connections (last at {:.1} s), {}/{} slow bodies (last at {:.1} s)",
        headers_closed.len(),
        SLOW_HEADERS,
        max_of(&headers_closed).as_secs_f64(),
        bodies_closed.len(),
        SLOW_BODIES,
        max_of(&bodies_closed).as_secs_f64()
    );
    eprintln!(
        "figures: server RSS idle {:.1} MiB, peak sampled {:.1} MiB, bound {:.1} MiB (idle + {} MiB bodies + {} x 128 KiB)",
        rss_idle as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        bound as f64 / 1048576.0,
        MAX_BUFFERED >> 20,
        MAX_CONNECTIONS
    );
    assert!(busy_median <= quiet * 2, "{busy_median:?} vs quiet {quiet:?}");
    assert_eq!(headers_closed.len(), SLOW_HEADERS, "slow-header connections left open");
    assert_eq!(bodies_closed.len(), SLOW_BODIES, "slow bodies left open");
    assert!(peak <= bound, "peak RSS {peak} over the bound {bound}");
    assert_eq!(get(&s.url("/health"), None).status, 200);
}
