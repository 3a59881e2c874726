//! `crate::activation`'s erf GELU as a ggml custom node on the CPU backend, in place (the result is a
//! view of the input: no second activation-sized buffer, which ggml's allocator would otherwise hold for a
//! custom node), threads splitting the values.
use std::ffi::c_void;

use super::context::{ty_err, Context, Tensor};
use super::{sys, Result};
use crate::gguf::GgmlType;

impl Context {
    /// Exact (erf) GELU of a contiguous f32 tensor by our kernel, overwriting it (CPU backend only: a
    /// custom op). Use it on a tensor nothing else reads, e.g. a Linear layer's fresh output.
    pub fn gelu_erf_cpu<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>> {
        if a.ty() != GgmlType::F32 || !a.is_contiguous() {
            return Err(ty_err("gelu_erf_cpu", a, "the input must be contiguous f32"));
        }
        self.reserve(2)?;
        // SAFETY: type and layout checked above (the callback relies on them); n_tasks -1 = all of the
        // backend's threads.
        let p = unsafe {
            sys::ggml_map_custom1_inplace(
                self.raw(),
                a.raw(),
                Some(gelu_node),
                sys::GGML_N_TASKS_MAX,
                std::ptr::null_mut(),
            )
        };
        self.wrap(p, "gelu_erf_cpu")
    }
}

unsafe extern "C" fn gelu_node(
    dst: *mut sys::ggml_tensor,
    _: *const sys::ggml_tensor,
    ith: i32,
    nth: i32,
    _: *mut c_void,
) {
    // SAFETY: ggml calls this with the node built in `gelu_erf_cpu`: dst is a view of the contiguous f32
    // input (checked there), allocated. Thread `ith` rewrites only its own range of it.
    unsafe {
        let d = &*dst;
        let n = (d.ne[0] * d.ne[1] * d.ne[2] * d.ne[3]) as usize;
        let (i, t) = (ith.max(0) as usize, nth.max(1) as usize);
        // Ranges on 16-value boundaries (whole vectors).
        let at = |j: usize| (n.div_ceil(16) * j / t * 16).min(n);
        let (start, end) = (at(i), at(i + 1));
        let values = std::slice::from_raw_parts_mut((d.data as *mut f32).add(start), end - start);
        crate::activation::gelu_erf(values);
    }
}
