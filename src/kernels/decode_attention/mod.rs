//! The language model's attention for one new token over an f16 KV cache (decoding): for each query head,
//! `softmax(scale q kᵀ + mask) v` over the cached rows, the rows of one KV head read once for all the query
//! heads that share it (GQA: Qwen2-0.5B has 14 query heads over 2 KV heads).
//!
//! Why our own: ggml's CPU flash attention handles a one-row query one query head and one cache row at a
//! time (a 64-long f16 dot product, a scalar online-softmax step, a 64-long f16 multiply-add), so with
//! 3.4k cached rows (a 13-tile image in the context) it takes ~16 ms per token on 2 AVX2 threads, as
//! long as reading all the weights. Here a chunk of `CHUNK` rows of one KV head is read once for every
//! query head of the group: its keys converted to f32 once, then the group's heads, `LANES` at a time in
//! the lanes of one vector, run their scores, their softmax step and their weighted sums over the chunk
//! as small register-tiled products (see `body`).
//!
//! Numerics: the reference computes attention in f32; so does this kernel, on the cache's f16 values
//! (ggml's rounds the query to f16 and accumulates the weighted values in f16). The online softmax
//! rescales at each chunk whose maximum is new (as flash attention does), with the ViT attention's
//! exponential (`super::attention::exp_nonpositive`). The portable path and the AVX2 path compute the
//! same fused multiply-adds in the same order (each score and each weighted sum one chain; the AVX2 one
//! with intrinsics for the products and the exact f16 -> f32 conversion; `f32::mul_add` in the portable
//! one, a library call where the build target lacks FMA: slow, for testing), so they give the same bits.

#[cfg(target_arch = "x86_64")]
mod avx2;

use half::f16;

use super::attention::exp_nonpositive;
use super::Isa;

/// Cache rows processed together (their keys converted to f32: 16 KB, in L1).
pub const CHUNK: usize = 64;
/// Query heads whose scores are computed together, one per f32 lane of an AVX2 vector.
pub const LANES: usize = 8;

/// Buffers one thread reuses between calls.
#[derive(Default)]
pub struct Scratch {
    k: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    qt: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// One KV head's cached rows as a decode step reads them: row `j`'s key at `k[j * ld..][..hd]` and value at
/// `v[j * ld..][..hd]` (f16 bits), `mask[j]` (f16 bits, added to the scaled score; -inf skips the row), for
/// `j < n`.
#[derive(Clone, Copy)]
pub struct KvRows<'a> {
    pub k: &'a [u16],
    pub v: &'a [u16],
    pub ld: usize,
    pub n: usize,
    pub mask: &'a [u16],
    pub hd: usize,
}

/// The query heads `q` (`nq` heads of `kv.hd`, contiguous) that share one KV head, over its rows `kv`.
/// Writes `nq * hd` values to `out`, head after head. A head whose rows are all masked gets zeros. `isa`:
/// `Portable` runs plain code, `Avx2` and `Avx512Vnni` the AVX2 + FMA + F16C one (same bits).
pub fn heads(isa: Isa, q: &[f32], kv: &KvRows<'_>, scale: f32, out: &mut [f32], sc: &mut Scratch) {
    let KvRows { k, v, ld, n, mask, hd } = *kv;
    assert!(
        hd > 0 && q.len().is_multiple_of(hd),
        "decode attention: q is not whole heads"
    );
    assert!(
        out.len() == q.len(),
        "decode attention: out {} for q {}",
        out.len(),
        q.len()
    );
    assert!(mask.len() >= n, "decode attention: mask of {} for {n} rows", mask.len());
    if n > 0 {
        assert!(
            ld >= hd,
            "decode attention: row stride {ld} under the head dimension {hd}"
        );
        let need = (n - 1) * ld + hd;
        assert!(k.len() >= need && v.len() >= need, "decode attention: short k/v");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex | Isa::Avx512Vnni => avx2::heads(q, kv, scale, out, sc),
        _ => body(&Portable, q, kv, scale, out, sc),
    }
}

/// f16 bits -> f32 (exact), by `vcvtph2ps` on the vector paths (also `super::prefill_attention`'s).
pub(crate) fn convert(isa: Isa, src: &[u16], dst: &mut [f32]) {
    assert!(
        dst.len() >= src.len(),
        "f16 conversion: {} into {}",
        src.len(),
        dst.len()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex | Isa::Avx512Vnni => avx2::convert_checked(src, dst),
        _ => convert_portable(src, dst),
    }
}

/// What `body` does per chunk, by instruction set. Every implementation converts exactly and computes
/// `scores_portable`'s and `weighted_portable`'s fused multiply-adds in their order, so only speed differs.
pub(super) trait RowOps {
    /// Asks for a row's cache lines ahead of use (a hint).
    fn prefetch(&self, row: &[u16]);
    /// A row of f16 bits into f32.
    fn convert(&self, src: &[u16], dst: &mut [f32]);
    /// `scores_portable`.
    fn scores(&self, qt: &[f32], k: &[f32], hd: usize, rows: usize, s: &mut [f32]);
    /// `weighted_portable`.
    fn weighted(&self, acc: &mut [f32], p: &[f32], v: &[u16], ld: usize, hd: usize, rows: usize);
}

/// Plain Rust.
struct Portable;

impl RowOps for Portable {
    fn prefetch(&self, _row: &[u16]) {}
    fn convert(&self, src: &[u16], dst: &mut [f32]) {
        convert_portable(src, dst)
    }
    fn scores(&self, qt: &[f32], k: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
        scores_portable(qt, k, hd, rows, s)
    }
    fn weighted(&self, acc: &mut [f32], p: &[f32], v: &[u16], ld: usize, hd: usize, rows: usize) {
        weighted_portable(acc, p, v, ld, hd, rows)
    }
}

/// The scores of `rows` cached rows for `LANES` query heads: `s[j * LANES + l] = Σ_c k[j * hd + c] qt[c *
/// LANES + l]`, where `k` holds the rows' keys as f32 and `qt` the heads transposed (channel-major, one head
/// per lane). Each score is one chain of fused multiply-adds over the channels in increasing order from 0.
#[inline(always)]
pub(super) fn scores_portable(qt: &[f32], k: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
    for j in 0..rows {
        let mut a = [0f32; LANES];
        for c in 0..hd {
            let x = k[j * hd + c];
            for (a, &q) in a.iter_mut().zip(&qt[c * LANES..(c + 1) * LANES]) {
                *a = x.mul_add(q, *a);
            }
        }
        s[j * LANES..(j + 1) * LANES].copy_from_slice(&a);
    }
}

/// `acc[h * hd + c] += Σ_j v[j * ld + c] p[j * LANES + h]` over `rows` cached rows (values as f16 bits,
/// converted exactly) for the `acc.len() / hd` heads of a group: each output one chain of fused
/// multiply-adds over the rows in order.
#[inline(always)]
pub(super) fn weighted_portable(acc: &mut [f32], p: &[f32], v: &[u16], ld: usize, hd: usize, rows: usize) {
    weighted_channels(acc, p, v, ld, hd, rows, 0..hd)
}

/// `weighted_portable` for the channels `channels` only (the AVX2 kernel's tail past its last 8).
#[inline(always)]
pub(super) fn weighted_channels(
    acc: &mut [f32],
    p: &[f32],
    v: &[u16],
    ld: usize,
    hd: usize,
    rows: usize,
    channels: std::ops::Range<usize>,
) {
    for (h, acc) in acc.chunks_exact_mut(hd).enumerate() {
        for c in channels.clone() {
            let a = &mut acc[c];
            for j in 0..rows {
                *a = f16::from_bits(v[j * ld + c]).to_f32().mul_add(p[j * LANES + h], *a);
            }
        }
    }
}

/// f16 bits -> f32, element by element (exact).
pub(super) fn convert_portable(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_bits(s).to_f32();
    }
}

/// `heads` after its checks, with `ops` for the instruction set. Inlined into each caller so that each is
/// compiled for its own instruction set (the per-lane loops below vectorize there).
///
/// The query heads go in groups of `LANES`, one head per lane of the scores: the softmax steps (maximum,
/// exponential, rescaling, sums) run across a group's heads as one vector, the scores broadcast each key
/// value against a vector of heads (no horizontal sums), and the weighted sums read each row's values
/// once per 4 heads, converted in registers.
#[inline(always)]
pub(super) fn body(ops: &impl RowOps, q: &[f32], kv: &KvRows<'_>, scale: f32, out: &mut [f32], sc: &mut Scratch) {
    let KvRows { k, v, ld, n, mask, hd } = *kv;
    let nq = q.len() / hd;
    let groups = nq.div_ceil(LANES);
    let width = hd * LANES;
    sc.k.resize(CHUNK * hd, 0.0);
    sc.s.resize(CHUNK * LANES, 0.0);
    sc.m.resize(CHUNK, 0.0);
    // The heads transposed per group, lanes past the last head 0 (their scores are computed and dropped).
    sc.qt.clear();
    sc.qt.resize(groups * width, 0.0);
    for h in 0..nq {
        let (g, l) = (h / LANES, h % LANES);
        for c in 0..hd {
            sc.qt[g * width + c * LANES + l] = q[h * hd + c];
        }
    }
    // Each head's weighted sum, head after head.
    sc.acc.clear();
    sc.acc.resize(nq * hd, 0.0);
    sc.max.clear();
    sc.max.resize(groups * LANES, f32::NEG_INFINITY);
    sc.sum.clear();
    sc.sum.resize(groups * LANES, 0.0);
    // Rows past the last unmasked one (the padding of a decode graph's cache view) are not read.
    let n_valid = mask[..n]
        .iter()
        .rposition(|&b| b != f16::NEG_INFINITY.to_bits())
        .map_or(0, |i| i + 1);
    for j0 in (0..n_valid).step_by(CHUNK) {
        let cn = CHUNK.min(n_valid - j0);
        let m = &mut sc.m[..cn];
        for (m, &b) in m.iter_mut().zip(&mask[j0..j0 + cn]) {
            *m = f16::from_bits(b).to_f32_const();
        }
        // A chunk of masked rows changes nothing (the mask is the same for every head).
        if m.iter().all(|&m| m == f32::NEG_INFINITY) {
            continue;
        }
        for j in 0..cn {
            let row = (j0 + j) * ld;
            // The same row of the next chunk is asked for now: the cache is read from memory once per
            // token, and the hardware's prefetchers do not run far enough ahead of these short rows.
            if j0 + j + CHUNK < n_valid {
                let ahead = row + CHUNK * ld;
                ops.prefetch(&k[ahead..ahead + hd]);
                ops.prefetch(&v[ahead..ahead + hd]);
            }
            ops.convert(&k[row..row + hd], &mut sc.k[j * hd..(j + 1) * hd]);
        }
        for g in 0..groups {
            let s = &mut sc.s[..cn * LANES];
            ops.scores(&sc.qt[g * width..(g + 1) * width], &sc.k[..cn * hd], hd, cn, s);
            // Scaled and masked, then the chunk's maximum per head (`>`, not `f32::max`, whose NaN rule
            // keeps the loop from vectorizing; every path runs this same code).
            let mut chunk_max = [f32::NEG_INFINITY; LANES];
            for (row, &m) in s.chunks_exact_mut(LANES).zip(sc.m[..cn].iter()) {
                if m == f32::NEG_INFINITY {
                    row.fill(m);
                    continue;
                }
                for (x, cm) in row.iter_mut().zip(chunk_max.iter_mut()) {
                    *x = *x * scale + m;
                    *cm = if *x > *cm { *x } else { *cm };
                }
            }
            let old: [f32; LANES] = std::array::from_fn(|l| sc.max[g * LANES + l]);
            let new: [f32; LANES] = std::array::from_fn(|l| if chunk_max[l] > old[l] { chunk_max[l] } else { old[l] });
            // exp_nonpositive(0) is 1 exactly, so a head whose maximum stays keeps its sums bit for bit;
            // from the empty start (-inf) the factor is 0 on sums that are 0.
            let alpha: [f32; LANES] = std::array::from_fn(|l| {
                if new[l] != old[l] {
                    exp_nonpositive(old[l] - new[l])
                } else {
                    1.0
                }
            });
            // exp_nonpositive(-inf) is 0: masked rows weigh nothing. The chunk's sum per head in 4
            // interleaved partial sums (rows j, j + 4, ...), then (0 + 1) + (2 + 3).
            let mut part = [[0f32; LANES]; 4];
            for (j, row) in s.chunks_exact_mut(LANES).enumerate() {
                let part = &mut part[j % 4];
                for ((x, &nw), p) in row.iter_mut().zip(&new).zip(part.iter_mut()) {
                    *x = exp_nonpositive(*x - nw);
                    *p += *x;
                }
            }
            for l in 0..LANES {
                let chunk_sum = (part[0][l] + part[1][l]) + (part[2][l] + part[3][l]);
                let sum = &mut sc.sum[g * LANES + l];
                *sum = *sum * alpha[l] + chunk_sum;
                sc.max[g * LANES + l] = new[l];
            }
            let heads = LANES.min(nq - g * LANES);
            let acc = &mut sc.acc[g * LANES * hd..(g * LANES + heads) * hd];
            if alpha.iter().any(|&a| a != 1.0) {
                for (a, &f) in acc.chunks_exact_mut(hd).zip(&alpha) {
                    for a in a.iter_mut() {
                        *a *= f;
                    }
                }
            }
            ops.weighted(acc, s, &v[j0 * ld..], ld, hd, cn);
        }
    }
    for h in 0..nq {
        let total = sc.sum[h];
        let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
        for (o, a) in out[h * hd..(h + 1) * hd].iter_mut().zip(&sc.acc[h * hd..(h + 1) * hd]) {
            *o = a * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        crate::test_values::values(n, seed)
    }

    fn bits(x: &[f32]) -> Vec<u16> {
        x.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
    }

    /// The textbook computation in f64 on the same f16 values, over the first `valid` rows.
    fn reference(q: &[f32], kv: &KvRows<'_>, valid: usize, scale: f32) -> Vec<f32> {
        let KvRows { k, v, ld, mask, hd, .. } = *kv;
        let n = valid;
        let nq = q.len() / hd;
        let f = |b: u16| f16::from_bits(b).to_f32() as f64;
        let mut out = vec![0f32; q.len()];
        for h in 0..nq {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let d: f64 = (0..hd).map(|c| q[h * hd + c] as f64 * f(k[j * ld + c])).sum();
                    d * scale as f64 + f(mask[j])
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = p.iter().sum();
            for c in 0..hd {
                let a: f64 = (0..n).map(|j| p[j] * f(v[j * ld + c])).sum();
                out[h * hd + c] = (a / l) as f32;
            }
        }
        out
    }

    /// A causal decode mask over `n` rows of which the first `valid` are cached.
    fn mask(n: usize, valid: usize) -> Vec<u16> {
        (0..n)
            .map(|j| if j < valid { 0.0 } else { f32::NEG_INFINITY })
            .map(|x| f16::from_f32(x).to_bits())
            .collect()
    }

    #[test]
    fn every_path_matches_the_f64_reference_and_the_paths_agree_bit_for_bit() {
        // Qwen2-0.5B's shape (7 query heads per KV head, hd 64, 2 KV heads interleaved in a row) and odd
        // ones: rows not a multiple of CHUNK or of 8, head dimensions not a multiple of 8 or of 16,
        // padding rows, more query heads than LANES.
        for &(nq, hd, n, valid, seed) in &[
            (7usize, 64usize, 1usize, 1usize, 1u64),
            (7, 64, 256, 37, 2),
            (7, 64, 3386, 3386, 3),
            (2, 40, 100, 99, 4),
            (3, 13, 70, 70, 5),
            // More heads than lanes: two groups, the second partial.
            (14, 64, 300, 290, 6),
        ] {
            let ld = 2 * hd;
            // Large scores (scale 1, values up to ~8) exercise the online rescaling.
            let q: Vec<f32> = noise(seed, nq * hd).iter().map(|x| x * 8.0).collect();
            let k = bits(&noise(seed + 100, n * ld));
            let v = bits(&noise(seed + 200, n * ld));
            let m = mask(n, valid);
            let scale = if seed % 2 == 0 { 1.0 } else { 1.0 / (hd as f32).sqrt() };
            let kv = KvRows {
                k: &k,
                v: &v,
                ld,
                n,
                mask: &m,
                hd,
            };
            let want = reference(&q, &kv, valid, scale);
            let mut first: Option<Vec<f32>> = None;
            for isa in Isa::all_here() {
                let mut out = vec![f32::NAN; nq * hd];
                heads(isa, &q, &kv, scale, &mut out, &mut Scratch::default());
                let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                eprintln!(
                    "{} nq {nq} hd {hd} n {n} valid {valid}: max abs err {err:e}",
                    isa.name()
                );
                assert!(err < 2e-5, "{}: max abs error {err} against f64", isa.name());
                crate::test_values::same_bits_as_first(&mut first, out, isa.name());
            }
        }
    }

    #[test]
    fn masked_rows_are_skipped_and_an_all_masked_head_gives_zeros() {
        let (hd, n) = (16, 40);
        let q = noise(7, 2 * hd);
        let k = bits(&noise(8, n * hd));
        let v = bits(&noise(9, n * hd));
        // Rows 3 and 10..40 masked: the same as 10 rows without row 3.
        let mut m = mask(n, 10);
        m[3] = f16::NEG_INFINITY.to_bits();
        let kv = KvRows {
            k: &k,
            v: &v,
            ld: hd,
            n,
            mask: &m,
            hd,
        };
        let want = reference(&q, &kv, 10, 0.25);
        let none = mask(n, 0);
        for isa in Isa::all_here() {
            let mut out = vec![0f32; 2 * hd];
            heads(isa, &q, &kv, 0.25, &mut out, &mut Scratch::default());
            let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 2e-6, "{}: {err}", isa.name());
            let mut out = vec![1f32; 2 * hd];
            let masked = KvRows { mask: &none, ..kv };
            heads(isa, &q, &masked, 0.25, &mut out, &mut Scratch::default());
            assert!(out.iter().all(|&x| x == 0.0), "{}: all masked gives zeros", isa.name());
        }
    }
}
