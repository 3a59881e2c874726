//! `crate::activation`'s erf GELU as a ggml custom node on the CPU backend, threads splitting the values.
use std::ffi::c_void;

use super::context::{ty_err, Context, Tensor};
use super::{sys, Result};
use crate::gguf::GgmlType;

impl Context {
    /// Exact (erf) GELU of a contiguous f32 tensor, by our kernel (CPU backend only: a custom op).
    pub fn gelu_erf_cpu<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>> {
        if a.ty() != GgmlType::F32 || !a.is_contiguous() {
            return Err(ty_err("gelu_erf_cpu", a, "the input must be contiguous f32"));
        }
        let ne = a.ne();
        self.reserve(1)?;
        let mut args = [a.raw()];
        // SAFETY: type and layout checked above; ggml copies the argument pointers into the node; n_tasks
        // -1 = all of the backend's threads.
        let p = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                GgmlType::F32 as u32 as sys::ggml_type,
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                args.as_mut_ptr(),
                1,
                Some(gelu_node),
                sys::GGML_N_TASKS_MAX,
                std::ptr::null_mut(),
            )
        };
        self.wrap(p, "gelu_erf_cpu")
    }
}

unsafe extern "C" fn gelu_node(dst: *mut sys::ggml_tensor, ith: i32, nth: i32, _: *mut c_void) {
    // SAFETY: ggml calls this with the node built in `gelu_erf_cpu`: src[0] contiguous f32 of the same
    // element count as dst (checked there; dst is a new contiguous tensor), both allocated. Thread `ith`
    // writes only its own range of dst.
    unsafe {
        let d = &*dst;
        let n = (d.ne[0] * d.ne[1] * d.ne[2] * d.ne[3]) as usize;
        let (i, t) = (ith.max(0) as usize, nth.max(1) as usize);
        // Ranges on 16-value boundaries (whole vectors).
        let at = |j: usize| (n.div_ceil(16) * j / t * 16).min(n);
        let (start, end) = (at(i), at(i + 1));
        let src = std::slice::from_raw_parts(((*d.src[0]).data as *const f32).add(start), end - start);
        let out = std::slice::from_raw_parts_mut((d.data as *mut f32).add(start), end - start);
        crate::activation::gelu_erf(src, out);
    }
}
