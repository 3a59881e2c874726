//! The AVX-512 VNNI tile: 12 tokens x 32 outputs, 24 int32 accumulators in registers, one `vpdpbusd`
//! (64 unsigned x signed byte products summed in fours) per accumulator per 4 inputs.
use std::arch::x86_64::{
    __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512, _mm512_storeu_si512,
};
use std::sync::OnceLock;

use super::{MR, NR};

/// Whether this CPU has AVX-512 F, BW and VNNI (checked once).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// `acc[r][j] = sum over the k4 groups of a's 4 bytes of token r times panel's 4 bytes of output j`.
pub fn tile(a: &[u8], panel: &[u8], k4: usize, acc: &mut [[i32; NR]; MR]) {
    assert!(available(), "int8 tile: AVX-512 VNNI kernel on a CPU without it");
    assert!(
        a.len() >= k4 * MR * 4 && panel.len() >= k4 * NR * 4,
        "int8 tile: short operands"
    );
    // SAFETY: the CPU has the instructions the function is compiled for (checked above), and every
    // load it makes is inside `a` (k4 * MR * 4 bytes) or `panel` (k4 * NR * 4 bytes), checked above.
    unsafe { tile_vnni(a.as_ptr(), panel.as_ptr(), k4, acc) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni(a: *const u8, w: *const u8, k4: usize, acc: &mut [[i32; NR]; MR]) {
    let mut c: [__m512i; 2 * MR] = [_mm512_setzero_si512(); 2 * MR];
    for g in 0..k4 {
        // SAFETY: g < k4, so the two 64-byte loads at g * 128 and the MR 4-byte loads at (g * MR + r) * 4
        // are within the operands (the caller's contract, checked in `tile`).
        unsafe {
            let w0 = _mm512_loadu_si512(w.add(g * NR * 4).cast());
            let w1 = _mm512_loadu_si512(w.add(g * NR * 4 + 64).cast());
            let ag = a.add(g * MR * 4).cast::<i32>();
            for r in 0..MR {
                let av = _mm512_set1_epi32(ag.add(r).read_unaligned());
                c[2 * r] = _mm512_dpbusd_epi32(c[2 * r], av, w0);
                c[2 * r + 1] = _mm512_dpbusd_epi32(c[2 * r + 1], av, w1);
            }
        }
    }
    for (r, row) in acc.iter_mut().enumerate() {
        // SAFETY: each row is NR = 32 i32, two 64-byte stores.
        unsafe {
            _mm512_storeu_si512(row.as_mut_ptr().cast(), c[2 * r]);
            _mm512_storeu_si512(row.as_mut_ptr().add(16).cast(), c[2 * r + 1]);
        }
    }
}

/// One token's row into its 4-byte slots of a block (see `super::quantize_row`, whose bytes these are):
/// 16 values per step, converted with round-to-nearest-even, clamped, offset, narrowed to bytes.
pub fn quantize_row(row: &[f32], inv: f32, r: usize, data: &mut [u8]) {
    assert!(available(), "int8 quantize: AVX-512 kernel on a CPU without it");
    let k4 = row.len().div_ceil(4);
    assert!(data.len() >= k4 * MR * 4 && r < MR, "int8 quantize: short block");
    let whole = row.len() / 16;
    // SAFETY: the CPU has AVX-512 F/BW (checked above); the function reads row[..whole * 16] and writes
    // the 4-byte slots of groups < whole * 4 <= k4, inside `data` (checked above).
    unsafe { quantize_row_avx512(row.as_ptr(), whole, inv, r, data.as_mut_ptr()) };
    super::quantize_row_tail(row, whole * 16, inv, r, data);
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(row: *const f32, whole: usize, inv: f32, r: usize, data: *mut u8) {
    use std::arch::x86_64::{
        _mm512_add_epi32, _mm512_cvtepi32_epi8, _mm512_cvtps_epi32, _mm512_loadu_ps, _mm512_max_epi32,
        _mm512_min_epi32, _mm512_mul_ps, _mm512_set1_ps, _mm_extract_epi32,
    };
    let vinv = _mm512_set1_ps(inv);
    let (lo, hi, off) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127), _mm512_set1_epi32(128));
    for i in 0..whole {
        // SAFETY: i < whole: 16 floats at i * 16 are in the row; groups 4i..4i+3 are slots in the block.
        unsafe {
            // cvtps rounds to nearest even under the default MXCSR, like round_ties_even.
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row.add(i * 16)), vinv));
            let q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
            let b = _mm512_cvtepi32_epi8(q);
            let slot = |g: usize| data.add(((4 * i + g) * MR + r) * 4).cast::<i32>();
            slot(0).write_unaligned(_mm_extract_epi32::<0>(b));
            slot(1).write_unaligned(_mm_extract_epi32::<1>(b));
            slot(2).write_unaligned(_mm_extract_epi32::<2>(b));
            slot(3).write_unaligned(_mm_extract_epi32::<3>(b));
        }
    }
}
