//! `super::gelu_erf_slice` compiled for AVX-512 F (16 values per instruction; same operations).
/// Whether this CPU has AVX-512 F (`crate::kernels::attention`'s check, done once).
pub fn available() -> bool {
    crate::kernels::Isa::Avx512Vnni.runs_here()
}

pub fn gelu_erf(values: &mut [f32]) {
    assert!(available(), "gelu: AVX-512 code on a CPU without it");
    // SAFETY: the CPU has AVX-512 F (checked above); the function is safe code otherwise.
    unsafe { gelu_erf_avx512(values) }
}

#[target_feature(enable = "avx512f")]
fn gelu_erf_avx512(values: &mut [f32]) {
    super::gelu_erf_slice(values)
}
