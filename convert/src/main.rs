//! internvl-convert: command line.
//!
//!   internvl-convert convert DIR -o model.gguf [--type q8_0] [--vision-type T] [--llm-type T]
//!                    [--embd-type T] [--output-type T] [--split [--mmproj PATH]] [--quiet]
//!   internvl-convert synth --preset tiny|full --seed N -o DIR [--shards N] [--tokenizer-from DIR]
//!
//! Exit status: 0 success, 1 error (the message says what), 2 bad command line, 130 interrupted
//! (SIGINT/SIGTERM; no output is left behind).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use internvl::budget::fmt_bytes;
use internvl::gguf::GgmlType;
use internvl_convert::convert::{convert, summarize_fallbacks, ConvertError, ConvertOptions, ConvertReport, PartStats};
use internvl_convert::policy::{parse_type, TypeChoice, ALLOWED};
use internvl_convert::progress::Progress;
use internvl_convert::synth::{synth, Preset, SynthError};
use internvl_convert::{signal, MODEL_FILES_ENV};

#[derive(Parser, Debug)]
#[command(
    name = "internvl-convert",
    version,
    about = "InternVL2-1B Hugging Face checkpoint -> GGUF"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Convert a Hugging Face checkpoint directory into one GGUF (or llama.cpp's pair with --split).
    ///
    /// Quantization policy: norms, biases, layer scales, class and position embeddings stay f32; the
    /// patch embedding is f16 (f32 with --vision-type f32); linear weights take --vision-type (ViT and
    /// projector) or --llm-type; the token embedding --embd-type and lm_head --output-type (both default
    /// to --llm-type); every override defaults to --type, except with the q4_0 recipe: with --type q4_0 the
    /// ViT and projector, and (when the LLM is q4_0) the token embedding and lm_head default to q8_0, as
    /// llama.cpp keeps its output matrix higher (pure q4_0: --vision-type q4_0 --embd-type q4_0
    /// --output-type q4_0). A row length that is not a whole number of the
    /// type's blocks falls back: q6_k -> q8_0 (or f16 if rows are not multiples of 32); 32-element block
    /// types -> f16. The summary lists the tensors that fell back.
    Convert {
        /// Checkpoint directory: model.safetensors (or shards + model.safetensors.index.json), config.json,
        /// generation_config.json, preprocessor_config.json, vocab.json, merges.txt, added_tokens.json,
        /// tokenizer_config.json.
        input: PathBuf,
        /// Output GGUF (with --split: the text GGUF).
        #[arg(short, long)]
        output: PathBuf,
        /// Type of the weight matrices: f32, f16, bf16, q8_0, q6_k, q5_0, q5_1, q4_0, q4_1, iq4_nl.
        #[arg(long = "type", default_value = "f16", value_parser = parse_type)]
        ty: GgmlType,
        /// Type of the ViT and projector matrices (default: --type; q8_0 with --type q4_0).
        #[arg(long, value_parser = parse_type)]
        vision_type: Option<GgmlType>,
        /// Type of the LLM matrices (default: --type).
        #[arg(long, value_parser = parse_type)]
        llm_type: Option<GgmlType>,
        /// Type of the token embedding (default: --llm-type; q8_0 when that is q4_0).
        #[arg(long, value_parser = parse_type)]
        embd_type: Option<GgmlType>,
        /// Type of the lm_head (default: --llm-type; q8_0 when that is q4_0).
        #[arg(long, value_parser = parse_type)]
        output_type: Option<GgmlType>,
        /// Write llama.cpp's pair instead: the text GGUF (arch qwen2) at --output, and an mmproj GGUF.
        #[arg(long)]
        split: bool,
        /// Path of the mmproj GGUF with --split (default: mmproj-<output file name> beside the output).
        #[arg(long, requires = "split")]
        mmproj: Option<PathBuf>,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a random-weight checkpoint in the exact layout of OpenGVLab/InternVL2-1B.
    Synth {
        /// tiny: Hparams::tiny() (every structural ratio, small widths); full: the real sizes (1.9 GB).
        #[arg(long, value_enum)]
        preset: Preset,
        /// PRNG seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory (created; must be new or empty).
        #[arg(short, long)]
        output: PathBuf,
        /// Number of safetensors shards (1: model.safetensors; more: model-0000i-of-0000N + index.json).
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Directory with the real config.json, generation/preprocessor configs and tokenizer files
        /// (copied; config.json gets the preset's sizes).
        #[arg(long, env = MODEL_FILES_ENV)]
        tokenizer_from: PathBuf,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn print_report(r: &ConvertReport) {
    // Write errors (a closed pipe) are ignored: the conversion itself succeeded.
    let mut out = std::io::stdout().lock();
    let _ = write_report(&mut out, r);
}

fn write_report(out: &mut impl Write, r: &ConvertReport) -> std::io::Result<()> {
    for (path, size) in &r.outputs {
        writeln!(out, "wrote {} ({}, {size} bytes)", path.display(), fmt_bytes(*size))?;
    }
    writeln!(out, "recipe: {}", r.recipe)?;
    writeln!(
        out,
        "{:<10} {:>8} {:>14} {:>12} {:>7}",
        "part", "tensors", "params", "bytes", "bpw"
    )?;
    let mut total = PartStats::default();
    for (part, s) in &r.parts {
        writeln!(
            out,
            "{:<10} {:>8} {:>14} {:>12} {:>7.3}",
            format!("{part:?}").to_lowercase(),
            s.tensors,
            s.params,
            fmt_bytes(s.bytes),
            s.bits_per_weight()
        )?;
        total.tensors += s.tensors;
        total.params += s.params;
        total.bytes += s.bytes;
    }
    writeln!(
        out,
        "{:<10} {:>8} {:>14} {:>12} {:>7.3}",
        "total",
        total.tensors,
        total.params,
        fmt_bytes(total.bytes),
        total.bits_per_weight()
    )?;
    if r.fallbacks.is_empty() {
        writeln!(out, "fallbacks: none")?;
    } else {
        writeln!(
            out,
            "fallbacks ({} tensors whose rows do not fit the requested type's blocks):",
            r.fallbacks.len()
        )?;
        for line in summarize_fallbacks(&r.fallbacks) {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out, "time: {:.1} s", r.seconds)
}

/// Prints an error; first ends a progress bar line on a terminal.
fn report_error(quiet: bool, msg: &str) {
    let nl = if !quiet && std::io::stderr().is_terminal() {
        "\n"
    } else {
        ""
    };
    eprintln!("{nl}{msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = signal::install() {
        eprintln!("warning: cannot install the Ctrl-C handler ({e}); an interrupted run may leave a dot-temp file");
    }
    let stop = signal::requested;
    match cli.cmd {
        Cmd::Convert {
            input,
            output,
            ty,
            vision_type,
            llm_type,
            embd_type,
            output_type,
            split,
            mmproj,
            quiet,
        } => {
            let opts = ConvertOptions {
                input,
                output,
                types: TypeChoice::with_recipe(ty, vision_type, llm_type, embd_type, output_type),
                split,
                mmproj,
            };
            debug_assert!(ALLOWED.contains(&ty));
            let mut progress = Progress::new(!quiet);
            match convert(&opts, &mut progress, &stop) {
                Ok(report) => {
                    print_report(&report);
                    ExitCode::SUCCESS
                }
                Err(ConvertError::Interrupted) => {
                    report_error(quiet, "interrupted: no output written");
                    ExitCode::from(130)
                }
                Err(e) => {
                    report_error(quiet, &format!("error: {e}"));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Synth {
            preset,
            seed,
            output,
            shards,
            tokenizer_from,
            quiet,
        } => {
            let mut progress = Progress::new(!quiet);
            match synth(
                &preset.hparams(),
                seed,
                &output,
                shards,
                &tokenizer_from,
                &mut progress,
                &stop,
            ) {
                Ok(r) => {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "wrote {} ({} tensors, {} parameters, {} of BF16 weights in {} safetensors file(s)) in {:.1} s",
                        output.display(),
                        r.n_tensors,
                        r.n_params,
                        fmt_bytes(r.bytes),
                        shards,
                        r.seconds
                    );
                    ExitCode::SUCCESS
                }
                Err(SynthError::Interrupted) => {
                    report_error(quiet, "interrupted");
                    ExitCode::from(130)
                }
                Err(e) => {
                    report_error(quiet, &format!("error: {e}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
