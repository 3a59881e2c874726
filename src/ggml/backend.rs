//! Backends (CPU now, a GPU device through ggml's registry), buffers, the scheduler and the threadpool.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use super::context::{Context, Graph};
use super::sys;
use super::{GgmlError, Result};

/// Which device a backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    Gpu,
}

/// A ggml backend (owned; freed on drop).
pub struct Backend {
    ptr: NonNull<sys::ggml_backend>,
    kind: BackendKind,
    name: String,
}

// SAFETY: a ggml backend may be used from another thread as long as it is not used concurrently; Backend
// is not Sync, and the owners (Session) serialize use.
unsafe impl Send for Backend {}

impl Backend {
    /// The CPU backend with `n_threads` threads.
    pub fn cpu(n_threads: usize) -> Result<Self> {
        super::check_version()?;
        // SAFETY: ggml_backend_cpu_init has no preconditions; NULL is checked.
        let p = unsafe { sys::ggml_backend_cpu_init() };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Backend("the CPU backend could not be created".into()))?;
        let b = Backend {
            ptr,
            kind: BackendKind::Cpu,
            name: "CPU".into(),
        };
        b.set_n_threads(n_threads);
        Ok(b)
    }

    /// The first GPU device of ggml's registry, if one was compiled in and found.
    pub fn gpu() -> Result<Self> {
        super::check_version()?;
        // SAFETY: registry queries; NULL means no such device.
        let dev = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU) };
        if dev.is_null() {
            // SAFETY: registry query by a NUL-terminated name; NULL when no such backend was compiled in.
            let has_cuda = !unsafe { sys::ggml_backend_reg_by_name(c"CUDA".as_ptr()) }.is_null();
            return Err(GgmlError::Backend(if has_cuda {
                "no GPU device: this build has ggml's CUDA backend, but it found no usable GPU (no NVIDIA GPU, or no \
                 driver, or a driver older than the CUDA runtime of the build: ggml's own message above says which)"
                    .into()
            } else {
                "no GPU device: this build has no GPU backend (build with `--features cuda`)".into()
            }));
        }
        // SAFETY: dev is a registered device; name is a static string.
        let name = unsafe {
            CStr::from_ptr(sys::ggml_backend_dev_name(dev))
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: dev is valid; NULL params means defaults.
        let p = unsafe { sys::ggml_backend_dev_init(dev, std::ptr::null()) };
        let ptr =
            NonNull::new(p).ok_or_else(|| GgmlError::Backend(format!("GPU device {name} failed to initialize")))?;
        Ok(Backend {
            ptr,
            kind: BackendKind::Gpu,
            name,
        })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_backend {
        self.ptr.as_ptr()
    }
    pub fn kind(&self) -> BackendKind {
        self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Threads for the CPU backend (ignored elsewhere).
    pub fn set_n_threads(&self, n: usize) {
        if self.kind == BackendKind::Cpu {
            // SAFETY: this is a CPU backend (checked).
            unsafe { sys::ggml_backend_cpu_set_n_threads(self.raw(), n.clamp(1, 512) as i32) };
        }
    }

    /// Attaches a persistent threadpool (CPU only): its threads stay alive between graph computations,
    /// which matters for token-by-token decoding.
    pub fn set_threadpool(&self, tp: &Threadpool) {
        if self.kind == BackendKind::Cpu {
            // SAFETY: CPU backend; the caller keeps `tp` alive as long as this backend computes (Session
            // owns both and drops the backend first).
            unsafe { sys::ggml_backend_cpu_set_threadpool(self.raw(), tp.ptr.as_ptr()) };
        }
    }

    /// A buffer of `size` bytes on this backend.
    pub fn alloc_buffer(&self, size: usize) -> Result<Buffer> {
        // SAFETY: valid backend; NULL checked.
        let p = unsafe { sys::ggml_backend_alloc_buffer(self.raw(), size.max(1)) };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc {
            what: format!("a {size}-byte {} buffer", self.name),
        })?;
        Ok(Buffer { ptr, _owner: None })
    }

    /// Allocates every tensor of `ctx` in one buffer of this backend.
    pub fn alloc_ctx_tensors(&self, ctx: &Context) -> Result<Buffer> {
        // SAFETY: valid context and backend; returns NULL on failure or when the context has no tensors.
        let p = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.raw(), self.raw()) };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc {
            what: format!("the tensors of a context on {}", self.name),
        })?;
        Ok(Buffer { ptr, _owner: None })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: created by ggml_backend_*_init and freed once.
        unsafe { sys::ggml_backend_free(self.ptr.as_ptr()) };
    }
}

/// A backend buffer. When made from host memory (the mmapped GGUF), it keeps the memory's owner alive.
pub struct Buffer {
    ptr: NonNull<sys::ggml_backend_buffer>,
    _owner: Option<Arc<dyn Send + Sync>>,
}

// SAFETY: a buffer is a region of memory; ggml does not tie it to a thread.
unsafe impl Send for Buffer {}
// SAFETY: after setup, buffers are only read through ggml graphs (weights), which is thread-safe.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// Wraps host memory as a CPU buffer without copying (weights used in place from the mmap).
    /// `owner` keeps the memory alive; `data` must point into it.
    pub fn cpu_from_host(owner: Arc<dyn Send + Sync>, data: &[u8]) -> Result<Self> {
        // ggml asserts 32-byte alignment of host buffers; a mapped GGUF's data section always has it.
        if !(data.as_ptr() as usize).is_multiple_of(32) {
            return Err(GgmlError::Alloc {
                what: "a CPU buffer over memory that is not 32-byte aligned".into(),
            });
        }
        // SAFETY: data is valid for data.len() bytes as long as `owner` lives, and the Buffer holds owner.
        // ggml only reads weights (the buffer usage is set to WEIGHTS).
        let p = unsafe { sys::ggml_backend_cpu_buffer_from_ptr(data.as_ptr() as *mut _, data.len()) };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc {
            what: "a CPU buffer over the mapped file".into(),
        })?;
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_set_usage(ptr.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) };
        Ok(Buffer {
            ptr,
            _owner: Some(owner),
        })
    }

    pub fn size(&self) -> usize {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.ptr.as_ptr()) }
    }

    fn base(&self) -> usize {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_base(self.ptr.as_ptr()) as usize }
    }

    /// Places `t` at byte `offset` of this buffer (zero-copy: the tensor's data *is* the buffer's memory).
    pub fn place(&self, t: super::Tensor<'_>, offset: usize) -> Result<()> {
        let end = offset.checked_add(t.nbytes());
        if end.map(|e| e > self.size()).unwrap_or(true) {
            return Err(GgmlError::Tensor {
                name: t.name(),
                detail: format!(
                    "{} bytes at offset {offset} do not fit a buffer of {}",
                    t.nbytes(),
                    self.size()
                ),
            });
        }
        if t.has_data() {
            return Err(GgmlError::Tensor {
                name: t.name(),
                detail: "already allocated".into(),
            });
        }
        let addr = (self.base() + offset) as *mut std::ffi::c_void;
        // SAFETY: the tensor is unallocated and [addr, addr + nbytes) lies inside this buffer (checked).
        let st = unsafe { sys::ggml_backend_tensor_alloc(self.ptr.as_ptr(), t.raw(), addr) };
        if st != sys::GGML_STATUS_SUCCESS {
            return Err(GgmlError::Tensor {
                name: t.name(),
                detail: format!("placement failed with status {st}"),
            });
        }
        Ok(())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: created by ggml and freed once; the owner (if any) is dropped after this.
        unsafe { sys::ggml_backend_buffer_free(self.ptr.as_ptr()) };
    }
}

/// A persistent CPU threadpool.
pub struct Threadpool {
    ptr: NonNull<sys::ggml_threadpool>,
}

// SAFETY: the threadpool is an owned handle; ggml synchronizes its worker threads internally.
unsafe impl Send for Threadpool {}

impl Threadpool {
    pub fn new(n_threads: usize) -> Result<Self> {
        // SAFETY: plain parameter initialization, then creation; NULL is checked.
        let p = unsafe {
            let mut params = sys::ggml_threadpool_params_default(n_threads.clamp(1, 512) as i32);
            sys::ggml_threadpool_new(&mut params)
        };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc {
            what: format!("a threadpool of {n_threads} threads"),
        })?;
        Ok(Threadpool { ptr })
    }
}

impl Drop for Threadpool {
    fn drop(&mut self) {
        // SAFETY: created by ggml_threadpool_new, freed once; backends using it are dropped first by owners.
        unsafe { sys::ggml_threadpool_free(self.ptr.as_ptr()) };
    }
}

/// `ggml_backend_sched`: allocates a graph's intermediate tensors in reusable compute buffers and splits
/// work between backends (ops a GPU cannot run fall back to the CPU, which must be last).
pub struct Sched {
    ptr: NonNull<sys::ggml_backend_sched>,
    /// This scheduler among all (process-wide counter) and how many times it has planned a graph: the pair
    /// names the graph it holds now, so that a `KeptGraph` knows whether it is still the allocated one.
    id: u64,
    plans: u64,
}

// SAFETY: owned handle, used by one thread at a time (not Sync).
unsafe impl Send for Sched {}

impl Sched {
    /// A scheduler over `backends` (CPU last) for graphs of up to `graph_size` nodes.
    pub fn new(backends: &[&Backend], graph_size: usize) -> Result<Self> {
        if backends.is_empty() || backends.last().map(|b| b.kind) != Some(BackendKind::Cpu) {
            return Err(GgmlError::Backend("the scheduler needs the CPU backend last".into()));
        }
        let mut raw: Vec<sys::ggml_backend_t> = backends.iter().map(|b| b.raw()).collect();
        // SAFETY: raw holds valid backends, the last being CPU; NULL buffer types mean defaults.
        let p = unsafe {
            sys::ggml_backend_sched_new(
                raw.as_mut_ptr(),
                std::ptr::null_mut(),
                raw.len() as i32,
                graph_size + 4096,
                false,
                true,
            )
        };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc {
            what: "a backend scheduler".into(),
        })?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Sched { ptr, id, plans: 0 })
    }

    /// Allocates `g`'s tensors (inputs can be set after this, before `compute`).
    pub fn alloc(&mut self, g: &Graph<'_>) -> Result<()> {
        self.alloc_raw(g.raw())
    }

    /// `alloc` of a graph that lives as long as this call (a `Graph` or a `KeptGraph`'s).
    pub(super) fn alloc_raw(&mut self, g: *mut sys::ggml_cgraph) -> Result<()> {
        self.plans += 1;
        // SAFETY: valid scheduler; reset first so a previous graph's assignment is dropped.
        unsafe { sys::ggml_backend_sched_reset(self.ptr.as_ptr()) };
        // SAFETY: valid scheduler and graph.
        if unsafe { sys::ggml_backend_sched_alloc_graph(self.ptr.as_ptr(), g) } {
            Ok(())
        } else {
            Err(GgmlError::Alloc {
                what: "the graph's tensors".into(),
            })
        }
    }

    /// Computes an allocated graph.
    pub fn compute(&mut self, g: &Graph<'_>) -> Result<()> {
        self.compute_raw(g.raw())
    }

    /// `compute` of a graph that lives as long as this call (a `Graph` or a `KeptGraph`'s).
    pub(super) fn compute_raw(&mut self, g: *mut sys::ggml_cgraph) -> Result<()> {
        // SAFETY: valid scheduler and a graph; the scheduler allocates it first if it is not (ggml's
        // `ggml_backend_sched_graph_compute` does when no graph is allocated).
        let st = unsafe { sys::ggml_backend_sched_graph_compute(self.ptr.as_ptr(), g) };
        if st != sys::GGML_STATUS_SUCCESS {
            return Err(GgmlError::Compute(st));
        }
        Ok(())
    }

    /// Bytes the compute buffers would need for `g`, one figure per backend of the scheduler (in the order
    /// given to [`Sched::new`]), planned by ggml's allocator without allocating anything
    /// (`ggml_backend_sched_reserve_size`). Memory budgets (`crate::budget`) measure graphs with it.
    pub fn reserve_size(&mut self, g: &Graph<'_>) -> Vec<usize> {
        self.plans += 1;
        // SAFETY: valid scheduler.
        let n = unsafe { sys::ggml_backend_sched_get_n_backends(self.ptr.as_ptr()) }.max(0) as usize;
        let mut sizes = vec![0usize; n.max(1)];
        // SAFETY: valid scheduler and graph (the graph fits the hash set, as for `alloc`); `sizes` has one
        // slot per backend of the scheduler.
        unsafe { sys::ggml_backend_sched_reserve_size(self.ptr.as_ptr(), g.raw(), sizes.as_mut_ptr()) };
        sizes.truncate(n);
        sizes
    }

    /// Names the graph allocated now (changes with every `alloc`, `reserve` or `reserve_size`).
    pub(super) fn allocation(&self) -> (u64, u64) {
        (self.id, self.plans)
    }

    /// Bytes of compute buffer held on backend `i` (for memory reports).
    pub fn buffer_size(&self, backend: &Backend) -> usize {
        // SAFETY: valid scheduler and backend.
        unsafe { sys::ggml_backend_sched_get_buffer_size(self.ptr.as_ptr(), backend.raw()) }
    }
}

impl Drop for Sched {
    fn drop(&mut self) {
        // SAFETY: created by ggml_backend_sched_new, freed once.
        unsafe { sys::ggml_backend_sched_free(self.ptr.as_ptr()) };
    }
}

/// Names of the devices ggml's registry knows (for `--device` help and reports).
pub fn device_names() -> Vec<String> {
    let mut v = Vec::new();
    // SAFETY: registry enumeration; names are static strings.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let d = sys::ggml_backend_dev_get(i);
            if !d.is_null() {
                v.push(
                    CStr::from_ptr(sys::ggml_backend_dev_name(d))
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    v
}

#[allow(dead_code)]
fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| GgmlError::Backend(format!("name {s:?} contains NUL")))
}

/// A ggml buffer type. Buffer types are static objects inside ggml: never freed.
#[derive(Clone, Copy)]
pub struct BufferType {
    ptr: NonNull<sys::ggml_backend_buffer_type>,
}

// SAFETY: buffer types are immutable static descriptors in ggml.
unsafe impl Send for BufferType {}
// SAFETY: see above.
unsafe impl Sync for BufferType {}

/// The CPU device (always registered).
fn cpu_device() -> Result<sys::ggml_backend_dev_t> {
    // SAFETY: registry query; NULL checked.
    let dev = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    if dev.is_null() {
        return Err(GgmlError::Backend("no CPU device in ggml's registry".into()));
    }
    Ok(dev)
}

/// The CPU device's extra weight buffer types, in ggml's order of preference: layouts that its matrix
/// kernels read faster than the file's (the "repack" type interleaves q4_0 rows for the AVX2/AVX-512 and
/// NEON GEMM kernels; AMX when built for it). Empty when the CPU or the build has none.
pub fn cpu_extra_buffer_types() -> Vec<BufferType> {
    let Ok(dev) = cpu_device() else {
        return Vec::new();
    };
    // SAFETY: dev is the registered CPU device; its registry is static.
    let reg = unsafe { sys::ggml_backend_dev_backend_reg(dev) };
    if reg.is_null() {
        return Vec::new();
    }
    let name = c"ggml_backend_dev_get_extra_bufts";
    // SAFETY: reg is valid; name is NUL-terminated; NULL means the registry does not offer the function.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if f.is_null() {
        return Vec::new();
    }
    type GetExtraBufts = unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *mut sys::ggml_backend_buffer_type_t;
    // SAFETY: ggml documents this proc address as `ggml_backend_dev_get_extra_bufts_t`, which has this
    // signature (ggml-backend.h).
    let get: GetExtraBufts = unsafe { std::mem::transmute::<*mut std::ffi::c_void, GetExtraBufts>(f) };
    // SAFETY: returns a NULL-terminated static array (or NULL).
    let mut p = unsafe { get(dev) };
    let mut out = Vec::new();
    while !p.is_null() {
        // SAFETY: p points into the NULL-terminated array.
        let b = unsafe { *p };
        match NonNull::new(b) {
            Some(ptr) => out.push(BufferType { ptr }),
            None => break,
        }
        // SAFETY: not yet at the terminator, so the next element exists.
        p = unsafe { p.add(1) };
    }
    out
}

impl BufferType {
    pub fn name(&self) -> String {
        // SAFETY: valid buffer type; the name is a static string.
        unsafe { CStr::from_ptr(sys::ggml_backend_buft_name(self.ptr.as_ptr())) }
            .to_string_lossy()
            .into_owned()
    }

    /// Whether the CPU device would run `mul_mat(w, x)` (x f32) with `w` stored in this buffer type. Asked
    /// the way ggml asks itself: a throw-away op whose weight sits in an empty buffer of this type.
    pub fn cpu_supports_matmul(&self, w: super::Tensor<'_>) -> bool {
        let Ok(dev) = cpu_device() else {
            return false;
        };
        let ne = w.ne();
        if ne[2] != 1 || ne[3] != 1 {
            return false;
        }
        let Ok(ctx) = Context::new(4, 0) else {
            return false;
        };
        let (Ok(a), Ok(x)) = (
            ctx.new_tensor(w.ty(), &[ne[0] as usize, ne[1] as usize]),
            ctx.new_f32(&[ne[0] as usize, 16]),
        ) else {
            return false;
        };
        let Ok(op) = ctx.mul_mat(a, x) else {
            return false;
        };
        // SAFETY: a zero-size buffer of a valid type carries only the type (no memory); freed below.
        let dummy = unsafe { sys::ggml_backend_buft_alloc_buffer(self.ptr.as_ptr(), 0) };
        if dummy.is_null() {
            return false;
        }
        // SAFETY: `a` is a metadata-only tensor of our own context, never computed; pointing its buffer at
        // the dummy only lets supports_op see the buffer type. It is reset before the dummy is freed.
        unsafe {
            (*a.raw()).buffer = dummy;
            let ok = sys::ggml_backend_dev_supports_op(dev, op.raw());
            (*a.raw()).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            ok
        }
    }

    /// Allocates every tensor of `ctx` in one buffer of this type (usage: weights).
    pub fn alloc_ctx_tensors(&self, ctx: &Context) -> Result<Buffer> {
        // SAFETY: valid context and buffer type; NULL on failure or when the context has no tensors.
        let p = unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.raw(), self.ptr.as_ptr()) };
        let ptr = NonNull::new(p).ok_or_else(|| GgmlError::Alloc {
            what: format!("the weights in a {} buffer", self.name()),
        })?;
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_set_usage(ptr.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) };
        Ok(Buffer { ptr, _owner: None })
    }
}
