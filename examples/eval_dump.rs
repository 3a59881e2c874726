//! Runs OUR runtime on the inputs that `bench/bnb_compare.py` prepared and dumps what the comparison needs:
//! projector rows per prompt, full-vocabulary logits at the teacher-forced text positions, greedy tokens,
//! load/vision/prefill/decode timings, weight bytes and peak RSS.
//!
//!   cargo run --release --example eval_dump -- --model M.gguf --inputs DIR/inputs.json --out OUT [--threads N]
//!
//! Inputs (`inputs.json`, written by the harness; every system reads the same pixels and ids):
//!   {"magic": "internvl-bnb-inputs", "version": 1, "pixels": "pixels.f32", "pixel_shape": [T, 3, S, S],
//!    "gen_tokens": G, "prompts": [{"name", "tiles": [row indices into pixels], "ids": [...],
//!    "score_from": s, "teacher": [G ids] (optional)}]}
//! Per prompt (N ids): the tiles are encoded (vision time), the whole prompt is prefilled with the projector
//! rows in place of the image-context ids (prefill time), G tokens are chosen greedily (G - 1 decode steps
//! timed). Then the cache is cut back to `s` and the sequence ids ++ teacher is fed one token at a time
//! through `Session::decode`, so the logits of position p (predicting token p + 1) for p in s .. N + G - 1
//! are the runtime's own lm_head output, not a host-side product. Without `teacher`, the prompt's own greedy
//! tokens are used.
//!
//! Outputs in OUT: `result.json`, `proj_{i}.f32` ([tiles * 256, n_embd]) and `logits_{i}.f32`
//! ([N + G - 1 - s, n_vocab]), raw little-endian float32 in C order.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use internvl::model::kv_cache::KvType;
use internvl::model::{Device, WeightLayout, Weights};
use internvl::sampling::argmax;
use internvl::session::{physical_cores, Session, SessionParams};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const MAGIC: &str = "internvl-bnb-inputs";
const VERSION: u64 = 1;

struct Args {
    model: PathBuf,
    inputs: PathBuf,
    out: PathBuf,
    threads: usize,
    kv: KvType,
    weights: WeightLayout,
}

fn parse_args() -> Res<Args> {
    let mut model = None;
    let mut inputs = None;
    let mut out = None;
    let mut threads = physical_cores();
    let mut kv = KvType::F16;
    let mut weights = WeightLayout::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(val()?)),
            "--inputs" => inputs = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--threads" => threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--kv-type" => {
                let v = val()?;
                kv = KvType::parse(&v).ok_or_else(|| format!("--kv-type {v}: expected f32, f16, q8_0 or q4_0"))?
            }
            "--weights" => {
                let v = val()?;
                weights = WeightLayout::parse(&v).ok_or_else(|| format!("--weights {v}: not a weight layout"))?
            }
            "-h" | "--help" => {
                println!(
                    "usage: eval_dump --model M.gguf --inputs DIR/inputs.json --out OUT [--threads N] [--kv-type f16] \
                     [--weights repacked|mapped|f32-vision|int8-vision|int8]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)").into()),
        }
    }
    Ok(Args {
        model: model.ok_or("--model is required")?,
        inputs: inputs.ok_or("--inputs is required")?,
        out: out.ok_or("--out is required")?,
        threads: threads.max(1),
        kv,
        weights,
    })
}

/// One prompt as the harness wrote it.
struct Prompt {
    name: String,
    tiles: Vec<usize>,
    ids: Vec<u32>,
    score_from: usize,
    teacher: Option<Vec<u32>>,
}

fn u32_list(v: &Value, what: &str) -> Res<Vec<u32>> {
    let arr = v.as_array().ok_or_else(|| format!("{what}: expected a list"))?;
    arr.iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| format!("{what}: {x} is not a u32").into())
        })
        .collect()
}

/// The harness's input set: normalized pixels (`[n, 3, S, S]` as `shape`), greedy tokens per prompt, prompts.
struct Inputs {
    pixels: Vec<f32>,
    shape: [usize; 4],
    gen: usize,
    prompts: Vec<Prompt>,
}

fn read_inputs(path: &Path) -> Res<Inputs> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if m["magic"] != MAGIC || m["version"].as_u64() != Some(VERSION) {
        return Err(format!("{}: not an {MAGIC} v{VERSION} file", path.display()).into());
    }
    let shape = u32_list(&m["pixel_shape"], "pixel_shape")?;
    let [t, c, h, w] = shape.as_slice() else {
        return Err("pixel_shape must have 4 dimensions".into());
    };
    let shape = [*t as usize, *c as usize, *h as usize, *w as usize];
    let pix_name = m["pixels"].as_str().ok_or("pixels: expected a file name")?;
    let pix_path = path.parent().unwrap_or(Path::new(".")).join(pix_name);
    let bytes = std::fs::read(&pix_path).map_err(|e| format!("{}: {e}", pix_path.display()))?;
    let n: usize = shape.iter().product();
    if bytes.len() != n * 4 {
        return Err(format!(
            "{}: {} bytes, pixel_shape {shape:?} needs {}",
            pix_path.display(),
            bytes.len(),
            n * 4
        )
        .into());
    }
    let pixels: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let gen = m["gen_tokens"].as_u64().ok_or("gen_tokens: expected a number")? as usize;
    let mut prompts = Vec::new();
    for (i, p) in m["prompts"]
        .as_array()
        .ok_or("prompts: expected a list")?
        .iter()
        .enumerate()
    {
        let tiles: Vec<usize> = u32_list(&p["tiles"], "tiles")?
            .into_iter()
            .map(|x| x as usize)
            .collect();
        if let Some(bad) = tiles.iter().find(|&&x| x >= shape[0]) {
            return Err(format!("prompt {i}: tile {bad} outside the {} pixel tiles", shape[0]).into());
        }
        let ids = u32_list(&p["ids"], "ids")?;
        let score_from = p["score_from"].as_u64().ok_or("score_from: expected a number")? as usize;
        if score_from >= ids.len() {
            return Err(format!("prompt {i}: score_from {score_from} is past the {} ids", ids.len()).into());
        }
        let teacher = if p["teacher"].is_null() {
            None
        } else {
            Some(u32_list(&p["teacher"], "teacher")?)
        };
        if let Some(t) = &teacher {
            if t.len() != gen {
                return Err(format!("prompt {i}: {} teacher ids, gen_tokens is {gen}", t.len()).into());
            }
        }
        let name = p["name"].as_str().unwrap_or("").to_string();
        prompts.push(Prompt {
            name,
            tiles,
            ids,
            score_from,
            teacher,
        });
    }
    Ok(Inputs {
        pixels,
        shape,
        gen,
        prompts,
    })
}

fn write_f32(path: &Path, data: &[f32]) -> Res<()> {
    let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = BufWriter::new(f);
    for x in data {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush()?;
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in bytes; 0 where /proc is missing.
fn peak_rss() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let Inputs {
        pixels,
        shape,
        gen,
        prompts,
    } = read_inputs(&args.inputs)?;
    if gen == 0 {
        return Err("gen_tokens must be at least 1".into());
    }
    let per_tile = shape[1] * shape[2] * shape[3];
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;

    let t0 = Instant::now();
    let model = Arc::new(Weights::load_with(&[args.model.as_path()], Device::Cpu, args.weights)?);
    let n_ctx = prompts.iter().map(|p| p.ids.len() + gen).max().unwrap_or(0) + 8;
    let params = SessionParams {
        n_ctx,
        kv_type: args.kv,
        n_threads: args.threads,
        ..Default::default()
    };
    let mut s = Session::new(model.clone(), params)?;
    let load_s = t0.elapsed().as_secs_f64();
    let ctx_id = model.meta.img_context_id;
    let n_vocab = model.hp.llm.n_vocab;

    // Warm-up (untimed in the per-prompt figures): the weights are mapped lazily, so the first graph of each
    // part pays the page-in. One tile and a few text tokens touch every weight once.
    let t_warm = Instant::now();
    if let Some(p) = prompts.first() {
        let tile = p.tiles.first().copied().unwrap_or(0);
        s.encode_tiles(&pixels[tile * per_tile..(tile + 1) * per_tile], false)?;
        let text: Vec<u32> = p.ids.iter().copied().filter(|&t| t != ctx_id).take(8).collect();
        let out = s.eval(&text, &[], false)?;
        s.decode(argmax(&out.logits))?;
        s.reset();
    }
    let warmup_s = t_warm.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        s.reset();
        let mut tiles = Vec::with_capacity(p.tiles.len() * per_tile);
        for &t in &p.tiles {
            tiles.extend_from_slice(&pixels[t * per_tile..(t + 1) * per_tile]);
        }
        let tv = Instant::now();
        let vision = s.encode_tiles(&tiles, false)?;
        let vision_s = tv.elapsed().as_secs_f64();
        write_f32(&args.out.join(format!("proj_{i}.f32")), &vision.proj)?;

        let tp = Instant::now();
        let out = s.eval(&p.ids, &vision.proj, false)?;
        let prefill_s = tp.elapsed().as_secs_f64();

        // Greedy: token 0 from the prompt's logits, then G - 1 timed decode steps.
        let mut greedy = vec![argmax(&out.logits)];
        let td = Instant::now();
        while greedy.len() < gen {
            let last = *greedy.last().ok_or("empty greedy list")?;
            greedy.push(argmax(&s.decode(last)?));
        }
        let decode_s = td.elapsed().as_secs_f64();

        // Teacher forcing from position score_from, one token at a time through the decode path.
        let teacher = p.teacher.clone().unwrap_or_else(|| greedy.clone());
        let seq: Vec<u32> = p.ids.iter().chain(teacher.iter()).copied().collect();
        if seq[p.score_from..].contains(&ctx_id) {
            return Err(format!("prompt {i}: image-context ids after score_from {}", p.score_from).into());
        }
        s.truncate(p.score_from);
        let n_scored = seq.len() - 1 - p.score_from;
        let mut logits = Vec::with_capacity(n_scored * n_vocab);
        for &tok in &seq[p.score_from..seq.len() - 1] {
            logits.extend(s.decode(tok)?);
        }
        write_f32(&args.out.join(format!("logits_{i}.f32")), &logits)?;
        eprintln!(
            "  [{}] {}: {} tile(s) {:.0} ms/tile, prefill {} tok {:.1} tok/s, decode {:.1} tok/s",
            i,
            p.name,
            p.tiles.len(),
            vision_s * 1000.0 / p.tiles.len().max(1) as f64,
            p.ids.len(),
            p.ids.len() as f64 / prefill_s,
            (gen - 1) as f64 / decode_s.max(1e-9)
        );
        results.push(json!({
            "name": p.name,
            "n_tiles": p.tiles.len(),
            "vision_s": vision_s,
            "n_prompt": p.ids.len(),
            "prefill_s": prefill_s,
            "n_decode": gen - 1,
            "decode_s": decode_s,
            "greedy": greedy,
            "proj_shape": [vision.proj.len() / model.hp.llm.n_embd, model.hp.llm.n_embd],
            "logits_shape": [n_scored, n_vocab],
        }));
    }

    let file_bytes = std::fs::metadata(&args.model).map(|m| m.len()).unwrap_or(0);
    let result = json!({
        "system": "ours",
        "model": args.model.display().to_string(),
        "file_bytes": file_bytes,
        "weight_bytes": model.weight_bytes(),
        "kv_type": format!("{:?}", args.kv),
        "kv_bytes": s.kv_bytes(),
        "threads": args.threads,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "peak_rss_bytes": peak_rss(),
        "prompts": results,
    });
    let path = args.out.join("result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
