//! How fast ggml multiplies one weight matrix by a batch of activations on this CPU: the ViT's and the
//! prefill's large products, per weight type, to set against other libraries' GEMMs (bench/gemm_torch.py
//! prints PyTorch's f32 and int8 figures for the same shapes). Development aid for issues 8 and 10.
//!
//!   cargo run --release --example gemm_probe                      # all types, 2 threads
//!   T=1 TYPES=q8_0,f16 SHAPES=1025x1024x4096 cargo run --release --example gemm_probe
//!
//! A shape MxKxN is M tokens (activation rows), K inputs, N outputs: 2*M*K*N operations. Prints the median of
//! REPS (5) timed runs after one warm-up; q4_0 also with the weight in ggml's repacked CPU layout.
use std::time::Instant;

use internvl::ggml::{quantize, Backend, Context, Sched, Tensor};
use internvl::gguf::GgmlType;
use internvl::int8::PackedWeights;
use internvl::panels::{PanelType, Panels};

/// Deterministic values in [-1, 1) (timing only: any values in range do).
fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = env_or("T", "2").parse()?;
    let reps: usize = env_or("REPS", "5").parse()?;
    // The ViT's products per tile (1025 tokens: qkv 1024->3072, out 1024->1024, fc1 1024->4096, fc2
    // 4096->1024) and the LLM's prefill ones for 512 tokens (q 896->896, gate/up 896->4864, down 4864->896).
    let shapes = env_or(
        "SHAPES",
        "1025x1024x3072,1025x1024x4096,1025x4096x1024,512x896x4864,512x4864x896",
    );
    let types = env_or("TYPES", "f32,f16,q8_0,q4_0,int8,panels-q8_0,panels-q4_0");
    println!(
        "ggml features: {:?}; {threads} thread(s)",
        internvl::ggml::cpu_features()
    );
    println!("{:<16} {:<20} {:>10} {:>10}", "shape MxKxN", "weight", "ms", "GFLOP/s");
    for shape in shapes.split(',') {
        let d: Vec<usize> = shape.split('x').map(|v| v.parse()).collect::<Result<_, _>>()?;
        let [m, k, n] = d[..] else {
            return Err(format!("shape {shape}: want MxKxN").into());
        };
        let w = vals(k * n, 1);
        let x = vals(k * m, 2);
        for ty in types.split(',') {
            if ty == "int8" {
                // Ours (`internvl::int8`, the kernel behind `--weights int8`): quantize + multiply nodes.
                let packed = PackedWeights::pack(&w, n, k);
                let backend = Backend::cpu(threads)?;
                let ctx = Context::new(8, 1)?;
                let tx = ctx.new_f32(&[k, m])?.set_name("x").set_input();
                let y = ctx.linear_int8(tx, &packed, None)?;
                let ms = time_graph(&backend, &ctx, tx, y, &x, reps)?;
                let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e6);
                let label = format!("int8 ({})", internvl::int8::kernel_name());
                println!("{shape:<16} {label:<20} {ms:>10.1} {gflops:>10.1}");
                continue;
            }
            if let Some(file_ty) = ty.strip_prefix("panels-") {
                // Ours (`internvl::panels`, the default for q4_0/q8_0 on VNNI CPUs): the file's blocks,
                // rearranged; quantize + multiply nodes.
                let (pty, gty) = match file_ty {
                    "q4_0" => (PanelType::Q4_0, GgmlType::Q4_0),
                    "q8_0" => (PanelType::Q8_0, GgmlType::Q8_0),
                    _ => return Err(format!("unknown panel type {file_ty}").into()),
                };
                let panels = Panels::new(pty, &quantize(gty, &w, k)?, n, k)?;
                let backend = Backend::cpu(threads)?;
                let ctx = Context::new(8, 1)?;
                let tx = ctx.new_f32(&[k, m])?.set_name("x").set_input();
                let y = ctx.linear_panels(tx, &panels, None)?;
                let ms = time_graph(&backend, &ctx, tx, y, &x, reps)?;
                let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e6);
                let label = format!("{ty} ({})", internvl::panels::kernel_name());
                println!("{shape:<16} {label:<20} {ms:>10.1} {gflops:>10.1}");
                continue;
            }
            let ty = GgmlType::from_name(ty).ok_or_else(|| format!("unknown type {ty}"))?;
            let layouts: &[bool] = if ty == GgmlType::Q4_0 { &[false, true] } else { &[false] };
            for &repack in layouts {
                let ms = time_one(ty, repack, m, k, n, &w, &x, threads, reps)?;
                let label = format!("{}{}", ty.name(), if repack { " repacked" } else { "" });
                let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e6);
                println!("{shape:<16} {label:<20} {ms:>10.1} {gflops:>10.1}");
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn time_one(
    ty: GgmlType,
    repack: bool,
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    x: &[f32],
    threads: usize,
    reps: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let backend = Backend::cpu(threads)?;
    let wctx = Context::new(4, 0)?;
    let tw = wctx.new_tensor(ty, &[k, n])?.set_name("w");
    let _wbuf = if repack {
        let buft = internvl::ggml::backend::cpu_extra_buffer_types()
            .into_iter()
            .find(|b| b.cpu_supports_matmul(tw))
            .ok_or("no repacked CPU layout for this type on this CPU")?;
        buft.alloc_ctx_tensors(&wctx)?
    } else {
        backend.alloc_ctx_tensors(&wctx)?
    };
    tw.set_bytes(&quantize(ty, w, k)?)?;
    let ctx = Context::new(8, 1)?;
    let tx = ctx.new_f32(&[k, m])?.set_name("x").set_input();
    let y = ctx.mul_mat(tw, tx)?;
    time_graph(&backend, &ctx, tx, y, x, reps)
}

/// Median milliseconds of `reps` computations (after one warm-up) of the graph that ends in `y`, input `tx`.
fn time_graph<'a>(
    backend: &Backend,
    ctx: &'a Context,
    tx: Tensor<'a>,
    y: Tensor<'a>,
    x: &[f32],
    reps: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let y = y.set_name("y").set_output();
    let mut g = ctx.new_graph()?;
    g.build_forward(y)?;
    let mut sched = Sched::new(&[backend], 16)?;
    let mut times = Vec::with_capacity(reps);
    for i in 0..=reps {
        sched.alloc(&g)?;
        tx.set_f32(x)?;
        let t = Instant::now();
        sched.compute(&g)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
