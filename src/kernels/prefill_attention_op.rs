//! `prefill_attention` as a ggml custom node on the CPU backend: a prompt chunk's query heads over the f16
//! KV cache. Threads split the (query head, block of tokens) items, heads in order, so that with 2 threads
//! and Qwen2-0.5B's 2 KV heads each thread converts one KV head's rows once for its 7 query heads.
use std::cell::RefCell;
use std::ffi::c_void;

use super::attention::MR;
use super::prefill_attention::{self, Cache, Scratch};
use super::Isa;
use crate::ggml::context::{shape, ty_err};
use crate::ggml::custom::{share, NodeFn, NodeTensor, RawTensor};
use crate::ggml::{Context, Result, Tensor};
use crate::gguf::GgmlType;

/// `softmax(scale q kᵀ + mask) v` for a chunk of `n` tokens by our kernel for `isa`: `q` f32 `[hd, n_head,
/// n]` (contiguous), `k` and `v` the f16 cache matrices `[hd * n_head_kv, rows]` (or views of them with
/// the same row layout) of which the first `mask.ne[0]` rows are read, `mask` f16 `[n_kv, n]` (contiguous);
/// query head `h` reads KV head `h / (n_head / n_head_kv)`. Result: contiguous f32 `[hd, n_head, n]`, the
/// layout of `flash_attn_ext`'s.
pub fn prefill_attention<'a>(
    ctx: &'a Context,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    mask: Tensor<'a>,
    scale: f32,
    isa: Isa,
) -> Result<Tensor<'a>> {
    const OP: &str = "prefill_attention";
    let [hd, nh, n, one] = q.ne().map(|x| x as usize);
    if q.ty() != GgmlType::F32 || q.nb()[0] != 4 || q.nb()[1] != hd * 4 || q.nb()[2] != hd * nh * 4 {
        return Err(ty_err(OP, q, "q must be contiguous f32"));
    }
    if n == 0 || one != 1 || hd == 0 || nh == 0 {
        return Err(shape(OP, format!("q {:?}: one chunk's heads expected", q.ne())));
    }
    let [n_kv, mrows, ..] = mask.ne().map(|x| x as usize);
    if mask.ty() != GgmlType::F16 || mask.nb()[0] != 2 || mask.nb()[1] != n_kv * 2 || mrows != n || n_kv == 0 {
        return Err(ty_err(OP, mask, "mask must be contiguous f16 [n_kv, n]"));
    }
    super::decode_attention_op::check_cache(OP, k, v, hd, nh, n_kv, scale)?;
    let f: NodeFn = match isa {
        Isa::Portable => prefill_attention_node::<{ Isa::Portable as u8 }>,
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex => prefill_attention_node::<{ Isa::Avx2 as u8 }>,
        Isa::Avx512Vnni => prefill_attention_node::<{ Isa::Avx512Vnni as u8 }>,
    };
    // SAFETY: shapes, types and strides checked above, which is what the callback relies on; the userdata
    // is the scale's bits, not a pointer.
    unsafe {
        ctx.custom_node(
            OP,
            GgmlType::F32,
            [hd, nh, n, 1],
            &[q, k, v, mask],
            f,
            scale.to_bits() as usize as *mut c_void,
        )
    }
}

thread_local! {
    /// Per ggml worker thread (they live as long as their threadpool): buffers reused between calls.
    static SCRATCH: RefCell<(Scratch, Vec<usize>)> = RefCell::new((Scratch::default(), Vec::new()));
}

unsafe extern "C" fn prefill_attention_node<const ISA: u8>(
    dst: *mut RawTensor,
    ith: i32,
    nth: i32,
    scale: *mut c_void,
) {
    let scale = f32::from_bits(scale as usize as u32);
    let isa = Isa::from_id(ISA);
    // SAFETY: ggml calls this with the node built in `prefill_attention`: src[0] is contiguous f32
    // [hd, nh, n], src[1] and src[2] f16 caches of at least n_kv rows of hd * nkv values with equal row
    // strides, src[3] contiguous f16 [n_kv, n], dst contiguous f32 [hd, nh, n] (all checked there). Reads
    // stay inside row (n_kv - 1)'s KV head; each thread writes only its own (head, block) items' rows.
    unsafe {
        let d = NodeTensor::of(dst);
        let [hd, nh, n, _] = d.ne;
        let src = |i| NodeTensor::src(dst, i).expect("q, k, v, mask");
        let (q, k, v, mask) = (src(0), src(1), src(2), src(3));
        let n_kv = mask.ne[0];
        let nkv = k.ne[0] / hd;
        let group = nh / nkv;
        let ld = k.nb[1] / 2;
        let blocks = n.div_ceil(MR);
        let mine = share(nh * blocks, ith, nth);
        if mine.is_empty() {
            return;
        }
        let dmodel = hd * nh;
        let qs = std::slice::from_raw_parts(q.data as *const f32, n * dmodel);
        let ms = std::slice::from_raw_parts(mask.data as *const u16, n * n_kv);
        let len = (n_kv - 1) * ld + hd;
        SCRATCH.with(|sc| {
            let (sc, visible) = &mut *sc.borrow_mut();
            prefill_attention::visible_rows(ms, n_kv, n, visible);
            let rows = visible.iter().copied().max().unwrap_or(0);
            // The KV head whose rows this call has converted into the scratch.
            let mut loaded: Option<usize> = None;
            let mut item = mine.start;
            while item < mine.end {
                let h = item / blocks;
                // This thread's blocks of head h.
                let end = mine.end.min((h + 1) * blocks);
                let g = h / group;
                let cache = Cache {
                    k: std::slice::from_raw_parts((k.data as *const u16).add(g * hd), len),
                    v: std::slice::from_raw_parts((v.data as *const u16).add(g * hd), len),
                    ld,
                    n_kv,
                    hd,
                };
                if loaded != Some(g) {
                    prefill_attention::load_kv(isa, &cache, rows, sc);
                    loaded = Some(g);
                }
                let (b0, b1) = (item - h * blocks, end - h * blocks);
                let t0 = b0 * MR;
                let t1 = (b1 * MR).min(n);
                let out = std::slice::from_raw_parts_mut(
                    (d.data as *mut f32).add(t0 * dmodel + h * hd),
                    (t1 - t0 - 1) * dmodel + hd,
                );
                prefill_attention::head(
                    isa,
                    &qs[h * hd..],
                    dmodel,
                    n,
                    &cache,
                    ms,
                    visible,
                    scale,
                    b0..b1,
                    out,
                    dmodel,
                    sc,
                );
                item = end;
            }
        });
    }
}
