//! `activation`'s erf GELU as a ggml custom node on the CPU backend, in place (the result is a view of the
//! input: no second activation-sized buffer, which ggml's allocator would otherwise hold for a custom
//! node), threads splitting the values.
use std::ffi::c_void;

use super::Isa;
use crate::ggml::context::ty_err;
use crate::ggml::custom::{InplaceFn, NodeTensor, RawTensor};
use crate::ggml::{Context, Result, Tensor};
use crate::gguf::GgmlType;

/// Exact (erf) GELU of a contiguous f32 tensor by our kernel for `isa`, overwriting it (CPU backend only:
/// a custom op). Use it on a tensor nothing else reads, e.g. a Linear layer's fresh output.
pub fn gelu_erf_cpu<'a>(ctx: &'a Context, a: Tensor<'a>, isa: Isa) -> Result<Tensor<'a>> {
    if a.ty() != GgmlType::F32 || !a.is_contiguous() {
        return Err(ty_err("gelu_erf_cpu", a, "the input must be contiguous f32"));
    }
    let f: InplaceFn = match isa {
        Isa::Portable => gelu_node::<{ Isa::Portable as u8 }>,
        Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex => gelu_node::<{ Isa::Avx2 as u8 }>,
        Isa::Avx512Vnni => gelu_node::<{ Isa::Avx512Vnni as u8 }>,
    };
    // SAFETY: type and layout checked above (the callback relies on them); it writes only within `a`.
    unsafe { ctx.custom_inplace("gelu_erf_cpu", a, f, std::ptr::null_mut()) }
}

unsafe extern "C" fn gelu_node<const ISA: u8>(
    dst: *mut RawTensor,
    _: *const RawTensor,
    ith: i32,
    nth: i32,
    _: *mut c_void,
) {
    // SAFETY: ggml calls this with the node built in `gelu_erf_cpu`: dst is a view of the contiguous f32
    // input (checked there), allocated. Thread `ith` rewrites only its own range of it.
    unsafe {
        let d = NodeTensor::of(dst);
        let n = d.elements();
        let (i, t) = (ith.max(0) as usize, nth.max(1) as usize);
        // Ranges on 16-value boundaries (whole vectors).
        let at = |j: usize| (n.div_ceil(16) * j / t * 16).min(n);
        let (start, end) = (at(i), at(i + 1));
        let values = std::slice::from_raw_parts_mut((d.data as *mut f32).add(start), end - start);
        super::activation::gelu_erf(Isa::from_id(ISA), values);
    }
}
