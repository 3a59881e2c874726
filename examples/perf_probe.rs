//! Quick timing probe: decode and one vision tile on a model (development aid).
use internvl::model::Model;
use internvl::session::{Session, SessionParams};
use std::sync::Arc;
use std::time::Instant;

/// CPU seconds this process has used (user + system, from /proc/self/stat): with T=1 a contention-robust
/// measure of work, since ggml computes on the calling thread and does not spin.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Fields after the command: state(skipped: not a number) ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime stime -> utime, stime are the 11th and 12th numbers here.
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    let path = std::env::args().nth(1).expect("gguf");
    let (t, c) = (Instant::now(), cpu_s());
    // LAYOUT=mapped|repacked|f32-vision|int8-vision (default: the library's default).
    let layout = std::env::var("LAYOUT")
        .ok()
        .and_then(|l| internvl::model::WeightLayout::parse(&l))
        .unwrap_or_default();
    let model =
        Arc::new(Model::load_with(&[std::path::Path::new(&path)], internvl::model::Device::Cpu, layout).unwrap());
    eprintln!(
        "load: {:.2} s (cpu {:.2} s), panels {} tensors / {:.0} MB, repacked {} tensors / {:.0} MB, widened to f32 {} tensors / {:.0} MB, \
         int8 {} tensors / {:.0} MB ({})",
        t.elapsed().as_secs_f64(),
        cpu_s() - c,
        model.panels_packed().0,
        model.panels_packed().1 as f64 / 1e6,
        model.repacked.0,
        model.repacked.1 as f64 / 1e6,
        model.widened.0,
        model.widened.1 as f64 / 1e6,
        model.int8_packed().0,
        model.int8_packed().1 as f64 / 1e6,
        internvl::int8::kernel_name()
    );
    let mut s = Session::new(
        model,
        SessionParams {
            n_ctx: 1024,
            n_threads: std::env::var("T").ok().and_then(|t| t.parse().ok()).unwrap_or(2),
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u32> = (0..64u32).map(|i| 1000 + i * 37).collect();
    let (t, c) = (Instant::now(), cpu_s());
    let out = s.eval(&ids, &[], false).unwrap();
    eprintln!(
        "prefill 64: {:.1} tok/s (cpu {:.2} s)",
        64.0 / t.elapsed().as_secs_f64(),
        cpu_s() - c
    );
    let mut next = internvl::sampling::argmax(&out.logits);
    let (t, c) = (Instant::now(), cpu_s());
    for _ in 0..16 {
        next = internvl::sampling::argmax(&s.decode(next).unwrap());
    }
    eprintln!(
        "decode: {:.1} tok/s (cpu {:.3} s/token)",
        16.0 / t.elapsed().as_secs_f64(),
        (cpu_s() - c) / 16.0
    );
    if std::env::var_os("VISION").is_some() {
        let tile: Vec<f32> = (0..3 * 448 * 448)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        // The first tile also pays for touching the vision weights' pages; the second is the steady state.
        for pass in ["first", "second"] {
            let (t, c) = (Instant::now(), cpu_s());
            s.encode_tiles(&tile, false).unwrap();
            eprintln!(
                "vision ({pass} tile): {:.0} ms/tile (cpu {:.2} s)",
                t.elapsed().as_secs_f64() * 1000.0,
                cpu_s() - c
            );
        }
    }
}
