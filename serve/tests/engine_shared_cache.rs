//! The engine API the server relies on: chats that share a `SharedEmbeddingCache` encode an image
//! once between them, and the answers do not change.
mod common;

use internvl::engine::{
    ChatParams, Flow, GenerateParams, Image, LoadParams, Message, Model, SessionParams, SharedEmbeddingCache,
};

#[test]
fn chats_sharing_a_cache_encode_an_image_once() {
    let model = Model::load(common::tiny_gguf(), &LoadParams::default()).expect("load tiny model");
    let params = ChatParams {
        session: SessionParams {
            n_threads: 1,
            ..Default::default()
        },
        image_cache_bytes: 0,
        ..Default::default()
    };
    let image = Image::from_rgb(common::test_image(90, 50, 9), &model.tiling()).expect("image");
    let gen = GenerateParams {
        max_new_tokens: 6,
        ..Default::default()
    };
    let ask = |chat: &mut internvl::engine::Chat| {
        chat.send(Message::text("What is this?").with_image(image.clone()), &gen, |_| {
            Flow::Continue
        })
        .expect("generate")
    };

    let alone = ask(&mut model.chat(params.clone()).expect("chat"));
    assert_eq!(alone.stats.tiles_encoded, image.n_tiles());

    let cache = SharedEmbeddingCache::new(64 << 20);
    let mut a = model.chat(params.clone()).expect("chat");
    let mut b = model.chat(params.clone()).expect("chat");
    a.share_image_cache(cache.clone());
    b.share_image_cache(cache.clone());
    let ra = ask(&mut a);
    assert_eq!((ra.stats.tiles_encoded, cache.len()), (image.n_tiles(), 1));
    let rb = ask(&mut b);
    assert_eq!((rb.stats.tiles_encoded, rb.stats.tiles_cached), (0, image.n_tiles()));
    assert_eq!(ra.text, alone.text);
    assert_eq!(rb.text, alone.text);
    assert_eq!(
        cache.bytes(),
        image.n_tiles() * model.hparams().num_image_token() * model.hparams().llm.n_embd * 4
    );

    // A chat without the shared cache still encodes it itself.
    let rc = ask(&mut model.chat(params).expect("chat"));
    assert_eq!(rc.stats.tiles_encoded, image.n_tiles());
}
