//! The runtime accepts what the converter writes: `internvl::model::Model::load` (which checks every key,
//! tensor shape and type before ggml sees them) loads the single file and the --split pair.

mod common;

use common::*;
use internvl::gguf::GgmlType;
use internvl::model::Model;
use internvl_convert::policy::TypeChoice;

#[test]
fn runtime_loads_converter_output() {
    let tmp = tempfile::tempdir().unwrap();
    // Every offered type; the cheap micro checkpoint where rows need not fit blocks.
    for ty in internvl_convert::policy::ALLOWED {
        let (ck, hp) = match ty.is_quantized() {
            true => (tiny_checkpoint(), internvl::hparams::Hparams::tiny()),
            false => (micro_checkpoint(), micro()),
        };
        if ty == GgmlType::IQ4_NL {
            continue; // ggml's iq4_nl quantizer is slow (minutes for the full model); same layout as q4_0.
        }
        let p = tmp.path().join(format!("{ty}.gguf"));
        convert_to(ck, &p, TypeChoice::uniform(ty), false);
        let m = Model::load(&[&p]).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(m.hp, hp);
        std::fs::remove_file(&p).unwrap();
    }
    let text = tmp.path().join("pair.gguf");
    convert_to(tiny_checkpoint(), &text, TypeChoice::uniform(GgmlType::Q8_0), true);
    let mmproj = tmp.path().join("mmproj-pair.gguf");
    Model::load(&[&text, &mmproj]).unwrap();
}
