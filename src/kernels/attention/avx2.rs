//! AVX2 + FMA versions of the attention tile and of the softmax's exponential pass.
//!
//! AVX2 has 16 vector registers of 8 f32, too few for the 12 x 32 tile in registers (48 accumulators),
//! so the tile is computed as four 6 x 16 sub-tiles (12 accumulators, 2 loads of b and a broadcast of a:
//! 15 registers), each over the whole depth. Every output is still the fused multiply-adds of inputs
//! c = 0, 1, ... in increasing order from 0, as in `super::tile_portable`, so the bits are the same.
use std::arch::x86_64::{
    __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
};

use super::{MR, NR};

/// Rows and columns of the sub-tile held in registers.
const ROWS: usize = 6;
const COLS: usize = 16;
const _: () = assert!(MR.is_multiple_of(ROWS) && NR.is_multiple_of(COLS) && COLS == 16);

/// Whether this CPU runs `Isa::Avx2` (AVX2, FMA and F16C; asked once per process).
pub fn available() -> bool {
    crate::kernels::Isa::Avx2.runs_here()
}

/// See `super::tile`.
pub fn tile(a: &[f32], lda: usize, b: &[f32], ldb: usize, depth: usize, acc: &mut [[f32; NR]; MR]) {
    assert!(
        available(),
        "attention tile: AVX2 kernel on a CPU without AVX2, FMA and F16C"
    );
    assert!(
        depth > 0 && a.len() >= (MR - 1) * lda + depth,
        "attention tile: short a"
    );
    assert!(b.len() >= (depth - 1) * ldb + NR, "attention tile: short b");
    // SAFETY: the CPU has AVX2 and FMA (`available`, checked above); every load is inside `a` (rows r < MR, columns
    // c < depth) or `b` (rows c < depth, NR columns), checked above.
    unsafe { tile_avx2(a.as_ptr(), lda, b.as_ptr(), ldb, depth, acc) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(a: *const f32, lda: usize, b: *const f32, ldb: usize, depth: usize, acc: &mut [[f32; NR]; MR]) {
    for r0 in (0..MR).step_by(ROWS) {
        for j0 in (0..NR).step_by(COLS) {
            let mut c: [__m256; 2 * ROWS] = [_mm256_setzero_ps(); 2 * ROWS];
            for k in 0..depth {
                // SAFETY: k < depth and j0 + 16 <= NR: b's row k, columns j0..j0 + 16, and a's column k of
                // rows r0 + r < MR are inside the operands (see `tile`).
                unsafe {
                    let b0 = _mm256_loadu_ps(b.add(k * ldb + j0));
                    let b1 = _mm256_loadu_ps(b.add(k * ldb + j0 + 8));
                    for r in 0..ROWS {
                        let x = _mm256_set1_ps(*a.add((r0 + r) * lda + k));
                        c[2 * r] = _mm256_fmadd_ps(x, b0, c[2 * r]);
                        c[2 * r + 1] = _mm256_fmadd_ps(x, b1, c[2 * r + 1]);
                    }
                }
            }
            for r in 0..ROWS {
                let row = &mut acc[r0 + r][j0..j0 + COLS];
                // SAFETY: `row` holds 16 f32, two 8-lane stores.
                unsafe {
                    _mm256_storeu_ps(row.as_mut_ptr(), c[2 * r]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), c[2 * r + 1]);
                }
            }
        }
    }
}

/// `super::exp_shifted` compiled for AVX2 + FMA (the same code, vectorized by the compiler; Rust does not
/// fuse its multiplies and adds, so the rounding is the portable code's).
pub fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
    assert!(
        available(),
        "attention softmax: AVX2 code on a CPU without AVX2, FMA and F16C"
    );
    // SAFETY: the CPU has AVX2 and FMA (`available`, checked above); the function is safe code otherwise.
    unsafe { exp_shifted_avx2(row, max, scale) }
}

#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(row: &mut [f32], max: f32, scale: f32) -> f32 {
    super::exp_shifted(row, max, scale)
}
