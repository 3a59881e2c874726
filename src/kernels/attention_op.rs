//! `attention` as a ggml custom node on the CPU backend: the ViT's attention over q, k, v views of the
//! fused qkv product, threads splitting each tile's query blocks.
use std::cell::RefCell;
use std::ffi::c_void;

use super::attention::{self, Scratch, MR};
use super::Isa;
use crate::ggml::context::{shape, ty_err};
use crate::ggml::custom::{NodeFn, NodeTensor, RawTensor};
use crate::ggml::{Context, Result, Tensor};
use crate::gguf::GgmlType;

/// `softmax(scale q kᵀ) v` per head and tile by our kernel for `isa`: q, k, v f32 `[hd, n_head, n_tok, T]`
/// (views with unit stride along hd, e.g. of a fused qkv product) -> contiguous f32
/// `[hd, n_head, n_tok, T]`, the layout of `flash_attn_ext`'s result.
pub fn vit_attention<'a>(
    ctx: &'a Context,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    scale: f32,
    isa: Isa,
) -> Result<Tensor<'a>> {
    let ne = q.ne();
    for t in [q, k, v] {
        if t.ne() != ne {
            return Err(shape("vit_attention", format!("q {:?} vs {:?}", ne, t.ne())));
        }
        if t.ty() != GgmlType::F32 || t.nb()[0] != 4 {
            return Err(ty_err(
                "vit_attention",
                t,
                "q, k, v must be f32 with unit stride along hd",
            ));
        }
    }
    if k.nb() != q.nb() || v.nb() != q.nb() {
        return Err(shape("vit_attention", "q, k and v must have the same strides".into()));
    }
    if !(scale.is_finite() && ne.iter().all(|&d| d > 0)) {
        return Err(shape("vit_attention", format!("shape {ne:?}, scale {scale}")));
    }
    // The instruction set travels in the callback (one per set), the scale as the userdata pointer's
    // value (its bits), not as a pointer.
    let f: NodeFn = match isa {
        Isa::Portable => attention_node::<{ Isa::Portable as u8 }>,
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex => attention_node::<{ Isa::Avx2 as u8 }>,
        Isa::Avx512Vnni => attention_node::<{ Isa::Avx512Vnni as u8 }>,
    };
    // SAFETY: shapes, types and strides checked above, which is what the callback relies on; the userdata
    // is not a pointer.
    unsafe {
        ctx.custom_node(
            "vit_attention",
            GgmlType::F32,
            ne.map(|d| d as usize),
            &[q, k, v],
            f,
            scale.to_bits() as usize as *mut c_void,
        )
    }
}

thread_local! {
    /// Per ggml worker thread (they live as long as their threadpool): buffers reused across heads.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

unsafe extern "C" fn attention_node<const ISA: u8>(dst: *mut RawTensor, ith: i32, nth: i32, scale: *mut c_void) {
    let scale = f32::from_bits(scale as usize as u32);
    // SAFETY: ggml calls this with the node built in `vit_attention`: src[0..3] are allocated f32 views
    // of dst's shape with unit stride along hd, dst is contiguous f32. Reads stay inside each view's
    // extent ((n_tok - 1) row strides + hd per head and tile); each thread writes only the rows of its
    // own query blocks of each tile (disjoint byte ranges, heads written one after another).
    unsafe {
        let d = NodeTensor::of(dst);
        let [hd, n_head, n_tok, tiles] = d.ne;
        let src = |i| NodeTensor::src(dst, i).expect("q, k, v");
        let (q, k, v) = (src(0), src(1), src(2));
        let blocks = n_tok.div_ceil(MR);
        let (i, n) = (ith.max(0) as usize, nth.max(1) as usize);
        let mine = blocks * i / n..blocks * (i + 1) / n;
        if mine.is_empty() {
            return;
        }
        let (r0, r1) = (mine.start * MR, (mine.end * MR).min(n_tok));
        let dmodel = hd * n_head;
        let view = |t: &NodeTensor, tile: usize, h: usize| {
            let ld = t.nb[2] / 4;
            let base = t.data.add(tile * t.nb[3] + h * t.nb[1]) as *const f32;
            (std::slice::from_raw_parts(base, (n_tok - 1) * ld + hd), ld)
        };
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            for tile in 0..tiles {
                for h in 0..n_head {
                    // Same strides for the three (checked when built).
                    let ((qs, ld), (ks, _), (vs, _)) = (view(&q, tile, h), view(&k, tile, h), view(&v, tile, h));
                    let out = std::slice::from_raw_parts_mut(
                        (d.data as *mut f32).add((tile * n_tok + r0) * dmodel + h * hd),
                        (r1 - r0 - 1) * dmodel + hd,
                    );
                    attention::head(
                        Isa::from_id(ISA),
                        qs,
                        ks,
                        vs,
                        ld,
                        n_tok,
                        hd,
                        scale,
                        mine.clone(),
                        out,
                        dmodel,
                        sc,
                    );
                }
            }
        });
    }
}
