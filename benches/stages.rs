//! Criterion benches per stage on a full-size model: preprocess (image1.jpg -> 13 normalized tiles), vision
//! (ViT + projector) per 448 tile at 1 tile and at one vision batch, the projector alone, prefill (512 tokens)
//! and decode (one token at a 512-token context).
//!
//!   RUSTFLAGS="-C target-cpu=native" cargo bench -p internvl --bench stages
//!
//! Model: INTERNVL_BENCH_GGUF (default /tmp/full1-q8_0.gguf: `internvl-convert synth --preset full --seed 1
//! -o /tmp/full1 --tokenizer-from ../shared/model/InternVL2-1B`, then `internvl-convert convert /tmp/full1 -o
//! /tmp/full1-q8_0.gguf --type q8_0`). Threads: INTERNVL_BENCH_THREADS (default 2). The side-by-side
//! comparison with llama.cpp and PyTorch is scripts/bench.sh (benches/side_by_side.rs).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use internvl::ggml::{Backend, Context, Sched};
use internvl::gguf::GgufFile;
use internvl::image::{self as ivl, Limits, TilingParams};
use internvl::model::Weights;
use internvl::names;
use internvl::session::{Session, SessionParams};

fn model_path() -> PathBuf {
    PathBuf::from(std::env::var("INTERNVL_BENCH_GGUF").unwrap_or_else(|_| "/tmp/full1-q8_0.gguf".into()))
}

fn threads() -> usize {
    std::env::var("INTERNVL_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2)
}

/// Stops with a message that says how to make the model file.
fn fail(msg: String) -> ! {
    eprintln!(
        "stages: {msg}\n  make it with: internvl-convert synth --preset full --seed 1 -o /tmp/full1 \
         --tokenizer-from ../shared/model/InternVL2-1B && internvl-convert convert /tmp/full1 -o /tmp/full1-q8_0.gguf \
         --type q8_0\n  or point INTERNVL_BENCH_GGUF at another GGUF of ours"
    );
    std::process::exit(1)
}

fn tile_data(n: usize) -> Vec<f32> {
    (0..n * 3 * 448 * 448)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect()
}

/// The projector (LayerNorm, Linear, GELU, Linear: spec §3.9) alone, on the model file's own mlp1 tensors
/// copied into a CPU buffer, for `n_tiles` tiles of pixel-shuffled ViT rows. Built here from the public
/// ggml layer because Session runs ViT and projector as one graph.
struct Projector {
    // Field order is drop order: the scheduler before the weights' buffer, both before the backend.
    sched: Sched,
    /// mlp1 tensors 0.weight, 0.bias, 1.weight, 1.bias, 3.weight, 3.bias (their context is leaked: bench only).
    w: Vec<internvl::ggml::Tensor<'static>>,
    _wbuf: internvl::ggml::Buffer,
    backend: Backend,
    eps: f32,
    d_in: usize,
}

impl Projector {
    fn new(path: &Path, eps: f32, threads: usize) -> Result<Self, String> {
        let f = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let wctx: &'static Context = Box::leak(Box::new(Context::new(16, 0).map_err(|e| e.to_string())?));
        use names::TensorName as N;
        let keys = [N::MmNorm, N::MmNormBias, N::MmUp, N::MmUpBias, N::MmDown, N::MmDownBias];
        let mut w = Vec::new();
        let mut infos = Vec::new();
        for key in keys {
            let name = key.name();
            let info = f
                .tensor(&name)
                .ok_or_else(|| format!("{}: no tensor {name}", path.display()))?;
            w.push(
                wctx.new_tensor(info.ty, &info.ne)
                    .map_err(|e| e.to_string())?
                    .set_name(&name),
            );
            infos.push(info.clone());
        }
        let backend = Backend::cpu(threads).map_err(|e| e.to_string())?;
        let wbuf = backend.alloc_ctx_tensors(wctx).map_err(|e| e.to_string())?;
        for (t, info) in w.iter().zip(&infos) {
            t.set_bytes(f.tensor_data(info)).map_err(|e| e.to_string())?;
        }
        let d_in = infos.first().map_or(0, |i| i.ne[0]);
        let sched = Sched::new(&[&backend], 64).map_err(|e| e.to_string())?;
        Ok(Projector {
            sched,
            w,
            _wbuf: wbuf,
            backend,
            eps,
            d_in,
        })
    }

    fn run(&mut self, rows: &[f32]) -> Result<Vec<f32>, String> {
        let e = |e: internvl::ggml::GgmlError| e.to_string();
        let w = &self.w;
        let ctx = Context::new(32, 1).map_err(e)?;
        let x = ctx
            .new_f32(&[self.d_in, rows.len() / self.d_in])
            .map_err(e)?
            .set_input();
        let y = ctx.norm(x, self.eps).map_err(e)?;
        let y = ctx.mul(y, w[0]).map_err(e)?;
        let y = ctx.add(y, w[1]).map_err(e)?;
        let y = ctx.linear(y, w[2], Some(w[3])).map_err(e)?;
        let y = ctx.gelu_erf(y).map_err(e)?;
        let y = ctx.linear(y, w[4], Some(w[5])).map_err(e)?.set_output();
        let mut g = ctx.new_graph().map_err(e)?;
        g.build_forward(y).map_err(e)?;
        self.sched.alloc(&g).map_err(e)?;
        x.set_f32(rows).map_err(e)?;
        self.sched.compute(&g).map_err(e)?;
        let _ = &self.backend;
        y.get_f32().map_err(e)
    }
}

fn stages(c: &mut Criterion) {
    let path = model_path();
    if !path.exists() {
        fail(format!("model file {} not found", path.display()));
    }
    let threads = threads();
    let model = match Weights::load(&[path.as_path()]) {
        Ok(m) => Arc::new(m),
        Err(e) => fail(format!("cannot load {}: {e}", path.display())),
    };
    let hp = model.hp.clone();
    let params = SessionParams {
        n_ctx: 1024,
        n_threads: threads,
        ..Default::default()
    };
    let vision_batch = params.vision_batch;
    let mut s = match Session::new(model, params) {
        Ok(s) => s,
        Err(e) => fail(format!("session: {e}")),
    };
    eprintln!(
        "stages: {} with {threads} threads, ggml CPU features {:?}",
        path.display(),
        internvl::ggml::cpu_features()
    );

    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/media/image1.jpg");
    if let Ok(rgb) = ivl::load_path(&image, &Limits::default()) {
        let mut g = c.benchmark_group("preprocess");
        g.sample_size(10).throughput(Throughput::Elements(13));
        g.bench_function("image1.jpg decode + 13 tiles", |b| {
            b.iter(|| {
                ivl::preprocess(
                    &ivl::load_path(&image, &Limits::default()).unwrap(),
                    &TilingParams::default(),
                )
                .unwrap()
            })
        });
        g.bench_function("13 tiles from decoded image1.jpg", |b| {
            b.iter(|| ivl::preprocess(&rgb, &TilingParams::default()).unwrap())
        });
        g.finish();
    } else {
        eprintln!("stages: {} not found, preprocess skipped", image.display());
    }

    let one = tile_data(1);
    let batch = tile_data(vision_batch);
    let mut g = c.benchmark_group("vision");
    g.sample_size(10).throughput(Throughput::Elements(1));
    g.bench_function("vit+projector, 1 tile", |b| {
        b.iter(|| s.encode_tiles(&one, false).unwrap())
    });
    g.throughput(Throughput::Elements(vision_batch as u64));
    g.bench_function(format!("vit+projector, {vision_batch} tiles (one vision batch)"), |b| {
        b.iter(|| s.encode_tiles(&batch, false).unwrap())
    });
    g.finish();

    match Projector::new(&path, hp.proj_ln_eps, threads) {
        Ok(mut p) => {
            let n_rows = hp.num_image_token();
            let rows: Vec<f32> = (0..n_rows * p.d_in)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let mut g = c.benchmark_group("projector");
            g.sample_size(10).throughput(Throughput::Elements(1));
            g.bench_function("mlp1, 1 tile (256 rows)", |b| b.iter(|| p.run(&rows).unwrap()));
            g.finish();
        }
        Err(e) => eprintln!("stages: projector skipped: {e}"),
    }

    let ids: Vec<u32> = (0..512u32).map(|i| 1000 + i * 37).collect();
    let mut g = c.benchmark_group("prefill");
    g.sample_size(10).throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("512 tokens", |b| {
        b.iter(|| {
            s.reset();
            s.eval(&ids, &[], false).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.sample_size(20).throughput(Throughput::Elements(1));
    s.reset();
    s.eval(&ids, &[], false).unwrap();
    g.bench_function("1 token at a 512-token context", |b| {
        b.iter(|| {
            s.truncate(ids.len());
            s.decode(42).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
