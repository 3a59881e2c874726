//! The AVX-512 VNNI tile: 12 tokens x 32 outputs, as two sub-tiles of 6 tokens (12 int32 accumulators in
//! registers, `RT`), one `vpdpbusd` (64 unsigned x signed byte products summed in fours) per accumulator
//! per 4 inputs; after each group of inputs the sums are scaled into f32 accumulators (in L1) and the
//! int32 ones start again.
use std::arch::x86_64::{
    __m512i, _mm512_add_ps, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_loadu_ps, _mm512_loadu_si512,
    _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_si512, _mm512_storeu_ps, _mm512_sub_epi32,
};

use super::{GROUP, MR, NR};

/// Tokens per register sub-tile (12 accumulators): with all `MR` tokens' 24 in registers, LLVM's
/// unrolling spilled them to the stack in the inner loop (see `crate::kernels::panels`' AVX-512 `RT`).
const RT: usize = 6;
const _: () = assert!(MR.is_multiple_of(RT));

/// Whether this CPU has AVX-512 F, BW and VNNI (`Isa` asks the CPU once).
pub fn available() -> bool {
    crate::kernels::Isa::Avx512Vnni.runs_here()
}

/// See `super::tile_portable`, whose bits this gives: `a` is a token block (`k4 * MR * 4` bytes) with
/// its scales `[groups][MR]`, `w` a panel (`k4 * NR * 4` bytes) with its scales and corrections
/// `[groups][NR]`.
pub fn tile(a: &[u8], ascale: &[f32], w: &[u8], wscale: &[f32], corr: &[i32], k4: usize, acc: &mut [[f32; NR]; MR]) {
    let ng = k4.div_ceil(GROUP / 4);
    assert!(available(), "int8 tile: AVX-512 VNNI kernel on a CPU without it");
    assert!(
        a.len() >= k4 * MR * 4 && w.len() >= k4 * NR * 4,
        "int8 tile: short operands"
    );
    assert!(
        ascale.len() >= ng * MR && wscale.len() >= ng * NR && corr.len() >= ng * NR,
        "int8 tile: short scales"
    );
    // SAFETY: the CPU has the instructions the function is compiled for (checked above), and every
    // load it makes is inside the slices, whose lengths are checked above.
    unsafe {
        tile_vnni(
            a.as_ptr(),
            ascale.as_ptr(),
            w.as_ptr(),
            wscale.as_ptr(),
            corr.as_ptr(),
            k4,
            acc,
        )
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni(
    a: *const u8,
    ascale: *const f32,
    w: *const u8,
    wscale: *const f32,
    corr: *const i32,
    k4: usize,
    acc: &mut [[f32; NR]; MR],
) {
    *acc = [[0.0; NR]; MR];
    for g in 0..k4.div_ceil(GROUP / 4) {
        for r0 in (0..MR).step_by(RT) {
            let mut c: [__m512i; 2 * RT] = [_mm512_setzero_si512(); 2 * RT];
            for kk in g * GROUP / 4..((g + 1) * GROUP / 4).min(k4) {
                // SAFETY: kk < k4, so the two 64-byte loads at kk * 128 and the MR 4-byte loads at
                // (kk * MR + r) * 4 are within the operands (checked in `tile`); r0 + r < MR.
                unsafe {
                    let w0 = _mm512_loadu_si512(w.add(kk * NR * 4).cast());
                    let w1 = _mm512_loadu_si512(w.add(kk * NR * 4 + 64).cast());
                    let ag = a.add(kk * MR * 4).cast::<i32>().add(r0);
                    for r in 0..RT {
                        let av = _mm512_set1_epi32(ag.add(r).read_unaligned());
                        c[2 * r] = _mm512_dpbusd_epi32(c[2 * r], av, w0);
                        c[2 * r + 1] = _mm512_dpbusd_epi32(c[2 * r + 1], av, w1);
                    }
                }
            }
            for (r, row) in acc[r0..r0 + RT].iter_mut().enumerate() {
                for h in 0..2 {
                    // SAFETY: g < groups: the group's NR scales and corrections and MR token scales are
                    // inside the slices (checked in `tile`); the row has NR = 32 f32, two halves of 16.
                    unsafe {
                        let sa = _mm512_set1_ps(*ascale.add(g * MR + r0 + r));
                        let ws = _mm512_loadu_ps(wscale.add(g * NR + 16 * h));
                        let cr = _mm512_loadu_si512(corr.add(g * NR + 16 * h).cast());
                        // (sum - corr) as f32 * (ws * sa), then added: the portable kernel's order.
                        let v = _mm512_mul_ps(
                            _mm512_cvtepi32_ps(_mm512_sub_epi32(c[2 * r + h], cr)),
                            _mm512_mul_ps(ws, sa),
                        );
                        let o = row.as_mut_ptr().add(16 * h);
                        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), v));
                    }
                }
            }
        }
    }
}

/// One token's row into its 4-byte slots of a block (see `super::quantize_row`, whose bytes these are):
/// 16 values per step (inside one group: `GROUP` is a multiple of 16), converted with
/// round-to-nearest-even, clamped, offset, narrowed to bytes.
pub fn quantize_row(row: &[f32], invs: &[f32], r: usize, data: &mut [u8]) {
    assert!(available(), "int8 quantize: AVX-512 kernel on a CPU without it");
    let k4 = row.len().div_ceil(4);
    assert!(data.len() >= k4 * MR * 4 && r < MR, "int8 quantize: short block");
    assert!(invs.len() >= row.len().div_ceil(GROUP), "int8 quantize: short scales");
    let whole = row.len() / 16;
    // SAFETY: the CPU has AVX-512 F/BW (checked above); the function reads row[..whole * 16] and
    // invs[i * 16 / GROUP] for i < whole (inside, checked above), and writes the 4-byte slots of groups
    // < whole * 4 <= k4, inside `data` (checked above).
    unsafe { quantize_row_avx512(row.as_ptr(), whole, invs.as_ptr(), r, data.as_mut_ptr()) };
    super::quantize_row_tail(row, whole * 16, invs, r, data);
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(row: *const f32, whole: usize, invs: *const f32, r: usize, data: *mut u8) {
    use std::arch::x86_64::{
        _mm512_add_epi32, _mm512_cvtepi32_epi8, _mm512_cvtps_epi32, _mm512_max_epi32, _mm512_min_epi32,
        _mm_extract_epi32,
    };
    let (lo, hi, off) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127), _mm512_set1_epi32(128));
    for i in 0..whole {
        // SAFETY: i < whole: 16 floats at i * 16 are in the row, their group's inverse scale is in
        // invs; groups 4i..4i+3 are slots in the block.
        unsafe {
            let vinv = _mm512_set1_ps(*invs.add(i * 16 / GROUP));
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
