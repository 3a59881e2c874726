//! AVX-512 versions of the attention tile and of the softmax's exponential pass.
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::{MR, NR};

/// Whether this CPU runs these kernels (`Isa::Avx512Vnni`).
pub fn available() -> bool {
    // Every CPU with AVX-512 VNNI has F (the set these kernels need); `Isa` asks the CPU once.
    crate::kernels::Isa::Avx512Vnni.runs_here()
}

/// Rows of the sub-tile held in registers: 6 x 32 outputs, 12 accumulators.
const ROWS: usize = 6;
const _: () = assert!(MR.is_multiple_of(ROWS) && NR == 32);

/// See `super::tile`: two 6 x 32 sub-tiles, each over the whole depth (per input c two loads of b and 6
/// broadcasts of a). The whole 12 x 32 tile (24 accumulators) fits AVX-512's 32 registers only as long
/// as the compiler keeps one input at a time; LLVM unrolled it by two inputs and hoisted their 24
/// broadcasts, which spilled accumulators to the stack on every step: on an AMD Zen 4 the ViT's
/// attention then took ~40% of a tile's encode (1.25 s), against ~0.45 s for the AVX2 kernel's 6 x 16
/// sub-tiles on the same CPU. With 12 accumulators nothing spills, unrolled or not.
pub fn tile(a: &[f32], lda: usize, b: &[f32], ldb: usize, depth: usize, acc: &mut [[f32; NR]; MR]) {
    assert!(available(), "attention tile: AVX-512 kernel on a CPU without it");
    assert!(
        depth > 0 && a.len() >= (MR - 1) * lda + depth,
        "attention tile: short a"
    );
    assert!(b.len() >= (depth - 1) * ldb + NR, "attention tile: short b");
    // SAFETY: the CPU has AVX-512 F (checked above); every load is inside `a` (rows r < MR, columns
    // c < depth) or `b` (rows c < depth, NR columns), checked above.
    unsafe { tile_avx512(a.as_ptr(), lda, b.as_ptr(), ldb, depth, acc) }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(a: *const f32, lda: usize, b: *const f32, ldb: usize, depth: usize, acc: &mut [[f32; NR]; MR]) {
    for r0 in (0..MR).step_by(ROWS) {
        let mut c: [__m512; 2 * ROWS] = [_mm512_setzero_ps(); 2 * ROWS];
        for k in 0..depth {
            // SAFETY: k < depth: b's row k and a's column k of rows r0 + r < MR are inside the operands
            // (see `tile`).
            unsafe {
                let b0 = _mm512_loadu_ps(b.add(k * ldb));
                let b1 = _mm512_loadu_ps(b.add(k * ldb + 16));
                for r in 0..ROWS {
                    let x = _mm512_set1_ps(*a.add((r0 + r) * lda + k));
                    c[2 * r] = _mm512_fmadd_ps(x, b0, c[2 * r]);
                    c[2 * r + 1] = _mm512_fmadd_ps(x, b1, c[2 * r + 1]);
                }
            }
        }
        for r in 0..ROWS {
            let row = &mut acc[r0 + r];
            // SAFETY: each row is NR = 32 f32, two 16-lane stores.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), c[2 * r]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), c[2 * r + 1]);
            }
        }
    }
}

/// `super::exp_shifted` compiled for AVX-512 (the same code, vectorized by the compiler).
pub fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
    assert!(available(), "attention softmax: AVX-512 code on a CPU without it");
    // SAFETY: the CPU has AVX-512 F (checked above); the function is safe code otherwise.
    unsafe { exp_shifted_avx512(row, max, scale) }
}

#[target_feature(enable = "avx512f")]
fn exp_shifted_avx512(row: &mut [f32], max: f32, scale: f32) -> f32 {
    super::exp_shifted(row, max, scale)
}
