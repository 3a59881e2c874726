//! The command-line flags `internvl-run` and `internvl-serve` share (`#[command(flatten)]`): how the model
//! loads and what each session gets. One definition, so the two binaries cannot drift apart in names,
//! defaults or parsing.

use std::path::PathBuf;

use super::{ChatParams, EngineError, KvType, LoadParams, Model, Result, SessionParams};
use crate::kernels::Kernels;
use crate::model::{Device, WeightLayout};

/// How the model loads (the model path itself is each binary's own flag).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// llama.cpp's vision GGUF (mmproj) when --model is llama.cpp's text GGUF.
    #[arg(long, value_name = "FILE", requires = "model")]
    pub mmproj: Option<PathBuf>,
    /// Where the weights live and the graphs run: auto (a GPU when this build has a GPU backend and
    /// finds one, else the CPU), cpu, or cuda (an error when unavailable).
    #[arg(long, value_name = "DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// CPU weights: repacked (on CPUs with AVX-512 VNNI or AVX2, q4_0 and q8_0 matrices in our own panel layout
    /// for our kernels, the fastest here; otherwise ggml's interleaved layouts where it has them, e.g.
    /// q4_0; a rearranging copy at load, the file's pages released), mapped (every weight used in place
    /// from the file: zero copy, ggml's kernels), f32-vision
    /// (repacked, and the vision tower's matrices converted to f32 at load: faster image encoding on CPUs
    /// without native f16/bf16 arithmetic, +600 MB over an f16 file), int8-vision (repacked, and the
    /// vision tower's matrices quantized to int8 at load for our AVX-512 VNNI or AVX2 kernel: the fastest
    /// image encoding from an f16 or f32 file on CPUs with VNNI, with about q8_0's accuracy), or int8
    /// (int8-vision, and int8 copies of the language model's f16/f32 matrices for prefill: 2-3x faster
    /// prefill, +380 MB; q4_0 and q8_0 matrices are not requantized: they use the panels).
    #[arg(long, value_name = "LAYOUT", default_value = "repacked", value_parser = parse_layout)]
    pub weights: WeightLayout,
    /// Directory with vocab.json, merges.txt, added_tokens.json, tokenizer_config.json, for GGUFs
    /// that carry no tokenizer (llama.cpp's).
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// Which kernels run on the CPU: auto (the best of ours this CPU runs), avx512-vnni, avx2 (what an
    /// AVX2 CPU runs: our AVX2 kernels where we have them, ggml's for the rest), avx-vnni (avx2 with the
    /// q4_0/q8_0 products by AVX-VNNI, Intel since Alder Lake, AMD since Zen 5: opt-in, not yet timed on
    /// such a CPU), avx-vnni-evex (the same code in AVX-512 VL encoding, to test it on AVX-512 VNNI CPUs),
    /// portable (ours without SIMD: slow, for testing) or ggml (none of ours: ggml's products, flash
    /// attention and GELU). A set the CPU lacks is an error at load.
    #[arg(long, value_name = "NAME", default_value = "auto", value_parser = parse_kernels)]
    pub kernels: Kernels,
}

impl ModelArgs {
    pub fn load_params(&self) -> LoadParams {
        LoadParams {
            mmproj: self.mmproj.clone(),
            tokenizer_dir: self.tokenizer.clone(),
            weight_layout: self.weights,
            kernels: self.kernels,
        }
    }
}

/// What each session (one conversation's KV cache, scheduler and threads) gets.
#[derive(clap::Args, Debug, Clone)]
pub struct SessionArgs {
    /// Context size in tokens (KV cache). One image takes 256 tokens per tile (up to 13 tiles:
    /// 3328 tokens).
    #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 4096)]
    pub ctx_size: usize,
    /// CPU threads per session (default: the number of physical cores; internvl-serve divides them
    /// among its --parallel sessions).
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Prompt tokens evaluated per step of the prefill.
    #[arg(short = 'b', long = "batch-size", value_name = "N", default_value_t = 512)]
    pub batch_size: usize,
    /// Tiles encoded per vision graph.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub vision_batch: usize,
    /// KV cache type: f32, f16, q8_0, q4_0.
    #[arg(long, value_name = "TYPE", default_value = "f16", value_parser = parse_kv)]
    pub kv_type: KvType,
    /// Largest number of 448x448 tiles per image (1..=40; the model was trained with 12). Fewer
    /// tiles: faster, less detail.
    #[arg(long, value_name = "N")]
    pub max_tiles: Option<u32>,
    /// When the conversation no longer fits the context, drop the oldest turns (the kept turns
    /// are evaluated again) instead of failing.
    #[arg(long)]
    pub truncate_history: bool,
    /// Memory budget of each session (e.g. 1.5G, 512M; powers of 1024; 0: no limit): the KV cache and
    /// prefill buffer must fit at start, each image's tiles before they are encoded, else an error
    /// with the numbers. Weights are memory-mapped and shared, not counted.
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = crate::budget::parse_bytes)]
    pub mem_budget: u64,
}

impl SessionArgs {
    /// The chat parameters these flags give for `model`, with `default_threads` when -t is absent.
    /// Fails when --max-tiles is out of range, naming the flag.
    pub fn chat_params(&self, model: &Model, default_threads: usize) -> Result<ChatParams> {
        let mut tiling = model.tiling();
        if let Some(m) = self.max_tiles {
            tiling.max_tiles = m;
            tiling.min_tiles = tiling.min_tiles.min(m.max(1));
            tiling
                .validate()
                .map_err(|e| EngineError::Param(format!("--max-tiles {m}: {e}")))?;
        }
        Ok(ChatParams {
            session: SessionParams {
                n_ctx: self.ctx_size,
                kv_type: self.kv_type,
                n_threads: self.threads.unwrap_or(default_threads).max(1),
                n_batch: self.batch_size.max(1),
                vision_batch: self.vision_batch.max(1),
            },
            tiling: Some(tiling),
            truncate_history: self.truncate_history,
            mem_budget: self.mem_budget,
            ..ChatParams::default()
        })
    }
}

fn parse_kv(s: &str) -> std::result::Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| format!("unknown KV cache type {s:?} (f32, f16, q8_0, q4_0)"))
}

fn parse_device(s: &str) -> std::result::Result<Device, String> {
    Device::parse(s).ok_or_else(|| format!("`{s}` is not one of auto, cpu, cuda"))
}

fn parse_kernels(s: &str) -> std::result::Result<Kernels, String> {
    s.parse().map_err(|e: crate::kernels::KernelsError| e.to_string())
}

fn parse_layout(s: &str) -> std::result::Result<WeightLayout, String> {
    WeightLayout::parse(s).ok_or_else(|| format!("`{s}` is not one of repacked, mapped, f32-vision, int8-vision, int8"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(short = 'm', long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        load: ModelArgs,
        #[command(flatten)]
        session: SessionArgs,
    }

    #[test]
    fn defaults_and_parsing() {
        let cli = Cli::try_parse_from(["x", "-m", "a.gguf"]).expect("defaults parse");
        assert_eq!(cli.session.ctx_size, 4096);
        assert_eq!(cli.session.kv_type, KvType::F16);
        assert_eq!(cli.load.weights, WeightLayout::Repacked);
        assert_eq!(cli.load.kernels, Kernels::Auto);
        assert_eq!(cli.session.mem_budget, 0);
        let cli = Cli::try_parse_from([
            "x",
            "-m",
            "a.gguf",
            "-c",
            "64",
            "--kv-type",
            "q4_0",
            "--weights",
            "mapped",
            "--device",
            "cpu",
            "--mem-budget",
            "1.5G",
            "-t",
            "3",
            "--kernels",
            "ggml",
        ])
        .expect("flags parse");
        assert_eq!(cli.session.ctx_size, 64);
        assert_eq!(cli.session.kv_type, KvType::Q4_0);
        assert_eq!(cli.load.weights, WeightLayout::Mapped);
        assert_eq!(cli.load.device, Device::Cpu);
        assert_eq!(cli.session.mem_budget, 3 << 29);
        assert_eq!(cli.session.threads, Some(3));
        assert_eq!(cli.load.kernels, Kernels::Ggml);
        for bad in [
            ["--kv-type", "q3"],
            ["--device", "tpu"],
            ["--weights", "zip"],
            ["--kernels", "sse"],
            ["--mem-budget", "lots"],
        ] {
            let e = Cli::try_parse_from(["x", "-m", "a.gguf", bad[0], bad[1]]).expect_err("bad value refused");
            assert!(e.to_string().contains(bad[1]), "{e}");
        }
        // --mmproj needs the model flag of the binary that flattens these.
        assert!(Cli::try_parse_from(["x", "--mmproj", "p.gguf"]).is_err());
    }
}
