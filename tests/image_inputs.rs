//! Inputs other than pixel parity: candidate-grid order, grid choice, video frame indices,
//! normalisation constants, raw buffers, video frame sources and every bad-input error.
//! Goldens come from `tests/py/make_image_fixtures.py` (Python reference code, Pillow, torchvision).
use std::path::{Path, PathBuf};

use internvl::image::{self as ivl, video, Error, Limits, PixelFormat, RawImage, TilingParams};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json(name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&read(name)).expect("fixture JSON");
    assert_eq!(
        v["magic"], "internvl-image-fixtures",
        "{name}: regenerate with {}",
        v["regenerate"]
    );
    assert_eq!(v["version"], 1, "{name}: regenerate with {}", v["regenerate"]);
    v
}

/// Data lines of a text fixture: "<key>: <value>", after a header naming its magic.
fn text_fixture(name: &str) -> Vec<(String, String)> {
    let text = read(name);
    assert!(
        text.starts_with("# internvl-image-fixtures"),
        "{name}: bad magic, regenerate the fixtures"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("key: value");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn parse_grids(s: &str) -> Vec<(u32, u32)> {
    s.split_whitespace()
        .map(|p| {
            let (i, j) = p.split_once(',').expect("i,j");
            (i.parse().unwrap(), j.parse().unwrap())
        })
        .collect()
}

// ---- tiling decisions --------------------------------------------------------------------------

#[test]
fn candidate_order_matches_cpython() {
    let lines = text_fixture("grid_order.txt");
    assert!(lines.len() >= 80);
    for (key, value) in &lines {
        let mut it = key.split_whitespace().map(|x| x.parse::<u32>().unwrap());
        let (min, max) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(
            ivl::candidate_grids(min, max).unwrap(),
            parse_grids(value),
            "min {min} max {max}"
        );
    }
}

#[test]
fn grid_choice_matches_reference() {
    let lines = text_fixture("grid_choice.txt");
    assert!(lines.len() >= 600);
    for (key, value) in &lines {
        let v: Vec<u32> = key.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let params = TilingParams {
            image_size: v[4],
            min_tiles: v[2],
            max_tiles: v[3],
            use_thumbnail: true,
        };
        let want = parse_grids(value)[0];
        assert_eq!(ivl::choose_grid(v[0], v[1], &params).unwrap(), want, "{key}");
    }
}

#[test]
fn tiles_struct_shape_and_thumbnail_rules() {
    let img = ivl::RgbImage::from_fn(1000, 747, |x, y| ::image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    let t = ivl::preprocess(&img, &TilingParams::default()).unwrap();
    assert_eq!((t.n, t.grid, t.orig_size, t.image_size), (13, (4, 3), (1000, 747), 448));
    assert_eq!(t.data.len(), 13 * 3 * 448 * 448);
    assert!(t.tile(12).is_some() && t.tile(13).is_none());
    let no_thumb = TilingParams {
        use_thumbnail: false,
        ..TilingParams::default()
    };
    assert_eq!(ivl::preprocess(&img, &no_thumb).unwrap().n, 12);
    // One tile: no thumbnail even when enabled.
    let square = ivl::RgbImage::new(300, 300);
    assert_eq!(ivl::tile_u8(&square, &TilingParams::default()).unwrap().len(), 1);
    // Channel planes: R of the first pixel of tile 0, then G, then B.
    let lut = ivl::normalize_lut();
    let tiles = ivl::tile_u8(&img, &TilingParams::default()).unwrap();
    let p = tiles[0].get_pixel(5, 9).0;
    let plane = 448 * 448;
    let i = 9 * 448 + 5;
    assert_eq!(
        [t.data[i], t.data[plane + i], t.data[2 * plane + i]],
        [lut[0][p[0] as usize], lut[1][p[1] as usize], lut[2][p[2] as usize]]
    );
}

#[test]
fn normalize_lut_matches_torchvision() {
    let v = json("normalize_lut.json");
    let ours = ivl::normalize_lut();
    for c in 0..3 {
        for val in 0..256 {
            let want = v["lut_bits"][c][val].as_u64().unwrap() as u32;
            assert_eq!(
                ours[c][val].to_bits(),
                want,
                "channel {c} value {val}: ours {} torch {}",
                ours[c][val],
                f32::from_bits(want)
            );
        }
    }
}

// ---- video -------------------------------------------------------------------------------------

#[test]
fn frame_indices_match_reference_get_index() {
    let v = json("frame_indices.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let bound = c["bound"]
            .as_array()
            .map(|b| (b[0].as_f64().unwrap(), b[1].as_f64().unwrap()));
        let got = video::frame_indices(
            c["num_frames"].as_u64().unwrap() as usize,
            c["fps"].as_f64().unwrap(),
            c["num_segments"].as_u64().unwrap() as usize,
            bound,
        )
        .unwrap();
        let want: Vec<usize> = c["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, want, "case {c}");
    }
}

#[test]
fn red_panda_frames() {
    let fps = 895_000.0 / 29_833.0;
    assert_eq!(
        video::frame_indices(895, fps, 8, None).unwrap(),
        [55, 167, 279, 390, 502, 614, 725, 837]
    );
}

#[test]
fn video_errors() {
    assert!(matches!(
        video::frame_indices(7, 30.0, 8, None),
        Err(Error::TooFewFrames {
            num_frames: 7,
            num_segments: 8
        })
    ));
    assert!(matches!(
        video::frame_indices(7, 30.0, 0, None),
        Err(Error::ZeroSegments)
    ));
    assert!(matches!(
        video::frame_indices(70, 0.0, 8, None),
        Err(Error::BadFps { .. })
    ));
    assert!(matches!(
        video::frame_indices(70, f64::NAN, 8, None),
        Err(Error::BadFps { .. })
    ));
    assert!(matches!(
        video::frame_indices(70, 30.0, 8, Some((2.0, 1.0))),
        Err(Error::BadBound { .. })
    ));
    assert!(matches!(
        video::frame_indices(70, 30.0, 8, Some((0.0, f64::INFINITY))),
        Err(Error::BadBound { .. })
    ));
    // Starts after the last frame (70 frames at 30 fps last 2.3 s).
    let e = video::frame_indices(70, 30.0, 8, Some((10.0, 20.0))).unwrap_err();
    assert!(matches!(e, Error::BadBound { .. }), "{e}");
    assert!(e.to_string().contains("no frame"), "{e}");
}

#[test]
fn gif_frames_match_pillow() {
    let m = json("manifest.json");
    let case = &m["animation"][0];
    let gif = fixtures().join(case["input"].as_str().unwrap());
    let frames = video::load_gif(&gif, &Limits::default()).unwrap();
    let n = case["n_frames"].as_u64().unwrap() as usize;
    assert_eq!(frames.frames.len(), n);
    let fps = frames.fps.expect("GIF delays give an fps");
    assert!((fps - case["fps"].as_f64().unwrap()).abs() < 1e-9, "fps {fps}");
    let expected = ::image::open(fixtures().join(case["frames"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let ours: Vec<u8> = frames.frames.iter().flat_map(|f| f.as_raw().iter().copied()).collect();
    assert_eq!(ours, expected.as_raw().as_slice(), "frames differ from Pillow's");
    // Frame 0 is what the still-image loader returns.
    let still = ivl::load_path(&gif, &Limits::default()).unwrap();
    assert_eq!(still, frames.frames[0]);
    // Sampling and per-frame preprocessing.
    let picked = video::sample_frames(&frames.frames, fps, 2, None).unwrap();
    assert_eq!(picked.len(), 2);
    let tiles = video::preprocess_frames(&picked, 448).unwrap();
    assert_eq!(tiles.len(), 2);
    assert!(tiles
        .iter()
        .all(|t| t.n == 1 && t.grid == (1, 1) && t.data.len() == 3 * 448 * 448));
    assert!(matches!(
        video::sample_frames(&frames.frames, fps, 5, None),
        Err(Error::TooFewFrames { .. })
    ));
}

#[test]
fn frame_directory_sampling() {
    let dir = tempfile::tempdir().unwrap();
    // 12 frames, frame k filled with value k*20; names sort in frame order; plus files to skip.
    for k in 0..12u8 {
        let img = ivl::RgbImage::from_pixel(8 + u32::from(k), 6, ::image::Rgb([k * 20, 1, 2]));
        img.save(dir.path().join(format!("frame_{k:04}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not a frame").unwrap();
    std::fs::write(dir.path().join(".hidden.png"), "not a frame").unwrap();
    std::fs::create_dir(dir.path().join("sub.png")).unwrap();
    let paths = video::frame_dir_paths(dir.path()).unwrap();
    assert_eq!(paths.len(), 12);
    let frames = video::sample_frame_dir(dir.path(), 30.0, 4, None, &Limits::default()).unwrap();
    let want = video::frame_indices(12, 30.0, 4, None).unwrap();
    let got: Vec<usize> = frames
        .iter()
        .map(|f| usize::from(f.get_pixel(0, 0).0[0] / 20))
        .collect();
    assert_eq!(got, want);
    assert_eq!(frames[0].width(), 8 + want[0] as u32);

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        video::frame_dir_paths(empty.path()),
        Err(Error::NoFrames { .. })
    ));
    assert!(matches!(
        video::sample_frame_dir(dir.path(), 30.0, 13, None, &Limits::default()),
        Err(Error::TooFewFrames {
            num_frames: 12,
            num_segments: 13
        })
    ));
    let tight = Limits {
        max_total_pixels: 100,
        ..Limits::default()
    };
    assert!(matches!(
        video::sample_frame_dir(dir.path(), 30.0, 4, None, &tight),
        Err(Error::TooManyTotalPixels { .. })
    ));
}

// ---- raw camera buffers ------------------------------------------------------------------------

#[test]
fn raw_buffers_all_formats_with_padding() {
    let (w, h) = (5u32, 3u32);
    let expected = ivl::RgbImage::from_fn(w, h, |x, y| ::image::Rgb([x as u8 * 10, y as u8 * 10, 99]));
    for format in [
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Rgba8,
        PixelFormat::Bgra8,
    ] {
        let bpp = format.bytes_per_pixel();
        let stride = w as usize * bpp + 3; // padded rows
        let mut data = vec![0xEEu8; stride * (h as usize - 1) + w as usize * bpp]; // last row unpadded
        for (x, y, p) in expected.enumerate_pixels() {
            let o = y as usize * stride + x as usize * bpp;
            let [r, g, b] = p.0;
            let px: &[u8] = match format {
                PixelFormat::Rgb8 => &[r, g, b],
                PixelFormat::Bgr8 => &[b, g, r],
                PixelFormat::Rgba8 => &[r, g, b, 0],
                PixelFormat::Bgra8 => &[b, g, r, 0],
            };
            data[o..o + bpp].copy_from_slice(px);
        }
        let img = ivl::from_raw(RawImage {
            data: &data,
            width: w,
            height: h,
            stride,
            format,
        })
        .unwrap();
        assert_eq!(img, expected, "{format:?}");
    }
}

#[test]
fn raw_buffer_errors() {
    let data = vec![0u8; 100];
    let raw = |width, height, stride, format| RawImage {
        data: &data,
        width,
        height,
        stride,
        format,
    };
    assert!(matches!(
        ivl::from_raw(raw(0, 3, 12, PixelFormat::Rgb8)),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        ivl::from_raw(raw(4, 0, 12, PixelFormat::Rgb8)),
        Err(Error::ZeroSize { .. })
    ));
    let e = ivl::from_raw(raw(4, 3, 15, PixelFormat::Rgba8)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RawStride {
                stride: 15,
                min_stride: 16,
                ..
            }
        ),
        "{e}"
    );
    let e = ivl::from_raw(raw(4, 9, 12, PixelFormat::Rgb8)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RawBufferTooShort {
                len: 100,
                needed: 108,
                ..
            }
        ),
        "{e}"
    );
    // Huge claims do not overflow.
    let e = ivl::from_raw(raw(u32::MAX, u32::MAX, usize::MAX, PixelFormat::Bgra8)).unwrap_err();
    assert!(matches!(e, Error::RawBufferTooShort { .. }), "{e}");
}

// ---- bad encoded inputs ------------------------------------------------------------------------

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `w`×`h` RGB8 pixels, with a tiny IDAT (not enough data).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // zlib stream of a few zero bytes.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

#[test]
fn decompression_bomb_refused_before_allocation() {
    let bomb = png_claiming(100_000, 100_000);
    let e = ivl::load_bytes(&bomb, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooManyPixels {
                width: 100_000,
                height: 100_000,
                pixels: 10_000_000_000,
                limit: 89_478_485,
                ..
            }
        ),
        "{e}"
    );
    // A real image (37x23 = 851 pixels) against a limit just below and at its size.
    assert!(ivl::load_path(
        &fixtures().join("rgb_37x23.png"),
        &Limits {
            max_pixels: 851,
            ..Limits::default()
        }
    )
    .is_ok());
    let tiny = Limits {
        max_pixels: 850,
        ..Limits::default()
    };
    assert!(matches!(
        ivl::load_path(&fixtures().join("rgb_37x23.png"), &tiny),
        Err(Error::TooManyPixels { pixels: 851, .. })
    ));
    // The GIF path checks the logical screen too.
    let gif = std::fs::read(fixtures().join("anim_64x40.gif")).unwrap();
    let e = video::gif_frames(
        &gif,
        &Limits {
            max_pixels: 100,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::TooManyPixels { .. }), "{e}");
}

#[test]
fn file_size_limit() {
    let lim = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    assert!(matches!(
        ivl::load_path(&fixtures().join("rgb_37x23.png"), &lim),
        Err(Error::FileTooLarge { .. })
    ));
    assert!(matches!(
        ivl::load_bytes(&[0u8; 11], &lim),
        Err(Error::FileTooLarge { len: 11, .. })
    ));
}

#[test]
fn corrupt_and_truncated() {
    let good = std::fs::read(fixtures().join("rgb_1000x747.png")).unwrap();
    for cut in [good.len() / 2, 60, 20] {
        let e = ivl::load_bytes(&good[..cut], &Limits::default()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "PNG cut at {cut}: {e}");
    }
    // Valid signature, garbage after it.
    let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
    garbage.extend_from_slice(&[0xAB; 64]);
    assert!(matches!(
        ivl::load_bytes(&garbage, &Limits::default()),
        Err(Error::Corrupt { .. })
    ));
    // Every container cut short is refused (libjpeg alone would only warn and fill a cut JPEG with grey).
    for name in [
        "q90_160x120.jpg",
        "q95_444_160x120.jpg",
        "rgb_160x120.bmp",
        "rgb_160x120.tif",
        "rgb_160x120.webp",
        "lossy_160x120.webp",
        "palette_160x120.gif",
        "palette_257x129.png",
    ] {
        let full = std::fs::read(fixtures().join(name)).unwrap();
        assert!(ivl::load_bytes(&full, &Limits::default()).is_ok(), "{name} uncut");
        // One byte short: a GIF without its trailer or a PNG without a complete IEND still holds the
        // whole image, and Pillow loads both; JPEG (no EOI) and WebP (short RIFF) it refuses.
        let lenient = name.ends_with(".gif") || name.ends_with(".png");
        let last = if lenient { full.len() * 9 / 10 } else { full.len() - 1 };
        for cut in [full.len() * 9 / 10, full.len() / 2, 100, last] {
            match ivl::load_bytes(&full[..cut], &Limits::default()) {
                Err(Error::Corrupt { .. }) => {}
                other => panic!(
                    "{name} cut at {cut} of {}: {:?}",
                    full.len(),
                    other.map(|i| i.dimensions())
                ),
            }
        }
    }
    // A PNG header announcing a zero-width image.
    let e = ivl::load_bytes(&png_claiming(0, 10), &Limits::default()).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. } | Error::ZeroSize { .. }), "{e}");
}

#[test]
fn unsupported_formats() {
    for (what, bytes) in [
        ("text", b"hello, this is not an image".to_vec()),
        ("empty", Vec::new()),
        ("PPM (format not enabled)", b"P6\n2 2\n255\n012345678901".to_vec()),
        ("TGA-less random", vec![0u8; 40]),
    ] {
        let e = ivl::load_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(matches!(e, Error::UnsupportedFormat { .. }), "{what}: {e}");
    }
    let missing = ivl::load_path(Path::new("/nonexistent/x.png"), &Limits::default()).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("/nonexistent/x.png"));
}

#[test]
fn tiling_parameter_errors() {
    let img = ivl::RgbImage::new(10, 10);
    let p = |min_tiles, max_tiles, image_size| TilingParams {
        image_size,
        min_tiles,
        max_tiles,
        use_thumbnail: true,
    };
    assert!(matches!(
        ivl::preprocess(&img, &p(1, 0, 448)),
        Err(Error::MaxTilesOutOfRange {
            max_tiles: 0,
            limit: 40
        })
    ));
    assert!(matches!(
        ivl::preprocess(&img, &p(1, 41, 448)),
        Err(Error::MaxTilesOutOfRange { max_tiles: 41, .. })
    ));
    assert!(matches!(
        ivl::tile_u8(&img, &p(5, 4, 448)),
        Err(Error::MinTilesOutOfRange {
            min_tiles: 5,
            max_tiles: 4
        })
    ));
    assert!(matches!(
        ivl::tile_u8(&img, &p(0, 4, 448)),
        Err(Error::MinTilesOutOfRange { .. })
    ));
    assert!(matches!(
        ivl::preprocess(&img, &p(1, 12, 0)),
        Err(Error::ImageSizeOutOfRange { .. })
    ));
    assert!(matches!(
        ivl::candidate_grids(3, 2),
        Err(Error::MinTilesOutOfRange { .. })
    ));
    assert!(matches!(
        ivl::choose_grid(0, 10, &TilingParams::default()),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        ivl::resize_bicubic(&img, 0, 5),
        Err(Error::EmptyResize { .. })
    ));
    assert!(matches!(
        ivl::preprocess(&ivl::RgbImage::new(0, 0), &TilingParams::default()),
        Err(Error::ZeroSize { .. })
    ));
    // Max 40 works end to end.
    assert_eq!(
        ivl::candidate_grids(1, 40).unwrap().len(),
        (1..=40u32).map(|n| 40 / n).sum::<u32>() as usize
    );
}

#[test]
fn bytes_and_path_agree() {
    let path = fixtures().join("palette_257x129.png");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        ivl::load_bytes(&bytes, &Limits::default()).unwrap(),
        ivl::load_path(&path, &Limits::default()).unwrap()
    );
}
