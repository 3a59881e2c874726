//! The exact (erf) GELU of the ViT's MLP and the projector (`nn.GELU()`, spec §1.1), elementwise over f32.
//!
//! Why our own: ggml 0.26's CPU `gelu_erf` calls the C library's scalar `erff` for each value, ~0.36 s
//! of a 448 tile on this machine's 2 threads (24 layers x 1025 tokens x 4096 values), a fifth of the
//! tile once the products run in our kernels. Here `erfc` is Numerical Recipes' `erfcc` Chebyshev fit
//! (fractional error below 1.2e-7 everywhere, so the negative tail keeps its relative accuracy) with the
//! exponential of `crate::kernels::attention`: plain arithmetic and selects, which the compiler vectorizes (for
//! AVX-512 or AVX2 + FMA as the kernels choice says: the same operations, so the same bits; Rust never
//! fuses a multiply and an add by itself, so FMA in the target changes no rounding).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::Isa;

/// `x = 0.5 x (1 + erf(x / sqrt 2))` for every value, in place, by the kernel for `isa` (`Avx512Vnni`: the
/// AVX-512 F build; `Avx2`: the AVX2 + FMA build; `Portable`: the baseline one; all the same bits).
pub fn gelu_erf(isa: Isa, values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        avx512::gelu_erf(values);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.base() == Isa::Avx2 {
        avx2::gelu_erf(values);
        return;
    }
    gelu_erf_slice(values);
}

/// Values per step of `gelu_lanes`: four AVX2 vectors, two AVX-512 ones.
const LANES: usize = 32;

#[inline(always)]
fn gelu_erf_slice(values: &mut [f32]) {
    let mut chunks = values.chunks_exact_mut(LANES);
    for c in &mut chunks {
        let c: &mut [f32; LANES] = c.try_into().expect("chunks_exact_mut gives LANES values");
        gelu_lanes(c);
    }
    for x in chunks.into_remainder() {
        *x = gelu(*x);
    }
}

/// `erfc`'s Chebyshev coefficients after the leading one (Numerical Recipes' `erfcc`), highest first.
const ERFC_LEAD: f32 = 0.170_872_77;
const ERFC_REST: [f32; 9] = [
    -0.822_152_23,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// `gelu` of `LANES` values, step by step across all of them: each step is a few independent vector
/// operations, where `gelu` per value is one long chain of dependent ones (a 9-term polynomial, a
/// division, the exponential's polynomial) that the compiler vectorizes one vector at a time, leaving
/// the multiply and add units waiting on latencies. The same operations on each value in the same order,
/// so the same bits.
#[inline(always)]
fn gelu_lanes(x: &mut [f32; LANES]) {
    use std::array::from_fn;
    let u: [f32; LANES] = from_fn(|i| x[i] * std::f32::consts::FRAC_1_SQRT_2);
    let z: [f32; LANES] = from_fn(|i| u[i].abs());
    let t: [f32; LANES] = from_fn(|i| 1.0 / (1.0 + 0.5 * z[i]));
    let mut p = [ERFC_LEAD; LANES];
    for c in ERFC_REST {
        for (p, t) in p.iter_mut().zip(&t) {
            *p = *p * t + c;
        }
    }
    let e: [f32; LANES] = from_fn(|i| crate::kernels::attention::exp_nonpositive((p[i] - z[i] * z[i]).min(0.0)));
    for i in 0..LANES {
        let erfc = t[i] * e[i];
        let one_plus_erf = if u[i] < 0.0 { erfc } else { 2.0 - erfc };
        x[i] = 0.5 * x[i] * one_plus_erf;
    }
}

/// One value. `1 + erf(u)` is `2 - erfc(|u|)` for `u >= 0` and `erfc(|u|)` for `u < 0`, so that the
/// negative tail (where GELU goes to 0) has no cancellation.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let z = u.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = ERFC_LEAD;
    for c in ERFC_REST {
        p = p * t + c;
    }
    // The fit's argument is 3e-8 above 0 at z = 0 (erfc(0) = 1 then by a few ulp): clamped to 0.
    let erfc = t * crate::kernels::attention::exp_nonpositive((p - z * z).min(0.0));
    let one_plus_erf = if u < 0.0 { erfc } else { 2.0 - erfc };
    0.5 * x * one_plus_erf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erfc in f64: the Maclaurin series of erf below 2.5, a continued fraction above (both far more
    /// precise than f32).
    fn erfc64(z: f64) -> f64 {
        if z < 2.5 {
            let (mut term, mut sum) = (z, z);
            for n in 1..200 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            let mut k = z;
            for i in (1..100).rev() {
                k = z + (i as f64 / 2.0) / k;
            }
            (-z * z).exp() / (std::f64::consts::PI.sqrt() * k)
        }
    }

    fn gelu64(x: f64) -> f64 {
        let u = x / std::f64::consts::SQRT_2;
        0.5 * x * if u < 0.0 { erfc64(-u) } else { 2.0 - erfc64(u) }
    }

    #[test]
    fn matches_the_exact_gelu() {
        let xs: Vec<f32> = (-1200..=1200)
            .map(|i| i as f32 / 100.0)
            .chain([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0])
            .collect();
        for isa in Isa::all_here() {
            eprintln!("gelu: {} kernels", isa.name());
            let mut out = xs.clone();
            gelu_erf(isa, &mut out);
            for (&x, &y) in xs.iter().zip(&out) {
                let want = gelu64(f64::from(x));
                let err = (f64::from(y) - want).abs();
                // Absolute error against |x| (where GELU is about x), relative in the negative tail.
                let tol = 4e-7 * f64::from(x.abs()).max(1e-3) + 4e-6 * want.abs();
                assert!(err <= tol, "{isa:?}: gelu({x}) = {y}, want {want} (error {err:e})");
            }
        }
    }

    #[test]
    fn special_values() {
        for isa in Isa::all_here() {
            eprintln!("gelu special values: {} kernels", isa.name());
            // -inf gives NaN (-inf x 0), as the formula does in ggml and PyTorch.
            let mut out = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -200.0];
            gelu_erf(isa, &mut out);
            assert_eq!(out[0], f32::INFINITY, "{isa:?}");
            assert!(out[1].is_nan() && out[2].is_nan() && out[3] == 0.0, "{isa:?}: {out:?}");
        }
    }

    /// Every instruction set this CPU runs gives the portable build's bits (special values included:
    /// NaN's payload too).
    #[test]
    fn every_isa_gives_the_portable_bits() {
        let xs: Vec<f32> = (0..4099)
            .map(|i| (i as f32 * 0.618).sin() * 9.0)
            .chain([
                0.0,
                -0.0,
                1e-30,
                -1e-30,
                50.0,
                -50.0,
                -200.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
            ])
            .collect();
        let mut portable = xs.clone();
        gelu_erf_slice(&mut portable);
        // The lane-wise steps (whole chunks of LANES) and the per-value form (the tail) agree.
        assert!(
            xs.iter().zip(&portable).all(|(&x, y)| gelu(x).to_bits() == y.to_bits()),
            "gelu_lanes differs from gelu"
        );
        for isa in Isa::all_here() {
            eprintln!("gelu bits: {} kernels", isa.name());
            let mut out = xs.clone();
            gelu_erf(isa, &mut out);
            assert!(
                out.iter().zip(&portable).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{isa:?} differs from the portable build"
            );
        }
    }
}
