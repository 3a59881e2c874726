//! Writes a GGUF's weights back as an f32 checkpoint in the original Hugging Face layout (names and shapes
//! from `internvl::names::tensor_specs`), so that the PyTorch reference can run on exactly the values a
//! quantized file holds. Used to separate quantization error from runtime error.
//!
//!   cargo run --release --example dequant_checkpoint -- model-q4_0.gguf CHECKPOINT_DIR OUT_DIR
//! (config and tokenizer files are copied from CHECKPOINT_DIR).
use std::io::Write;
use std::path::Path;

use internvl::ggml::dequantize;
use internvl::gguf::GgufFile;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: dequant_checkpoint MODEL.gguf CHECKPOINT_DIR OUT_DIR");
        std::process::exit(2);
    }
    let (gguf, ck, out) = (Path::new(&args[1]), Path::new(&args[2]), Path::new(&args[3]));
    let model = internvl::model::Weights::load(&[gguf]).unwrap_or_else(|e| panic!("{e}"));
    let file = GgufFile::open(gguf).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(out).unwrap();
    let specs = internvl::names::tensor_specs(&model.hp);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut blobs = Vec::new();
    for s in &specs {
        let t = file
            .tensor(&s.gguf_name)
            .unwrap_or_else(|| panic!("missing {}", s.gguf_name));
        let v = dequantize(t.ty, file.tensor_data(t), t.n_elements()).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        header.insert(
            s.hf_name.clone(),
            serde_json::json!({"dtype": "F32", "shape": s.hf_shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        blobs.push(bytes);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(out.join("model.safetensors")).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    for b in blobs {
        f.write_all(&b).unwrap();
    }
    for e in std::fs::read_dir(ck).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n != "model.safetensors" && !n.starts_with('.') {
            std::fs::copy(e.path(), out.join(&n)).unwrap();
        }
    }
    println!(
        "wrote {} ({} tensors, {offset} bytes of f32)",
        out.display(),
        specs.len()
    );
}
