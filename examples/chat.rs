//! A two-turn conversation about an image through the `internvl::engine` API: streaming, progress,
//! a cancellation flag, and what the second turn reused from the first.
//!
//!   cargo run --release --example chat -- MODEL.gguf IMAGE.jpg ["first question" ["second question"]]
use std::io::Write;
use std::path::Path;

use internvl::engine::{CancelFlag, ChatParams, Event, Flow, GenerateParams, Image, LoadParams, Message, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model_path), Some(image_path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: chat MODEL.gguf IMAGE [QUESTION [FOLLOW-UP]]");
        std::process::exit(2);
    };
    let q1 = args.get(2).map_or("Describe the image in detail.", String::as_str);
    let q2 = args.get(3).map_or("What colours dominate?", String::as_str);

    // The model is Send + Sync: load once, clone it into any thread that opens its own Chat.
    let model = Model::load(model_path, &LoadParams::default())?;
    let mut chat = model.chat(ChatParams::default())?;
    let image = Image::open(Path::new(image_path), &chat.tiling())?;
    println!(
        "image: {}x{}, {} tiles",
        image.size().0,
        image.size().1,
        image.n_tiles()
    );

    // A flag another thread (a UI, a signal handler) could set to stop generation.
    let cancel = CancelFlag::new();
    let gen = GenerateParams {
        max_new_tokens: 128,
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let mut stream = |e: Event<'_>| {
        match e {
            Event::Token(t) => {
                print!("{t}");
                let _ = std::io::stdout().flush();
            }
            Event::Prefill { done, total } => eprint!("\r[prefill {done}/{total}]"),
            Event::Vision { done, total } => eprint!("\r[vision {done}/{total} tiles]"),
            Event::Notice(n) => eprintln!("note: {n}"),
            // Only with `GenerateParams::logprobs`, which this example does not ask for.
            Event::Logprob(_) => {}
        }
        Flow::Continue
    };

    println!("> {q1}");
    let r1 = chat.send(Message::text(q1).with_image(image), &gen, &mut stream)?;
    println!(
        "\n[{} prompt tokens, {} tiles encoded, {} tokens generated, {:?}]",
        r1.stats.prompt_tokens, r1.stats.tiles_encoded, r1.stats.generated_tokens, r1.finish
    );

    println!("> {q2}");
    let r2 = chat.send(Message::text(q2), &gen, &mut stream)?;
    println!(
        "\n[{} prompt tokens: {} reused from the KV cache, {} prefilled; {} tiles encoded]",
        r2.stats.prompt_tokens, r2.stats.reused_tokens, r2.stats.prefilled_tokens, r2.stats.tiles_encoded
    );
    Ok(())
}
