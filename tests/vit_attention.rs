//! The ViT's two attention paths (flash attention, the default; two matrix products over a sequence padded
//! to a multiple of 16, `INTERNVL_VIT_FLASH_ATTN=0`) agree on the tiny model, and padding changes nothing.
//! One test in its own binary: it switches the path through the environment.
mod common;

use std::sync::Arc;

use internvl::model::Model;
use internvl::session::{Session, SessionParams};

#[test]
fn flash_and_padded_product_attention_agree() {
    let path = common::tiny_gguf(42, "f32", &[]);
    let model = Arc::new(Model::load(&[&path]).expect("load"));
    let hp = model.hp.clone();
    let per_tile = hp.vision.n_channels * hp.vision.image_size * hp.vision.image_size;
    // Two different tiles in one batch, so that a mix-up between tiles would show.
    let tiles: Vec<f32> = (0..2 * per_tile)
        .map(|i| (((i * 7919) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let run = || {
        let mut s = Session::new(
            model.clone(),
            SessionParams {
                n_ctx: 64,
                n_threads: 2,
                ..Default::default()
            },
        )
        .expect("session");
        let out = s.encode_tiles(&tiles, true).expect("encode");
        (out.vit.expect("vit"), out.proj)
    };
    std::env::remove_var("INTERNVL_VIT_FLASH_ATTN");
    let (vit_fa, proj_fa) = run();
    std::env::set_var("INTERNVL_VIT_FLASH_ATTN", "0");
    let (vit_mm, proj_mm) = run();
    std::env::remove_var("INTERNVL_VIT_FLASH_ATTN");

    let n_tok = hp.vision.n_patches() + 1;
    assert_eq!(
        vit_fa.len(),
        2 * n_tok * hp.vision.n_embd,
        "ViT output has the real tokens only"
    );
    assert_eq!(vit_fa.len(), vit_mm.len());
    assert_eq!(proj_fa.len(), proj_mm.len());
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = |a: &[f32]| a.iter().map(|x| x.abs()).fold(0f32, f32::max);
    let (dv, dp) = (max_diff(&vit_fa, &vit_mm), max_diff(&proj_fa, &proj_mm));
    eprintln!(
        "max |flash - products|: vit {dv:.3e} (max |vit| {:.3}), proj {dp:.3e} (max |proj| {:.3})",
        scale(&vit_fa),
        scale(&proj_fa)
    );
    assert!(vit_fa.iter().chain(&proj_fa).all(|x| x.is_finite()));
    assert!(dv <= 1e-4 * scale(&vit_fa).max(1.0), "vit differs by {dv}");
    assert!(dp <= 1e-4 * scale(&proj_fa).max(1.0), "proj differs by {dp}");
}
