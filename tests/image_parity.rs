//! Pixel parity with Pillow (spec §7.1, §7.2).
//!
//! - `image1_jpeg_tiles_bit_identical`: the 13 uint8 tiles of `../shared/media/image1.jpg` vs
//!   `../shared/reference/image1_tiles_uint8.npy` (Pillow 13 + libjpeg-turbo), max |diff| 0.
//! - `jpeg_decode_bit_identical`, `jpeg_tiles_bit_identical`: the JPEG fixtures of
//!   `tests/fixtures/images/jpeg/` (`tests/py/make_jpeg_fixtures.py`: every subsampling, progressive, restart
//!   markers, grey, CMYK with and without Adobe marker, odd sizes) decode and tile exactly as Pillow.
//! - `lossless_tiles_bit_identical`: every tiling case of `tests/fixtures/images/manifest.json`
//!   (Pillow-made, `tests/py/make_image_fixtures.py`) must match bit for bit.
//! - `resize_bit_identical`: `resize_bicubic` vs `Image.resize` on awkward sizes.
use std::path::{Path, PathBuf};

use internvl::image::{self as ivl, Limits, TilingParams};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// A fixture manifest: JSON with `magic`, `version` 1 and the command that regenerates it.
fn read_manifest(path: &Path, magic: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(m["magic"], magic, "stale fixture: regenerate with {}", m["regenerate"]);
    assert_eq!(m["version"], 1, "fixture version: regenerate with {}", m["regenerate"]);
    m
}

fn manifest() -> serde_json::Value {
    read_manifest(&fixtures().join("manifest.json"), "internvl-image-fixtures")
}

/// A plain RGB8 PNG written by the generator (expected data), decoded by the `image` crate.
fn expected_rgb(name: &str) -> ::image::RgbImage {
    ::image::open(fixtures().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

/// Max and mean absolute difference of two equally long byte slices.
fn diff_stats(a: &[u8], b: &[u8]) -> (u8, f64, usize) {
    assert_eq!(a.len(), b.len());
    let mut max = 0u8;
    let mut sum = 0u64;
    let mut count = 0usize;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        max = max.max(d);
        sum += u64::from(d);
        count += usize::from(d != 0);
    }
    (max, sum as f64 / a.len().max(1) as f64, count)
}

// ---- tiny .npy reader (uint8, C order) ----------------------------------------------------------

/// Reads a version 1/2/3 `.npy` file holding `|u1` data in C order; returns shape and bytes.
fn read_npy_u8(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an .npy file");
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => panic!("unknown .npy version {v}"),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("ascii header");
    assert!(
        header.contains("'descr': '|u1'"),
        "expected uint8 data, header {header}"
    );
    assert!(
        header.contains("'fortran_order': False"),
        "expected C order, header {header}"
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let data = bytes[start + header_len..].to_vec();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "payload size");
    (shape, data)
}

// ---- SHA-256 (FIPS 180-4), enough for fixture digests --------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_known_answers() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

// ---- tests -------------------------------------------------------------------------------------

/// image1.jpg through our decoder vs Pillow's tiles: bit-identical (JPEG is decoded by libjpeg-turbo at
/// Pillow's settings, src/image/jpeg.rs). The figures are printed either way.
#[test]
fn image1_jpeg_tiles_bit_identical() {
    let npy = shared().join("reference/image1_tiles_uint8.npy");
    let jpg = shared().join("media/image1.jpg");
    if !npy.exists() || !jpg.exists() {
        panic!(
            "shared test data missing: expected {} and {} (../shared beside the clone)",
            npy.display(),
            jpg.display()
        );
    }
    let (shape, reference) = read_npy_u8(&npy);
    assert_eq!(shape, [13, 448, 448, 3]);

    let rgb = ivl::load_path(&jpg, &Limits::default()).unwrap();
    assert_eq!(rgb.dimensions(), (1000, 747));
    let tiles = ivl::tile_u8(&rgb, &TilingParams::default()).unwrap();
    assert_eq!(tiles.len(), 13);
    let ours: Vec<u8> = tiles.iter().flat_map(|t| t.as_raw().iter().copied()).collect();

    let (max, mean, count) = diff_stats(&ours, &reference);
    println!(
        "image1.jpg tiles vs Pillow: max |diff| {max}, mean |diff| {mean:.4}, {count} of {} values differ ({:.2}%)",
        ours.len(),
        100.0 * count as f64 / ours.len() as f64
    );
    for (k, (a, b)) in ours
        .chunks(448 * 448 * 3)
        .zip(reference.chunks(448 * 448 * 3))
        .enumerate()
    {
        let (m, mn, _) = diff_stats(a, b);
        println!("  tile {k:2}: max {m:3} mean {mn:.4}");
    }
    assert_eq!(
        count, 0,
        "image1.jpg tiles differ from Pillow: max {max}, mean {mean:.4}"
    );

    // The normalised tensor is the LUT applied to these same uint8 tiles.
    let t = ivl::preprocess(&rgb, &TilingParams::default()).unwrap();
    assert_eq!((t.n, t.grid, t.orig_size), (13, (4, 3), (1000, 747)));
    let lut = ivl::normalize_lut();
    for (k, tile) in tiles.iter().enumerate() {
        let plane = t.tile(k).unwrap();
        for (i, px) in tile.pixels().enumerate() {
            for c in 0..3 {
                assert_eq!(
                    plane[c * 448 * 448 + i].to_bits(),
                    lut[c][usize::from(px.0[c])].to_bits()
                );
            }
        }
    }
}

#[test]
fn lossless_tiles_bit_identical() {
    let m = manifest();
    let cases = m["tiling"].as_array().expect("tiling cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let input = case["input"].as_str().unwrap();
        let p = &case["params"];
        let params = TilingParams {
            image_size: p["image_size"].as_u64().unwrap() as u32,
            min_tiles: p["min_tiles"].as_u64().unwrap() as u32,
            max_tiles: p["max_tiles"].as_u64().unwrap() as u32,
            use_thumbnail: p["use_thumbnail"].as_bool().unwrap(),
        };
        let label = format!("{input} {params:?}");
        let rgb =
            ivl::load_path(&fixtures().join(input), &Limits::default()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let size = [rgb.width() as u64, rgb.height() as u64];
        assert_eq!(serde_json::json!(size), case["size"], "{label}: size");
        let grid = ivl::choose_grid(rgb.width(), rgb.height(), &params).unwrap();
        assert_eq!(serde_json::json!([grid.0, grid.1]), case["grid"], "{label}: grid");
        let tiles = ivl::tile_u8(&rgb, &params).unwrap();
        assert_eq!(
            tiles.len() as u64,
            case["n_tiles"].as_u64().unwrap(),
            "{label}: tile count"
        );

        if let Some(strip) = case["tiles"].as_str() {
            let expected = expected_rgb(strip);
            let ours: Vec<u8> = tiles.iter().flat_map(|t| t.as_raw().iter().copied()).collect();
            let (max, mean, count) = diff_stats(&ours, expected.as_raw());
            assert_eq!(
                count, 0,
                "{label}: {count} values differ from Pillow (max {max}, mean {mean:.4})"
            );
        }
        let digests = case["tiles_sha256"].as_array().unwrap();
        for (k, (tile, want)) in tiles.iter().zip(digests).enumerate() {
            assert_eq!(
                sha256_hex(tile.as_raw()),
                want.as_str().unwrap(),
                "{label}: tile {k} differs from Pillow"
            );
        }
    }
    println!("{} tiling cases bit-identical to Pillow", cases.len());
}

#[test]
fn resize_bit_identical() {
    let m = manifest();
    for case in m["resize"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let to = (
            case["to"][0].as_u64().unwrap() as u32,
            case["to"][1].as_u64().unwrap() as u32,
        );
        let src = ivl::load_path(&fixtures().join(input), &Limits::default()).unwrap();
        let ours = ivl::resize_bicubic(&src, to.0, to.1).unwrap();
        let expected = expected_rgb(case["output"].as_str().unwrap());
        assert_eq!(ours.dimensions(), expected.dimensions());
        let (max, mean, count) = diff_stats(ours.as_raw(), expected.as_raw());
        assert_eq!(
            count, 0,
            "{input} -> {to:?}: {count} values differ (max {max}, mean {mean:.4})"
        );
    }
}

/// Decoding alone (Pillow `convert('RGB')`) for every non-RGB8 layout and container.
#[test]
fn lossless_decode_bit_identical() {
    let m = manifest();
    for case in m["decode"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let ours =
            ivl::load_path(&fixtures().join(input), &Limits::default()).unwrap_or_else(|e| panic!("{input}: {e}"));
        let expected = expected_rgb(case["rgb"].as_str().unwrap());
        assert_eq!(ours.dimensions(), expected.dimensions(), "{input}");
        let (max, mean, count) = diff_stats(ours.as_raw(), expected.as_raw());
        assert_eq!(
            count, 0,
            "{input} (Pillow mode {}): {count} values differ (max {max}, mean {mean:.4})",
            case["pillow_mode"]
        );
    }
}

/// Lossy formats of the general manifest: JPEG must be exact (libjpeg-turbo, as Pillow); lossy WebP
/// (image-webp vs libwebp) is a different decoder, bound mean < 0.5 and max <= 16 levels. Figures printed.
#[test]
fn lossy_decode_close() {
    let m = manifest();
    for case in m["lossy"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let ours =
            ivl::load_path(&fixtures().join(input), &Limits::default()).unwrap_or_else(|e| panic!("{input}: {e}"));
        let expected = expected_rgb(case["rgb"].as_str().unwrap());
        let (max, mean, count) = diff_stats(ours.as_raw(), expected.as_raw());
        println!("{input}: vs Pillow max |diff| {max}, mean {mean:.4}, {count} values differ");
        if input.ends_with(".jpg") {
            assert_eq!(count, 0, "{input}: max {max} mean {mean}");
        } else {
            assert!(mean < 0.5 && max <= 16, "{input}: max {max} mean {mean}");
        }
    }
}

// ---- JPEG fixtures (tests/py/make_jpeg_fixtures.py) ---------------------------------------------

fn jpeg_dir() -> PathBuf {
    fixtures().join("jpeg")
}

fn jpeg_manifest() -> serde_json::Value {
    read_manifest(&jpeg_dir().join("jpeg.json"), "internvl-jpeg-fixtures")
}

/// Every JPEG fixture decodes to exactly Pillow's `convert('RGB')`. Prints the table (name, size,
/// subsampling, Pillow mode, progressive, max |diff|).
#[test]
fn jpeg_decode_bit_identical() {
    let m = jpeg_manifest();
    let cases = m["decode"].as_array().expect("decode cases");
    assert!(cases.len() >= 20);
    println!(
        "JPEG fixtures vs Pillow {} (libjpeg-turbo {}):",
        m["pillow"], m["libjpeg_turbo"]
    );
    let mut failures = Vec::new();
    for case in cases {
        let input = case["input"].as_str().unwrap();
        let ours =
            ivl::load_path(&jpeg_dir().join(input), &Limits::default()).unwrap_or_else(|e| panic!("{input}: {e}"));
        let size = serde_json::json!([ours.width(), ours.height()]);
        assert_eq!(size, case["size"], "{input}: size");
        let digest_ok = sha256_hex(ours.as_raw()) == case["rgb_sha256"].as_str().unwrap();
        let max = match case["rgb"].as_str() {
            Some(png) => {
                let expected = ::image::open(jpeg_dir().join(png)).expect(png).to_rgb8();
                diff_stats(ours.as_raw(), expected.as_raw()).0.to_string()
            }
            None => (if digest_ok { "0" } else { "?" }).to_string(),
        };
        println!(
            "  {input:34} {:>9} {:10} {:4} progressive={:5} max |diff| {max}",
            format!("{}x{}", ours.width(), ours.height()),
            case["subsampling"].as_str().unwrap(),
            case["pillow_mode"].as_str().unwrap(),
            case["progressive"],
        );
        if !digest_ok || max != "0" {
            failures.push(format!("{input} (max |diff| {max})"));
        }
    }
    assert!(failures.is_empty(), "differ from Pillow: {failures:?}");
}

/// The tiles (InternVL dynamic tiling + Pillow bicubic) of JPEG inputs, 12 tiles + thumbnail included.
#[test]
fn jpeg_tiles_bit_identical() {
    let m = jpeg_manifest();
    for case in m["tiling"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let p = &case["params"];
        let params = TilingParams {
            image_size: p["image_size"].as_u64().unwrap() as u32,
            min_tiles: p["min_tiles"].as_u64().unwrap() as u32,
            max_tiles: p["max_tiles"].as_u64().unwrap() as u32,
            use_thumbnail: p["use_thumbnail"].as_bool().unwrap(),
        };
        let rgb =
            ivl::load_path(&jpeg_dir().join(input), &Limits::default()).unwrap_or_else(|e| panic!("{input}: {e}"));
        let grid = ivl::choose_grid(rgb.width(), rgb.height(), &params).unwrap();
        assert_eq!(serde_json::json!([grid.0, grid.1]), case["grid"], "{input}: grid");
        let tiles = ivl::tile_u8(&rgb, &params).unwrap();
        assert_eq!(
            tiles.len() as u64,
            case["n_tiles"].as_u64().unwrap(),
            "{input}: tile count"
        );
        if let Some(strip) = case["tiles"].as_str() {
            let expected = ::image::open(jpeg_dir().join(strip)).expect(strip).to_rgb8();
            let ours: Vec<u8> = tiles.iter().flat_map(|t| t.as_raw().iter().copied()).collect();
            let (max, mean, count) = diff_stats(&ours, expected.as_raw());
            assert_eq!(count, 0, "{input}: {count} values differ (max {max}, mean {mean:.4})");
        }
        for (k, (tile, want)) in tiles.iter().zip(case["tiles_sha256"].as_array().unwrap()).enumerate() {
            assert_eq!(
                sha256_hex(tile.as_raw()),
                want.as_str().unwrap(),
                "{input}: tile {k} differs from Pillow"
            );
        }
        println!("{input}: {} tiles (grid {grid:?}) bit-identical to Pillow", tiles.len());
    }
}
