//! End-to-end tests of `internvl-run` (and the `internvl::engine` API it is built on) on the tiny
//! synthetic model. Its weights are random, so answers are gibberish: these tests check mechanics
//! (prompt sizes, what is encoded and prefilled when, outputs, errors), never text.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use internvl::engine::{
    CancelFlag, ChatParams, Event, FinishReason, Flow, GenerateParams, Image, LoadParams, Message, Model,
    SessionParams, TilingParams,
};
use internvl::prompt::{build_prompt_ids, Conversation};
use internvl::tokenizer::Tokenizer;
use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_internvl-run"))
}

fn model() -> PathBuf {
    common::tiny_gguf(42, "q8_0", &[])
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    run_env(args, stdin, &[])
}

fn run_env(args: &[&str], stdin: Option<&str>, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .args(["-t", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Tests never touch the network: a missing --hf model must fail at once, not be downloaded.
    cmd.env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn internvl-run");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("wait internvl-run")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "internvl-run failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn u(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// A `w`×`h` PNG with a colour gradient (distinct per `seed`) in `dir`.
fn png(dir: &Path, name: &str, w: u32, h: u32, seed: u8) -> PathBuf {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8 ^ seed,
            (y * 255 / h) as u8,
            seed.wrapping_mul(37).wrapping_add((x + y) as u8),
        ])
    });
    let p = dir.join(name);
    img.save(&p).expect("write png");
    p
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&common::shared().join("model/InternVL2-1B")).expect("tokenizer")
}

/// Length of HF's prompt for one question with images of `tiles` tiles (spec §5.2).
fn prompt_len(question: &str, tiles: &[usize]) -> usize {
    build_prompt_ids(&tokenizer(), &Conversation::single(question), tiles, 256)
        .expect("prompt")
        .ids
        .len()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn help_explains_every_flag() {
    let out = run(&["--help"], None);
    let text = ok(&out);
    for flag in [
        "-m, --model",
        "-p, --prompt",
        "-n, --n-predict",
        "-t, --threads",
        "-c, --ctx-size",
        "--temp",
        "--top-k",
        "--top-p",
        "--seed",
        "--image",
        "--max-tiles",
        "--kv-type",
        "--system",
        "-i, --interactive",
        "--video",
        "--frames",
        "--batch",
        "--grounding",
        "--draw-boxes",
        "--json",
        "--timings",
        "--hf",
        "--truncate-history",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn one_image_json_counts_and_timings() {
    let dir = tempfile::tempdir().unwrap();
    // 2:1 aspect with max 4 tiles: a (2,1) grid plus the thumbnail.
    let img = png(dir.path(), "a.png", 600, 300, 1);
    let out = run(
        &[
            "-m",
            s(&model()),
            "--image",
            s(&img),
            "-p",
            "Describe the image.",
            "-n",
            "6",
            "--max-tiles",
            "4",
            "--json",
        ],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    assert_eq!(u(j, "tiles"), 3);
    assert_eq!(u(j, "tiles_encoded"), 3);
    assert_eq!(u(j, "tokens.image"), 3 * 256);
    assert_eq!(
        u(j, "tokens.prompt") as usize,
        prompt_len("<image>\nDescribe the image.", &[3])
    );
    assert_eq!(u(j, "tokens.prefilled"), u(j, "tokens.prompt"));
    assert!(u(j, "tokens.generated") <= 6);
    assert!(j["answer"].is_string());
    assert!(u(j, "memory.peak_rss_bytes") > 1 << 20);
    assert!(u(j, "memory.kv_cache_bytes") > 0);
    for k in [
        "load",
        "preprocess",
        "vision",
        "vision_per_tile",
        "prefill",
        "first_token",
        "decode",
        "total",
    ] {
        assert!(
            j["timings_ms"][k].as_f64().is_some_and(|v| v >= 0.0),
            "timings_ms.{k} in {j}"
        );
    }
}

#[test]
fn one_image_streams_and_prints_timings() {
    let img = common::shared().join("media/image1.jpg");
    let out = run(
        &[
            "-m",
            s(&model()),
            "--image",
            s(&img),
            "-p",
            "Describe the image.",
            "-n",
            "8",
            "--timings",
        ],
        None,
    );
    let text = ok(&out);
    assert!(!text.trim().is_empty(), "an answer is streamed");
    let err = stderr(&out);
    // image1.jpg (1000x747) is a (4,3) grid plus thumbnail: 13 tiles (spec §5.2).
    for want in [
        "load",
        "preprocess",
        "vision encode",
        "13 tiles encoded",
        "ms/tile",
        "prefill",
        "first token",
        "decode",
        "tok/s",
        "outside ggml's compute",
        "graph(s) built",
        "peak RSS",
    ] {
        assert!(err.contains(want), "timings lack {want:?}:\n{err}");
    }
}

#[test]
fn two_images_and_a_repeated_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = png(dir.path(), "a.png", 600, 300, 1); // 3 tiles at max 4
    let b = png(dir.path(), "b.png", 300, 300, 2); // 1 tile
    let out = run(
        &[
            "-m",
            s(&model()),
            "--image",
            s(&a),
            "--image",
            s(&b),
            "-p",
            "Compare.",
            "-n",
            "4",
            "--max-tiles",
            "4",
            "--json",
        ],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    assert_eq!(u(j, "images"), 2);
    assert_eq!(u(j, "tiles_encoded"), 4);
    assert_eq!(u(j, "tokens.image"), 4 * 256);
    assert_eq!(
        u(j, "tokens.prompt") as usize,
        prompt_len("Image-1: <image>\nImage-2: <image>\nCompare.", &[3, 1])
    );
    // The same picture twice is encoded once (embeddings are keyed by content).
    let out = run(
        &[
            "-m",
            s(&model()),
            "--image",
            s(&a),
            "--image",
            s(&a),
            "-p",
            "Same?",
            "-n",
            "2",
            "--max-tiles",
            "4",
            "--json",
        ],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    assert_eq!(u(j, "tokens.image"), 6 * 256);
    assert_eq!(u(j, "tiles_encoded"), 3);
}

#[test]
fn multi_turn_reuses_image_and_history_and_survives_save_load() {
    let dir = tempfile::tempdir().unwrap();
    let img = png(dir.path(), "a.png", 600, 300, 3);
    let conv = dir.path().join("conv.json");
    let script = format!(
        "/image {}\nDescribe the image.\nAnd the colours?\n/save {}\n/reset\n/load {}\nOne more question?\n",
        s(&img),
        s(&conv),
        s(&conv)
    );
    let out = run(
        &["-m", s(&model()), "-i", "--json", "-n", "6", "--max-tiles", "4"],
        Some(&script),
    );
    let turns = json_lines(&ok(&out));
    assert_eq!(turns.len(), 3, "{}", stderr(&out));
    let (t1, t2, t3) = (&turns[0], &turns[1], &turns[2]);
    assert_eq!(u(t1, "tiles_encoded"), 3);
    assert_eq!(u(t1, "tokens.reused"), 0);
    // Turn 2: the image is not encoded again and the history is not prefilled again: everything
    // of turn 1's prompt is reused, only the new suffix (at most the answer's last token,
    // `<|im_end|>` and the new question) is evaluated.
    assert_eq!(u(t2, "tiles_encoded"), 0);
    assert!(u(t2, "tokens.reused") >= u(t1, "tokens.prompt"), "{t2}");
    assert_eq!(
        u(t2, "tokens.prefilled"),
        u(t2, "tokens.prompt") - u(t2, "tokens.reused")
    );
    assert!(u(t2, "tokens.prefilled") < 30, "{t2}");
    assert_eq!(u(t2, "tokens.image"), 3 * 256);
    // After /save, /reset, /load the same history is recognised in the cache.
    assert_eq!(u(t3, "tiles_encoded"), 0);
    assert!(u(t3, "tokens.reused") >= u(t2, "tokens.prompt"), "{t3}");
    assert!(u(t3, "tokens.prefilled") < 30, "{t3}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&conv).unwrap()).unwrap();
    assert_eq!(saved["format"], "internvl-conversation");
    assert_eq!(saved["turns"].as_array().map(Vec::len), Some(2));
    assert_eq!(saved["turns"][0]["user"], "<image>\nDescribe the image.");
}

#[test]
fn cache_reuse_gives_the_same_answer_as_a_fresh_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let img = png(dir.path(), "a.png", 300, 300, 4);
    let conv = dir.path().join("t1.json");
    let m = common::tiny_gguf(42, "f32", &[]);
    let args = [
        "-m",
        s(&m),
        "-i",
        "--json",
        "-n",
        "5",
        "--max-tiles",
        "1",
        "--kv-type",
        "f32",
    ];
    let a = json_lines(&ok(&run(
        &args,
        Some(&format!("/image {}\nDescribe.\n/save {}\nMore?\n", s(&img), s(&conv))),
    )));
    // A new process: nothing cached, the loaded history is prefilled from scratch.
    let b = json_lines(&ok(&run(&args, Some(&format!("/load {}\nMore?\n", s(&conv))))));
    assert!(u(&a[1], "tokens.reused") > 256);
    assert_eq!(u(&b[0], "tokens.reused"), 0);
    assert_eq!(u(&b[0], "tiles_encoded"), 1);
    assert_eq!(u(&a[1], "tokens.prompt"), u(&b[0], "tokens.prompt"));
    assert_eq!(a[1]["answer"], b[0]["answer"], "KV reuse must not change the result");
}

#[test]
fn batch_jsonl_in_input_order_sharing_work() {
    let dir = tempfile::tempdir().unwrap();
    png(dir.path(), "a.png", 600, 300, 5);
    png(dir.path(), "b.png", 300, 300, 6);
    let reqs = dir.path().join("reqs.jsonl");
    std::fs::write(
        &reqs,
        concat!(
            "{\"id\": \"q1\", \"images\": [\"a.png\"], \"question\": \"What is shown?\"}\n",
            "{\"id\": 2, \"image\": \"b.png\", \"question\": \"Colours?\"}\n",
            "\n",
            "{\"images\": [\"a.png\"], \"question\": \"Count the objects.\"}\n",
            "{\"question\": \"Text only.\"}\n",
        ),
    )
    .unwrap();
    let out = run(
        &["-m", s(&model()), "--batch", s(&reqs), "-n", "4", "--max-tiles", "4"],
        None,
    );
    let lines = json_lines(&ok(&out));
    assert_eq!(lines.len(), 4);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(u(l, "index"), i as u64);
        assert!(l["answer"].is_string(), "{l}");
    }
    assert_eq!(lines[0]["id"], "q1");
    assert_eq!(lines[1]["id"], 2);
    assert_eq!(u(&lines[0], "tokens.image"), 3 * 256);
    assert_eq!(u(&lines[1], "tokens.image"), 256);
    assert_eq!(u(&lines[3], "tokens.image"), 0);
    // a.png is encoded once for its two requests, and the second one reuses the cached prefix
    // (system prompt and image) from the first.
    let encoded: u64 = lines.iter().map(|l| u(l, "tiles_encoded")).sum();
    assert_eq!(encoded, 3 + 1);
    let (x, y) = (&lines[0], &lines[2]);
    let later = if u(x, "tiles_encoded") == 0 { x } else { y };
    assert!(u(later, "tokens.reused") > 3 * 256, "{later}");
}

#[test]
fn batch_reports_bad_lines_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let reqs = dir.path().join("reqs.jsonl");
    std::fs::write(
        &reqs,
        "{\"question\": \"ok\"}\nnot json\n{\"images\": [\"missing.png\"], \"question\": \"x\"}\n",
    )
    .unwrap();
    let out = run(&["-m", s(&model()), "--batch", s(&reqs), "-n", "2"], None);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["answer"].is_string());
    assert!(
        lines[1]["error"].as_str().is_some_and(|e| e.contains("line 2")),
        "{}",
        lines[1]
    );
    assert!(
        lines[2]["error"].as_str().is_some_and(|e| e.contains("missing.png")),
        "{}",
        lines[2]
    );
}

#[test]
fn grounding_of_a_crafted_answer_in_pixels_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("grey.png");
    image::RgbImage::from_pixel(200, 100, image::Rgb([128, 128, 128]))
        .save(&img)
        .unwrap();
    let drawn = dir.path().join("boxes.png");
    let answer =
        "<ref>the cat</ref><box>[[100, 200, 500, 800]]</box> and <ref>a dog</ref><box>[[0, 0, 1000, 1000]]</box>";
    let out = run(
        &["--from-answer", answer, "--image", s(&img), "--draw-boxes", s(&drawn)],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    let boxes = j["boxes"].as_array().expect("boxes");
    assert_eq!(boxes.len(), 2);
    assert_eq!(boxes[0]["label"], "the cat");
    assert_eq!(boxes[0]["box_px"], serde_json::json!([20.0, 20.0, 100.0, 80.0]));
    assert_eq!(boxes[1]["label"], "a dog");
    assert_eq!(boxes[1]["box_px"], serde_json::json!([0.0, 0.0, 200.0, 100.0]));
    assert_eq!(j["image_size"], serde_json::json!([200, 100]));
    let out_img = image::open(&drawn).expect("drawn image").to_rgb8();
    assert_eq!(out_img.dimensions(), (200, 100));
    let grey = image::Rgb([128, 128, 128]);
    assert_ne!(*out_img.get_pixel(20, 50), grey, "left edge of the first box");
    assert_ne!(*out_img.get_pixel(100, 50), grey, "right edge of the first box");
    assert_eq!(*out_img.get_pixel(60, 50), grey, "inside the first box");
}

#[test]
fn grounding_mode_on_the_model_prints_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let img = png(dir.path(), "a.png", 300, 300, 7);
    let drawn = dir.path().join("b.png");
    let q = "Please provide the bounding box coordinate of the region this sentence describes: <ref>the square</ref>";
    let out = run(
        &[
            "-m",
            s(&model()),
            "--grounding",
            "--image",
            s(&img),
            "-p",
            q,
            "-n",
            "6",
            "--json",
            "--draw-boxes",
            s(&drawn),
        ],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    assert!(j["grounding"]["boxes"].is_array(), "{j}");
    assert_eq!(j["grounding"]["image_size"], serde_json::json!([300, 300]));
    assert!(drawn.is_file());
}

#[test]
fn context_overflow_is_a_clear_error_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let img = png(dir.path(), "a.png", 300, 300, 8);
    let need = prompt_len("<image>\nDescribe the image.", &[1]);
    let out = run(
        &[
            "-m",
            s(&model()),
            "--image",
            s(&img),
            "-p",
            "Describe the image.",
            "-c",
            "200",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        format!("needs {need} tokens"),
        format!("{} text + 256 image tokens", need - 256),
        "context holds 200".into(),
        "--truncate-history".into(),
    ] {
        assert!(err.contains(&want), "{want:?} not in: {err}");
    }
}

#[test]
fn truncate_history_drops_the_oldest_turns() {
    let dir = tempfile::tempdir().unwrap();
    let img = png(dir.path(), "a.png", 300, 300, 9);
    let long_q = "Please tell me about every single detail you can see, one by one, in order, with reasons. ".repeat(5);
    let script = format!("/image {}\nDescribe.\n{long_q}\n", s(&img));
    let m = model();
    let base = ["-m", s(&m), "-i", "--json", "-n", "4", "--max-tiles", "1", "-c", "380"];
    // Without the flag the second turn does not fit: an error, and the chat goes on.
    let out = run(&base, Some(&script));
    let turns = json_lines(&ok(&out));
    assert_eq!(turns.len(), 1);
    assert!(stderr(&out).contains("context holds 380"), "{}", stderr(&out));
    // With it the first turn (and its image) is dropped and the rest re-prefilled.
    let mut args = base.to_vec();
    args.push("--truncate-history");
    let out = run(&args, Some(&script));
    let turns = json_lines(&ok(&out));
    assert_eq!(turns.len(), 2, "{}", stderr(&out));
    assert_eq!(u(&turns[1], "dropped_turns"), 1);
    assert_eq!(u(&turns[1], "images"), 0);
    assert!(u(&turns[1], "tokens.prompt") < 380);
    assert!(stderr(&out).contains("dropped the 1 oldest turn"), "{}", stderr(&out));
}

#[test]
fn video_from_a_frame_directory_and_a_gif() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..5u8 {
        png(&frames, &format!("f{i:03}.png"), 64, 48, i * 40);
    }
    let out = run(
        &[
            "-m",
            s(&model()),
            "--video",
            s(&frames),
            "--frames",
            "3",
            "-p",
            "What happens?",
            "-n",
            "2",
            "--json",
        ],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    assert_eq!(u(j, "images"), 3);
    assert_eq!(u(j, "tiles"), 3, "one tile per frame");
    assert_eq!(
        u(j, "tokens.prompt") as usize,
        prompt_len(
            "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nWhat happens?",
            &[1, 1, 1]
        )
    );

    let gif = dir.path().join("anim.gif");
    {
        let file = std::fs::File::create(&gif).unwrap();
        let mut enc = image::codecs::gif::GifEncoder::new(file);
        for i in 0..4u8 {
            let rgba = image::RgbaImage::from_pixel(32, 32, image::Rgba([i * 60, 100, 200 - i * 40, 255]));
            enc.encode_frame(image::Frame::new(rgba)).unwrap();
        }
    }
    let out = run(
        &[
            "-m",
            s(&model()),
            "--video",
            s(&gif),
            "--frames",
            "2",
            "-p",
            "Describe.",
            "-n",
            "2",
            "--json",
        ],
        None,
    );
    let j = &json_lines(&ok(&out))[0];
    assert_eq!(u(j, "tokens.image"), 2 * 256);
    assert_eq!(u(j, "tiles_encoded"), 2);

    let mp4 = dir.path().join("clip.mp4");
    std::fs::write(&mp4, b"\0\0\0\x18ftypmp42").unwrap();
    let out = run(&["-m", s(&model()), "--video", s(&mp4), "-p", "x"], None);
    assert_eq!(out.status.code(), Some(1));
    #[cfg(not(feature = "video"))]
    assert!(stderr(&out).contains("`video` feature"), "{}", stderr(&out));
    #[cfg(feature = "video")]
    assert!(
        stderr(&out).contains("not a video file FFmpeg can read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hf_offline_fails_at_once_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = run_env(
        &["--hf", "OpenGVLab/InternVL2-1B", "-p", "x"],
        None,
        &[("HF_HUB_CACHE", dir.path())],
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        "models--OpenGVLab--InternVL2-1B",
        "huggingface-cli download OpenGVLab/InternVL2-1B",
        "internvl-convert convert",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}

#[test]
#[cfg(unix)]
fn hf_cache_is_converted_once_then_reused() {
    let ck = common::tiny_checkpoint(42);
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    let repo = hub.join("models--OpenGVLab--InternVL2-1B");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for e in std::fs::read_dir(&ck).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            // The Hub cache holds symlinks to blobs; do the same.
            std::os::unix::fs::symlink(&p, snap.join(p.file_name().unwrap())).unwrap();
        }
    }
    let cache = dir.path().join("gguf");
    let env = [("HF_HUB_CACHE", hub.as_path()), ("INTERNVL_CACHE", cache.as_path())];
    let args = [
        "--hf",
        "OpenGVLab/InternVL2-1B",
        "--hf-type",
        "q8_0",
        "-p",
        "Hello",
        "-n",
        "2",
        "--json",
    ];
    let out = run_env(&args, None, &env);
    ok(&out);
    assert!(stderr(&out).contains("converting"), "{}", stderr(&out));
    let gguf = cache.join("OpenGVLab--InternVL2-1B/0123abcd-q8_0.gguf");
    assert!(gguf.is_file());
    let out = run_env(&args, None, &env);
    ok(&out);
    assert!(stderr(&out).contains("using the cached conversion"), "{}", stderr(&out));
}

#[test]
fn bad_command_lines_and_inputs() {
    let out = run(&["-m", s(&model()), "-p", "x", "--kv-type", "q3"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown KV cache type"));
    let out = run(&["-m", s(&model())], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("-p"));
    let out = run(&["-m", s(&model()), "--image", "/nonexistent/x.jpg", "-p", "x"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/x.jpg"), "{}", stderr(&out));
    let out = run(&["-m", "/nonexistent/model.gguf", "-p", "x"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/model.gguf"));
}

// ---- The Rust API the CLI is built on ----

fn api_chat(n_ctx: usize) -> (Model, internvl::engine::Chat) {
    let m = Model::load(model(), &LoadParams::default()).expect("load");
    let params = ChatParams {
        session: SessionParams {
            n_ctx,
            n_threads: 2,
            ..Default::default()
        },
        tiling: Some(TilingParams {
            max_tiles: 1,
            ..m.tiling()
        }),
        ..Default::default()
    };
    let chat = m.chat(params).expect("chat");
    (m, chat)
}

#[test]
fn api_callback_stop_and_cancel_flag() {
    let (_m, mut chat) = api_chat(1024);
    let img = Image::from_rgb(
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 9])),
        &chat.tiling(),
    )
    .unwrap();
    let gen = GenerateParams {
        max_new_tokens: 20,
        ..Default::default()
    };
    let mut pieces = 0;
    let r = chat
        .send(Message::text("Describe.").with_image(img), &gen, |e| {
            if let Event::Token(_) = e {
                pieces += 1;
                if pieces == 3 {
                    return Flow::Stop;
                }
            }
            Flow::Continue
        })
        .unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(r.token_ids.len() >= 3 && r.token_ids.len() < 20);
    assert!(chat.turns()[0].assistant.is_some(), "the partial answer is kept");

    // A flag set before prefill: nothing is evaluated, the question stays open, and a second
    // generate resumes.
    let flag = CancelFlag::new();
    flag.cancel();
    let before = chat.n_past();
    chat.ask(Message::text("And then?")).unwrap();
    let r = chat
        .generate(
            &GenerateParams {
                cancel: Some(flag.clone()),
                ..gen.clone()
            },
            |_| Flow::Continue,
        )
        .unwrap();
    assert_eq!(r.finish, FinishReason::Cancelled);
    assert!(chat.n_past() <= before);
    assert!(chat.turns().last().unwrap().assistant.is_none());
    flag.reset();
    let r = chat
        .generate(
            &GenerateParams {
                cancel: Some(flag),
                max_new_tokens: 3,
                ..gen
            },
            |_| Flow::Continue,
        )
        .unwrap();
    assert_ne!(r.finish, FinishReason::Cancelled);
    assert_eq!(r.stats.tiles_encoded, 0);
}

#[test]
fn api_model_is_shared_across_threads() {
    let (m, _) = api_chat(512);
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                let params = ChatParams {
                    session: SessionParams {
                        n_ctx: 512,
                        n_threads: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let gen = GenerateParams {
                    max_new_tokens: 3,
                    ..Default::default()
                };
                m.generate(params, Message::text(format!("Count to {i}.")), &gen, |_| {
                    Flow::Continue
                })
                .map(|r| r.stats.prompt_tokens)
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().expect("thread").expect("generate") > 10);
    }
}
