//! The ViT's three CPU attention paths (ours, `INTERNVL_VIT_ATTN=ours`, the default on AVX-512 CPUs; ggml's flash
//! attention, `INTERNVL_VIT_ATTN=flash`, the default elsewhere;
//! two ggml matrix products over a sequence padded to a multiple of 16, `INTERNVL_VIT_ATTN=products`) agree
//! on the tiny model, and padding changes nothing. One test in its own binary: it switches the path through
//! the environment.
mod common;

use std::sync::Arc;

use internvl::model::Model;
use internvl::session::{Session, SessionParams};

#[test]
fn ours_flash_and_padded_product_attention_agree() {
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
    std::env::set_var("INTERNVL_VIT_ATTN", "ours");
    let (vit_ours, proj_ours) = run();
    std::env::set_var("INTERNVL_VIT_ATTN", "flash");
    let (vit_fa, proj_fa) = run();
    std::env::set_var("INTERNVL_VIT_ATTN", "products");
    let (vit_mm, proj_mm) = run();
    std::env::remove_var("INTERNVL_VIT_ATTN");

    let n_tok = hp.vision.n_patches() + 1;
    assert_eq!(
        vit_ours.len(),
        2 * n_tok * hp.vision.n_embd,
        "ViT output has the real tokens only"
    );
    // NaN-propagating maxima (a fold over f32::max would drop a NaN and pass).
    let max_diff = common::max_abs_diff;
    let scale = |a: &[f32]| common::nan_max(a.iter().map(|x| x.abs() as f64));
    for (name, vit, proj) in [("flash", &vit_fa, &proj_fa), ("products", &vit_mm, &proj_mm)] {
        assert_eq!((vit.len(), proj.len()), (vit_ours.len(), proj_ours.len()), "{name}");
        let (dv, dp) = (max_diff(&vit_ours, vit), max_diff(&proj_ours, proj));
        eprintln!(
            "max |ours - {name}|: vit {dv:.3e} (max |vit| {:.3}), proj {dp:.3e} (max |proj| {:.3})",
            scale(&vit_ours),
            scale(&proj_ours)
        );
        assert!(vit.iter().chain(proj.iter()).all(|x| x.is_finite()), "{name}");
        assert!(dv <= 1e-4 * scale(&vit_ours).max(1.0), "{name}: vit differs by {dv}");
        assert!(dp <= 1e-4 * scale(&proj_ours).max(1.0), "{name}: proj differs by {dp}");
    }
}
