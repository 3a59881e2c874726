//! Video files through the system FFmpeg (`--features video`, spec §7.3): frame count, frame rate,
//! frame indices and frames of red-panda.mp4 (the README's example video), the same video remuxed
//! into Matroska (no `nb_frames` there), errors on bad input, and `internvl-run --video clip.mp4`
//! on the tiny model (prompt layout of spec §5.3 and its token count), and frames and 448 tiles bit-identical
//! to decord's (`tests/fixtures/video/`, made by `tests/py/make_video_fixtures.py`).
//!
//! Run: `cargo test --release -p internvl --features video --test video_ffmpeg`
#![cfg(feature = "video")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use internvl::engine::{Image, ImageSource, Message, TilingParams};
use internvl::image::ffmpeg::{self, Error, VideoInfo};
use internvl::image::{video, Limits, RgbImage};
use internvl::prompt::{build_prompt_ids, video_question, Conversation};
use internvl::tokenizer::Tokenizer;
use serde_json::Value;

/// spec §7.3: 8 segments of red-panda.mp4.
const RED_PANDA_INDICES: [usize; 8] = [55, 167, 279, 390, 502, 614, 725, 837];
const QUESTION: &str = "What is the red panda doing?";

fn red_panda() -> PathBuf {
    common::shared().join("media/red-panda.mp4")
}

fn reference_prompts() -> Value {
    let path = common::shared().join("reference/prompt_token_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

fn mean(img: &RgbImage) -> f64 {
    img.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / img.as_raw().len() as f64
}

fn channel_mean(img: &RgbImage, c: usize) -> f64 {
    let n = u64::from(img.width()) * u64::from(img.height());
    img.pixels().map(|p| f64::from(p.0[c])).sum::<f64>() / n as f64
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn red_panda_probe() {
    let info = ffmpeg::probe(&red_panda(), &Limits::default()).expect("probe");
    println!("{info:?}");
    assert_eq!(info.num_frames, 895);
    assert_eq!(info.container_frames, Some(895));
    // avg_frame_rate 895000/29833 (spec §7.3).
    assert!((info.fps - 895_000.0 / 29_833.0).abs() < 1e-9, "fps {}", info.fps);
    assert!((info.fps - 30.0003).abs() < 1e-4, "fps {}", info.fps);
    assert_eq!((info.width, info.height), (360, 640));
    assert_eq!(info.codec, "h264");
    assert!(info.container.contains("mp4"), "{}", info.container);
}

#[test]
fn red_panda_eight_frames() {
    let path = red_panda();
    let limits = Limits::default();
    let s = ffmpeg::sample(&path, 8, None, &limits).expect("sample");
    assert_eq!(s.indices, RED_PANDA_INDICES);
    assert_eq!(s.frames.len(), 8);
    for (i, f) in s.indices.iter().zip(&s.frames) {
        assert_eq!(f.dimensions(), (360, 640), "frame {i}");
        let m = mean(f);
        assert!((10.0..245.0).contains(&m), "frame {i} mean {m}: blank?");
        // Orange fur on green grass: blue is clearly the weakest channel (measured R≈114..138,
        // B≈97..109); a BGR/RGB swap or a grey conversion would fail this.
        let (r, b) = (channel_mean(f, 0), channel_mean(f, 2));
        assert!(r > b + 8.0, "frame {i}: mean R {r:.1}, mean B {b:.1}");
    }
    // Frames are distinct pictures (the panda moves), not one frame repeated.
    for w in s.frames.windows(2) {
        assert!(
            mean_abs_diff(&w[0], &w[1]) > 0.5,
            "consecutive sampled frames are identical"
        );
    }

    // One 448² tile per frame, no thumbnail (spec §7.3).
    let tiles = video::preprocess_frames(&s.frames, 448).expect("preprocess");
    assert_eq!(tiles.len(), 8);
    for t in &tiles {
        assert_eq!(t.n, 1);
        assert_eq!(t.data.len(), 3 * 448 * 448);
    }

    // Order and repeats of the request are kept; each frame equals the same index decoded alone.
    let again = ffmpeg::read_frames(&path, &[837, 55, 837], &limits).expect("read_frames");
    assert_eq!(again.len(), 3);
    assert_eq!(again[0], s.frames[7]);
    assert_eq!(again[1], s.frames[0]);
    assert_eq!(again[2], s.frames[7]);
    // Adjacent frames differ a little, far frames more: index i is really frame i.
    let near = ffmpeg::read_frames(&path, &[54, 56], &limits).expect("read_frames");
    let d_near = mean_abs_diff(&near[0], &s.frames[0]);
    let d_far = mean_abs_diff(&again[0], &s.frames[0]);
    assert!(
        d_near > 0.0 && d_near < d_far,
        "frame 54 vs 55: {d_near}, 837 vs 55: {d_far}"
    );
    assert_ne!(near[1], s.frames[0]);

    // The last frame exists, the one after it does not.
    assert_eq!(
        ffmpeg::read_frames(&path, &[894], &limits).expect("last frame").len(),
        1
    );
    match ffmpeg::read_frames(&path, &[895], &limits) {
        Err(Error::MissingFrame {
            wanted: 895,
            decoded: 895,
            ..
        }) => {}
        other => panic!("expected MissingFrame, got {other:?}"),
    }
    assert!(ffmpeg::read_frames(&path, &[], &limits).expect("nothing").is_empty());
}

/// The same H.264 stream copied into Matroska, which stores no frame count: the count comes from
/// the packets, and the frames are the same pixels.
#[test]
fn matroska_without_nb_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mkv = dir.path().join("red-panda.mkv");
    remux(&red_panda(), &mkv);
    let info: VideoInfo = ffmpeg::probe(&mkv, &Limits::default()).expect("probe mkv");
    println!("{info:?}");
    assert_eq!(info.container_frames, None, "Matroska has no nb_frames");
    assert_eq!(info.num_frames, 895);
    assert!(info.container.contains("matroska"), "{}", info.container);
    // Matroska keeps millisecond timestamps (33 ms steps), so FFmpeg's average is 1000/33 ≈ 30.3
    // here, not 30.0003; decord reads the same value. The indices do not depend on it.
    assert!((info.fps - 30.0).abs() < 0.5, "fps {}", info.fps);
    let idx = video::frame_indices(info.num_frames, info.fps, 8, None).unwrap();
    assert_eq!(idx, RED_PANDA_INDICES);
    let a = ffmpeg::read_frames(&mkv, &[55, 502], &Limits::default()).expect("mkv frames");
    let b = ffmpeg::read_frames(&red_panda(), &[55, 502], &Limits::default()).expect("mp4 frames");
    assert_eq!(a, b, "same stream, same decoded pixels");
}

/// Stream copy of the video stream of `src` into `dst` (container from the extension).
fn remux(src: &Path, dst: &Path) {
    use ffmpeg_next as ff;
    let mut ictx = ff::format::input(src).expect("open input");
    let (ist_index, ist_tb, params) = {
        let ist = ictx.streams().best(ff::media::Type::Video).expect("video stream");
        (ist.index(), ist.time_base(), ist.parameters())
    };
    let mut octx = ff::format::output(dst).expect("open output");
    {
        let mut ost = octx
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .expect("add stream");
        ost.set_parameters(params);
    }
    octx.write_header().expect("write header");
    let ost_tb = octx.stream(0).expect("output stream").time_base();
    for (stream, mut packet) in ictx.packets() {
        if stream.index() != ist_index {
            continue;
        }
        packet.rescale_ts(ist_tb, ost_tb);
        packet.set_position(-1);
        packet.set_stream(0);
        packet.write_interleaved(&mut octx).expect("write packet");
    }
    octx.write_trailer().expect("write trailer");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();

    // Missing file, directory.
    let missing = dir.path().join("nope.mp4");
    match ffmpeg::probe(&missing, &limits) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("nope.mp4"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(matches!(
        ffmpeg::read_frames(&missing, &[0], &limits),
        Err(Error::Io { .. })
    ));
    assert!(matches!(ffmpeg::probe(dir.path(), &limits), Err(Error::Io { .. })));

    // Not a media file at all.
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "these are not the frames you are looking for\n".repeat(50)).unwrap();
    match ffmpeg::probe(&text, &limits) {
        Err(e @ Error::NotAVideo { .. }) => println!("{e}"),
        other => panic!("expected NotAVideo, got {other:?}"),
    }

    // A still image is refused as a video.
    let png = dir.path().join("still.png");
    RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]))
        .save(&png)
        .unwrap();
    match ffmpeg::probe(&png, &limits) {
        Err(e @ Error::StillImage { .. }) => println!("{e}"),
        other => panic!("expected StillImage, got {other:?}"),
    }

    // Audio only: no video stream.
    let wav = dir.path().join("tone.wav");
    std::fs::write(&wav, wav_bytes(8000, 4000)).unwrap();
    match ffmpeg::probe(&wav, &limits) {
        Err(e @ Error::NoVideoStream { .. }) => println!("{e}"),
        other => panic!("expected NoVideoStream, got {other:?}"),
    }

    // Pixel limits: the frame size before decoding, the total of the frames asked for.
    let small = Limits {
        max_pixels: 360 * 640 - 1,
        ..Limits::default()
    };
    assert!(matches!(
        ffmpeg::probe(&red_panda(), &small),
        Err(Error::TooManyPixels {
            width: 360,
            height: 640,
            ..
        })
    ));
    assert!(matches!(
        ffmpeg::read_frames(&red_panda(), &[0], &small),
        Err(Error::TooManyPixels { .. })
    ));
    let total = Limits {
        max_total_pixels: 3 * 360 * 640,
        ..Limits::default()
    };
    assert!(matches!(
        ffmpeg::read_frames(&red_panda(), &[0, 1, 2, 3], &total),
        Err(Error::TooManyTotalPixels { .. })
    ));
    assert_eq!(
        ffmpeg::read_frames(&red_panda(), &[0, 1, 2], &total)
            .expect("3 frames fit")
            .len(),
        3
    );

    // More segments than frames (the reference would repeat frames).
    match ffmpeg::sample(&red_panda(), 896, None, &limits) {
        Err(
            e @ Error::Sampling {
                source:
                    internvl::image::Error::TooFewFrames {
                        num_frames: 895,
                        num_segments: 896,
                    },
                ..
            },
        ) => {
            println!("{e}")
        }
        other => panic!("expected TooFewFrames, got {:?}", other.map(|s| s.indices.len())),
    }
}

/// red-panda.mp4 cut to 30%: its index (moov, at the front) still announces 895 frames but the
/// data stops inside a packet. decord would count the packets before the cut and sample from
/// them; we refuse the file (FFmpeg flags the cut packet corrupt).
#[test]
fn truncated_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(red_panda()).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 10]).unwrap();
    match ffmpeg::probe(&cut, &Limits::default()) {
        Err(e @ Error::Read { .. }) => {
            println!("probe: {e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        other => panic!("expected a Read error, got {other:?}"),
    }
    match ffmpeg::sample(&cut, 8, None, &Limits::default()) {
        Err(e) => println!("sample: {e}"),
        Ok(s) => panic!("8 frames from a truncated file: {:?}", s.indices),
    }
    // Frames before the cut still decode; asking for one past it fails.
    assert_eq!(
        ffmpeg::read_frames(&cut, &[0, 100], &Limits::default())
            .expect("early frames")
            .len(),
        2
    );
    match ffmpeg::read_frames(&cut, &[894], &Limits::default()) {
        Err(e @ (Error::Read { .. } | Error::Decode { .. } | Error::MissingFrame { .. })) => {
            println!("read_frames: {e}")
        }
        other => panic!("expected an error, got {:?}", other.map(|f| f.len())),
    }

    // Cut inside the header: not readable at all.
    let head = dir.path().join("head.mp4");
    std::fs::write(&head, &bytes[..4000]).unwrap();
    assert!(ffmpeg::probe(&head, &Limits::default()).is_err());
}

/// A mono 16-bit PCM WAV of `n` samples.
fn wav_bytes(rate: u32, n: u32) -> Vec<u8> {
    let data_len = 2 * n;
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(2 * rate).to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let s = ((i as f32 * 0.05).sin() * 8000.0) as i16;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// The engine's video input: 8 frames, one tile each, recorded as video frames of the file and
/// reloadable one by one (what `/load` does), and the spec §5.3 question.
#[test]
fn engine_video_frames() {
    let path = red_panda();
    let frames = Image::video_frames(&path, 8, 448).expect("video_frames");
    assert_eq!(frames.len(), 8);
    for (f, &i) in frames.iter().zip(&RED_PANDA_INDICES) {
        assert_eq!(f.n_tiles(), 1);
        assert!(f.is_video_frame());
        assert_eq!(f.size(), (360, 640));
        assert_eq!(
            f.source(),
            &ImageSource::VideoFrame {
                path: path.clone(),
                index: i
            }
        );
    }
    let again = Image::frame_of(&path, 502, &TilingParams::video_frame(448)).expect("frame_of");
    assert_eq!(again.key(), frames[4].key());

    let reference = reference_prompts();
    let question = reference["video_8_frames"]["question"].as_str().expect("question");
    assert_eq!(video_question(8, QUESTION), question);
    assert_eq!(Message::video(QUESTION, frames).render().expect("render"), question);
}

/// `internvl-run -m tiny.gguf --video red-panda.mp4 --frames 8 -p "What is the red panda doing?"`:
/// 8 one-tile images and the 2156-token prompt of spec §7.3.
#[test]
fn cli_video_prompt_is_2156_tokens() {
    let model = common::tiny_gguf(42, "q8_0", &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_internvl-run"))
        .args(["-m"])
        .arg(&model)
        .arg("--video")
        .arg(red_panda())
        .args(["--frames", "8", "-p", QUESTION, "-n", "2", "--json", "-t", "2"])
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run internvl-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "internvl-run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .expect("a JSON line");
    let num = |k: &str, f: &str| j[k][f].as_u64().unwrap_or_else(|| panic!("{k}.{f} in {j}"));
    assert_eq!(j["images"].as_u64(), Some(8), "{j}");
    assert_eq!(j["tiles"].as_u64(), Some(8), "one tile per frame: {j}");
    assert_eq!(num("tokens", "image"), 8 * 256);
    assert_eq!(num("tokens", "prompt"), 2156, "spec §7.3");

    // The same count from the reference vector and from the prompt builder.
    let reference = reference_prompts();
    assert_eq!(reference["video_8_frames"]["n_tokens"].as_u64(), Some(2156));
    let tok = Tokenizer::from_dir(&common::shared().join("model/InternVL2-1B")).expect("tokenizer");
    let ids = build_prompt_ids(&tok, &Conversation::single(video_question(8, QUESTION)), &[1; 8], 256).expect("prompt");
    assert_eq!(ids.ids.len(), 2156);
}

// ---- decord parity (tests/py/make_video_fixtures.py) ---------------------------------------------

fn video_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/video")
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Frames (and their 448x448 tiles, the model card's `load_video` with `max_num=1`) of every fixture clip
/// and of red-panda.mp4 must equal decord 0.6.0's. Prints the table: clip, pixel format, range/matrix,
/// max |diff| of frames and tiles.
#[test]
fn frames_bit_identical_to_decord() {
    let text = std::fs::read_to_string(video_fixtures().join("video.json")).expect("video.json");
    let m: Value = serde_json::from_str(&text).expect("video.json is JSON");
    assert_eq!(
        m["magic"], "internvl-video-fixtures",
        "regenerate with {}",
        m["regenerate"]
    );
    assert_eq!(m["version"], 1, "regenerate with {}", m["regenerate"]);
    let params = TilingParams {
        image_size: 448,
        min_tiles: 1,
        max_tiles: 1,
        use_thumbnail: true,
    };
    println!("frames vs decord {}:", m["decord"]);
    let mut failures = Vec::new();
    let cases = m["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (video_fixtures().join(c["clip"].as_str().unwrap()), c));
    let shared = m["shared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (common::shared().join(c["clip"].as_str().unwrap()), c));
    let mut n = 0;
    for (path, case) in cases.chain(shared) {
        let name = case["clip"].as_str().unwrap();
        let info = ffmpeg::probe(&path, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            info.num_frames as u64,
            case["num_frames"].as_u64().unwrap(),
            "{name}: frame count"
        );
        let indices: Vec<usize> = case["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let frames = ffmpeg::read_frames(&path, &indices, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // max |diff| against the stored frames where there is a PNG; digests always.
        let mut frame_max = String::from("0");
        if let Some(png) = case["frames"].as_str() {
            let expected = ::image::open(video_fixtures().join(png)).expect(png).to_rgb8();
            let ours: Vec<u8> = frames.iter().flat_map(|f| f.as_raw().iter().copied()).collect();
            assert_eq!(ours.len(), expected.as_raw().len(), "{name}: frame sizes");
            let max = ours
                .iter()
                .zip(expected.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            frame_max = max.to_string();
        }
        let frames_ok = frames
            .iter()
            .zip(case["frames_sha256"].as_array().unwrap())
            .all(|(f, want)| sha256_hex(f.as_raw()) == want.as_str().unwrap());
        if !frames_ok && frame_max == "0" {
            frame_max = "?".into();
        }
        let tiles_ok = frames
            .iter()
            .zip(case["tiles_sha256"].as_array().unwrap())
            .all(|(f, want)| {
                let tiles = internvl::image::tile_u8(f, &params).expect("tile");
                tiles.len() == 1 && sha256_hex(tiles[0].as_raw()) == want.as_str().unwrap()
            });
        println!(
            "  {name:28} {:6} {:9} range={:7} matrix={:10} {:>7} frames {:?}: frame max |diff| {frame_max}, 448 tiles {}",
            case["codec"].as_str().unwrap_or("?"),
            case["pix_fmt"].as_str().unwrap_or("?"),
            case["color_range"].as_str().unwrap_or("?"),
            case["color_space"].as_str().unwrap_or("?"),
            format!("{}x{}", info.width, info.height),
            indices,
            if tiles_ok { "max |diff| 0" } else { "DIFFER" },
        );
        if !frames_ok || !tiles_ok || frame_max != "0" {
            failures.push(name.to_string());
        }
        n += 1;
    }
    assert!(n >= 10, "expected the fixture clips and red-panda.mp4");
    assert!(failures.is_empty(), "differ from decord: {failures:?}");
}
