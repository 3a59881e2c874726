//! Criterion benches of our ViT kernels on one thread, on every instruction set this CPU runs (the ones
//! `--kernels` can pick; portable is slow: on x86-64 without FMA in the build target its fused
//! multiply-adds are library calls): one attention head at the ViT's shape (1025 tokens, head dimension
//! 64), the erf GELU over one layer's MLP activations (1025 x 4096 values, a copy of the input included)
//! an int8 product at the ViT's fc1 shape (1025 tokens x 1024 inputs x 4096 outputs, the
//! activations' quantization included; not on the portable kernels, ~5 s each), and one decoded token's
//! attention over one KV head of an f16 cache of 3386 rows (image1.jpg's 13 tiles and a question) for its 7
//! query heads, what one of 2 threads does per layer (x 24 layers per token); the cache is in cache here,
//! not in memory as when decoding.
//!
//!   cargo bench -p internvl --bench kernels
//!
//! No model file needed: the operands are synthetic (their values do not change the work done).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use internvl::kernels::{activation, attention, decode_attention, int8, panels, Isa};
use internvl::test_values::values;

fn bench(c: &mut Criterion) {
    let (n, hd, heads) = (1025usize, 64usize, 16usize);
    let ld = 3 * heads * hd; // q, k and v are views of the fused qkv product
    let qkv = values(n * ld, 1);
    let mut g = c.benchmark_group("vit_attention_head");
    g.sample_size(10);
    g.throughput(Throughput::Elements((4 * n * n * hd) as u64)); // multiply-adds x 2: FLOP
    for isa in Isa::bases_here() {
        let mut out = vec![0f32; n * hd];
        let mut sc = attention::Scratch::default();
        g.bench_function(isa.name(), |b| {
            b.iter(|| {
                attention::head(
                    isa,
                    &qkv,
                    &qkv[hd * heads..],
                    &qkv[2 * hd * heads..],
                    ld,
                    n,
                    hd,
                    0.125,
                    0..n.div_ceil(attention::MR),
                    &mut out,
                    hd,
                    &mut sc,
                )
            })
        });
    }
    g.finish();

    let x = values(n * 4096, 2).iter().map(|v| v * 6.0).collect::<Vec<_>>();
    let mut g = c.benchmark_group("gelu_erf_layer");
    g.sample_size(10);
    g.throughput(Throughput::Elements(x.len() as u64));
    for isa in Isa::bases_here() {
        let mut buf = x.clone();
        g.bench_function(isa.name(), |b| {
            b.iter(|| {
                buf.copy_from_slice(&x);
                activation::gelu_erf(isa, &mut buf)
            })
        });
    }
    g.finish();

    // fc1 of a ViT layer at one tile: 1025 tokens x 1024 inputs -> 4096 outputs (quantizing the
    // activations included, as each product does).
    let (t, k, nout) = (1025usize, 1024usize, 4096usize);
    let (x, w) = (values(t * k, 3), values(nout * k, 4));
    let mut g = c.benchmark_group("int8_fc1");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * t * k * nout) as u64)); // OP
                                                                   // Not the portable kernels here: ~5 s per product.
    for isa in Isa::bases_here().into_iter().filter(|&i| i != Isa::Portable) {
        let pw = int8::PackedWeights::pack(&w, nout, k, isa);
        let mut acts = vec![0u8; int8::acts_bytes(t, k)];
        let mut out = vec![0f32; t * nout];
        g.bench_function(isa.name(), |b| {
            b.iter(|| {
                int8::quantize(isa, &x, k, t, k, &mut acts);
                int8::gemm(&acts, t, &pw, None, 0..int8::token_blocks(t), &mut out, nout)
            })
        });
    }
    g.finish();

    // The ViT's fc1 and fc2 shapes (1025 tokens, 1024 -> 4096 and 4096 -> 1024) from a q8_0 file through
    // the panels, what a q8_0 file's ViT runs (the activations' quantization included). File blocks: an
    // f16 scale of 1/127, then 32 values from the synthetic f32s (the values do not change the work);
    // fc2's matrix is the same bytes read as 1024 rows of 4096.
    let file: Vec<u8> = w
        .chunks_exact(panels::QK)
        .flat_map(|b| {
            let mut blk = half::f16::from_f32(1.0 / 127.0).to_le_bytes().to_vec();
            blk.extend(b.iter().map(|&v| ((v * 127.0).round() as i8) as u8));
            blk
        })
        .collect();
    let x4 = values(t * nout, 7);
    let mut g = c.benchmark_group("panels_q8_0_vit");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * t * k * nout) as u64)); // OP
    for isa in Isa::all_here().into_iter().filter(|&i| i != Isa::Portable) {
        for (name, n, k, x) in [("fc1", nout, k, &x), ("fc2", k, nout, &x4)] {
            let pw = panels::Panels::new(panels::PanelType::Q8_0, &file, n, k, isa).expect("pack");
            let blocks = panels::token_blocks(t);
            let mut acts = vec![0u8; panels::acts_bytes(t, k)];
            let mut out = vec![0f32; t * n];
            g.bench_function(format!("{name}/{}", isa.name()), |b| {
                b.iter(|| {
                    let (v, m) = acts.split_at_mut(blocks * panels::block_bytes(k));
                    panels::quantize_blocks(isa, panels::PanelType::Q8_0, x, t, k, 0..blocks, v, m);
                    panels::product(&acts, t, &pw, None, 0..pw.panels(), |tok, n0, vals| {
                        out[tok * n + n0..][..vals.len()].copy_from_slice(vals)
                    })
                })
            });
        }
    }
    g.finish();

    // One thread's share of a decode step's attention in one Qwen2-0.5B layer at 3386 cached rows.
    let (rows, hd, nq) = (3386usize, 64usize, 7usize);
    let ld = 2 * hd; // two KV heads per cache row
    let kv: Vec<u16> = values(rows * ld, 5)
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    let q = values(nq * hd, 6);
    let mask = vec![0u16; rows];
    let cache = decode_attention::KvRows {
        k: &kv,
        v: &kv[1..],
        ld,
        n: rows,
        mask: &mask,
        hd,
    };
    let mut g = c.benchmark_group("decode_attention_kv_head_3386");
    g.sample_size(20);
    g.throughput(Throughput::Elements((4 * nq * rows * hd) as u64)); // FLOP
    for isa in Isa::bases_here() {
        let mut out = vec![0f32; nq * hd];
        let mut sc = decode_attention::Scratch::default();
        g.bench_function(isa.name(), |b| {
            b.iter(|| decode_attention::heads(isa, &q, &cache, 0.125, &mut out, &mut sc))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
