//! Pillow-exact bicubic resize of RGB8 images (spec §7.2; Pillow `src/libImaging/Resample.c`).
//!
//! What must match Pillow bit for bit:
//! - the filter: Keys cubic with `a = -0.5`, support 2, stretched by `filterscale = max(in/out, 1)`
//!   when downscaling (antialiasing);
//! - per output index the tap window `[xmin, xmax)` computed with C `(int)` truncation, the f64
//!   weights `filter((x + xmin - center + 0.5) * (1 / filterscale))` normalised by their sum, then
//!   turned into 22-bit fixed point with round-half-away-from-zero;
//! - the accumulator starts at `1 << 21` and the result is `acc >> 22` clamped to 0..=255;
//! - two passes through an 8-bit intermediate; a pass is skipped when its dimension is unchanged;
//! - the pass order. Classic Pillow (and spec §7.2) always runs the horizontal pass first, into an
//!   intermediate holding only the source rows the vertical pass reads. Pillow 13 (PR #9549, "if
//!   height is scaled down significantly more than width, resize vertically first") runs the
//!   vertical pass first when `out_h < in_h` and `in_h - out_h > 2 * (in_w - out_w)`. We found that
//!   rule by probing Pillow 13.0.0 (several thousand random and boundary sizes, no exception) and
//!   the fixtures `tests/fixtures/images/resize_*` pin it. The order changes the 8-bit rounding of
//!   the intermediate, so it matters for bit-exactness (tall images, e.g. a 500×2400 photo).
//!
//! Rows are independent within a pass, so both passes run in parallel over output rows (rayon).
use ::image::RgbImage;
use rayon::prelude::*;

use super::error::{Error, Result};

/// Fractional bits of the fixed-point weights: `32 - 8 - 2` in Pillow.
const PRECISION_BITS: u32 = 22;
/// Rounding offset the accumulators start from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// Support of the bicubic filter.
const SUPPORT: f64 = 2.0;
/// Pillow's bicubic `a`.
const A: f64 = -0.5;
/// RGB channels per pixel.
const CH: usize = 3;

/// Pillow's `bicubic_filter` (same operation order, so the same f64 results).
fn bicubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `clip8`: `acc >> 22` saturated to a byte.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Fixed-point taps for one axis (`precompute_coeffs` + `normalize_coeffs_8bpc`).
///
/// Invariant (by construction, for every size): `start + len <= in_size` for each output index, so
/// slicing the source with these windows cannot go out of bounds.
struct Kernel {
    /// Per output index: first source index and number of taps.
    windows: Vec<(usize, usize)>,
    /// `ksize` weights per output index; only the first `len` are used.
    weights: Vec<i32>,
    ksize: usize,
}

impl Kernel {
    fn new(in_size: u32, out_size: u32) -> Kernel {
        // Pillow: `scale = (double)(in1 - in0) / outSize` with `in0, in1` C floats (box = 0..in).
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let in_size = in_size as usize;

        let mut windows = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0i32; out_size as usize * ksize];
        let mut w = vec![0f64; ksize];
        for (xx, k_out) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero, as does `as i64`.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let len = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(len) {
                *wx = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            for (k, wx) in k_out.iter_mut().zip(&w).take(len) {
                let v = if ww != 0.0 { wx / ww } else { *wx };
                let fixed = v * f64::from(1u32 << PRECISION_BITS);
                *k = if v < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            windows.push((xmin, len));
        }
        Kernel {
            windows,
            weights,
            ksize,
        }
    }

    /// Source window start and the weights for output index `o`.
    #[inline(always)]
    fn taps(&self, o: usize) -> (usize, &[i32]) {
        let (start, len) = self.windows[o];
        (start, &self.weights[o * self.ksize..o * self.ksize + len])
    }

    /// The same taps as exactly `ksize` weights per output, windows shifted left at the right edge
    /// and padded with zero weights (which add exactly 0, so results are unchanged). A fixed trip
    /// count lets the horizontal loop unroll. `None` when the source is narrower than `ksize`.
    fn fixed_width(&self, in_size: usize) -> Option<(Vec<usize>, Vec<i32>)> {
        let ks = self.ksize;
        if in_size < ks {
            return None;
        }
        let mut starts = Vec::with_capacity(self.windows.len());
        let mut weights = vec![0i32; self.windows.len() * ks];
        for (o, out) in weights.chunks_exact_mut(ks).enumerate() {
            let (start, ws) = self.taps(o);
            // start + len <= in_size, so the shifted window still holds every tap.
            let fixed_start = start.min(in_size - ks);
            let shift = start - fixed_start;
            out[shift..shift + ws.len()].copy_from_slice(ws);
            starts.push(fixed_start);
        }
        Some((starts, weights))
    }
}

/// Resizes like Pillow's `Image.resize((width, height))` with the default `BICUBIC` filter on an
/// RGB image. Same size returns a copy, as Pillow does.
///
/// Errors with [`Error::EmptyResize`] when the source or the target has a zero dimension.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let (in_w, in_h) = src.dimensions();
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return Err(Error::EmptyResize {
            from_width: in_w,
            from_height: in_h,
            to_width: width,
            to_height: height,
        });
    }
    let need_h = width != in_w;
    let need_v = height != in_h;
    if !need_h && !need_v {
        return Ok(src.clone());
    }
    let src_buf: &[u8] = src.as_raw();
    let out = if need_h && need_v && vertical_first(in_w, in_h, width, height) {
        let tmp = vertical(src_buf, in_w as usize, 0, &Kernel::new(in_h, height), height as usize);
        horizontal(
            &tmp,
            in_w as usize,
            0..height as usize,
            &Kernel::new(in_w, width),
            width as usize,
        )
    } else if need_h {
        let vert = need_v.then(|| Kernel::new(in_h, height));
        // Source rows the vertical pass reads (Pillow's ybox_first..ybox_last).
        let rows = match &vert {
            Some(v) => {
                let first = v.windows.first().map_or(0, |w| w.0);
                let last = v.windows.last().map_or(0, |w| w.0 + w.1);
                first..last
            }
            None => 0..in_h as usize,
        };
        let horiz = Kernel::new(in_w, width);
        let tmp = horizontal(src_buf, in_w as usize, rows.clone(), &horiz, width as usize);
        match vert {
            Some(v) => vertical(&tmp, width as usize, rows.start, &v, height as usize),
            None => tmp,
        }
    } else {
        vertical(src_buf, in_w as usize, 0, &Kernel::new(in_h, height), height as usize)
    };
    RgbImage::from_raw(width, height, out).ok_or(Error::EmptyResize {
        from_width: in_w,
        from_height: in_h,
        to_width: width,
        to_height: height,
    })
}

/// Pillow 13's pass-order rule (module docs): vertical first when the height shrinks by more than
/// twice as many pixels as the width does.
fn vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    out_h < in_h && i64::from(in_h) - i64::from(out_h) > 2 * (i64::from(in_w) - i64::from(out_w))
}

/// Horizontal pass over source rows `rows`, producing `rows.len()` rows of `out_w` pixels.
fn horizontal(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, k: &Kernel, out_w: usize) -> Vec<u8> {
    // Fixed tap counts for the common filter widths (upscaling: 5; downscaling by up to 4x: 7..=17).
    macro_rules! fixed {
        ($($n:literal)*) => {
            match k.ksize {
                $($n => if let Some((starts, weights)) = k.fixed_width(in_w) {
                    return horizontal_fixed::<$n>(src, in_w, rows, &starts, &weights, out_w);
                },)*
                _ => {}
            }
        };
    }
    fixed!(5 7 9 11 13 15 17);
    horizontal_any(src, in_w, rows, k, out_w)
}

/// [`horizontal`] with exactly `KS` taps per output pixel (see [`Kernel::fixed_width`]).
fn horizontal_fixed<const KS: usize>(
    src: &[u8],
    in_w: usize,
    rows: std::ops::Range<usize>,
    starts: &[usize],
    weights: &[i32],
    out_w: usize,
) -> Vec<u8> {
    let in_row = in_w * CH;
    let out_row = out_w * CH;
    let mut out = vec![0u8; rows.len() * out_row];
    let first = rows.start;
    out.par_chunks_mut(out_row).enumerate().for_each(|(r, orow)| {
        let y = first + r;
        let srow = &src[y * in_row..(y + 1) * in_row];
        for ((opx, &start), ws) in orow.chunks_exact_mut(CH).zip(starts).zip(weights.chunks_exact(KS)) {
            let px = &srow[start * CH..(start + KS) * CH];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for t in 0..KS {
                let w = ws[t];
                s0 += i32::from(px[t * CH]) * w;
                s1 += i32::from(px[t * CH + 1]) * w;
                s2 += i32::from(px[t * CH + 2]) * w;
            }
            opx[0] = clip8(s0);
            opx[1] = clip8(s1);
            opx[2] = clip8(s2);
        }
    });
    out
}

/// [`horizontal`] for any tap count.
fn horizontal_any(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, k: &Kernel, out_w: usize) -> Vec<u8> {
    let in_row = in_w * CH;
    let out_row = out_w * CH;
    let mut out = vec![0u8; rows.len() * out_row];
    let first = rows.start;
    out.par_chunks_mut(out_row).enumerate().for_each(|(r, orow)| {
        let y = first + r;
        let srow = &src[y * in_row..(y + 1) * in_row];
        for (xx, opx) in orow.chunks_exact_mut(CH).enumerate() {
            let (start, ws) = k.taps(xx);
            let px = &srow[start * CH..(start + ws.len()) * CH];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &w) in px.chunks_exact(CH).zip(ws) {
                s0 += i32::from(p[0]) * w;
                s1 += i32::from(p[1]) * w;
                s2 += i32::from(p[2]) * w;
            }
            opx[0] = clip8(s0);
            opx[1] = clip8(s1);
            opx[2] = clip8(s2);
        }
    });
    out
}

/// Vertical pass. `src` holds rows starting at source row `row_offset`, each `w` pixels wide.
fn vertical(src: &[u8], w: usize, row_offset: usize, k: &Kernel, out_h: usize) -> Vec<u8> {
    let row = w * CH;
    let mut out = vec![0u8; out_h * row];
    out.par_chunks_mut(row).enumerate().for_each_init(
        || vec![0i32; row],
        |acc, (yy, orow)| {
            let (start, ws) = k.taps(yy);
            acc.fill(HALF);
            for (t, &wt) in ws.iter().enumerate() {
                let y = start + t - row_offset;
                let srow = &src[y * row..(y + 1) * row];
                // Contiguous multiply-add over the whole row: vectorises.
                for (a, &p) in acc.iter_mut().zip(srow) {
                    *a += i32::from(p) * wt;
                }
            }
            for (o, &a) in orow.iter_mut().zip(acc.iter()) {
                *o = clip8(a);
            }
        },
    );
    debug_assert!(out_h == 0 || !out.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_windows_stay_inside_source() {
        for (i, o) in [
            (1, 448),
            (1000, 448),
            (747, 1344),
            (4000, 1),
            (3, 2),
            (448, 449),
            (97, 1),
        ] {
            let k = Kernel::new(i, o);
            for &(s, l) in &k.windows {
                assert!(s + l <= i as usize, "in {i} out {o}: window {s}+{l}");
                assert!(l >= 1);
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        // Each normalised window sums to 1.0 up to per-tap rounding (<= 0.5 each).
        let k = Kernel::new(1000, 448);
        for o in 0..448 {
            let (_, ws) = k.taps(o);
            let sum: i64 = ws.iter().map(|&w| i64::from(w)).sum();
            assert!((sum - (1 << 22)).abs() <= ws.len() as i64, "output {o}: sum {sum}");
        }
    }

    #[test]
    fn fixed_width_taps_give_the_same_pixels() {
        // Pseudo-random source; compare the unrolled path with the generic one.
        let (w, h) = (97usize, 5usize);
        let src: Vec<u8> = (0..w * h * CH)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        for out_w in [40, 60, 90, 200, 1000] {
            let k = Kernel::new(w as u32, out_w);
            let any = horizontal_any(&src, w, 0..h, &k, out_w as usize);
            assert_eq!(horizontal(&src, w, 0..h, &k, out_w as usize), any, "out_w {out_w}");
            assert!(k.fixed_width(w).is_some());
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, ::image::Rgb([200, 3, 255]));
        let out = resize_bicubic(&img, 101, 9).unwrap();
        assert!(out.pixels().all(|p| p.0 == [200, 3, 255]));
    }
}
