//! One weight matrix times a batch of activations, per way we multiply: ggml's kernels for f32, f16, q8_0
//! and q4_0 (q4_0 also in ggml's repacked CPU layout, where this CPU has one), and ours (`kernels::panels`
//! for q8_0/q4_0 blocks, `kernels::int8` for f32 weights quantized at load) with every SIMD instruction set
//! this CPU runs. The shapes are the ViT's products for one tile (1025 tokens) and the language model's for
//! a 512-token prefill; 2 threads, as the other benchmarks. Throughput is in elements = multiply-adds, so
//! criterion's "Melem/s" x 2 is MFLOP/s. `bench/gemm_torch.py` prints PyTorch's figures for the same shapes.
//!
//!   cargo bench -p internvl --bench gemm                       # everything (a few minutes)
//!   cargo bench -p internvl --bench gemm -- '1025x1024x4096/'  # one shape (criterion's name filter)
//!   cargo bench -p internvl --bench gemm -- 'panels-q4_0'      # one kind on every shape
//!
//! Build with `RUSTFLAGS="-C target-cpu=native"` for ggml's kernels at this CPU's best (see README, CPU flags).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use internvl::ggml::{quantize, Backend, Context, Sched, Tensor};
use internvl::gguf::GgmlType;
use internvl::kernels::int8::PackedWeights;
use internvl::kernels::panels::{PanelType, Panels};
use internvl::kernels::Isa;

const THREADS: usize = 2;
/// M x K x N: M tokens (activation rows), K inputs, N outputs. The ViT per tile (qkv, fc1, fc2) and the
/// language model's prefill (gate/up, down).
const SHAPES: [(usize, usize, usize); 5] = [
    (1025, 1024, 3072),
    (1025, 1024, 4096),
    (1025, 4096, 1024),
    (512, 896, 4864),
    (512, 4864, 896),
];

/// Deterministic values in [-1, 1) (timing only: any values in range do).
fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// A graph `y = product(x)` ready to run: its input, output, scheduler and backend.
struct Graph<'a> {
    // Field order is drop order: the scheduler before the backend.
    sched: Sched,
    graph: internvl::ggml::Graph<'a>,
    x: Tensor<'a>,
    _backend: Backend,
}

impl<'a> Graph<'a> {
    fn new(backend: Backend, ctx: &'a Context, x: Tensor<'a>, y: Tensor<'a>) -> Result<Self, String> {
        let e = |e: internvl::ggml::GgmlError| e.to_string();
        let y = y.set_name("y").set_output();
        let mut graph = ctx.new_graph().map_err(e)?;
        graph.build_forward(y).map_err(e)?;
        let sched = Sched::new(&[&backend], 16).map_err(e)?;
        Ok(Graph {
            sched,
            graph,
            x,
            _backend: backend,
        })
    }
    fn run(&mut self, xs: &[f32]) {
        self.sched.alloc(&self.graph).expect("alloc");
        self.x.set_f32(xs).expect("input");
        self.sched.compute(&self.graph).expect("compute");
    }
}

/// The ways we multiply: ggml's types, then `ours/isa` for each of our kernels and instruction sets.
fn kinds() -> Vec<String> {
    let mut k: Vec<String> = ["f32", "f16", "q8_0", "q4_0", "q4_0-repacked"]
        .into_iter()
        .map(String::from)
        .collect();
    // Our kernels with each SIMD instruction set this CPU runs (the portable one is a test path: slow);
    // the AVX-VNNI sets have their own panels only (their int8 kernel is AVX2's).
    for isa in Isa::all_here().into_iter().filter(|i| *i != Isa::Portable) {
        for ours in ["panels-q8_0", "panels-q4_0", "int8"] {
            if ours == "int8" && isa.base() != isa {
                continue;
            }
            k.push(format!("{ours}/{}", isa.name()));
        }
    }
    k
}

fn gemm(c: &mut Criterion) {
    eprintln!(
        "gemm: {THREADS} threads, ggml CPU features {:?}",
        internvl::ggml::cpu_features()
    );
    for (m, k, n) in SHAPES {
        let mut g = c.benchmark_group(format!("gemm/{m}x{k}x{n}"));
        g.sample_size(10).throughput(Throughput::Elements((m * k * n) as u64));
        let w = vals(k * n, 1);
        let xs = vals(k * m, 2);
        for kind in kinds() {
            if let Err(e) = bench_one(&mut g, &kind, m, k, n, &w, &xs) {
                eprintln!("gemm {m}x{k}x{n} {kind}: skipped: {e}");
            }
        }
        g.finish();
    }
}

fn isa_named(name: &str) -> Result<Isa, String> {
    Isa::all_here()
        .into_iter()
        .find(|i| i.name() == name)
        .ok_or_else(|| format!("this CPU does not run {name}"))
}

/// The weights of one kind, held while its graph runs.
enum Held {
    Int8(PackedWeights),
    Panels(Panels),
    /// ggml's own tensor of this type, in its repacked CPU layout when `true`.
    Ggml(GgmlType, bool),
}

fn bench_one(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    kind: &str,
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    xs: &[f32],
) -> Result<(), String> {
    let e = |e: internvl::ggml::GgmlError| e.to_string();
    let held = match kind.split_once('/') {
        Some(("int8", isa)) => Held::Int8(PackedWeights::pack(w, n, k, isa_named(isa)?)),
        Some((ours, isa)) => {
            let (pty, gty) = match ours {
                "panels-q8_0" => (PanelType::Q8_0, GgmlType::Q8_0),
                "panels-q4_0" => (PanelType::Q4_0, GgmlType::Q4_0),
                _ => return Err(format!("unknown kind {kind}")),
            };
            let blocks = quantize(gty, w, k).map_err(e)?;
            Held::Panels(Panels::new(pty, &blocks, n, k, isa_named(isa)?).map_err(|e| e.to_string())?)
        }
        None => {
            let (name, repack) = match kind.strip_suffix("-repacked") {
                Some(t) => (t, true),
                None => (kind, false),
            };
            Held::Ggml(
                GgmlType::from_name(name).ok_or_else(|| format!("unknown type {name}"))?,
                repack,
            )
        }
    };
    let backend = Backend::cpu(THREADS).map_err(e)?;
    let wctx = Context::new(4, 0).map_err(e)?;
    let ctx = Context::new(8, 1).map_err(e)?;
    let x = ctx.new_f32(&[k, m]).map_err(e)?.set_name("x").set_input();
    // ggml's weight buffer, alive as long as the graph.
    let mut _wbuf = None;
    let y = match &held {
        Held::Int8(p) => internvl::kernels::linear_int8(&ctx, x, p, None).map_err(e)?,
        Held::Panels(p) => internvl::kernels::linear_panels(&ctx, x, p, None).map_err(e)?,
        Held::Ggml(ty, repack) => {
            let tw = wctx.new_tensor(*ty, &[k, n]).map_err(e)?.set_name("w");
            let buf = if *repack {
                internvl::ggml::backend::cpu_extra_buffer_types()
                    .into_iter()
                    .find(|b| b.cpu_supports_matmul(tw))
                    .ok_or("no repacked CPU layout for this type on this CPU")?
                    .alloc_ctx_tensors(&wctx)
                    .map_err(e)?
            } else {
                backend.alloc_ctx_tensors(&wctx).map_err(e)?
            };
            tw.set_bytes(&quantize(*ty, w, k).map_err(e)?).map_err(e)?;
            _wbuf = Some(buf);
            ctx.mul_mat(tw, x).map_err(e)?
        }
    };
    let mut graph = Graph::new(backend, &ctx, x, y)?;
    graph.run(xs);
    g.bench_function(BenchmarkId::from_parameter(kind), |b| b.iter(|| graph.run(xs)));
    Ok(())
}

criterion_group!(benches, gemm);
criterion_main!(benches);
