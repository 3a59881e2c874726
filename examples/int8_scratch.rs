use internvl::model::{Device, Model, WeightLayout};
use internvl::session::{Session, SessionParams};
use std::sync::Arc;
fn logits(path: &str, layout: WeightLayout) -> Vec<Vec<f32>> {
    let m = Arc::new(Model::load_with(&[std::path::Path::new(path)], Device::Cpu, layout).unwrap());
    let mut out = vec![];
    for p in 0..6u32 {
        let mut s = Session::new(
            m.clone(),
            SessionParams {
                n_ctx: 512,
                n_threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let ids: Vec<u32> = (0..100u32).map(|i| 200 + (i * 7919 + p * 104729) % 50000).collect();
        out.push(s.eval(&ids, &[], false).unwrap().logits);
    }
    out
}
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |x: &[f32]| {
        let m = x.iter().cloned().fold(f32::MIN, f32::max) as f64;
        m + x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(a, b)| {
            let pa = (*a as f64 - lp).exp();
            pa * ((*a as f64 - lp) - (*b as f64 - lq))
        })
        .sum()
}
fn main() {
    let r = logits("/tmp/full1-f32.gguf", WeightLayout::Repacked);
    for (f, l) in [
        ("/tmp/full1-f32.gguf", WeightLayout::Int8),
        ("/tmp/full1-q8_0.gguf", WeightLayout::Int8),
        ("/tmp/full1-q8_0.gguf", WeightLayout::Repacked),
        ("/tmp/full1-q4_0.gguf", WeightLayout::Int8),
        ("/tmp/full1-q4_0.gguf", WeightLayout::Repacked),
    ] {
        let x = logits(f, l);
        let k: Vec<f64> = r.iter().zip(&x).map(|(a, b)| kl(a, b)).collect();
        println!(
            "{f} {l:?}: KL mean {:.3e} max {:.3e}",
            k.iter().sum::<f64>() / k.len() as f64,
            k.iter().cloned().fold(0.0, f64::max)
        );
    }
}
