//! The AVX2 kernels for `Panels` (with FMA and F16C in the set; FMA itself is not used: the float steps
//! are the portable kernels' multiply, then add). The panel layout is AVX-512's: one 64-byte vector of 16
//! outputs x 4 inputs is two 32-byte `ymm` here (outputs 0-7 and 8-15 of its half), so a panel's 32
//! outputs are four columns of 8.
//!
//! AVX2 has no `vpdpbusd`; `vpmaddubsw` (unsigned x signed bytes, adjacent products summed into
//! saturating i16) and `vpmaddwd` by ones (adjacent i16 summed into i32) stand in for it, exactly:
//! - q4_0: the 4-bit values (`q + 8`, 0..15) are the unsigned operand, the signed activations
//!   (|a| <= 127) the other: a pair is at most 2 x 15 x 127 = 3810, so the i16 sums of a whole block of
//!   32 inputs (8 pairs per lane) stay within 8 x 3810 = 30480 < 32767, and one `vpmaddwd` per block
//!   and column gives the i32 sums. The `+ 8` offset is taken out with the activations' share, as on
//!   AVX-512.
//! - q8_0: both operands are signed. The row (decoding, bound by memory) uses ggml's sign trick: `|w|`
//!   as unsigned bytes times `a` with `w`'s sign (`vpsignb`), exact for `w = -128` too (|w| = 128 as
//!   u8); a pair is at most 2 x 128 x 127 = 32512 < 32767, so no saturation, but two pairs could
//!   overflow: each `vpmaddubsw` goes to i32 by `vpmaddwd` at once. The tile (bound by arithmetic)
//!   widens both operands to i16 and uses `vpmaddwd` alone (see `tiles_q8_raw`). The activations are
//!   stored as `q` for these kernels (`super::q8_offset`), so a token's bytes are broadcast or widened
//!   straight from memory, with no offset to take out.
//!
//! The integer sums are exact, so they equal the portable kernels' whatever the order; the float steps
//! per block (`sum as f32 * (w scale * a scale)`, added to the output) are the same in the same order, so
//! the outputs are bit-identical to the portable kernels'.
use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_epi16, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256, _mm256_cvtepi32_ps,
    _mm256_cvtph_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps,
    _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi8, _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256,
    _mm256_sign_epi8, _mm256_srli_epi16, _mm256_storeu_ps, _mm256_sub_epi32, _mm_loadu_si128,
};

use super::{PanelType, MR, NR, QK};

/// Tokens per register tile: `RT` tokens x 16 outputs (two columns) of accumulators.
const RT: usize = 4;
const _: () = assert!(MR.is_multiple_of(RT));

/// See `super::quantize_group_portable`, whose bits this gives.
pub fn quantize_group(v: &[f32], q: &mut [i8; QK]) -> (f32, i32) {
    assert!(
        crate::kernels::Isa::Avx2.runs_here(),
        "panels quantize: AVX2 kernel on a CPU without it"
    );
    assert!(v.len() >= QK, "panels quantize: short group");
    // SAFETY: the CPU has AVX2 (checked above); the function reads 32 floats of `v` and writes the 32
    // bytes of `q`, both that long (checked above, and by the type).
    unsafe { quantize_group_avx2(v.as_ptr(), q.as_mut_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_group_avx2(v: *const f32, q: *mut i8) -> (f32, i32) {
    use std::arch::x86_64::{
        _mm256_andnot_ps, _mm256_castsi256_si128, _mm256_cvtps_epi32, _mm256_extracti128_si256, _mm256_max_epi32,
        _mm256_max_ps, _mm256_min_epi32, _mm256_packs_epi16, _mm256_packs_epi32, _mm256_permutevar8x32_epi32,
        _mm256_setr_epi32, _mm256_storeu_si256, _mm_add_epi32, _mm_cvtsi128_si32, _mm_shuffle_epi32,
    };
    // SAFETY: 32 floats at v and 32 bytes at q (the caller's contract).
    unsafe {
        let x: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(v.add(8 * i)));
        // |x| by clearing the sign bit; the maximum is exact, so the order of the reduction is free.
        let sign = _mm256_set1_ps(-0.0);
        let m = x
            .iter()
            .fold(_mm256_setzero_ps(), |m, &x| _mm256_max_ps(m, _mm256_andnot_ps(sign, x)));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
        let s = amax / 127.0;
        let inv = _mm256_set1_ps(if (1.0 / s).is_finite() { 1.0 / s } else { 0.0 });
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        // cvtps rounds to nearest even under the default MXCSR, like round_ties_even.
        let qi: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x[i], inv)), lo), hi)
        });
        // Narrowing packs within 128-bit lanes: the 4-byte pieces come out as (x0 0-3, x1 0-3, x2 0-3,
        // x3 0-3 | x0 4-7, x1 4-7, x2 4-7, x3 4-7); the permutation puts them back in order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), bytes);
        let sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
        let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
        (s, _mm_cvtsi128_si32(sum))
    }
}

/// The kernels, for `super::tile` and `super::row`, which check their operands.
pub(super) const KERNELS: super::Simd = super::Simd {
    isa: crate::kernels::Isa::Avx2,
    name: "AVX2",
    tile_q4,
    tile_q8,
    row_q4,
    row_q8,
};

/// The 32 bytes of column `j` (outputs `8j..8j+8`) of 4-input chunk `ch` of a panel block's values at
/// `pv` (128 bytes a chunk: two halves of 64, each two columns of 32).
#[inline(always)]
pub(super) unsafe fn column(pv: *const u8, ch: usize, j: usize) -> __m256i {
    // SAFETY: the caller passes a panel block's values and a chunk inside it; j < 4.
    unsafe { _mm256_loadu_si256(pv.add(ch * 128 + j * 32).cast()) }
}

/// The f32 scales of column `j` (8 outputs) of a panel block at `pb`.
#[inline(always)]
pub(super) unsafe fn scales(pb: *const u8, j: usize) -> __m256 {
    // SAFETY: the caller passes a panel block; its first 64 bytes are 32 f16 scales. F16C: the caller's
    // target features.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(pb.add(j * 16).cast())) }
}

/// A token's 4 activation bytes at `p`, broadcast to every 32-bit lane (`vpbroadcastd` from memory).
#[inline(always)]
pub(super) unsafe fn broadcast(p: *const u8) -> __m256i {
    // SAFETY: the caller passes 4 readable bytes.
    unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

/// `o + (sum as f32) * (ws * sa)` at `o` (8 values): the portable epilogue's order.
#[inline(always)]
pub(super) unsafe fn scale_add(o: *mut f32, sum: __m256i, ws: __m256, sa: __m256) {
    // SAFETY: the caller passes 8 writable f32.
    unsafe {
        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(ws, sa));
        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), v));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q4(
    values: *const u8,
    scale: *const f32,
    share: *const i32,
    w: *const u8,
    ng: usize,
    acc: &mut [[f32; NR]; MR],
) {
    let pbs = PanelType::Q4_0.panel_block();
    let (m, ones) = (_mm256_set1_epi8(15), _mm256_set1_epi16(1));
    *acc = [[0.0; NR]; MR];
    for g in 0..ng {
        // SAFETY: g < ng: the panel block and the token block's inputs 32g..32g+32 and its scales and
        // shares are inside the operands (checked by the caller); the outputs are inside `acc`.
        unsafe {
            let pb = w.add(g * pbs);
            let pv = pb.add(NR * 2);
            // Two columns (16 outputs) at a time, RT tokens at a time: RT x 2 i16 accumulators, the
            // columns' low and high halves and two products in registers.
            for j0 in [0, 2] {
                let ws = [scales(pb, j0), scales(pb, j0 + 1)];
                for r0 in (0..MR).step_by(RT) {
                    let mut c = [[_mm256_setzero_si256(); 2]; RT];
                    for ch in 0..4 {
                        let kk = g * QK / 4 + 2 * ch;
                        let (v0, v1) = (column(pv, ch, j0), column(pv, ch, j0 + 1));
                        let (lo0, hi0) = (_mm256_and_si256(v0, m), _mm256_and_si256(_mm256_srli_epi16(v0, 4), m));
                        let (lo1, hi1) = (_mm256_and_si256(v1, m), _mm256_and_si256(_mm256_srli_epi16(v1, 4), m));
                        for (i, c) in c.iter_mut().enumerate() {
                            let r = r0 + i;
                            let a0 = broadcast(values.add((kk * MR + r) * 4));
                            let a1 = broadcast(values.add(((kk + 1) * MR + r) * 4));
                            let p0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo0, a0), _mm256_maddubs_epi16(hi0, a1));
                            let p1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo1, a0), _mm256_maddubs_epi16(hi1, a1));
                            c[0] = _mm256_add_epi16(c[0], p0);
                            c[1] = _mm256_add_epi16(c[1], p1);
                        }
                    }
                    for (i, c) in c.iter().enumerate() {
                        let r = r0 + i;
                        let sa = _mm256_set1_ps(*scale.add(g * MR + r));
                        let sh = _mm256_set1_epi32(*share.add(g * MR + r));
                        for (h, c) in c.iter().enumerate() {
                            let sum = _mm256_sub_epi32(_mm256_madd_epi16(*c, ones), sh);
                            scale_add(acc[r].as_mut_ptr().add(8 * (j0 + h)), sum, ws[h], sa);
                        }
                    }
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4(
    values: *const u8,
    scale: *const f32,
    share: *const i32,
    r: usize,
    w: *const u8,
    ng: usize,
    acc: &mut [f32; NR],
) {
    let pbs = PanelType::Q4_0.panel_block();
    let (m, ones) = (_mm256_set1_epi8(15), _mm256_set1_epi16(1));
    let mut o = [_mm256_setzero_ps(); 4];
    for g in 0..ng {
        prefetch_ahead(w.wrapping_add(g * pbs), pbs);
        // SAFETY: as in `tile_q4`; r < MR.
        unsafe {
            let pb = w.add(g * pbs);
            let pv = pb.add(NR * 2);
            // Per column the low and high halves' products in two chains (summed at the end).
            let mut c = [[_mm256_setzero_si256(); 2]; 4];
            for ch in 0..4 {
                let kk = g * QK / 4 + 2 * ch;
                let a0 = broadcast(values.add((kk * MR + r) * 4));
                let a1 = broadcast(values.add(((kk + 1) * MR + r) * 4));
                for (j, c) in c.iter_mut().enumerate() {
                    let v = column(pv, ch, j);
                    let (lo, hi) = (_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m));
                    c[0] = _mm256_add_epi16(c[0], _mm256_maddubs_epi16(lo, a0));
                    c[1] = _mm256_add_epi16(c[1], _mm256_maddubs_epi16(hi, a1));
                }
            }
            let sa = _mm256_set1_ps(*scale.add(g * MR + r));
            let sh = _mm256_set1_epi32(*share.add(g * MR + r));
            for (j, (o, c)) in o.iter_mut().zip(&c).enumerate() {
                // Each chain holds 4 pairs per lane (<= 15240): their i16 sum is within range too.
                let sum = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_add_epi16(c[0], c[1]), ones), sh);
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(scales(pb, j), sa));
                *o = _mm256_add_ps(*o, v);
            }
        }
    }
    // SAFETY: acc holds 32 f32, four columns of 8.
    unsafe {
        for (j, o) in o.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), *o);
        }
    }
}

/// Panel blocks ahead of the one being read that a row kernel asks the caches for.
const PREFETCH_BLOCKS: usize = 6;

/// Asks for the cache lines of the panel block `PREFETCH_BLOCKS` blocks of `bytes` after `pb`. The q4_0
/// row streams the weights once; with the hardware prefetchers alone it ran slower per byte than the
/// q8_0 row (a q4_0 decode's profile: 47% of the samples for its 201 MB per token, 23% for the q8_0
/// output matrix's 144 MB). With this, 12 interleaved decode pairs went from 59.0 to 63.5 tok/s on
/// average (Zen 4, AVX2 path). The q8_0 row is not given it: its decode went from 41 to 36 tok/s.
/// A prefetch does not fault, so addresses past the panel are harmless.
#[inline(always)]
pub(super) fn prefetch_ahead(pb: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let ahead = pb.wrapping_add(PREFETCH_BLOCKS * bytes);
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
    }
}

/// `|w|` (unsigned) x (`a` with `w`'s sign), as i32 sums of 4: one q8_0 product of 4 inputs x 8 outputs.
#[inline(always)]
unsafe fn q8_dot(wabs: __m256i, w: __m256i, a: __m256i, ones: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a, w)), ones)
}

/// The i16 copy of one panel block's q8_0 weights that the tile multiplies: per column `j` (8 outputs)
/// and 4-input chunk `ch`, two vectors of 8 outputs x 2 inputs (the chunk's inputs 0-1, then 2-3), each
/// output's pair adjacent, as `vpmaddwd` takes them.
type WideBlock = [[[__m256i; 2]; 8]; 4];

/// Widens the values of the panel block at `pv` (see `WideBlock`).
#[inline(always)]
unsafe fn widen_q8(pv: *const u8, wide: &mut WideBlock) {
    use std::arch::x86_64::{
        _mm256_castsi256_si128, _mm256_cvtepi8_epi16, _mm256_extracti128_si256, _mm256_permute4x64_epi64,
        _mm256_setr_epi8, _mm256_shuffle_epi8,
    };
    // In each 128-bit lane (4 outputs x 4 inputs): every output's inputs 0-1, then every output's 2-3.
    #[rustfmt::skip]
    let pairs = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    for (j, column_j) in wide.iter_mut().enumerate() {
        for (ch, wide) in column_j.iter_mut().enumerate() {
            // SAFETY: the caller passes a panel block's values; ch < 8, j < 4.
            let v = _mm256_shuffle_epi8(unsafe { column(pv, ch, j) }, pairs);
            // 64-bit pieces in the order lane 0 pairs 0-1, lane 1 pairs 0-1, lane 0 pairs 2-3, lane 1 pairs 2-3.
            let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(v);
            *wide = [
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)),
            ];
        }
    }
}

/// See `tiles_q8`: one token block.
unsafe fn tile_q8(values: *const u8, scale: *const f32, w: *const u8, ng: usize, acc: &mut [[f32; NR]; MR]) {
    // SAFETY: the caller's contract is `tiles_q8_raw`'s for one block.
    unsafe { tiles_q8_raw(1, |_| (values, scale), w, ng, std::slice::from_mut(acc)) }
}

/// Token blocks `chunk` times one q8_0 panel `w` of `ng` blocks, `accs[i]` overwritten by block `i`'s
/// tile (see `super::tiles`).
pub(super) fn tiles_q8(chunk: &[super::Block], w: &[u8], ng: usize, accs: &mut [[[f32; NR]; MR]]) {
    assert!(
        crate::kernels::Isa::Avx2.runs_here(),
        "panels kernel: AVX2 kernel on a CPU without it"
    );
    assert!(
        w.len() >= ng * PanelType::Q8_0.panel_block() && accs.len() >= chunk.len(),
        "panels tiles: short panel or outputs"
    );
    for a in chunk {
        assert!(
            a.values.len() >= ng * QK * MR && a.scale.len() >= ng * MR,
            "panels tiles: short token block"
        );
    }
    let block = |i: usize| (chunk[i].values.as_ptr(), chunk[i].scale.as_ptr());
    // SAFETY: the CPU has AVX2 (checked above); the blocks' values and scales and the panel hold `ng`
    // groups (checked above).
    unsafe { tiles_q8_raw(chunk.len(), block, w.as_ptr(), ng, accs) }
}

/// The q8_0 tile multiplies i16, not bytes. On the CPUs measured (AMD Zen 4) the sign trick's
/// `vpsignb` runs on the same two pipes as `vpmaddubsw` and `vpmaddwd`: three of those per 32 products,
/// where `vpmaddwd` on i16 takes two. Both operands are widened once per group of 32 inputs: the
/// panel block's weights (`widen_q8`) once for every token block of the chunk, each block's activations
/// once for the panel. The i32 sums are the same integers and the float steps the portable kernel's, in
/// its order, so the outputs keep its bits.
///
/// Safety: the CPU runs AVX2; for `i < blocks`, `block(i)` gives pointers to a token block's
/// `ng * QK * MR` value bytes and `ng * MR` scales; `w` points at a panel of `ng` q8_0 blocks; `accs`
/// holds at least `blocks` tiles.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles_q8_raw(
    blocks: usize,
    block: impl Fn(usize) -> (*const u8, *const f32),
    w: *const u8,
    ng: usize,
    accs: &mut [[[f32; NR]; MR]],
) {
    use std::arch::x86_64::{_mm256_cvtepi8_epi16, _mm_loadu_si128};
    /// Bytes of a token block's activations per group: 8 chunks x MR tokens x 4.
    const GROUP_BYTES: usize = QK / 4 * MR * 4;
    let pbs = PanelType::Q8_0.panel_block();
    let mut wide: WideBlock = [[[_mm256_setzero_si256(); 2]; 8]; 4];
    // A block's activations of one group as i16, `[chunk][token][4]`: the bytes' order, widened.
    let mut a16 = [_mm256_setzero_si256(); GROUP_BYTES / 16];
    let accs = &mut accs[..blocks];
    accs.fill([[0.0; NR]; MR]);
    for g in 0..ng {
        // SAFETY: g < ng: the panel block, each token block's group (GROUP_BYTES bytes at
        // g * GROUP_BYTES) and its scales are inside the operands (the caller's contract); the i16 pairs
        // read are inside `a16`, the outputs inside `accs`.
        unsafe {
            let pb = w.add(g * pbs);
            widen_q8(pb.add(NR * 2), &mut wide);
            let ws: [__m256; 4] = std::array::from_fn(|j| scales(pb, j));
            for (i, acc) in accs.iter_mut().enumerate() {
                let (vals, scale) = block(i);
                let ag = vals.add(g * GROUP_BYTES);
                for (i, v) in a16.iter_mut().enumerate() {
                    *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(ag.add(16 * i).cast()));
                }
                let pairs = a16.as_ptr().cast::<i32>();
                for j0 in [0, 2] {
                    for r0 in (0..MR).step_by(RT) {
                        let mut c = [[_mm256_setzero_si256(); 2]; RT];
                        for (ch, (w0, w1)) in wide[j0].iter().zip(&wide[j0 + 1]).enumerate() {
                            for (i, c) in c.iter_mut().enumerate() {
                                let at = pairs.add((ch * MR + r0 + i) * 2);
                                let (a01, a23) = (_mm256_set1_epi32(at.read()), _mm256_set1_epi32(at.add(1).read()));
                                let d0 = _mm256_add_epi32(_mm256_madd_epi16(w0[0], a01), _mm256_madd_epi16(w0[1], a23));
                                let d1 = _mm256_add_epi32(_mm256_madd_epi16(w1[0], a01), _mm256_madd_epi16(w1[1], a23));
                                c[0] = _mm256_add_epi32(c[0], d0);
                                c[1] = _mm256_add_epi32(c[1], d1);
                            }
                        }
                        for (i, c) in c.iter().enumerate() {
                            let r = r0 + i;
                            let sa = _mm256_set1_ps(*scale.add(g * MR + r));
                            for (h, c) in c.iter().enumerate() {
                                scale_add(acc[r].as_mut_ptr().add(8 * (j0 + h)), *c, ws[j0 + h], sa);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q8(values: *const u8, scale: *const f32, r: usize, w: *const u8, ng: usize, acc: &mut [f32; NR]) {
    use std::arch::x86_64::_mm256_abs_epi8;
    let pbs = PanelType::Q8_0.panel_block();
    let ones = _mm256_set1_epi16(1);
    let mut o = [_mm256_setzero_ps(); 4];
    for g in 0..ng {
        // SAFETY: as in `tile_q8`; r < MR.
        unsafe {
            let pb = w.add(g * pbs);
            let pv = pb.add(NR * 2);
            // Even and odd chunks in separate chains per column.
            let mut c = [[_mm256_setzero_si256(); 2]; 4];
            for ch in 0..8 {
                let a = broadcast(values.add(((g * QK / 4 + ch) * MR + r) * 4));
                for (j, c) in c.iter_mut().enumerate() {
                    let v = column(pv, ch, j);
                    c[ch % 2] = _mm256_add_epi32(c[ch % 2], q8_dot(_mm256_abs_epi8(v), v, a, ones));
                }
            }
            let sa = _mm256_set1_ps(*scale.add(g * MR + r));
            for (j, (o, c)) in o.iter_mut().zip(&c).enumerate() {
                let v = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_add_epi32(c[0], c[1])),
                    _mm256_mul_ps(scales(pb, j), sa),
                );
                *o = _mm256_add_ps(*o, v);
            }
        }
    }
    // SAFETY: acc holds 32 f32, four columns of 8.
    unsafe {
        for (j, o) in o.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), *o);
        }
    }
}
