//! Image and video-frame inputs for InternVL2-1B (spec §7): decoding, InternVL dynamic tiling, a
//! Pillow-exact bicubic resize and ImageNet normalisation. No ggml and no `unsafe` here (JPEG goes through
//! the `turbojpeg` crate's safe API to libjpeg-turbo).
//!
//! The reference pipeline (HF README `load_image`) is
//! `Image.open(f).convert('RGB')` → `dynamic_preprocess` → per tile `ToTensor` + `Normalize`.
//! Each step has a counterpart here:
//!
//! | reference                                   | here                                   |
//! |---------------------------------------------|----------------------------------------|
//! | `Image.open(...).convert('RGB')`            | [`load_path`], [`load_bytes`], [`from_raw`] |
//! | `find_closest_aspect_ratio`                 | [`choose_grid`] (candidates: [`candidate_grids`]) |
//! | `Image.resize(size)` (BICUBIC)              | [`resize_bicubic`]                     |
//! | `dynamic_preprocess` (crops + thumbnail)    | [`tile_u8`]                            |
//! | `build_transform` + `torch.stack`           | [`preprocess`] → [`Tiles`] ([`Normalization`]) |
//! | `get_index` / `load_video`                  | [`video`]                              |
//!
//! With a lossless input (PNG, BMP, TIFF, lossless WebP, GIF) or a JPEG the uint8 tiles are
//! bit-identical to Pillow's: JPEG is decoded by libjpeg-turbo, Pillow's own decoder, at Pillow's
//! settings (notes in `jpeg.rs`; checked in `tests/image_parity.rs`). Lossy WebP
//! goes through a different decoder than Pillow's libwebp and may differ by a few levels.
//!
//! ```no_run
//! use internvl::image::{self, Limits, TilingParams};
//! let rgb = image::load_path(std::path::Path::new("photo.jpg"), &Limits::default())?;
//! let tiles = image::preprocess(&rgb, &TilingParams::default())?;
//! assert_eq!(tiles.data.len(), tiles.n * 3 * 448 * 448);
//! # Ok::<(), internvl::image::Error>(())
//! ```

mod decode;
mod error;
#[cfg(feature = "video")]
pub mod ffmpeg;
mod grid_order;
mod jpeg;
mod resize;
mod tiling;
mod truncation;
pub mod video;

pub use self::decode::{from_raw, load_bytes, load_path, Limits, PixelFormat, RawImage};
pub use self::error::{Error, Result};
pub use self::resize::resize_bicubic;
pub use self::tiling::{
    candidate_grids, choose_grid, normalize_lut, preprocess, preprocess_with, tile_u8, Normalization, Tiles,
    TilingParams, IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE, MAX_TILES,
};
/// An 8-bit RGB image (the `image` crate's buffer type), the currency of this module.
pub use ::image::RgbImage;
