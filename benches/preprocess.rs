//! Image preprocessing speed (spec §7.1): image1.jpg (1000×747) → 13 normalised 448² tiles.
//!
//! Groups: `preprocess` (decode, tiling + normalisation, both together) and `resize` (the two
//! Pillow-exact resizes alone). Compare with `python3 bench/pillow_preprocess.py`, which times
//! Pillow + torchvision on the same image and prints the ratio using these results.
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use internvl::image::{self as ivl, Limits, TilingParams};

fn image1() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/media/image1.jpg")
}

fn preprocess(c: &mut Criterion) {
    let path = image1();
    let limits = Limits::default();
    let params = TilingParams::default();
    let rgb = ivl::load_path(&path, &limits).expect("../shared/media/image1.jpg");

    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(13));
    g.bench_function("decode_image1", |b| b.iter(|| ivl::load_path(&path, &limits).unwrap()));
    g.bench_function("tiles_f32_image1", |b| {
        b.iter(|| ivl::preprocess(&rgb, &params).unwrap())
    });
    g.bench_function("end_to_end_image1", |b| {
        b.iter(|| ivl::preprocess(&ivl::load_path(&path, &limits).unwrap(), &params).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("resize");
    g.throughput(Throughput::Elements(1792 * 1344));
    g.bench_function("image1_to_1792x1344", |b| {
        b.iter(|| ivl::resize_bicubic(&rgb, 1792, 1344).unwrap())
    });
    g.throughput(Throughput::Elements(448 * 448));
    g.bench_function("image1_to_448x448", |b| {
        b.iter(|| ivl::resize_bicubic(&rgb, 448, 448).unwrap())
    });
    g.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
