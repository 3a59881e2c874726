//! What clients cannot do to the server (short limits, so each test takes seconds): slow headers,
//! idle keep-alive connections, slow bodies, too many connections, too many body bytes at once;
//! keys (several, from a file, never empty); `/metrics` read by a Prometheus text parser.
//! Everything runs on 127.0.0.1.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value as PValue};

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes or `limit` passes; returns what came and whether it closed.
fn read_until_closed(c: &mut TcpStream, limit: Duration) -> (String, bool) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn slow_headers_and_idle_keep_alive_are_closed_by_the_header_timeout() {
    let s = Server::start(&["--header-timeout", "1"]);
    // One byte every 200 ms: still inside the headers when the second runs out.
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    let t0 = Instant::now();
    let mut closed_at = None;
    for b in b"GET /health HTTP/1.1\r\nHost: x\r\n".iter() {
        if c.write_all(&[*b]).is_err() {
            closed_at = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let (_, closed) = read_until_closed(&mut c, Duration::from_millis(1));
        if closed {
            closed_at = Some(t0.elapsed());
            break;
        }
    }
    let at = closed_at.expect("the slow connection was closed");
    assert!(
        at >= Duration::from_millis(900) && at < Duration::from_secs(3),
        "{at:?}"
    );

    // Keep-alive: one request answered, then the idle connection is closed after the same timeout.
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t0 = Instant::now();
    let (got, closed) = read_until_closed(&mut c, Duration::from_secs(4));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(closed, "the idle connection stayed open");
    assert!(t0.elapsed() >= Duration::from_millis(900), "{:?}", t0.elapsed());
}

#[test]
fn a_body_below_the_minimum_rate_gets_a_408_and_the_connection_closes() {
    let s = Server::start(&["--body-timeout", "1", "--min-body-rate", "10000"]);
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    c.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"mess",
    )
    .unwrap();
    let t0 = Instant::now();
    let (got, closed) = read_until_closed(&mut c, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.contains("request_timeout") && got.contains("--min-body-rate"),
        "{got}"
    );
    assert!(closed, "the connection stayed open after the 408");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The server still answers.
    assert_eq!(get(&s.url("/health"), None).status, 200);
}

#[test]
fn at_the_connection_cap_new_clients_wait_for_a_free_slot() {
    let s = Server::start(&["--max-connections", "2", "--header-timeout", "2"]);
    // Two silent connections take both slots until the header timeout closes them.
    let _a = TcpStream::connect(addr(&s)).unwrap();
    let _b = TcpStream::connect(addr(&s)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(&mut c, Duration::from_secs(6));
    let waited = t0.elapsed();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // Not served before a slot was freed (~1.8 s from now), then served at once.
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // Without the cap's wait, the same request is answered in milliseconds.
    let t0 = Instant::now();
    assert_eq!(get(&s.url("/health"), None).status, 200);
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// `/metrics` as the parser sees it.
fn scrape(url: &str, key: Option<&str>) -> (u16, Scrape) {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => {
            return (
                code,
                Scrape {
                    docs: Default::default(),
                    samples: vec![],
                },
            )
        }
        Err(e) => panic!("{e}"),
    };
    assert!(resp.content_type().starts_with("text/plain"));
    let text = resp.into_string().unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format");
    (200, scrape)
}

fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?} in {:?}", s.samples));
    match &sample.value {
        PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
        PValue::Histogram(h) => h.last().map_or(0.0, |b| b.count),
        PValue::Summary(_) => panic!("{name} is a summary"),
    }
}

#[test]
fn keys_several_from_a_file_never_empty_and_metrics_behind_them() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# robots\nrobot-key-1\n\nrobot-key-2\n").unwrap();
    let s = Server::start(&["--api-key", "admin-key", "--api-key-file", keys.to_str().unwrap()]);
    assert!(s.log().contains("3 API keys accepted"), "{}", s.log());
    assert!(!s.log().contains("robot-key"), "{}", s.log());
    let url = s.url("/v1/chat/completions");
    let body = ask("hi", 4).to_string();
    for k in ["admin-key", "robot-key-1", "robot-key-2"] {
        assert_eq!(post_raw(&url, body.as_bytes(), Some(k)).status, 200, "{k}");
    }
    assert_eq!(post_raw(&url, body.as_bytes(), Some("# robots")).status, 401);
    assert_eq!(post_raw(&url, body.as_bytes(), Some("robot-key-3")).status, 401);

    // /metrics needs a key here; scraped, it parses and counts what happened.
    assert_eq!(scrape(&s.url("/metrics"), None).0, 401);
    let (code, m) = scrape(&s.url("/metrics"), Some("robot-key-1"));
    assert_eq!(code, 200);
    assert_eq!(value(&m, "internvl_requests_total", Some(("status", "200"))), 3.0);
    // The two 401s and the 401 of the keyless scrape.
    assert_eq!(value(&m, "internvl_requests_total", Some(("status", "401"))), 3.0);
    assert_eq!(value(&m, "internvl_completion_tokens_total", None), 12.0);
    assert!(value(&m, "internvl_prompt_tokens_total", None) > 3.0);
    assert_eq!(value(&m, "internvl_time_to_first_token_seconds", None), 3.0);
    assert_eq!(value(&m, "internvl_time_per_output_token_seconds", None), 3.0);
    assert_eq!(value(&m, "internvl_sessions_busy", None), 0.0);
    assert_eq!(value(&m, "internvl_queue_length", None), 0.0);
    assert_eq!(value(&m, "internvl_image_tiles_total", Some(("source", "cached"))), 0.0);
    assert!(value(&m, "process_resident_memory_bytes", None) > 1e6);
    assert!(value(&m, "internvl_connections_total", None) >= 6.0);
    drop(s);

    // An image that comes back on the other session: its tiles come from the shared cache (the
    // sequence of image_embeddings_are_shared_across_sessions in http.rs).
    let s = Server::start(&["--metrics-public", "--parallel", "2"]);
    let url = s.url("/v1/chat/completions");
    let (x, y) = (data_url(&test_image(64, 64, 2)), data_url(&test_image(64, 64, 3)));
    assert_eq!(post(&url, &ask_image("first", &x, 2)).status, 200);
    assert_eq!(post(&url, &ask("text only", 2)).status, 200);
    assert_eq!(post(&url, &ask_image("other frame", &y, 2)).status, 200);
    let (_, m) = scrape(&s.url("/metrics"), None);
    assert_eq!(value(&m, "internvl_image_tiles_total", Some(("source", "cached"))), 0.0);
    assert_eq!(post(&url, &ask_image("first frame again", &x, 2)).status, 200);
    let (code, m) = scrape(&s.url("/metrics"), None);
    assert_eq!(code, 200);
    let encoded = value(&m, "internvl_image_tiles_total", Some(("source", "encoded")));
    let cached = value(&m, "internvl_image_tiles_total", Some(("source", "cached")));
    // x's tiles were encoded once and served once from the cache; y's were encoded.
    assert!(
        cached >= 1.0 && encoded == 2.0 * cached,
        "encoded {encoded}, cached {cached}"
    );
    drop(s);

    // An empty key (an unset variable in a service file) refuses to start, whichever way it comes.
    let model = tiny_gguf();
    for (args, env) in [(vec!["--api-key", ""], None), (vec![], Some(""))] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_internvl-serve"));
        cmd.arg("-m").arg(&model).args(["--port", "0"]).args(&args);
        if let Some(v) = env {
            cmd.env("INTERNVL_API_KEY", v);
        } else {
            cmd.env_remove("INTERNVL_API_KEY");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?}: started");
        assert!(err.contains("is empty"), "{err}");
    }
}

#[test]
fn request_bodies_held_at_once_stay_under_the_budget() {
    let s = Server::start(&[
        "--max-body-bytes",
        "200000",
        "--max-buffered-body-bytes",
        "200000",
        "--body-timeout",
        "2",
        "--min-body-rate",
        "1000000",
        "--metrics-public",
    ]);
    let head = |n: usize| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n")
    };
    // The first 64 KiB of each body are not counted (text requests never wait); the rest is.
    let free = 65_536.0;
    // A sends 190000 bytes of a 200000-byte body and stalls: it holds 190000 - 64 KiB until its deadline.
    let mut a = TcpStream::connect(addr(&s)).unwrap();
    a.write_all(head(200_000).as_bytes()).unwrap();
    a.write_all(&vec![b' '; 190_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // B sends a whole 190000-byte body: it does not fit beside A's, so B waits.
    let mut b = TcpStream::connect(addr(&s)).unwrap();
    let t_b = Instant::now();
    b.write_all(head(190_000).as_bytes()).unwrap();
    b.write_all(&vec![b' '; 190_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A small request is not held up.
    let t_small = Instant::now();
    assert_eq!(post(&s.url("/v1/chat/completions"), &ask("hi", 2)).status, 200);
    assert!(t_small.elapsed() < Duration::from_secs(1), "{:?}", t_small.elapsed());
    let (_, m) = scrape(&s.url("/metrics"), None);
    let held = value(&m, "internvl_request_body_bytes_held", None);
    assert!((190_000.0 - free..=200_000.0).contains(&held), "{held}");
    let (got, _) = read_until_closed(&mut b, Duration::from_millis(300));
    assert!(got.is_empty(), "B was answered while A held the budget: {got}");
    // A's deadline (2 s) passes, A gets its 408, B gets its bytes and its answer (a 400: blanks are not JSON).
    let (got_a, _) = read_until_closed(&mut a, Duration::from_secs(4));
    assert!(got_a.starts_with("HTTP/1.1 408"), "{got_a}");
    let (got_b, _) = read_until_closed(&mut b, Duration::from_secs(4));
    assert!(got_b.starts_with("HTTP/1.1 400"), "{got_b}");
    assert!(t_b.elapsed() >= Duration::from_millis(1200), "{:?}", t_b.elapsed());
    let (_, m) = scrape(&s.url("/metrics"), None);
    assert_eq!(value(&m, "internvl_request_body_bytes_held", None), 0.0);
}

#[test]
fn bad_limit_flags_are_refused_at_start() {
    let model = tiny_gguf();
    for (args, msg) in [
        (
            vec!["--max-body-bytes", "1000", "--max-buffered-body-bytes", "999"],
            "below --max-body-bytes",
        ),
        (vec!["--header-timeout", "0"], "--header-timeout"),
        (vec!["--max-connections", "0"], "--max-connections"),
        (vec!["--min-body-rate", "0"], "--min-body-rate"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_internvl-serve"))
            .arg("-m")
            .arg(&model)
            .args(["--port", "0"])
            .args(&args)
            .env_remove("INTERNVL_API_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(msg), "{args:?}: {err}");
    }
}
