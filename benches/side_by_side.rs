//! Issue 10's side-by-side benchmark: ours, llama.cpp and PyTorch (transformers f32/bf16, bitsandbytes int8)
//! on the same inputs, in one run, each measurement in a child process of its own (so that peak RSS, VmHWM,
//! is one system's), with the same thread count. Run it through `scripts/bench.sh`, which builds it with
//! `RUSTFLAGS="-C target-cpu=native"` and `--features bench-mtmd`, checks the model files and writes
//! `target/bench/side_by_side.md`. See docs/benchmarks.md.
//!
//! Inputs (written once to the work dir and read by every system): the uint8 and the normalized f32 tiles
//! of image1.jpg for 1 tile (the 448² resize), 6 tiles + thumbnail (7) and 12 tiles + thumbnail (13), made
//! by our Pillow-exact tiling; the token ids of three prompts (512 pseudo-random text ids; the chat
//! template with a 1-tile image padded to 256 text ids; the chat template with the 7-tile image and a short
//! question), from the checkpoint's tokenizer.
//!
//! Environment (scripts/bench.sh sets them): BENCH_DIR, BENCH_PREFIX (`$DIR/$PREFIX-$T.gguf` ours,
//! `$DIR/$PREFIX-split-$T.gguf` + `$DIR/mmproj-$PREFIX-split-$T.gguf` llama.cpp), BENCH_CKPT (checkpoint dir:
//! tokenizer, and the PyTorch weights), BENCH_IMAGE, BENCH_THREADS (2), BENCH_SYSTEMS (ours,llama,torch),
//! BENCH_VISION_TYPES (f16,q8_0,q4_0), BENCH_TEXT_TYPES (q8_0,q4_0), BENCH_TORCH_VARIANTS
//! (ref-f32,ref-bf16,bnb-int8-all), BENCH_OURS_LAYOUTS (int8: every job of ours again with these
//! `--weights` layouts, as extra rows; empty: the default layout only), BENCH_PYTHON (python3), BENCH_HF_DIR, BENCH_WORK, BENCH_OUT, BENCH_SMOKE
//! (1: one repetition, 4 decode steps), BENCH_META (a line for the header: date, commit).
mod limits;
mod llamacpp;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use internvl::gguf::GgufFile;
use internvl::image::{self as ivl, Limits, TilingParams};
use internvl::kernels::Kernels;
use internvl::model::{Device, WeightLayout, Weights};
use internvl::prompt::{build_prompt_ids, Conversation};
use internvl::sampling::argmax;
use internvl::session::{Session, SessionParams};
use internvl::tokenizer::Tokenizer;

const QUESTION: &str = "What is shown in this image? Answer briefly.";
const N_PREFILL: usize = 512;
const N_DECODE_TEXT: usize = 256;
const CHILD_ENV: &str = "INTERNVL_BENCH_CHILD";
const WORK_ENV: &str = "INTERNVL_BENCH_WORK";
const TTFT_CTX: usize = 4096;
/// The GGUF key where internvl-convert records the effective type of every part (its recipe).
const RECIPE_KEY: &str = "internvl.converter.recipe";

fn env(k: &str, d: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| d.to_string())
}

fn env_usize(k: &str, d: usize) -> Result<usize, String> {
    match std::env::var(k) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| format!("{k}={v:?} is not a whole number")),
        _ => Ok(d),
    }
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

pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Repetitions (the median is reported).
pub struct Reps {
    pub vision1: usize,
    pub vision13: usize,
    pub prefill: usize,
    pub decode: usize,
}

/// The one input set of every system (jobs.json + tile files in the work dir).
pub struct Inputs {
    pub work: PathBuf,
    pub image_size: usize,
    pub prefill_ids: Vec<u32>,
    pub decode_ids: Vec<u32>,
    /// The chat template with image1.jpg's 13 tiles and the question (~3.4k ids): the long-context decode row.
    pub decode13_ids: Vec<u32>,
    pub ttft_ids: Vec<u32>,
    pub img_context_id: u32,
    pub n_decode: usize,
    pub reps: Reps,
}

fn ids_of(v: &Value, k: &str) -> Result<Vec<u32>, String> {
    v[k].as_array()
        .ok_or_else(|| format!("jobs.json: no array {k}"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| format!("jobs.json: bad id in {k}"))
        })
        .collect()
}

impl Inputs {
    fn read(work: &Path) -> Result<Self, String> {
        let path = work.join("jobs.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let u = |k: &str| {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("jobs.json: no number {k}"))
        };
        let r = |k: &str| {
            v["reps"][k]
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("jobs.json: no reps.{k}"))
        };
        Ok(Inputs {
            work: work.to_path_buf(),
            image_size: u("image_size")?,
            prefill_ids: ids_of(&v, "prefill_ids")?,
            decode_ids: ids_of(&v, "decode_ids")?,
            decode13_ids: ids_of(&v, "decode13_ids")?,
            ttft_ids: ids_of(&v, "ttft_ids")?,
            img_context_id: u("img_context_id")? as u32,
            n_decode: u("n_decode")?,
            reps: Reps {
                vision1: r("vision1")?,
                vision13: r("vision13")?,
                prefill: r("prefill")?,
                decode: r("decode")?,
            },
        })
    }

    /// uint8 tiles `[n, S, S, 3]` (HWC) of input `name` (t1, t7, t13).
    pub fn tiles_u8(&self, name: &str) -> Result<Vec<u8>, String> {
        let p = self.work.join(format!("{name}.u8"));
        std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Normalized f32 tiles `[n, 3, S, S]` of input `name`.
    pub fn tiles_f32(&self, name: &str) -> Result<Vec<f32>, String> {
        let p = self.work.join(format!("{name}.f32"));
        let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub fn n_image_ctx(&self, ids: &[u32]) -> usize {
        ids.iter().filter(|&&t| t == self.img_context_id).count()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ours (children)

/// How ours loads a model: the weight layout (`--weights`) and the kernels (`--kernels`).
#[derive(Clone, Copy)]
struct Load {
    layout: WeightLayout,
    kernels: Kernels,
}

fn ours_session(path: &str, n_ctx: usize, threads: usize, load: Load) -> Result<(Session, f64), String> {
    let t0 = Instant::now();
    let model = Weights::load_with_kernels(&[Path::new(path)], Device::Cpu, load.layout, load.kernels)
        .map_err(|e| format!("{path}: {e}"))?;
    let params = SessionParams {
        n_ctx,
        n_threads: threads,
        ..Default::default()
    };
    let s = Session::new(Arc::new(model), params).map_err(|e| format!("session: {e}"))?;
    Ok((s, t0.elapsed().as_secs_f64()))
}

fn ours_vision(inp: &Inputs, path: &str, threads: usize, load: Load) -> Result<Value, String> {
    let (mut s, load_s) = ours_session(path, 256, threads, load)?;
    let t1 = inp.tiles_f32("t1")?;
    let t13 = inp.tiles_f32("t13")?;
    let per = 3 * inp.image_size * inp.image_size;
    let e = |e: internvl::model::ModelError| format!("vision: {e}");
    s.encode_tiles(&t1, false).map_err(e)?;
    let mut one = Vec::new();
    for _ in 0..inp.reps.vision1 {
        let t = Instant::now();
        s.encode_tiles(&t1, false).map_err(e)?;
        one.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut thirteen = Vec::new();
    for _ in 0..inp.reps.vision13 {
        let t = Instant::now();
        s.encode_tiles(&t13, false).map_err(e)?;
        thirteen.push(t.elapsed().as_secs_f64() * 1e3 / (t13.len() / per) as f64);
    }
    Ok(json!({
        "load_s": load_s,
        "vision1_ms": median(&one),
        "vision13_ms": median(&thirteen),
        "vision13_tiles": t13.len() / per,
        "rss_mb": peak_rss_mb(),
    }))
}

/// `inp.reps.decode` timed runs of `inp.n_decode` greedy steps from token `first` after the `n0`-token
/// context (cut back to it before each): tokens per second, one a run; `e` words the errors.
fn ours_timed_decode(
    s: &mut Session,
    inp: &Inputs,
    n0: usize,
    first: u32,
    e: impl Fn(internvl::model::ModelError) -> String + Copy,
) -> Result<Vec<f64>, String> {
    let mut decode = Vec::new();
    for _ in 0..inp.reps.decode {
        s.truncate(n0);
        let mut tok = first;
        let t = Instant::now();
        for _ in 0..inp.n_decode {
            tok = argmax(&s.decode(tok).map_err(e)?);
        }
        decode.push(inp.n_decode as f64 / t.elapsed().as_secs_f64());
    }
    Ok(decode)
}

fn ours_text(inp: &Inputs, path: &str, threads: usize, load: Load) -> Result<Value, String> {
    let n_ctx = inp.prefill_ids.len().max(inp.decode_ids.len()) + inp.n_decode + 16;
    let (mut s, load_s) = ours_session(path, n_ctx, threads, load)?;
    let e = |e: internvl::model::ModelError| format!("text: {e}");
    // Warm-up: a few tokens and decode steps.
    let out = s
        .eval(&inp.prefill_ids[..32.min(inp.prefill_ids.len())], &[], false)
        .map_err(e)?;
    let mut tok = argmax(&out.logits);
    for _ in 0..2 {
        tok = argmax(&s.decode(tok).map_err(e)?);
    }
    let mut prefill = Vec::new();
    for _ in 0..inp.reps.prefill {
        s.reset();
        let t = Instant::now();
        let out = s.eval(&inp.prefill_ids, &[], false).map_err(e)?;
        argmax(&out.logits);
        prefill.push(inp.prefill_ids.len() as f64 / t.elapsed().as_secs_f64());
    }
    s.reset();
    let proj = s.encode_tiles(&inp.tiles_f32("t1")?, false).map_err(e)?.proj;
    let out = s.eval(&inp.decode_ids, &proj, false).map_err(e)?;
    let first = argmax(&out.logits);
    let n0 = s.n_past();
    let decode = ours_timed_decode(&mut s, inp, n0, first, e)?;
    Ok(json!({
        "load_s": load_s,
        "prefill_tps": median(&prefill),
        "decode_tps": median(&decode),
        "decode_ctx": n0,
        "rss_mb": peak_rss_mb(),
    }))
}

/// Decode steps with image1.jpg's 13 tiles in the context (~3.4k tokens). The image rows are the 1-tile
/// image's projector output repeated 13 times: decoding reads the KV cache whatever its values, so the speed
/// is that of the real 13-tile context without 13 tiles of vision per job (llama.cpp gets the same rows).
fn ours_decode13(inp: &Inputs, path: &str, threads: usize, load: Load) -> Result<Value, String> {
    let n_ctx = inp.decode13_ids.len() + inp.n_decode + 16;
    let (mut s, load_s) = ours_session(path, n_ctx, threads, load)?;
    let e = |e: internvl::model::ModelError| format!("decode13: {e}");
    let one = s.encode_tiles(&inp.tiles_f32("t1")?, false).map_err(e)?.proj;
    let n_img = inp.n_image_ctx(&inp.decode13_ids);
    let rows = repeat_rows(&one, inp.n_image_ctx(&inp.decode_ids), n_img)?;
    let t = Instant::now();
    let out = s.eval(&inp.decode13_ids, &rows, false).map_err(e)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let first = argmax(&out.logits);
    let n0 = s.n_past();
    // Warm-up: two steps (first use of the long-context graphs).
    let mut tok = first;
    for _ in 0..2 {
        tok = argmax(&s.decode(tok).map_err(e)?);
    }
    let decode = ours_timed_decode(&mut s, inp, n0, first, e)?;
    Ok(json!({
        "load_s": load_s,
        "decode13_tps": median(&decode),
        "decode13_ctx": n0,
        "prefill13_tps": inp.decode13_ids.len() as f64 / prefill_s,
        "rss_mb": peak_rss_mb(),
    }))
}

/// One image's `one_rows` projector rows (`one`), repeated to `n_rows` rows.
pub fn repeat_rows(one: &[f32], one_rows: usize, n_rows: usize) -> Result<Vec<f32>, String> {
    if one_rows == 0 || one.is_empty() || !one.len().is_multiple_of(one_rows) || !n_rows.is_multiple_of(one_rows) {
        return Err(format!(
            "cannot repeat {} floats of {one_rows} rows into {n_rows} rows",
            one.len()
        ));
    }
    Ok(one
        .iter()
        .copied()
        .cycle()
        .take(one.len() / one_rows * n_rows)
        .collect())
}

fn ours_ttft(inp: &Inputs, path: &str, threads: usize, n_ctx: usize, load: Load) -> Result<Value, String> {
    let (mut s, load_s) = ours_session(path, n_ctx, threads, load)?;
    let e = |e: internvl::model::ModelError| format!("ttft: {e}");
    let tiles = inp.tiles_f32("t7")?;
    let t = Instant::now();
    let proj = s.encode_tiles(&tiles, false).map_err(e)?.proj;
    let vision_s = t.elapsed().as_secs_f64();
    let out = s.eval(&inp.ttft_ids, &proj, false).map_err(e)?;
    let first = argmax(&out.logits);
    let ttft_s = t.elapsed().as_secs_f64();
    Ok(json!({
        "load_s": load_s,
        "ttft_ms": ttft_s * 1e3,
        "vision_ms": vision_s * 1e3,
        "prefill_ms": (ttft_s - vision_s) * 1e3,
        "n_prompt": inp.ttft_ids.len(),
        "first_token": first,
        "n_ctx": n_ctx,
        "rss_mb": peak_rss_mb(),
    }))
}

fn run_child_job(job: &Value) -> Result<Value, String> {
    let work = PathBuf::from(std::env::var(WORK_ENV).map_err(|_| format!("{WORK_ENV} not set"))?);
    let inp = Inputs::read(&work)?;
    let s = |k: &str| {
        job[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("child job: no {k}"))
    };
    let threads = job["threads"].as_u64().unwrap_or(2) as usize;
    let n_ctx = job["n_ctx"].as_u64().unwrap_or(TTFT_CTX as u64) as usize;
    let layout = match job["layout"].as_str() {
        None => WeightLayout::default(),
        Some(l) => WeightLayout::parse(l).ok_or_else(|| format!("child job: unknown weight layout {l}"))?,
    };
    let kernels = match job["kernels"].as_str() {
        None => Kernels::default(),
        Some(k) => k.parse().map_err(|e| format!("child job: {e}"))?,
    };
    let load = Load { layout, kernels };
    match (s("sys")?.as_str(), s("job")?.as_str()) {
        ("ours", "vision") => ours_vision(&inp, &s("model")?, threads, load),
        ("ours", "text") => ours_text(&inp, &s("model")?, threads, load),
        ("ours", "ttft") => ours_ttft(&inp, &s("model")?, threads, n_ctx, load),
        ("ours", "decode13") => ours_decode13(&inp, &s("model")?, threads, load),
        ("machine", "limits") => Ok(limits::measure(threads)),
        ("llama", "vision") => llamacpp::vision(&inp, &s("model")?, &s("mmproj")?, threads),
        ("llama", "text") => {
            let mm = s("mmproj").ok();
            llamacpp::text(&inp, &s("model")?, mm.as_deref(), threads)
        }
        ("llama", "decode13") => {
            let mm = s("mmproj").ok();
            llamacpp::decode13(&inp, &s("model")?, mm.as_deref(), threads)
        }
        ("llama", "ttft") => llamacpp::ttft(&inp, &s("model")?, &s("mmproj")?, threads, n_ctx),
        (a, b) => Err(format!("unknown child job {a}/{b}")),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The parent: inputs, jobs, table

struct Cfg {
    root: PathBuf,
    dir: PathBuf,
    prefix: String,
    ckpt: PathBuf,
    image: PathBuf,
    threads: usize,
    smoke: bool,
    work: PathBuf,
    out: PathBuf,
    systems: Vec<String>,
    vision_types: Vec<String>,
    text_types: Vec<String>,
    torch_variants: Vec<String>,
    /// Extra weight layouts of ours (BENCH_OURS_LAYOUTS), besides the default: each job of ours runs again.
    ours_layouts: Vec<String>,
    /// BENCH_OURS_KERNELS: passed to ours as the `--kernels` load parameter (None: the library's default).
    ours_kernels: Option<String>,
    /// What those kernels run on this CPU (`Kernels::resolve`), for the header.
    ours_choice: String,
    /// Whether ours runs AVX-512 code (then this run is not the AVX2 class, whatever ggml was built for).
    ours_avx512: bool,
    python: String,
    hf_dir: PathBuf,
    torch_f32_tiles13: usize,
    torch_decode: usize,
}

fn list(k: &str, d: &str) -> Vec<String> {
    env(k, d)
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Cfg {
    fn from_env() -> Result<Self, String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = PathBuf::from(env("BENCH_DIR", "/tmp"));
        let prefix = env("BENCH_PREFIX", "full1");
        let ckpt = PathBuf::from(env("BENCH_CKPT", &dir.join(&prefix).to_string_lossy()));
        let smoke = env("BENCH_SMOKE", "0") == "1";
        let work = PathBuf::from(env("BENCH_WORK", &root.join("target/bench/work").to_string_lossy()));
        let out_default = root.join(if smoke {
            "target/bench/side_by_side_smoke.md"
        } else {
            "target/bench/side_by_side.md"
        });
        let kernels = std::env::var("BENCH_OURS_KERNELS")
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        let parsed: Kernels = match &kernels {
            Some(k) => k.parse().map_err(|e| format!("BENCH_OURS_KERNELS: {e}"))?,
            None => Kernels::default(),
        };
        let choice = parsed.resolve().map_err(|e| format!("BENCH_OURS_KERNELS: {e}"))?;
        let ours_choice = format!("{choice:?}");
        // Ours beyond AVX2: AVX-512 VNNI, or the AVX-VNNI products (VEX, or their AVX-512 VL form).
        let ours_avx512 = choice.isa.base() != choice.isa || choice.isa == internvl::kernels::Isa::Avx512Vnni;
        let hf_default = Path::new("/tmp/bnb-compare")
            .join(ckpt.file_name().unwrap_or_default())
            .join("hf");
        Ok(Cfg {
            image: PathBuf::from(env(
                "BENCH_IMAGE",
                &root.join("../shared/media/image1.jpg").to_string_lossy(),
            )),
            out: PathBuf::from(env("BENCH_OUT", &out_default.to_string_lossy())),
            threads: env_usize("BENCH_THREADS", 2)?,
            systems: list("BENCH_SYSTEMS", "ours,llama,torch"),
            vision_types: list("BENCH_VISION_TYPES", "f16,q8_0,q4_0"),
            text_types: list("BENCH_TEXT_TYPES", "q8_0,q4_0"),
            torch_variants: list("BENCH_TORCH_VARIANTS", "ref-f32,ref-bf16,bnb-int8-all"),
            // Unset: int8 as an extra layout; set but empty: the default layout only.
            ours_layouts: match std::env::var("BENCH_OURS_LAYOUTS") {
                Ok(v) => v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                Err(_) => vec!["int8".to_string()],
            },
            ours_kernels: kernels.clone(),
            ours_choice,
            ours_avx512,
            python: env("BENCH_PYTHON", "python3"),
            hf_dir: PathBuf::from(env("BENCH_HF_DIR", &hf_default.to_string_lossy())),
            torch_f32_tiles13: env_usize("BENCH_TORCH_F32_TILES13", if smoke { 13 } else { 4 })?,
            torch_decode: env_usize("BENCH_TORCH_DECODE", if smoke { 4 } else { 16 })?,
            root,
            dir,
            prefix,
            ckpt,
            smoke,
            work,
        })
    }
    /// Ours' weight layouts: the default (key suffix "") and each of BENCH_OURS_LAYOUTS ("@layout").
    fn ours_variants(&self) -> Vec<(String, String)> {
        let mut v = vec![(String::new(), "repacked".to_string())];
        v.extend(
            self.ours_layouts
                .iter()
                .filter(|l| l.as_str() != "repacked")
                .map(|l| (format!("@{l}"), l.clone())),
        );
        v
    }
    fn has(&self, sys: &str) -> bool {
        self.systems.iter().any(|s| s == sys)
    }
    fn ours(&self, t: &str) -> PathBuf {
        self.dir.join(format!("{}-{t}.gguf", self.prefix))
    }
    fn lc_text(&self, t: &str) -> PathBuf {
        self.dir.join(format!("{}-split-{t}.gguf", self.prefix))
    }
    fn lc_mmproj(&self, t: &str) -> PathBuf {
        self.dir.join(format!("mmproj-{}-split-{t}.gguf", self.prefix))
    }
}

/// Writes the tiles and ids every system reads; returns a short description.
fn prepare_inputs(cfg: &Cfg, reps: &Value, n_decode: usize) -> Result<Value, String> {
    std::fs::create_dir_all(&cfg.work).map_err(|e| format!("{}: {e}", cfg.work.display()))?;
    let rgb = ivl::load_path(&cfg.image, &Limits::default()).map_err(|e| format!("{}: {e}", cfg.image.display()))?;
    let config_path = cfg.ckpt.join("config.json");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let vc = &config["vision_config"];
    let image_size = vc["image_size"].as_u64().unwrap_or(448) as usize;
    let patch = vc["patch_size"].as_u64().unwrap_or(14) as usize;
    let ds = config["downsample_ratio"].as_f64().unwrap_or(0.5);
    let side = (image_size / patch.max(1)) as f64 * ds;
    let num_image_token = (side * side).round() as usize;
    let lut = ivl::normalize_lut();
    let mut counts = serde_json::Map::new();
    for (name, max_tiles, want) in [("t1", 1u32, 1usize), ("t7", 6, 7), ("t13", 12, 13)] {
        let params = TilingParams {
            image_size: image_size as u32,
            min_tiles: 1,
            max_tiles,
            use_thumbnail: true,
        };
        let tiles = ivl::tile_u8(&rgb, &params).map_err(|e| format!("tiling {}: {e}", cfg.image.display()))?;
        if tiles.len() != want {
            return Err(format!(
                "{} gives {} tiles at max_num={max_tiles}, the benchmark wants {want} (use image1.jpg)",
                cfg.image.display(),
                tiles.len()
            ));
        }
        let mut u8s = Vec::with_capacity(tiles.len() * image_size * image_size * 3);
        let mut f32s = Vec::with_capacity(tiles.len() * image_size * image_size * 3 * 4);
        for t in &tiles {
            let raw = t.as_raw();
            u8s.extend_from_slice(raw);
            for (c, table) in lut.iter().enumerate() {
                for px in raw.chunks_exact(3) {
                    f32s.extend_from_slice(&table[px[c] as usize].to_le_bytes());
                }
            }
        }
        for (ext, bytes) in [("u8", &u8s), ("f32", &f32s)] {
            let p = cfg.work.join(format!("{name}.{ext}"));
            std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        counts.insert(name.into(), json!(tiles.len()));
    }
    let tok = Tokenizer::from_dir(&cfg.ckpt).map_err(|e| format!("tokenizer of {}: {e}", cfg.ckpt.display()))?;
    let img_context_id = tok.ids.img_context;
    let ttft = build_prompt_ids(&tok, &Conversation::single(QUESTION), &[7], num_image_token)
        .map_err(|e| format!("prompt: {e}"))?;
    let decode13 = build_prompt_ids(&tok, &Conversation::single(QUESTION), &[13], num_image_token)
        .map_err(|e| format!("prompt: {e}"))?;
    let mut decode = build_prompt_ids(&tok, &Conversation::single(QUESTION), &[1], num_image_token)
        .map_err(|e| format!("prompt: {e}"))?
        .ids;
    let mut s: u64 = 0x1234_5678;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % 150_000) as u32
    };
    let prefill: Vec<u32> = (0..N_PREFILL).map(|_| next()).collect();
    // Pad the 1-tile prompt with ordinary text ids to 256 text tokens (256 image + 256 text in the context).
    while decode.len() < num_image_token + N_DECODE_TEXT {
        decode.push(next());
    }
    let jobs = json!({
        "image": cfg.image.to_string_lossy(),
        "image_size": image_size,
        "num_image_token": num_image_token,
        "tiles": counts,
        "img_context_id": img_context_id,
        "question": QUESTION,
        "prefill_ids": prefill,
        "decode_ids": decode,
        "decode13_ids": decode13.ids,
        "ttft_ids": ttft.ids,
        "n_decode": n_decode,
        "reps": reps,
    });
    let p = cfg.work.join("jobs.json");
    std::fs::write(&p, serde_json::to_string(&jobs).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(jobs)
}

/// Runs one child (this binary with a job, or the Python worker); stderr goes to the terminal, the last
/// `RESULT {json}` / `ERROR msg` line of stdout is the answer.
fn run_child(mut cmd: Command) -> Result<Value, String> {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).output();
    let out = out.map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().rev() {
        if let Some(r) = line.strip_prefix("RESULT ") {
            return serde_json::from_str(r).map_err(|e| format!("bad result line: {e}"));
        }
        if let Some(r) = line.strip_prefix("ERROR ") {
            return Err(r.to_string());
        }
    }
    Err(format!(
        "no result (exit status {}); stdout tail: {}",
        out.status,
        tail(&text, 5)
    ))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

struct Job {
    key: String,
    label: String,
    estimate_s: f64,
    cmd: Command,
}

fn rust_job(cfg: &Cfg, key: &str, label: String, est: f64, job: Value) -> Result<Job, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut job = job;
    if let (Some(k), Some("ours")) = (&cfg.ours_kernels, job["sys"].as_str()) {
        job["kernels"] = json!(k);
    }
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, job.to_string()).env(WORK_ENV, &cfg.work);
    Ok(Job {
        key: key.into(),
        label,
        estimate_s: est,
        cmd,
    })
}

/// The jobs of text job `job` (labelled `what`) on every text type: ours on each layout, llama.cpp's
/// (given the projector where `llama_mmproj`); `n_ctx` where the job sets the context size.
fn text_jobs(
    cfg: &Cfg,
    job: &str,
    what: &str,
    est: f64,
    n_ctx: Option<usize>,
    llama_mmproj: bool,
    jobs: &mut Vec<Job>,
) -> Result<(), String> {
    let th = cfg.threads;
    for t in &cfg.text_types {
        if cfg.has("ours") {
            for (key, layout) in cfg.ours_variants() {
                let mut j = json!({"sys": "ours", "job": job, "model": cfg.ours(t), "threads": th});
                if let Some(n) = n_ctx {
                    j["n_ctx"] = json!(n);
                }
                j["layout"] = json!(layout);
                jobs.push(rust_job(
                    cfg,
                    &format!("ours/{job}/{t}{key}"),
                    format!("ours {what} {t}{key}"),
                    est,
                    j,
                )?);
            }
        }
        if cfg.has("llama") {
            let mut j = json!({"sys": "llama", "job": job, "model": cfg.lc_text(t)});
            if llama_mmproj {
                j["mmproj"] = json!(cfg.lc_mmproj(t));
            }
            j["threads"] = json!(th);
            if let Some(n) = n_ctx {
                j["n_ctx"] = json!(n);
            }
            jobs.push(rust_job(
                cfg,
                &format!("llama/{job}/{t}"),
                format!("llama.cpp {what} {t}"),
                est,
                j,
            )?);
        }
    }
    Ok(())
}

fn plan(cfg: &Cfg, reps: &Reps, n_decode: usize) -> Result<Vec<Job>, String> {
    let th = cfg.threads;
    let mut jobs = Vec::new();
    // The machine's limits first (a quiet process of its own): read bandwidth and multiply peaks.
    jobs.push(rust_job(
        cfg,
        "machine/limits",
        "limits: read bandwidth, f32/int8 peaks".into(),
        20.0,
        json!({"sys": "machine", "job": "limits", "threads": th}),
    )?);
    // Rough seconds on a quiet 2-core AVX-512 machine (issue 10's figures): ViT ~2.5 s/tile, prefill ~150
    // tok/s, decode ~60 tok/s; PyTorch ViT 3 s (f32), 1.6 s (bf16), 1.2 s (int8) per tile, ~80 tok/s prefill.
    let vis_tiles = (1 + reps.vision1 + 13 * reps.vision13) as f64;
    for t in &cfg.vision_types {
        if cfg.has("ours") {
            let p = cfg.ours(t).to_string_lossy().into_owned();
            for (key, layout) in cfg.ours_variants() {
                let j = json!({"sys": "ours", "job": "vision", "model": p, "threads": th, "layout": layout});
                jobs.push(rust_job(
                    cfg,
                    &format!("ours/vision/{t}{key}"),
                    format!("ours vision {t}{key}"),
                    3.0 + vis_tiles * 2.5,
                    j,
                )?);
            }
        }
        if cfg.has("llama") {
            let j = json!({"sys": "llama", "job": "vision", "model": cfg.lc_text(t), "mmproj": cfg.lc_mmproj(t),
                           "threads": th});
            jobs.push(rust_job(
                cfg,
                &format!("llama/vision/{t}"),
                format!("llama.cpp vision {t}"),
                5.0 + vis_tiles * 2.5,
                j,
            )?);
        }
    }
    let text_est =
        3.0 + (reps.prefill as f64 + 1.0) * N_PREFILL as f64 / 150.0 + 2.5 + (reps.decode * n_decode) as f64 / 60.0;
    // Without mtmd the image rows of the decode context are constants (decode speed is the same).
    let mtmd = cfg!(feature = "bench-mtmd");
    text_jobs(cfg, "text", "prefill+decode", text_est, None, mtmd, &mut jobs)?;
    // ~3.4k tokens of prefill, one tile of vision, then the decode steps at ~40 tok/s.
    let d13_est = 3.0 + 2.5 + 3400.0 / 150.0 + ((reps.decode + 1) * n_decode) as f64 / 40.0;
    text_jobs(
        cfg,
        "decode13",
        "decode, 13 tiles in context",
        d13_est,
        None,
        mtmd,
        &mut jobs,
    )?;
    let ttft_est = 3.0 + 7.0 * 2.5 + 1830.0 / 150.0;
    text_jobs(cfg, "ttft", "TTFT + RSS", ttft_est, Some(TTFT_CTX), true, &mut jobs)?;
    if cfg.has("torch") {
        let script = cfg.root.join("bench/torch_speed.py");
        for v in &cfg.torch_variants {
            let (tile_s, load_s) = match v.as_str() {
                "ref-f32" => (3.0, 15.0),
                "ref-bf16" => (1.6, 10.0),
                _ => (1.2, 40.0),
            };
            let t13 = if v == "ref-f32" { cfg.torch_f32_tiles13 } else { 13 };
            let est = load_s
                + (1 + reps.vision1 + t13 + 7 + 1) as f64 * tile_s
                + (1830.0 + (reps.prefill + 1) as f64 * N_PREFILL as f64) / 80.0
                + cfg.torch_decode as f64 / 3.0;
            let mut cmd = Command::new(&cfg.python);
            cmd.arg(&script)
                .arg("--ckpt")
                .arg(&cfg.ckpt)
                .arg("--hf-dir")
                .arg(&cfg.hf_dir)
                .arg("--variant")
                .arg(v)
                .arg("--work")
                .arg(&cfg.work)
                .arg("--threads")
                .arg(th.to_string())
                .arg("--tiles13")
                .arg(t13.to_string())
                .arg("--n-decode")
                .arg(cfg.torch_decode.to_string())
                .arg("--out")
                .arg(cfg.work.join(format!("torch-{v}.json")));
            jobs.push(Job {
                key: format!("torch/{v}"),
                label: format!("PyTorch {v}"),
                estimate_s: est,
                cmd,
            });
        }
    }
    Ok(jobs)
}

fn missing_files(cfg: &Cfg) -> Vec<PathBuf> {
    let mut need = vec![cfg.image.clone(), cfg.ckpt.join("config.json")];
    let mut types: Vec<&String> = cfg.vision_types.iter().chain(cfg.text_types.iter()).collect();
    types.dedup();
    for t in types {
        if cfg.has("ours") {
            need.push(cfg.ours(t));
        }
        if cfg.has("llama") {
            need.push(cfg.lc_text(t));
            need.push(cfg.lc_mmproj(t));
        }
    }
    if cfg.has("torch") {
        need.push(cfg.root.join("bench/torch_speed.py"));
    }
    let mut m: Vec<PathBuf> = need.into_iter().filter(|p| !p.exists()).collect();
    m.dedup();
    m
}

fn loadavg() -> (f64, String) {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let parts: Vec<&str> = s.split_whitespace().take(3).collect();
    (
        parts.first().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        parts.join(" "),
    )
}

fn machine() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let flags = field("flags");
    let set: std::collections::HashSet<&str> = flags.split_whitespace().collect();
    let want = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ];
    let (yes, no): (Vec<&str>, Vec<&str>) = want.iter().copied().partition(|f| set.contains(f));
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let mut rust_feats = Vec::new();
    if cfg!(target_feature = "avx2") {
        rust_feats.push("avx2");
    }
    if cfg!(target_feature = "fma") {
        rust_feats.push("fma");
    }
    if cfg!(target_feature = "f16c") {
        rust_feats.push("f16c");
    }
    if cfg!(target_feature = "avx512f") {
        rust_feats.push("avx512f");
    }
    if cfg!(target_feature = "avx512vnni") {
        rust_feats.push("avx512vnni");
    }
    if cfg!(target_feature = "avx512bf16") {
        rust_feats.push("avx512bf16");
    }
    vec![
        format!("CPU: {} ({} logical CPUs, {} physical cores; {} RAM)", field("model name"), logical,
                internvl::session::physical_cores(), mem),
        format!("CPU flags present: {}; absent: {}", yes.join(" "), if no.is_empty() { "none".into() } else { no.join(" ") }),
        format!("ggml (one build, linked into ours and llama.cpp alike): {}", llamacpp::system_info()),
        format!("ggml CPU features seen by ours: {:?}", internvl::ggml::cpu_features()),
        format!(
            "this build's Rust target features: {} (llama-cpp-sys-2 configures ggml from RUSTFLAGS, see the Run line: \
             target-cpu=native gives GGML_NATIVE=ON, another target-cpu the GGML_AVX2/FMA/F16C/AVX512* switches of its features)",
            if rust_feats.is_empty() { "baseline".into() } else { rust_feats.join(" ") },
        ),
        format!("ours: SessionParams::default() = {:?}", SessionParams::default()),
    ]
}

fn get(res: &std::collections::BTreeMap<String, Result<Value, String>>, key: &str, field: &str) -> Option<f64> {
    res.get(key)?.as_ref().ok()?[field].as_f64().filter(|v| v.is_finite())
}

struct Row {
    measure: String,
    ty: String,
    unit_digits: usize,
    ours: Option<f64>,
    llama: Option<f64>,
    torch: [Option<f64>; 3],
    /// Anchors that count for "best" (name, value).
    anchors: Vec<(String, Option<f64>)>,
    lower_better: bool,
    /// Issue 10's target for ours / best; None: shown for information.
    target: Option<f64>,
}

fn fmt(v: Option<f64>, d: usize) -> String {
    match v {
        Some(x) => format!("{x:.d$}"),
        None => "n/a".into(),
    }
}

impl Row {
    fn best(&self) -> Option<(String, f64)> {
        let mut best: Option<(String, f64)> = None;
        for (n, v) in &self.anchors {
            if let Some(v) = v {
                let better = match &best {
                    None => true,
                    Some((_, b)) => (self.lower_better && v < b) || (!self.lower_better && v > b),
                };
                if better {
                    best = Some((n.clone(), *v));
                }
            }
        }
        best
    }
    fn render(&self) -> String {
        let best = self.best();
        let ratio = match (self.ours, &best) {
            (Some(o), Some((_, b))) if *b > 0.0 => Some(o / b),
            _ => None,
        };
        let met = match (ratio, self.target) {
            (_, None) => "(no target)",
            (Some(r), Some(t)) if self.lower_better => {
                if r <= t {
                    "met"
                } else {
                    "NOT met"
                }
            }
            (Some(r), Some(t)) => {
                if r >= t {
                    "met"
                } else {
                    "NOT met"
                }
            }
            (None, Some(_)) => "n/a",
        };
        let target = match self.target {
            Some(t) => format!("{} {t:.2}x", if self.lower_better { "≤" } else { "≥" }),
            None => "-".into(),
        };
        let d = self.unit_digits;
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.measure,
            self.ty,
            fmt(self.ours, d),
            fmt(self.llama, d),
            fmt(self.torch[0], d),
            fmt(self.torch[1], d),
            fmt(self.torch[2], d),
            best.as_ref().map_or("n/a".into(), |(n, v)| format!("{n} {v:.d$}")),
            ratio.map_or("n/a".into(), |r| format!("{r:.2}x")),
            target,
            met,
        )
    }
}

/// A row's type column: the file's type, and ours' layout when not the default ("q8_0, ours --weights int8").
fn type_label(t: &str, key: &str) -> String {
    match key.strip_prefix('@') {
        Some(layout) => format!("{t}, ours --weights {layout}"),
        None => t.to_string(),
    }
}

fn table(cfg: &Cfg, res: &std::collections::BTreeMap<String, Result<Value, String>>) -> Vec<String> {
    let tv = ["ref-f32", "ref-bf16", "bnb-int8-all"];
    let torch = |field: &str| -> [Option<f64>; 3] { tv.map(|v| get(res, &format!("torch/{v}"), field)) };
    let mut rows = Vec::new();
    for (field, name) in [
        ("vision1_ms", "vision ms/tile, 1-tile image"),
        ("vision13_ms", "vision ms/tile, 13-tile image"),
    ] {
        for (t, key) in cfg
            .vision_types
            .iter()
            .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
        {
            let tr = torch(field);
            rows.push(Row {
                measure: name.into(),
                ty: type_label(t, &key),
                unit_digits: 0,
                ours: get(res, &format!("ours/vision/{t}{key}"), field),
                llama: get(res, &format!("llama/vision/{t}"), field),
                torch: tr,
                anchors: vec![
                    (format!("llama.cpp {t}"), get(res, &format!("llama/vision/{t}"), field)),
                    ("PyTorch bf16".into(), tr[1]),
                    ("bnb int8".into(), tr[2]),
                ],
                lower_better: true,
                target: Some(0.9),
            });
        }
    }
    for (t, key) in cfg
        .text_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let l = get(res, &format!("llama/text/{t}"), "decode_tps");
        rows.push(Row {
            measure: "decode tok/s, 1-tile image + 256 text tokens in context".into(),
            ty: type_label(t, &key),
            unit_digits: 1,
            ours: get(res, &format!("ours/text/{t}{key}"), "decode_tps"),
            llama: l,
            torch: torch("decode_tps"),
            anchors: vec![(format!("llama.cpp {t}"), l)],
            lower_better: false,
            target: Some(1.1),
        });
    }
    for (t, key) in cfg
        .text_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let l = get(res, &format!("llama/decode13/{t}"), "decode13_tps");
        rows.push(Row {
            measure: "decode tok/s, image1.jpg's 13 tiles + question in context (~3.4k tokens)".into(),
            ty: type_label(t, &key),
            unit_digits: 1,
            ours: get(res, &format!("ours/decode13/{t}{key}"), "decode13_tps"),
            llama: l,
            torch: [None, None, None],
            anchors: vec![(format!("llama.cpp {t}"), l)],
            lower_better: false,
            target: Some(1.1),
        });
    }
    for (t, key) in cfg
        .text_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let l = get(res, &format!("llama/text/{t}"), "prefill_tps");
        rows.push(Row {
            measure: format!("prefill tok/s, {N_PREFILL} text tokens"),
            ty: type_label(t, &key),
            unit_digits: 1,
            ours: get(res, &format!("ours/text/{t}{key}"), "prefill_tps"),
            llama: l,
            torch: torch("prefill_tps"),
            anchors: vec![(format!("llama.cpp {t}"), l)],
            lower_better: false,
            target: Some(1.0),
        });
    }
    for (t, key) in cfg
        .text_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let tr = torch("ttft_ms");
        let l = get(res, &format!("llama/ttft/{t}"), "ttft_ms");
        rows.push(Row {
            measure: "time to first token ms, image1.jpg 6 tiles + thumbnail, short question (load excluded)".into(),
            ty: type_label(t, &key),
            unit_digits: 0,
            ours: get(res, &format!("ours/ttft/{t}{key}"), "ttft_ms"),
            llama: l,
            torch: tr,
            anchors: vec![
                (format!("llama.cpp {t}"), l),
                ("PyTorch f32".into(), tr[0]),
                ("PyTorch bf16".into(), tr[1]),
                ("bnb int8".into(), tr[2]),
            ],
            lower_better: true,
            target: Some(0.8),
        });
    }
    for (t, key) in cfg
        .text_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let l = get(res, &format!("llama/ttft/{t}"), "load_s");
        rows.push(Row {
            measure: "load s (weights + context, before the TTFT request)".into(),
            ty: type_label(t, &key),
            unit_digits: 2,
            ours: get(res, &format!("ours/ttft/{t}{key}"), "load_s"),
            llama: l,
            torch: torch("load_s"),
            anchors: vec![(format!("llama.cpp {t}"), l)],
            lower_better: true,
            target: None,
        });
    }
    if cfg.text_types.iter().any(|t| t == "q4_0") {
        for (key, _) in cfg.ours_variants() {
            let o = get(res, &format!("ours/ttft/q4_0{key}"), "rss_mb");
            let l = get(res, "llama/ttft/q4_0", "rss_mb");
            rows.push(Row {
                measure: format!("peak RSS MB, q4_0, 7-tile image, n_ctx {TTFT_CTX} (the TTFT process)"),
                ty: type_label("q4_0", &key),
                unit_digits: 0,
                ours: o,
                llama: l,
                torch: torch("rss_mb"),
                anchors: vec![("llama.cpp q4_0".into(), l)],
                lower_better: true,
                target: Some(0.7),
            });
            rows.push(Row {
                measure: "peak RSS MB against the 900 MB limit".into(),
                ty: type_label("q4_0", &key),
                unit_digits: 0,
                ours: o,
                llama: l,
                torch: [None, None, None],
                anchors: vec![("limit".into(), Some(900.0))],
                lower_better: true,
                target: Some(1.0),
            });
        }
    }
    let mut lines = vec![
        "| measure | type | ours | llama.cpp | PyTorch f32 | PyTorch bf16 | bnb int8 | best anchor | ours / best | target | |"
            .to_string(),
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|---|".to_string(),
    ];
    lines.extend(rows.iter().map(Row::render));
    lines
}

/// The model's sizes (checkpoint config.json) that the limits need.
struct Dims {
    /// Vision: layers, width, MLP width, tokens per tile (patches + class token), patch side.
    v_layers: f64,
    v_d: f64,
    v_ff: f64,
    v_tokens: f64,
    patch: f64,
    /// Rows per tile after the pixel shuffle (the projector's rows).
    img_rows: f64,
    /// Language model: layers, width, MLP width, K/V width (kv heads x head dim).
    l_layers: f64,
    l_d: f64,
    l_ff: f64,
    l_kv: f64,
}

impl Dims {
    fn read(ckpt: &Path) -> Result<Self, String> {
        let p = ckpt.join("config.json");
        let c: Value = serde_json::from_str(&std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let num = |v: &Value, k: &str| v[k].as_f64().ok_or_else(|| format!("{}: no number {k}", p.display()));
        let (v, l) = (&c["vision_config"], &c["llm_config"]);
        let side = num(v, "image_size")? / num(v, "patch_size")?;
        let ds = c["downsample_ratio"].as_f64().unwrap_or(0.5);
        let heads = num(l, "num_attention_heads")?;
        let l_d = num(l, "hidden_size")?;
        Ok(Dims {
            v_layers: num(v, "num_hidden_layers")?,
            v_d: num(v, "hidden_size")?,
            v_ff: num(v, "intermediate_size")?,
            v_tokens: side * side + 1.0,
            patch: num(v, "patch_size")?,
            img_rows: (side * ds).powi(2),
            l_layers: num(l, "num_hidden_layers")?,
            l_d,
            l_ff: num(l, "intermediate_size")?,
            l_kv: num(l, "num_key_value_heads")? * l_d / heads,
        })
    }
    /// Operations (2 per multiply-add) of one tile: patch embedding, the ViT's products and attention, the
    /// projector (LayerNorm, 4d -> d_llm, d_llm -> d_llm).
    fn tile_ops(&self) -> f64 {
        let (n, d) = (self.v_tokens, self.v_d);
        let patch = 2.0 * (n - 1.0) * d * 3.0 * self.patch * self.patch;
        let block = 2.0 * n * (4.0 * d * d + 2.0 * d * self.v_ff) + 4.0 * n * n * d;
        let proj = 2.0 * self.img_rows * (4.0 * d * self.l_d + self.l_d * self.l_d);
        patch + self.v_layers * block + proj
    }
    /// Operations of a prefill of `n` tokens from an empty cache (causal attention; logits of the last only).
    fn prefill_ops(&self, n: f64) -> f64 {
        let d = self.l_d;
        let mats = 2.0 * (2.0 * d * d + 2.0 * d * self.l_kv + 3.0 * d * self.l_ff);
        let attn = 4.0 * d * (n + 1.0) / 2.0;
        self.l_layers * n * (mats + attn)
    }
    /// Bytes of the KV cache (f16, both systems' default) read by one decoded token at `ctx` tokens.
    fn kv_bytes(&self, ctx: f64) -> f64 {
        2.0 * self.l_layers * self.l_kv * ctx * 2.0
    }
}

/// Bytes of weights one decoded token reads: every tensor of llama.cpp's text file (the language model
/// alone) except the token-embedding table, of which one row is read. The same weights as ours at the
/// same type (the recipes are checked to match).
fn weight_bytes_per_token(text_gguf: &Path) -> Result<f64, String> {
    let f = GgufFile::open(text_gguf).map_err(|e| format!("{}: {e}", text_gguf.display()))?;
    let mut bytes = 0.0;
    for t in f.tensors() {
        if t.name == llamacpp::TOKEN_EMBD {
            let rows = t.ne.get(1).copied().unwrap_or(1).max(1);
            bytes += (t.size / rows) as f64;
        } else {
            bytes += t.size as f64;
        }
    }
    Ok(bytes)
}

/// The recipe line each input file records (`internvl.converter.recipe`: the effective type of every part),
/// up to its first ';' (the fixed rules after it are the same for every file).
fn recipe_of(path: &Path) -> Result<String, String> {
    let f = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r = f.get_str(RECIPE_KEY).map_err(|_| {
        format!(
            "{}: no {RECIPE_KEY} (made by an older converter: remake it)",
            path.display()
        )
    })?;
    Ok(r.split(';').next().unwrap_or(r).trim().to_string())
}

/// Per weight type: the recipe of ours' file and of llama.cpp's pair, which must agree (the same weights).
fn recipes(cfg: &Cfg) -> Result<Vec<String>, String> {
    let mut types: Vec<&String> = cfg.vision_types.iter().chain(cfg.text_types.iter()).collect();
    types.sort();
    types.dedup();
    let mut lines = Vec::new();
    for t in types {
        let mut seen: Vec<(PathBuf, String)> = Vec::new();
        if cfg.has("ours") {
            seen.push((cfg.ours(t), recipe_of(&cfg.ours(t))?));
        }
        if cfg.has("llama") {
            seen.push((cfg.lc_text(t), recipe_of(&cfg.lc_text(t))?));
            seen.push((cfg.lc_mmproj(t), recipe_of(&cfg.lc_mmproj(t))?));
        }
        if let Some((p0, r0)) = seen.first() {
            for (p, r) in &seen[1..] {
                if r != r0 {
                    return Err(format!(
                        "the {t} files hold different weights: {} has \"{r0}\", {} has \"{r}\"; remake the older one \
                         with the current internvl-convert (scripts/bench.sh makes missing files)",
                        p0.display(),
                        p.display()
                    ));
                }
            }
            lines.push(format!("{t}: {r0}"));
        }
    }
    Ok(lines)
}

/// The CPU class this run measures: what ggml (and so llama.cpp) was built for, and the kernels ours ran.
fn cpu_class(cfg: &Cfg) -> (bool, String) {
    let avx512 = cfg!(target_feature = "avx512f");
    let kernels = format!(
        "{} (here: {})",
        cfg.ours_kernels.as_deref().unwrap_or("auto, the default"),
        cfg.ours_choice
    );
    let class = if avx512 {
        format!(
            "AVX-512 (this build's ggml and llama.cpp use AVX-512{}); ours ran --kernels {kernels}",
            if cfg!(target_feature = "avx512vnni") {
                " VNNI"
            } else {
                ""
            }
        )
    } else if cfg.ours_avx512 && cfg.has("ours") {
        format!(
            "MIXED, not the AVX2 class: this build's ggml and llama.cpp run AVX2/FMA/F16C code, but ours ran \
             --kernels {kernels}, code beyond AVX2 (AVX-512 or AVX-VNNI; set BENCH_OURS_KERNELS=avx2 for the AVX2 class)"
        )
    } else {
        format!(
            "AVX2 (this build has no AVX-512: ggml and llama.cpp run AVX2/FMA/F16C code); ours ran --kernels {kernels}"
        )
    };
    (avx512, class)
}

/// Each row against the machine's limit measured in this run: decoding against read bandwidth / bytes per
/// token, prefill and vision against the multiply peak of their arithmetic (int8 for q8_0/q4_0 and ours'
/// int8 layouts, f32 FMA for f16/f32).
fn limits_section(cfg: &Cfg, res: &std::collections::BTreeMap<String, Result<Value, String>>) -> Vec<String> {
    let mut out = vec![
        String::new(),
        "## Distance to the machine's limits".to_string(),
        String::new(),
    ];
    let lim = match res.get("machine/limits") {
        Some(Ok(v)) => v.clone(),
        Some(Err(e)) => {
            out.push(format!("The limits job failed: {e}"));
            return out;
        }
        None => {
            out.push("The limits job did not run.".into());
            return out;
        }
    };
    let dims = match Dims::read(&cfg.ckpt) {
        Ok(d) => d,
        Err(e) => {
            out.push(format!("Model sizes unknown: {e}"));
            return out;
        }
    };
    let (avx512, class) = cpu_class(cfg);
    let g = |k: &str| lim[k].as_f64().filter(|v| v.is_finite() && *v > 0.0);
    let bw = g("read_gbs");
    let f32_peak = if avx512 {
        g("f32_avx512_gflops")
    } else {
        g("f32_avx2_gflops")
    };
    let int8_peak = if avx512 {
        g("int8_vnni512_gops").or(g("int8_avx2_gops"))
    } else {
        g("int8_avx2_gops")
    };
    let show = |v: Option<f64>, u: &str| v.map_or("n/a".to_string(), |v| format!("{v:.1} {u}"));
    out.push(format!(
        "Measured in this run ({} threads, the limits job): read bandwidth {}; f32 FMA peak {} (AVX2 ymm) / {} \
         (AVX-512 zmm); int8 peak {} (AVX2 vpmaddubsw+vpmaddwd) / {} (AVX-512 VNNI vpdpbusd). CPU class of this \
         run: {class}; its rows are set against {} f32 and {} int8.",
        cfg.threads,
        show(bw, "GB/s"),
        show(g("f32_avx2_gflops"), "GFLOP/s"),
        show(g("f32_avx512_gflops"), "GFLOP/s"),
        show(g("int8_avx2_gops"), "GOP/s"),
        show(g("int8_vnni512_gops"), "GOP/s"),
        show(f32_peak, "GFLOP/s"),
        show(int8_peak, "GOP/s"),
    ));
    out.push(String::new());
    out.push(
        "| row | type | limit on this machine | ours | ours % of limit | llama.cpp | llama.cpp % of limit |".into(),
    );
    out.push("|---|---|---|---:|---:|---:|---:|".into());
    let pct = |v: Option<f64>, limit: f64, lower_better: bool| match v {
        Some(v) if v > 0.0 => format!("{:.0}%", if lower_better { limit / v } else { v / limit } * 100.0),
        _ => "n/a".into(),
    };
    // A row: its name, the type, the limit's text (and value where known), ours' and llama.cpp's figures
    // (`d` digits) and their shares of the limit.
    type Figures = (Option<f64>, Option<f64>);
    let row =
        |name: &str, t: &str, key: &str, limit: Option<f64>, text: String, (o, l): Figures, d: usize, lower: bool| {
            match limit {
                Some(limit) => format!(
                    "| {name} | {} | {text} | {} | {} | {} | {} |",
                    type_label(t, key),
                    fmt(o, d),
                    pct(o, limit, lower),
                    fmt(l, d),
                    pct(l, limit, lower),
                ),
                None => format!(
                    "| {name} | {} | {text} | {} | | {} | |",
                    type_label(t, key),
                    fmt(o, d),
                    fmt(l, d)
                ),
            }
        };
    // Ours' figure and llama.cpp's: llama.cpp has no layouts, its figure goes with the default row only.
    let figures = |job: &str, t: &str, key: &str, field: &str| {
        let o = get(res, &format!("ours/{job}/{t}{key}"), field);
        let l = key
            .is_empty()
            .then(|| get(res, &format!("llama/{job}/{t}"), field))
            .flatten();
        (o, l)
    };
    let peak_of = |t: &str, key: &str| {
        let int8 = t.starts_with('q') || key.starts_with("@int8");
        if int8 {
            (int8_peak, "int8")
        } else {
            (f32_peak, "f32")
        }
    };
    for (t, key) in cfg
        .text_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let w = match weight_bytes_per_token(&cfg.lc_text(t)) {
            Ok(w) => w,
            Err(e) => {
                out.push(format!("| decode | {t} | weights per token unknown: {e} | | | | |"));
                continue;
            }
        };
        for (job, field, ctx_field, name) in [
            (
                "text",
                "decode_tps",
                "decode_ctx",
                "decode tok/s, 1-tile image + 256 text tokens",
            ),
            (
                "decode13",
                "decode13_tps",
                "decode13_ctx",
                "decode tok/s, 13 tiles in context",
            ),
        ] {
            let figs = figures(job, t, &key, field);
            let ctx = get(res, &format!("ours/{job}/{t}{key}"), ctx_field).or(get(
                res,
                &format!("llama/{job}/{t}"),
                ctx_field,
            ));
            let (Some(bw), Some(ctx)) = (bw, ctx) else {
                out.push(row(name, t, &key, None, "n/a".into(), figs, 1, false));
                continue;
            };
            let bytes = w + dims.kv_bytes(ctx);
            let limit = bw * 1e9 / bytes;
            let text = format!(
                "{limit:.1} tok/s ({bw:.1} GB/s / {:.0} MB per token: weights {:.0} + KV {:.0} at {ctx:.0})",
                bytes / 1e6,
                w / 1e6,
                dims.kv_bytes(ctx) / 1e6,
            );
            out.push(row(name, t, &key, Some(limit), text, figs, 1, false));
        }
        let (peak, kind) = peak_of(t, &key);
        let figs = figures("text", t, &key, "prefill_tps");
        let ops = dims.prefill_ops(N_PREFILL as f64) / N_PREFILL as f64;
        out.push(match peak {
            Some(p) => {
                let limit = p * 1e9 / ops;
                let text = format!(
                    "{limit:.0} tok/s ({:.2} GOP per token at {p:.0} GOP/s {kind})",
                    ops / 1e9
                );
                row(
                    &format!("prefill tok/s, {N_PREFILL} tokens"),
                    t,
                    &key,
                    Some(limit),
                    text,
                    figs,
                    1,
                    false,
                )
            }
            None => row(
                "prefill tok/s",
                t,
                &key,
                None,
                format!("n/a ({kind} peak not measured)"),
                figs,
                1,
                false,
            ),
        });
    }
    for (t, key) in cfg
        .vision_types
        .iter()
        .flat_map(|t| cfg.ours_variants().into_iter().map(move |(k, _)| (t, k)))
    {
        let (peak, kind) = peak_of(t, &key);
        let ops = dims.tile_ops();
        for (field, name) in [
            ("vision1_ms", "vision ms/tile, 1-tile image"),
            ("vision13_ms", "vision ms/tile, 13-tile image"),
        ] {
            let figs = figures("vision", t, &key, field);
            out.push(match peak {
                Some(p) => {
                    let limit = ops / (p * 1e9) * 1e3;
                    let text = format!("{limit:.0} ms ({:.0} GOP per tile at {p:.0} GOP/s {kind})", ops / 1e9);
                    row(name, t, &key, Some(limit), text, figs, 0, true)
                }
                None => row(
                    name,
                    t,
                    &key,
                    None,
                    format!("n/a ({kind} peak not measured)"),
                    figs,
                    0,
                    true,
                ),
            });
        }
    }
    out.push(String::new());
    out.push(
        "Limits: decoding reads every weight of the language model once per token (the token-embedding table: one \
         row) plus the f16 KV cache, so read bandwidth / those bytes bounds tok/s. Prefill and vision are counted at \
         2 operations per multiply-add of their matrix products and attention (sizes from the checkpoint's \
         config.json) and set against the loop peak of their arithmetic: int8 products for q8_0/q4_0 (ggml's and our \
         kernels quantize the activations to 8 bits) and ours' int8 layouts, f32 FMA for f16/f32. Loop peaks leave \
         out loads, conversions and the non-matrix work, so 100% is out of reach."
            .into(),
    );
    out
}

fn parent() -> Result<(), String> {
    let started = Instant::now();
    let cfg = Cfg::from_env()?;
    let missing = missing_files(&cfg);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| format!("  {}", p.display())).collect();
        return Err(format!(
            "missing input files:\n{}\n(scripts/bench.sh makes them: internvl-convert synth --preset full --seed 1 -o /tmp/full1 \
             --tokenizer-from ../shared/model/InternVL2-1B, then convert --type T and convert --split --type T)",
            list.join("\n")
        ));
    }
    let (la0, la0s) = loadavg();
    let reps = if cfg.smoke {
        Reps {
            vision1: 1,
            vision13: 1,
            prefill: 1,
            decode: 1,
        }
    } else {
        Reps {
            vision1: env_usize("BENCH_REPS_VISION1", 3)?,
            vision13: 1,
            prefill: env_usize("BENCH_REPS_PREFILL", 3)?,
            decode: env_usize("BENCH_REPS_DECODE", 3)?,
        }
    };
    let n_decode = env_usize("BENCH_DECODE_STEPS", if cfg.smoke { 4 } else { 64 })?;
    let reps_v =
        json!({"vision1": reps.vision1, "vision13": reps.vision13, "prefill": reps.prefill, "decode": reps.decode});
    let recipe_lines = recipes(&cfg)?;
    let inputs = prepare_inputs(&cfg, &reps_v, n_decode)?;
    let mut jobs = plan(&cfg, &reps, n_decode)?;
    let est: f64 = jobs.iter().map(|j| j.estimate_s).sum();
    let mut head = vec![
        format!(
            "# Side by side{}",
            if cfg.smoke {
                " (SMOKE: tiny model, one repetition; figures mean nothing)"
            } else {
                ""
            }
        ),
        String::new(),
    ];
    if let Ok(m) = std::env::var("BENCH_META") {
        head.push(format!("Run: {m}"));
        head.push(String::new());
    }
    head.extend(machine().into_iter().map(|l| format!("- {l}")));
    head.push(format!("- CPU class of this run: {}", cpu_class(&cfg).1));
    head.push(format!(
        "- weight files (internvl-convert's recipe, the same for ours and llama.cpp at each type): {}",
        recipe_lines.join("; ")
    ));
    head.push(format!(
        "- threads: {} for every system; load average at start: {la0s}",
        cfg.threads
    ));
    head.push(format!(
        "- models: ours {}/{}-{{T}}.gguf; llama.cpp {}/{}-split-{{T}}.gguf + mmproj-{}-split-{{T}}.gguf; PyTorch {} (transformers layout in {})",
        cfg.dir.display(), cfg.prefix, cfg.dir.display(), cfg.prefix, cfg.prefix, cfg.ckpt.display(), cfg.hf_dir.display()
    ));
    head.push(format!(
        "- inputs: {} -> tiles {} (uint8 from our Pillow-exact tiling, normalized with the same table for ours and PyTorch; \
         llama.cpp gets the uint8 tiles, one 448x448 bitmap each); prompts: prefill {} ids, decode context {} ids, \
         13-tile decode context {} ids, TTFT {} ids",
        cfg.image.display(), inputs["tiles"], N_PREFILL, inputs["decode_ids"].as_array().map_or(0, |a| a.len()),
        inputs["decode13_ids"].as_array().map_or(0, |a| a.len()),
        inputs["ttft_ids"].as_array().map_or(0, |a| a.len())
    ));
    head.push(format!(
        "- repetitions (median reported): vision 1 tile x{}, 13 tiles x{}, prefill x{}, decode {} steps x{} (PyTorch: {} steps x1)",
        reps.vision1, reps.vision13, reps.prefill, n_decode, reps.decode, cfg.torch_decode
    ));
    for l in &head {
        println!("{l}");
    }
    println!();
    println!(
        "{} jobs, estimated {:.0} min on a quiet machine (full-size model); work dir {}",
        jobs.len(),
        est / 60.0,
        cfg.work.display()
    );
    if env("BENCH_PLAN_ONLY", "0") == "1" {
        for j in &jobs {
            println!(
                "  {:<40} est. {:>4.0} s   {:?}",
                j.label,
                j.estimate_s,
                j.cmd.get_program()
            );
        }
        println!("BENCH_PLAN_ONLY=1: inputs written, nothing run");
        return Ok(());
    }
    if la0 > 1.5 {
        println!("WARNING: load average {la0:.2} > 1.5 at start: the machine is busy and the figures will be noise");
    }
    let mut res = std::collections::BTreeMap::new();
    let n = jobs.len();
    for (i, job) in jobs.iter_mut().enumerate() {
        let t = Instant::now();
        println!("[{}/{n}] {} (est. {:.0} s) ...", i + 1, job.label, job.estimate_s);
        let r = run_child(std::mem::replace(&mut job.cmd, Command::new("true")));
        let wall = t.elapsed().as_secs_f64();
        match &r {
            Ok(v) => println!("[{}/{n}] {} done in {wall:.1} s: {v}", i + 1, job.label),
            Err(e) => println!("[{}/{n}] {} FAILED after {wall:.1} s: {e}", i + 1, job.label),
        }
        res.insert(job.key.clone(), r);
    }
    let (la1, la1s) = loadavg();
    let mut md = head.clone();
    md.push(format!(
        "- load average at end: {la1s}; total wall time {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    ));
    // At the end the 1-minute average still holds the last job's own threads, so only more than those
    // (plus the same 0.5 of slack) says that something else ran.
    let end_limit = cfg.threads as f64 + 0.5;
    if la0 > 1.5 || la1 > end_limit {
        md.push(format!(
            "- **WARNING: load average above 1.5 at the start ({la0:.2}) or above the run's own {} threads + 0.5 at the \
             end ({la1:.2}): the machine was busy, these figures are noise.**",
            cfg.threads
        ));
    }
    md.push(String::new());
    md.extend(table(&cfg, &res));
    md.extend(limits_section(&cfg, &res));
    md.push(String::new());
    md.push("Notes:".into());
    md.push("- ours / best: ratio of ours to the best anchor of that row (lower is better for ms, s and MB; higher for tok/s); \
             the target column is issue 10's. Vision anchors: llama.cpp at the same weight type, PyTorch bf16, bnb int8 (PyTorch f32 shown, not an anchor). \
             TTFT anchors: llama.cpp at the same type and every PyTorch variant. Decode, prefill and RSS: llama.cpp at the same type.".into());
    md.push(if cfg.torch_f32_tiles13 >= 13 {
        "- PyTorch f32's 13-tile figure uses all 13 tiles.".to_string()
    } else {
        format!(
            "- PyTorch f32's 13-tile figure is measured on the first {} of the 13 tiles (one batch, per-tile cost; \
             all 13 take too long; f32 is not a vision anchor).",
            cfg.torch_f32_tiles13
        )
    });
    md.push("- TTFT: the first request after load (cold): vision of the 7 normalized tiles + prefill of the whole prompt + argmax. \
             llama.cpp: mtmd's uint8 -> f32 normalization is left out of the clock (the others get normalized tiles); its tiles \
             are encoded with mtmd's batch API (default batch_max_tokens 1024 = 4 tiles per graph); each tile is its own image chunk \
             of 256 embeddings, which is how mtmd itself splits an InternVL image. Context: n_ctx 4096, KV f16 for ours and llama.cpp.".into());
    let firsts: Vec<String> = res
        .iter()
        .filter(|(k, _)| k.contains("/ttft/") || k.starts_with("torch/"))
        .map(|(k, v)| match v.as_ref().ok().and_then(|v| v["first_token"].as_u64()) {
            Some(t) => format!("{k} {t}"),
            None => format!("{k} n/a"),
        })
        .collect();
    md.push(format!(
        "- Sanity check, first token of the TTFT request (same tiles and ids, so equal ids at equal weight types \
         mean every system computed the same thing; random weights make near-ties possible): {}.",
        firsts.join(", ")
    ));
    md.push(
        "- Decode with 13 tiles in context: the prompt of image1.jpg's 13 tiles and the question; its image rows are \
         the 1-tile image's projector rows repeated 13 times (each system its own), since decoding reads the KV cache \
         whatever its values: the speed of the real context without 13 tiles of vision per job."
            .into(),
    );
    md.push(
        "- Peak RSS: VmHWM of the TTFT process (load, 7 tiles, prompt, first token; mmap'd weight pages count).".into(),
    );
    for (k, v) in &res {
        if let Err(e) = v {
            md.push(format!("- FAILED {k}: {e}"));
        }
    }
    md.push(String::new());
    md.push("Raw results (JSON per job):".into());
    md.push(String::new());
    md.push("```".into());
    for (k, v) in &res {
        md.push(format!(
            "{k}: {}",
            match v {
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            }
        ));
    }
    md.push("```".into());
    let text = md.join("\n") + "\n";
    if let Some(dir) = cfg.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&cfg.out, &text).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    println!();
    println!("{}", md[head.len()..].join("\n"));
    println!();
    println!("wrote {}", cfg.out.display());
    Ok(())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let r = serde_json::from_str::<Value>(&spec)
            .map_err(|e| format!("bad {CHILD_ENV}: {e}"))
            .and_then(|job| run_child_job(&job));
        match r {
            Ok(v) => println!("RESULT {v}"),
            Err(e) => {
                println!("ERROR {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    if let Err(e) = parent() {
        eprintln!("side_by_side: {e}");
        std::process::exit(1);
    }
}
