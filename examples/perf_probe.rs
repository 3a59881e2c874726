//! Quick timing probe: decode and one vision tile on a model (development aid).
use internvl::model::Model;
use internvl::session::{Session, SessionParams};
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).expect("gguf");
    let model = Arc::new(Model::load(&[std::path::Path::new(&path)]).unwrap());
    let mut s = Session::new(
        model,
        SessionParams {
            n_ctx: 1024,
            n_threads: std::env::var("T").ok().and_then(|t| t.parse().ok()).unwrap_or(2),
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u32> = (0..64u32).map(|i| 1000 + i * 37).collect();
    let t = Instant::now();
    let out = s.eval(&ids, &[], false).unwrap();
    eprintln!("prefill 64: {:.1} tok/s", 64.0 / t.elapsed().as_secs_f64());
    let mut next = internvl::sampling::argmax(&out.logits);
    let t = Instant::now();
    for _ in 0..16 {
        next = internvl::sampling::argmax(&s.decode(next).unwrap());
    }
    eprintln!("decode: {:.1} tok/s", 16.0 / t.elapsed().as_secs_f64());
    if std::env::var_os("VISION").is_some() {
        let tile: Vec<f32> = (0..3 * 448 * 448)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let t = Instant::now();
        s.encode_tiles(&tile, false).unwrap();
        eprintln!("vision: {:.0} ms/tile", t.elapsed().as_secs_f64() * 1000.0);
    }
}
