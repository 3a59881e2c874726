//! The AVX-512 VNNI kernels for `Panels`. q4_0: one 64-byte load gives two `vpdpbusd` operands (its low
//! and high 4-bit halves, 16 outputs x 4 inputs each, unsigned), multiplied by the broadcast signed
//! activations. q8_0: one load, one operand (signed), multiplied by the broadcast unsigned activations
//! (`q + 128`); a product of the same operand with ones gives the weights' sums, whose 128-fold is the
//! offset taken out.
use std::arch::x86_64::{
    __m512i, _mm256_loadu_si256, _mm512_add_ps, _mm512_and_si512, _mm512_cvtepi32_ps, _mm512_cvtph_ps,
    _mm512_dpbusd_epi32, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_epi8,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_srli_epi16, _mm512_storeu_ps, _mm512_sub_epi32,
};

use super::{PanelType, MR, NR, QK};

/// Tokens per register sub-tile: `RT` tokens x 32 outputs, 12 accumulators. The whole 12-token tile (24
/// accumulators, two weight operands, a broadcast) fits AVX-512's 32 registers only if the compiler keeps
/// one chunk's broadcasts at a time; LLVM unrolled the chunks and hoisted them, spilling accumulators to
/// the stack in the inner loop. Two passes of 6 tokens over a panel block (in L1) spill nothing.
const RT: usize = 6;
const _: () = assert!(MR.is_multiple_of(RT));

/// Whether this CPU has AVX-512 F, BW and VNNI (`Isa` asks the CPU once).
pub fn available() -> bool {
    crate::kernels::Isa::Avx512Vnni.runs_here()
}

/// See `super::quantize_group_portable`, whose bits this gives.
pub fn quantize_group(v: &[f32], q: &mut [i8; QK]) -> (f32, i32) {
    assert!(available(), "panels quantize: AVX-512 kernel on a CPU without it");
    assert!(v.len() >= QK, "panels quantize: short group");
    // SAFETY: the CPU has AVX-512 F/BW (checked above); the function reads 32 floats of `v` and writes
    // the 32 bytes of `q`, both that long (checked above, and by the type).
    unsafe { quantize_group_avx512(v.as_ptr(), q.as_mut_ptr()) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_group_avx512(v: *const f32, q: *mut i8) -> (f32, i32) {
    use std::arch::x86_64::{
        _mm512_abs_ps, _mm512_add_epi32, _mm512_cvtepi32_epi8, _mm512_cvtps_epi32, _mm512_max_epi32, _mm512_max_ps,
        _mm512_min_epi32, _mm512_reduce_add_epi32, _mm512_reduce_max_ps, _mm_storeu_si128,
    };
    // SAFETY: 32 floats at v and 32 bytes at q (the caller's contract).
    unsafe {
        let (a, b) = (_mm512_loadu_ps(v), _mm512_loadu_ps(v.add(16)));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let s = amax / 127.0;
        let inv = _mm512_set1_ps(if (1.0 / s).is_finite() { 1.0 / s } else { 0.0 });
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        // cvtps rounds to nearest even under the default MXCSR, like round_ties_even.
        let qa = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), lo), hi);
        let qb = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)), lo), hi);
        _mm_storeu_si128(q.cast(), _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128(q.add(16).cast(), _mm512_cvtepi32_epi8(qb));
        (s, _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)))
    }
}

/// The kernels, for `super::tile` and `super::row`, which check their operands.
pub(super) const KERNELS: super::Simd = super::Simd {
    isa: crate::kernels::Isa::Avx512Vnni,
    name: "AVX-512 VNNI",
    tile_q4,
    tile_q8,
    row_q4,
    row_q8,
};

/// The two operands of chunk `c` of a panel block at `pb` for output half `h`: inputs `8c..8c+4` (low
/// halves) and `8c+4..8c+8` (high halves).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn operands(pb: *const u8, c: usize, h: usize) -> (__m512i, __m512i) {
    // SAFETY: the caller passes a panel block (PanelType::Q4_0.panel_block() bytes), c < 4, h < 2: inside it.
    unsafe {
        let v = _mm512_loadu_si512(pb.add(NR * 2 + c * 128 + h * 64).cast());
        let m = _mm512_set1_epi8(15);
        (_mm512_and_si512(v, m), _mm512_and_si512(_mm512_srli_epi16(v, 4), m))
    }
}

/// The f32 scales of a panel block's 16 outputs of half `h`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scales(pb: *const u8, h: usize) -> std::arch::x86_64::__m512 {
    // SAFETY: the caller passes a panel block; its first 64 bytes are 32 f16 scales.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(h * 32).cast())) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q4(
    values: *const u8,
    scale: *const f32,
    share: *const i32,
    w: *const u8,
    ng: usize,
    acc: &mut [[f32; NR]; MR],
) {
    *acc = [[0.0; NR]; MR];
    for g in 0..ng {
        // SAFETY: g < ng: the panel block and the token block's inputs 32g..32g+32 and its scales and
        // shares are inside the operands (checked by the caller).
        unsafe {
            // The sums start at -share (the 4-bit values' + 8 times the activations), so they end at
            // the products of the signed values.
            let pb = w.add(g * PanelType::Q4_0.panel_block());
            let ws = [scales(pb, 0), scales(pb, 1)];
            for r0 in (0..MR).step_by(RT) {
                let mut c: [__m512i; 2 * RT] = [_mm512_setzero_si512(); 2 * RT];
                for r in 0..RT {
                    let sh = _mm512_set1_epi32(-*share.add(g * MR + r0 + r));
                    c[2 * r] = sh;
                    c[2 * r + 1] = sh;
                }
                for ch in 0..4 {
                    let (lo0, hi0) = operands(pb, ch, 0);
                    let (lo1, hi1) = operands(pb, ch, 1);
                    let kk = g * QK / 4 + 2 * ch;
                    let a0 = values.add(kk * MR * 4).cast::<i32>().add(r0);
                    let a1 = values.add((kk + 1) * MR * 4).cast::<i32>().add(r0);
                    for r in 0..RT {
                        let av = _mm512_set1_epi32(a0.add(r).read_unaligned());
                        c[2 * r] = _mm512_dpbusd_epi32(c[2 * r], lo0, av);
                        c[2 * r + 1] = _mm512_dpbusd_epi32(c[2 * r + 1], lo1, av);
                    }
                    for r in 0..RT {
                        let av = _mm512_set1_epi32(a1.add(r).read_unaligned());
                        c[2 * r] = _mm512_dpbusd_epi32(c[2 * r], hi0, av);
                        c[2 * r + 1] = _mm512_dpbusd_epi32(c[2 * r + 1], hi1, av);
                    }
                }
                for (r, row) in acc[r0..r0 + RT].iter_mut().enumerate() {
                    let sa = _mm512_set1_ps(*scale.add(g * MR + r0 + r));
                    for h in 0..2 {
                        // sum as f32 * (ws * sa), then added: the portable kernel's order.
                        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(c[2 * r + h]), _mm512_mul_ps(ws[h], sa));
                        let o = row.as_mut_ptr().add(16 * h);
                        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), v));
                    }
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_q4(
    values: *const u8,
    scale: *const f32,
    share: *const i32,
    r: usize,
    w: *const u8,
    ng: usize,
    acc: &mut [f32; NR],
) {
    let mut o = [_mm512_setzero_ps(); 2];
    for g in 0..ng {
        // SAFETY: as in `tile_q4`; r < MR.
        unsafe {
            let pb = w.add(g * PanelType::Q4_0.panel_block());
            // Four chains (low and high halves apart) so that consecutive vpdpbusd do not wait on each other.
            let mut c = [_mm512_setzero_si512(); 4];
            for ch in 0..4 {
                let (lo0, hi0) = operands(pb, ch, 0);
                let (lo1, hi1) = operands(pb, ch, 1);
                let kk = g * QK / 4 + 2 * ch;
                let a0 = _mm512_set1_epi32(values.add((kk * MR + r) * 4).cast::<i32>().read_unaligned());
                let a1 = _mm512_set1_epi32(values.add(((kk + 1) * MR + r) * 4).cast::<i32>().read_unaligned());
                c[0] = _mm512_dpbusd_epi32(c[0], lo0, a0);
                c[1] = _mm512_dpbusd_epi32(c[1], lo1, a0);
                c[2] = _mm512_dpbusd_epi32(c[2], hi0, a1);
                c[3] = _mm512_dpbusd_epi32(c[3], hi1, a1);
            }
            let sa = _mm512_set1_ps(*scale.add(g * MR + r));
            let sh = _mm512_set1_epi32(*share.add(g * MR + r));
            for h in 0..2 {
                let sum = std::arch::x86_64::_mm512_add_epi32(c[h], c[h + 2]);
                let v = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, sh)),
                    _mm512_mul_ps(scales(pb, h), sa),
                );
                o[h] = _mm512_add_ps(o[h], v);
            }
        }
    }
    // SAFETY: acc holds 32 f32, two halves of 16.
    unsafe {
        _mm512_storeu_ps(acc.as_mut_ptr(), o[0]);
        _mm512_storeu_ps(acc.as_mut_ptr().add(16), o[1]);
    }
}

/// The q8_0 epilogue for one token and one output half: `(sum - 128 x weight sum) as f32 * (ws * sa)`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q8_scaled(
    c: __m512i,
    wsum: __m512i,
    ws: std::arch::x86_64::__m512,
    sa: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::_mm512_slli_epi32;
    _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_sub_epi32(c, _mm512_slli_epi32(wsum, 7))),
        _mm512_mul_ps(ws, sa),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q8(values: *const u8, scale: *const f32, w: *const u8, ng: usize, acc: &mut [[f32; NR]; MR]) {
    let pbs = PanelType::Q8_0.panel_block();
    let ones = _mm512_set1_epi8(1);
    *acc = [[0.0; NR]; MR];
    for g in 0..ng {
        // SAFETY: g < ng: the panel block and the token block's inputs 32g..32g+32 are inside the
        // operands (checked by the caller).
        unsafe {
            let pb = w.add(g * pbs);
            let weights = |ch: usize| {
                (
                    _mm512_loadu_si512(pb.add(NR * 2 + ch * 128).cast()),
                    _mm512_loadu_si512(pb.add(NR * 2 + ch * 128 + 64).cast()),
                )
            };
            let mut wsum = [_mm512_setzero_si512(); 2];
            for ch in 0..8 {
                let (w0, w1) = weights(ch);
                wsum[0] = _mm512_dpbusd_epi32(wsum[0], ones, w0);
                wsum[1] = _mm512_dpbusd_epi32(wsum[1], ones, w1);
            }
            let ws = [scales(pb, 0), scales(pb, 1)];
            for r0 in (0..MR).step_by(RT) {
                let mut c: [__m512i; 2 * RT] = [_mm512_setzero_si512(); 2 * RT];
                for ch in 0..8 {
                    let (w0, w1) = weights(ch);
                    let a = values.add((g * QK / 4 + ch) * MR * 4).cast::<i32>().add(r0);
                    for r in 0..RT {
                        let av = _mm512_set1_epi32(a.add(r).read_unaligned());
                        c[2 * r] = _mm512_dpbusd_epi32(c[2 * r], av, w0);
                        c[2 * r + 1] = _mm512_dpbusd_epi32(c[2 * r + 1], av, w1);
                    }
                }
                for (r, row) in acc[r0..r0 + RT].iter_mut().enumerate() {
                    let sa = _mm512_set1_ps(*scale.add(g * MR + r0 + r));
                    for h in 0..2 {
                        let v = q8_scaled(c[2 * r + h], wsum[h], ws[h], sa);
                        let o = row.as_mut_ptr().add(16 * h);
                        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), v));
                    }
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_q8(values: *const u8, scale: *const f32, r: usize, w: *const u8, ng: usize, acc: &mut [f32; NR]) {
    use std::arch::x86_64::_mm512_add_epi32;
    let pbs = PanelType::Q8_0.panel_block();
    let ones = _mm512_set1_epi8(1);
    let mut o = [_mm512_setzero_ps(); 2];
    for g in 0..ng {
        // SAFETY: as in `tile_q8`; r < MR.
        unsafe {
            let pb = w.add(g * pbs);
            // Even and odd chunks in separate chains, so that consecutive vpdpbusd do not wait on each other.
            let mut c = [_mm512_setzero_si512(); 4];
            let mut ws4 = [_mm512_setzero_si512(); 4];
            for ch in 0..8 {
                let e = 2 * (ch % 2);
                let w0 = _mm512_loadu_si512(pb.add(NR * 2 + ch * 128).cast());
                let w1 = _mm512_loadu_si512(pb.add(NR * 2 + ch * 128 + 64).cast());
                let av = _mm512_set1_epi32(
                    values
                        .add(((g * QK / 4 + ch) * MR + r) * 4)
                        .cast::<i32>()
                        .read_unaligned(),
                );
                c[e] = _mm512_dpbusd_epi32(c[e], av, w0);
                c[e + 1] = _mm512_dpbusd_epi32(c[e + 1], av, w1);
                ws4[e] = _mm512_dpbusd_epi32(ws4[e], ones, w0);
                ws4[e + 1] = _mm512_dpbusd_epi32(ws4[e + 1], ones, w1);
            }
            let sa = _mm512_set1_ps(*scale.add(g * MR + r));
            for h in 0..2 {
                let sum = _mm512_add_epi32(c[h], c[h + 2]);
                let wsum = _mm512_add_epi32(ws4[h], ws4[h + 2]);
                o[h] = _mm512_add_ps(o[h], q8_scaled(sum, wsum, scales(pb, h), sa));
            }
        }
    }
    // SAFETY: acc holds 32 f32, two halves of 16.
    unsafe {
        _mm512_storeu_ps(acc.as_mut_ptr(), o[0]);
        _mm512_storeu_ps(acc.as_mut_ptr().add(16), o[1]);
    }
}
