//! JPEG decoding bit-identical to Pillow's `Image.open(f).convert('RGB')` (spec §7.1 step 1).
//!
//! Pillow decodes JPEG with libjpeg-turbo at its default settings, and so do we, through the TurboJPEG
//! API (`turbojpeg` crate, libjpeg-turbo built from source by Cargo). Exactness needs the same library,
//! not a port: the pixels depend on the integer IDCT (`JDCT_ISLOW`), the "fancy" triangular chroma
//! upsampling (h2v1, h2v2 and, since libjpeg-turbo 2.0, h1v2) and libjpeg's fixed-point YCbCr->RGB
//! tables, and any other decoder (zune-jpeg before) differs by a few levels, enough to flip a close
//! greedy choice of the model. Settings, the same as Pillow's (`JpegDecode.c` sets none of them):
//! - integer IDCT (no `TJPARAM_FASTDCT`), fancy upsampling (no `TJPARAM_FASTUPSAMPLE`), no DCT scaling
//!   (Pillow scales only after `draft()`, which the reference does not call);
//! - 1 component (mode `L`): decoded to grey, then R = G = B as `convert('RGB')` does;
//! - 3 components (YCbCr, or RGB by Adobe transform / component ids): libjpeg's conversion to RGB;
//! - 4 components (CMYK or YCCK): decoded to CMYK, then **inverted** (Pillow's rawmode `CMYK;I`: it
//!   always assumes Adobe's inverted polarity, marker or not), then Pillow's `cmyk2rgb`:
//!   `R = clip(255 - K - (C * (255 - K) + 128) * 257 / 65536)` (the `MULDIV255` rounding; checked
//!   against Pillow 13 for all inputs by `tests/py/make_jpeg_fixtures.py`).
//!
//! EXIF orientation is **not** applied: the reference (`Image.open(...).convert('RGB')`) does not call
//! `ImageOps.exif_transpose`, so a rotated phone photo reaches the model as stored, here too.
//!
//! Limits: the header is read first and its dimensions are checked ([`check_dimensions`]) before the
//! pixel buffer is allocated. Truncated files are refused before this module runs (`truncation.rs`,
//! Pillow's "image file is truncated"). One difference from Pillow remains: libjpeg *warnings*
//! ("Corrupt JPEG data: ..." on a damaged scan that libjpeg still decodes) are errors here, because the
//! TurboJPEG API reports them as a failed call; Pillow ignores them and returns the damaged image.
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat};

use super::decode::{check_dimensions, Limits};
use super::error::{Error, Result};
use super::RgbImage;

/// Decodes a JPEG held in memory to RGB8 like Pillow (module docs). `origin` names the input in errors.
pub(super) fn decode(bytes: &[u8], origin: &str, limits: &Limits) -> Result<RgbImage> {
    let corrupt = |e: turbojpeg::Error| Error::Corrupt {
        origin: origin.into(),
        detail: match e {
            turbojpeg::Error::TurboJpegError(msg) => format!("JPEG: {msg}"),
            other => format!("JPEG: {other}"),
        },
    };
    let mut decompressor = Decompressor::new().map_err(corrupt)?;
    let header = decompressor.read_header(bytes).map_err(corrupt)?;
    let (width, height) = (
        u32::try_from(header.width).unwrap_or(u32::MAX),
        u32::try_from(header.height).unwrap_or(u32::MAX),
    );
    check_dimensions(width, height, origin, limits)?;

    let format = match header.colorspace {
        Colorspace::Gray => PixelFormat::GRAY,
        Colorspace::CMYK | Colorspace::YCCK => PixelFormat::CMYK,
        Colorspace::RGB | Colorspace::YCbCr => PixelFormat::RGB,
    };
    // Both factors passed `check_dimensions`, so the product is at most `max_pixels` (<< usize::MAX on
    // 64-bit); the checked arithmetic keeps a 32-bit target honest.
    let (w, h) = (header.width, header.height);
    let len = w
        .checked_mul(h)
        .and_then(|n| n.checked_mul(format.size()))
        .ok_or_else(|| Error::TooManyPixels {
            origin: origin.into(),
            width: w as u64,
            height: h as u64,
            pixels: (w as u64).saturating_mul(h as u64),
            limit: limits.max_pixels,
        })?;
    let mut pixels = vec![0u8; len];
    let image = Image {
        pixels: pixels.as_mut_slice(),
        width: w,
        pitch: w * format.size(),
        height: h,
        format,
    };
    decompressor.decompress(bytes, image).map_err(corrupt)?;

    let rgb = match format {
        PixelFormat::GRAY => pixels.iter().flat_map(|&v| [v; 3]).collect(),
        PixelFormat::CMYK => pixels.chunks_exact(4).flat_map(cmyk_inverted_to_rgb).collect(),
        _ => pixels,
    };
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| Error::Corrupt {
        origin: origin.into(),
        detail: "decoded buffer does not match its dimensions".into(),
    })
}

/// One pixel as libjpeg returns it for a CMYK/YCCK file, to RGB as Pillow does: rawmode `CMYK;I`
/// (invert every channel), then `cmyk2rgb` (`Convert.c`).
fn cmyk_inverted_to_rgb(px: &[u8]) -> [u8; 3] {
    // Inverted storage: the stored K byte is already 255 - K, Pillow's `nk`.
    let nk = u32::from(px[3]);
    let channel = |stored: u8| {
        let c = 255 - u32::from(stored);
        let t = c * nk + 128;
        // `nk - MULDIV255(c, nk)`; MULDIV255 <= nk, so no underflow and the result fits in a byte.
        (nk - (((t >> 8) + t) >> 8)) as u8
    };
    [channel(px[0]), channel(px[1]), channel(px[2])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_matches_pillow_formula() {
        // Stored (inverted) values: 255 means 0 ink.
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_inverted_to_rgb(&[0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        // C = 100, K = 50: nk = 205, MULDIV255(100, 205) = 80 -> 125; M = Y = 0 -> 205.
        assert_eq!(cmyk_inverted_to_rgb(&[155, 255, 255, 205]), [125, 205, 205]);
    }
}
