//! internvl-run: ask InternVL2-1B about images from the command line.
//!
//!   internvl-run -m model.gguf --image a.jpg -p "Describe the image."      one answer, streamed
//!   internvl-run -m model.gguf -i [--image a.jpg]                           chat (/image, /reset, /save, /load)
//!   internvl-run -m model.gguf --video frames/ --frames 8 -p "What happens?"
//!   internvl-run -m model.gguf --batch requests.jsonl > answers.jsonl
//!   internvl-run --hf OpenGVLab/InternVL2-1B --image a.jpg -p "..."         from the Hugging Face cache
//!
//! Answers go to stdout; progress, notices, timings and errors to stderr. Exit status: 0 success,
//! 1 error (the message says what), 2 bad command line.
//! Everything runs through `internvl::engine`, the same API library users get.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use internvl::budget::fmt_bytes;
use internvl::engine::args::{ModelArgs, SessionArgs};
use internvl::engine::{
    draw, hf, mem, Chat, ChatParams, Constraint, EngineError, Event, Flow, GenerateParams, Image, Message, Model,
    Reply, SamplingParams, TilingParams, TokenLogprob, TurnStats,
};
use internvl::prompt::grounding::{self, GroundedBox};

const EXAMPLES: &str = "\
Examples:
  internvl-run -m internvl2-1b-q8_0.gguf --image photo.jpg -p \"Describe the image.\"
  internvl-run -m model.gguf --image a.jpg --image b.jpg -p \"What differs between the images?\"
  internvl-run -m model.gguf -i --image photo.jpg          (then type; /help lists the commands)
  internvl-run -m model.gguf --video frames_dir/ --frames 8 -p \"What is happening?\"
  internvl-run -m model.gguf --batch requests.jsonl > answers.jsonl
  internvl-run -m model.gguf --grounding --image photo.jpg --draw-boxes boxes.png \\
      -p \"Please provide the bounding box coordinate of the region this sentence describes: <ref>the red car</ref>\"
  internvl-run --hf OpenGVLab/InternVL2-1B --image photo.jpg -p \"Describe the image.\" --timings";

#[derive(Parser, Debug)]
#[command(
    name = "internvl-run",
    version,
    about = "Run InternVL2-1B on images: describe, chat, ground phrases (ggml, CPU)",
    after_help = EXAMPLES
)]
struct Cli {
    /// Model GGUF written by internvl-convert (or llama.cpp's text GGUF together with --mmproj).
    #[arg(short = 'm', long, value_name = "FILE", required_unless_present_any = ["hf", "from_answer"])]
    model: Option<PathBuf>,
    #[command(flatten)]
    load: ModelArgs,
    /// Use a Hugging Face checkpoint from the local HF cache ($HF_HOME/hub, ~/.cache/huggingface/hub),
    /// converted once to a cached GGUF ($INTERNVL_CACHE or ~/.cache/internvl) with the
    /// internvl-convert binary found next to this one. This build does not download: when the
    /// checkpoint is missing it fails at once and says how to get it.
    #[arg(long, value_name = "OWNER/NAME", conflicts_with = "model")]
    hf: Option<String>,
    /// Weight type of the --hf conversion: f32, f16, bf16, q8_0, q6_k, q5_0, q5_1, q4_0, q4_1, iq4_nl.
    #[arg(long, value_name = "TYPE", default_value = "q8_0")]
    hf_type: String,

    /// The question. Without --image it is a text-only prompt. With one image it becomes
    /// "<image>\n{prompt}", with several "Image-1: <image>\nImage-2: <image>\n{prompt}" (InternVL's
    /// conventions); write <image> yourself to place images differently.
    #[arg(short = 'p', long, value_name = "TEXT")]
    prompt: Option<String>,
    /// An image file (JPEG, PNG, WebP, BMP, GIF, TIFF). Repeat for several images.
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// A video: a directory of frame images (sorted by name), an animated GIF, or a video file
    /// (MP4, MKV, WebM, ...; builds with the `video` feature, on the system FFmpeg); --frames of
    /// them are sampled evenly, one 448x448 tile each.
    #[arg(long, value_name = "DIR|GIF|FILE", conflicts_with = "images")]
    video: Option<PathBuf>,
    /// Frames sampled from --video.
    #[arg(long, value_name = "N", default_value_t = 8)]
    frames: usize,
    /// Answer many requests: a JSONL file with one object per line,
    /// {"id": any (optional), "images": ["a.jpg", ...] (or "image": "a.jpg"), "question": "..."}.
    /// Relative image paths are taken relative to the JSONL file. Answers are written to stdout as
    /// JSONL in input order; requests showing the same images are processed together so their
    /// image embeddings and prompt prefix are computed once.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "interactive", "images", "video"])]
    batch: Option<PathBuf>,
    /// Chat: read messages from stdin, one per line (end a line with \ to continue it).
    /// Commands: /image PATH (attach to the next message), /reset, /save FILE, /load FILE, /quit.
    /// Earlier turns stay in the KV cache: a new turn only evaluates its own tokens.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// System message (default: the model's, InternVL2's Chinese system prompt).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,

    /// Maximum number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", value_name = "N", default_value_t = 1024)]
    n_predict: usize,
    #[command(flatten)]
    session: SessionArgs,
    /// Sampling temperature; 0 is greedy decoding (the reference's default).
    #[arg(long = "temp", value_name = "T", default_value_t = 0.0)]
    temp: f32,
    /// Sample only among the K most likely tokens (0: all). Used when --temp > 0.
    #[arg(long = "top-k", value_name = "K", default_value_t = 50)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities add up to P. Used when --temp > 0.
    #[arg(long = "top-p", value_name = "P", default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one. Used when --temp > 0.
    #[arg(long = "min-p", value_name = "P", default_value_t = 0.0)]
    min_p: f32,
    /// Penalize tokens already generated (1.0: off).
    #[arg(long = "repeat-penalty", value_name = "X", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed for sampling (-1: from the clock). The same seed gives the same answer.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    seed: i64,

    /// Grounding: keep the <ref>/<box> tokens in the answer, parse the boxes (0..1000 normalized)
    /// into pixel coordinates of the first image and print them as JSON after the answer.
    #[arg(long)]
    grounding: bool,
    /// With --grounding: write the first image with the boxes and their labels drawn (PNG, JPEG, ...).
    #[arg(long, value_name = "FILE")]
    draw_boxes: Option<PathBuf>,
    /// Do not run a model: take TEXT as the answer (e.g. saved from an earlier run or from the
    /// reference) and do the --grounding output and --draw-boxes for it.
    #[arg(long, value_name = "TEXT")]
    from_answer: Option<String>,

    /// Constrain the answer to a JSON Schema: a file, or the schema itself (text starting with `{`).
    /// A schema that does not compile exits with status 2 before anything is evaluated.
    #[arg(long, value_name = "FILE|JSON", group = "constraint")]
    json_schema: Option<String>,
    /// Constrain the answer to any JSON object.
    #[arg(long, group = "constraint")]
    json_object: bool,
    /// Constrain the answer to a regular expression (the whole answer matches it).
    #[arg(long, value_name = "RE", group = "constraint")]
    regex: Option<String>,
    /// Constrain the answer to a Lark-like grammar (llguidance's dialect, see docs/structured.md).
    #[arg(long, value_name = "FILE", group = "constraint")]
    grammar: Option<PathBuf>,
    /// End the answer before this string (repeatable); it is not part of the answer.
    #[arg(long = "stop", value_name = "STR")]
    stop: Vec<String>,
    /// With --json: the log-probability of each answer token and of the N most likely tokens at each
    /// step (0..=20), from the model's raw logits (before temperature and any grammar mask).
    #[arg(long, value_name = "N", requires = "json", value_parser = clap::value_parser!(u8).range(0..=20))]
    logprobs: Option<u8>,

    /// Print one JSON object instead of the streamed text: answer, token counts, per-stage
    /// timings, memory (one object per turn with -i).
    #[arg(long)]
    json: bool,
    /// Print timings to stderr: load, image decode, preprocess, vision encode per tile, prefill,
    /// time to first token, decode tok/s, peak RSS.
    #[arg(long)]
    timings: bool,
    /// No progress indicator (it is shown only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// A constraint that cannot be read or parsed (exit status 2, like one the engine refuses).
    #[error("{0}")]
    Constraint(String),
}

impl From<hf::HfError> for CliError {
    fn from(e: hf::HfError) -> Self {
        CliError::Engine(e.into())
    }
}

type Result<T> = std::result::Result<T, CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                CliError::Constraint(_) | CliError::Engine(EngineError::Constraint(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    if cli.draw_boxes.is_some() && !cli.grounding && cli.from_answer.is_none() {
        return Err(CliError::Usage("--draw-boxes needs --grounding".into()));
    }
    if let Some(answer) = &cli.from_answer {
        return ground_saved_answer(cli, answer);
    }
    if cli.batch.is_none() && !cli.interactive && cli.prompt.is_none() {
        return Err(CliError::Usage(
            "give a question with -p, or -i for a chat, or --batch FILE".into(),
        ));
    }
    if cli.frames == 0 {
        return Err(CliError::Usage("--frames must be at least 1".into()));
    }
    // Read before the model loads; compiled (and refused) by the engine before anything is evaluated.
    let constraint = constraint_of(cli)?;
    let t_load = Instant::now();
    let model = load_model(cli)?;
    let load_time = t_load.elapsed();
    let params = ChatParams {
        system: cli.system.clone(),
        ..cli.session.chat_params(&model, internvl::session::physical_cores())?
    };
    let chat = model.chat(params)?;
    let seed = if cli.seed < 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    } else {
        cli.seed as u64
    };
    let gen = GenerateParams {
        max_new_tokens: cli.n_predict,
        sampling: SamplingParams {
            temperature: cli.temp,
            top_k: cli.top_k,
            top_p: cli.top_p,
            min_p: cli.min_p,
            repetition_penalty: cli.repeat_penalty,
            seed,
        },
        keep_special: cli.grounding,
        cancel: None,
        constraint,
        stop: cli.stop.clone(),
        logprobs: cli.logprobs.map(usize::from),
    };
    let ctx = RunCtx {
        cli,
        gen,
        load_time,
        progress: !cli.no_progress && std::io::stderr().is_terminal(),
    };
    if let Some(batch) = &cli.batch {
        return run_batch(&ctx, chat, batch);
    }
    if cli.interactive {
        return run_interactive(&ctx, chat);
    }
    run_single(&ctx, chat)
}

struct RunCtx<'a> {
    cli: &'a Cli,
    gen: GenerateParams,
    load_time: Duration,
    progress: bool,
}

fn load_model(cli: &Cli) -> Result<Model> {
    let path = match (&cli.model, &cli.hf) {
        (Some(p), _) => p.clone(),
        (None, Some(repo)) => {
            let exe = std::env::current_exe().map_err(|e| CliError::Io {
                path: "current executable".into(),
                source: e,
            })?;
            hf::resolve(repo, &cli.hf_type, &exe, &mut |m| eprintln!("{m}"))?
        }
        (None, None) => return Err(CliError::Usage("give a model with -m FILE or --hf OWNER/NAME".into())),
    };
    Ok(Model::load_on(&path, &cli.load.load_params(), cli.load.device)?)
}

/// Opens the images (or video frames) of the command line; returns them with the decode time.
fn open_inputs(cli: &Cli, chat: &Chat) -> Result<(Vec<Image>, bool, Duration)> {
    let t = Instant::now();
    if let Some(v) = &cli.video {
        let frames = Image::video_frames(v, cli.frames, chat.tiling().image_size)?;
        return Ok((frames, true, t.elapsed()));
    }
    let tiling = chat.tiling();
    let images = cli
        .images
        .iter()
        .map(|p| Image::open(p, &tiling))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((images, false, t.elapsed()))
}

fn message(text: &str, images: Vec<Image>, video: bool) -> Message {
    if video {
        Message::video(text, images)
    } else {
        Message::text(text).with_images(images)
    }
}

/// Streams tokens to stdout (unless JSON output) and shows progress on stderr.
struct Printer {
    stream: bool,
    progress: bool,
    progress_shown: bool,
    out: std::io::Stdout,
}

impl Printer {
    fn new(stream: bool, progress: bool) -> Self {
        Printer {
            stream,
            progress,
            progress_shown: false,
            out: std::io::stdout(),
        }
    }

    fn on_event(&mut self, e: Event<'_>) -> Flow {
        match e {
            Event::Notice(m) => {
                self.clear_progress();
                eprintln!("note: {m}");
            }
            Event::Vision { done, total } if self.progress => {
                eprint!("\r\x1b[K[vision: {done}/{total} tiles]");
                self.progress_shown = true;
            }
            Event::Prefill { done, total } if self.progress => {
                eprint!("\r\x1b[K[prefill: {done}/{total} tokens]");
                self.progress_shown = true;
            }
            Event::Token(t) => {
                self.clear_progress();
                if self.stream {
                    let mut o = self.out.lock();
                    // A closed stdout (`| head`) stops generation instead of failing.
                    if o.write_all(t.as_bytes()).and_then(|_| o.flush()).is_err() {
                        return Flow::Stop;
                    }
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    fn clear_progress(&mut self) {
        if self.progress_shown {
            eprint!("\r\x1b[K");
            self.progress_shown = false;
        }
    }
}

fn run_single(ctx: &RunCtx<'_>, mut chat: Chat) -> Result<ExitCode> {
    let cli = ctx.cli;
    let (images, video, decode_time) = open_inputs(cli, &chat)?;
    let first = images.first().cloned();
    let prompt = cli.prompt.as_deref().unwrap_or_default();
    let mut printer = Printer::new(!cli.json, ctx.progress);
    let reply = chat.send(message(prompt, images, video), &ctx.gen, |e| printer.on_event(e))?;
    printer.clear_progress();
    let mut out = std::io::stdout().lock();
    let boxes = if cli.grounding {
        Some(grounding_json(&reply.text, first.as_ref(), cli.draw_boxes.as_deref())?)
    } else {
        None
    };
    if cli.json {
        let mut j = reply_json(&reply, &chat, Some(ctx.load_time), Some(decode_time));
        if let (Some(b), Some(obj)) = (boxes, j.as_object_mut()) {
            obj.insert("grounding".into(), b);
        }
        writeln!(out, "{j}")?;
    } else {
        writeln!(out)?;
        if let Some(b) = boxes {
            writeln!(out, "{b}")?;
        }
    }
    if cli.timings {
        print_timings(&reply.stats, &chat, Some(ctx.load_time), Some(decode_time));
    }
    Ok(ExitCode::SUCCESS)
}

const HELP: &str =
    "commands: /image PATH (attach to the next message), /reset (new conversation), /save FILE, /load FILE, /quit";

fn run_interactive(ctx: &RunCtx<'_>, mut chat: Chat) -> Result<ExitCode> {
    let cli = ctx.cli;
    let (mut pending, mut pending_video, _) = open_inputs(cli, &chat)?;
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    eprintln!("interactive chat ({} tokens of context). {HELP}", chat.n_ctx());
    let mut first = cli.prompt.clone();
    let mut lines = stdin.lock().lines();
    let mut turn = 0usize;
    loop {
        let text = match first.take() {
            Some(p) => p,
            None => {
                if tty {
                    eprint!("> ");
                }
                let mut text = String::new();
                loop {
                    match lines.next() {
                        Some(Ok(l)) => {
                            if let Some(head) = l.strip_suffix('\\') {
                                text.push_str(head);
                                text.push('\n');
                                continue;
                            }
                            text.push_str(&l);
                            break;
                        }
                        Some(Err(e)) => {
                            return Err(CliError::Io {
                                path: "stdin".into(),
                                source: e,
                            })
                        }
                        None if text.is_empty() => return Ok(ExitCode::SUCCESS),
                        None => break,
                    }
                }
                text
            }
        };
        let line = text.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, arg) = cmd
                .split_once(char::is_whitespace)
                .map(|(a, b)| (a, b.trim()))
                .unwrap_or((cmd, ""));
            match (name, arg) {
                ("quit" | "exit", _) => return Ok(ExitCode::SUCCESS),
                ("help", _) => eprintln!("{HELP}"),
                ("image", "") | ("save", "") | ("load", "") => eprintln!("error: /{name} needs a path"),
                ("image", p) => match Image::open(Path::new(p), &chat.tiling()) {
                    Ok(im) => {
                        eprintln!(
                            "attached {p} ({}x{}, {} tiles) to the next message",
                            im.size().0,
                            im.size().1,
                            im.n_tiles()
                        );
                        if pending_video {
                            pending.clear();
                            pending_video = false;
                        }
                        pending.push(im);
                    }
                    Err(e) => eprintln!("error: {e}"),
                },
                ("reset", _) => {
                    chat.reset();
                    pending.clear();
                    eprintln!("new conversation");
                }
                ("save", p) => match chat.save(Path::new(p)) {
                    Ok(()) => eprintln!("saved {} turn(s) to {p}", chat.turns().len()),
                    Err(e) => eprintln!("error: {e}"),
                },
                ("load", p) => match chat.load(Path::new(p)) {
                    Ok(()) => eprintln!("loaded {} turn(s) from {p}", chat.turns().len()),
                    Err(e) => eprintln!("error: {e}"),
                },
                _ => eprintln!("error: unknown command /{name}; {HELP}"),
            }
            continue;
        }
        turn += 1;
        let images = std::mem::take(&mut pending);
        let video = std::mem::replace(&mut pending_video, false);
        let mut printer = Printer::new(!cli.json, ctx.progress);
        let result = chat.send(message(&text, images, video), &ctx.gen, |e| printer.on_event(e));
        printer.clear_progress();
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                chat.withdraw();
                eprintln!("error: {e}");
                continue;
            }
        };
        let mut out = std::io::stdout().lock();
        if cli.json {
            let mut j = reply_json(&reply, &chat, (turn == 1).then_some(ctx.load_time), None);
            if let Some(obj) = j.as_object_mut() {
                obj.insert("turn".into(), turn.into());
            }
            writeln!(out, "{j}")?;
        } else {
            writeln!(out)?;
        }
        out.flush()?;
        if cli.timings {
            print_timings(&reply.stats, &chat, (turn == 1).then_some(ctx.load_time), None);
        }
    }
}

/// One request of a batch file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    images: Vec<PathBuf>,
    #[serde(default)]
    image: Option<PathBuf>,
    #[serde(alias = "prompt")]
    question: String,
}

fn run_batch(ctx: &RunCtx<'_>, mut chat: Chat, path: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    // Parse everything first: a malformed line is reported in its place, the rest still run.
    let mut reqs: Vec<(usize, std::result::Result<BatchRequest, String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str::<BatchRequest>(line)
            .map_err(|e| format!("line {}: {e}", n + 1))
            .map(|mut r| {
                if let Some(i) = r.image.take() {
                    r.images.insert(0, i);
                }
                r.images = r
                    .images
                    .iter()
                    .map(|p| if p.is_absolute() { p.clone() } else { base.join(p) })
                    .collect();
                r
            });
        reqs.push((n + 1, r));
    }
    // Requests that show the same images run one after the other: the second reuses the first's
    // image embeddings and the KV cache of the shared prefix (system prompt + images).
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| reqs.get(i).and_then(|(_, r)| r.as_ref().ok()).map(|r| r.images.clone());
        key(a).cmp(&key(b))
    });
    let mut done: BTreeMap<usize, serde_json::Value> = BTreeMap::new();
    let mut next = 0;
    let mut failed = 0;
    let mut out = std::io::stdout().lock();
    let mut decoded: Vec<(PathBuf, Image)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let Some((line, req)) = reqs.get(i) else { continue };
        if ctx.progress {
            eprint!("\r\x1b[K[batch: {}/{}]", k + 1, reqs.len());
        }
        let value = match req {
            Err(e) => {
                failed += 1;
                serde_json::json!({"index": i, "line": line, "error": e})
            }
            Ok(r) => {
                chat.reset();
                let result = batch_one(&mut chat, ctx, r, &mut decoded);
                let mut v = match result {
                    Ok(reply) => reply_json(&reply, &chat, None, None),
                    Err(e) => {
                        chat.withdraw();
                        failed += 1;
                        serde_json::json!({"error": e.to_string()})
                    }
                };
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("index".into(), i.into());
                    obj.insert("line".into(), (*line).into());
                    if let Some(id) = &r.id {
                        obj.insert("id".into(), id.clone());
                    }
                }
                v
            }
        };
        done.insert(i, value);
        // Write in input order as soon as the next answer is ready.
        while let Some(v) = done.remove(&next) {
            writeln!(out, "{v}")?;
            out.flush()?;
            next += 1;
        }
    }
    if ctx.progress {
        eprint!("\r\x1b[K");
    }
    if ctx.cli.timings {
        let s = chat.session_stats();
        eprintln!(
            "batch: {} requests, {} failed; {} tiles encoded, {} tokens prefilled, {} decoded; peak RSS {}",
            reqs.len(),
            failed,
            s.tiles_encoded,
            s.tokens_prefilled,
            s.tokens_decoded,
            mem::peak_rss_bytes().map(fmt_bytes).unwrap_or_else(|| "n/a".into())
        );
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn batch_one(
    chat: &mut Chat,
    ctx: &RunCtx<'_>,
    r: &BatchRequest,
    decoded: &mut Vec<(PathBuf, Image)>,
) -> Result<Reply> {
    // Keep the decoded images of the previous request: grouped requests share them.
    let tiling = chat.tiling();
    let mut images = Vec::with_capacity(r.images.len());
    for p in &r.images {
        let im = match decoded.iter().find(|(q, _)| q == p) {
            Some((_, im)) => im.clone(),
            None => Image::open(p, &tiling)?,
        };
        images.push(im);
    }
    *decoded = r.images.iter().cloned().zip(images.iter().cloned()).collect();
    let mut printer = Printer::new(false, false);
    let reply = chat.send(Message::text(&r.question).with_images(images), &ctx.gen, |e| {
        printer.on_event(e)
    })?;
    Ok(reply)
}

/// `--from-answer`: grounding output for a given answer, without a model.
fn ground_saved_answer(cli: &Cli, answer: &str) -> Result<ExitCode> {
    let image = match cli.images.first() {
        Some(p) => Some(Image::open(p, &TilingParams::default())?),
        None => None,
    };
    let j = grounding_json(answer, image.as_ref(), cli.draw_boxes.as_deref())?;
    writeln!(std::io::stdout().lock(), "{j}")?;
    Ok(ExitCode::SUCCESS)
}

/// Boxes of a grounded answer (spec §9) as JSON; draws them when asked.
fn grounding_json(answer: &str, image: Option<&Image>, draw_to: Option<&Path>) -> Result<serde_json::Value> {
    let mut boxes: Vec<GroundedBox> = grounding::parse(answer);
    if boxes.is_empty() {
        boxes = grounding::parse_bare(answer);
    }
    let size = image.map(Image::size);
    let items: Vec<serde_json::Value> = boxes
        .iter()
        .map(|b| {
            let mut v = serde_json::json!({"label": b.label, "box_norm": [b.x1, b.y1, b.x2, b.y2]});
            if let (Some((w, h)), Some(obj)) = (size, v.as_object_mut()) {
                let p = b.to_pixels(w, h);
                obj.insert("box_px".into(), serde_json::json!([p.x1, p.y1, p.x2, p.y2]));
            }
            v
        })
        .collect();
    if let Some(out) = draw_to {
        let im = image.ok_or_else(|| CliError::Usage("--draw-boxes needs an --image to draw on".into()))?;
        let (w, h) = im.size();
        let px: Vec<_> = boxes.iter().map(|b| b.to_pixels(w, h)).collect();
        draw::save_with_boxes(im.rgb(), &px, out)?;
        eprintln!("drew {} box(es) on {}", px.len(), out.display());
    }
    Ok(serde_json::json!({
        "boxes": items,
        "image_size": size.map(|(w, h)| [w, h]),
    }))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// The constraint the flags ask for.
fn constraint_of(cli: &Cli) -> Result<Option<Constraint>> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| CliError::Constraint(format!("{}: {e}", p.display())));
    if let Some(s) = &cli.json_schema {
        let text = if s.trim_start().starts_with('{') {
            s.clone()
        } else {
            read(Path::new(s))?
        };
        let v =
            serde_json::from_str(&text).map_err(|e| CliError::Constraint(format!("--json-schema: not JSON: {e}")))?;
        return Ok(Some(Constraint::JsonSchema(v)));
    }
    if cli.json_object {
        return Ok(Some(Constraint::JsonObject));
    }
    if let Some(re) = &cli.regex {
        return Ok(Some(Constraint::Regex(re.clone())));
    }
    if let Some(g) = &cli.grammar {
        return Ok(Some(Constraint::Grammar(read(g)?)));
    }
    Ok(None)
}

/// OpenAI's shape of one token's log-probabilities (`token`, `logprob`, `bytes`, `top_logprobs`).
fn logprob_json(chat: &Chat, lp: &TokenLogprob) -> serde_json::Value {
    let tok = chat.model().tokenizer();
    let entry = |id: u32, logprob: f32| {
        let bytes = tok.token_bytes(id).unwrap_or(&[]);
        serde_json::json!({"token": String::from_utf8_lossy(bytes), "id": id, "logprob": logprob, "bytes": bytes})
    };
    let mut v = entry(lp.id, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    v
}

fn per_sec(n: usize, d: Duration) -> Option<f64> {
    (d.as_secs_f64() > 0.0 && n > 0).then(|| (n as f64 / d.as_secs_f64() * 100.0).round() / 100.0)
}

fn reply_json(
    reply: &Reply,
    chat: &Chat,
    load: Option<Duration>,
    decode_images: Option<Duration>,
) -> serde_json::Value {
    let s = &reply.stats;
    let logprobs: Vec<serde_json::Value> = reply.logprobs.iter().map(|lp| logprob_json(chat, lp)).collect();
    serde_json::json!({
        "answer": reply.text,
        "finish": reply.finish.as_str(),
        // With a constraint: whether the answer matches it (false: cut by -n or the context).
        "complete": reply.complete,
        "logprobs": (!reply.logprobs.is_empty()).then_some(logprobs),
        "tokens": {
            "prompt": s.prompt_tokens,
            "image": s.image_tokens,
            "text": s.prompt_tokens - s.image_tokens,
            "reused": s.reused_tokens,
            "prefilled": s.prefilled_tokens,
            "generated": s.generated_tokens,
        },
        "images": s.images,
        "tiles": s.tiles,
        "tiles_encoded": s.tiles_encoded,
        "tiles_cached": s.tiles_cached,
        "dropped_turns": s.dropped_turns,
        "timings_ms": {
            "load": load.map(ms),
            "image_decode": decode_images.map(ms),
            "preprocess": ms(s.preprocess),
            "vision": ms(s.vision),
            "vision_per_tile": (s.tiles_encoded > 0).then(|| ms(s.vision) / s.tiles_encoded as f64),
            "prefill": ms(s.prefill),
            "constraint_compile": ms(s.constraint_compile),
            "first_token": ms(s.time_to_first_token),
            "decode": ms(s.decode),
            "total": ms(s.total),
        },
        "prefill_tok_s": per_sec(s.prefilled_tokens, s.prefill),
        "decode_tok_s": per_sec(s.generated_tokens, s.decode),
        "memory": {
            "peak_rss_bytes": mem::peak_rss_bytes(),
            "weights_bytes": chat.model().weight_bytes(),
            "kv_cache_bytes": chat.kv_bytes(),
            "kv_used_tokens": chat.n_past(),
            "n_ctx": chat.n_ctx(),
        },
    })
}

fn print_timings(s: &TurnStats, chat: &Chat, load: Option<Duration>, decode_images: Option<Duration>) {
    let mut lines = Vec::new();
    if let Some(l) = load {
        lines.push(format!(
            "load          {:>10.2} ms  (weights {} mapped, KV cache {} for {} tokens; kernels {})",
            ms(l),
            fmt_bytes(chat.model().weight_bytes() as u64),
            fmt_bytes(chat.kv_bytes() as u64),
            chat.n_ctx(),
            chat.model().inner().kernels
        ));
    }
    if let Some(d) = decode_images {
        lines.push(format!("image decode  {:>10.2} ms  ({} image(s))", ms(d), s.images));
    }
    lines.push(format!(
        "preprocess    {:>10.2} ms  ({} tiles tiled and normalized)",
        ms(s.preprocess),
        s.tiles_encoded
    ));
    let per_tile = if s.tiles_encoded > 0 {
        format!(", {:.2} ms/tile", ms(s.vision) / s.tiles_encoded as f64)
    } else {
        String::new()
    };
    lines.push(format!(
        "vision encode {:>10.2} ms  ({} tiles encoded{per_tile}, {} from the image cache)",
        ms(s.vision),
        s.tiles_encoded,
        s.tiles_cached
    ));
    lines.push(format!(
        "prefill       {:>10.2} ms  ({} tokens, {} tok/s; {} of {} prompt tokens reused from the KV cache)",
        ms(s.prefill),
        s.prefilled_tokens,
        per_sec(s.prefilled_tokens, s.prefill).map_or("-".into(), |v| format!("{v:.1}")),
        s.reused_tokens,
        s.prompt_tokens
    ));
    lines.push(format!(
        "first token   {:>10.2} ms  (from the start of the turn)",
        ms(s.time_to_first_token)
    ));
    let forwards = s.decode_forwards.max(1) as f64;
    lines.push(format!(
        "decode        {:>10.2} ms  ({} tokens, {} tok/s; per forward pass {:.3} ms, of which {:.3} ms outside \
         ggml's compute; {} graph(s) built)",
        ms(s.decode),
        s.generated_tokens,
        per_sec(s.generated_tokens, s.decode).map_or("-".into(), |v| format!("{v:.2}")),
        ms(s.decode_forward) / forwards,
        ms(s.decode_outside_compute) / forwards,
        s.decode_graphs_built
    ));
    lines.push(format!("turn total    {:>10.2} ms", ms(s.total)));
    lines.push(format!(
        "peak RSS      {:>13}",
        mem::peak_rss_bytes().map(fmt_bytes).unwrap_or_else(|| "n/a".into())
    ));
    eprintln!("timings:\n  {}", lines.join("\n  "));
}
