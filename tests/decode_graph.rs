//! The decode graph kept between tokens (`Session::decode`, issue 18): the same logits, bit for bit, as a graph
//! built afresh for every token, across cache spans, prefills and rewinds in between; and in the first span
//! (contexts up to 256 tokens), with ggml's flash attention, the same bits as the exact-length graph every
//! version before built per token.
mod common;
use std::sync::Arc;

use internvl::kernels::Kernels;
use internvl::model::{Device, WeightLayout, Weights};
use internvl::session::{Session, SessionParams, DECODE_SPAN};

fn session(model: &Arc<Weights>, threads: usize, reuse: bool) -> Session {
    let mut s = Session::new(
        model.clone(),
        SessionParams {
            n_ctx: 1024,
            n_threads: threads,
            ..Default::default()
        },
    )
    .unwrap();
    s.set_decode_graph_reuse(reuse);
    s
}

/// Token ids of a text-only prompt (no image-context ids).
fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 200 + (i * 37) % 5000).collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Decodes `steps` tokens greedily from `first` in `a` (kept graph) and `b`; every step's logits must be the
/// same bits. Returns the last token.
fn decode_both(a: &mut Session, b: &mut Session, mut id: u32, steps: usize) -> u32 {
    for step in 0..steps {
        let la = a.decode(id).unwrap();
        let lb = b.decode(id).unwrap();
        assert!(la.iter().all(|x| x.is_finite()), "step {step}: non-finite logits");
        assert!(
            same_bits(&la, &lb),
            "step {step} (position {}): the kept graph's logits differ from the rebuilt graph's",
            a.n_past() - 1
        );
        id = internvl::sampling::argmax(&la);
    }
    id
}

#[test]
fn kept_decode_graph_gives_the_bits_of_a_graph_built_per_token() {
    // q4_0 matrices go to our panels where the kernels choice says so (AVX-512 VNNI CPUs) and to ggml's
    // kernels elsewhere; the f32 file (ggml's products) is decoded by the next test.
    let path = common::tiny_gguf(42, "q4_0", &[]);
    let model = Arc::new(Weights::load(&[&path]).unwrap());
    let (mut kept, mut rebuilt) = (session(&model, 2, true), session(&model, 2, false));
    let ids = prompt(480);
    let la = kept.eval(&ids, &[], false).unwrap().logits;
    let lb = rebuilt.eval(&ids, &[], false).unwrap().logits;
    assert!(same_bits(&la, &lb));
    // 480 -> 500: one span (up to 512 rows) ...
    let id = decode_both(&mut kept, &mut rebuilt, internvl::sampling::argmax(&la), 20);
    assert_eq!(kept.stats.decode_graphs_built, 1, "one graph for one span");
    assert_eq!(rebuilt.stats.decode_graphs_built, 20);
    // ... a prefill in between (another graph planned in the scheduler: the kept one is allocated again) ...
    let more = prompt(20);
    let la = kept.eval(&more, &[], false).unwrap().logits;
    let lb = rebuilt.eval(&more, &[], false).unwrap().logits;
    assert!(same_bits(&la, &lb));
    let _ = id;
    // ... across the span boundary at 512 rows (520 -> 530), where ggml splits the cache between threads ...
    let id = decode_both(&mut kept, &mut rebuilt, internvl::sampling::argmax(&la), 10);
    assert_eq!(kept.n_past(), 530);
    assert_eq!(kept.stats.decode_graphs_built, 2, "spans of 512 and 768 rows");
    // ... and back into the first span after a rewind.
    kept.truncate(100);
    rebuilt.truncate(100);
    decode_both(&mut kept, &mut rebuilt, id, 5);
    assert_eq!(kept.stats.decode_graphs_built, 3);
    assert!(kept.stats.decode_overhead <= kept.stats.decode_time);
}

#[test]
fn spans_under_512_rows_give_the_bits_of_the_exact_length_graph() {
    // A one-token `eval` builds the graph over exactly the cached rows, as `decode` did before graphs were
    // kept. Under 512 rows (the first span: contexts up to DECODE_SPAN tokens) ggml splits the attention by
    // head only, so the hidden rows past the cached ones change nothing. (From 512 rows on it splits the rows
    // between threads by the view's length: the first test checks those spans against rebuilt graphs.)
    // This is a property of ggml's flash attention, so ggml's kernels run here: with ours, a decode step's
    // attention is our kernel, which stops at the last unmasked row (`kernels::decode_attention`'s tests),
    // while a one-token `eval` keeps ggml's, as every prefill does.
    const { assert!(DECODE_SPAN < 512) };
    let path = common::tiny_gguf(42, "f32", &[]);
    let model = Weights::load_with_kernels(&[&path], Device::Cpu, WeightLayout::Repacked, Kernels::Ggml).unwrap();
    let model = Arc::new(model);
    let (mut kept, mut exact) = (session(&model, 2, true), session(&model, 2, true));
    let ids = prompt(DECODE_SPAN - 40);
    let mut id = internvl::sampling::argmax(&kept.eval(&ids, &[], false).unwrap().logits);
    exact.eval(&ids, &[], false).unwrap();
    for step in 0..40 {
        let la = kept.decode(id).unwrap();
        let lb = exact.eval(&[id], &[], false).unwrap().logits;
        assert!(
            same_bits(&la, &lb),
            "step {step}: the kept graph differs from the exact-length graph"
        );
        id = internvl::sampling::argmax(&la);
    }
    assert_eq!(kept.n_past(), DECODE_SPAN);
    assert_eq!(kept.stats.decode_graphs_built, 1);
}
