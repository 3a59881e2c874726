//! Matrix products for q4_0 and q8_0 weights in our own layout: the file's quantized values and f16
//! scales, rearranged at load (a copy of about the file's size, padded to whole panels; the mapped pages
//! are released, so resident memory stays about the same) so that one
//! 64-byte load is an operand of AVX-512 VNNI's `vpdpbusd` (16 outputs x 4 inputs; for q4_0 twice over,
//! its low and high 4-bit halves). One layout serves both shapes of work:
//! - decoding (1 token): a matrix-vector product that streams the weights once at memory speed; ggml's
//!   own kernels for these types spend more instructions per byte (unpacking, 32-byte lanes) and are
//!   compute bound on this machine's 2 cores (q4_0 decoded at 11.5 GB/s, q8_0 at 14.7).
//! - prefill and the ViT's 1025-token tiles: a 12 token x 32 output tile, like `crate::kernels::int8`'s, without
//!   int8 copies of the weights.
//!
//! The arithmetic is ggml's for these types: activations quantized to int8 with one scale per 32 inputs
//! (q8_0's blocks, f32 scales here where ggml rounds them to f16), integer dot products per block of 32,
//! scaled by both blocks' scales and summed in f32. So a file gives its type's results, with no second
//! rounding of the weights.
//!
//! Layout of `Panels` (`k` a multiple of 32, as both types require): panels of `NR` = 32 outputs (`n`
//! padded with zero-scale outputs); in a panel, per block of 32 inputs, the 32 outputs' f16 scales (64
//! bytes), then the values:
//! - q4_0 (576 bytes a block): four 128-byte chunks, chunk `c` holding inputs `8c..8c+8`: two 64-byte
//!   vectors (outputs 0-15, 16-31), 4 bytes per output, byte `i` = the 4-bit value (`q + 8`, 0..15) of
//!   input `8c + i` in its low half and of input `8c + 4 + i` in its high half;
//! - q8_0 (1088 bytes): eight 128-byte chunks, chunk `c` holding inputs `4c..4c+4` of outputs 0-15, then
//!   16-31, 4 signed bytes per output.
//!
//! Activations (`quantize_blocks`): blocks of `MR` = 12 tokens; in a block, for every 4 inputs, 12 x 4
//! bytes (signed for q4_0, whose 4-bit values are the unsigned operand; for q8_0, whose values are signed,
//! `q + 128` for `vpdpbusd`'s unsigned operand (AVX-512 VNNI, AVX-VNNI) and `q` itself for the other kernels,
//! which multiply signed bytes: `q8_offset`); after all blocks, per block, group and token, the f32 scale and
//! `8 x` the group's int sum (the share of q4_0's `+ 8` offset; the `vpdpbusd` kernels' `+ 128` of q8_0 is
//! taken out per output instead, by a product of the weights with ones).
//!
//! The vector kernels (chosen at run time: `avx512`; `avx2`; `vnni256`, AVX-512's arithmetic on 256-bit
//! registers for AVX-VNNI) compute the same integers and the same float steps in the same order as the
//! portable ones here, so the outputs are bit-identical for finite inputs
//! (NaN activations give finite but unspecified values), and a token's row is the same whether it went
//! through the matrix-vector or the tile kernel.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod vnni256;

use super::Isa;

use std::ops::Range;

use half::f16;

/// Outputs per panel.
pub const NR: usize = 32;
/// Tokens per activation block and tile.
pub const MR: usize = 12;
/// Inputs per block (both types').
pub const QK: usize = 32;
/// Bytes of one q4_0 block in a GGUF file: an f16 scale, 16 bytes of two 4-bit values.
const Q4_0_BLOCK: usize = 2 + QK / 2;
/// Bytes of one q8_0 block in a GGUF file: an f16 scale, 32 signed bytes.
const Q8_0_BLOCK: usize = 2 + QK;

/// The file type a `Panels` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelType {
    Q4_0,
    Q8_0,
}

impl PanelType {
    /// Bytes per panel and block of inputs: 32 f16 scales and 32 x 32 values.
    const fn panel_block(self) -> usize {
        match self {
            PanelType::Q4_0 => NR * 2 + NR * QK / 2,
            PanelType::Q8_0 => NR * 2 + NR * QK,
        }
    }
    /// Bytes of one block of the file's type.
    const fn file_block(self) -> usize {
        match self {
            PanelType::Q4_0 => Q4_0_BLOCK,
            PanelType::Q8_0 => Q8_0_BLOCK,
        }
    }
}
/// Token blocks that share one pass over a thread's panels (12 x 10 tokens x up to 4864 inputs stay in
/// L2 next to a panel).
const MC_BLOCKS: usize = 10;
/// Below this many tokens the matrix-vector kernel runs per token (a tile would compute 12).
const TILE_MIN_TOKENS: usize = 4;
const _: () = assert!(TILE_MIN_TOKENS <= MR);

/// A q4_0 or q8_0 matrix `[n outputs][k inputs]` in panels.
pub struct Panels {
    /// The kernels that multiply by it (`Avx512Vnni`, `AvxVnni`, `AvxVnniEvex`, `Avx2`: theirs; `Portable`:
    /// the portable ones).
    isa: Isa,
    ty: PanelType,
    n: usize,
    k: usize,
    data: crate::kernels::int8::AlignedBytes,
}

/// Why a tensor cannot be laid out as panels.
#[derive(Debug, PartialEq)]
pub struct PackError(pub String);

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "weight panels: {}", self.0)
    }
}

impl std::error::Error for PackError {}

impl Panels {
    /// Rearranges `ty` data (`n` rows of `k / 32` blocks in ggml's layout: an f16 scale, then for q4_0 16
    /// bytes whose low halves are inputs 0-15 and high halves inputs 16-31, each value stored as `q + 8`;
    /// for q8_0 32 signed bytes), for the kernels of `isa` (one this CPU runs: `Kernels::resolve` gives it).
    pub fn new(ty: PanelType, bytes: &[u8], n: usize, k: usize, isa: Isa) -> Result<Self, PackError> {
        if !isa.runs_here() {
            return Err(PackError(format!("{} kernels on a CPU without them", isa.name())));
        }
        if k == 0 || !k.is_multiple_of(QK) || n == 0 {
            return Err(PackError(format!(
                "a {n} x {k} matrix (inputs must be a non-zero multiple of 32)"
            )));
        }
        let (nb, fb, pbs) = (k / QK, ty.file_block(), ty.panel_block());
        if bytes.len() != n * nb * fb {
            return Err(PackError(format!(
                "{} bytes for a {n} x {k} {ty:?} matrix (expected {})",
                bytes.len(),
                n * nb * fb
            )));
        }
        let mut data = crate::kernels::int8::AlignedBytes::zeroed(n.div_ceil(NR) * nb * pbs);
        let out = data.as_mut_slice();
        for (row, blocks) in bytes.chunks_exact(nb * fb).enumerate() {
            let (p, lane) = (row / NR, row % NR);
            let lane_at = (lane / 16) * 64 + (lane % 16) * 4;
            for (g, blk) in blocks.chunks_exact(fb).enumerate() {
                let dst = &mut out[(p * nb + g) * pbs..][..pbs];
                dst[lane * 2..lane * 2 + 2].copy_from_slice(&blk[..2]);
                let qs = &blk[2..];
                for e in 0..QK {
                    match ty {
                        PanelType::Q4_0 => {
                            let v = if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 };
                            let (c, within) = (e / 8, e % 8);
                            dst[NR * 2 + c * 128 + lane_at + within % 4] |= if within < 4 { v } else { v << 4 };
                        }
                        PanelType::Q8_0 => dst[NR * 2 + (e / 4) * 128 + lane_at + e % 4] = qs[e],
                    }
                }
            }
        }
        Ok(Panels { isa, ty, n, k, data })
    }

    /// The instruction set of the kernels that multiply by it.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// The file type whose values these are.
    pub fn ty(&self) -> PanelType {
        self.ty
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
        self.data.as_slice().len()
    }
    /// Panels of `NR` outputs.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
    fn panel(&self, p: usize) -> &[u8] {
        let per = self.k / QK * self.ty.panel_block();
        &self.data.as_slice()[p * per..(p + 1) * per]
    }
}

/// Bytes of one token block's values.
pub fn block_bytes(k: usize) -> usize {
    MR * k
}

/// Bytes of one token block's scales and offset shares (`[groups][MR]` f32, then the same of i32).
pub fn block_meta_bytes(k: usize) -> usize {
    2 * MR * (k / QK) * 4
}

/// Bytes of the quantized activations of `t` tokens of `k` inputs.
pub fn acts_bytes(t: usize, k: usize) -> usize {
    t.div_ceil(MR) * (block_bytes(k) + block_meta_bytes(k))
}

/// Token blocks of `t` tokens.
pub fn token_blocks(t: usize) -> usize {
    t.div_ceil(MR)
}

/// Quantizes the token blocks `blocks` of `x` (`t` rows of `k` f32, `k` a multiple of 32) into `acts`
/// (`acts_bytes(t, k)`): this call writes only those blocks' values and metadata, so threads can
/// quantize disjoint ranges of one buffer (the ggml node hands each its own pieces: `values` is the
/// blocks' value area, `meta` their metadata area). `ty`: the weights' type, which sets the values' form;
/// `isa`: the kernels that run (the weights'). A block's rows past `t` are zeros for the tile kernels,
/// which multiply all `MR`; below `TILE_MIN_TOKENS` tokens only the row kernel reads the block, and
/// only the tokens' rows, so the padding is left as it is (a decoded token's product quantizes one
/// token per thread: zeroing the other eleven rows took 3-4% of a decode's time).
#[allow(clippy::too_many_arguments)]
pub fn quantize_blocks(
    isa: Isa,
    ty: PanelType,
    x: &[f32],
    t: usize,
    k: usize,
    blocks: Range<usize>,
    values: &mut [u8],
    meta: &mut [u8],
) {
    let offset = if ty == PanelType::Q8_0 { q8_offset(isa) } else { 0 };
    let (per, mper, ng) = (block_bytes(k), block_meta_bytes(k), k / QK);
    assert!(
        k.is_multiple_of(QK) && x.len() >= t * k,
        "panels quantize: {t} x {k} activations"
    );
    assert!(
        values.len() == blocks.len() * per && meta.len() == blocks.len() * mper,
        "panels quantize: buffer sizes"
    );
    let mut q = [0i8; QK];
    for (i, b) in blocks.enumerate() {
        let (vals, meta) = (&mut values[i * per..(i + 1) * per], &mut meta[i * mper..(i + 1) * mper]);
        let (scales, shares) = meta.split_at_mut(mper / 2);
        let rows = if t < TILE_MIN_TOKENS {
            t.saturating_sub(b * MR).min(MR)
        } else {
            MR
        };
        for r in 0..rows {
            let tok = b * MR + r;
            for g in 0..ng {
                let (s, sum) = match x.get(tok * k + g * QK..tok * k + (g + 1) * QK) {
                    Some(v) if tok < t => quantize_group(isa, v, &mut q),
                    _ => {
                        q = [0; QK];
                        (0.0, 0)
                    }
                };
                scales[(g * MR + r) * 4..][..4].copy_from_slice(&s.to_le_bytes());
                shares[(g * MR + r) * 4..][..4].copy_from_slice(&(8 * sum).to_le_bytes());
                // Four inputs at a time into their token's 4-byte slot.
                for (j, four) in q.chunks_exact(4).enumerate() {
                    let slot =
                        u32::from_le_bytes([four[0] as u8, four[1] as u8, four[2] as u8, four[3] as u8]) ^ offset;
                    vals[((g * QK / 4 + j) * MR + r) * 4..][..4].copy_from_slice(&slot.to_le_bytes());
                }
            }
        }
    }
}

/// What q8_0 activation bytes are stored as for the kernels of `isa`, as a mask xored onto each 4-byte
/// slot: `q + 128` (`q ^ 0x80`) for AVX-512 VNNI and AVX-VNNI, whose `vpdpbusd` takes them as its unsigned
/// operand;
/// `q` for AVX2 (its sign trick multiplies signed bytes, broadcast straight from memory) and the
/// portable kernels.
const fn q8_offset(isa: Isa) -> u32 {
    match isa {
        Isa::Avx512Vnni | Isa::AvxVnni | Isa::AvxVnniEvex => 0x8080_8080,
        Isa::Avx2 | Isa::Portable => 0,
    }
}

/// One group of 32 values to int8 with scale `max |v| / 127` (rounded to nearest even, like the vector
/// conversion), returning the scale and the sum of the integers.
fn quantize_group(isa: Isa, v: &[f32], q: &mut [i8; QK]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512Vnni => return avx512::quantize_group(v, q),
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex => return avx2::quantize_group(v, q),
        Isa::Portable => {}
    }
    quantize_group_portable(v, q)
}

fn quantize_group_portable(v: &[f32], q: &mut [i8; QK]) -> (f32, i32) {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let s = amax / 127.0;
    // 0 for an all-zero group, and for one so small that 1 / s overflows (the vector path's rule too).
    let inv = if (1.0 / s).is_finite() { 1.0 / s } else { 0.0 };
    let mut sum = 0;
    for (d, &x) in q.iter_mut().zip(v) {
        *d = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        sum += i32::from(*d);
    }
    (s, sum)
}

/// One token block's values, scales and offset shares, read from a quantized-activation buffer.
struct Block<'a> {
    values: &'a [u8],
    scale: Vec<f32>,
    share: Vec<i32>,
}

fn block<'a>(acts: &'a [u8], t: usize, k: usize, b: usize) -> Block<'a> {
    let (per, mper) = (block_bytes(k), block_meta_bytes(k));
    let meta = &acts[t.div_ceil(MR) * per + b * mper..][..mper];
    let (s, c) = meta.split_at(mper / 2);
    let f = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    Block {
        values: &acts[b * per..(b + 1) * per],
        scale: s.chunks_exact(4).map(|b| f32::from_le_bytes(f(b))).collect(),
        share: c.chunks_exact(4).map(|b| i32::from_le_bytes(f(b))).collect(),
    }
}

/// `x·Wᵀ (+ bias)` for the panels `panels` of `w` over all `t` tokens of `acts`; each finished run of
/// outputs goes to `emit(token, first output, values)` (threads given disjoint panel ranges write
/// disjoint columns of one output).
pub fn product(
    acts: &[u8],
    t: usize,
    w: &Panels,
    bias: Option<&[f32]>,
    panels: Range<usize>,
    emit: impl FnMut(usize, usize, &[f32]),
) {
    let work = Work::new(t, panels.len(), panels.len().max(1));
    let mut items = 0..work.items();
    product_items(acts, t, w, bias, panels.start, &work, || items.next(), emit);
}

/// How a product's work is cut into items that threads can draw one at a time: a chunk of token blocks
/// (`MC_BLOCKS`, the activations kept in cache) times a run of panels, chunk by chunk, so that items drawn
/// one after another share their activations.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    chunks: usize,
    runs: usize,
    run: usize,
    panels: usize,
}

impl Work {
    /// The work of `t` tokens times `panels` panels in runs of `run` panels.
    pub fn new(t: usize, panels: usize, run: usize) -> Self {
        let run = run.max(1);
        let chunks = if t < TILE_MIN_TOKENS {
            1
        } else {
            token_blocks(t).div_ceil(MC_BLOCKS)
        };
        Work {
            chunks,
            runs: panels.div_ceil(run),
            run,
            panels,
        }
    }
    /// Items in all.
    pub fn items(&self) -> usize {
        self.chunks * self.runs
    }
    /// Item `i`'s chunk and its panels (relative to the first panel of the product).
    fn item(&self, i: usize) -> (usize, Range<usize>) {
        let (c, r) = (i / self.runs, i % self.runs);
        (c, r * self.run..((r + 1) * self.run).min(self.panels))
    }
}

/// `product` over the items of `work` (panels counted from `first`) that `next` hands out until it
/// returns `None` or an item past the end: threads drawing from one shared counter, so that a thread that
/// runs faster takes more of them.
#[allow(clippy::too_many_arguments)]
pub fn product_items(
    acts: &[u8],
    t: usize,
    w: &Panels,
    bias: Option<&[f32]>,
    first: usize,
    work: &Work,
    mut next: impl FnMut() -> Option<usize>,
    mut emit: impl FnMut(usize, usize, &[f32]),
) {
    assert_eq!(acts.len(), acts_bytes(t, w.k), "panels product: activation buffer size");
    assert!(first + work.panels <= w.panels(), "panels product: panel range");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n, "panels product: bias length");
    }
    let mut finish = |tok: usize, p: usize, acc: &mut [f32; NR]| {
        let n0 = p * NR;
        let nn = NR.min(w.n - n0);
        if let Some(b) = bias {
            for (a, b) in acc.iter_mut().zip(&b[n0..n0 + nn]) {
                *a += b;
            }
        }
        emit(tok, n0, &acc[..nn]);
    };
    let ng = w.k / QK;
    let blocks = token_blocks(t);
    if t == 0 {
        return;
    }
    // Tiles' outputs, made on the first chunk drawn (the row path needs none).
    let mut accs = Vec::new();
    // The blocks of the chunk last drawn (read from the buffer once per chunk; the row path's one block
    // once per call).
    let mut held: Option<(usize, Vec<Block>)> = None;
    while let Some(i) = next().filter(|&i| i < work.items()) {
        let (c, panels) = work.item(i);
        let panels = first + panels.start..first + panels.end;
        if held.as_ref().is_none_or(|(hc, _)| *hc != c) {
            let sb = c * MC_BLOCKS;
            let chunk = (sb..(sb + MC_BLOCKS).min(blocks))
                .map(|b| block(acts, t, w.k, b))
                .collect();
            held = Some((c, chunk));
        }
        let Some((_, chunk)) = &held else {
            unreachable!("set above")
        };
        if t < TILE_MIN_TOKENS {
            // One block (TILE_MIN_TOKENS <= MR); panels outside, so the weights stream once for all tokens.
            for p in panels {
                for r in 0..t {
                    let mut acc = [0f32; NR];
                    row(w.isa, w.ty, &chunk[0], r, w.panel(p), ng, &mut acc);
                    finish(r, p, &mut acc);
                }
            }
            continue;
        }
        if accs.is_empty() {
            accs = vec![[[0f32; NR]; MR]; MC_BLOCKS.min(blocks)];
        }
        let sb = c * MC_BLOCKS;
        for p in panels {
            tiles(w.isa, w.ty, chunk, w.panel(p), ng, &mut accs);
            for (acc, b) in accs.iter_mut().zip(sb..sb + chunk.len()) {
                for (r, acc_r) in acc.iter_mut().enumerate().take(MR.min(t - b * MR)) {
                    finish(b * MR + r, p, acc_r);
                }
            }
        }
    }
}

/// A SIMD ISA's kernels for `tile` and `row`, raw: the safe entry points check the operands first.
#[cfg(target_arch = "x86_64")]
struct Simd {
    isa: Isa,
    /// The ISA's name for the messages.
    name: &'static str,
    tile_q4: unsafe fn(*const u8, *const f32, *const i32, *const u8, usize, &mut [[f32; NR]; MR]),
    tile_q8: unsafe fn(*const u8, *const f32, *const u8, usize, &mut [[f32; NR]; MR]),
    row_q4: unsafe fn(*const u8, *const f32, *const i32, usize, *const u8, usize, &mut [f32; NR]),
    row_q8: unsafe fn(*const u8, *const f32, usize, *const u8, usize, &mut [f32; NR]),
}

#[cfg(target_arch = "x86_64")]
impl Simd {
    /// Checks shared by the kernels: the CPU runs them, a token block's values (`MR` x `ng * 32` bytes)
    /// and its `[ng][MR]` scales and shares, a panel's `ng` blocks.
    fn check(&self, ty: PanelType, a: &Block, w: &[u8], ng: usize) {
        assert!(
            self.isa.runs_here(),
            "panels kernel: {} kernel on a CPU without it",
            self.name
        );
        assert!(
            a.values.len() >= ng * QK * MR && w.len() >= ng * ty.panel_block(),
            "panels kernel: short operands"
        );
        assert!(
            a.scale.len() >= ng * MR && a.share.len() >= ng * MR,
            "panels kernel: short scales"
        );
    }

    /// See `tile`: token block x panel, `acc` overwritten.
    fn tile(&self, ty: PanelType, a: &Block, w: &[u8], ng: usize, acc: &mut [[f32; NR]; MR]) {
        self.check(ty, a, w, ng);
        let (values, scale, share) = (a.values.as_ptr(), a.scale.as_ptr(), a.share.as_ptr());
        // SAFETY: the CPU has the instructions (checked above); every load is inside the slices, whose
        // lengths are checked above for this type's panel blocks.
        unsafe {
            match ty {
                PanelType::Q4_0 => (self.tile_q4)(values, scale, share, w.as_ptr(), ng, acc),
                PanelType::Q8_0 => (self.tile_q8)(values, scale, w.as_ptr(), ng, acc),
            }
        }
    }

    /// See `row`: token `r` of a block x panel, `acc` overwritten.
    fn row(&self, ty: PanelType, a: &Block, r: usize, w: &[u8], ng: usize, acc: &mut [f32; NR]) {
        self.check(ty, a, w, ng);
        assert!(r < MR, "panels row: token {r} of a block of {MR}");
        let (values, scale, share) = (a.values.as_ptr(), a.scale.as_ptr(), a.share.as_ptr());
        // SAFETY: as in `tile`, and r < MR.
        unsafe {
            match ty {
                PanelType::Q4_0 => (self.row_q4)(values, scale, share, r, w.as_ptr(), ng, acc),
                PanelType::Q8_0 => (self.row_q8)(values, scale, r, w.as_ptr(), ng, acc),
            }
        }
    }
}

/// One token (row `r` of a block) times one panel.
fn row(isa: Isa, ty: PanelType, a: &Block, r: usize, w: &[u8], ng: usize, acc: &mut [f32; NR]) {
    let pbs = ty.panel_block();
    assert!(
        a.values.len() >= ng * QK * MR && w.len() >= ng * pbs && a.scale.len() >= ng * MR,
        "panels row: short operands"
    );
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512Vnni => return avx512::KERNELS.row(ty, a, r, w, ng, acc),
        Isa::Avx2 => return avx2::KERNELS.row(ty, a, r, w, ng, acc),
        Isa::AvxVnni => return vnni256::vex::KERNELS.row(ty, a, r, w, ng, acc),
        Isa::AvxVnniEvex => return vnni256::evex::KERNELS.row(ty, a, r, w, ng, acc),
        Isa::Portable => {}
    }
    *acc = [0.0; NR];
    for g in 0..ng {
        let pb = &w[g * pbs..(g + 1) * pbs];
        epilogue(a, r, pb, g, &dots(ty, a, r, &weights(ty, pb), g), acc);
    }
}

/// Token blocks `chunk` times one panel, `accs[i]` overwritten by block `i`'s tile: what `tile` gives
/// each, in one call, so that a kernel can prepare the panel once for every block (the AVX2 q8_0
/// kernel widens the weights to i16).
fn tiles(isa: Isa, ty: PanelType, chunk: &[Block], w: &[u8], ng: usize, accs: &mut [[[f32; NR]; MR]]) {
    assert!(
        accs.len() >= chunk.len(),
        "panels tiles: {} outputs for {} blocks",
        accs.len(),
        chunk.len()
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && ty == PanelType::Q8_0 {
        return avx2::tiles_q8(chunk, w, ng, accs);
    }
    for (a, acc) in chunk.iter().zip(accs) {
        tile(isa, ty, a, w, ng, acc);
    }
}

/// One token block times one panel.
fn tile(isa: Isa, ty: PanelType, a: &Block, w: &[u8], ng: usize, acc: &mut [[f32; NR]; MR]) {
    let pbs = ty.panel_block();
    assert!(
        a.values.len() >= ng * QK * MR && w.len() >= ng * pbs && a.scale.len() >= ng * MR,
        "panels tile: short operands"
    );
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512Vnni => return avx512::KERNELS.tile(ty, a, w, ng, acc),
        Isa::Avx2 => return avx2::KERNELS.tile(ty, a, w, ng, acc),
        Isa::AvxVnni => return vnni256::vex::KERNELS.tile(ty, a, w, ng, acc),
        Isa::AvxVnniEvex => return vnni256::evex::KERNELS.tile(ty, a, w, ng, acc),
        Isa::Portable => {}
    }
    *acc = [[0.0; NR]; MR];
    for g in 0..ng {
        let pb = &w[g * pbs..(g + 1) * pbs];
        let wq = weights(ty, pb);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            epilogue(a, r, pb, g, &dots(ty, a, r, &wq, g), acc_r);
        }
    }
}

/// A panel block's weights as signed integers, `[output][input]` (what the portable kernels multiply).
fn weights(ty: PanelType, pb: &[u8]) -> [[i8; QK]; NR] {
    let mut w = [[0i8; QK]; NR];
    for (lane, wl) in w.iter_mut().enumerate() {
        let lane_at = NR * 2 + (lane / 16) * 64 + (lane % 16) * 4;
        for (e, v) in wl.iter_mut().enumerate() {
            *v = match ty {
                PanelType::Q4_0 => {
                    let byte = pb[lane_at + (e / 8) * 128 + e % 4];
                    (if e % 8 < 4 { byte & 15 } else { byte >> 4 }) as i8 - 8
                }
                PanelType::Q8_0 => pb[lane_at + (e / 4) * 128 + e % 4] as i8,
            };
        }
    }
    w
}

/// The 32 outputs' integer dot products over block `g` for token `r`, weights `w` (the weights' `q`
/// times the activations' `q`: what the vector kernels' sums come to once the offsets are taken out).
fn dots(ty: PanelType, a: &Block, r: usize, w: &[[i8; QK]; NR], g: usize) -> [i32; NR] {
    let mut av = [0i32; QK];
    for (e, v) in av.iter_mut().enumerate() {
        let byte = a.values[((g * QK / 4 + e / 4) * MR + r) * 4 + e % 4];
        *v = match ty {
            PanelType::Q4_0 => i32::from(byte as i8),
            // The portable kernels' own blocks: `q` itself (`q8_offset`).
            PanelType::Q8_0 => i32::from(byte as i8),
        };
    }
    let mut s = [0i32; NR];
    for (s, wl) in s.iter_mut().zip(w) {
        *s = wl.iter().zip(&av).map(|(&w, &a)| i32::from(w) * a).sum();
    }
    s
}

/// `acc += sum as f32 * (w scale * a scale)`, the vector kernels' order.
fn epilogue(a: &Block, r: usize, pb: &[u8], g: usize, s: &[i32; NR], acc: &mut [f32; NR]) {
    let sa = a.scale[g * MR + r];
    for (lane, (o, s)) in acc.iter_mut().zip(s).enumerate() {
        let ws = f16::from_le_bytes([pb[lane * 2], pb[lane * 2 + 1]]).to_f32();
        *o += *s as f32 * (ws * sa);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// `w` (rows of `k`) in the file blocks of `ty`, ggml's rounding (q4_0: scale = the value of largest
    /// magnitude / -8; q8_0: max |v| / 127).
    fn encode(ty: PanelType, w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in w.chunks_exact(QK) {
            match ty {
                PanelType::Q4_0 => {
                    let m = blk.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let d = m / -8.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    let q: Vec<u8> = blk
                        .iter()
                        .map(|&v| ((v * id + 8.5) as i32).clamp(0, 15) as u8)
                        .collect();
                    out.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
                }
                PanelType::Q8_0 => {
                    let d = blk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(blk.iter().map(|&v| (v * id).round() as i8 as u8));
                }
            }
        }
        out
    }

    /// The matrix the file blocks stand for.
    fn decode(ty: PanelType, bytes: &[u8]) -> Vec<f32> {
        let mut w = Vec::new();
        for blk in bytes.chunks_exact(ty.file_block()) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            match ty {
                PanelType::Q4_0 => {
                    w.extend(blk[2..].iter().map(|b| (i32::from(b & 15) - 8) as f32 * d));
                    w.extend(blk[2..].iter().map(|b| (i32::from(b >> 4) - 8) as f32 * d));
                }
                PanelType::Q8_0 => w.extend(blk[2..].iter().map(|&b| f32::from(b as i8) * d)),
            }
        }
        w
    }

    fn quantized(isa: Isa, ty: PanelType, x: &[f32], t: usize, k: usize) -> Vec<u8> {
        let mut acts = vec![0u8; acts_bytes(t, k)];
        let split = acts.len() - token_blocks(t) * block_meta_bytes(k);
        let (v, m) = acts.split_at_mut(split);
        quantize_blocks(isa, ty, x, t, k, 0..token_blocks(t), v, m);
        acts
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        isa: Isa,
        ty: PanelType,
        t: usize,
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        x: &[f32],
        q: &[u8],
        panels: Range<usize>,
    ) -> Vec<f32> {
        let w = Panels::new(ty, q, n, k, isa).expect("pack");
        let acts = quantized(isa, ty, x, t, k);
        let mut out = vec![f32::NAN; t * n];
        product(&acts, t, &w, bias, panels, |tok, n0, vals| {
            out[tok * n + n0..tok * n + n0 + vals.len()].copy_from_slice(vals)
        });
        out
    }

    const TYPES: [PanelType; 2] = [PanelType::Q4_0, PanelType::Q8_0];

    /// Work drawn item by item in any order, as threads drawing from a shared counter would (two
    /// "threads" taking turns, from the last item back), gives the bits of the whole product in one call: over
    /// several chunks of token blocks, runs of panels that do not divide the panels, and the row path.
    #[test]
    fn work_items_drawn_in_any_order_give_the_whole_product() {
        let (k, n) = (64, 9 * NR - 5);
        for (isa, ty) in Isa::all_here().into_iter().flat_map(|i| TYPES.map(|t| (i, t))) {
            let gty = match ty {
                PanelType::Q4_0 => crate::gguf::GgmlType::Q4_0,
                PanelType::Q8_0 => crate::gguf::GgmlType::Q8_0,
            };
            let q = crate::ggml::quantize(gty, &values(n * k, 8), k).expect("quantize");
            let w = Panels::new(ty, &q, n, k, isa).expect("pack");
            let bias = values(n, 9);
            for t in [2, 3 * MC_BLOCKS * MR + 5] {
                let x = values(t * k, 10);
                let whole = run(isa, ty, t, k, n, Some(&bias), &x, &q, 0..w.panels());
                let acts = quantized(isa, ty, &x, t, k);
                let work = Work::new(t, w.panels(), 4);
                assert!(work.items() > 2, "{t} tokens: {} items", work.items());
                let mut order: Vec<usize> = (0..work.items()).collect();
                let mut out = vec![f32::NAN; t * n];
                let mut emit = |tok: usize, n0: usize, vals: &[f32]| {
                    out[tok * n + n0..tok * n + n0 + vals.len()].copy_from_slice(vals)
                };
                // Two callers taking one item each in turn until the items run out.
                while !order.is_empty() {
                    let mut one = order.pop().into_iter();
                    product_items(&acts, t, &w, Some(&bias), 0, &work, || one.next(), &mut emit);
                    let mut two = order.pop().into_iter();
                    product_items(&acts, t, &w, Some(&bias), 0, &work, || two.next(), &mut emit);
                }
                assert!(
                    out == whole,
                    "{isa:?} {ty:?} {t} tokens: items differ from the whole product"
                );
            }
        }
    }

    /// On every instruction set this CPU runs: the same assertions, and the portable kernels' bits.
    #[test]
    fn matches_the_product_of_the_file_matrix() {
        for (isa, ty) in Isa::all_here().into_iter().flat_map(|i| TYPES.map(|t| (i, t))) {
            eprintln!("panels {ty:?}: {} kernels", isa.name());
            for &(t, k, n, with_bias) in &[
                (1, 32, 1, false),
                (3, 64, 40, true),
                (13, 96, 33, true),
                (30, 256, 64, false),
            ] {
                let x = values(t * k, 1);
                let q = encode(ty, &values(n * k, 2));
                let wf = decode(ty, &q);
                let bias = with_bias.then(|| values(n, 3));
                let out = run(isa, ty, t, k, n, bias.as_deref(), &x, &q, 0..n.div_ceil(NR));
                let portable = run(Isa::Portable, ty, t, k, n, bias.as_deref(), &x, &q, 0..n.div_ceil(NR));
                let same = out.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{ty:?} {t}x{k}x{n}: {isa:?} differs from the portable kernels");
                let (mut err, mut norm) = (0f64, 0f64);
                for i in 0..t {
                    for j in 0..n {
                        let d: f64 = (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(wf[j * k + c])).sum();
                        let want = d + bias.as_ref().map_or(0.0, |b| f64::from(b[j]));
                        let o = out[i * n + j];
                        assert!(o.is_finite(), "{ty:?} {t}x{k}x{n}: output {i},{j} not written");
                        err += (f64::from(o) - want).powi(2);
                        norm += want.powi(2);
                    }
                }
                // Only the activations are rounded (the weights are the file's values exactly): ~0.5%.
                let rel = (err / norm).sqrt();
                assert!(rel < 0.01, "{ty:?} {t}x{k}x{n}: relative error {rel}");
            }
        }
    }

    /// ggml's own quantizer's bytes (the layout the files hold) give the product of ggml's own dequantized
    /// matrix: our reading of the file format checked against ggml, not against our test encoder.
    #[test]
    fn reads_ggml_blocks_as_ggml_does() {
        use crate::gguf::GgmlType;
        for (isa, (ty, gty)) in Isa::all_here()
            .into_iter()
            .flat_map(|i| [(PanelType::Q4_0, GgmlType::Q4_0), (PanelType::Q8_0, GgmlType::Q8_0)].map(|p| (i, p)))
        {
            eprintln!("panels {ty:?} from ggml's blocks: {} kernels", isa.name());
            let (t, k, n) = (5, 96, 40); // a padded second panel
            let q = crate::ggml::quantize(gty, &values(n * k, 9), k).expect("ggml quantize");
            let wf = crate::ggml::dequantize(gty, &q, n * k).expect("ggml dequantize");
            let x = values(t * k, 10);
            let out = run(isa, ty, t, k, n, None, &x, &q, 0..2);
            for i in 0..t {
                for j in 0..n {
                    let want: f64 = (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(wf[j * k + c])).sum();
                    let scale: f64 = (0..k).map(|c| f64::from(x[i * k + c] * wf[j * k + c]).abs()).sum();
                    let err = (f64::from(out[i * n + j]) - want).abs();
                    assert!(err <= 0.02 * scale, "{ty:?} {i},{j}: {} vs {want}", out[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn a_token_gets_the_same_row_alone_or_in_a_tile_and_panels_split_cleanly() {
        for (isa, ty) in Isa::all_here().into_iter().flat_map(|i| TYPES.map(|t| (i, t))) {
            eprintln!("panels {ty:?} rows and tiles: {} kernels", isa.name());
            let (t, k, n) = (14, 128, 96);
            let x = values(t * k, 4);
            let q = encode(ty, &values(n * k, 5));
            let all = run(isa, ty, t, k, n, None, &x, &q, 0..3);
            // Token 13 alone (the matrix-vector kernel) against its row in the 14-token tiles.
            let one = run(isa, ty, 1, k, n, None, &x[13 * k..], &q, 0..3);
            assert_eq!(&all[13 * n..], &one[..], "{ty:?}");
            // Panels 1..3 alone leave panel 0's columns unwritten and give the same others.
            let part = run(isa, ty, t, k, n, None, &x, &q, 1..3);
            for i in 0..t {
                assert!(part[i * n..i * n + NR].iter().all(|v| v.is_nan()));
                assert_eq!(&part[i * n + NR..(i + 1) * n], &all[i * n + NR..(i + 1) * n], "{ty:?}");
            }
        }
    }

    #[test]
    fn bad_shapes_and_sizes_are_errors() {
        use PanelType::{Q4_0, Q8_0};
        let p = Isa::Portable;
        assert!(Panels::new(Q4_0, &[0; 18], 1, 33, p).is_err());
        assert!(Panels::new(Q4_0, &[0; 17], 1, 32, p).is_err());
        assert!(Panels::new(Q4_0, &[], 0, 32, p).is_err());
        assert!(Panels::new(Q4_0, &[0; 18], 1, 32, p).is_ok());
        assert!(Panels::new(Q8_0, &[0; 18], 1, 32, p).is_err());
        assert!(Panels::new(Q8_0, &[0; 34], 1, 32, p).is_ok());
        for isa in [Isa::Avx2, Isa::AvxVnni, Isa::AvxVnniEvex, Isa::Avx512Vnni] {
            // An instruction set this CPU lacks is an error, not a crash later.
            assert_eq!(
                Panels::new(Q4_0, &[0; 18], 1, 32, isa).is_ok(),
                isa.runs_here(),
                "{isa:?}"
            );
        }
    }

    /// Each vector kernel this CPU runs against the portable one, kernel by kernel: the quantizer, then the
    /// tile and the row over every block and panel, on ordinary values and on the extremes (q8_0 weights
    /// of -128 and 127, q4_0 values 0 and 15, activations of +-127: the AVX2 kernels' i16 bounds).
    #[test]
    fn every_vector_kernel_gives_the_portable_kernels_bits() {
        let (t, k, n) = (25, 160, 64);
        let mut x = values(t * k, 6);
        x[40] = 2.5 / 127.0; // a tie, an all-zero group, a group too small for 1 / scale
        x[k..k + QK].fill(0.0);
        x[2 * k..2 * k + QK].fill(1e-38);
        x[2 * k + 3] = -2e-38;
        // Tokens 3 and 4: every activation at +-127 (same or alternating signs).
        x[3 * k..4 * k].fill(0.5);
        for (i, v) in x[4 * k..5 * k].iter_mut().enumerate() {
            *v = if i % 3 == 0 { -0.5 } else { 0.5 };
        }
        let vector: Vec<Isa> = Isa::all_here().into_iter().filter(|&i| i != Isa::Portable).collect();
        eprintln!("vector kernels compared with the portable ones: {vector:?}");
        for isa in vector {
            for g in x.chunks_exact(QK) {
                let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
                assert_eq!(
                    quantize_group(isa, g, &mut a),
                    quantize_group_portable(g, &mut b),
                    "{isa:?}"
                );
                assert_eq!(a, b, "{isa:?} quantize");
            }
            for ty in TYPES {
                let n = n - 9; // a padded last panel
                let mut bytes = encode(ty, &values(n * k, 7));
                // Rows 0 and 1: the extreme values (the f16 scale bytes kept).
                let fb = ty.file_block();
                for (row, fill) in [(0, [0x80u8, 0x7f]), (1, [0x80, 0x80])] {
                    for blk in bytes[row * (k / QK) * fb..(row + 1) * (k / QK) * fb].chunks_exact_mut(fb) {
                        for (i, q) in blk[2..].iter_mut().enumerate() {
                            *q = match ty {
                                // q8_0: -128 and 127 (row 0) or all -128 (row 1).
                                PanelType::Q8_0 => fill[i % 2],
                                // q4_0: values 0 and 15 (row 0: 0xf0) or all 15 (row 1: 0xff).
                                PanelType::Q4_0 => [0xf0, 0xff][row],
                            };
                        }
                    }
                }
                let w = Panels::new(ty, &bytes, n, k, isa).expect("pack");
                let acts = quantized(isa, ty, &x, t, k);
                let plain = quantized(Isa::Portable, ty, &x, t, k);
                // The same integers and scales; the values stored as each kernel takes them (`q8_offset`).
                let off = if ty == PanelType::Q8_0 { q8_offset(isa) as u8 } else { 0 };
                let values_len = token_blocks(t) * block_bytes(k);
                let unstored: Vec<u8> = (acts.iter().enumerate())
                    .map(|(i, &v)| if i < values_len { v ^ off } else { v })
                    .collect();
                assert_eq!(unstored, plain, "{isa:?} {ty:?} quantize");
                let ng = k / QK;
                // All blocks at once (`tiles`), against the portable tile per block.
                let chunk: Vec<Block> = (0..token_blocks(t)).map(|b| block(&acts, t, k, b)).collect();
                for p in 0..w.panels() {
                    let mut fast = vec![[[0f32; NR]; MR]; chunk.len()];
                    tiles(isa, ty, &chunk, w.panel(p), ng, &mut fast);
                    for (b, fast) in fast.iter().enumerate() {
                        let mut slow = [[0f32; NR]; MR];
                        tile(Isa::Portable, ty, &block(&plain, t, k, b), w.panel(p), ng, &mut slow);
                        assert_eq!(fast, &slow, "{isa:?} {ty:?} tiles: block {b} panel {p}");
                    }
                }
                for b in 0..token_blocks(t) {
                    let (a, ap) = (block(&acts, t, k, b), block(&plain, t, k, b));
                    for p in 0..w.panels() {
                        let (mut fast, mut slow) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
                        tile(isa, ty, &a, w.panel(p), ng, &mut fast);
                        tile(Isa::Portable, ty, &ap, w.panel(p), ng, &mut slow);
                        assert_eq!(fast, slow, "{isa:?} {ty:?} tile: block {b} panel {p}");
                        for (r, want) in slow.iter().enumerate() {
                            let mut got = [0f32; NR];
                            row(isa, ty, &a, r, w.panel(p), ng, &mut got);
                            assert_eq!(&got, want, "{isa:?} {ty:?} row {r}: block {b} panel {p}");
                        }
                    }
                }
            }
        }
    }
}
