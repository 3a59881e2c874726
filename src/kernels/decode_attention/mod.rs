//! The language model's attention for one new token over an f16 KV cache (decoding): for each query head,
//! `softmax(scale q kᵀ + mask) v` over the cached rows, the rows of one KV head read once for all the query
//! heads that share it (GQA: Qwen2-0.5B has 14 query heads over 2 KV heads).
//!
//! Why our own: ggml's CPU flash attention handles a one-row query one query head and one cache row at a
//! time (a 64-long f16 dot product, a scalar online-softmax step, a 64-long f16 multiply-add), so with
//! 3.4k cached rows (a 13-tile image in the context) it takes ~16 ms per token on 2 AVX2 threads, as
//! long as reading all the weights. Here a chunk of `CHUNK` rows of one KV head is converted to f32 once
//! and every query head of the group runs its scores, its softmax step and its weighted sum over the
//! chunk in L1, with vectorizable loops.
//!
//! Numerics: the reference computes attention in f32; so does this kernel, on the cache's f16 values
//! (ggml's rounds the query to f16 and accumulates the weighted values in f16). The online softmax
//! rescales at each chunk whose maximum is new (as flash attention does), with the ViT attention's
//! exponential (`super::attention::exp_nonpositive`). The portable path and the AVX2 path compute the
//! same fused multiply-adds in the same order (the AVX2 one with intrinsics for the dot products, the
//! weighted sums and the exact f16 -> f32 conversion; `f32::mul_add` in the portable one, a library call
//! where the build target lacks FMA: slow, for testing), so they give the same bits.

#[cfg(target_arch = "x86_64")]
mod avx2;

use half::f16;

use super::attention::{add_halves, exp_nonpositive, sum16};
use super::Isa;

/// Cache rows converted and processed together (two f32 chunks of 64 x 64: 32 KB, in L1 or L2).
pub const CHUNK: usize = 64;

/// Buffers one thread reuses between calls.
#[derive(Default)]
pub struct Scratch {
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
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
        Isa::Avx2 | Isa::Avx512Vnni => avx2::heads(q, kv, scale, out, sc),
        _ => body(&Portable, q, kv, scale, out, sc),
    }
}

/// What `body` does per row and per chunk, by instruction set. Every implementation converts exactly and
/// computes `dot`'s and `weighted_add`'s fused multiply-adds in their order, so only speed differs.
pub(super) trait RowOps {
    /// Asks for a row's cache lines ahead of use (a hint).
    fn prefetch(&self, row: &[u16]);
    /// A row of f16 bits into f32.
    fn convert(&self, src: &[u16], dst: &mut [f32]);
    /// `s[j] = dot(q, k[j * hd..][..hd])` for each `j < s.len()`.
    fn dots(&self, q: &[f32], k: &[f32], hd: usize, s: &mut [f32]);
    /// `acc += Σ_j p[j] v[j * hd..][..hd]`, as `weighted_add`.
    fn weighted(&self, acc: &mut [f32], p: &[f32], v: &[f32], hd: usize);
}

/// Plain Rust.
struct Portable;

impl RowOps for Portable {
    fn prefetch(&self, _row: &[u16]) {}
    fn convert(&self, src: &[u16], dst: &mut [f32]) {
        convert_portable(src, dst)
    }
    fn dots(&self, q: &[f32], k: &[f32], hd: usize, s: &mut [f32]) {
        dots_portable(q, k, hd, s)
    }
    fn weighted(&self, acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
        weighted_add(acc, p, v, hd)
    }
}

/// `s[j] = dot(q, k[j * hd..][..hd])` for each `j < s.len()`, one row after another.
#[inline(always)]
pub(super) fn dots_portable(q: &[f32], k: &[f32], hd: usize, s: &mut [f32]) {
    for (j, s) in s.iter_mut().enumerate() {
        *s = dot(q, &k[j * hd..(j + 1) * hd]);
    }
}

/// f16 bits -> f32, element by element (exact).
pub(super) fn convert_portable(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_bits(s).to_f32();
    }
}

/// `heads` after its checks, with `ops` for the instruction set. Inlined into each caller so that each is
/// compiled for its own instruction set.
#[inline(always)]
pub(super) fn body(ops: &impl RowOps, q: &[f32], kv: &KvRows<'_>, scale: f32, out: &mut [f32], sc: &mut Scratch) {
    let KvRows { k, v, ld, n, mask, hd } = *kv;
    let nq = q.len() / hd;
    sc.k.resize(CHUNK * hd, 0.0);
    sc.v.resize(CHUNK * hd, 0.0);
    sc.s.resize(CHUNK, 0.0);
    sc.m.resize(CHUNK, 0.0);
    sc.acc.clear();
    sc.acc.resize(nq * hd, 0.0);
    sc.max.clear();
    sc.max.resize(nq, f32::NEG_INFINITY);
    sc.sum.clear();
    sc.sum.resize(nq, 0.0);
    // Rows past the last unmasked one (the padding of a decode graph's cache view) are not read.
    let n_valid = mask[..n]
        .iter()
        .rposition(|&b| b != f16::NEG_INFINITY.to_bits())
        .map_or(0, |i| i + 1);
    for j0 in (0..n_valid).step_by(CHUNK) {
        let cn = CHUNK.min(n_valid - j0);
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
            ops.convert(&v[row..row + hd], &mut sc.v[j * hd..(j + 1) * hd]);
        }
        let m = &mut sc.m[..cn];
        for (m, &b) in m.iter_mut().zip(&mask[j0..j0 + cn]) {
            *m = f16::from_bits(b).to_f32_const();
        }
        for h in 0..nq {
            let s = &mut sc.s[..cn];
            ops.dots(&q[h * hd..(h + 1) * hd], &sc.k[..cn * hd], hd, s);
            for (s, &m) in s.iter_mut().zip(m.iter()) {
                *s = if m == f32::NEG_INFINITY { m } else { *s * scale + m };
            }
            let chunk_max = max8(s);
            if chunk_max == f32::NEG_INFINITY {
                continue;
            }
            let old = sc.max[h];
            let new = old.max(chunk_max);
            // exp_nonpositive(-inf) is 0: masked rows and the empty start weigh nothing.
            for s in s.iter_mut() {
                *s = exp_nonpositive(*s - new);
            }
            let acc = &mut sc.acc[h * hd..(h + 1) * hd];
            if new != old {
                let alpha = exp_nonpositive(old - new);
                sc.sum[h] *= alpha;
                for a in acc.iter_mut() {
                    *a *= alpha;
                }
            }
            sc.sum[h] += sum16(s);
            ops.weighted(acc, s, &sc.v[..cn * hd], hd);
            sc.max[h] = new;
        }
    }
    for h in 0..nq {
        let l = sc.sum[h];
        let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
        for (o, a) in out[h * hd..(h + 1) * hd].iter_mut().zip(&sc.acc[h * hd..(h + 1) * hd]) {
            *o = a * inv;
        }
    }
}

/// The largest of `x` (-inf when empty), in 8 lanes so that it vectorizes (the maximum does not depend on
/// the order).
#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = v;
    }
    for c in chunks {
        for i in 0..8 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `a · b` in 8 interleaved partial sums (lane `i` accumulates the products of inputs `i`, `i + 8`, ... in
/// that order by fused multiply-adds; a tail shorter than 8 goes to lanes 0..), combined as
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`: the order of an 8-lane vector reduced by halves,
/// which `avx2::dots` computes four rows at a time.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] = x.mul_add(*y, acc[i]);
    }
    add_halves(acc)
}

/// `acc += Σ_j p[j] v[j]` over the rows `v[j * hd..][..hd]`: each channel a chain of fused multiply-adds,
/// rows in order (`avx2::weighted_add` computes the same), 32 channels at a time held across the rows.
pub(super) fn weighted_add(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    const W: usize = 32;
    let mut c0 = 0;
    while c0 + W <= hd {
        let mut r = [0f32; W];
        r.copy_from_slice(&acc[c0..c0 + W]);
        for (j, &pj) in p.iter().enumerate() {
            let row = &v[j * hd + c0..j * hd + c0 + W];
            for i in 0..W {
                r[i] = pj.mul_add(row[i], r[i]);
            }
        }
        acc[c0..c0 + W].copy_from_slice(&r);
        c0 += W;
    }
    for (c, a) in acc.iter_mut().enumerate().skip(c0) {
        for (j, &pj) in p.iter().enumerate() {
            *a = pj.mul_add(v[j * hd + c], *a);
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
        // ones: rows not a multiple of CHUNK, a head dimension not a multiple of 8 or 32, padding rows.
        for &(nq, hd, n, valid, seed) in &[
            (7usize, 64usize, 1usize, 1usize, 1u64),
            (7, 64, 256, 37, 2),
            (7, 64, 3386, 3386, 3),
            (2, 40, 100, 99, 4),
            (3, 13, 70, 70, 5),
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
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} differs from the portable path",
                        isa.name()
                    ),
                }
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
