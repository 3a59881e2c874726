//! An int8 matrix product for the large products (the ViT's 1025-token sequences, prefill): weights
//! quantized once at load to int8 with one scale per output and group of 128 inputs, activations
//! quantized at the start of each product with one scale per token and group, int32 accumulation within
//! a group, f32 across groups.
//!
//! Why our own: ggml 0.26's CPU products run at 150-240 GFLOP/s on this machine's 2 cores (q8_0 148, f32
//! 243, repacked q4_0 223) while an int8 GEMM on AVX-512 VNNI (`vpdpbusd`, 64 multiply-adds per
//! instruction) runs at ~1,200 GOP/s in PyTorch's `torch._int_mm` (docs/benchmarks.md, "one matrix
//! product"). Why groups: with one scale per row (LLM.int8() without its outlier columns) the full
//! model's vision output came out at cosine 0.99949 to the f32 reference, about twice q8_0's error
//! (0.99974); with groups of 128 it is 0.99971, for ~14% more time (the f32 rescaling per group).
//!
//! Layouts (both chosen so that the inner loop reads one pointer each):
//! - weights: panels of `NR` = 32 outputs; in a panel, for every 4 inputs, 32 x 4 int8 (two 64-byte
//!   vectors, one `vpdpbusd` operand each); `n` padded to 32 and `k` to 4 with zeros; per panel, group
//!   and output a scale and 128 x the group's sum (what the activations' offset adds).
//! - activations: blocks of `MR` = 12 tokens; in a block, for every 4 inputs, 12 x 4 bytes (one 32-bit
//!   broadcast per token); values stored as `q + 128` (unsigned, what `vpdpbusd` multiplies); after the
//!   blocks, per block, group and token one f32 scale.
//!
//! The AVX-512 VNNI kernel (`avx512`), the AVX2 one (`avx2`: `vpmaddubsw` + `vpmaddwd` on signed values,
//! see its note on saturation) and the portable one here compute the same integers and the same float
//! epilogue in the same order, so their outputs are bit-identical.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::Isa;

use std::ops::Range;

/// Outputs per weight panel (two 16-lane int32 vectors).
pub const NR: usize = 32;
/// Tokens per activation block (the AVX-512 tile computes it in two register sub-tiles of 6 tokens x 32
/// outputs, 12 accumulators each: `avx512::RT`).
pub const MR: usize = 12;
/// Inputs per quantization group: one scale per group of 128 inputs for the weights (per output) and
/// the activations (per token), so that one large value costs precision within its group only. A
/// multiple of 16 (one vector of f32 in the quantizer).
pub const GROUP: usize = 128;
/// Token blocks that share one pass over the weights (12 x 10 tokens x up to 4096 inputs stay in L2).
const MC_BLOCKS: usize = 10;

/// Bytes on a 64-byte boundary, without unsafe: a vector 63 bytes longer and the offset of its first
/// aligned byte (vectors then never straddle a cache line).
pub(crate) struct AlignedBytes {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBytes {
    pub(crate) fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + 63];
        let off = buf.as_ptr().align_offset(64).min(63);
        AlignedBytes { buf, off, len }
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// A weight matrix `[n outputs][k inputs]` in int8 panels.
pub struct PackedWeights {
    /// The kernels that multiply by it (`Avx512Vnni`: the VNNI ones; `Avx2`: `vpmaddubsw` ones; `Portable`:
    /// the plain ones; all the same bits).
    isa: Isa,
    n: usize,
    k: usize,
    data: AlignedBytes,
    /// Per panel, group and output (`[panels][groups][NR]`): the group's scale (max |w| / 127; 0 for an
    /// all-zero group).
    scale: Vec<f32>,
    /// Same layout: 128 x the group's int8 sum, what the unsigned activations' offset adds.
    corr: Vec<i32>,
}

impl PackedWeights {
    /// Quantizes and packs `w`, row-major `[n][k]` f32 (ggml's layout of a weight: `ne0 = k`), for the
    /// kernels of `isa` (one this CPU runs: `Kernels::resolve` gives it).
    pub fn pack(w: &[f32], n: usize, k: usize, isa: Isa) -> Self {
        assert_eq!(w.len(), n * k, "int8 pack: {n} x {k} weight has {} values", w.len());
        assert!(isa.runs_here(), "int8 pack: {isa:?} kernels on a CPU without them");
        let (k4, panels, groups) = (k.div_ceil(4), n.div_ceil(NR), groups(k));
        let mut data = AlignedBytes::zeroed(panels * k4 * NR * 4);
        let mut scale = vec![0f32; panels * groups * NR];
        let mut corr = vec![0i32; panels * groups * NR];
        let bytes = data.as_mut_slice();
        for (row, vals) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let (p, lane) = (row / NR, row % NR);
            for (g, gv) in vals.chunks(GROUP).enumerate() {
                let amax = gv.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = amax / 127.0;
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                let mut sum = 0i32;
                for (j, &v) in gv.iter().enumerate() {
                    let i = g * GROUP + j;
                    let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                    sum += i32::from(q);
                    bytes[((p * k4 + i / 4) * NR + lane) * 4 + i % 4] = q as u8;
                }
                scale[(p * groups + g) * NR + lane] = s;
                corr[(p * groups + g) * NR + lane] = 128 * sum;
            }
        }
        PackedWeights {
            isa,
            n,
            k,
            data,
            scale,
            corr,
        }
    }

    /// The instruction set of the kernels that multiply by it.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.data.len + self.scale.len() * 4 + self.corr.len() * 4
    }
    fn k4(&self) -> usize {
        self.k.div_ceil(4)
    }
}

/// Groups of `GROUP` inputs in a row of `k` (the last may be short).
fn groups(k: usize) -> usize {
    k.div_ceil(GROUP).max(1)
}

/// Bytes of one token block's quantized values (`MR` tokens x `k` rounded up to 4).
pub fn block_bytes(k: usize) -> usize {
    MR * k.div_ceil(4) * 4
}

/// Bytes of one token block's scales (`MR` tokens x groups, f32).
fn block_scale_bytes(k: usize) -> usize {
    MR * groups(k) * 4
}

/// Bytes of the quantized activations of `t` tokens of `k` inputs (blocks, then the scales).
pub fn acts_bytes(t: usize, k: usize) -> usize {
    t.div_ceil(MR) * (block_bytes(k) + block_scale_bytes(k))
}

/// Token blocks of `t` tokens.
pub fn token_blocks(t: usize) -> usize {
    t.div_ceil(MR)
}

/// Quantizes token block `block` (tokens `block * MR ..`, the last block may be short: its missing tokens
/// get scale 0) of `x` (`t` rows of `k` f32, row `i` at `x[i * ldx..]`) into `data` (the block's
/// `block_bytes(k)`) and `scales` (its `[groups][MR]` scales).
#[allow(clippy::too_many_arguments)]
pub fn quantize_block(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    t: usize,
    k: usize,
    block: usize,
    data: &mut [u8],
    scales: &mut [f32],
) {
    let (k4, ng) = (k.div_ceil(4), groups(k));
    assert!(
        data.len() == k4 * MR * 4 && scales.len() == ng * MR,
        "int8 quantize: block buffer size"
    );
    let mut invs = vec![0f32; ng];
    for r in 0..MR {
        let tok = block * MR + r;
        if tok >= t {
            for g in 0..ng {
                scales[g * MR + r] = 0.0;
            }
            for g in 0..k4 {
                data[(g * MR + r) * 4..][..4].fill(128);
            }
            continue;
        }
        let row = &x[tok * ldx..tok * ldx + k];
        for (g, gv) in row.chunks(GROUP).enumerate() {
            let amax = gv.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = amax / 127.0;
            scales[g * MR + r] = s;
            invs[g] = if s > 0.0 { 1.0 / s } else { 0.0 };
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            avx512::quantize_row(row, &invs, r, data);
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if isa.base() == Isa::Avx2 {
            avx2::quantize_row(row, &invs, r, data);
            continue;
        }
        quantize_row(row, &invs, r, data);
    }
}

/// One token's values into its 4-byte slots of a block: `round_ties_even(v / s) + 128` with the scale
/// of the value's group (the rounding of the vector instructions, so both paths give the same bytes),
/// inputs past `k` as 0 (byte 128).
fn quantize_row(row: &[f32], invs: &[f32], r: usize, data: &mut [u8]) {
    quantize_row_tail(row, 0, invs, r, data);
}

/// `quantize_row` from value `from` (a multiple of 4) on.
fn quantize_row_tail(row: &[f32], from: usize, invs: &[f32], r: usize, data: &mut [u8]) {
    for g in from / 4..row.len().div_ceil(4) {
        let dst = &mut data[(g * MR + r) * 4..][..4];
        for (j, d) in dst.iter_mut().enumerate() {
            let i = g * 4 + j;
            *d = match row.get(i) {
                Some(&v) => quantize_value(v, invs[i / GROUP]),
                None => 128,
            };
        }
    }
}

fn quantize_value(v: f32, inv: f32) -> u8 {
    ((v * inv).round_ties_even().clamp(-127.0, 127.0) as i32 + 128) as u8
}

/// Quantizes the token blocks `blocks` of `x` (`t` rows of `k` f32, row `i` at `x[i * ldx..]`): `data`
/// is those blocks' part of the block area (`blocks.len() * block_bytes(k)`), `scales` their part of
/// the scale area (`blocks.len()` x the block's scale bytes, little-endian f32). Threads quantize
/// disjoint ranges. `isa`: the kernels that run (those of the weights the activations meet).
#[allow(clippy::too_many_arguments)]
pub fn quantize_blocks(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    t: usize,
    k: usize,
    blocks: Range<usize>,
    data: &mut [u8],
    scales: &mut [u8],
) {
    let (per, sper) = (block_bytes(k), block_scale_bytes(k));
    assert!(
        data.len() == blocks.len() * per && scales.len() == blocks.len() * sper,
        "int8 quantize: buffer sizes"
    );
    let mut sc = vec![0f32; MR * groups(k)];
    for (i, b) in blocks.enumerate() {
        quantize_block(isa, x, ldx, t, k, b, &mut data[i * per..(i + 1) * per], &mut sc);
        for (j, s) in sc.iter().enumerate() {
            scales[i * sper + j * 4..][..4].copy_from_slice(&s.to_le_bytes());
        }
    }
}

/// Where the scale area of a quantized-activation buffer starts.
pub fn scales_at(t: usize, k: usize) -> usize {
    t.div_ceil(MR) * block_bytes(k)
}

/// Bytes of one token block's scales, as laid out in the scale area.
pub fn scale_bytes_per_block(k: usize) -> usize {
    block_scale_bytes(k)
}

/// Reads the scales of a quantized-activation buffer (`[blocks][groups][MR]`).
fn read_scales(acts: &[u8], t: usize, k: usize) -> Vec<f32> {
    let at = scales_at(t, k);
    acts[at..at + t.div_ceil(MR) * block_scale_bytes(k)]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Quantizes `t` rows of `x` (row stride `ldx`) into `acts` (`acts_bytes(t, k)` long), one thread.
pub fn quantize(isa: Isa, x: &[f32], ldx: usize, t: usize, k: usize, acts: &mut [u8]) {
    assert_eq!(acts.len(), acts_bytes(t, k), "int8 quantize: activation buffer size");
    let (data, scales) = acts.split_at_mut(scales_at(t, k));
    quantize_blocks(isa, x, ldx, t, k, 0..token_blocks(t), data, scales);
}

/// `out[i][j] = sum_k x[i][k] w[j][k] (+ bias[j])` for the tokens of token blocks `blocks`, from the
/// quantized activations of all `t` tokens; `out` holds those blocks' rows only (the first row is token
/// `blocks.start * MR`), `ldo` apart, `w.n()` used of each.
pub fn gemm(
    acts: &[u8],
    t: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    blocks: Range<usize>,
    out: &mut [f32],
    ldo: usize,
) {
    let (k4, ng) = (w.k4(), groups(w.k));
    let per = block_bytes(w.k);
    assert_eq!(acts.len(), acts_bytes(t, w.k), "int8 gemm: activation buffer size");
    assert!(blocks.end <= t.div_ceil(MR), "int8 gemm: block range");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n, "int8 gemm: bias length");
    }
    let rows = (blocks.end * MR).min(t) - (blocks.start * MR).min(t);
    if rows == 0 {
        return; // a thread with no block (more threads than blocks)
    }
    assert!(
        ldo >= w.n && out.len() >= (rows - 1) * ldo + w.n,
        "int8 gemm: output size"
    );
    let scales = read_scales(acts, t, w.k);
    let panels = w.n.div_ceil(NR);
    let wdata = w.data.as_slice();
    let mut sb = blocks.start;
    while sb < blocks.end {
        let se = (sb + MC_BLOCKS).min(blocks.end);
        for p in 0..panels {
            let panel = Panel {
                data: &wdata[p * k4 * NR * 4..(p + 1) * k4 * NR * 4],
                scale: &w.scale[p * ng * NR..(p + 1) * ng * NR],
                corr: &w.corr[p * ng * NR..(p + 1) * ng * NR],
            };
            for b in sb..se {
                let a = Block {
                    data: &acts[b * per..(b + 1) * per],
                    scale: &scales[b * ng * MR..(b + 1) * ng * MR],
                };
                let mut acc = [[0f32; NR]; MR];
                tile(w.isa, &a, &panel, k4, &mut acc);
                let n0 = p * NR;
                let nn = NR.min(w.n - n0);
                for (r, acc_r) in acc.iter().enumerate() {
                    let tok = b * MR + r;
                    if tok >= t {
                        break;
                    }
                    let o = &mut out[(tok - blocks.start * MR) * ldo + n0..][..nn];
                    match bias {
                        Some(bias) => {
                            for ((o, a), b) in o.iter_mut().zip(acc_r).zip(&bias[n0..n0 + nn]) {
                                *o = a + b;
                            }
                        }
                        None => o.copy_from_slice(&acc_r[..nn]),
                    }
                }
            }
        }
        sb = se;
    }
}

/// One token block's quantized values and scales (`[groups][MR]`).
struct Block<'a> {
    data: &'a [u8],
    scale: &'a [f32],
}

/// One weight panel's values, scales and offset corrections (`[groups][NR]`).
struct Panel<'a> {
    data: &'a [u8],
    scale: &'a [f32],
    corr: &'a [i32],
}

/// One block of `MR` tokens times one panel of `NR` outputs: per group of inputs, the int32 sums of
/// (q + 128) x w, less the offset's share, times both scales, summed in f32 over the groups.
fn tile(isa: Isa, a: &Block, w: &Panel, k4: usize, acc: &mut [[f32; NR]; MR]) {
    let ng = k4.div_ceil(GROUP / 4);
    assert!(
        a.data.len() >= k4 * MR * 4 && w.data.len() >= k4 * NR * 4,
        "int8 tile: short operands"
    );
    assert!(
        a.scale.len() >= ng * MR && w.scale.len() >= ng * NR && w.corr.len() >= ng * NR,
        "int8 tile: short scales"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        avx512::tile(a.data, a.scale, w.data, w.scale, w.corr, k4, acc);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.base() == Isa::Avx2 {
        avx2::tile(a.data, a.scale, w.data, w.scale, k4, acc);
        return;
    }
    tile_portable(a, w, k4, acc);
}

fn tile_portable(a: &Block, w: &Panel, k4: usize, acc: &mut [[f32; NR]; MR]) {
    *acc = [[0.0; NR]; MR];
    for g in 0..k4.div_ceil(GROUP / 4) {
        let mut sums = [[0i32; NR]; MR];
        for kk in g * GROUP / 4..((g + 1) * GROUP / 4).min(k4) {
            let wg = &w.data[kk * NR * 4..(kk + 1) * NR * 4];
            let ag = &a.data[kk * MR * 4..(kk + 1) * MR * 4];
            for (r, sums_r) in sums.iter_mut().enumerate() {
                let av = &ag[r * 4..r * 4 + 4];
                for (j, s) in sums_r.iter_mut().enumerate() {
                    let wv = &wg[j * 4..j * 4 + 4];
                    *s += (0..4).map(|i| i32::from(av[i]) * i32::from(wv[i] as i8)).sum::<i32>();
                }
            }
        }
        for (r, (acc_r, sums_r)) in acc.iter_mut().zip(&sums).enumerate() {
            let sa = a.scale[g * MR + r];
            for (j, (o, s)) in acc_r.iter_mut().zip(sums_r).enumerate() {
                *o += (s - w.corr[g * NR + j]) as f32 * (w.scale[g * NR + j] * sa);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    fn product(isa: Isa, t: usize, k: usize, n: usize, with_bias: bool) -> (Vec<f32>, Vec<f32>) {
        let x = values(t * k, 1);
        let w = values(n * k, 2);
        let bias = with_bias.then(|| values(n, 3));
        let pw = PackedWeights::pack(&w, n, k, isa);
        let mut acts = vec![0u8; acts_bytes(t, k)];
        quantize(isa, &x, k, t, k, &mut acts);
        let mut out = vec![f32::NAN; t * n];
        gemm(&acts, t, &pw, bias.as_deref(), 0..token_blocks(t), &mut out, n);
        let mut want = vec![0f32; t * n];
        for i in 0..t {
            for j in 0..n {
                let d: f64 = (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c])).sum();
                want[i * n + j] = d as f32 + bias.as_ref().map_or(0.0, |b| b[j]);
            }
        }
        (out, want)
    }

    /// On every instruction set this CPU runs: the same assertions, and the portable kernels' bits.
    #[test]
    fn matches_the_f32_product_within_int8_error() {
        // Odd sizes: a short last token block, a short last panel, k not a multiple of 4.
        for isa in Isa::all_here() {
            eprintln!("int8 product: {} kernels", isa.name());
            for &(t, k, n, b) in &[
                (1, 4, 1, false),
                (13, 70, 33, true),
                (25, 257, 64, true),
                (40, 1024, 96, false),
            ] {
                let (out, want) = product(isa, t, k, n, b);
                let (portable, _) = product(Isa::Portable, t, k, n, b);
                let same = out.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{t}x{k}x{n}: {isa:?} differs from the portable kernels");
                check_error(t, k, n, &out, &want);
            }
        }
    }

    fn check_error(t: usize, k: usize, n: usize, out: &[f32], want: &[f32]) {
        let (mut err, mut norm) = (0f64, 0f64);
        for (o, w) in out.iter().zip(want) {
            assert!(o.is_finite(), "{t}x{k}x{n}: non-finite output");
            err += f64::from(o - w).powi(2);
            norm += f64::from(*w).powi(2);
        }
        let rel = (err / norm).sqrt();
        // Uniform values: each side's rounding error is ~1/(127 sqrt 3) of its scale, ~0.5% relative.
        assert!(rel < 0.02, "{t}x{k}x{n}: relative error {rel}");
    }

    /// The vector kernels of every instruction set this CPU runs against the portable ones: same bytes,
    /// same sums (odd sizes: k not a multiple of 16 or 4 exercises the tails). On AVX2 the weights include
    /// -127 and 127 next to activations at -127 and 127 (the largest pairs `vpmaddubsw` sums, where it
    /// would saturate without the sign trick).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_kernels_give_the_portable_kernels_bits() {
        // The AVX-VNNI sets run the AVX2 kernels here (`Isa::base`).
        for isa in Isa::bases_here().into_iter().filter(|&i| i != Isa::Portable) {
            eprintln!("int8 bits: {} kernels", isa.name());
            vector_kernels_give_the_portable_kernels_bits(isa);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn vector_kernels_give_the_portable_kernels_bits(isa: Isa) {
        let quantize_row_isa = |row: &[f32], invs: &[f32], r: usize, data: &mut [u8]| match isa {
            Isa::Avx512Vnni => avx512::quantize_row(row, invs, r, data),
            Isa::Avx2 => avx2::quantize_row(row, invs, r, data),
            Isa::Portable | Isa::AvxVnni | Isa::AvxVnniEvex => unreachable!("not among the sets tested here"),
        };
        let (t, k, n) = (30, 203 + GROUP, 70); // two groups, the second short
        let mut x = values(t * k, 5);
        let mut w = values(n * k, 6);
        if isa == Isa::Avx2 {
            // Extremes: a row of +-max against rows of +-max, all sign combinations.
            for (i, v) in x[..2 * k].iter_mut().enumerate() {
                *v = if (i / 2) % 2 == 0 { 1.5 } else { -1.5 };
            }
            for (i, v) in w[..3 * k].iter_mut().enumerate() {
                *v = match i / k {
                    0 => 1.0,
                    1 => -1.0,
                    _ => {
                        if i % 3 == 0 {
                            0.0
                        } else if i % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                };
            }
        }
        let pw = PackedWeights::pack(&w, n, k, isa);
        let k4 = pw.k4();
        let invs = vec![127.0 / 1.5, 127.0 / 0.7, 127.0 / 1.1];
        for row in x.chunks_exact(k) {
            let (mut a, mut b) = (vec![0u8; k4 * MR * 4], vec![0u8; k4 * MR * 4]);
            quantize_row_isa(row, &invs, 5, &mut a);
            quantize_row(row, &invs, 5, &mut b);
            assert_eq!(a, b);
        }
        // Rounding ties (2.5, -2.5, 1.5 at inv 2) go to even on both paths.
        let mut row = vec![0.1f32; 20];
        row[..3].copy_from_slice(&[1.25, -1.25, 0.75]);
        let (mut a, mut b) = (vec![0u8; 5 * MR * 4], vec![0u8; 5 * MR * 4]);
        quantize_row_isa(&row, &[2.0], 0, &mut a);
        quantize_row(&row, &[2.0], 0, &mut b);
        assert_eq!((a[..3].to_vec(), a), (vec![130, 126, 130], b));
        let mut acts = vec![0u8; acts_bytes(t, k)];
        quantize(isa, &x, k, t, k, &mut acts);
        if isa == Isa::Avx2 {
            assert!(
                acts[..8].iter().all(|&b| b == 1 || b == 255),
                "the extreme row quantizes to +-127"
            );
        }
        let (per, ng) = (block_bytes(k), groups(k));
        let scales = read_scales(&acts, t, k);
        for b in 0..token_blocks(t) {
            for p in 0..n.div_ceil(NR) {
                let a = Block {
                    data: &acts[b * per..(b + 1) * per],
                    scale: &scales[b * ng * MR..(b + 1) * ng * MR],
                };
                let w = Panel {
                    data: &pw.data.as_slice()[p * k4 * NR * 4..][..k4 * NR * 4],
                    scale: &pw.scale[p * ng * NR..(p + 1) * ng * NR],
                    corr: &pw.corr[p * ng * NR..(p + 1) * ng * NR],
                };
                let (mut fast, mut portable) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
                match isa {
                    Isa::Avx512Vnni => avx512::tile(a.data, a.scale, w.data, w.scale, w.corr, k4, &mut fast),
                    Isa::Avx2 => avx2::tile(a.data, a.scale, w.data, w.scale, k4, &mut fast),
                    Isa::Portable | Isa::AvxVnni | Isa::AvxVnniEvex => {
                        unreachable!("not among the sets tested here")
                    }
                }
                tile_portable(&a, &w, k4, &mut portable);
                if isa == Isa::Avx2 {
                    let bits = |t: &[[f32; NR]; MR]| t.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&portable), "block {b} panel {p}");
                } else {
                    assert_eq!(fast, portable, "block {b} panel {p}");
                }
            }
        }
    }

    #[test]
    fn a_split_over_token_blocks_gives_the_same_rows() {
        let (t, k, n) = (50, 64, 40);
        let x = values(t * k, 7);
        let w = values(n * k, 8);
        let pw = PackedWeights::pack(&w, n, k, Isa::Portable);
        let mut acts = vec![0u8; acts_bytes(t, k)];
        quantize(Isa::Portable, &x, k, t, k, &mut acts);
        let mut whole = vec![0f32; t * n];
        gemm(&acts, t, &pw, None, 0..token_blocks(t), &mut whole, n);
        let mid = 2;
        let mut second = vec![0f32; (t - mid * MR) * n];
        gemm(&acts, t, &pw, None, mid..token_blocks(t), &mut second, n);
        assert_eq!(&whole[mid * MR * n..], &second[..]);
        // A thread without a block (more threads than blocks) does nothing.
        gemm(&acts, t, &pw, None, 2..2, &mut [], n);
    }

    #[test]
    fn zero_rows_and_tokens_give_zero() {
        let (t, k, n) = (3, 8, 2);
        let pw = PackedWeights::pack(&vec![0.0; n * k], n, k, Isa::Portable);
        let mut acts = vec![0u8; acts_bytes(t, k)];
        quantize(Isa::Portable, &vec![0.0; t * k], k, t, k, &mut acts);
        let mut out = vec![1f32; t * n];
        gemm(&acts, t, &pw, None, 0..1, &mut out, n);
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
