//! Shared test helpers: the tiny synthetic model (the root crate's tests/common, compiled in here), a
//! server process on 127.0.0.1 with an ephemeral port, and a small HTTP client (ureq) with time limits.
//! Nothing here talks to anything but loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

// The tiny-model builder is the root crate's own (one copy of the converter lookup, the cache and its
// freshness rules).
#[path = "../../../tests/common/mod.rs"]
mod root;

/// The tiny model as a q8_0 GGUF, cached under target/release/test-models (shared with the root tests).
pub fn tiny_gguf() -> PathBuf {
    root::tiny_gguf(42, "q8_0", &[])
}

/// An `internvl-serve` process on 127.0.0.1 (ephemeral port), killed when dropped.
pub struct Server {
    child: Child,
    /// Kept open: the server printed its address here.
    _stdout: BufReader<ChildStdout>,
    pub base: String,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// Starts the server on the tiny model with one thread per session, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(&tiny_gguf(), extra)
    }

    pub fn start_with(model: &Path, extra: &[&str]) -> Server {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_internvl-serve"))
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0", "-t", "1", "-v"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("start internvl-serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // The first line names the address; the server prints nothing else on stdout.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let n = stdout.read_line(&mut line);
            let _ = tx.send((n.is_ok(), line));
            stdout
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((true, line)) if !line.is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(log.path()).unwrap_or_default();
                panic!("internvl-serve did not start ({other:?}); its stderr:\n{log}");
            }
        };
        let stdout = reader.join().expect("reader thread");
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        assert!(base.starts_with("http://127.0.0.1:"), "{line}");
        Server {
            child,
            _stdout: stdout,
            base,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Resident memory of the server process (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client with time limits, so that a hung server fails the test instead of hanging it.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
}

/// A response: status, headers of interest, JSON body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

fn into_resp(r: Result<ureq::Response, ureq::Error>) -> Resp {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(str::to_owned);
    let ctype = resp.header("content-type").unwrap_or("").to_owned();
    let text = resp.into_string().expect("body");
    assert!(
        ctype.starts_with("application/json"),
        "status {status}, content-type {ctype:?}: {text}"
    );
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Resp {
        status,
        retry_after,
        body,
    }
}

pub fn get(url: &str, key: Option<&str>) -> Resp {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    into_resp(req.call())
}

/// POSTs raw bytes as JSON.
pub fn post_raw(url: &str, body: &[u8], key: Option<&str>) -> Resp {
    let mut req = agent().post(url).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    into_resp(req.send_bytes(body))
}

pub fn post(url: &str, body: &Value) -> Resp {
    post_raw(url, body.to_string().as_bytes(), None)
}

/// The assistant's text of a successful response.
pub fn content(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned()
}

/// An open server-sent-event stream.
pub struct Events {
    reader: BufReader<Box<dyn Read + Send + Sync>>,
}

impl Events {
    /// The next `data:` payload (`None` at the end of the stream).
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(d) = line.trim_end_matches(['\r', '\n']).strip_prefix("data: ") {
                return Some(d.to_owned());
            }
        }
    }

    /// Every remaining payload.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }
}

/// Starts a streaming request; panics unless the server answers 200 with an event stream.
pub fn stream(url: &str, body: &Value) -> Events {
    let resp = agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => panic!("stream refused: {code} {}", r.into_string().unwrap_or_default()),
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    assert_eq!(resp.content_type(), "text/event-stream");
    Events {
        reader: BufReader::new(resp.into_reader()),
    }
}

/// A chat request with one user message.
pub fn ask(text: &str, max_tokens: usize) -> Value {
    serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})
}

/// A test image: a colour gradient (different `salt`, different pixels).
pub fn test_image(w: u32, h: u32, salt: u8) -> internvl::image::RgbImage {
    internvl::image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            salt.wrapping_mul(37).wrapping_add((x ^ y) as u8),
        ])
    })
}

pub fn png_bytes(rgb: &internvl::image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Png).expect("png");
    out.into_inner()
}

pub fn data_url(rgb: &internvl::image::RgbImage) -> String {
    use base64::Engine as _;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_bytes(rgb))
    )
}

/// A user message with text and one image URL (OpenAI's content-parts form).
pub fn ask_image(text: &str, url: &str, max_tokens: usize) -> Value {
    serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}}
        ]}],
        "max_tokens": max_tokens
    })
}

/// Polls `/health` until `pred` holds or `limit` passes; returns the last health body.
pub fn wait_health(s: &Server, limit: Duration, pred: impl Fn(&Value) -> bool) -> (bool, Value) {
    let start = Instant::now();
    loop {
        let h = get(&s.url("/health"), None).body;
        if pred(&h) {
            return (true, h);
        }
        if start.elapsed() > limit {
            return (false, h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Serves `body` once (or `n` times) on a loopback port: a stand-in for a remote image host.
pub fn serve_bytes_on_loopback(body: Vec<u8>, n: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = listener.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (format!("http://{addr}/frame.png"), h)
}
