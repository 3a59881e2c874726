//! `super::gelu_erf_slice` compiled for AVX2 + FMA (8 values per instruction). The same operations in the
//! same order: Rust never contracts a multiply and an add into an FMA by itself, so enabling FMA changes
//! no rounding and the bits are the portable path's.
/// Whether this CPU runs `Isa::Avx2` (AVX2, FMA and F16C; asked once per process).
pub fn available() -> bool {
    crate::kernels::Isa::Avx2.runs_here()
}

pub fn gelu_erf(values: &mut [f32]) {
    assert!(available(), "gelu: AVX2 code on a CPU without it");
    // SAFETY: the CPU has AVX2 and FMA (`available`, checked above); the function is safe code otherwise.
    unsafe { gelu_erf_avx2(values) }
}

#[target_feature(enable = "avx2,fma")]
fn gelu_erf_avx2(values: &mut [f32]) {
    super::gelu_erf_slice(values)
}
