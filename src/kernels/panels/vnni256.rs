//! The AVX-VNNI kernels for `Panels`: AVX-512 VNNI's arithmetic (`super::avx512`) on 256-bit registers,
//! for the CPUs that have `vpdpbusd` only there (Intel since Alder Lake, AMD since Zen 5). Same panel
//! layout, read as `super::avx2` reads it (a panel's 32 outputs are four columns of 8); the same
//! integers and float steps in the portable kernels' order, so the same bits.
//! - q4_0: the 4-bit values (`q + 8`) are the unsigned operand, the signed activations the other; the sums
//!   start at minus the activations' share of the `+ 8`.
//! - q8_0: the activations are stored as `q + 128` (`super::q8_offset`), the unsigned operand, times the
//!   signed weights; a product of the weights with ones gives their sums, whose 128-fold is taken out.
//!
//! The source is built twice (`kernels!`): `vex` with AVX-VNNI's encoding (`_mm256_dpbusd_avx_epi32`),
//! what `Isa::AvxVnni` runs, and `evex` with AVX-512 VL + VNNI's encoding of the same instruction on
//! 256-bit registers (`_mm256_dpbusd_epi32`), what `Isa::AvxVnniEvex` runs: on the CPUs we have (AVX-512
//! VNNI, no AVX-VNNI) the tests check this source through `evex`. The two binaries are not the same: with
//! AVX-512 VL the compiler has 32 vector registers, so `evex` spills less than `vex` (16); its timings are
//! an optimistic stand-in for `vex`'s, and `vex` itself has not run anywhere yet.

/// The four kernels for one encoding: `$feat` the target features, `$dp` the `vpdpbusd` intrinsic.
macro_rules! kernels {
    ($feat:literal, $dp:ident, $isa:expr, $name:literal) => {
        use std::arch::x86_64::{
            __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_set1_epi32, _mm256_set1_epi8, _mm256_setzero_si256,
            _mm256_slli_epi32, _mm256_srli_epi16, _mm256_sub_epi32,
        };

        use super::super::avx2::{broadcast, column, prefetch_ahead, scale_add, scales};
        use super::super::{PanelType, MR, NR, QK};

        /// Tokens per register tile: q4_0 holds 4 operands (two columns' low and high halves), q8_0 two.
        const RT4: usize = 4;
        const RT8: usize = 6;
        const _: () = assert!(MR.is_multiple_of(RT4) && MR.is_multiple_of(RT8));

        pub(in super::super) const KERNELS: super::super::Simd = super::super::Simd {
            isa: $isa,
            name: $name,
            tile_q4,
            tile_q8,
            row_q4,
            row_q8,
        };

        /// `acc + a (unsigned bytes) . b (signed bytes)`, 4 products per 32-bit lane.
        ///
        /// Safety: the CPU runs `$feat` (the caller is one of the kernels below, built for them).
        #[inline(always)]
        unsafe fn dp(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: register operands only; the instruction set is the caller's contract.
            unsafe { std::arch::x86_64::$dp(acc, a, b) }
        }

        /// Column `j`'s 4-bit values of chunk `ch`: the low halves (inputs `8ch..8ch+4`) and the high ones.
        ///
        /// Safety: `pv` is a q4_0 panel block's values, `ch < 4`, `j < 4`; the CPU runs AVX2.
        #[inline(always)]
        unsafe fn nibbles(pv: *const u8, ch: usize, j: usize) -> (__m256i, __m256i) {
            let m = _mm256_set1_epi8(15);
            // SAFETY: the caller passes a q4_0 panel block's values, ch < 4, j < 4.
            let v = unsafe { column(pv, ch, j) };
            (
                _mm256_and_si256(v, m),
                _mm256_and_si256(_mm256_srli_epi16(v, 4), m),
            )
        }

        /// Adds a register tile's integer sums `c` (tokens `r0..`, columns `j0` and `j0 + 1`) of one group to
        /// `acc`, the portable epilogue's steps: `acc + sum as f32 * (ws * sa)`.
        ///
        /// Safety: `scale` points at the group's `MR` activation scales; `r0 + c.len() <= MR`, `j0 + 1 < 4`;
        /// the CPU runs AVX2.
        #[inline(always)]
        unsafe fn add_tile<const RT: usize>(
            acc: &mut [[f32; NR]; MR],
            c: &[[__m256i; 2]; RT],
            r0: usize,
            j0: usize,
            ws: [std::arch::x86_64::__m256; 2],
            scale: *const f32,
        ) {
            for (i, c) in c.iter().enumerate() {
                let r = r0 + i;
                // SAFETY: token r < MR of the group's scales, outputs 8(j0 + h)..+8 of row r (the contract).
                unsafe {
                    let sa = std::arch::x86_64::_mm256_set1_ps(*scale.add(r));
                    for (h, c) in c.iter().enumerate() {
                        scale_add(acc[r].as_mut_ptr().add(8 * (j0 + h)), *c, ws[h], sa);
                    }
                }
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn tile_q4(
            values: *const u8,
            scale: *const f32,
            share: *const i32,
            w: *const u8,
            ng: usize,
            acc: &mut [[f32; NR]; MR],
        ) {
            let pbs = PanelType::Q4_0.panel_block();
            *acc = [[0.0; NR]; MR];
            for g in 0..ng {
                // SAFETY: g < ng: the panel block and the token block's inputs 32g..32g+32, its scales and
                // shares are inside the operands (checked by the caller); the outputs inside `acc`.
                unsafe {
                    let pb = w.add(g * pbs);
                    let pv = pb.add(NR * 2);
                    for j0 in [0, 2] {
                        let ws = [scales(pb, j0), scales(pb, j0 + 1)];
                        for r0 in (0..MR).step_by(RT4) {
                            let mut c = [[_mm256_setzero_si256(); 2]; RT4];
                            for (i, c) in c.iter_mut().enumerate() {
                                let sh = _mm256_set1_epi32(-*share.add(g * MR + r0 + i));
                                *c = [sh, sh];
                            }
                            for ch in 0..4 {
                                let kk = g * QK / 4 + 2 * ch;
                                let (lo0, hi0) = nibbles(pv, ch, j0);
                                let (lo1, hi1) = nibbles(pv, ch, j0 + 1);
                                for (i, c) in c.iter_mut().enumerate() {
                                    let a0 = broadcast(values.add((kk * MR + r0 + i) * 4));
                                    let a1 = broadcast(values.add(((kk + 1) * MR + r0 + i) * 4));
                                    c[0] = dp(dp(c[0], lo0, a0), hi0, a1);
                                    c[1] = dp(dp(c[1], lo1, a0), hi1, a1);
                                }
                            }
                            add_tile(acc, &c, r0, j0, ws, scale.add(g * MR));
                        }
                    }
                }
            }
        }

        #[target_feature(enable = $feat)]
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
            let mut o = [[0f32; 8]; 4];
            for g in 0..ng {
                // As the AVX2 row does (see there).
                prefetch_ahead(w.wrapping_add(g * pbs), pbs);
                // SAFETY: as in `tile_q4`; r < MR.
                unsafe {
                    let pb = w.add(g * pbs);
                    let pv = pb.add(NR * 2);
                    // Per column the low and high halves in two chains.
                    let sh = _mm256_set1_epi32(-*share.add(g * MR + r));
                    let mut c = [[sh, _mm256_setzero_si256()]; 4];
                    for ch in 0..4 {
                        let kk = g * QK / 4 + 2 * ch;
                        let a0 = broadcast(values.add((kk * MR + r) * 4));
                        let a1 = broadcast(values.add(((kk + 1) * MR + r) * 4));
                        for (j, c) in c.iter_mut().enumerate() {
                            let (lo, hi) = nibbles(pv, ch, j);
                            c[0] = dp(c[0], lo, a0);
                            c[1] = dp(c[1], hi, a1);
                        }
                    }
                    let sa = std::arch::x86_64::_mm256_set1_ps(*scale.add(g * MR + r));
                    for (j, (o, c)) in o.iter_mut().zip(&c).enumerate() {
                        scale_add(o.as_mut_ptr(), _mm256_add_epi32(c[0], c[1]), scales(pb, j), sa);
                    }
                }
            }
            *acc = std::array::from_fn(|i| o[i / 8][i % 8]);
        }

        /// Per column of panel block values `pv`, the sums of its outputs' 32 weights.
        ///
        /// Safety: `pv` is a q8_0 panel block's values; the CPU runs `$feat`.
        #[inline(always)]
        unsafe fn weight_sums(pv: *const u8) -> [__m256i; 4] {
            let ones = _mm256_set1_epi8(1);
            let mut s = [_mm256_setzero_si256(); 4];
            for ch in 0..8 {
                for (j, s) in s.iter_mut().enumerate() {
                    // SAFETY: the caller passes a q8_0 panel block's values; ch < 8, j < 4.
                    *s = unsafe { dp(*s, ones, column(pv, ch, j)) };
                }
            }
            s
        }

        #[target_feature(enable = $feat)]
        unsafe fn tile_q8(values: *const u8, scale: *const f32, w: *const u8, ng: usize, acc: &mut [[f32; NR]; MR]) {
            let pbs = PanelType::Q8_0.panel_block();
            *acc = [[0.0; NR]; MR];
            for g in 0..ng {
                // SAFETY: g < ng: the panel block and the token block's inputs 32g..32g+32 and its scales
                // are inside the operands (checked by the caller); the outputs inside `acc`.
                unsafe {
                    let pb = w.add(g * pbs);
                    let pv = pb.add(NR * 2);
                    // The sums start at minus the 128 x weight sums that the activations' `+ 128` adds.
                    let start =
                        weight_sums(pv).map(|s| _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s, 7)));
                    for j0 in [0, 2] {
                        let ws = [scales(pb, j0), scales(pb, j0 + 1)];
                        for r0 in (0..MR).step_by(RT8) {
                            let mut c = [[start[j0], start[j0 + 1]]; RT8];
                            for ch in 0..8 {
                                let (w0, w1) = (column(pv, ch, j0), column(pv, ch, j0 + 1));
                                for (i, c) in c.iter_mut().enumerate() {
                                    let a = broadcast(values.add(((g * QK / 4 + ch) * MR + r0 + i) * 4));
                                    c[0] = dp(c[0], a, w0);
                                    c[1] = dp(c[1], a, w1);
                                }
                            }
                            add_tile(acc, &c, r0, j0, ws, scale.add(g * MR));
                        }
                    }
                }
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn row_q8(values: *const u8, scale: *const f32, r: usize, w: *const u8, ng: usize, acc: &mut [f32; NR]) {
            let pbs = PanelType::Q8_0.panel_block();
            let ones = _mm256_set1_epi8(1);
            let mut o = [[0f32; 8]; 4];
            for g in 0..ng {
                // SAFETY: as in `tile_q8`; r < MR.
                unsafe {
                    let pb = w.add(g * pbs);
                    let pv = pb.add(NR * 2);
                    // Per column the products and the weight sums, each in its own chain.
                    let mut c = [_mm256_setzero_si256(); 4];
                    let mut s = [_mm256_setzero_si256(); 4];
                    for ch in 0..8 {
                        let a = broadcast(values.add(((g * QK / 4 + ch) * MR + r) * 4));
                        for j in 0..4 {
                            let v = column(pv, ch, j);
                            c[j] = dp(c[j], a, v);
                            s[j] = dp(s[j], ones, v);
                        }
                    }
                    let sa = std::arch::x86_64::_mm256_set1_ps(*scale.add(g * MR + r));
                    for (j, o) in o.iter_mut().enumerate() {
                        let sum = _mm256_sub_epi32(c[j], _mm256_slli_epi32(s[j], 7));
                        scale_add(o.as_mut_ptr(), sum, scales(pb, j), sa);
                    }
                }
            }
            *acc = std::array::from_fn(|i| o[i / 8][i % 8]);
        }
    };
}

/// AVX-VNNI's encoding (`Isa::AvxVnni`).
pub(super) mod vex {
    kernels!(
        "avx2,fma,f16c,avxvnni",
        _mm256_dpbusd_avx_epi32,
        crate::kernels::Isa::AvxVnni,
        "AVX-VNNI"
    );
}

/// AVX-512 VL + VNNI's encoding of the same instruction (`Isa::AvxVnniEvex`).
pub(super) mod evex {
    kernels!(
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        _mm256_dpbusd_epi32,
        crate::kernels::Isa::AvxVnniEvex,
        "AVX-VNNI (EVEX)"
    );
}
