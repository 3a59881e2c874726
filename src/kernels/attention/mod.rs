//! The ViT's attention (bidirectional, no mask, 16 heads of 64 over 1025 tokens) as f32 matrix products
//! by our own kernel, one block of `MR` queries at a time: scores for all keys, softmax, weighted values.
//!
//! Why our own: ggml 0.26's CPU flash attention runs this shape at ~45 GFLOP/s on this machine (2.4 s of
//! a tile's 4.8 CPU-seconds once the Linear layers run in int8), and its matrix-product form at ~50
//! (its tiled GEMM is not built for 64-deep products). A 12 x 32 register tile of f32 FMAs over a
//! packed K (and V as it lies) does the same arithmetic in f32, as the reference does, several times
//! faster. The scores of a block (12 x 1025 f32, 49 KB) stay in L1/L2; K and V of one head (~0.5 MB)
//! in L2 while every query block of that head passes.
//!
//! The AVX-512 tile (`avx512`), the AVX2 one (`avx2`: four 6 x 16 sub-tiles, AVX2 having 16 registers)
//! and the portable one accumulate with fused multiply-adds in the same order, and the softmax's
//! exponential is one polynomial written once, so all paths give the same bits.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::Isa;

/// Queries per block. The vector kernels compute a block in register sub-tiles of 6 queries (AVX-512: 6 x 32,
/// AVX2: 6 x 16), so a block is two (AVX-512) or four (AVX2) passes over a panel that stays in L1.
pub const MR: usize = 12;
/// Keys (for the scores) or value channels (for the output) per panel: two 16-lane vectors.
pub const NR: usize = 32;

/// Buffers one thread reuses across heads.
#[derive(Default)]
pub struct Scratch {
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
}

/// One head over `n` tokens of head dimension `hd`: `q`, `k`, `v` hold token `i`'s
/// row at `[i * ld..][..hd]`; writes `softmax(scale q kᵀ) v` for the queries of `blocks` (blocks of
/// `MR`; the last may be short) to `out`, whose first row is query `blocks.start * MR`, rows `ldo` apart.
/// `isa`: the kernels that run (`Avx512Vnni`: the AVX-512 F ones; `Avx2`: the AVX2 + FMA ones;
/// `Portable`: the plain ones; all the same bits).
#[allow(clippy::too_many_arguments)]
pub fn head(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ld: usize,
    n: usize,
    hd: usize,
    scale: f32,
    blocks: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
    sc: &mut Scratch,
) {
    assert!(hd > 0, "attention: head dimension 0");
    assert!(n > 0 && ld >= hd && q.len() >= (n - 1) * ld + hd, "attention: short q");
    assert!(
        k.len() >= (n - 1) * ld + hd && v.len() >= (n - 1) * ld + hd,
        "attention: short k/v"
    );
    assert!(blocks.end <= n.div_ceil(MR), "attention: block range");
    let panels = n.div_ceil(NR);
    // Kᵀ in panels of NR keys: panel p, input c, key j at [(p * hd + c) * NR + j]; missing keys 0.
    sc.kt.clear();
    sc.kt.resize(panels * hd * NR, 0.0);
    for i in 0..n {
        let (p, j) = (i / NR, i % NR);
        for (c, &x) in k[i * ld..i * ld + hd].iter().enumerate() {
            sc.kt[(p * hd + c) * NR + j] = x;
        }
    }
    // V contiguous, rows padded with zeros to whole panels; its panels are column ranges of it.
    let ldv = hd.div_ceil(NR) * NR;
    sc.v.clear();
    sc.v.resize(n * ldv, 0.0);
    for i in 0..n {
        sc.v[i * ldv..i * ldv + hd].copy_from_slice(&v[i * ld..i * ld + hd]);
    }
    for b in blocks.clone() {
        let rows = MR.min(n - b * MR);
        block(
            isa,
            &q[b * MR * ld..],
            ld,
            rows,
            hd,
            &sc.kt,
            panels,
            &sc.v,
            ldv,
            n,
            |_, row| 1.0 / softmax_row(isa, &mut row[..n], scale),
            &mut out[(b - blocks.start) * MR * ldo..],
            ldo,
            &mut sc.q,
            &mut sc.s,
        );
    }
}

/// One block of `rows` (at most `MR`) queries of one head, what the ViT's and the prefill's attention
/// share: the queries `q[r * ldq..][..hd]` (rows past `rows` zero) against the keys of the first `panels`
/// panels of `kt` (panel p, input c, key j at `[(p * hd + c) * NR + j]`); `weights(r, row)` turns query
/// r's `panels * NR` scores into its weights in place and returns the factor its weighted sum is scaled
/// by; then the weighted values over the first `depth` rows of `v` (rows `ldv` apart, zero past its
/// keys) go to `out[r * ldo..][..hd]` for r < rows. The padded queries' rows weigh nothing (their outputs
/// are not written, and each output row depends on its own weights only). `qb` and `s` are scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block(
    isa: Isa,
    q: &[f32],
    ldq: usize,
    rows: usize,
    hd: usize,
    kt: &[f32],
    panels: usize,
    v: &[f32],
    ldv: usize,
    depth: usize,
    mut weights: impl FnMut(usize, &mut [f32]) -> f32,
    out: &mut [f32],
    ldo: usize,
    qb: &mut Vec<f32>,
    s: &mut Vec<f32>,
) {
    assert!(
        (1..=MR).contains(&rows) && hd > 0 && ldq >= hd && ldo >= hd,
        "attention block: shapes"
    );
    assert!(
        q.len() >= (rows - 1) * ldq + hd && out.len() >= (rows - 1) * ldo + hd,
        "attention block: short q or out"
    );
    let np = panels * NR; // score row length (keys padded)
    qb.resize(MR * hd, 0.0);
    s.resize(MR * np, 0.0);
    for r in 0..MR {
        let dst = &mut qb[r * hd..(r + 1) * hd];
        if r < rows {
            dst.copy_from_slice(&q[r * ldq..][..hd]);
        } else {
            dst.fill(0.0);
        }
    }
    let mut acc = [[0f32; NR]; MR];
    for p in 0..panels {
        tile(isa, qb, hd, &kt[p * hd * NR..(p + 1) * hd * NR], NR, hd, &mut acc);
        for (r, a) in acc.iter().enumerate() {
            s[r * np + p * NR..][..NR].copy_from_slice(a);
        }
    }
    let mut factors = [0f32; MR];
    for (r, f) in factors.iter_mut().enumerate() {
        let row = &mut s[r * np..(r + 1) * np];
        if r < rows {
            *f = weights(r, row);
        } else {
            row.fill(0.0);
        }
    }
    for p in 0..ldv / NR {
        tile(isa, s, np, &v[p * NR..], ldv, depth, &mut acc);
        let cols = NR.min(hd - p * NR);
        for (r, &f) in factors.iter().enumerate().take(rows) {
            let o = &mut out[r * ldo + p * NR..][..cols];
            for (o, a) in o.iter_mut().zip(&acc[r]) {
                *o = a * f;
            }
        }
    }
}

/// `acc[r][j] = sum over c < depth of a[r * lda + c] * b[c * ldb + j]`, r < MR, j < NR, fused
/// multiply-adds in increasing c.
pub(crate) fn tile(isa: Isa, a: &[f32], lda: usize, b: &[f32], ldb: usize, depth: usize, acc: &mut [[f32; NR]; MR]) {
    assert!(
        depth > 0 && a.len() >= (MR - 1) * lda + depth,
        "attention tile: short a"
    );
    assert!(b.len() >= (depth - 1) * ldb + NR, "attention tile: short b");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        avx512::tile(a, lda, b, ldb, depth, acc);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.base() == Isa::Avx2 {
        avx2::tile(a, lda, b, ldb, depth, acc);
        return;
    }
    tile_portable(a, lda, b, ldb, depth, acc);
}

fn tile_portable(a: &[f32], lda: usize, b: &[f32], ldb: usize, depth: usize, acc: &mut [[f32; NR]; MR]) {
    *acc = [[0.0; NR]; MR];
    for c in 0..depth {
        let bc = &b[c * ldb..c * ldb + NR];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = a[r * lda + c];
            for (acc, &y) in acc_r.iter_mut().zip(bc) {
                *acc = x.mul_add(y, *acc);
            }
        }
    }
}

/// `row[j] = exp(scale (row[j] - max))`, returns the sum.
fn softmax_row(isa: Isa, row: &mut [f32], scale: f32) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        return avx512::exp_shifted(row, max, scale);
    }
    #[cfg(target_arch = "x86_64")]
    if isa.base() == Isa::Avx2 {
        return avx2::exp_shifted(row, max, scale);
    }
    exp_shifted(row, max, scale)
}

/// `row[j] = exp(scale (row[j] - max))` in place, returns the sum (a loop the compiler vectorizes when
/// compiled for AVX-512, see `avx512::exp_shifted`).
#[inline(always)]
fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
    for x in row.iter_mut() {
        *x = exp_nonpositive((*x - max) * scale);
    }
    sum16(row)
}

/// A sum in 16 interleaved partial sums, combined pairwise: a fixed order that vectorizes (a plain
/// running sum cannot be reordered by the compiler, so it would not).
#[inline(always)]
pub(crate) fn sum16(row: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    for (a, x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    add_halves(acc)
}

/// The sum of `N` (a power of two) lanes by halves: lane i + N/2 added to lane i, then i + N/4, ...: the
/// order a vector register is reduced in.
#[inline(always)]
pub(crate) fn add_halves<const N: usize>(mut acc: [f32; N]) -> f32 {
    let mut w = N;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// exp(x) for x <= 0, relative error ~2e-7 (Cephes' expf polynomial after reducing by ln 2), 0 below
/// -87 (where f32 goes subnormal). Plain multiplies and adds, so every build rounds it the same way.
#[inline(always)]
pub(crate) fn exp_nonpositive(x0: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // n = round(x log2 e) by the 1.5 * 2^23 trick: the sum's low mantissa bits are n itself (two's
    // complement), which gives 2^n without a float-to-int conversion (whose saturating Rust form stops
    // the loop from vectorizing).
    const MAGIC: f32 = 12_582_912.0;
    let x = x0.max(-87.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_66;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let y = e * f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    if x0 < -87.0 {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    fn reference(q: &[f32], k: &[f32], v: &[f32], ld: usize, n: usize, hd: usize, scale: f32) -> Vec<f64> {
        let mut out = vec![0f64; n * hd];
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..hd)
                        .map(|c| f64::from(q[i * ld + c]) * f64::from(k[j * ld + c]))
                        .sum::<f64>()
                        * f64::from(scale)
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..hd {
                out[i * hd + c] = (0..n).map(|j| e[j] * f64::from(v[j * ld + c])).sum::<f64>() / z;
            }
        }
        out
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        for i in 0..19_300 {
            let x = -(i as f32) * 0.0045;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want + 1e-38,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(
            (exp_nonpositive(-87.5), exp_nonpositive(-1e9), exp_nonpositive(0.0)),
            (0.0, 0.0, 1.0)
        );
    }

    #[test]
    fn one_head_matches_the_f64_softmax_attention() {
        for hd in [64, 16, 48] {
            one_head(hd);
        }
    }

    /// Every instruction set this CPU runs, against the f64 reference and against the portable kernels'
    /// bits.
    fn one_head(hd: usize) {
        // Odd sizes: a short last query block and a short last key panel; strided rows (fused qkv).
        let (n, ld) = (29, 3 * hd + 5);
        let (q, k, v) = (values(n * ld, 1), values(n * ld, 2), values(n * ld, 3));
        let q: Vec<f32> = q.iter().map(|x| x * 4.0).collect(); // peaked rows as well as flat ones
        let scale = 0.125;
        let want = reference(&q, &k, &v, ld, n, hd, scale);
        let run = |isa: Isa, blocks: std::ops::Range<usize>| {
            let mut out = vec![f32::NAN; (n - blocks.start * MR) * hd];
            head(
                isa,
                &q,
                &k,
                &v,
                ld,
                n,
                hd,
                scale,
                blocks,
                &mut out,
                hd,
                &mut Scratch::default(),
            );
            out
        };
        let portable = run(Isa::Portable, 0..n.div_ceil(MR));
        for isa in Isa::all_here() {
            eprintln!("attention head (hd {hd}): {} kernels", isa.name());
            let out = run(isa, 0..n.div_ceil(MR));
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert!((f64::from(*o) - w).abs() < 1e-5, "{isa:?} output {i}: {o} vs {w}");
            }
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&portable), "{isa:?} differs from the portable kernels");
            // A later range of blocks gives the same rows.
            let tail = run(isa, 1..n.div_ceil(MR));
            assert_eq!(&out[MR * hd..], &tail[..]);
        }
    }

    /// The tile and the softmax pass of every instruction set this CPU runs give the portable kernels'
    /// bits, at odd strides and depths (1, a few, the ViT's 64 and 1025 tokens).
    #[test]
    fn every_isa_gives_the_portable_kernels_bits() {
        let bits = |t: &[[f32; NR]; MR]| t.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        for isa in Isa::all_here() {
            eprintln!("attention tile and softmax: {} kernels", isa.name());
            for (lda, ldb, depth) in [(70, 40, 67), (64, 32, 64), (1056, 64, 1025), (12, 32, 1)] {
                let (a, b) = (values(MR * lda, 4), values(depth * ldb, 5));
                let (mut fast, mut portable) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
                tile(isa, &a, lda, &b, ldb, depth, &mut fast);
                tile_portable(&a, lda, &b, ldb, depth, &mut portable);
                assert_eq!(bits(&fast), bits(&portable), "{isa:?}: {lda} {ldb} {depth}");
            }
            for len in [1000, 1025, 7, 16] {
                let row: Vec<f32> = values(len, 6).iter().map(|x| x * 30.0).collect();
                let (mut x, mut y) = (row.clone(), row.clone());
                let (sx, sy) = (
                    softmax_row(isa, &mut x, 0.125),
                    softmax_row(Isa::Portable, &mut y, 0.125),
                );
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!((bits(&x), sx.to_bits()), (bits(&y), sy.to_bits()), "{isa:?}: {len}");
            }
        }
    }
}
