//! The AVX2 tile over the same packed weights and activations as the AVX-512 VNNI one, for CPUs without
//! `vpdpbusd`: `vpmaddubsw` (unsigned x signed bytes, adjacent products summed into saturating i16) then
//! `vpmaddwd` with ones (adjacent i16 summed into i32).
//!
//! Saturation: the activations are stored as `q + 128` (1..=255) and the weights lie in -127..=127, so a
//! pair of products can reach 2 x 255 x 127 = 64,770, past i16. The tile therefore multiplies the signed
//! values, as ggml's AVX2 dot products do: `q` is the stored byte xor 0x80, and `|w| x sign(q, w)` (the
//! sign of w moved onto q: `vpsignb` negates q where w < 0 and zeroes it where w = 0) is `q x w` with
//! both factors within 0..=127 and -127..=127, so a pair is at most 2 x 127 x 127 = 32,258 < 32,767:
//! `vpmaddubsw` never saturates. The group's int32 sum is then sum(q w), which is exactly the portable
//! kernel's `sum((q + 128) w) - corr` (`corr` = 128 sum(w)): the same integers, and the float epilogue is
//! the portable one's operations in its order (multiply, then add), so the outputs are bit-identical.
//!
//! Registers: 16 of 8 lanes. A sub-tile of 4 tokens x 16 outputs keeps 8 int32 accumulators, the two
//! weight vectors and their absolute values, a token's bytes, a temporary and the ones (15); the 12 x 32
//! tile is six such sub-tiles per group of inputs.
use std::arch::x86_64::{
    __m256i, _mm256_abs_epi8, _mm256_add_epi32, _mm256_add_ps, _mm256_cvtepi32_ps, _mm256_loadu_ps, _mm256_loadu_si256,
    _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi8,
    _mm256_set1_ps, _mm256_setzero_si256, _mm256_sign_epi8, _mm256_storeu_ps, _mm256_xor_si256,
};

use super::{GROUP, MR, NR};

/// Tokens and 8-output vectors of the sub-tile held in registers.
const ROWS: usize = 4;
const VECS: usize = 2;
const _: () = assert!(MR.is_multiple_of(ROWS) && NR.is_multiple_of(8 * VECS));

/// Whether this CPU runs `Isa::Avx2` (AVX2, FMA and F16C; asked once per process; only AVX2 is used here).
pub fn available() -> bool {
    crate::kernels::Isa::Avx2.runs_here()
}

/// See `super::tile_portable`, whose bits this gives: `a` is a token block (`k4 * MR * 4` bytes) with
/// its scales `[groups][MR]`, `w` a panel (`k4 * NR * 4` bytes) with its scales `[groups][NR]` (the
/// panel's offset corrections are not needed: see the module's note).
pub fn tile(a: &[u8], ascale: &[f32], w: &[u8], wscale: &[f32], k4: usize, acc: &mut [[f32; NR]; MR]) {
    let ng = k4.div_ceil(GROUP / 4);
    assert!(available(), "int8 tile: AVX2 kernel on a CPU without AVX2");
    assert!(
        a.len() >= k4 * MR * 4 && w.len() >= k4 * NR * 4,
        "int8 tile: short operands"
    );
    assert!(
        ascale.len() >= ng * MR && wscale.len() >= ng * NR,
        "int8 tile: short scales"
    );
    // SAFETY: the CPU has AVX2 (checked above), and every load the function makes is inside the slices,
    // whose lengths are checked above.
    unsafe { tile_avx2(a.as_ptr(), ascale.as_ptr(), w.as_ptr(), wscale.as_ptr(), k4, acc) }
}

#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(
    a: *const u8,
    ascale: *const f32,
    w: *const u8,
    wscale: *const f32,
    k4: usize,
    acc: &mut [[f32; NR]; MR],
) {
    *acc = [[0.0; NR]; MR];
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    for g in 0..k4.div_ceil(GROUP / 4) {
        let kks = g * GROUP / 4..((g + 1) * GROUP / 4).min(k4);
        for r0 in (0..MR).step_by(ROWS) {
            for v0 in (0..NR / 8).step_by(VECS) {
                let mut c: [__m256i; ROWS * VECS] = [_mm256_setzero_si256(); ROWS * VECS];
                for kk in kks.clone() {
                    // SAFETY: kk < k4: the 32-byte loads at kk * 128 + v * 32 (v < NR / 8) and the 4-byte
                    // loads at (kk * MR + r) * 4 (r < MR) are within the operands (checked in `tile`).
                    unsafe {
                        let wv: [__m256i; VECS] =
                            std::array::from_fn(|v| _mm256_loadu_si256(w.add(kk * NR * 4 + (v0 + v) * 32).cast()));
                        let wa: [__m256i; VECS] = std::array::from_fn(|v| _mm256_abs_epi8(wv[v]));
                        let ag = a.add(kk * MR * 4).cast::<i32>();
                        for r in 0..ROWS {
                            let q = _mm256_xor_si256(_mm256_set1_epi32(ag.add(r0 + r).read_unaligned()), flip);
                            for v in 0..VECS {
                                let pairs = _mm256_maddubs_epi16(wa[v], _mm256_sign_epi8(q, wv[v]));
                                let i = r * VECS + v;
                                c[i] = _mm256_add_epi32(c[i], _mm256_madd_epi16(pairs, ones));
                            }
                        }
                    }
                }
                for r in 0..ROWS {
                    for v in 0..VECS {
                        let j = (v0 + v) * 8;
                        // SAFETY: g < groups, r0 + r < MR, j + 8 <= NR: the token's scale and the 8
                        // outputs' scales are inside the slices (checked in `tile`), the 8 f32 inside
                        // the row.
                        unsafe {
                            let sa = _mm256_set1_ps(*ascale.add(g * MR + r0 + r));
                            let ws = _mm256_loadu_ps(wscale.add(g * NR + j));
                            // sum as f32 * (ws * sa), then added: the portable kernel's order.
                            let x = _mm256_mul_ps(_mm256_cvtepi32_ps(c[r * VECS + v]), _mm256_mul_ps(ws, sa));
                            let o = acc[r0 + r].as_mut_ptr().add(j);
                            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), x));
                        }
                    }
                }
            }
        }
    }
}

/// One token's row into its 4-byte slots of a block (see `super::quantize_row`, whose bytes these are
/// for finite values): 8 values per step (inside one group: `GROUP` is a multiple of 8), converted with
/// round-to-nearest-even, clamped, offset, narrowed to bytes.
pub fn quantize_row(row: &[f32], invs: &[f32], r: usize, data: &mut [u8]) {
    assert!(available(), "int8 quantize: AVX2 kernel on a CPU without AVX2");
    let k4 = row.len().div_ceil(4);
    assert!(data.len() >= k4 * MR * 4 && r < MR, "int8 quantize: short block");
    assert!(invs.len() >= row.len().div_ceil(GROUP), "int8 quantize: short scales");
    let whole = row.len() / 8;
    // SAFETY: the CPU has AVX2 (checked above); the function reads row[..whole * 8] and
    // invs[i * 8 / GROUP] for i < whole (inside, checked above), and writes the 4-byte slots of groups
    // < whole * 2 <= k4, inside `data` (checked above).
    unsafe { quantize_row_avx2(row.as_ptr(), whole, invs.as_ptr(), r, data.as_mut_ptr()) };
    super::quantize_row_tail(row, whole * 8, invs, r, data);
}

#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(row: *const f32, whole: usize, invs: *const f32, r: usize, data: *mut u8) {
    use std::arch::x86_64::{
        _mm256_add_epi32, _mm256_cvtps_epi32, _mm256_extract_epi32, _mm256_max_epi32, _mm256_min_epi32,
        _mm256_packs_epi32, _mm256_packus_epi16,
    };
    const _: () = assert!(GROUP.is_multiple_of(8));
    let (lo, hi, off) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127), _mm256_set1_epi32(128));
    for i in 0..whole {
        // SAFETY: i < whole: 8 floats at i * 8 are in the row, their group's inverse scale is in invs;
        // groups 2i and 2i + 1 are slots in the block.
        unsafe {
            let vinv = _mm256_set1_ps(*invs.add(i * 8 / GROUP));
            // cvtps rounds to nearest even under the default MXCSR, like round_ties_even.
            let q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row.add(i * 8)), vinv));
            let q = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi), off);
            // 1..=255 narrowed within each 128-bit lane: bytes 0..4 are values 0..4, bytes 16..20
            // values 4..8.
            let q16 = _mm256_packs_epi32(q, q);
            let b = _mm256_packus_epi16(q16, q16);
            let slot = |g: usize| data.add(((2 * i + g) * MR + r) * 4).cast::<i32>();
            slot(0).write_unaligned(_mm256_extract_epi32::<0>(b));
            slot(1).write_unaligned(_mm256_extract_epi32::<4>(b));
        }
    }
}
