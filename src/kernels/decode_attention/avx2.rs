//! The AVX2 + FMA + F16C build of `super::body`: its row operations with intrinsics (the f16 -> f32
//! conversion by `vcvtph2ps`, exact as the portable one; the dot products four rows at a time and the
//! weighted sums in the portable code's order of fused multiply-adds), the rest the same Rust code compiled
//! for AVX2: the same bits as the portable path.
use std::arch::x86_64::{
    __m128, __m128i, __m256, _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_extractf128_ps, _mm256_fmadd_ps,
    _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_loadu_si128, _mm_movehl_ps,
    _mm_movelh_ps, _mm_prefetch, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps, _MM_HINT_T0,
};

use super::{KvRows, RowOps, Scratch};

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
    fn dots(&self, q: &[f32], k: &[f32], hd: usize, s: &mut [f32]) {
        // SAFETY: as for `convert`.
        unsafe { dots(q, k, hd, s) }
    }
    #[inline(always)]
    fn weighted(&self, acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
        // SAFETY: as for `convert`.
        unsafe { weighted_add(acc, p, v, hd) }
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

/// `super::dots_portable`'s results, four rows at a time (four independent chains of additions hide their
/// latency), each row's sum in `super::dot`'s order: lane i of one 8-lane accumulator adds inputs i, i + 8,
/// ...; then halves are added (lanes i + 4, then i + 2, then i + 1), four rows together after a 4 x 4
/// transpose. A head dimension that is not a multiple of 8 takes `super::dots_portable` itself.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dots(q: &[f32], k: &[f32], hd: usize, s: &mut [f32]) {
    let rows = s.len();
    assert!(q.len() == hd && k.len() >= rows * hd, "decode attention: dots shapes");
    if !hd.is_multiple_of(8) {
        super::dots_portable(q, k, hd, s);
        return;
    }
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let mut j = 0;
    while j + 4 <= rows {
        // SAFETY: rows j..j + 4 < rows and c + 8 <= hd: every load is inside `q` (hd values) or `k`
        // (rows * hd values, checked above); the store writes s[j..j + 4].
        unsafe {
            let mut acc: [__m256; 4] = [_mm256_setzero_ps(); 4];
            for c in (0..hd).step_by(8) {
                let x = _mm256_loadu_ps(qp.add(c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(x, _mm256_loadu_ps(kp.add((j + r) * hd + c)), *a);
                }
            }
            let half = |a: __m256| -> __m128 { _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)) };
            let (b0, b1, b2, b3) = (half(acc[0]), half(acc[1]), half(acc[2]), half(acc[3]));
            // Transpose: t_k holds lane k of b0..b3.
            let (u0, u1) = (_mm_unpacklo_ps(b0, b1), _mm_unpacklo_ps(b2, b3));
            let (u2, u3) = (_mm_unpackhi_ps(b0, b1), _mm_unpackhi_ps(b2, b3));
            let (t0, t1) = (_mm_movelh_ps(u0, u1), _mm_movehl_ps(u1, u0));
            let (t2, t3) = (_mm_movelh_ps(u2, u3), _mm_movehl_ps(u3, u2));
            let d = _mm_add_ps(_mm_add_ps(t0, t2), _mm_add_ps(t1, t3));
            _mm_storeu_ps(s.as_mut_ptr().add(j), d);
        }
        j += 4;
    }
    super::dots_portable(q, &k[j * hd..], hd, &mut s[j..]);
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

/// `super::weighted_add`'s result: each channel's chain of fused multiply-adds over the rows in order, 64
/// channels (8 registers) or 8 at a time across the rows. A head dimension that is not a multiple of 8
/// takes `super::weighted_add` itself.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weighted_add(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    assert!(
        acc.len() == hd && v.len() >= p.len() * hd,
        "decode attention: weighted_add shapes"
    );
    if !hd.is_multiple_of(8) {
        super::weighted_add(acc, p, v, hd);
        return;
    }
    let mut c0 = 0;
    while c0 + 64 <= hd {
        // SAFETY: channels c0..c0 + 64 <= hd (the loop's condition), as `weighted_block` needs.
        unsafe { weighted_block::<8>(acc, p, v, hd, c0) };
        c0 += 64;
    }
    while c0 < hd {
        // SAFETY: c0 + 8 <= hd (hd is a multiple of 8 and c0 < hd steps by 8).
        unsafe { weighted_block::<1>(acc, p, v, hd, c0) };
        c0 += 8;
    }
}

/// Channels `c0..c0 + 8 R` of `weighted_add`, in `R` registers across the rows.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `c0 + 8 R <= hd`, `acc.len() == hd`, `v.len() >= p.len() * hd`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weighted_block<const R: usize>(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize, c0: usize) {
    // SAFETY: loads and stores of channels c0..c0 + 8 R inside `acc` and inside row j < p.len() of `v` (the
    // caller's contract).
    unsafe {
        let (ap, vp) = (acc.as_mut_ptr().add(c0), v.as_ptr().add(c0));
        let mut r: [__m256; R] = [_mm256_setzero_ps(); R];
        for (i, x) in r.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(ap.add(8 * i));
        }
        for (j, &pj) in p.iter().enumerate() {
            let w = _mm256_set1_ps(pj);
            let row = vp.add(j * hd);
            for (i, x) in r.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * i)), *x);
            }
        }
        for (i, x) in r.iter().enumerate() {
            _mm256_storeu_ps(ap.add(8 * i), *x);
        }
    }
}
