//! Video inputs (spec §7.3, HF README `get_index` / `load_video`): which frames to sample, and two
//! frame sources that need no extra dependency, an animated GIF and a directory of image files.
//! Containers such as MP4, MKV and WebM are decoded by `super::ffmpeg` (the `video` feature).
//!
//! Each sampled frame then goes through `dynamic_preprocess(max_num=1)`: one plain bicubic resize
//! to `image_size²` (aspect not kept) and no thumbnail; see [`preprocess_frames`].
use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::codecs::gif::GifDecoder;
use ::image::{AnimationDecoder, ImageDecoder, RgbImage};

use super::decode::{check_dimensions, decoder_limits, load_path, map_image_error, read_file, Limits};
use super::error::{Error, Result};
use super::tiling::{preprocess, Tiles, TilingParams};

/// The reference's `get_index(bound, fps, max_frame, first_idx=0, num_segments)`.
///
/// Without a bound the reference uses `(-100000, 100000)` seconds, i.e. the whole video for any
/// sane fps. With `bound = Some((start_s, end_s))`:
/// `start_idx = max(0, round(start_s·fps))`, `end_idx = min(round(end_s·fps), num_frames - 1)`
/// (`round` is Python's half-to-even), `seg = (end_idx - start_idx) / num_segments` and
/// `idx_k = int(start_idx + seg/2 + round_half_even(seg·k))`.
///
/// red-panda.mp4 (895 frames, 8 segments) gives `[55, 167, 279, 390, 502, 614, 725, 837]`.
///
/// Errors: [`Error::ZeroSegments`], [`Error::TooFewFrames`] (fewer frames than segments; the
/// reference would repeat frames), [`Error::BadFps`], [`Error::BadBound`] (non-finite, reversed,
/// or after the end of the video). A bound narrower than `num_segments` frames repeats frames, as
/// the reference does.
pub fn frame_indices(
    num_frames: usize,
    fps: f64,
    num_segments: usize,
    bound: Option<(f64, f64)>,
) -> Result<Vec<usize>> {
    if num_segments == 0 {
        return Err(Error::ZeroSegments);
    }
    if num_frames < num_segments {
        return Err(Error::TooFewFrames {
            num_frames,
            num_segments,
        });
    }
    if !(fps.is_finite() && fps > 0.0) {
        return Err(Error::BadFps { fps });
    }
    let (start, end) = match bound {
        Some((s, e)) if !(s.is_finite() && e.is_finite()) => {
            return Err(Error::BadBound {
                start: s,
                end: e,
                reason: "is not finite",
            })
        }
        Some((s, e)) if s > e => {
            return Err(Error::BadBound {
                start: s,
                end: e,
                reason: "starts after it ends",
            })
        }
        Some(b) => b,
        None => (-100_000.0, 100_000.0),
    };
    let max_frame = (num_frames - 1) as f64;
    // Python ints equal these integer-valued floats exactly; every value stays below 2^53.
    let start_idx = (start * fps).round_ties_even().max(0.0);
    let end_idx = (end * fps).round_ties_even().min(max_frame);
    if end_idx < start_idx {
        return Err(Error::BadBound {
            start,
            end,
            reason: "selects no frame of the video",
        });
    }
    let seg = (end_idx - start_idx) / num_segments as f64;
    Ok((0..num_segments)
        .map(|k| {
            let idx = (start_idx + seg / 2.0 + (seg * k as f64).round_ties_even()).trunc();
            // idx <= end_idx - seg/2 + 0.5 truncates to at most end_idx; the min only guards the cast.
            (idx as usize).min(num_frames - 1)
        })
        .collect())
}

/// Decoded frames of a video source, in display order.
#[derive(Clone, Debug)]
pub struct Frames {
    pub frames: Vec<RgbImage>,
    /// Average frame rate when the source knows it (GIF: frames / total delay), else `None`.
    pub fps: Option<f64>,
}

/// Every frame of an animated GIF file; see [`gif_frames`].
pub fn load_gif(path: &Path, limits: &Limits) -> Result<Frames> {
    let bytes = read_file(path, limits)?;
    decode_gif(&bytes, &path.display().to_string(), limits)
}

/// Every frame of an animated GIF held in memory, composited on the logical screen by the `image`
/// crate (disposal methods applied) and converted to RGB by dropping alpha.
///
/// Frame 0 equals [`super::load_bytes`] of the same GIF, which matches Pillow for frames that cover
/// the screen. Pillow composites later frames its own way; they are not checked against it.
/// The screen size is checked against `limits.max_pixels` and the running total against
/// `limits.max_total_pixels` before each frame is kept.
pub fn gif_frames(bytes: &[u8], limits: &Limits) -> Result<Frames> {
    let origin = "<memory>";
    let len = bytes.len() as u64;
    if len > limits.max_file_bytes {
        return Err(Error::FileTooLarge {
            origin: origin.into(),
            len,
            limit: limits.max_file_bytes,
        });
    }
    decode_gif(bytes, origin, limits)
}

fn decode_gif(bytes: &[u8], origin: &str, limits: &Limits) -> Result<Frames> {
    let mut decoder = GifDecoder::new(Cursor::new(bytes)).map_err(|e| map_image_error(e, origin))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h, origin, limits)?;
    decoder
        .set_limits(decoder_limits(limits))
        .map_err(|e| map_image_error(e, origin))?;
    let per_frame = u64::from(w) * u64::from(h);
    let mut frames = Vec::new();
    let mut total_ms = 0f64;
    for frame in decoder.into_frames() {
        if per_frame.saturating_mul(frames.len() as u64 + 1) > limits.max_total_pixels {
            return Err(Error::TooManyTotalPixels {
                origin: origin.into(),
                limit: limits.max_total_pixels,
            });
        }
        let frame = frame.map_err(|e| map_image_error(e, origin))?;
        let (numer, denom) = frame.delay().numer_denom_ms();
        if denom != 0 {
            total_ms += f64::from(numer) / f64::from(denom);
        }
        let rgba = frame.into_buffer();
        let (fw, fh) = rgba.dimensions();
        let rgb: Vec<u8> = rgba.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2]]).collect();
        let rgb = RgbImage::from_raw(fw, fh, rgb).ok_or_else(|| Error::Corrupt {
            origin: origin.into(),
            detail: "frame buffer size mismatch".into(),
        })?;
        frames.push(rgb);
    }
    if frames.is_empty() {
        return Err(Error::NoFrames { origin: origin.into() });
    }
    let fps = (total_ms > 0.0).then(|| frames.len() as f64 * 1000.0 / total_ms);
    Ok(Frames { frames, fps })
}

/// File extensions (lower-case) treated as frames in a frame directory.
const FRAME_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// The image files of a frame directory, sorted by file name (byte order, so number frames with
/// zero padding: `frame_0009.png` before `frame_0010.png`). Hidden files, sub-directories and
/// other extensions are skipped.
pub fn frame_dir_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let io_err = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let path = entry.path();
        let name = entry.file_name();
        let hidden = name.to_string_lossy().starts_with('.');
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| FRAME_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !hidden && is_image && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if paths.is_empty() {
        return Err(Error::NoFrames {
            origin: dir.display().to_string(),
        });
    }
    Ok(paths)
}

/// Samples `num_segments` frames from a directory of frame images (see [`frame_dir_paths`]) with
/// [`frame_indices`], decoding only the selected files.
pub fn sample_frame_dir(
    dir: &Path,
    fps: f64,
    num_segments: usize,
    bound: Option<(f64, f64)>,
    limits: &Limits,
) -> Result<Vec<RgbImage>> {
    let paths = frame_dir_paths(dir)?;
    let indices = frame_indices(paths.len(), fps, num_segments, bound)?;
    let mut total = 0u64;
    let mut frames = Vec::with_capacity(indices.len());
    for i in indices {
        let path = paths.get(i).ok_or_else(|| Error::NoFrames {
            origin: dir.display().to_string(),
        })?;
        let frame = load_path(path, limits)?;
        total = total.saturating_add(u64::from(frame.width()) * u64::from(frame.height()));
        if total > limits.max_total_pixels {
            return Err(Error::TooManyTotalPixels {
                origin: dir.display().to_string(),
                limit: limits.max_total_pixels,
            });
        }
        frames.push(frame);
    }
    Ok(frames)
}

/// Picks `num_segments` frames out of already decoded ones with [`frame_indices`].
pub fn sample_frames(
    frames: &[RgbImage],
    fps: f64,
    num_segments: usize,
    bound: Option<(f64, f64)>,
) -> Result<Vec<RgbImage>> {
    let indices = frame_indices(frames.len(), fps, num_segments, bound)?;
    Ok(indices.into_iter().filter_map(|i| frames.get(i).cloned()).collect())
}

/// `load_video`'s per-frame transform: each frame becomes one `image_size²` tile (plain bicubic
/// resize, no thumbnail) normalised like an image tile. One [`Tiles`] (with `n == 1`) per frame.
pub fn preprocess_frames(frames: &[RgbImage], image_size: u32) -> Result<Vec<Tiles>> {
    let params = TilingParams::video_frame(image_size);
    frames.iter().map(|f| preprocess(f, &params)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_panda_indices() {
        let fps = 895_000.0 / 29_833.0;
        assert_eq!(
            frame_indices(895, fps, 8, None).unwrap(),
            [55, 167, 279, 390, 502, 614, 725, 837]
        );
    }
}
