//! Metadata-only ggml contexts, tensor handles with Rust-side shape checks, and compute graphs.
//!
//! Shapes are written in ggml order (`ne[0]` is the fastest-varying dimension, reversed from PyTorch).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::sys;
use super::{GgmlError, Result};
use crate::gguf::GgmlType;

/// A ggml context that holds tensor *metadata* only (`no_alloc`): the data lives in backend buffers
/// (weights: the mmapped GGUF; activations: the scheduler's compute buffer).
///
/// ggml aborts the process when a context's memory pool is exhausted, so the context counts the objects it
/// hands out and refuses, with an error, to go past its capacity.
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
    capacity: usize,
    used: Cell<usize>,
    graph_size: usize,
    graphs: Cell<usize>,
    /// State that custom nodes of this context point at (`Context::keep`), dropped with it.
    pub(super) kept: std::cell::RefCell<Vec<Box<dyn Send>>>,
}

// SAFETY: a ggml context is plain memory owned by this value; moving it to another thread is fine. It is
// not Sync (Cell), so no two threads build into it at once.
unsafe impl Send for Context {}

impl Context {
    /// A context for at most `max_tensors` tensors (views and ops count) and `max_graphs` graphs.
    pub fn new(max_tensors: usize, max_graphs: usize) -> Result<Self> {
        // Nodes come from this context; leaves may also come from others (weights), hence the margin.
        // `Graph::build_forward` counts before ggml could assert, so this is a size, not a guess.
        let graph_size = max_tensors + 4096;
        // SAFETY: pure size computations.
        let (t_over, g_over) = unsafe {
            (
                sys::ggml_tensor_overhead(),
                sys::ggml_graph_overhead_custom(graph_size, false),
            )
        };
        let mem_size = max_tensors
            .checked_mul(t_over)
            .and_then(|a| g_over.checked_mul(max_graphs).and_then(|b| a.checked_add(b)))
            .and_then(|s| s.checked_add(1024))
            .ok_or_else(|| GgmlError::Alloc {
                what: format!("a context for {max_tensors} tensors"),
            })?;
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: ggml_init allocates its own pool of mem_size bytes (mem_buffer NULL); it returns NULL on
        // allocation failure, which we check.
        let ptr = unsafe { sys::ggml_init(params) };
        let ptr = NonNull::new(ptr).ok_or_else(|| GgmlError::Alloc {
            what: format!("{mem_size} bytes of context"),
        })?;
        Ok(Context {
            ptr,
            capacity: max_tensors,
            used: Cell::new(0),
            graph_size,
            graphs: Cell::new(max_graphs),
            kept: Default::default(),
        })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    /// Reserves room for `n` more tensors, or errors before ggml would abort.
    pub(super) fn reserve(&self, n: usize) -> Result<()> {
        let used = self.used.get();
        if used + n > self.capacity {
            return Err(GgmlError::ContextFull {
                used,
                capacity: self.capacity,
            });
        }
        self.used.set(used + n);
        Ok(())
    }

    pub(super) fn wrap<'a>(&'a self, p: *mut sys::ggml_tensor, op: &'static str) -> Result<Tensor<'a>> {
        NonNull::new(p)
            .map(|ptr| Tensor { ptr, _ctx: PhantomData })
            .ok_or_else(|| GgmlError::Alloc {
                what: format!("the result of {op}"),
            })
    }

    /// A new tensor of type `ty` with dimensions `ne` (1 to 4, ggml order).
    pub fn new_tensor(&self, ty: GgmlType, ne: &[usize]) -> Result<Tensor<'_>> {
        if ne.is_empty() || ne.len() > 4 {
            return Err(shape("new_tensor", format!("{} dimensions (1 to 4 allowed)", ne.len())));
        }
        let mut ne64 = [1i64; 4];
        let mut total: i64 = 1;
        for (i, &n) in ne.iter().enumerate() {
            let n = i64::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| shape("new_tensor", format!("dimension {i} is {n}")))?;
            total = total
                .checked_mul(n)
                .ok_or_else(|| shape("new_tensor", format!("{ne:?} overflows")))?;
            ne64[i] = n;
        }
        if !ne[0].is_multiple_of(ty.block_size()) {
            return Err(GgmlError::Type {
                op: "new_tensor",
                ty: ty.name().into(),
                detail: format!(
                    "row length {} is not a multiple of the block size {}",
                    ne[0],
                    ty.block_size()
                ),
            });
        }
        self.reserve(1)?;
        // SAFETY: ctx is valid; ne64 holds `ne.len()` valid positive dimensions; the type id is a valid
        // ggml_type (GgmlType only holds known ids); the row length fits the block (checked above).
        let p =
            unsafe { sys::ggml_new_tensor(self.raw(), ty as u32 as sys::ggml_type, ne.len() as i32, ne64.as_ptr()) };
        self.wrap(p, "new_tensor")
    }

    /// A 1-D f32 tensor.
    pub fn new_f32(&self, ne: &[usize]) -> Result<Tensor<'_>> {
        self.new_tensor(GgmlType::F32, ne)
    }

    /// A 1-D i32 tensor (positions, row indices).
    pub fn new_i32(&self, n: usize) -> Result<Tensor<'_>> {
        self.new_tensor(GgmlType::I32, &[n])
    }

    // ---- matrix products -------------------------------------------------------------------------------

    /// `a·bᵀ` in ggml's convention: a `[k, m, ...]`, b `[k, n, ...]` -> `[m, n, ...]` (f32).
    pub fn mul_mat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>> {
        let (x, y) = (a.ne(), b.ne());
        if x[0] != y[0] || y[2] % x[2] != 0 || y[3] % x[3] != 0 {
            return Err(shape("mul_mat", format!("a {} b {}", a.desc(), b.desc())));
        }
        if a.is_transposed() {
            return Err(shape("mul_mat", format!("a {} is transposed", a.desc())));
        }
        self.reserve(1)?;
        // SAFETY: ggml_can_mul_mat and !transposed(a) checked above; both tensors are valid for 'a.
        let p = unsafe { sys::ggml_mul_mat(self.raw(), a.raw(), b.raw()) };
        self.wrap(p, "mul_mat")
    }

    /// `x·Wᵀ + b` for a Linear layer with weight `w` `[in, out]` (ggml order) and optional bias `[out]`.
    pub fn linear<'a>(&'a self, x: Tensor<'a>, w: Tensor<'a>, b: Option<Tensor<'a>>) -> Result<Tensor<'a>> {
        let y = self.mul_mat(w, x)?;
        match b {
            Some(b) => self.add(y, b),
            None => Ok(y),
        }
    }

    // ---- element-wise ----------------------------------------------------------------------------------

    fn binary<'a>(
        &'a self,
        op: &'static str,
        a: Tensor<'a>,
        b: Tensor<'a>,
        f: unsafe extern "C" fn(
            *mut sys::ggml_context,
            *mut sys::ggml_tensor,
            *mut sys::ggml_tensor,
        ) -> *mut sys::ggml_tensor,
    ) -> Result<Tensor<'a>> {
        let (x, y) = (a.ne(), b.ne());
        if (0..4).any(|i| x[i] % y[i] != 0) {
            return Err(shape(
                op,
                format!("b {} does not broadcast onto a {}", b.desc(), a.desc()),
            ));
        }
        if a.ty() != GgmlType::F32 && a.ty() != GgmlType::F16 {
            return Err(ty_err(op, a, "a must be f32 or f16"));
        }
        self.reserve(1)?;
        // SAFETY: ggml_can_repeat(b, a) checked above; tensors are valid for 'a.
        let p = unsafe { f(self.raw(), a.raw(), b.raw()) };
        self.wrap(p, op)
    }

    /// `a + b`, with b broadcast over a.
    pub fn add<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>> {
        self.binary("add", a, b, sys::ggml_add)
    }
    /// `a ⊙ b`, with b broadcast over a.
    pub fn mul<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>> {
        self.binary("mul", a, b, sys::ggml_mul)
    }

    /// `a · s`.
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Result<Tensor<'a>> {
        self.reserve(1)?;
        // SAFETY: any tensor may be scaled; valid for 'a.
        let p = unsafe { sys::ggml_scale(self.raw(), a.raw(), s) };
        self.wrap(p, "scale")
    }

    fn unary<'a>(
        &'a self,
        op: &'static str,
        a: Tensor<'a>,
        f: unsafe extern "C" fn(*mut sys::ggml_context, *mut sys::ggml_tensor) -> *mut sys::ggml_tensor,
    ) -> Result<Tensor<'a>> {
        if !a.is_contiguous_1() {
            return Err(shape(op, format!("{} is not contiguous in its rows", a.desc())));
        }
        self.reserve(1)?;
        // SAFETY: unary ops require contiguous rows (checked); valid for 'a.
        let p = unsafe { f(self.raw(), a.raw()) };
        self.wrap(p, op)
    }

    /// Exact GELU, `x·Φ(x)` with erf (not the tanh approximation): InternViT and the projector use
    /// `nn.GELU()` / ACT2FN["gelu"] (spec §1.1, §3.9).
    pub fn gelu_erf<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>> {
        self.unary("gelu_erf", a, sys::ggml_gelu_erf)
    }
    /// SiLU (Qwen2's MLP activation).
    pub fn silu<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>> {
        self.unary("silu", a, sys::ggml_silu)
    }
    /// `silu(gate) ⊙ up` in one op.
    pub fn swiglu<'a>(&'a self, gate: Tensor<'a>, up: Tensor<'a>) -> Result<Tensor<'a>> {
        if gate.ne() != up.ne() || !gate.is_contiguous_1() || !up.is_contiguous_1() {
            return Err(shape("swiglu", format!("gate {} up {}", gate.desc(), up.desc())));
        }
        self.reserve(1)?;
        // SAFETY: same shapes, contiguous rows (checked).
        let p = unsafe { sys::ggml_swiglu_split(self.raw(), gate.raw(), up.raw()) };
        self.wrap(p, "swiglu")
    }

    /// LayerNorm without affine: `(x - mean) / sqrt(var + eps)` over `ne[0]`.
    pub fn norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Result<Tensor<'a>> {
        if a.ty() != GgmlType::F32 {
            return Err(ty_err("norm", a, "needs f32"));
        }
        self.reserve(1)?;
        // SAFETY: f32 input (the CPU kernel aborts on other types).
        let p = unsafe { sys::ggml_norm(self.raw(), a.raw(), eps) };
        self.wrap(p, "norm")
    }
    /// RMSNorm without weight: `x / sqrt(mean(x²) + eps)` over `ne[0]`.
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Result<Tensor<'a>> {
        if a.ty() != GgmlType::F32 {
            return Err(ty_err("rms_norm", a, "needs f32"));
        }
        self.reserve(1)?;
        // SAFETY: f32 input.
        let p = unsafe { sys::ggml_rms_norm(self.raw(), a.raw(), eps) };
        self.wrap(p, "rms_norm")
    }

    /// Softmax over `ne[0]` of `a·scale + mask` (mask f16/f32 `[ne0, >=ne1]`, broadcast over dims 2, 3).
    pub fn soft_max_ext<'a>(&'a self, a: Tensor<'a>, mask: Option<Tensor<'a>>, scale: f32) -> Result<Tensor<'a>> {
        if !a.is_contiguous() {
            return Err(shape("soft_max", format!("{} is not contiguous", a.desc())));
        }
        if let Some(m) = mask {
            let (x, y) = (a.ne(), m.ne());
            let ok_ty = m.ty() == GgmlType::F16 || m.ty() == GgmlType::F32;
            if !ok_ty || !m.is_contiguous() || y[0] != x[0] || y[1] < x[1] || x[2] % y[2] != 0 || x[3] % y[3] != 0 {
                return Err(shape("soft_max", format!("mask {} for {}", m.desc(), a.desc())));
            }
        }
        self.reserve(1)?;
        let m = mask.map(|m| m.raw()).unwrap_or(std::ptr::null_mut());
        // SAFETY: conditions of ggml_soft_max_impl checked above.
        let p = unsafe { sys::ggml_soft_max_ext(self.raw(), a.raw(), m, scale, 0.0) };
        self.wrap(p, "soft_max")
    }

    /// Fused attention: q `[d, n_q, n_head, 1]`, k `[d, n_kv, n_head_kv, 1]`, v `[dv, n_kv, n_head_kv, 1]`,
    /// optional f16 mask `[n_kv, >=n_q]`. Result `[dv, n_head, n_q, 1]` (heads and tokens swapped).
    pub fn flash_attn_ext<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Result<Tensor<'a>> {
        let (qn, kn, vn) = (q.ne(), k.ne(), v.ne());
        if kn[0] != qn[0] || qn[2] % kn[2] != 0 || qn[3] != kn[3] || qn[3] != vn[3] || vn[1] != kn[1] || vn[2] != kn[2]
        {
            return Err(shape(
                "flash_attn_ext",
                format!("q {} k {} v {}", q.desc(), k.desc(), v.desc()),
            ));
        }
        if k.is_transposed() {
            return Err(shape("flash_attn_ext", format!("k {} is transposed", k.desc())));
        }
        if let Some(m) = mask {
            let y = m.ne();
            if m.ty() != GgmlType::F16
                || !m.is_contiguous()
                || y[0] != kn[1]
                || y[1] < qn[1]
                || qn[2] % y[2] != 0
                || qn[3] % y[3] != 0
            {
                return Err(shape(
                    "flash_attn_ext",
                    format!("mask {} for q {} k {}", m.desc(), q.desc(), k.desc()),
                ));
            }
        }
        self.reserve(1)?;
        let m = mask.map(|m| m.raw()).unwrap_or(std::ptr::null_mut());
        // SAFETY: the asserts of ggml_flash_attn_ext are checked above.
        let p = unsafe { sys::ggml_flash_attn_ext(self.raw(), q.raw(), k.raw(), v.raw(), m, scale, 0.0, 0.0) };
        let t = self.wrap(p, "flash_attn_ext")?;
        // SAFETY: t is a FLASH_ATTN_EXT node (the setter asserts that). f32 accumulation for fidelity.
        unsafe { sys::ggml_flash_attn_ext_set_prec(t.raw(), sys::GGML_PREC_F32) };
        Ok(t)
    }

    /// NEOX-style (rotate-half) RoPE over the first `n_dims` of `ne[0]`, positions `pos` (i32, one per
    /// `ne[2]` row): a `[head_dim, n_head, n_tokens]`.
    pub fn rope_neox<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        n_dims: usize,
        freq_base: f32,
        n_ctx_orig: usize,
    ) -> Result<Tensor<'a>> {
        let (x, p) = (a.ne(), pos.ne());
        if pos.ty() != GgmlType::I32 || p[1] != 1 || p[2] != 1 || p[3] != 1 || x[2] != p[0] {
            return Err(shape("rope", format!("positions {} for {}", pos.desc(), a.desc())));
        }
        if n_dims == 0 || !n_dims.is_multiple_of(2) || n_dims as i64 > x[0] {
            return Err(shape("rope", format!("n_dims {n_dims} for {}", a.desc())));
        }
        self.reserve(1)?;
        // SAFETY: positions are an i32 vector with one entry per ne[2] (checked); mode NEOX is even.
        let p = unsafe {
            sys::ggml_rope_ext(
                self.raw(),
                a.raw(),
                pos.raw(),
                std::ptr::null_mut(),
                n_dims as i32,
                sys::GGML_ROPE_TYPE_NEOX as i32,
                n_ctx_orig as i32,
                freq_base,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
            )
        };
        self.wrap(p, "rope")
    }

    /// Rows of `a` selected by the i32 indices `idx`: a `[n, rows]`, idx `[k]` -> `[n, k]` (f32).
    pub fn get_rows<'a>(&'a self, a: Tensor<'a>, idx: Tensor<'a>) -> Result<Tensor<'a>> {
        let (x, i) = (a.ne(), idx.ne());
        if idx.ty() != GgmlType::I32 || x[2] != i[1] || i[3] != 1 {
            return Err(shape("get_rows", format!("indices {} for {}", idx.desc(), a.desc())));
        }
        self.reserve(1)?;
        // SAFETY: asserts of ggml_get_rows checked above.
        let p = unsafe { sys::ggml_get_rows(self.raw(), a.raw(), idx.raw()) };
        self.wrap(p, "get_rows")
    }

    /// Writes the rows of `src` into `dst` at the i64/i32 row indices `idx` (KV cache stores).
    pub fn set_rows<'a>(&'a self, dst: Tensor<'a>, src: Tensor<'a>, idx: Tensor<'a>) -> Result<Tensor<'a>> {
        let (a, b, c) = (dst.ne(), src.ne(), idx.ne());
        let ok = a[0] == b[0]
            && a[2] == b[2]
            && a[3] == b[3]
            && b[1] == c[0]
            && b[2] % c[1] == 0
            && b[3] % c[2] == 0
            && c[3] == 1
            && (src.ty() == GgmlType::F32 || src.ty() == GgmlType::F16)
            && (idx.ty() == GgmlType::I64 || idx.ty() == GgmlType::I32)
            && dst.is_contiguous_rows()
            && src.is_contiguous_rows();
        if !ok {
            return Err(shape(
                "set_rows",
                format!("dst {} src {} idx {}", dst.desc(), src.desc(), idx.desc()),
            ));
        }
        self.reserve(1)?;
        // SAFETY: asserts of ggml_set_rows checked above.
        let p = unsafe { sys::ggml_set_rows(self.raw(), dst.raw(), src.raw(), idx.raw()) };
        self.wrap(p, "set_rows")
    }

    // ---- layout ----------------------------------------------------------------------------------------

    /// Same data, new shape (the tensor must be contiguous and the element counts equal).
    pub fn reshape<'a>(&'a self, a: Tensor<'a>, ne: &[usize]) -> Result<Tensor<'a>> {
        if ne.is_empty() || ne.len() > 4 {
            return Err(shape("reshape", format!("{} dimensions", ne.len())));
        }
        let n: i64 = ne.iter().map(|&x| x as i64).product();
        if !a.is_contiguous() || n != a.nelements() || ne.contains(&0) {
            return Err(shape("reshape", format!("{} to {ne:?}", a.desc())));
        }
        if !ne[0].is_multiple_of(a.ty().block_size()) {
            return Err(ty_err("reshape", a, "new row length not a multiple of the block size"));
        }
        self.reserve(1)?;
        let d: Vec<i64> = ne.iter().map(|&x| x as i64).collect();
        // SAFETY: contiguous, same element count (checked).
        let p = unsafe {
            match d.len() {
                1 => sys::ggml_reshape_1d(self.raw(), a.raw(), d[0]),
                2 => sys::ggml_reshape_2d(self.raw(), a.raw(), d[0], d[1]),
                3 => sys::ggml_reshape_3d(self.raw(), a.raw(), d[0], d[1], d[2]),
                _ => sys::ggml_reshape_4d(self.raw(), a.raw(), d[0], d[1], d[2], d[3]),
            }
        };
        self.wrap(p, "reshape")
    }

    /// Permutes the axes: source axis i goes to position `axes[i]` (ggml's convention).
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [usize; 4]) -> Result<Tensor<'a>> {
        let mut seen = [false; 4];
        for &x in &axes {
            if x > 3 || seen[x] {
                return Err(shape("permute", format!("axes {axes:?}")));
            }
            seen[x] = true;
        }
        self.reserve(1)?;
        // SAFETY: axes are a permutation of 0..4 (checked).
        let p = unsafe {
            sys::ggml_permute(
                self.raw(),
                a.raw(),
                axes[0] as i32,
                axes[1] as i32,
                axes[2] as i32,
                axes[3] as i32,
            )
        };
        self.wrap(p, "permute")
    }

    /// Swaps dims 0 and 1 (a view).
    pub fn transpose<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>> {
        self.reserve(1)?;
        // SAFETY: always valid.
        let p = unsafe { sys::ggml_transpose(self.raw(), a.raw()) };
        self.wrap(p, "transpose")
    }

    /// A contiguous copy.
    pub fn cont<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>> {
        self.reserve(1)?;
        // SAFETY: always valid.
        let p = unsafe { sys::ggml_cont(self.raw(), a.raw()) };
        self.wrap(p, "cont")
    }

    /// Copies `a` into `b` (element counts equal; converts types).
    pub fn cpy<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>> {
        if a.nelements() != b.nelements() {
            return Err(shape("cpy", format!("{} into {}", a.desc(), b.desc())));
        }
        self.reserve(1)?;
        // SAFETY: same element count (checked).
        let p = unsafe { sys::ggml_cpy(self.raw(), a.raw(), b.raw()) };
        self.wrap(p, "cpy")
    }

    /// A strided view of `a`: dims `ne`, byte strides `nb` for dims 1.., starting `offset` bytes in.
    /// The whole extent must lie inside `a`'s data.
    pub fn view<'a>(&'a self, a: Tensor<'a>, ne: &[usize], nb: &[usize], offset: usize) -> Result<Tensor<'a>> {
        if ne.is_empty() || ne.len() > 4 || nb.len() + 1 != ne.len() || ne.contains(&0) {
            return Err(shape("view", format!("ne {ne:?} nb {nb:?}")));
        }
        // Last byte touched: offset + row bytes of the first dim + sum (ne[i]-1)*nb[i].
        let row = a
            .ty()
            .row_size(ne[0])
            .ok_or_else(|| ty_err("view", a, "row length not a multiple of the block size"))?;
        let mut end = offset.checked_add(row);
        for i in 1..ne.len() {
            end = end.and_then(|e| (ne[i] - 1).checked_mul(nb[i - 1]).and_then(|x| e.checked_add(x)));
        }
        match end {
            Some(e) if e <= a.nbytes() => {}
            _ => {
                return Err(shape(
                    "view",
                    format!(
                        "ne {ne:?} nb {nb:?} at offset {offset} outside {} ({} bytes)",
                        a.desc(),
                        a.nbytes()
                    ),
                ))
            }
        }
        self.reserve(1)?;
        let d: Vec<i64> = ne.iter().map(|&x| x as i64).collect();
        // SAFETY: the view's extent lies within a's data (checked above).
        let p = unsafe {
            match d.len() {
                1 => sys::ggml_view_1d(self.raw(), a.raw(), d[0], offset),
                2 => sys::ggml_view_2d(self.raw(), a.raw(), d[0], d[1], nb[0], offset),
                3 => sys::ggml_view_3d(self.raw(), a.raw(), d[0], d[1], d[2], nb[0], nb[1], offset),
                _ => sys::ggml_view_4d(self.raw(), a.raw(), d[0], d[1], d[2], d[3], nb[0], nb[1], nb[2], offset),
            }
        };
        self.wrap(p, "view")
    }

    /// Concatenates along `dim` (same type, other dims equal).
    pub fn concat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, dim: usize) -> Result<Tensor<'a>> {
        let (x, y) = (a.ne(), b.ne());
        if dim > 3 || a.ty() != b.ty() || (0..4).any(|d| d != dim && x[d] != y[d]) {
            return Err(shape("concat", format!("{} and {} along {dim}", a.desc(), b.desc())));
        }
        self.reserve(1)?;
        // SAFETY: asserts of ggml_concat checked above.
        let p = unsafe { sys::ggml_concat(self.raw(), a.raw(), b.raw(), dim as i32) };
        self.wrap(p, "concat")
    }

    /// Repeats `a` to shape `ne` (each dim of `ne` a multiple of a's).
    pub fn repeat<'a>(&'a self, a: Tensor<'a>, ne: [usize; 4]) -> Result<Tensor<'a>> {
        let x = a.ne();
        if (0..4).any(|i| ne[i] == 0 || ne[i] as i64 % x[i] != 0) {
            return Err(shape("repeat", format!("{} to {ne:?}", a.desc())));
        }
        self.reserve(1)?;
        // SAFETY: a can be repeated to ne (checked).
        let p = unsafe {
            sys::ggml_repeat_4d(
                self.raw(),
                a.raw(),
                ne[0] as i64,
                ne[1] as i64,
                ne[2] as i64,
                ne[3] as i64,
            )
        };
        self.wrap(p, "repeat")
    }

    /// The tensor of this context called `name`.
    pub fn tensor_by_name(&self, name: &str) -> Result<Tensor<'_>> {
        let c = CString::new(name).map_err(|_| GgmlError::Tensor {
            name: name.into(),
            detail: "name contains NUL".into(),
        })?;
        // SAFETY: valid context and NUL-terminated name; NULL means not found.
        let p = unsafe { sys::ggml_get_tensor(self.raw(), c.as_ptr()) };
        NonNull::new(p)
            .map(|ptr| Tensor { ptr, _ctx: PhantomData })
            .ok_or_else(|| GgmlError::Tensor {
                name: name.into(),
                detail: "no such tensor in the context".into(),
            })
    }

    /// A new compute graph (its size always covers every tensor this context can hold).
    pub fn new_graph(&self) -> Result<Graph<'_>> {
        if self.graphs.get() == 0 {
            return Err(GgmlError::Alloc {
                what: "a graph (the context was created for none)".into(),
            });
        }
        self.graphs.set(self.graphs.get() - 1);
        // SAFETY: ctx has room for this graph (reserved at creation).
        let p = unsafe { sys::ggml_new_graph_custom(self.raw(), self.graph_size, false) };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc { what: "a graph".into() })?;
        Ok(Graph {
            ptr,
            size: self.graph_size,
            visited: HashSet::new(),
            _ctx: PhantomData,
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was created by ggml_init and is freed once; tensors borrowing it cannot
        // outlive it (lifetimes).
        unsafe { sys::ggml_free(self.ptr.as_ptr()) };
    }
}

pub(crate) fn shape(op: &'static str, detail: String) -> GgmlError {
    GgmlError::Shape { op, detail }
}

pub(crate) fn ty_err(op: &'static str, t: Tensor<'_>, detail: &str) -> GgmlError {
    GgmlError::Type {
        op,
        ty: t.ty().name().into(),
        detail: format!("{}: {detail}", t.desc()),
    }
}

/// A handle to a tensor of a `Context`; valid while that context lives.
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'a Context>,
}

impl<'a> Tensor<'a> {
    /// A handle to a tensor known to live in `ctx` (used by the weight store).
    pub(crate) fn from_raw(ptr: NonNull<sys::ggml_tensor>, _ctx: &'a Context) -> Self {
        Tensor { ptr, _ctx: PhantomData }
    }
    pub(crate) fn raw(&self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }
    fn get(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives in a context that outlives 'a; we only read plain fields.
        unsafe { self.ptr.as_ref() }
    }
    /// Dimensions, ggml order.
    pub fn ne(&self) -> [i64; 4] {
        self.get().ne
    }
    /// Byte strides.
    pub fn nb(&self) -> [usize; 4] {
        self.get().nb
    }
    pub fn ty(&self) -> GgmlType {
        // Tensors are only created through this module with known types, and ggml's ops produce
        // f32/f16/i32 results.
        GgmlType::from_u32(self.get().type_).unwrap_or(GgmlType::F32)
    }
    pub fn nelements(&self) -> i64 {
        self.ne().iter().product()
    }
    pub fn nbytes(&self) -> usize {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }
    /// Names the tensor (truncated to ggml's 63 bytes) so a stage can be found and dumped.
    pub fn set_name(self, name: &str) -> Self {
        let clean: String = name.chars().filter(|&c| c != '\0').take(63).collect();
        if let Ok(c) = CString::new(clean) {
            // SAFETY: c is NUL-terminated and at most 63 bytes; ggml copies it.
            unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        }
        self
    }
    pub fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .get()
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    /// Marks the tensor as a graph input (the scheduler allocates it first and never reuses it early).
    pub fn set_input(self) -> Self {
        // SAFETY: valid tensor; sets a flag.
        unsafe { sys::ggml_set_input(self.raw()) };
        self
    }
    /// Marks the tensor as a graph output (its memory is not reused by later nodes).
    pub fn set_output(self) -> Self {
        // SAFETY: valid tensor; sets a flag.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: valid tensor; pure predicate.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }
    pub fn is_contiguous_1(&self) -> bool {
        // SAFETY: valid tensor; pure predicate.
        unsafe { sys::ggml_is_contiguous_1(self.raw()) }
    }
    pub fn is_contiguous_rows(&self) -> bool {
        // SAFETY: valid tensor; pure predicate.
        unsafe { sys::ggml_is_contiguous_rows(self.raw()) }
    }
    pub fn is_transposed(&self) -> bool {
        // SAFETY: valid tensor; pure predicate.
        unsafe { sys::ggml_is_transposed(self.raw()) }
    }
    /// Whether the tensor has backing memory (allocated in a buffer).
    pub fn has_data(&self) -> bool {
        !self.get().data.is_null() && !self.get().buffer.is_null()
    }
    fn desc(&self) -> String {
        let ne = self.ne();
        format!(
            "'{}' {} [{}, {}, {}, {}]",
            self.name(),
            self.ty().name(),
            ne[0],
            ne[1],
            ne[2],
            ne[3]
        )
    }

    fn check_io(&self, bytes: usize, what: &str) -> super::Result<()> {
        if !self.has_data() {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: format!("{what}: the tensor is not allocated"),
            });
        }
        if bytes != self.nbytes() {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: format!("{what}: {bytes} bytes given for a tensor of {} bytes", self.nbytes()),
            });
        }
        Ok(())
    }

    /// Copies raw bytes into the (allocated) tensor; the size must match exactly.
    pub fn set_bytes(&self, data: &[u8]) -> super::Result<()> {
        self.check_io(data.len(), "set")?;
        // SAFETY: the tensor is allocated in a backend buffer and data has exactly nbytes bytes.
        unsafe { sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), 0, data.len()) };
        Ok(())
    }
    /// Sets an f32 tensor from a slice of the same element count.
    pub fn set_f32(&self, data: &[f32]) -> super::Result<()> {
        if self.ty() != GgmlType::F32 {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: format!("set_f32 on a {} tensor", self.ty().name()),
            });
        }
        // SAFETY: reinterpreting f32s as bytes is always valid.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) };
        self.set_bytes(bytes)
    }
    /// Sets an i32 tensor.
    pub fn set_i32(&self, data: &[i32]) -> super::Result<()> {
        if self.ty() != GgmlType::I32 {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: format!("set_i32 on a {} tensor", self.ty().name()),
            });
        }
        // SAFETY: reinterpreting i32s as bytes is always valid.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) };
        self.set_bytes(bytes)
    }
    /// Sets an f16 tensor from f32 values.
    pub fn set_f16_from_f32(&self, data: &[f32]) -> super::Result<()> {
        if self.ty() != GgmlType::F16 {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: format!("set_f16 on a {} tensor", self.ty().name()),
            });
        }
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        self.set_bytes(&bytes)
    }
    /// The bytes of a tensor that lives in host memory (a CPU buffer), without copying.
    pub fn host_bytes(&self) -> super::Result<&'a [u8]> {
        if !self.has_data() || !self.is_contiguous() {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: "not an allocated contiguous tensor".into(),
            });
        }
        // SAFETY: the tensor has a buffer; is it host memory? ggml_backend_buffer_is_host tells.
        let host = unsafe { sys::ggml_backend_buffer_is_host(self.get().buffer) };
        if !host {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: "lives in device memory".into(),
            });
        }
        // SAFETY: host memory of nbytes bytes, owned by a buffer that lives as long as the tensor's context
        // ('a): weight stores keep their buffers with their context.
        Ok(unsafe { std::slice::from_raw_parts(self.get().data as *const u8, self.nbytes()) })
    }

    /// Reads an f32 tensor (contiguous) into a Vec.
    pub fn get_f32(&self) -> super::Result<Vec<f32>> {
        if self.ty() != GgmlType::F32 || !self.is_contiguous() {
            return Err(GgmlError::Tensor {
                name: self.name(),
                detail: format!("get_f32 needs a contiguous f32 tensor, not {}", self.desc()),
            });
        }
        let n = self.nelements() as usize;
        let mut out = vec![0f32; n];
        self.check_io(n * 4, "get")?;
        // SAFETY: the tensor is allocated, contiguous f32 with n elements; out has room for n f32s.
        unsafe { sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), 0, n * 4) };
        Ok(out)
    }
}

/// A compute graph built in a `Context`.
pub struct Graph<'a> {
    ptr: NonNull<sys::ggml_cgraph>,
    size: usize,
    /// Every tensor already in the graph (nodes and leaves), to count before ggml would assert.
    visited: HashSet<usize>,
    _ctx: PhantomData<&'a Context>,
}

impl<'a> Graph<'a> {
    pub(crate) fn raw(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }
    /// Adds `t` and everything it depends on, or errors if the graph would overflow (ggml aborts then).
    pub fn build_forward(&mut self, t: Tensor<'a>) -> Result<()> {
        let mut stack = vec![t.raw()];
        let mut new = HashSet::new();
        while let Some(p) = stack.pop() {
            let key = p as usize;
            if self.visited.contains(&key) || !new.insert(key) {
                continue;
            }
            // SAFETY: p is a tensor reachable from t through src pointers; all live in contexts that
            // outlive 'a.
            let srcs = unsafe { (*p).src };
            stack.extend(srcs.iter().copied().filter(|s| !s.is_null()));
        }
        if self.visited.len() + new.len() > self.size {
            return Err(GgmlError::Alloc {
                what: format!(
                    "a graph of {} tensors (capacity {})",
                    self.visited.len() + new.len(),
                    self.size
                ),
            });
        }
        self.visited.extend(new);
        // SAFETY: valid graph and tensor; the node and leaf counts fit the graph's size (checked above).
        unsafe { sys::ggml_build_forward_expand(self.raw(), t.raw()) };
        Ok(())
    }
    pub fn n_nodes(&self) -> usize {
        // SAFETY: valid graph.
        unsafe { sys::ggml_graph_n_nodes(self.raw()) as usize }
    }
}
