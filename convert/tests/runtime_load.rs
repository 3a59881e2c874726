//! The runtime accepts what the converter writes: `internvl::model::Weights::load` (which checks every key,
//! tensor shape and type before ggml sees them) loads the single file and the --split pair.

mod common;

use common::*;
use internvl::gguf::GgmlType;
use internvl::model::Weights;
use internvl_convert::policy::TypeChoice;

#[test]
fn runtime_loads_converter_output() {
    let tmp = tempfile::tempdir().unwrap();
    // Every offered type, on small checkpoints: quantized types on one whose rows fit 32-blocks.
    for &ty in internvl_convert::policy::ALLOWED {
        let (ck, hp) = match ty.is_quantized() {
            true => (aligned_checkpoint(), aligned()),
            false => (micro_checkpoint(), micro()),
        };
        let p = tmp.path().join(format!("{ty}.gguf"));
        convert_to(ck, &p, TypeChoice::uniform(ty), false);
        let m = Weights::load(&[&p]).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(m.hp, hp);
        std::fs::remove_file(&p).unwrap();
    }
    // The real ratios (tiny) as the llama.cpp pair.
    let text = tmp.path().join("pair.gguf");
    convert_to(tiny_checkpoint(), &text, TypeChoice::uniform(GgmlType::Q8_0), true);
    let mmproj = tmp.path().join("mmproj-pair.gguf");
    Weights::load(&[&text, &mmproj]).unwrap();
}
