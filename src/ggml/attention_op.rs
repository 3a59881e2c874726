//! `crate::attention` as a ggml custom node on the CPU backend: the ViT's attention over q, k, v views of
//! the fused qkv product, threads splitting each tile's query blocks.
use std::cell::RefCell;
use std::ffi::c_void;

use super::context::{shape, ty_err, Context, Tensor};
use super::{sys, Result};
use crate::attention::{self, Scratch, MR};
use crate::gguf::GgmlType;

impl Context {
    /// `softmax(scale q kᵀ) v` per head and tile: q, k, v f32 `[hd, n_head, n_tok, T]` (views with
    /// unit stride along hd, e.g. of a fused qkv product) -> contiguous f32 `[hd, n_head, n_tok, T]`,
    /// the layout of `flash_attn_ext`'s result.
    pub fn vit_attention<'a>(&'a self, q: Tensor<'a>, k: Tensor<'a>, v: Tensor<'a>, scale: f32) -> Result<Tensor<'a>> {
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
        self.reserve(1)?;
        let mut args = [q.raw(), k.raw(), v.raw()];
        // SAFETY: shapes and types checked above; ggml copies the argument pointers into the node. The
        // scale travels as the userdata pointer's value (its bits), not as a pointer.
        let p = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::F32 as u32 as sys::ggml_type,
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                args.as_mut_ptr(),
                3,
                Some(attention_node),
                sys::GGML_N_TASKS_MAX,
                scale.to_bits() as usize as *mut c_void,
            )
        };
        self.wrap(p, "vit_attention")
    }
}

thread_local! {
    /// Per ggml worker thread (they live as long as their threadpool): buffers reused across heads.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

unsafe extern "C" fn attention_node(dst: *mut sys::ggml_tensor, ith: i32, nth: i32, scale: *mut c_void) {
    let scale = f32::from_bits(scale as usize as u32);
    // SAFETY: ggml calls this with the node built in `vit_attention`: src[0..3] are allocated f32 views
    // of dst's shape with unit stride along hd, dst is contiguous f32. Reads stay inside each view's
    // extent ((n_tok - 1) row strides + hd per head and tile); each thread writes only the rows of its
    // own query blocks of each tile (disjoint byte ranges, heads written one after another).
    unsafe {
        let d = &*dst;
        let [hd, n_head, n_tok, tiles] = d.ne.map(|x| x as usize);
        let (q, k, v) = (&*d.src[0], &*d.src[1], &*d.src[2]);
        let blocks = n_tok.div_ceil(MR);
        let (i, n) = (ith.max(0) as usize, nth.max(1) as usize);
        let mine = blocks * i / n..blocks * (i + 1) / n;
        if mine.is_empty() {
            return;
        }
        let (r0, r1) = (mine.start * MR, (mine.end * MR).min(n_tok));
        let dmodel = hd * n_head;
        let view = |t: &sys::ggml_tensor, tile: usize, h: usize| {
            let ld = t.nb[2] / 4;
            let base = (t.data as *const u8).add(tile * t.nb[3] + h * t.nb[1]) as *const f32;
            (std::slice::from_raw_parts(base, (n_tok - 1) * ld + hd), ld)
        };
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            for tile in 0..tiles {
                for h in 0..n_head {
                    // Same strides for the three (checked when built).
                    let ((qs, ld), (ks, _), (vs, _)) = (view(q, tile, h), view(k, tile, h), view(v, tile, h));
                    let out = std::slice::from_raw_parts_mut(
                        (d.data as *mut f32).add((tile * n_tok + r0) * dmodel + h * hd),
                        (r1 - r0 - 1) * dmodel + hd,
                    );
                    attention::head(qs, ks, vs, ld, n_tok, hd, scale, mine.clone(), out, dmodel, sc);
                }
            }
        });
    }
}
