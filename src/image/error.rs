//! The one error type of the image module (decoding, tiling, raw buffers and video sampling).
use std::path::PathBuf;

/// Result alias for the image module.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while turning user input into tiles. `origin` names the input: a
/// file path, `<memory>` for bytes, or a frame's path for video sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read image file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`crate::image::Limits::max_file_bytes`].
    #[error("{origin}: file is {len} bytes, over the limit of {limit} bytes")]
    FileTooLarge { origin: String, len: u64, limit: u64 },
    /// The bytes are not an image in a format we decode (JPEG, PNG, WebP, BMP, GIF, TIFF).
    #[error("{origin}: unsupported or unrecognised image format ({detail})")]
    UnsupportedFormat { origin: String, detail: String },
    /// The decoder produced a pixel layout that has no Pillow-compatible RGB conversion here.
    #[error("{origin}: unsupported pixel type {pixel_type}")]
    UnsupportedPixelType { origin: String, pixel_type: String },
    /// The image is corrupt or truncated.
    #[error("{origin}: corrupt or truncated image: {detail}")]
    Corrupt { origin: String, detail: String },
    /// The header announces more pixels than [`crate::image::Limits::max_pixels`]; refused before
    /// any pixel buffer is allocated (decompression-bomb guard).
    #[error("{origin}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooManyPixels {
        origin: String,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    /// A decoder-internal allocation limit was hit.
    #[error("{origin}: decoder memory limit exceeded: {detail}")]
    DecoderLimit { origin: String, detail: String },
    /// Width or height is zero.
    #[error("{origin}: image has zero size ({width}x{height})")]
    ZeroSize { origin: String, width: u64, height: u64 },
    /// A raw buffer's stride is shorter than one row of pixels.
    #[error("raw image {width}x{height} {format:?}: stride {stride} is less than width*{bpp} = {min_stride} bytes")]
    RawStride {
        width: u32,
        height: u32,
        format: crate::image::PixelFormat,
        bpp: usize,
        stride: usize,
        min_stride: u64,
    },
    /// A raw buffer is shorter than its width, height and stride require.
    #[error("raw image {width}x{height} stride {stride}: buffer has {len} bytes, needs {needed}")]
    RawBufferTooShort {
        width: u32,
        height: u32,
        stride: usize,
        len: usize,
        needed: u64,
    },
    /// `max_tiles` outside `1..=MAX_TILES`.
    #[error("max_tiles must be in 1..={limit}, got {max_tiles}")]
    MaxTilesOutOfRange { max_tiles: u32, limit: u32 },
    /// `min_tiles` outside `1..=max_tiles`.
    #[error("min_tiles must be in 1..=max_tiles ({max_tiles}), got {min_tiles}")]
    MinTilesOutOfRange { min_tiles: u32, max_tiles: u32 },
    /// A normalization mean that is not finite, or a standard deviation that is not finite and positive.
    #[error("image {which} {values:?}: {reason}")]
    BadNormalization {
        which: &'static str,
        values: [f32; 3],
        reason: &'static str,
    },
    /// `image_size` outside `1..=MAX_IMAGE_SIZE`.
    #[error("image_size must be in 1..={limit}, got {image_size}")]
    ImageSizeOutOfRange { image_size: u32, limit: u32 },
    /// A resize to or from an empty image.
    #[error("cannot resize {from_width}x{from_height} to {to_width}x{to_height}: empty image")]
    EmptyResize {
        from_width: u32,
        from_height: u32,
        to_width: u32,
        to_height: u32,
    },
    /// Tiles of different sizes were given to one batch.
    #[error("tile {index} is {width}x{height}, expected {expected}x{expected}")]
    TileSize {
        index: usize,
        width: u32,
        height: u32,
        expected: u32,
    },
    /// `num_segments` is zero.
    #[error("video: num_segments must be at least 1")]
    ZeroSegments,
    /// The video has fewer frames than segments requested.
    #[error("video: {num_frames} frames is fewer than the {num_segments} segments requested")]
    TooFewFrames { num_frames: usize, num_segments: usize },
    /// The frame rate is not a positive finite number.
    #[error("video: fps must be positive and finite, got {fps}")]
    BadFps { fps: f64 },
    /// A time bound is not finite, is reversed, or selects no frame of the video.
    #[error("video: bound ({start}s, {end}s) {reason}")]
    BadBound { start: f64, end: f64, reason: &'static str },
    /// A video source (GIF or directory) holds no frames.
    #[error("{origin}: no video frames found")]
    NoFrames { origin: String },
    /// The frames of one video together exceed [`crate::image::Limits::max_total_pixels`].
    #[error("{origin}: video frames total more than {limit} pixels")]
    TooManyTotalPixels { origin: String, limit: u64 },
}
