//! `decode_attention` as a ggml custom node on the CPU backend: one token's query heads over the f16 KV
//! cache, threads splitting the query heads (with 2 threads and Qwen2-0.5B's 2 KV heads, each thread reads
//! one KV head's rows once for its 7 query heads).
use std::cell::RefCell;
use std::ffi::c_void;

use super::decode_attention::{self, KvRows, Scratch};
use super::Isa;
use crate::ggml::context::{shape, ty_err};
use crate::ggml::custom::{share, NodeFn, NodeTensor, RawTensor};
use crate::ggml::{Context, Result, Tensor};
use crate::gguf::GgmlType;

/// `softmax(scale q kᵀ + mask) v` for one token by our kernel for `isa`: `q` f32 `[hd, n_head, 1]`
/// (contiguous), `k` and `v` the f16 cache matrices `[hd * n_head_kv, rows]` (or views of them with the
/// same row layout) of which the first `mask.ne[0]` rows are read, `mask` f16 `[n_kv, 1]`; query head `h`
/// reads KV head `h / (n_head / n_head_kv)`. Result: contiguous f32 `[hd, n_head, 1]`, the layout of
/// `flash_attn_ext`'s.
pub fn decode_attention<'a>(
    ctx: &'a Context,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    mask: Tensor<'a>,
    scale: f32,
    isa: Isa,
) -> Result<Tensor<'a>> {
    const OP: &str = "decode_attention";
    let [hd, nh, n, one] = q.ne().map(|x| x as usize);
    if q.ty() != GgmlType::F32 || q.nb()[0] != 4 || q.nb()[1] != hd * 4 {
        return Err(ty_err(OP, q, "q must be contiguous f32"));
    }
    if n != 1 || one != 1 || hd == 0 || nh == 0 {
        return Err(shape(OP, format!("q {:?}: one token's heads expected", q.ne())));
    }
    let [n_kv, mrows, ..] = mask.ne().map(|x| x as usize);
    if mask.ty() != GgmlType::F16 || mask.nb()[0] != 2 || mrows != 1 || n_kv == 0 {
        return Err(ty_err(OP, mask, "mask must be f16 [n_kv, 1]"));
    }
    check_cache(OP, k, v, hd, nh, n_kv, scale)?;
    let f: NodeFn = match isa {
        Isa::Portable => decode_attention_node::<{ Isa::Portable as u8 }>,
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex => decode_attention_node::<{ Isa::Avx2 as u8 }>,
        Isa::Avx512Vnni => decode_attention_node::<{ Isa::Avx512Vnni as u8 }>,
    };
    // SAFETY: shapes, types and strides checked above, which is what the callback relies on; the userdata
    // is the scale's bits, not a pointer.
    unsafe {
        ctx.custom_node(
            OP,
            GgmlType::F32,
            [hd, nh, 1, 1],
            &[q, k, v, mask],
            f,
            scale.to_bits() as usize as *mut c_void,
        )
    }
}

/// The checks shared with `super::prefill_attention_op`: `k` and `v` f16 cache matrices (or views) of at
/// least `n_kv` rows of whole heads of `hd`, unit stride in a row, equal row layouts, `nh` query heads a
/// multiple of their KV heads, a finite scale.
pub(super) fn check_cache(
    op: &'static str,
    k: Tensor<'_>,
    v: Tensor<'_>,
    hd: usize,
    nh: usize,
    n_kv: usize,
    scale: f32,
) -> Result<()> {
    for t in [k, v] {
        let [row, rows, ..] = t.ne().map(|x| x as usize);
        if t.ty() != GgmlType::F16 || t.nb()[0] != 2 || !t.nb()[1].is_multiple_of(2) {
            return Err(ty_err(op, t, "k and v must be f16 with unit stride in a row"));
        }
        if row == 0 || !row.is_multiple_of(hd) || rows < n_kv || t.nb()[1] < row * 2 {
            return Err(shape(
                op,
                format!("cache {:?} for head dim {hd} and {n_kv} rows", t.ne()),
            ));
        }
    }
    let nkv = k.ne()[0] as usize / hd;
    if v.ne()[0] != k.ne()[0] || v.nb()[1] != k.nb()[1] || !nh.is_multiple_of(nkv) {
        return Err(shape(
            op,
            format!("k {:?} / v {:?} for {nh} query heads of {hd}", k.ne(), v.ne()),
        ));
    }
    if !scale.is_finite() {
        return Err(shape(op, format!("scale {scale}")));
    }
    Ok(())
}

thread_local! {
    /// Per ggml worker thread (they live as long as their threadpool): buffers reused between calls.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

unsafe extern "C" fn decode_attention_node<const ISA: u8>(dst: *mut RawTensor, ith: i32, nth: i32, scale: *mut c_void) {
    let scale = f32::from_bits(scale as usize as u32);
    // SAFETY: ggml calls this with the node built in `decode_attention`: src[0] is contiguous f32
    // [hd, nh, 1], src[1] and src[2] f16 caches of at least n_kv rows of hd * nkv values with equal row
    // strides, src[3] f16 [n_kv, 1], dst contiguous f32 [hd, nh, 1] (all checked there). Reads stay
    // inside row (n_kv - 1)'s KV head; each thread writes only its own query heads' values.
    unsafe {
        let d = NodeTensor::of(dst);
        let [hd, nh, ..] = d.ne;
        let src = |i| NodeTensor::src(dst, i).expect("q, k, v, mask");
        let (q, k, v, mask) = (src(0), src(1), src(2), src(3));
        let n_kv = mask.ne[0];
        let nkv = k.ne[0] / hd;
        let group = nh / nkv;
        let ld = k.nb[1] / 2;
        let mine = share(nh, ith, nth);
        let qs = std::slice::from_raw_parts(q.data as *const f32, nh * hd);
        let ms = std::slice::from_raw_parts(mask.data as *const u16, n_kv);
        let len = (n_kv - 1) * ld + hd;
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            let mut h = mine.start;
            while h < mine.end {
                // This thread's query heads of KV head g.
                let g = h / group;
                let end = mine.end.min((g + 1) * group);
                let kv = KvRows {
                    k: std::slice::from_raw_parts((k.data as *const u16).add(g * hd), len),
                    v: std::slice::from_raw_parts((v.data as *const u16).add(g * hd), len),
                    ld,
                    n: n_kv,
                    mask: ms,
                    hd,
                };
                decode_attention::heads(
                    Isa::from_id(ISA),
                    &qs[h * hd..end * hd],
                    &kv,
                    scale,
                    std::slice::from_raw_parts_mut((d.data as *mut f32).add(h * hd), (end - h) * hd),
                    sc,
                );
                h = end;
            }
        });
    }
}
