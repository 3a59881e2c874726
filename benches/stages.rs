//! Criterion benches per stage on a full-size model (INTERNVL_BENCH_GGUF, default /tmp/full1-q8_0.gguf:
//! `internvl-convert synth --preset full --seed 1 -o /tmp/full1 ...` then `convert --type q8_0`).
//! Threads: INTERNVL_BENCH_THREADS (default 2). Preprocessing has its own bench (`preprocess`).
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use internvl::model::Model;
use internvl::session::{Session, SessionParams};

fn stages(c: &mut Criterion) {
    let path = std::env::var("INTERNVL_BENCH_GGUF").unwrap_or_else(|_| "/tmp/full1-q8_0.gguf".into());
    let threads: usize = std::env::var("INTERNVL_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let Ok(model) = Model::load(&[std::path::Path::new(&path)]) else {
        eprintln!("stages: cannot load {path}; set INTERNVL_BENCH_GGUF");
        return;
    };
    let model = Arc::new(model);
    let mut s = Session::new(
        model,
        SessionParams {
            n_ctx: 1024,
            n_threads: threads,
            ..Default::default()
        },
    )
    .unwrap();
    let tile: Vec<f32> = (0..3 * 448 * 448)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();

    let mut g = c.benchmark_group("vision");
    g.sample_size(10).throughput(Throughput::Elements(1));
    g.bench_function("vit+projector per 448 tile", |b| {
        b.iter(|| s.encode_tiles(&tile, false).unwrap())
    });
    g.finish();

    let ids: Vec<u32> = (0..128u32).map(|i| 1000 + i * 37).collect();
    let mut g = c.benchmark_group("prefill");
    g.sample_size(10).throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("128 tokens", |b| {
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
    g.bench_function("1 token after 128", |b| {
        b.iter(|| {
            s.truncate(ids.len());
            s.decode(42).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
