//! Detects truncated files that a decoder would otherwise accept or report obscurely.
//!
//! - JPEG: libjpeg decodes a truncated file with only a warning ("Premature end of JPEG file") and fills
//!   the missing part; Pillow refuses it ("image file is truncated"). We walk the marker structure (length-prefixed segments,
//!   entropy-coded scan data) and require an end-of-image marker. Data after EOI is ignored, as
//!   decoders do (phones append videos to "motion photos"), and markers inside segments (an EXIF
//!   thumbnail's own EOI) are skipped with their segment.
//! - WebP: image-webp decodes a lossy bitstream cut by a few bytes; libwebp (Pillow) refuses a file
//!   shorter than its RIFF header announces. We check that size.
//!
//! PNG, GIF, BMP and TIFF decoders already fail on truncation (tested in `tests/image_inputs.rs`).
use ::image::ImageFormat;

/// `Ok(())` unless `bytes` is visibly truncated for `format`; the error says why.
pub(super) fn check(format: ImageFormat, bytes: &[u8]) -> Result<(), String> {
    match format {
        ImageFormat::Jpeg => check_jpeg(bytes).map_err(str::to_string),
        ImageFormat::WebP => check_riff(bytes),
        _ => Ok(()),
    }
}

/// RIFF container: `"RIFF" <u32 LE size> ...` with `size + 8` bytes in total.
fn check_riff(bytes: &[u8]) -> Result<(), String> {
    let size = match bytes.get(4..8) {
        Some(s) => u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        None => return Err("truncated: no RIFF header".into()),
    };
    let want = size + 8;
    if (bytes.len() as u64) < want {
        return Err(format!(
            "truncated: RIFF header announces {want} bytes, the data has {}",
            bytes.len()
        ));
    }
    Ok(())
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;

/// `Ok(())` when the JPEG reaches an EOI marker; otherwise why not.
fn check_jpeg(bytes: &[u8]) -> Result<(), &'static str> {
    if bytes.get(..2) != Some(&[0xFF, SOI][..]) {
        return Err("missing start-of-image marker");
    }
    let mut pos = 2;
    loop {
        // Expect a marker: one or more 0xFF fill bytes, then the code.
        if bytes.get(pos) != Some(&0xFF) {
            return Err("truncated or corrupt: expected a marker");
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&code) = bytes.get(pos) else {
            return Err("truncated: file ends inside a marker");
        };
        pos += 1;
        match code {
            EOI => return Ok(()),
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = match bytes.get(pos..pos + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err("truncated: file ends inside a segment header"),
        };
        if len < 2 {
            return Err("corrupt: segment length below 2");
        }
        pos += len;
        if pos > bytes.len() {
            return Err("truncated: file ends inside a segment");
        }
        if code == SOS {
            pos = skip_scan(bytes, pos).ok_or("truncated: file ends inside the image data (no end-of-image marker)")?;
        }
    }
}

/// Skips entropy-coded data from `pos`; returns the index of the 0xFF starting the next marker.
/// Inside scan data 0xFF is followed by 0x00 (stuffing), a restart marker, or more 0xFF fill.
fn skip_scan(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let off = bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        pos += off;
        let mut next = pos + 1;
        while bytes.get(next) == Some(&0xFF) {
            next += 1;
        }
        match bytes.get(next)? {
            0x00 | 0xD0..=0xD7 => pos = next + 1,
            _ => return Some(next - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn riff_size() {
        let mut webp = b"RIFF\x0c\x00\x00\x00WEBPVP8 \x00\x00\x00\x00".to_vec();
        assert_eq!(check_riff(&webp), Ok(()));
        webp.pop();
        assert!(check_riff(&webp).is_err());
    }

    #[test]
    fn jpeg_structure() {
        let app = [0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00]; // segment containing a fake EOI
        let sos = [0xFF, SOS, 0x00, 0x03, 0x01];
        let data = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56];
        let eoi = [0xFF, EOI];
        assert_eq!(check_jpeg(&jpeg(&[&[0xFF, SOI], &app, &sos, &data, &eoi])), Ok(()));
        assert_eq!(
            check_jpeg(&jpeg(&[&[0xFF, SOI], &app, &sos, &data, &eoi, b"trailing video"])),
            Ok(())
        );
        assert!(check_jpeg(&jpeg(&[&[0xFF, SOI], &app, &sos, &data])).is_err());
        assert!(check_jpeg(&jpeg(&[&[0xFF, SOI], &app[..5]])).is_err());
        assert!(check_jpeg(b"not a jpeg").is_err());
    }
}
