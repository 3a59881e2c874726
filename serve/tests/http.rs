//! The server over real HTTP on 127.0.0.1, on the tiny synthetic model: answers are compared with
//! the engine run in-process on the same prompt (greedy or seeded, so they must be identical).
mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;
use internvl::engine::{
    ChatParams, Flow, GenerateParams, Image, LoadParams, Message, Model, Reply, SamplingParams, SessionParams,
};

/// The engine's answer to one message (same settings as the server: default context, one thread).
fn engine_answer(msg: Message, max_tokens: usize, sampling: SamplingParams) -> Reply {
    let model = Model::load(tiny_gguf(), &LoadParams::default()).expect("load tiny model");
    let params = ChatParams {
        session: SessionParams {
            n_threads: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut chat = model.chat(params).expect("chat");
    let gen = GenerateParams {
        max_new_tokens: max_tokens,
        sampling,
        ..Default::default()
    };
    chat.send(msg, &gen, |_| Flow::Continue).expect("generate")
}

fn engine_image(rgb: &internvl::image::RgbImage) -> Image {
    let model = Model::load(tiny_gguf(), &LoadParams::default()).expect("load tiny model");
    Image::from_rgb(rgb.clone(), &model.tiling()).expect("image")
}

fn error_code(r: &Resp) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {}", r.body))
}

#[test]
fn health_and_models() {
    let s = Server::start(&["--model-id", "tiny-test"]);
    let h = get(&s.url("/health"), None);
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["sessions"], 2);
    let m = get(&s.url("/v1/models"), None);
    assert_eq!(m.status, 200);
    assert_eq!(m.body["object"], "list");
    assert_eq!(m.body["data"][0]["id"], "tiny-test");
    assert_eq!(get(&s.url("/v1/models/tiny-test"), None).body["object"], "model");
    let missing = get(&s.url("/v1/models/gpt-4"), None);
    assert_eq!((missing.status, error_code(&missing)), (404, "not_found"));
}

#[test]
fn plain_completion_matches_the_engine() {
    let s = Server::start(&[]);
    let q = "Tell me about the weather.";
    let r = post(&s.url("/v1/chat/completions"), &ask(q, 12));
    let want = engine_answer(Message::text(q), 12, SamplingParams::default());
    assert_eq!(content(&r), want.text);
    assert_eq!(r.body["object"], "chat.completion");
    assert!(r.body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r.body["choices"][0]["message"]["role"], "assistant");
    let finish = if want.token_ids.len() == 12 { "length" } else { "stop" };
    assert_eq!(r.body["choices"][0]["finish_reason"], finish);
    let u = &r.body["usage"];
    assert_eq!(u["prompt_tokens"], want.stats.prompt_tokens);
    assert_eq!(u["completion_tokens"], want.token_ids.len());
    assert_eq!(u["total_tokens"], want.stats.prompt_tokens + want.token_ids.len());

    // Sampling parameters reach the sampler: a seeded sampled answer is the engine's with that seed.
    let mut body = ask(q, 10);
    body["temperature"] = json!(1.0);
    body["top_p"] = json!(0.9);
    body["seed"] = json!(7);
    let a = content(&post(&s.url("/v1/chat/completions"), &body));
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        seed: 7,
        ..Default::default()
    };
    assert_eq!(a, engine_answer(Message::text(q), 10, sampling).text);
    assert_ne!(a, content(&r), "sampling at temperature 1 gave the greedy answer");
    assert_eq!(
        a,
        content(&post(&s.url("/v1/chat/completions"), &body)),
        "same seed, different answer"
    );
}

#[test]
fn streaming_matches_non_streaming() {
    let s = Server::start(&[]);
    let q = "Count to five.";
    let plain = content(&post(&s.url("/v1/chat/completions"), &ask(q, 16)));
    let mut body = ask(q, 16);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = stream(&s.url("/v1/chat/completions"), &body).rest();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    assert!(chunks.len() >= 4, "{chunks:?}");
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    // The non-streamed answer is cleaned like the model's chat() (trimmed); the pieces are raw.
    assert_eq!(text.trim(), plain);
    let finish = &chunks[chunks.len() - 2];
    assert!(
        matches!(finish["choices"][0]["finish_reason"].as_str(), Some("length" | "stop")),
        "{finish}"
    );
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
}

#[test]
fn image_by_data_url_matches_the_engine_and_is_cached() {
    let s = Server::start(&[]);
    let rgb = test_image(96, 60, 1);
    let q = "What is in the image?";
    let r = post(&s.url("/v1/chat/completions"), &ask_image(q, &data_url(&rgb), 8));
    let image = engine_image(&rgb);
    let tiles = image.n_tiles();
    let want = engine_answer(Message::text(q).with_image(image), 8, SamplingParams::default());
    assert_eq!(content(&r), want.text);
    assert_eq!(r.body["usage"]["prompt_tokens"], want.stats.prompt_tokens);
    assert!(want.stats.image_tokens >= 256 * tiles, "{:?}", want.stats);
    assert_eq!(r.body["internvl"]["tiles_encoded"], tiles);

    // The same frame with another question: nothing encoded again, the image's rows come from the
    // session's KV cache.
    let r2 = post(
        &s.url("/v1/chat/completions"),
        &ask_image("Is it dark?", &data_url(&rgb), 8),
    );
    assert_eq!(r2.status, 200);
    assert_eq!(r2.body["internvl"]["tiles_encoded"], 0, "{}", r2.body);
    assert!(
        r2.body["internvl"]["reused_tokens"].as_u64().unwrap() >= 256 * tiles as u64,
        "{}",
        r2.body
    );
}

#[test]
fn image_embeddings_are_shared_across_sessions() {
    let s = Server::start(&["--parallel", "2"]);
    let x = data_url(&test_image(64, 64, 2));
    let y = data_url(&test_image(64, 64, 3));
    let url = s.url("/v1/chat/completions");
    // Sessions are handed out least recently used first, unless one last saw the request's image.
    let r1 = post(&url, &ask_image("first", &x, 4));
    let r2 = post(&url, &ask("text only", 4));
    let r3 = post(&url, &ask_image("other frame", &y, 4));
    let r4 = post(&url, &ask_image("first frame again", &x, 4));
    let session = |r: &Resp| r.body["internvl"]["session"].as_u64().expect("session");
    assert_eq!([session(&r1), session(&r2), session(&r3), session(&r4)], [0, 1, 0, 1]);
    // Session 1 never saw x: its embeddings come from the shared cache.
    assert!(r1.body["internvl"]["tiles_encoded"].as_u64().unwrap() > 0);
    assert_eq!(r4.body["internvl"]["tiles_encoded"], 0, "{}", r4.body);
    assert_eq!(
        r4.body["internvl"]["tiles_cached"],
        r1.body["internvl"]["tiles_encoded"]
    );
    let h = get(&s.url("/health"), None).body;
    assert_eq!(h["image_cache"]["images"], 2);
}

#[test]
fn concurrent_requests_get_the_answers_they_would_get_alone() {
    // One fresh session per request in both phases, so that no request reuses a prefix another one left in
    // the cache: a reused prefix was computed in a batch of another size, and ggml's attention kernels
    // differ by batch size in the last bits, which the tiny random model can turn into another token; the
    // comparison would then be about cache history, not about concurrency.
    // (A different image per request too: a session that last saw a request's image is preferred for it.)
    let bodies: Vec<Value> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                ask(&format!("Question number {i}"), 10)
            } else {
                let rgb = test_image(80, 50, 4 + i as u8);
                ask_image(&format!("Image question {i}"), &data_url(&rgb), 6)
            }
        })
        .collect();
    let reused = |r: &Resp| r.body["internvl"]["reused_tokens"].as_u64();
    let alone: Vec<String> = {
        let s = Server::start(&["--parallel", "6"]);
        let url = s.url("/v1/chat/completions");
        bodies
            .iter()
            .map(|b| {
                let r = post(&url, b);
                assert_eq!(reused(&r), Some(0), "{}", r.body);
                content(&r)
            })
            .collect()
    };
    let s = Server::start(&["--parallel", "6", "--queue", "8"]);
    let url = s.url("/v1/chat/completions");
    let start = Instant::now();
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = bodies
            .iter()
            .map(|b| {
                sc.spawn(|| {
                    let r = post(&url, b);
                    assert_eq!(reused(&r), Some(0), "{}", r.body);
                    content(&r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    assert_eq!(together, alone);
    let h = get(&s.url("/health"), None).body;
    assert_eq!(h["requests"]["completed"], 6);
    assert_eq!(h["requests"]["failed"], 0);
    assert_eq!((h["busy"].as_u64(), h["queued"].as_u64()), (Some(0), Some(0)));
    eprintln!("6 concurrent requests on 6 sessions: {:?}", start.elapsed());
}

/// A streaming request that holds a session for a long time (seconds on the tiny model).
fn long_stream(s: &Server) -> Events {
    let mut body = ask("Write a very long story.", 2000);
    body["stream"] = json!(true);
    let mut ev = stream(&s.url("/v1/chat/completions"), &body);
    let first: Value = serde_json::from_str(&ev.next_data().expect("first chunk")).expect("JSON");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    ev
}

#[test]
fn full_queue_and_queue_timeout_give_503_and_the_server_recovers() {
    let s = Server::start(&["--parallel", "1", "--queue", "0", "--max-tokens", "2000"]);
    let url = s.url("/v1/chat/completions");
    let held = long_stream(&s);
    let r = post(&url, &ask("hello", 4));
    assert_eq!((r.status, error_code(&r)), (503, "queue_full"), "{}", r.body);
    assert_eq!(r.body["error"]["type"], "server_error");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    drop(held);
    // The hang-up is noticed at the next token the server tries to send.
    assert!(wait_health(&s, Duration::from_secs(5), |h| h["busy"] == 0).0);
    assert_eq!(post(&url, &ask("hello", 4)).status, 200);

    let s = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "4",
        "--queue-timeout",
        "0.3",
        "--max-tokens",
        "2000",
    ]);
    let url = s.url("/v1/chat/completions");
    let held = long_stream(&s);
    let t = Instant::now();
    let r = post(&url, &ask("hello", 4));
    assert_eq!((r.status, error_code(&r)), (503, "queue_timeout"), "{}", r.body);
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    drop(held);
    // The hang-up is noticed at the next token the server tries to send.
    assert!(wait_health(&s, Duration::from_secs(5), |h| h["busy"] == 0).0);
    assert_eq!(post(&url, &ask("hello", 4)).status, 200);
    let h = get(&s.url("/health"), None).body;
    assert_eq!(h["requests"]["failed"], 1);
}

#[test]
fn a_client_that_hangs_up_frees_its_session() {
    let s = Server::start(&["--parallel", "1", "--max-tokens", "2000"]);
    let held = long_stream(&s);
    let (busy, h) = wait_health(&s, Duration::from_secs(5), |h| h["busy"] == 1);
    assert!(busy, "{h}");
    drop(held);
    // 2000 tokens take many seconds; the session must come back long before.
    let (freed, h) = wait_health(&s, Duration::from_secs(5), |h| h["busy"] == 0);
    assert!(freed, "the session is still busy after the client left: {h}");
    assert_eq!(
        h["requests"]["completed"], 0,
        "the generation ran to its end instead of stopping: {h}"
    );
    assert_eq!(post(&s.url("/v1/chat/completions"), &ask("hello", 4)).status, 200);
}

#[test]
fn a_prompt_over_the_context_is_a_400_and_the_server_keeps_serving() {
    let s = Server::start(&["--ctx-size", "96"]);
    let url = s.url("/v1/chat/completions");
    let long = "word ".repeat(200);
    let r = post(&url, &ask(&long, 4));
    assert_eq!(
        (r.status, error_code(&r)),
        (400, "context_length_exceeded"),
        "{}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context holds 96"),
        "{}",
        r.body
    );
    // Streamed, the refusal comes before any event: a plain JSON 400 too.
    let mut body = ask(&long, 4);
    body["stream"] = json!(true);
    let r = post(&url, &body);
    assert_eq!(
        (r.status, error_code(&r)),
        (400, "context_length_exceeded"),
        "{}",
        r.body
    );
    // An image alone is 256 tokens per tile.
    let r = post(&url, &ask_image("x", &data_url(&test_image(32, 32, 5)), 4));
    assert_eq!(
        (r.status, error_code(&r)),
        (400, "context_length_exceeded"),
        "{}",
        r.body
    );
    let ok = post(&url, &ask("hi", 4));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(get(&s.url("/health"), None).body["busy"], 0);
}

#[test]
fn malformed_and_invalid_requests_are_400s_in_openai_shape() {
    let s = Server::start(&["--max-tokens", "64"]);
    let url = s.url("/v1/chat/completions");
    let cases: Vec<(&[u8], &str, &str)> = vec![
        (b"{\"messages\": [", "invalid_json", "EOF"),
        (b"not json at all", "invalid_json", "expected"),
        (b"{\"messages\": 5}", "invalid_json", "messages"),
        (b"{}", "invalid_json", "missing field `messages`"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "temperature": 5}"#, "invalid_value", "temperature"),
        (br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}"#, "invalid_value", "limit of 64"),
        (br#"{"messages": [{"role": "user", "content": "<image> x"}]}"#, "invalid_value", "placeholder"),
        (br#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]}"#, "invalid_image", "base64"),
    ];
    for (body, code, needle) in cases {
        let r = post_raw(&url, body, None);
        assert_eq!(r.status, 400, "{}: {}", String::from_utf8_lossy(body), r.body);
        let e = &r.body["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], code, "{}", r.body);
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{needle:?} not in {}",
            r.body
        );
    }
    let r = get(&url, None);
    assert_eq!((r.status, error_code(&r)), (405, "method_not_allowed"));
    let r = get(&s.url("/v2/nothing"), None);
    assert_eq!((r.status, error_code(&r)), (404, "not_found"));
    assert_eq!(post(&url, &ask("still there?", 4)).status, 200);
}

#[test]
fn a_body_over_the_limit_is_a_413() {
    let s = Server::start(&["--max-body-bytes", "16384"]);
    let url = s.url("/v1/chat/completions");
    // A client sends the whole body before it reads the answer: the 413 must reach it (not a
    // connection closed under it mid-send), for a body a little over the limit and one far over
    // the socket buffers.
    for size in [40_000, 4 << 20] {
        let r = post(&url, &ask(&"a".repeat(size), 4));
        assert_eq!(
            (r.status, error_code(&r)),
            (413, "request_too_large"),
            "{size}: {}",
            r.body
        );
        assert!(r.body["error"]["message"].as_str().unwrap().contains("16384"));
    }
    assert_eq!(post(&url, &ask("small", 4)).status, 200);
}

#[test]
fn api_key_is_required_when_set() {
    let s = Server::start(&["--api-key", "s3cret-key"]);
    let url = s.url("/v1/chat/completions");
    let body = ask("hi", 4).to_string();
    let r = post_raw(&url, body.as_bytes(), None);
    assert_eq!((r.status, error_code(&r)), (401, "missing_api_key"));
    let r = post_raw(&url, body.as_bytes(), Some("s3cret-kez"));
    assert_eq!((r.status, error_code(&r)), (401, "invalid_api_key"));
    assert_eq!(r.body["error"]["type"], "authentication_error");
    assert_eq!(post_raw(&url, body.as_bytes(), Some("s3cret-key-and-more")).status, 401);
    assert_eq!(get(&s.url("/v1/models"), Some("wrong")).status, 401);
    assert_eq!(get(&s.url("/v1/models"), Some("s3cret-key")).status, 200);
    assert_eq!(post_raw(&url, body.as_bytes(), Some("s3cret-key")).status, 200);
    // Health checks need no key.
    assert_eq!(get(&s.url("/health"), None).status, 200);
}

#[test]
fn image_sources_need_their_flags_and_respect_limits() {
    let rgb = test_image(72, 48, 6);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("frame.png");
    std::fs::write(&file, png_bytes(&rgb)).expect("write png");
    let file_url = file.display().to_string();

    let s = Server::start(&[]);
    let url = s.url("/v1/chat/completions");
    let reference = content(&post(&url, &ask_image("Describe.", &data_url(&rgb), 6)));
    let r = post(&url, &ask_image("Describe.", "http://127.0.0.1:9/frame.png", 6));
    assert_eq!((r.status, error_code(&r)), (400, "invalid_image"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-remote-urls"),
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["param"], "messages[0].content[1]");
    let r = post(&url, &ask_image("Describe.", &file_url, 6));
    assert_eq!((r.status, error_code(&r)), (400, "invalid_image"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-local-files"),
        "{}",
        r.body
    );
    drop(s);

    // --allow-remote-urls alone refuses loopback (the SSRF guard), with one answer for every failure.
    let s = Server::start(&["--allow-remote-urls", "--remote-timeout", "5"]);
    let url = s.url("/v1/chat/completions");
    let (remote, host) = serve_bytes_on_loopback(png_bytes(&rgb), 1);
    for u in [
        remote.as_str(),
        "http://127.0.0.1:9/closed-port.png",
        "http://[::1]:9/x.png",
    ] {
        let r = post(&url, &ask_image("Describe.", u, 6));
        assert_eq!((r.status, error_code(&r)), (400, "invalid_image"), "{u}");
        let m = r.body["error"]["message"].as_str().unwrap();
        assert_eq!(m, "messages[0].content[1]: could not fetch the image", "{u}");
    }
    assert!(s.log().contains("loopback: refused"), "{}", s.log());
    drop(s);
    // The loopback host saw no request: let its one connection through.
    let _ = std::net::TcpStream::connect(remote.trim_start_matches("http://").split('/').next().unwrap());
    let _ = host.join();

    // With the flags: the same pixels from a file and from a (loopback) web server give the same answer.
    let s = Server::start(&[
        "--allow-local-files",
        "--allow-remote-urls",
        "--allow-private-urls",
        "--remote-timeout",
        "5",
    ]);
    let url = s.url("/v1/chat/completions");
    assert_eq!(content(&post(&url, &ask_image("Describe.", &file_url, 6))), reference);
    assert_eq!(
        content(&post(&url, &ask_image("Describe.", &format!("file://{file_url}"), 6))),
        reference
    );
    let (remote, host) = serve_bytes_on_loopback(png_bytes(&rgb), 1);
    assert_eq!(content(&post(&url, &ask_image("Describe.", &remote, 6))), reference);
    host.join().expect("loopback host");
    drop(s);

    // Pixel limit, checked from the header.
    let s = Server::start(&["--max-image-pixels", "2000"]);
    let r = post(
        &s.url("/v1/chat/completions"),
        &ask_image("Describe.", &data_url(&rgb), 6),
    );
    assert_eq!((r.status, error_code(&r)), (400, "invalid_image"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit of 2000 pixels"),
        "{}",
        r.body
    );
}

#[test]
fn stop_sequences_cut_the_answer_in_both_modes() {
    let s = Server::start(&[]);
    let url = s.url("/v1/chat/completions");
    let q = "Say something long.";
    let full = content(&post(&url, &ask(q, 24)));
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "answer too short for this test: {full:?}");
    let stop: String = chars[4..6].iter().collect();
    let want = &full[..full.find(&stop).expect("stop in answer")];

    let mut body = ask(q, 24);
    body["stop"] = json!([stop, "\u{0}never"]);
    let r = post(&url, &body);
    assert_eq!(content(&r), want.trim());
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");

    body["stream"] = json!(true);
    let events = stream(&url, &body).rest();
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("JSON"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.trim(), want.trim());
    assert_eq!(chunks.last().expect("chunks")["choices"][0]["finish_reason"], "stop");
}

#[test]
fn a_request_over_the_time_limit_is_a_504() {
    let s = Server::start(&["--timeout", "0.2", "--max-tokens", "2000"]);
    let url = s.url("/v1/chat/completions");
    let t = Instant::now();
    let r = post(&url, &ask("Write a very long story.", 2000));
    assert_eq!((r.status, error_code(&r)), (504, "timeout"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(post(&url, &ask("hi", 2)).status, 200);
}
