//! Image decode (JPEG, PNG, WebP, BMP, GIF, TIFF) + InternVL dynamic tiling + bicubic resize, and raw
//! camera frames, with pixel limits low enough (4 megapixels) that one run stays fast.
//!
//! Input layout: byte 0 picks the path and the tiling parameters:
//! - bits 0-1: 0 or 1 = `load_bytes` of the rest, 2 = raw frame (a 9-byte header, then pixels),
//!   3 = every frame of an animated GIF (`video::gif_frames`) then the video frame transform;
//! - bits 2-4: tile side (`image_size`), bits 5-7: `max_tiles`; byte 1 (raw frames: after the header)
//!   is also used as-is for a `TilingParams` that may be invalid (checked by `choose_grid`).
#![no_main]

use internvl_fuzz::image::{self, video, Limits, PixelFormat, RawImage, TilingParams};
use libfuzzer_sys::fuzz_target;

const SIZES: [u32; 8] = [14, 16, 28, 32, 56, 64, 112, 448];

fn limits() -> Limits {
    Limits {
        max_pixels: 4_000_000,
        max_file_bytes: 1 << 20,
        max_total_pixels: 8_000_000,
    }
}

fn tile(rgb: &image::RgbImage, params: &TilingParams) {
    let (w, h) = rgb.dimensions();
    match image::preprocess(rgb, params) {
        Ok(tiles) => {
            let per_tile = 3 * (params.image_size as usize).pow(2);
            assert_eq!(tiles.data.len(), tiles.n * per_tile);
            assert!(tiles.n >= 1 && tiles.n <= params.max_tiles as usize + 1);
            assert!(tiles.data.iter().all(|x| x.is_finite()));
            assert!(tiles.tile(tiles.n - 1).is_some() && tiles.tile(tiles.n).is_none());
            // The uint8 crops are only built for small layouts (they copy every tile again).
            if tiles.n * per_tile <= 1 << 20 {
                if let Ok(crops) = image::tile_u8(rgb, params) {
                    assert_eq!(crops.len(), tiles.n);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // A small resize to an odd size in both directions.
    let tw = (w / 3).clamp(1, 97);
    let th = (h / 2 + 1).clamp(1, 89);
    if let Ok(r) = image::resize_bicubic(rgb, tw, th) {
        assert_eq!(r.dimensions(), (tw, th));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let params = TilingParams {
        image_size: SIZES[usize::from((ctl >> 2) & 7)],
        min_tiles: 1,
        max_tiles: u32::from(ctl >> 5) + 1 + u32::from(ctl >> 7) * 4,
        use_thumbnail: ctl & 0x10 != 0,
    };
    // Possibly invalid parameters: must be refused by validation, not crash.
    if let Some(&b) = rest.first() {
        let odd = TilingParams {
            image_size: u32::from(b) * 5,
            min_tiles: u32::from(b >> 4),
            max_tiles: u32::from(b & 0x3f),
            use_thumbnail: b & 1 == 1,
        };
        let _ = image::choose_grid(u32::from(b) * 977 + 1, u32::from(ctl) * 13, &odd);
        let _ = image::candidate_grids(odd.min_tiles, odd.max_tiles);
    }
    let limits = limits();
    match ctl & 3 {
        0 | 1 => {
            if let Ok(rgb) = image::load_bytes(rest, &limits) {
                let (w, h) = rgb.dimensions();
                assert!(u64::from(w) * u64::from(h) <= limits.max_pixels);
                tile(&rgb, &params);
            }
        }
        2 => {
            // Header: width u16, height u16, stride u32 (relative to the tight stride when bit 31 is set),
            // format u8.
            let Some((hdr, pixels)) = rest.split_at_checked(9) else {
                return;
            };
            let w = u32::from(u16::from_le_bytes([hdr[0], hdr[1]]));
            let h = u32::from(u16::from_le_bytes([hdr[2], hdr[3]]));
            let s = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let format = match hdr[8] % 4 {
                0 => PixelFormat::Rgb8,
                1 => PixelFormat::Bgr8,
                2 => PixelFormat::Rgba8,
                _ => PixelFormat::Bgra8,
            };
            let tight = w as usize * format.bytes_per_pixel();
            let stride = if s & 0x8000_0000 != 0 {
                tight + (s & 0xff) as usize
            } else {
                s as usize
            };
            let raw = RawImage {
                data: pixels,
                width: w,
                height: h,
                stride,
                format,
            };
            if let Ok(rgb) = image::from_raw(raw) {
                assert_eq!(rgb.dimensions(), (w, h));
                tile(&rgb, &params);
            }
        }
        _ => {
            if let Ok(frames) = video::gif_frames(rest, &limits) {
                let total: u64 = frames
                    .frames
                    .iter()
                    .map(|f| u64::from(f.width()) * u64::from(f.height()))
                    .sum();
                assert!(total <= limits.max_total_pixels);
                let fps = frames.fps.unwrap_or(10.0);
                let picked = video::sample_frames(&frames.frames, fps, 2.min(frames.frames.len()).max(1), None);
                if let Ok(picked) = picked {
                    let _ = video::preprocess_frames(&picked, params.image_size);
                }
            }
        }
    }
});
