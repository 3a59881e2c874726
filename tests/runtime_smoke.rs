mod common;
use std::sync::Arc;

use internvl::model::Weights;
use internvl::session::{Session, SessionParams};

#[test]
fn tiny_model_runs_end_to_end() {
    let path = common::tiny_gguf(42, "f32", &[]);
    let model = Arc::new(Weights::load(&[&path]).unwrap());
    let hp = model.hp.clone();
    let mut s = Session::new(
        model.clone(),
        SessionParams {
            n_ctx: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let per_tile = 3 * 448 * 448;
    let tiles: Vec<f32> = (0..2 * per_tile).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let v = s.encode_tiles(&tiles, true).unwrap();
    assert_eq!(v.proj.len(), 2 * 256 * hp.llm.n_embd);
    assert!(v.proj.iter().all(|x| x.is_finite()));
    let mut ids = vec![151644u32, 872, 198, 151646];
    ids.extend(std::iter::repeat_n(151648, 512));
    ids.extend([151647, 198, 151645, 151644, 77091, 198]);
    let out = s.eval(&ids, &v.proj, true).unwrap();
    assert_eq!(out.logits.len(), hp.llm.n_vocab);
    assert_eq!(s.n_past(), ids.len());
    let next = internvl::sampling::argmax(&out.logits);
    let l2 = s.decode(next).unwrap();
    assert!(l2.iter().all(|x| x.is_finite()));
}

#[test]
fn device_choice_without_a_gpu() {
    use internvl::model::Device;
    let path = common::tiny_gguf(42, "f32", &[]);
    // This build has no GPU backend: auto falls back to the CPU, an explicit GPU request is a clear error.
    let m = Weights::load_on(&[&path], Device::Auto).unwrap();
    assert_eq!(m.device, internvl::ggml::BackendKind::Cpu);
    let err = Weights::load_on(&[&path], Device::Gpu)
        .err()
        .expect("no GPU here")
        .to_string();
    assert!(err.contains("GPU"), "{err}");
    assert_eq!(Device::parse("cuda"), Some(Device::Gpu));
    assert_eq!(Device::parse("tpu"), None);
}
