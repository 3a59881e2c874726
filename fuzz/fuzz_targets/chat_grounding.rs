//! Chat rendering and `<image>` expansion with fuzzed text, the grounding parsers on fuzzed answers, and
//! the tokenizer's handling of added tokens (`<image>` placeholders, `<img>`, `<ref>`, `<box>` written in
//! user text) with a small InternVL tokenizer (fuzz/seeds/tokenizer-small.json).
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use internvl_fuzz::prompt::{self, grounding, Conversation, PromptPlan, Segment};
use internvl_fuzz::tokenizer::{StreamDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;

const SEED: &str = include_str!("../seeds/tokenizer-small.json");

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    // The seed is a file of this crate, not fuzzer input.
    T.get_or_init(|| Tokenizer::from_json(SEED).expect("fuzz/seeds/tokenizer-small.json loads"))
}

#[derive(Arbitrary, Debug)]
struct Input {
    system: Option<String>,
    turns: Vec<(String, Option<String>)>,
    image_tiles: Vec<u8>,
    num_image_token: u8,
    n_multi: u8,
    answer: String,
    width: u32,
    height: u32,
}

/// Image tokens above which the fully expanded string is not built (it is `13 * n` bytes).
const EXPAND_LIMIT: usize = 1 << 11;

fuzz_target!(|data: &[u8]| {
    // The raw bytes as a model answer too (lossy: decoded model text is always valid UTF-8).
    let raw = String::from_utf8_lossy(data);
    check_grounding(&raw, 640, 480);

    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    check_grounding(&input.answer, input.width, input.height);
    let _ = prompt::clean_answer(&input.answer);

    let mut conv = match &input.system {
        Some(s) => Conversation::with_system(s.clone()),
        None => Conversation::new(),
    };
    for (q, a) in input.turns.iter().take(8) {
        conv.ask(q.clone());
        if let Some(a) = a {
            let _ = conv.answer(a.clone());
        }
    }
    let rendered = conv.render();
    assert!(rendered.starts_with(prompt::SYSTEM_ROLE));
    let _ = conv.validate_for_generation();

    let tiles: Vec<usize> = input.image_tiles.iter().take(64).map(|&t| usize::from(t)).collect();
    let nit = usize::from(input.num_image_token);
    let tok = tokenizer();
    match PromptPlan::new(&conv, &tiles, nit) {
        Ok(plan) => {
            let n_images = plan
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Image { .. }))
                .count();
            assert_eq!(n_images, tiles.len());
            let image_tokens: usize = tiles.iter().map(|t| t * nit).sum();
            if image_tokens <= EXPAND_LIMIT {
                let expanded = plan.expanded();
                if let Ok(ids) = plan.to_ids(tok) {
                    assert_eq!(ids.image_spans.len(), tiles.len());
                    for (span, &t) in ids.image_spans.iter().zip(&tiles) {
                        assert_eq!(span.len(), t * nit);
                        assert!(ids.ids.get(span.clone()).is_some());
                    }
                    // Tokenizing the expanded string gives the same ids (the module's stated guarantee).
                    if let Ok(direct) = tok.encode(&expanded) {
                        assert_eq!(
                            direct, ids.ids,
                            "build_prompt_ids differs from encoding the expanded prompt"
                        );
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = prompt::build_prompt_ids(tok, &conv, &tiles, nit.min(4));

    // Question helpers with many placeholders, then the tokenizer on user text with added tokens.
    let n = usize::from(input.n_multi);
    let q = prompt::multi_image_question(n, &input.answer);
    let v = prompt::video_question(n % 9, &input.answer);
    let single = Conversation::single(q);
    let ones = vec![1usize; n.max(1)];
    if let Ok(ids) = prompt::build_prompt_ids(tok, &single, &ones, 2) {
        assert!(ids.image_spans.len() == n || n == 0);
    }
    let _ = prompt::expand_prompt(&Conversation::single(v), &[1; 3], 1);

    if let Ok(ids) = tok.encode(&input.answer) {
        let whole = tok.decode(&ids, false);
        let mut stream = StreamDecoder::new(false);
        let mut streamed = String::new();
        for &id in &ids {
            if let Ok(Some(s)) = stream.push(tok, id) {
                streamed.push_str(&s);
            }
        }
        if let Some(s) = stream.finish() {
            streamed.push_str(&s);
        }
        if let Ok(whole) = whole {
            assert_eq!(streamed, whole, "StreamDecoder differs from decode");
            check_grounding(&whole, input.width, input.height);
        }
        let _ = tok.decode(&ids, true);
    }
});

fn check_grounding(text: &str, width: u32, height: u32) {
    for b in grounding::parse(text).into_iter().chain(grounding::parse_bare(text)) {
        for x in [b.x1, b.y1, b.x2, b.y2] {
            assert!(
                x.is_finite() && (0.0..=grounding::NORM).contains(&x),
                "box coordinate {x}"
            );
        }
        let p = b.to_pixels(width, height);
        assert!(p.x1.is_finite() && p.y2.is_finite());
    }
}
