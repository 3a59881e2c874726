//! Weights: tensor metadata in one context, data used in place from the mapped GGUF file(s).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;

use super::backend::Buffer;
use super::context::{Context, Tensor};
use super::sys;
use super::{GgmlError, Result};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};

/// A tensor pointer with its name.
type Named = (String, NonNull<sys::ggml_tensor>);

/// A weight of a `WeightStore`, resolved from its name once (at load): graphs take tensors by id, without
/// looking names up. Ids stay valid when the store moves weights (`repack_cpu`, `widen_cpu`, `copy_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightId(usize);

/// All weight tensors of a model. Built once, then only read (by graphs on any thread).
pub struct WeightStore {
    ctx: Context,
    /// Each weight's tensor, by `WeightId`.
    slots: Vec<NonNull<sys::ggml_tensor>>,
    map: HashMap<String, WeightId>,
    _bufs: Vec<Buffer>,
    /// Contexts of tensors moved into other buffers (`repack_cpu`); the map points into them.
    _moved: Vec<Context>,
    bytes: usize,
}

// SAFETY: after `WeightStore::new` returns, neither the context nor any tensor in it is modified: the store
// hands out tensors only to this crate's graph builders, which read them. ggml's CPU kernels read weight
// data concurrently without synchronization, which is safe for immutable data.
unsafe impl Send for WeightStore {}
// SAFETY: see above; shared access is read-only.
unsafe impl Sync for WeightStore {}

impl WeightStore {
    /// Creates a tensor for each `(file, info)` and places it, without copying, at its offset in a CPU
    /// buffer over that file's data section. The infos must come from the file (validated at open).
    pub fn from_mapped(files: &[(Arc<GgufFile>, Vec<TensorInfo>)]) -> Result<Self> {
        super::check_version()?;
        let n: usize = files.iter().map(|(_, t)| t.len()).sum();
        let ctx = Context::new(n + 1, 0)?;
        let mut map = HashMap::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        let mut bufs = Vec::with_capacity(files.len());
        let mut bytes = 0;
        for (file, infos) in files {
            let owner: Arc<dyn Send + Sync> = file.clone();
            let buf = Buffer::cpu_from_host(owner, file.data_section())?;
            for info in infos {
                let t = ctx.new_tensor(info.ty, &info.ne)?.set_name(&info.name);
                if t.nbytes() != info.size {
                    return Err(GgmlError::Tensor {
                        name: info.name.clone(),
                        detail: format!("ggml computes {} bytes, the file says {}", t.nbytes(), info.size),
                    });
                }
                buf.place(t, info.offset)?;
                bytes += info.size;
                let ptr = NonNull::new(t.raw()).ok_or_else(|| GgmlError::Alloc {
                    what: info.name.clone(),
                })?;
                map.insert(info.name.clone(), WeightId(slots.len()));
                slots.push(ptr);
            }
            bufs.push(buf);
        }
        Ok(WeightStore {
            ctx,
            slots,
            map,
            _bufs: bufs,
            _moved: Vec::new(),
            bytes,
        })
    }

    /// Copies the same tensors into one buffer of `backend` (a GPU): weights then live in device memory.
    pub fn copy_to(&self, backend: &super::Backend) -> Result<Self> {
        // In id order, so that every id names the same weight in the copy.
        let mut names: Vec<(&String, WeightId)> = self.map.iter().map(|(n, id)| (n, *id)).collect();
        names.sort_by_key(|(_, id)| id.0);
        let names: Vec<String> = names.into_iter().map(|(n, _)| n.clone()).collect();
        let (ctx, buf, copied) = self.copy_tensors(&names, false, |ctx| backend.alloc_ctx_tensors(ctx), &mut |_| {})?;
        Ok(WeightStore {
            ctx,
            slots: copied.iter().map(|(_, p)| *p).collect(),
            map: self.map.clone(),
            _bufs: vec![buf],
            _moved: Vec::new(),
            bytes: self.bytes,
        })
    }

    /// Makes a context with a tensor of the same shape for each of `names` (of the same type, or f32 when
    /// `to_f32`), allocates them all with `alloc` (one buffer), and copies each tensor's data in (ggml
    /// converts to the buffer's layout; `to_f32` dequantizes first). `copied` is told each name right after
    /// its copy: releasing the source's mapped pages there, one tensor at a time, keeps the peak resident
    /// memory at about the copies plus one source tensor (released only after all copies, the peak held
    /// every source page too: +220 MB with q4_0 weights). Returns the new tensors by name, in the order given.
    fn copy_tensors(
        &self,
        names: &[String],
        to_f32: bool,
        alloc: impl FnOnce(&Context) -> Result<Buffer>,
        copied: &mut impl FnMut(&str),
    ) -> Result<(Context, Buffer, Vec<Named>)> {
        let src = |name: &String| {
            self.get(name).ok_or_else(|| GgmlError::Tensor {
                name: name.clone(),
                detail: "vanished".into(),
            })
        };
        let ctx = Context::new(names.len() + 1, 0)?;
        for name in names {
            let t = src(name)?;
            let dims: Vec<usize> = t.ne().iter().map(|&d| d as usize).collect();
            let ty = if to_f32 { GgmlType::F32 } else { t.ty() };
            ctx.new_tensor(ty, &dims)?.set_name(name);
        }
        let buf = alloc(&ctx)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let dst = ctx.tensor_by_name(name)?;
            let t = src(name)?;
            if to_f32 && t.ty() != GgmlType::F32 {
                dst.set_f32(&super::quant::dequantize(
                    t.ty(),
                    t.host_bytes()?,
                    t.nelements() as usize,
                )?)?;
            } else {
                dst.set_bytes(t.host_bytes()?)?;
            }
            let ptr = NonNull::new(dst.raw()).ok_or_else(|| GgmlError::Alloc { what: name.clone() })?;
            out.push((name.clone(), ptr));
            copied(name);
        }
        Ok((ctx, buf, out))
    }

    /// Moves each weight that `pick` selects and that one of the CPU's extra buffer types accepts as a
    /// matrix-product operand (`backend::cpu_extra_buffer_types`: ggml's repacked layouts) into a buffer
    /// of that type; ggml rearranges the data as it is copied. The mapped original is then unused, and
    /// `moved` is told each name (to release its pages). Returns how many tensors and bytes moved.
    ///
    /// Trade-off: the copy costs load time and anonymous memory (the same size as the moved weights,
    /// while the mapped pages can be dropped), and buys GEMM kernels that read several rows at once.
    pub fn repack_cpu(&mut self, pick: impl Fn(&str) -> bool, mut moved: impl FnMut(&str)) -> Result<(usize, usize)> {
        let mut names: Vec<String> = self.map.keys().filter(|n| pick(n)).cloned().collect();
        names.sort();
        let (mut count, mut bytes) = (0, 0);
        for buft in super::backend::cpu_extra_buffer_types() {
            let mine: Vec<String> = names
                .iter()
                .filter(|n| self.get(n).map(|t| buft.cpu_supports_matmul(t)).unwrap_or(false))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            names.retain(|n| !mine.contains(n));
            let copied = self.copy_tensors(&mine, false, |ctx| buft.alloc_ctx_tensors(ctx), &mut moved)?;
            let (n, b) = self.adopt(copied);
            count += n;
            bytes += b;
        }
        Ok((count, bytes))
    }

    /// Replaces each weight that `pick` selects and that is not f32 by an f32 copy in a CPU buffer (the
    /// mapped original is then unused; `moved` is told each name). Returns how many tensors and bytes
    /// (of f32 data) that made.
    ///
    /// Trade-off: ggml's f32 GEMM needs no conversion in its inner loop, where the f16 one widens both
    /// operands and the quantized ones quantize the activations; on a CPU without native f16/bf16
    /// arithmetic that makes large batched products (the ViT's 1025-token tiles) faster, for 2 (f16) to
    /// about 3.8 (q8_0) times the memory of those weights.
    pub fn widen_cpu(&mut self, pick: impl Fn(&str) -> bool, mut moved: impl FnMut(&str)) -> Result<(usize, usize)> {
        let mut names: Vec<String> = self
            .map
            .keys()
            .filter(|n| pick(n) && self.get(n).is_some_and(|t| t.ty() != GgmlType::F32))
            .cloned()
            .collect();
        if names.is_empty() {
            return Ok((0, 0));
        }
        names.sort();
        let cpu = super::Backend::cpu(1)?;
        // The buffer belongs to the CPU buffer type, not to the backend object: it outlives `cpu`.
        let copied = self.copy_tensors(&names, true, |ctx| cpu.alloc_ctx_tensors(ctx), &mut moved)?;
        Ok(self.adopt(copied))
    }

    /// Points the map at tensors made by `copy_tensors` and keeps their context and buffer alive.
    fn adopt(&mut self, (ctx, buf, copied): (Context, Buffer, Vec<Named>)) -> (usize, usize) {
        let (mut count, mut bytes) = (0, 0);
        for (name, ptr) in copied {
            // ptr is a tensor of `ctx`, which the store keeps (`_moved`) as long as it lives.
            bytes += Tensor::from_raw(ptr, &ctx).nbytes();
            count += 1;
            if let Some(id) = self.map.get(&name) {
                self.slots[id.0] = ptr;
            }
        }
        self._bufs.push(buf);
        self._moved.push(ctx);
        (count, bytes)
    }

    /// Every weight's name.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// The tensor called `name`, valid as long as the store is borrowed.
    pub(crate) fn get(&self, name: &str) -> Option<Tensor<'_>> {
        self.map.get(name).and_then(|id| self.tensor(*id).ok())
    }

    /// The id of the weight called `name` (resolve once, then use `tensor`).
    pub fn id(&self, name: &str) -> Option<WeightId> {
        self.map.get(name).copied()
    }

    /// The weight `id`, valid as long as the store is borrowed. An id of another store may name another
    /// tensor or none (an error); the model resolves its ids from its own store at load.
    pub fn tensor(&self, id: WeightId) -> Result<Tensor<'_>> {
        let ptr = self.slots.get(id.0).copied().ok_or_else(|| GgmlError::Tensor {
            name: format!("weight #{}", id.0),
            detail: format!("not in this store of {} weights", self.slots.len()),
        })?;
        Ok(Tensor::from_raw(ptr, &self.ctx))
    }

    /// Total bytes of weight data (mapped, not copied).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
