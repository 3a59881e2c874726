//! Chat-template and `<image>` expansion tests (spec §5) against the reference prompt vectors (spec §10),
//! and grounding parsing (spec §9).

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use internvl::prompt::grounding::{self, GroundedBox};
use internvl::prompt::{
    build_prompt_ids, clean_answer, expand_prompt, multi_image_question, video_question, Conversation, PromptError,
    PromptIds, PromptPlan, Segment, DEFAULT_SYSTEM_MESSAGE,
};
use internvl::tokenizer::Tokenizer;
use serde_json::Value;

const NUM_IMAGE_TOKEN: usize = 256; // (448/14)² · 0.5² (spec §5.2)

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/model/InternVL2-1B"))
            .expect("tokenizer")
    })
}

fn reference() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/prompt_token_vectors.json");
    serde_json::from_str(&fs::read_to_string(p).expect("read vectors")).expect("parse vectors")
}

fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn tiles_of(e: &Value) -> Vec<usize> {
    e["num_patches_list"]
        .as_array()
        .expect("tiles")
        .iter()
        .map(|x| x.as_u64().expect("n") as usize)
        .collect()
}

/// Builds the ids both ways (split tokenization and whole-string tokenization), checks they agree and
/// that the image spans sit between `<img>` and `</img>` with the right lengths.
fn ids_checked(conv: &Conversation, tiles: &[usize]) -> PromptIds {
    let t = tok();
    let p = build_prompt_ids(t, conv, tiles, NUM_IMAGE_TOKEN).expect("build ids");
    let whole = t
        .encode(&expand_prompt(conv, tiles, NUM_IMAGE_TOKEN).expect("expand"))
        .expect("encode");
    assert_eq!(
        p.ids, whole,
        "split tokenization differs from tokenizing the expanded string"
    );
    assert_eq!(p.image_spans.len(), tiles.len());
    for (span, &n) in p.image_spans.iter().zip(tiles) {
        assert_eq!(span.len(), n * NUM_IMAGE_TOKEN);
        assert_eq!(p.ids[span.start - 1], t.ids.img_start);
        assert_eq!(p.ids[span.end], t.ids.img_end);
        assert!(p.ids[span.clone()].iter().all(|&id| id == t.ids.img_context));
    }
    let n_ctx = p.ids.iter().filter(|&&id| id == t.ids.img_context).count();
    assert_eq!(n_ctx, tiles.iter().sum::<usize>() * NUM_IMAGE_TOKEN);
    p
}

#[test]
fn single_image_reference() {
    let r = &reference()["image1_describe_shortly"];
    let tiles = tiles_of(r);
    assert_eq!(tiles, vec![13]);
    let mut expected = json_ids(&r["prefix_ids"]);
    expected.resize(expected.len() + 3328, tok().ids.img_context);
    expected.extend(json_ids(&r["suffix_ids"]));

    // The question as the reference wrote it (with the placeholder) ...
    let with = Conversation::single(r["question"].as_str().unwrap());
    let p = ids_checked(&with, &tiles);
    assert_eq!(p.ids.len(), 3382);
    assert_eq!(p.ids, expected);
    assert_eq!(p.image_spans, vec![42..42 + 3328]);
    // ... and without it: rule 1 prefixes "<image>\n" (spec §5.2).
    let without = Conversation::single("Please describe the image shortly.");
    assert_eq!(ids_checked(&without, &tiles).ids, expected);
    // The rendered text with the context run removed is the reference text.
    let text = expand_prompt(&without, &tiles, NUM_IMAGE_TOKEN)
        .unwrap()
        .replace("<IMG_CONTEXT>", "");
    assert_eq!(text, r["prompt_text_without_ctx"].as_str().unwrap());
}

#[test]
fn two_images_and_video_reference() {
    let r = reference();
    let cases = [
        (
            "two_images_separate",
            multi_image_question(2, "Describe the two images in detail."),
            5956,
            5888,
        ),
        (
            "video_8_frames",
            video_question(8, "What is the red panda doing?"),
            2156,
            2048,
        ),
    ];
    for (key, question, n_tokens, n_ctx) in cases {
        let e = &r[key];
        assert_eq!(question, e["question"].as_str().unwrap(), "{key} helper");
        let tiles = tiles_of(e);
        let p = ids_checked(&Conversation::single(question), &tiles);
        assert_eq!(p.ids.len(), n_tokens, "{key}");
        assert_eq!(e["n_tokens"].as_u64().unwrap() as usize, n_tokens);
        assert_eq!(e["n_img_context"].as_u64().unwrap() as usize, n_ctx);
        let no_ctx: Vec<u32> = p
            .ids
            .iter()
            .copied()
            .filter(|&id| id != tok().ids.img_context)
            .collect();
        assert_eq!(no_ctx, json_ids(&e["ids_no_ctx"]), "{key}");
    }
}

#[test]
fn pure_text_first_and_second_round() {
    let r = reference();
    let mut conv = Conversation::single(r["pure_text"]["question"].as_str().unwrap());
    assert_eq!(conv.render(), r["pure_text"]["prompt"].as_str().unwrap());
    assert_eq!(ids_checked(&conv, &[]).ids, json_ids(&r["pure_text"]["ids"]));

    conv.answer("I am an AI assistant whose name is InternVL.").unwrap();
    conv.ask("Can you tell me a story?");
    let e = &r["pure_text_second_round"];
    assert_eq!(conv.render(), e["prompt"].as_str().unwrap());
    assert_eq!(ids_checked(&conv, &[]).ids, json_ids(&e["ids"]));
}

#[test]
fn rendering_details() {
    assert!(
        DEFAULT_SYSTEM_MESSAGE.contains("InternVL, 是"),
        "ASCII comma and space after InternVL"
    );
    let mut c = Conversation::with_system("You are terse.");
    c.ask("Hi");
    assert_eq!(
        c.render(),
        "<|im_start|>system\nYou are terse.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
    );
    let ids = ids_checked(&c, &[2]).ids;
    assert_eq!(&ids[..3], &[151644, 8948, 198]);
    // An empty system message still renders its (empty) block, like conversation.py.
    let mut e = Conversation::with_system("");
    e.ask("x");
    assert!(e
        .render()
        .starts_with("<|im_start|>system\n<|im_end|><|im_start|>user\nx"));
}

#[test]
fn multi_turn_with_image_keeps_first_placeholder() {
    // HF stores "<image>\nQ1" in history; every later turn expands it again with the same tiles.
    let mut conv = Conversation::single("What is in the image?");
    let first = ids_checked(&conv, &[13]);
    conv.answer("A red panda.").unwrap();
    conv.ask("What colour is it?");
    let second = ids_checked(&conv, &[13]);
    assert_eq!(second.ids[..first.ids.len()], first.ids[..]);
    let text = expand_prompt(&conv, &[13], NUM_IMAGE_TOKEN).unwrap();
    assert!(text.contains("<|im_start|>user\n<img><IMG_CONTEXT>"));
    assert!(text.contains("</img>\nWhat is in the image?<|im_end|><|im_start|>assistant\nA red panda.<|im_end|>"));
    assert!(text.ends_with("<|im_start|>user\nWhat colour is it?<|im_end|><|im_start|>assistant\n"));
}

#[test]
fn combined_images_are_one_block() {
    // Spec §5.3 "combined": no num_patches_list, all 23 tiles in one <img> block.
    let p = ids_checked(&Conversation::single("Compare."), &[23]);
    assert_eq!(p.image_spans.len(), 1);
    assert_eq!(p.image_spans[0].len(), 23 * 256);
    let plan = PromptPlan::new(&Conversation::single("Compare."), &[13, 10], NUM_IMAGE_TOKEN);
    assert!(matches!(
        plan,
        Err(PromptError::PlaceholderMismatch {
            images: 2,
            placeholders: 1
        })
    ));
}

#[test]
fn plan_segments() {
    let plan = PromptPlan::new(&Conversation::single(multi_image_question(2, "Q")), &[3, 1], 4).unwrap();
    let kinds: Vec<_> = plan
        .segments
        .iter()
        .map(|s| match s {
            Segment::Text(_) => "T".to_string(),
            Segment::Image { index, n_context } => format!("I{index}:{n_context}"),
        })
        .collect();
    assert_eq!(kinds, ["T", "I0:12", "T", "I1:4", "T"]);
}

#[test]
fn literal_placeholder_without_images_stays_text() {
    let conv = Conversation::single("What does <image> mean in HTML?");
    let p = ids_checked(&conv, &[]);
    assert_eq!(p.ids, tok().encode(&conv.render()).unwrap());
    assert!(p.image_spans.is_empty());
}

#[test]
fn errors_name_the_numbers() {
    let q = Conversation::single("Image-1: <image>\nImage-2: <image>\nQ");
    let err = build_prompt_ids(tok(), &q, &[5], NUM_IMAGE_TOKEN).unwrap_err();
    assert!(matches!(
        err,
        PromptError::PlaceholderMismatch {
            images: 1,
            placeholders: 2
        }
    ));
    assert_eq!(
        err.to_string(),
        "1 image(s) given but the prompt has 2 `<image>` placeholder(s)"
    );
    let err = build_prompt_ids(tok(), &q, &[5, 1, 1], NUM_IMAGE_TOKEN).unwrap_err();
    assert!(matches!(
        err,
        PromptError::PlaceholderMismatch {
            images: 3,
            placeholders: 2
        }
    ));
    // A placeholder in a custom system message counts too (HF replaces in the whole prompt).
    let mut s = Conversation::with_system("sys <image>");
    s.ask("<image>\nQ");
    assert!(matches!(
        expand_prompt(&s, &[1], 256),
        Err(PromptError::PlaceholderMismatch {
            images: 1,
            placeholders: 2
        })
    ));

    assert!(matches!(
        expand_prompt(&q, &[1, 0], 256),
        Err(PromptError::ZeroTiles { index: 1 })
    ));
    assert!(matches!(
        expand_prompt(&q, &[1, 1], 0),
        Err(PromptError::ZeroImageTokens)
    ));
    assert!(matches!(
        expand_prompt(&q, &[usize::MAX, 1], 256),
        Err(PromptError::TooManyTokens { index: 0, .. })
    ));
    let half = internvl::prompt::MAX_IMAGE_TOKENS / 256 / 2;
    assert!(matches!(
        expand_prompt(&q, &[half, half + 1], 256),
        Err(PromptError::TooManyTokens { index: 1, .. })
    ));
    assert!(expand_prompt(&q, &[half, half], 256).is_ok());
    assert!(matches!(
        expand_prompt(&Conversation::new(), &[], 256),
        Err(PromptError::Empty)
    ));

    let mut answered = Conversation::single("Q");
    answered.answer("A").unwrap();
    assert!(matches!(
        expand_prompt(&answered, &[], 256),
        Err(PromptError::NoOpenTurn)
    ));
    assert!(matches!(answered.answer("again"), Err(PromptError::NoOpenTurn)));
    assert!(matches!(Conversation::new().answer("A"), Err(PromptError::Empty)));
    let mut gap = Conversation::single("Q1");
    gap.ask("Q2");
    assert!(matches!(
        expand_prompt(&gap, &[], 256),
        Err(PromptError::UnansweredTurn { index: 0 })
    ));
}

#[test]
fn clean_answer_like_chat() {
    assert_eq!(clean_answer("  A red panda.\n<|im_end|>junk"), "A red panda.");
    assert_eq!(clean_answer("no end "), "no end");
    assert_eq!(clean_answer(""), "");
}

// ---- grounding (spec §9) ----

fn b(label: Option<&str>, x1: f32, y1: f32, x2: f32, y2: f32) -> GroundedBox {
    GroundedBox {
        label: label.map(str::to_owned),
        x1,
        y1,
        x2,
        y2,
    }
}

#[test]
fn grounding_single_and_multiple_boxes() {
    let a = "<ref>the red panda</ref><box>[[120, 45, 870, 990]]</box>";
    assert_eq!(
        grounding::parse(a),
        vec![b(Some("the red panda"), 120.0, 45.0, 870.0, 990.0)]
    );

    let a = "Found <ref> two dogs </ref>\n <box>[[1,2,3,4], [500 , 600,700, 800]]</box> and \
             <ref>a cat</ref><box>[[0, 0, 1000, 1000]]</box>.";
    assert_eq!(
        grounding::parse(a),
        vec![
            b(Some("two dogs"), 1.0, 2.0, 3.0, 4.0),
            b(Some("two dogs"), 500.0, 600.0, 700.0, 800.0),
            b(Some("a cat"), 0.0, 0.0, 1000.0, 1000.0),
        ]
    );
    // A box with no ref, and a ref separated from its box by text: no label.
    let a = "<box>[[10, 20, 30, 40]]</box> <ref>x</ref> is at <box>[[1, 1, 2, 2]]</box>";
    assert_eq!(
        grounding::parse(a),
        vec![b(None, 10.0, 20.0, 30.0, 40.0), b(None, 1.0, 1.0, 2.0, 2.0)]
    );
}

#[test]
fn grounding_to_pixels() {
    // image1.jpg is 1000×747 (spec §10); image2.jpg 1000×1000.
    let bx = b(Some("p"), 100.0, 200.0, 500.0, 1000.0);
    let px = bx.to_pixels(1000, 747);
    assert_eq!((px.x1, px.y1, px.x2, px.y2), (100.0, 149.4, 500.0, 747.0));
    let px = bx.to_pixels(448, 2000);
    assert_eq!((px.x1, px.y1, px.x2, px.y2), (44.8, 400.0, 224.0, 2000.0));
    assert_eq!(px.label.as_deref(), Some("p"));
}

#[test]
fn grounding_garbage_never_panics() {
    let garbage = [
        "",
        "<box>",
        "<box>[[1, 2, 3, 4]]", // no </box>
        "</box><box>",
        "<box>[[1, 2, 3]]</box>",       // three numbers
        "<box>[[1, 2, 3, 4, 5]]</box>", // five
        "<box>[[a, b, c, d]]</box>",
        "<box>[[1, 2, 3, 4</box>", // unbalanced
        "<box>]]1, 2, 3, 4[[</box>",
        "<box>[[]]</box>",
        "<box>[[nan, inf, 1, 2]]</box>",
        "<ref><ref></ref></ref><box>",
        "<box>[[1,,2,3]]</box>",
        "<ref>熊猫</ref><box>[[１, ２, ３, ４]]</box>", // full-width digits are not numbers
    ];
    for g in garbage {
        assert!(grounding::parse(g).is_empty(), "{g:?}");
    }
    // Out-of-range values are clamped into 0..=1000.
    let a = "<ref>big</ref><box>[[-5, 99999999999999999999999, 1e9, -0.0]]</box>";
    assert_eq!(grounding::parse(a), vec![b(Some("big"), 0.0, 1000.0, 1000.0, 0.0)]);
    // Unbalanced brackets around one good list still yield that list.
    let a = "<box>[[[1, 2, 3, 4]</box>";
    assert_eq!(grounding::parse(a), vec![b(None, 1.0, 2.0, 3.0, 4.0)]);
    // Multibyte text around tags.
    let a = "图中<ref>熊猫</ref><box>[[1, 2, 3, 4]]</box>😀";
    assert_eq!(grounding::parse(a), vec![b(Some("熊猫"), 1.0, 2.0, 3.0, 4.0)]);
}

#[test]
fn grounding_bare_boxes_after_skip_special() {
    // chat() decodes with skip_special_tokens=True, which removes the tags (spec §9).
    let a = "the red panda[[120, 45, 870, 990]] and [[1, 2, 3, 4], [5, 6, 7, 8]] [1, 2, 3, 4]";
    assert_eq!(
        grounding::parse_bare(a),
        vec![
            b(None, 120.0, 45.0, 870.0, 990.0),
            b(None, 1.0, 2.0, 3.0, 4.0),
            b(None, 5.0, 6.0, 7.0, 8.0),
        ]
    );
    assert!(grounding::parse_bare("[[1, 2, 3, 4]").is_empty());
    assert!(grounding::parse_bare("]][[").is_empty());
}

#[test]
fn grounding_through_the_tokenizer() {
    // Tags survive decoding only with special tokens kept.
    let t = tok();
    let answer = "<ref>the red panda</ref><box>[[120, 45, 870, 990]]</box>";
    let ids = t.encode(answer).unwrap();
    assert_eq!(ids[0], t.ids.ref_start.unwrap());
    let kept = t.decode(&ids, false).unwrap();
    assert_eq!(grounding::parse(&kept).len(), 1);
    let skipped = t.decode(&ids, true).unwrap();
    assert!(grounding::parse(&skipped).is_empty());
    assert_eq!(
        grounding::parse_bare(&skipped),
        vec![b(None, 120.0, 45.0, 870.0, 990.0)]
    );
}
