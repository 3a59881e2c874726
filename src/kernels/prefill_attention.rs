//! The language model's attention for a chunk of prompt tokens (prefill) over the f16 KV cache: per query
//! head, `softmax(scale q kᵀ + mask) v` for blocks of `MR` tokens, as f32 register-tiled products by the
//! ViT attention's tile (`super::attention::tile`): the scores of a block against the keys it may see, the
//! softmax of each row, the weighted values.
//!
//! Why our own: ggml's CPU flash attention ran a 1844-token prompt's attention at ~47 G multiply-adds/s
//! on 2 AVX2 threads (Zen 4; 4.4% of a 7-tile request's samples, ~1.5 s), and its cost grows with the
//! square of the prompt: by that law ~5 s of a 13-tile request's 12.8 s prefill (an estimate, not a
//! profile). The ViT attention's tile runs the same shapes
//! near the CPU's f32 multiply-add peak. Keys a whole block may not see (the causal future) are not
//! computed.
//!
//! Every token's result is the same bits whatever chunk it is evaluated in (alone, as the last prompt
//! token of a turn whose prefix came from the cache, or inside a longer chunk), as the runtime needs
//! (see `crate::model::llm::Batch`): each score is one chain of fused multiply-adds over the head
//! dimension; a row's softmax covers its keys in a fixed lane order (`sum16`), where the keys it may not
//! see weigh exactly 0 whatever their number; the weighted sum adds those zeros (`fma(0, v, acc)` is
//! `acc`). Decode steps use `super::decode_attention` (other bits, as before with ggml's attention).
//!
//! Numerics: f32 throughout on the cache's f16 values, as the reference computes attention in f32 (ggml
//! rounds the query to f16). The portable, AVX2 and AVX-512 paths give the same bits (the tile's).

use half::f16;

use super::attention::{block, exp_nonpositive, sum16, MR, NR};
use super::Isa;

/// Buffers one thread reuses between calls.
#[derive(Default)]
pub struct Scratch {
    /// The keys of the KV head last converted, transposed in panels of `NR`: panel p, channel c, key j at
    /// `[(p * hd + c) * NR + j]`.
    kt: Vec<f32>,
    /// Its values as f32 rows of `ldv` (`hd` padded to whole panels), zero rows past the keys read.
    v: Vec<f32>,
    /// One row of converted f16 (keys or values).
    row: Vec<f32>,
    q: Vec<f32>,
    s: Vec<f32>,
}

/// A chunk's query tokens over the cache rows of one KV head: row `j`'s key at `k[j * ld..][..hd]` and
/// value at `v[j * ld..][..hd]` (f16 bits), for `j < n_kv`.
#[derive(Clone, Copy)]
pub struct Cache<'a> {
    pub k: &'a [u16],
    pub v: &'a [u16],
    pub ld: usize,
    pub n_kv: usize,
    pub hd: usize,
}

/// How many cache rows each token may see: the last row its mask row (`n_kv` f16 bits per token, 0 or
/// -inf added to the scores) leaves visible, plus one (0 when it sees none). A causal mask's rows end in
/// their hidden future, so the scan from the end is short.
pub fn visible_rows(mask: &[u16], n_kv: usize, n: usize, out: &mut Vec<usize>) {
    assert!(
        mask.len() >= n * n_kv,
        "prefill attention: mask of {} for {n} x {n_kv}",
        mask.len()
    );
    let hidden = f16::NEG_INFINITY.to_bits();
    out.clear();
    out.extend((0..n).map(|t| {
        mask[t * n_kv..(t + 1) * n_kv]
            .iter()
            .rposition(|&b| b != hidden)
            .map_or(0, |i| i + 1)
    }));
}

/// Converts the first `rows` cache rows of one KV head for `heads` (later calls with the same head reuse
/// them): `rows` is the most any token of the chunk sees, so the rows no token sees are never read.
pub fn load_kv(isa: Isa, cache: &Cache<'_>, rows: usize, sc: &mut Scratch) {
    let Cache { k, v, ld, n_kv, hd } = *cache;
    assert!(hd > 0 && rows <= n_kv, "prefill attention: {rows} rows of {n_kv}");
    if rows > 0 {
        let need = (rows - 1) * ld + hd;
        assert!(
            ld >= hd && k.len() >= need && v.len() >= need,
            "prefill attention: short cache"
        );
    }
    let panels = rows.div_ceil(NR);
    let ldv = hd.div_ceil(NR) * NR;
    sc.kt.clear();
    sc.kt.resize(panels * hd * NR, 0.0);
    sc.v.clear();
    sc.v.resize(panels * NR * ldv, 0.0);
    sc.row.resize(hd, 0.0);
    for j in 0..rows {
        let (p, jj) = (j / NR, j % NR);
        super::decode_attention::convert(isa, &k[j * ld..j * ld + hd], &mut sc.row);
        for (c, &x) in sc.row.iter().enumerate() {
            sc.kt[(p * hd + c) * NR + jj] = x;
        }
        super::decode_attention::convert(isa, &v[j * ld..j * ld + hd], &mut sc.v[j * ldv..j * ldv + hd]);
    }
}

/// Query head `q` (token `t`'s row at `q[t * ldq..][..hd]`) for the tokens of blocks `blocks` (of `MR`,
/// the last may be short) of a chunk of `n` tokens, over the rows `load_kv` converted: token `t` sees rows
/// `0..visible[t]`, `mask` (`n_kv` f16 bits per token) is added to its scaled scores. Writes token `t`'s
/// `hd` outputs at `out[(t - blocks.start * MR) * ldo..]`; a token that sees no row gets zeros.
#[allow(clippy::too_many_arguments)]
pub fn head(
    isa: Isa,
    q: &[f32],
    ldq: usize,
    n: usize,
    cache: &Cache<'_>,
    mask: &[u16],
    visible: &[usize],
    scale: f32,
    blocks: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
    sc: &mut Scratch,
) {
    let Cache { n_kv, hd, .. } = *cache;
    assert!(hd > 0 && ldq >= hd && ldo >= hd, "prefill attention: strides");
    assert!(n > 0 && q.len() >= (n - 1) * ldq + hd, "prefill attention: short q");
    assert!(
        visible.len() >= n && mask.len() >= n * n_kv && blocks.end <= n.div_ceil(MR),
        "prefill attention: mask or blocks"
    );
    let ldv = hd.div_ceil(NR) * NR;
    let loaded = sc.kt.len() / (hd * NR) * NR;
    for b in blocks.clone() {
        let t0 = b * MR;
        let rows = MR.min(n - t0);
        let first_out = (t0 - blocks.start * MR) * ldo;
        assert!(
            out.len() >= first_out + (rows - 1) * ldo + hd,
            "prefill attention: short out"
        );
        let seen = visible[t0..t0 + rows].iter().copied().max().unwrap_or(0);
        assert!(seen <= loaded && seen <= n_kv, "prefill attention: rows not loaded");
        if seen == 0 {
            for r in 0..rows {
                out[first_out + r * ldo..][..hd].fill(0.0);
            }
            continue;
        }
        let panels = seen.div_ceil(NR);
        // Keys past `seen` are not computed; the keys a row may not see among the computed ones weigh
        // exactly 0, so the weighted sum runs over every computed key.
        block(
            isa,
            &q[t0 * ldq..],
            ldq,
            rows,
            hd,
            &sc.kt,
            panels,
            &sc.v,
            ldv,
            panels * NR,
            |r, row| {
                let t = t0 + r;
                let sum = softmax_row(isa, row, &mask[t * n_kv..t * n_kv + visible[t]], scale);
                if sum > 0.0 {
                    1.0 / sum
                } else {
                    0.0
                }
            },
            &mut out[first_out..],
            ldo,
            &mut sc.q,
            &mut sc.s,
        );
    }
}

/// A row of scores to its softmax weights in place, unnormalized, returning their sum: `x = s * scale +
/// m` for the keys of `mask` (the row's visible ones; -inf in it hides a key), -inf past them, then
/// `exp(x - max)`. The hidden keys get exactly 0.
fn softmax_row(isa: Isa, row: &mut [f32], mask: &[u16], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa.base(), Isa::Avx2 | Isa::Avx512Vnni) && Isa::Avx2.runs_here() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the function is safe code otherwise.
        return unsafe { softmax_row_avx2(isa, row, mask, scale) };
    }
    softmax_row_portable(isa, row, mask, scale)
}

/// `softmax_row_portable` compiled for AVX2 + FMA (the same code vectorized; Rust does not fuse its
/// multiplies and adds, so the bits are the portable build's).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(isa: Isa, row: &mut [f32], mask: &[u16], scale: f32) -> f32 {
    softmax_row_portable(isa, row, mask, scale)
}

/// Mask values converted at a time (by `vcvtph2ps` on the vector paths, exact on all).
const MASK_STEP: usize = 64;

#[inline(always)]
fn softmax_row_portable(isa: Isa, row: &mut [f32], mask: &[u16], scale: f32) -> f32 {
    let seen = mask.len().min(row.len());
    // The maximum in 8 lanes (key j in lane j % 8; `>`, not `f32::max`, so that the loop vectorizes).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut m = [0f32; MASK_STEP];
    for (xs, ms) in row[..seen].chunks_mut(MASK_STEP).zip(mask.chunks(MASK_STEP)) {
        let m = &mut m[..ms.len()];
        super::decode_attention::convert(isa, ms, m);
        let mut x8 = xs.chunks_exact_mut(8);
        let mut m8 = m.chunks_exact(8);
        for (x8, m8) in (&mut x8).zip(&mut m8) {
            for ((x, &m), l) in x8.iter_mut().zip(m8).zip(lanes.iter_mut()) {
                let v = *x * scale + m;
                *x = if m == f32::NEG_INFINITY { m } else { v };
                *l = if *x > *l { *x } else { *l };
            }
        }
        for ((x, &m), l) in x8.into_remainder().iter_mut().zip(m8.remainder()).zip(lanes.iter_mut()) {
            let v = *x * scale + m;
            *x = if m == f32::NEG_INFINITY { m } else { v };
            *l = if *x > *l { *x } else { *l };
        }
    }
    row[seen..].fill(f32::NEG_INFINITY);
    let max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return 0.0;
    }
    for x in row.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    sum16(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    fn bits(x: &[f32]) -> Vec<u16> {
        x.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
    }

    /// A causal mask for `n` tokens after `n_past` over `n_kv` rows.
    fn causal(n_past: usize, n: usize, n_kv: usize) -> Vec<u16> {
        let mut m = vec![f16::NEG_INFINITY.to_bits(); n * n_kv];
        for t in 0..n {
            for j in 0..=n_past + t {
                m[t * n_kv + j] = 0;
            }
        }
        m
    }

    /// The textbook computation in f64 for token `t` of head `h` over the rows its mask shows.
    #[allow(clippy::too_many_arguments)]
    fn reference(q: &[f32], ldq: usize, t: usize, c: &Cache<'_>, mask: &[u16], scale: f32) -> Vec<f64> {
        let f = |b: u16| f64::from(f16::from_bits(b).to_f32());
        let rows: Vec<usize> = (0..c.n_kv)
            .filter(|&j| mask[t * c.n_kv + j] != f16::NEG_INFINITY.to_bits())
            .collect();
        let s: Vec<f64> = rows
            .iter()
            .map(|&j| {
                let d: f64 = (0..c.hd)
                    .map(|i| f64::from(q[t * ldq + i]) * f(c.k[j * c.ld + i]))
                    .sum();
                d * f64::from(scale) + f(mask[t * c.n_kv + j])
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let l: f64 = p.iter().sum();
        (0..c.hd)
            .map(|i| rows.iter().zip(&p).map(|(&j, p)| p * f(c.v[j * c.ld + i])).sum::<f64>() / l)
            .collect()
    }

    /// Runs every block of a chunk for one head.
    #[allow(clippy::too_many_arguments)]
    fn run(isa: Isa, q: &[f32], ldq: usize, n: usize, c: &Cache<'_>, mask: &[u16], scale: f32) -> Vec<f32> {
        let mut sc = Scratch::default();
        let mut vis = Vec::new();
        visible_rows(mask, c.n_kv, n, &mut vis);
        load_kv(isa, c, vis.iter().copied().max().unwrap_or(0), &mut sc);
        let mut out = vec![f32::NAN; n * c.hd];
        head(
            isa,
            q,
            ldq,
            n,
            c,
            mask,
            &vis,
            scale,
            0..n.div_ceil(MR),
            &mut out,
            c.hd,
            &mut sc,
        );
        out
    }

    #[test]
    fn every_path_matches_the_f64_reference_and_the_paths_agree_bit_for_bit() {
        // (tokens, cached rows before them, head dimension, extra hidden rows past them)
        for &(n, past, hd, pad, seed) in &[
            (1usize, 0usize, 64usize, 0usize, 1u64),
            (37, 0, 64, 3, 2),
            (29, 70, 64, 0, 3),
            (13, 5, 40, 9, 4),
        ] {
            let n_kv = past + n + pad;
            let ld = 2 * hd; // two KV heads per cache row, this one first
            let q: Vec<f32> = values(n * hd, seed).iter().map(|x| x * 6.0).collect();
            let k = bits(&values(n_kv * ld, seed + 10));
            let v = bits(&values(n_kv * ld, seed + 20));
            let mask = causal(past, n, n_kv);
            let c = Cache {
                k: &k,
                v: &v,
                ld,
                n_kv,
                hd,
            };
            let scale = 1.0 / (hd as f32).sqrt();
            let mut first: Option<Vec<f32>> = None;
            for isa in Isa::all_here() {
                let out = run(isa, &q, hd, n, &c, &mask, scale);
                for t in 0..n {
                    let want = reference(&q, hd, t, &c, &mask, scale);
                    for (a, b) in out[t * hd..(t + 1) * hd].iter().zip(&want) {
                        assert!((f64::from(*a) - b).abs() < 2e-5, "{} token {t}: {a} vs {b}", isa.name());
                    }
                }
                crate::test_values::same_bits_as_first(&mut first, out, isa.name());
            }
        }
    }

    #[test]
    fn a_token_gets_the_same_bits_alone_and_inside_any_chunk() {
        // 40 prompt tokens evaluated as one chunk, then as chunks of 7 and of 1 (each over the rows cached
        // so far and its own, with hidden rows past them as a graph's padding gives): token by token the
        // same bits.
        let (total, hd) = (40usize, 64usize);
        let ld = hd;
        let q: Vec<f32> = values(total * hd, 31).iter().map(|x| x * 6.0).collect();
        let k = bits(&values((total + 8) * ld, 32));
        let v = bits(&values((total + 8) * ld, 33));
        for isa in Isa::all_here() {
            let c = |n_kv| Cache {
                k: &k,
                v: &v,
                ld,
                n_kv,
                hd,
            };
            let whole = run(isa, &q, hd, total, &c(total + 8), &causal(0, total, total + 8), 0.125);
            for size in [7usize, 1] {
                for start in (0..total).step_by(size) {
                    let n = size.min(total - start);
                    let n_kv = start + n + 5; // hidden padding rows
                    let part = run(isa, &q[start * hd..], hd, n, &c(n_kv), &causal(start, n, n_kv), 0.125);
                    assert!(
                        part.iter()
                            .zip(&whole[start * hd..(start + n) * hd])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{}: chunk of {size} at {start} differs from the whole prompt",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn a_token_that_sees_nothing_gets_zeros() {
        let hd = 16;
        let q = values(3 * hd, 41);
        let k = bits(&values(4 * hd, 42));
        let v = bits(&values(4 * hd, 43));
        let mut mask = causal(1, 3, 4);
        mask[4..8].fill(f16::NEG_INFINITY.to_bits()); // token 1 sees nothing
        let c = Cache {
            k: &k,
            v: &v,
            ld: hd,
            n_kv: 4,
            hd,
        };
        for isa in Isa::all_here() {
            let out = run(isa, &q, hd, 3, &c, &mask, 0.25);
            assert!(out[hd..2 * hd].iter().all(|&x| x == 0.0), "{}", isa.name());
            assert!(out.iter().all(|x| x.is_finite()), "{}", isa.name());
        }
    }
}
