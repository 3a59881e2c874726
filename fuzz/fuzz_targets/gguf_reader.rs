//! GGUF reader on arbitrary bytes: parse, then walk every key/value, every typed accessor, every tensor
//! info and every tensor's data slice, then the model-level metadata readers the runtime applies next.
#![no_main]

use internvl_fuzz::gguf::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = (
        file.version(),
        file.alignment(),
        file.data_offset(),
        format!("{file:?}"),
    );
    let mut sink = 0usize;
    for (key, value) in file.kvs() {
        sink ^= key.len() ^ value.type_description().len();
        // Every typed getter must return a value or a WrongType error, never panic.
        sink ^= file.get_u32(key).map_or(0, |x| x as usize);
        sink ^= file.get_u64(key).map_or(0, |x| x as usize);
        sink ^= file.get_i64(key).map_or(0, |x| x as usize);
        sink ^= file.get_f32(key).map_or(0, |x| x.to_bits() as usize);
        sink ^= file.get_bool(key).map_or(0, usize::from);
        sink ^= file.get_str(key).map_or(0, str::len);
        sink ^= file.get_str_array(key).map_or(0, <[String]>::len);
        sink ^= file.get_i32_array(key).map_or(0, |v| v.len());
        sink ^= file.get_u32_array(key).map_or(0, |v| v.len());
        sink ^= file.get_f32_array(key).map_or(0, |v| v.len());
        if let Err(e) = file.get_u32(key) {
            sink ^= e.to_string().len();
        }
        if let Value::Array(a) = value {
            sink ^= a.len() ^ a.elem_type().name().len();
            sink ^= a.to_i64_vec().map_or(0, |v| v.len());
        }
        sink ^= value.as_f64().map_or(0, |x| x.to_bits() as usize);
        sink ^= value.as_i32().map_or(0, |x| x as usize);
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        // The reader promised every range at open: each slice has exactly the declared size.
        assert_eq!(bytes.len(), t.size, "tensor {} slice", t.name);
        assert_eq!(t.ty.nbytes(&t.ne), Some(t.size), "tensor {} size", t.name);
        assert!(file.tensor(&t.name).is_some());
        sink ^= t.n_elements() ^ bytes.first().copied().map_or(0, usize::from);
        sink ^= bytes.last().copied().map_or(0, usize::from) ^ t.ty.name().len();
        let _ = t.ty.row_size(t.ne.first().copied().unwrap_or(1));
    }
    sink ^= file.data_section().len() ^ file.as_bytes().len();
    // What the runtime does next with a parsed file (pure Rust; ggml is not touched).
    let files = [&file];
    if let Ok(hp) = internvl_fuzz::model::config::hparams_from_gguf(&files) {
        sink ^= hp.num_image_token() ^ hp.projector_in();
    }
    if let Ok(meta) = internvl_fuzz::model::config::meta_from_gguf(&files) {
        sink ^= meta.stop_ids.len();
    }
    std::hint::black_box(sink);
});
