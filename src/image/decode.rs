//! Decoding to RGB8 the way Pillow's `Image.open(...).convert('RGB')` does (spec §7.1 step 1).
//! JPEG goes to libjpeg-turbo (`jpeg.rs`, bit-identical to Pillow); every other format to the `image` crate.
//!
//! Pillow's conversion rules, checked with Pillow 13 (see `tests/py/make_image_fixtures.py`):
//! - alpha is dropped, never composited (vLLM composites onto white; the reference does not);
//! - palette and low-bit-depth images are expanded; grey becomes R = G = B;
//! - 16-bit RGB/RGBA/LA keep the high byte (`v >> 8`: Pillow unpacks them with "RGB;16B" etc.);
//! - 16-bit greyscale opens as mode `I;16`, whose conversion to RGB **clips** to 255 (`min(v, 255)`),
//!   so most 16-bit grey images come out nearly white in the reference. We match that.
use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::error::{Error, Result};
use super::truncation;

/// Resource limits for decoding untrusted input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `width * height`. The default, 89,478,485, is Pillow's
    /// `Image.MAX_IMAGE_PIXELS` (Pillow warns above it and refuses at twice that; we refuse above it).
    /// Checked from the header, before any pixel buffer is allocated.
    pub max_pixels: u64,
    /// Largest accepted file or byte-buffer length. Default 512 MiB.
    pub max_file_bytes: u64,
    /// Largest accepted sum of pixels over all frames of one video source (GIF or frame directory).
    /// Default 4 × `max_pixels` (about 1 GiB of RGB).
    pub max_total_pixels: u64,
}

/// Pillow's `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`).
const PILLOW_MAX_IMAGE_PIXELS: u64 = 89_478_485;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: PILLOW_MAX_IMAGE_PIXELS,
            max_file_bytes: 512 << 20,
            max_total_pixels: 4 * PILLOW_MAX_IMAGE_PIXELS,
        }
    }
}

/// Decodes an image file (JPEG, PNG, WebP, BMP, GIF first frame, TIFF) to RGB8 like
/// `Image.open(path).convert('RGB')`. The format is sniffed from the content, as Pillow does, not
/// from the extension.
pub fn load_path(path: &Path, limits: &Limits) -> Result<RgbImage> {
    let bytes = read_file(path, limits)?;
    decode(&bytes, &path.display().to_string(), limits)
}

/// Decodes an encoded image held in memory; see [`load_path`].
pub fn load_bytes(bytes: &[u8], limits: &Limits) -> Result<RgbImage> {
    let origin = "<memory>";
    let len = bytes.len() as u64;
    if len > limits.max_file_bytes {
        return Err(Error::FileTooLarge {
            origin: origin.into(),
            len,
            limit: limits.max_file_bytes,
        });
    }
    decode(bytes, origin, limits)
}

pub(super) fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    // A device or FIFO reports length 0 and may never end (/dev/zero) or never start (an idle FIFO).
    if !meta.is_file() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, device or FIFO)",
        )));
    }
    let too_large = |len| Error::FileTooLarge {
        origin: path.display().to_string(),
        len,
        limit: limits.max_file_bytes,
    };
    if meta.len() > limits.max_file_bytes {
        return Err(too_large(meta.len()));
    }
    // The file may grow between the check and the read (a file being written): read at most one byte past
    // the limit, so memory stays bounded whatever the file does.
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Sniffs the format and returns a reader positioned at the start.
pub(super) fn reader<'a>(bytes: &'a [u8], origin: &str) -> Result<ImageReader<Cursor<&'a [u8]>>> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Corrupt {
            origin: origin.into(),
            detail: e.to_string(),
        })?;
    match reader.format() {
        Some(_) => Ok(reader),
        None => Err(Error::UnsupportedFormat {
            origin: origin.into(),
            detail: "unrecognised signature".into(),
        }),
    }
}

/// Checks the pixel count announced by the header. Nothing but the header has been read.
pub(super) fn check_dimensions(width: u32, height: u32, origin: &str, limits: &Limits) -> Result<()> {
    let (w, h) = (u64::from(width), u64::from(height));
    if w == 0 || h == 0 {
        return Err(Error::ZeroSize {
            origin: origin.into(),
            width: w,
            height: h,
        });
    }
    let pixels = w * h; // u32 * u32 cannot overflow u64
    if pixels > limits.max_pixels {
        return Err(Error::TooManyPixels {
            origin: origin.into(),
            width: w,
            height: h,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// The `image` crate's own allocation cap: room for the largest accepted image at 8 bytes per
/// pixel (RGBA16) plus decoder scratch.
pub(super) fn decoder_limits(limits: &Limits) -> ::image::Limits {
    let mut l = ::image::Limits::default();
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    l
}

fn decode(bytes: &[u8], origin: &str, limits: &Limits) -> Result<RgbImage> {
    let mut r = reader(bytes, origin)?;
    if let Some(format) = r.format() {
        truncation::check(format, bytes).map_err(|detail| Error::Corrupt {
            origin: origin.into(),
            detail,
        })?;
    }
    // JPEG: libjpeg-turbo, as Pillow (jpeg.rs); the `image` crate's JPEG decoder is never used.
    if r.format() == Some(::image::ImageFormat::Jpeg) {
        return super::jpeg::decode(bytes, origin, limits);
    }
    // The decoder reads only the header here (its own buffers are capped by `decoder_limits`; its
    // `set_limits` checks no allocation yet), so the pixel check below runs before the image
    // buffer is allocated by `from_decoder`.
    r.limits(decoder_limits(limits));
    let decoder = r.into_decoder().map_err(|e| map_image_error(e, origin))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, origin, limits)?;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, origin))?;
    let gray16 = is_png_gray16(bytes);
    to_rgb_like_pillow(image, gray16, origin)
}

/// True for a PNG whose IHDR says 16-bit greyscale. The `png` crate expands such an image with a
/// tRNS chunk to grey+alpha, which would hide that Pillow opens it as `I;16` (clipping rule).
fn is_png_gray16(bytes: &[u8]) -> bool {
    // Signature (8) + chunk length (4) + "IHDR" (4) + width (4) + height (4) + depth (1) + colour type (1).
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    bytes.starts_with(SIG)
        && bytes.get(12..16) == Some(b"IHDR".as_slice())
        && bytes.get(24) == Some(&16)
        && bytes.get(25) == Some(&0)
}

/// Converts any decoded layout to RGB8 with Pillow's `convert('RGB')` rules (module docs).
pub(super) fn to_rgb_like_pillow(image: DynamicImage, png_gray16: bool, origin: &str) -> Result<RgbImage> {
    let (w, h) = (image.width(), image.height());
    let out: Vec<u8> = match image {
        DynamicImage::ImageRgb8(img) => return Ok(img),
        DynamicImage::ImageRgba8(img) => img.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2]]).collect(),
        DynamicImage::ImageLuma8(img) => img.pixels().flat_map(|p| [p.0[0]; 3]).collect(),
        DynamicImage::ImageLumaA8(img) => img.pixels().flat_map(|p| [p.0[0]; 3]).collect(),
        DynamicImage::ImageLuma16(img) => img.pixels().flat_map(|p| [clip16(p.0[0]); 3]).collect(),
        DynamicImage::ImageLumaA16(img) if png_gray16 => img.pixels().flat_map(|p| [clip16(p.0[0]); 3]).collect(),
        DynamicImage::ImageLumaA16(img) => img.pixels().flat_map(|p| [high(p.0[0]); 3]).collect(),
        DynamicImage::ImageRgb16(img) => img
            .pixels()
            .flat_map(|p| [high(p.0[0]), high(p.0[1]), high(p.0[2])])
            .collect(),
        DynamicImage::ImageRgba16(img) => img
            .pixels()
            .flat_map(|p| [high(p.0[0]), high(p.0[1]), high(p.0[2])])
            .collect(),
        other => {
            return Err(Error::UnsupportedPixelType {
                origin: origin.into(),
                pixel_type: format!("{:?}", other.color()),
            })
        }
    };
    RgbImage::from_raw(w, h, out).ok_or_else(|| Error::Corrupt {
        origin: origin.into(),
        detail: "decoded buffer does not match its dimensions".into(),
    })
}

/// Pillow `I;16` → `RGB`: values above 255 saturate.
fn clip16(v: u16) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// Pillow's 16-bit unpackers ("RGB;16B", "LA;16B", ...) keep the most significant byte.
fn high(v: u16) -> u8 {
    (v >> 8) as u8
}

pub(super) fn map_image_error(e: ::image::ImageError, origin: &str) -> Error {
    use ::image::error::UnsupportedErrorKind;
    use ::image::ImageError as E;
    let origin = origin.to_string();
    match e {
        E::Unsupported(u) => match u.kind() {
            UnsupportedErrorKind::Color(c) => Error::UnsupportedPixelType {
                origin,
                pixel_type: format!("{c:?}"),
            },
            _ => Error::UnsupportedFormat {
                origin,
                detail: u.to_string(),
            },
        },
        E::Limits(l) => Error::DecoderLimit {
            origin,
            detail: l.to_string(),
        },
        E::Decoding(d) => Error::Corrupt {
            origin,
            detail: d.to_string(),
        },
        E::IoError(io) => Error::Corrupt {
            origin,
            detail: io.to_string(),
        },
        other => Error::Corrupt {
            origin,
            detail: other.to_string(),
        },
    }
}

/// The byte layout of a raw camera buffer given to [`from_raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// 3 bytes per pixel: R, G, B.
    Rgb8,
    /// 3 bytes per pixel: B, G, R.
    Bgr8,
    /// 4 bytes per pixel: R, G, B, A (alpha dropped, as Pillow's `convert('RGB')`).
    Rgba8,
    /// 4 bytes per pixel: B, G, R, A (alpha dropped).
    Bgra8,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
        }
    }

    /// Byte offsets of R, G and B inside one pixel.
    fn rgb_offsets(self) -> [usize; 3] {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Rgba8 => [0, 1, 2],
            PixelFormat::Bgr8 | PixelFormat::Bgra8 => [2, 1, 0],
        }
    }
}

/// A raw, uncompressed 8-bit frame such as a camera delivers: `height` rows of `stride` bytes, of
/// which the first `width * bytes_per_pixel` are pixels (the rest is padding). The last row may
/// omit its padding.
#[derive(Clone, Copy, Debug)]
pub struct RawImage<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// Bytes from the start of one row to the start of the next.
    pub stride: usize,
    pub format: PixelFormat,
}

/// Validates a raw buffer and converts it to RGB8.
///
/// Errors: [`Error::ZeroSize`], [`Error::RawStride`] (stride < width × bytes per pixel),
/// [`Error::RawBufferTooShort`].
pub fn from_raw(raw: RawImage<'_>) -> Result<RgbImage> {
    let RawImage {
        data,
        width,
        height,
        stride,
        format,
    } = raw;
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize {
            origin: "raw image".into(),
            width: width.into(),
            height: height.into(),
        });
    }
    let bpp = format.bytes_per_pixel();
    let row_bytes = u64::from(width) * bpp as u64;
    if (stride as u64) < row_bytes {
        return Err(Error::RawStride {
            width,
            height,
            format,
            bpp,
            stride,
            min_stride: row_bytes,
        });
    }
    let needed = (stride as u64)
        .saturating_mul(u64::from(height) - 1)
        .saturating_add(row_bytes);
    if (data.len() as u64) < needed {
        return Err(Error::RawBufferTooShort {
            width,
            height,
            stride,
            len: data.len(),
            needed,
        });
    }
    // Both fit in usize now: they are at most data.len().
    let row_bytes = row_bytes as usize;
    let [r, g, b] = format.rgb_offsets();
    let mut out = Vec::with_capacity(row_bytes / bpp * 3 * height as usize);
    // `chunks(stride)` yields `height` rows (the last possibly without padding), each >= row_bytes.
    for row in data.chunks(stride).take(height as usize) {
        let pixels = row.get(..row_bytes).unwrap_or_default();
        for px in pixels.chunks_exact(bpp) {
            out.extend_from_slice(&[px[r], px[g], px[b]]);
        }
    }
    RgbImage::from_raw(width, height, out).ok_or(Error::RawBufferTooShort {
        width,
        height,
        stride,
        len: data.len(),
        needed,
    })
}
