//! The ViT's CPU attention and GELU paths agree on the tiny model: ours on every instruction set this CPU
//! runs (`--kernels portable`, `avx512-vnni`, ...: the same bits) and ggml's flash attention and GELU
//! (`--kernels ggml`, what runs where ours are not chosen). (The GPU's path, two ggml matrix products over a
//! sequence padded to a multiple of 16, is not reachable on the CPU.)
mod common;

use std::sync::Arc;

use internvl::kernels::{Isa, Kernels};
use internvl::model::{Device, WeightLayout, Weights};
use internvl::session::{Session, SessionParams};

#[test]
fn our_attention_on_every_instruction_set_and_ggml_flash_attention_agree() {
    let path = common::tiny_gguf(42, "f32", &[]);
    let load = |k: Kernels| {
        let m = Weights::load_with_kernels(&[&path], Device::Cpu, WeightLayout::Repacked, k).expect("load");
        Arc::new(m)
    };
    let hp = load(Kernels::Ggml).hp.clone();
    let per_tile = hp.vision.n_channels * hp.vision.image_size * hp.vision.image_size;
    // Two different tiles in one batch, so that a mix-up between tiles would show.
    let tiles: Vec<f32> = (0..2 * per_tile)
        .map(|i| (((i * 7919) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let run = |k: Kernels| {
        let model = load(k);
        // Ours for every instruction set; ggml's flash attention for Ggml.
        let ours = matches!(k, Kernels::Portable | Kernels::Avx2 | Kernels::Avx512Vnni);
        assert_eq!(model.kernels.attention, ours, "{k}");
        let mut s = Session::new(
            model,
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
    let (vit_ours, proj_ours) = run(Kernels::Portable);
    // Ggml's flash attention and GELU within the tolerance below; every instruction set of ours this CPU
    // runs bit for bit (the products of this f32 model are ggml's on every path).
    let others = vec![("ggml", run(Kernels::Ggml))];
    // The AVX-VNNI sets differ from AVX2 only in the q4_0/q8_0 products, which this test does not use.
    for isa in Isa::bases_here().into_iter().filter(|&i| i != Isa::Portable) {
        let kernels = Kernels::from(isa);
        eprintln!("{}: compared with the portable kernels bit for bit", isa.name());
        let (vit, proj) = run(kernels);
        assert!(
            vit == vit_ours && proj == proj_ours,
            "{} differs from the portable kernels",
            isa.name()
        );
    }

    let n_tok = hp.vision.n_patches() + 1;
    assert_eq!(
        vit_ours.len(),
        2 * n_tok * hp.vision.n_embd,
        "ViT output has the real tokens only"
    );
    // NaN-propagating maxima (a fold over f32::max would drop a NaN and pass).
    let max_diff = common::max_abs_diff;
    let scale = |a: &[f32]| common::nan_max(a.iter().map(|x| x.abs() as f64));
    for (name, (vit, proj)) in &others {
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
