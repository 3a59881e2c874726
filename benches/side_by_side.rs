//! Ours next to llama.cpp on the same machine, in the same run, on the same token ids.
//!
//!   INTERNVL_BENCH_DIR=/tmp INTERNVL_BENCH_PREFIX=full1 cargo bench --bench side_by_side
//!
//! expects `$DIR/$PREFIX-$TYPE.gguf` (ours, from `internvl-convert convert --type $TYPE`) and
//! `$DIR/$PREFIX-split-$TYPE.gguf` (llama.cpp's text GGUF from `convert --split`), for each type in
//! INTERNVL_BENCH_TYPES (default f16,q8_0,q4_0). Each measurement runs in a child process of its own so that
//! peak RSS (VmHWM) belongs to one system. Threads: INTERNVL_BENCH_THREADS (default 2). llama.cpp's vision
//! path (mtmd) is not built by the ggml crate's default features, so vision is ours only here.
mod llamacpp;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use internvl::model::Model;
use internvl::sampling::argmax;
use internvl::session::{Session, SessionParams};

const N_PROMPT: usize = 512;
const N_DECODE: usize = 64;

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

/// The same pseudo-random text token ids for both systems (ids of ordinary BPE tokens).
pub fn prompt_ids() -> Vec<u32> {
    let mut s: u64 = 0x1234_5678;
    (0..N_PROMPT)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 150_000) as u32
        })
        .collect()
}

pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn child_ours(path: &str, threads: usize) -> String {
    let t0 = Instant::now();
    let model = Arc::new(Model::load(&[std::path::Path::new(path)]).expect("load"));
    let load_s = t0.elapsed().as_secs_f64();
    let params = SessionParams {
        n_ctx: N_PROMPT + N_DECODE + 16,
        n_threads: threads,
        ..Default::default()
    };
    let mut s = Session::new(model.clone(), params).expect("session");
    let per_tile = 3 * 448 * 448;
    let tile: Vec<f32> = (0..per_tile)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    s.encode_tiles(&tile, false).expect("warm-up");
    let t = Instant::now();
    let reps = 2;
    for _ in 0..reps {
        s.encode_tiles(&tile, false).expect("vision");
    }
    let vision_ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
    let ids = prompt_ids();
    let t = Instant::now();
    let out = s.eval(&ids, &[], false).expect("prefill");
    let prefill_tps = N_PROMPT as f64 / t.elapsed().as_secs_f64();
    let mut next = argmax(&out.logits);
    let t = Instant::now();
    for _ in 0..N_DECODE {
        next = argmax(&s.decode(next).expect("decode"));
    }
    let decode_tps = N_DECODE as f64 / t.elapsed().as_secs_f64();
    format!(
        "{{\"load_s\":{load_s:.3},\"vision_ms\":{vision_ms:.1},\"prefill_tps\":{prefill_tps:.2},\"decode_tps\":{decode_tps:.2},\"rss_mb\":{:.1}}}",
        peak_rss_mb()
    )
}

fn run_child(kind: &str, path: &str) -> Option<serde_json::Value> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .env("INTERNVL_BENCH_CHILD", format!("{kind}:{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{'))?;
    if !out.status.success() {
        eprintln!("{kind} {path} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_str(line).ok()
}

fn main() {
    let threads: usize = env("INTERNVL_BENCH_THREADS", "2").parse().unwrap_or(2);
    if let Ok(spec) = std::env::var("INTERNVL_BENCH_CHILD") {
        let (kind, path) = spec.split_once(':').expect("kind:path");
        let line = match kind {
            "ours" => child_ours(path, threads),
            _ => llamacpp::child(path, threads, &prompt_ids(), N_DECODE),
        };
        println!("{line}");
        return;
    }
    let dir = env("INTERNVL_BENCH_DIR", "/tmp");
    let prefix = env("INTERNVL_BENCH_PREFIX", "full1");
    let types = env("INTERNVL_BENCH_TYPES", "f16,q8_0,q4_0");
    println!(
        "side by side: {threads} threads, prompt {N_PROMPT} tokens, {N_DECODE} decode steps, CPU features {:?}",
        internvl::ggml::cpu_features()
    );
    println!("| type | system | load s | vision ms/tile | prefill tok/s | decode tok/s | peak RSS MB |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for ty in types.split(',') {
        let ours_path = format!("{dir}/{prefix}-{ty}.gguf");
        let lc_path = format!("{dir}/{prefix}-split-{ty}.gguf");
        let o = run_child("ours", &ours_path);
        let l = run_child("llamacpp", &lc_path);
        let f = |v: &Option<serde_json::Value>, k: &str| v.as_ref().and_then(|v| v[k].as_f64()).unwrap_or(f64::NAN);
        println!(
            "| {ty} | ours | {:.2} | {:.0} | {:.1} | {:.1} | {:.0} |",
            f(&o, "load_s"),
            f(&o, "vision_ms"),
            f(&o, "prefill_tps"),
            f(&o, "decode_tps"),
            f(&o, "rss_mb")
        );
        println!(
            "| {ty} | llama.cpp | {:.2} | n/a | {:.1} | {:.1} | {:.0} |",
            f(&l, "load_s"),
            f(&l, "prefill_tps"),
            f(&l, "decode_tps"),
            f(&l, "rss_mb")
        );
        ratios.push(format!(
            "{ty}: prefill ours/llama.cpp {:.2}x, decode ours/llama.cpp {:.2}x, peak RSS ours/llama.cpp {:.2}x",
            f(&o, "prefill_tps") / f(&l, "prefill_tps"),
            f(&o, "decode_tps") / f(&l, "decode_tps"),
            f(&o, "rss_mb") / f(&l, "rss_mb")
        ));
    }
    println!();
    for r in ratios {
        println!("{r}");
    }
}
