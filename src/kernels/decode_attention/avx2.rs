//! The AVX2 + FMA + F16C build of `super::body`: its chunk operations with intrinsics (the f16 -> f32
//! conversion by `vcvtph2ps`, exact as the portable one; the scores as register tiles of 8 rows x `LANES`
//! heads, the weighted sums as tiles of 4 heads x 16 channels, in the portable code's order of fused
//! multiply-adds), the rest the same Rust code compiled for AVX2: the same bits as the portable path.
use std::arch::x86_64::{
    __m128i, __m256, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_storeu_ps, _mm_loadu_si128, _mm_prefetch, _MM_HINT_T0,
};

use super::{KvRows, RowOps, Scratch, LANES};

/// Whether this CPU runs `Isa::Avx2` (AVX2, FMA and F16C; asked once per process).
fn available() -> bool {
    crate::kernels::Isa::Avx2.runs_here()
}

/// See `super::heads` (whose checks have run).
pub fn heads(q: &[f32], kv: &KvRows<'_>, scale: f32, out: &mut [f32], sc: &mut Scratch) {
    assert!(
        available(),
        "decode attention: AVX2 kernel on a CPU without AVX2, FMA and F16C"
    );
    // SAFETY: the CPU has AVX2, FMA and F16C (`available`, checked above); the function is safe code
    // otherwise.
    unsafe { heads_avx2(q, kv, scale, out, sc) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn heads_avx2(q: &[f32], kv: &KvRows<'_>, scale: f32, out: &mut [f32], sc: &mut Scratch) {
    super::body(&Avx2, q, kv, scale, out, sc)
}

/// The AVX2 + FMA + F16C row operations; made only by `heads`, after its check of the CPU.
struct Avx2;

impl RowOps for Avx2 {
    #[inline(always)]
    fn prefetch(&self, row: &[u16]) {
        prefetch(row)
    }
    #[inline(always)]
    fn convert(&self, src: &[u16], dst: &mut [f32]) {
        // SAFETY: an `Avx2` exists only inside `heads_avx2`, whose caller checked the CPU's features.
        unsafe { convert(src, dst) }
    }
    #[inline(always)]
    fn scores(&self, qt: &[f32], k: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
        // SAFETY: as for `convert`.
        unsafe { scores(qt, k, hd, rows, s) }
    }
    #[inline(always)]
    fn weighted(&self, acc: &mut [f32], p: &[f32], v: &[u16], ld: usize, hd: usize, rows: usize) {
        // SAFETY: as for `convert`.
        unsafe { weighted(acc, p, v, ld, hd, rows) }
    }
}

/// Asks for the cache lines of `row` (a hint: no load, no fault).
#[inline(always)]
fn prefetch(row: &[u16]) {
    let bytes = std::mem::size_of_val(row);
    let p = row.as_ptr() as *const i8;
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch hint at an address inside `row` (SSE, part of x86-64); it never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
    }
}

/// `super::scores_portable`'s results, 8 rows at a time: 8 accumulators of `LANES` heads, each channel's
/// query vector loaded once and each row's key value broadcast from memory; every score is the same chain
/// of fused multiply-adds over the channels. Rows past the last whole 8 go one at a time. The head
/// dimension 64 (Qwen2's) is compiled as a constant, so that the 8 rows' values are fixed offsets from one
/// address (with a run-time dimension the addresses took more instructions than the products).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores(qt: &[f32], k: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
    assert!(
        qt.len() >= hd * LANES && k.len() >= rows * hd && s.len() >= rows * LANES,
        "decode attention: scores shapes"
    );
    // SAFETY: the shapes are checked above; the CPU has the features (the caller's contract).
    unsafe {
        if hd == 64 {
            scores_for::<64>(qt, k, 64, rows, s)
        } else {
            scores_for::<0>(qt, k, hd, rows, s)
        }
    }
}

/// `scores` with the head dimension `HD` when it is not 0, else `hd`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `qt`, `k` and `s` hold `hd * LANES`, `rows * hd` and `rows * LANES`
/// values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores_for<const HD: usize>(qt: &[f32], k: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
    let hd = if HD > 0 { HD } else { hd };
    let (qp, kp, sp) = (qt.as_ptr(), k.as_ptr(), s.as_mut_ptr());
    let mut j = 0;
    while j < rows {
        let block = if j + 8 <= rows { 8 } else { 1 };
        // SAFETY: rows j..j + block <= rows and channels c < hd: loads inside `k` and `qt`, stores inside
        // `s` (the caller's contract).
        unsafe {
            let kr = kp.add(j * hd);
            if block == 8 {
                let mut a = [_mm256_setzero_ps(); 8];
                for c in 0..hd {
                    let x = _mm256_loadu_ps(qp.add(c * LANES));
                    for (r, a) in a.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_set1_ps(*kr.add(r * hd + c)), x, *a);
                    }
                }
                for (r, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(sp.add((j + r) * LANES), *a);
                }
            } else {
                let mut a = _mm256_setzero_ps();
                for c in 0..hd {
                    a = _mm256_fmadd_ps(_mm256_set1_ps(*kr.add(c)), _mm256_loadu_ps(qp.add(c * LANES)), a);
                }
                _mm256_storeu_ps(sp.add(j * LANES), a);
            }
        }
        j += block;
    }
}

/// `convert` after a check of the CPU (see `super::convert`).
pub fn convert_checked(src: &[u16], dst: &mut [f32]) {
    assert!(
        available(),
        "f16 conversion: AVX2 kernel on a CPU without AVX2, FMA and F16C"
    );
    // SAFETY: the CPU has AVX2 and F16C (checked above); `convert` bounds itself by both lengths.
    unsafe { convert(src, dst) }
}

/// f16 bits -> f32, 8 at a time by `vcvtph2ps`, the tail element by element.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn convert(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= n <= both lengths: an unaligned 16-byte load from `src` and a 32-byte store to
        // `dst` inside them; the CPU has F16C and AVX (the caller's contract).
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    super::convert_portable(&src[whole..n], &mut dst[whole..n]);
}

/// `super::weighted_portable`'s results: tiles of up to 4 heads x 16 channels (8 accumulators) held across
/// the rows, each row's 16 values converted from the cache's f16 in registers (`vcvtph2ps` from memory, no
/// f32 copy) and each head's weight broadcast; every output is the same chain of fused multiply-adds over
/// the rows in order. Channels past the last whole 8 take the portable code.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn weighted(acc: &mut [f32], p: &[f32], v: &[u16], ld: usize, hd: usize, rows: usize) {
    let heads = acc.len() / hd;
    assert!(
        acc.len() == heads * hd
            && heads <= LANES
            && p.len() >= rows * LANES
            && (rows == 0 || v.len() >= (rows - 1) * ld + hd),
        "decode attention: weighted shapes"
    );
    let whole = hd / 8 * 8;
    let mut h0 = 0;
    while h0 < heads {
        let hb = 4.min(heads - h0);
        let mut c0 = 0;
        while c0 < whole {
            let two = c0 + 16 <= whole;
            // SAFETY: heads h0..h0 + hb <= heads, channels c0..c0 + 8 or 16 <= hd, rows < rows: inside `acc`,
            // `p` and `v` (checked above); the CPU has the features (the caller's contract).
            unsafe {
                match (hb, two) {
                    (4, true) => tile::<4, 2>(acc, p, v, ld, hd, rows, h0, c0),
                    (3, true) => tile::<3, 2>(acc, p, v, ld, hd, rows, h0, c0),
                    (2, true) => tile::<2, 2>(acc, p, v, ld, hd, rows, h0, c0),
                    (1, true) => tile::<1, 2>(acc, p, v, ld, hd, rows, h0, c0),
                    (4, false) => tile::<4, 1>(acc, p, v, ld, hd, rows, h0, c0),
                    (3, false) => tile::<3, 1>(acc, p, v, ld, hd, rows, h0, c0),
                    (2, false) => tile::<2, 1>(acc, p, v, ld, hd, rows, h0, c0),
                    _ => tile::<1, 1>(acc, p, v, ld, hd, rows, h0, c0),
                }
            }
            c0 += if two { 16 } else { 8 };
        }
        h0 += hb;
    }
    // The channels past the last 8, for every head: the portable chains.
    super::weighted_channels(acc, p, v, ld, hd, rows, whole..hd);
}

/// Heads `h0..h0 + H` x channels `c0..c0 + 8 NV` of `weighted`, in `H * NV` registers across the rows.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the heads, channels and rows are inside `acc`, `p` and `v` as
/// `weighted` checks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const H: usize, const NV: usize>(
    acc: &mut [f32],
    p: &[f32],
    v: &[u16],
    ld: usize,
    hd: usize,
    rows: usize,
    h0: usize,
    c0: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let (ap, pp, vp) = (acc.as_mut_ptr(), p.as_ptr(), v.as_ptr());
        let mut a: [[__m256; NV]; H] = [[_mm256_setzero_ps(); NV]; H];
        for (h, a) in a.iter_mut().enumerate() {
            for (i, a) in a.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(ap.add((h0 + h) * hd + c0 + 8 * i));
            }
        }
        for j in 0..rows {
            let x: [__m256; NV] = std::array::from_fn(|i| {
                _mm256_cvtph_ps(_mm_loadu_si128(vp.add(j * ld + c0 + 8 * i) as *const __m128i))
            });
            for (h, a) in a.iter_mut().enumerate() {
                let w = _mm256_set1_ps(*pp.add(j * LANES + h0 + h));
                for (a, &x) in a.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(x, w, *a);
                }
            }
        }
        for (h, a) in a.iter().enumerate() {
            for (i, a) in a.iter().enumerate() {
                _mm256_storeu_ps(ap.add((h0 + h) * hd + c0 + 8 * i), *a);
            }
        }
    }
}
