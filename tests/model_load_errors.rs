//! A GGUF that is truncated or does not match the model is refused with a clear error before any graph is
//! built (ggml asserts abort the process; these checks run first).
mod common;

use std::path::{Path, PathBuf};

use internvl::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use internvl::model::{ModelError, Weights};

/// Rewrites `src` into `dst`, letting `edit_kv` drop or change keys and `edit_tensor` change a tensor's
/// declared shape or type (None drops it; the data is adapted to the declared size).
fn rewrite(
    src: &Path,
    dst: &Path,
    edit_kv: impl Fn(&str, &Value) -> Option<Value>,
    edit_tensor: impl Fn(&str, &[usize], GgmlType) -> Option<(Vec<usize>, GgmlType)>,
) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::create(dst).unwrap();
    for (k, v) in f.kvs() {
        if k == "general.alignment" {
            continue;
        }
        if let Some(v) = edit_kv(k, v) {
            w.add_kv(k, v).unwrap();
        }
    }
    let mut plan = Vec::new();
    for t in f.tensors() {
        if let Some((ne, ty)) = edit_tensor(&t.name, &t.ne, t.ty) {
            w.add_tensor(&t.name, &ne, ty).unwrap();
            plan.push((t.clone(), ty.nbytes(&ne).unwrap()));
        }
    }
    for (t, size) in plan {
        let mut data = f.tensor_data(&t).to_vec();
        data.resize(size, 0);
        w.write_tensor_data(&t.name, &data).unwrap();
    }
    w.finish().unwrap();
}

/// `src` with metadata key `key` set to `value`; every other key and every tensor unchanged.
fn with_key(src: &Path, dst: &Path, key: &str, value: Value) {
    rewrite(
        src,
        dst,
        |k, v| Some(if k == key { value.clone() } else { v.clone() }),
        |_, ne, ty| Some((ne.to_vec(), ty)),
    );
}

fn load_err(p: &Path) -> (ModelError, String) {
    match Weights::load(&[p]) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = common::repo().join("target/tmp/model_load_errors");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn truncated_file_is_refused() {
    let src = common::tiny_gguf(42, "q8_0", &[]);
    let bytes = std::fs::read(&src).unwrap();
    // The end of the last tensor's data (after it, only alignment padding, which may be missing).
    let f = GgufFile::open(&src).unwrap();
    let data_end = f.data_offset() + f.tensors().iter().map(|t| t.offset + t.size).max().unwrap();
    for cut in [10, 4096, bytes.len() / 2, data_end - 1] {
        let p = tmp(&format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let (e, s) = load_err(&p);
        assert!(matches!(e, ModelError::Gguf { .. }), "cut at {cut}: {s}");
        assert!(s.contains(&p.display().to_string()), "names the file: {s}");
    }
}

#[test]
fn wrong_shape_missing_tensor_missing_key_and_bad_type_are_refused() {
    let src = common::tiny_gguf(42, "f32", &[]);

    let p = tmp("shape.gguf");
    rewrite(
        &src,
        &p,
        |_, v| Some(v.clone()),
        |n, ne, ty| {
            if n == "blk.1.attn_k.weight" {
                Some((vec![ne[0], ne[1] * 2], ty))
            } else {
                Some((ne.to_vec(), ty))
            }
        },
    );
    let (e, s) = load_err(&p);
    assert!(matches!(e, ModelError::TensorShape { .. }), "{s}");
    assert!(s.contains("blk.1.attn_k.weight"), "{s}");

    let p = tmp("missing_tensor.gguf");
    rewrite(
        &src,
        &p,
        |_, v| Some(v.clone()),
        |n, ne, ty| (n != "v.blk.0.ls2.weight").then(|| (ne.to_vec(), ty)),
    );
    let (e, s) = load_err(&p);
    assert!(
        matches!(e, ModelError::MissingTensor(ref n) if n == "v.blk.0.ls2.weight"),
        "{s}"
    );

    let p = tmp("missing_key.gguf");
    rewrite(
        &src,
        &p,
        |k, v| (k != "qwen2.attention.head_count_kv").then(|| v.clone()),
        |_, ne, ty| Some((ne.to_vec(), ty)),
    );
    let (e, s) = load_err(&p);
    assert!(
        matches!(e, ModelError::MissingKey("qwen2.attention.head_count_kv")),
        "{s}"
    );

    let p = tmp("bad_key_type.gguf");
    with_key(&src, &p, "qwen2.block_count", Value::Str("two".into()));
    let (e, s) = load_err(&p);
    assert!(
        matches!(
            e,
            ModelError::BadKey {
                key: "qwen2.block_count",
                ..
            }
        ),
        "{s}"
    );

    // A norm stored as f16 would be added/multiplied with mismatched types: refused by name.
    let p = tmp("bad_type.gguf");
    rewrite(
        &src,
        &p,
        |_, v| Some(v.clone()),
        |n, ne, ty| Some((ne.to_vec(), if n == "output_norm.weight" { GgmlType::F16 } else { ty })),
    );
    let (e, s) = load_err(&p);
    assert!(matches!(e, ModelError::TensorType { .. }), "{s}");
    assert!(s.contains("output_norm.weight") && s.contains("f16"), "{s}");

    // Dimensions the graphs cannot run (heads not dividing the width) are refused before ggml sees them.
    let p = tmp("bad_heads.gguf");
    with_key(&src, &p, "qwen2.attention.head_count", Value::U32(5));
    let (e, s) = load_err(&p);
    assert!(matches!(e, ModelError::Unsupported(_)), "{s}");
}

#[test]
fn absurd_layer_count_is_refused_before_building_the_name_table() {
    // Found by the hostile-input table: a million layers cost 3.4 GiB and 26 s before "missing tensor".
    let src = common::tiny_gguf(42, "f32", &[]);
    let p = tmp("million_layers.gguf");
    with_key(&src, &p, "qwen2.block_count", Value::U32(1_000_000));
    let t = std::time::Instant::now();
    let (e, s) = load_err(&p);
    assert!(
        matches!(
            e,
            ModelError::BadKey {
                key: "qwen2.block_count",
                ..
            }
        ),
        "{s}"
    );
    assert!(s.contains("1000000 layers"), "{s}");
    // Not a timing test: a generous bound that only the old behaviour (building 10^7 names) would break.
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

#[test]
fn a_directory_or_device_is_named_as_such() {
    // Mapping a directory used to fail with "No such device (os error 19)".
    let dir = tempfile::tempdir().unwrap();
    let e = GgufFile::open(dir.path())
        .expect_err("a directory is not a GGUF file")
        .to_string();
    assert!(e.contains("is a directory") && !e.contains("os error"), "{e}");
    let e = GgufFile::open(Path::new("/dev/null"))
        .expect_err("a device is not a GGUF file")
        .to_string();
    assert!(e.contains("not a regular file") && !e.contains("os error"), "{e}");
}

#[test]
fn unknown_or_missing_architecture_is_refused() {
    // The language model is chosen from `general.architecture`: another architecture's file is refused at
    // load, naming what it found and what this runtime implements.
    let src = common::tiny_gguf(42, "q8_0", &[]);
    let p = tmp("arch.gguf");
    with_key(&src, &p, "general.architecture", Value::Str("internlm2".into()));
    let (e, s) = load_err(&p);
    assert!(matches!(e, ModelError::Unsupported(_)), "{s}");
    assert!(
        s.contains("internlm2") && s.contains("internvl") && s.contains("qwen2"),
        "{s}"
    );

    let p = tmp("no-arch.gguf");
    rewrite(
        &src,
        &p,
        |k, v| (k != "general.architecture").then(|| v.clone()),
        |_, ne, ty| Some((ne.to_vec(), ty)),
    );
    let (e, s) = load_err(&p);
    assert!(matches!(e, ModelError::MissingKey("general.architecture")), "{s}");
}

/// Image statistics come from the file (`clip.vision.image_mean`/`image_std`, which the converter writes):
/// values the graphs cannot use are refused at load naming the key, and other valid values are what the
/// chat normalizes its images with.
#[test]
fn image_mean_and_std_come_from_the_file() {
    use internvl::engine::{
        ChatParams, Flow, GenerateParams, Image, LoadParams, Message, Model as EngineModel, SessionParams,
        SharedEmbeddingCache,
    };
    use internvl::gguf::Array;
    use internvl::image::{preprocess_with, Normalization};
    use internvl::session::Session;

    let src = common::tiny_gguf(42, "f32", &[]);
    let (mean_key, std_key) = ("clip.vision.image_mean", "clip.vision.image_std");
    let f3 = |v: [f32; 3]| Value::Array(Array::F32(v.to_vec()));
    for (i, (key, v)) in [
        (std_key, [0.2, 0.0, 0.2]),
        (std_key, [0.2, -0.5, 0.2]),
        (std_key, [0.2, f32::NAN, 0.2]),
        (mean_key, [f32::INFINITY, 0.5, 0.5]),
    ]
    .into_iter()
    .enumerate()
    {
        let p = tmp(&format!("bad_normalization_{i}.gguf"));
        with_key(&src, &p, key, f3(v));
        let (e, s) = load_err(&p);
        assert!(matches!(e, ModelError::BadKey { key: k, .. } if k == key), "{s}");
        assert!(s.contains(key), "{s}");
    }

    let (mean, std) = ([0.5, 0.25, 0.0], [0.5, 2.0, 1.0]);
    let p = tmp("other_normalization.gguf");
    rewrite(
        &src,
        &p,
        |k, v| {
            Some(match k {
                k if k == mean_key => f3(mean),
                k if k == std_key => f3(std),
                _ => v.clone(),
            })
        },
        |_, ne, ty| Some((ne.to_vec(), ty)),
    );
    let model = EngineModel::load(&p, &LoadParams::default()).expect("loads");
    let norm = Normalization::new(mean, std).unwrap();
    assert_eq!(model.normalization(), norm);

    // The chat's embedding of an image equals the vision tower run on tiles normalized by hand with the
    // file's statistics, and not with ImageNet's.
    let session = SessionParams {
        n_threads: 2,
        ..SessionParams::default()
    };
    let mut chat = model
        .chat(ChatParams {
            session: session.clone(),
            ..Default::default()
        })
        .expect("chat");
    let cache = SharedEmbeddingCache::new(64 << 20);
    chat.share_image_cache(cache.clone());
    let rgb = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 200]));
    let tiling = chat.tiling();
    let img = Image::from_rgb(rgb.clone(), &tiling).expect("image");
    let gen = GenerateParams {
        max_new_tokens: 1,
        ..Default::default()
    };
    chat.send(Message::text("What is it?").with_image(img.clone()), &gen, |_| {
        Flow::Continue
    })
    .expect("answer");
    let got = cache.get(img.key()).expect("the chat cached the image's embedding");
    let mut s = Session::new(model.inner().clone(), session).expect("session");
    let mut by_hand = |norm: &Normalization| {
        let tiles = preprocess_with(&rgb, &tiling, norm).expect("tiles");
        s.encode_tiles(&tiles.data, false).expect("encode").proj
    };
    let want = by_hand(&norm);
    let imagenet = by_hand(&Normalization::IMAGENET);
    assert_eq!(got.len(), want.len());
    let d_file = common::max_abs_diff(&got, &want);
    let d_imagenet = common::max_abs_diff(&got, &imagenet);
    assert!(
        d_file <= 1e-5,
        "the chat's embedding differs from the file's normalization by {d_file}"
    );
    assert!(
        d_imagenet > 1e-3,
        "ImageNet's normalization gives the same embedding ({d_imagenet})"
    );
}
