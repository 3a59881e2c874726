//! From an `image_url` to an engine [`Image`]: `data:` URLs (base64), local files (only with
//! `--allow-local-files`, optionally under one directory) and http(s) URLs (only with
//! `--allow-remote-urls`). Everything here blocks (file reads, downloads, decoding): call it from a
//! blocking thread, never on the async executor.
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use internvl::engine::{Image, TilingParams};
use internvl::image::{self as img, Limits};

use crate::api::ImageRef;
use crate::error::ApiError;
use crate::remote;

/// Where images may come from and how large they may be.
#[derive(Debug, Clone)]
pub struct ImagePolicy {
    pub allow_local_files: bool,
    /// With `allow_local_files`: only files under this directory (after resolving links).
    pub local_root: Option<PathBuf>,
    pub allow_remote_urls: bool,
    /// With `allow_remote_urls`: also loopback, private, link-local... addresses (see `remote`).
    pub allow_private_urls: bool,
    pub remote_timeout: Duration,
    /// Largest encoded image (bytes) from any source.
    pub max_image_bytes: u64,
    /// Largest `width * height`, checked from the header before decoding.
    pub max_pixels: u64,
    pub tiling: TilingParams,
}

impl ImagePolicy {
    fn limits(&self) -> Limits {
        Limits {
            max_pixels: self.max_pixels,
            max_file_bytes: self.max_image_bytes,
            ..Limits::default()
        }
    }
}

/// Fetches and decodes one image.
pub fn resolve(r: &ImageRef, policy: &ImagePolicy) -> Result<Image, ApiError> {
    let fail = |message: String| ApiError::Image {
        param: r.param.clone(),
        message,
    };
    let url = r.url.trim();
    let lower: String = url.chars().take(8).collect::<String>().to_ascii_lowercase();
    let rgb = if lower.starts_with("data:") {
        let bytes = decode_data_url(url).map_err(fail)?;
        img::load_bytes(&bytes, &policy.limits()).map_err(|e| fail(e.to_string()))?
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        if !policy.allow_remote_urls {
            return Err(fail(
                "remote image URLs are disabled on this server (start it with --allow-remote-urls), \
                 or send the image inline as a data: URL (data:image/jpeg;base64,...)"
                    .into(),
            ));
        }
        let fetch_policy = remote::FetchPolicy {
            allow_private: policy.allow_private_urls,
            timeout: policy.remote_timeout,
            max_bytes: policy.max_image_bytes,
        };
        let bytes = remote::fetch(url, &fetch_policy).map_err(|e| {
            // The reason stays in the server's log: told to the client, refusals, connection errors
            // and timeouts would map the server's network for it.
            eprintln!("internvl-serve: {}: could not fetch {url}: {e}", r.param);
            fail("could not fetch the image".into())
        })?;
        img::load_bytes(&bytes, &policy.limits()).map_err(|e| fail(e.to_string()))?
    } else if lower.starts_with("file://") || !has_scheme(url) {
        if !policy.allow_local_files {
            return Err(fail(
                "local image files are disabled on this server (start it with --allow-local-files), \
                 or send the image inline as a data: URL"
                    .into(),
            ));
        }
        let path = local_path(url, policy).map_err(fail)?;
        img::load_path(&path, &policy.limits()).map_err(|e| fail(e.to_string()))?
    } else {
        let scheme = url.split(':').next().unwrap_or("");
        return Err(fail(format!(
            "unsupported URL scheme {scheme:?}: use data:, http(s):// or a local path"
        )));
    };
    Image::from_rgb(rgb, &policy.tiling).map_err(|e| fail(e.to_string()))
}

/// `scheme:` as RFC 3986 spells it (a Windows drive letter `C:` is not a scheme).
fn has_scheme(url: &str) -> bool {
    match url.split_once(':') {
        Some((s, _)) => {
            s.len() > 1
                && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// `data:[<media type>][;base64],<data>`; only base64 payloads carry binary images.
fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    let rest = url.get(5..).unwrap_or("");
    let (meta, data) = rest
        .split_once(',')
        .ok_or("a data: URL needs a comma before its payload")?;
    if !meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err("only base64 data: URLs are supported (data:image/png;base64,...)".into());
    }
    let media = meta.split(';').next().unwrap_or("");
    if !media.is_empty() && !media.to_ascii_lowercase().starts_with("image/") {
        return Err(format!("the data: URL has media type {media:?}, not an image type"));
    }
    // Some clients wrap long base64 lines or omit the padding.
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine
        .decode(&compact)
        .map_err(|e| format!("the data: URL is not valid base64: {e}"))
}

/// The file a local reference names, checked against `--local-files-root`.
fn local_path(url: &str, policy: &ImagePolicy) -> Result<PathBuf, String> {
    let raw = url.strip_prefix("file://").unwrap_or(url);
    let path = Path::new(raw);
    let Some(root) = &policy.local_root else {
        return Ok(path.to_path_buf());
    };
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    // One answer for a missing file and a file outside the root: two would tell the client which
    // files exist outside it.
    let refuse = || {
        format!(
            "{} is not an image file under the directory this server reads images from (--local-files-root)",
            path.display()
        )
    };
    // Canonical paths: `..` and symbolic links cannot lead out of the root.
    let real = joined.canonicalize().map_err(|_| refuse())?;
    let root_real = root
        .canonicalize()
        .map_err(|e| format!("--local-files-root {}: {e}", root.display()))?;
    if !real.starts_with(&root_real) {
        return Err(refuse());
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ImagePolicy {
        ImagePolicy {
            allow_local_files: false,
            local_root: None,
            allow_remote_urls: false,
            allow_private_urls: false,
            remote_timeout: Duration::from_secs(1),
            max_image_bytes: 1 << 20,
            max_pixels: 10_000,
            tiling: TilingParams::default(),
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img::RgbImage::from_pixel(w, h, ::image::Rgb([10, 200, 30]))
            .write_to(&mut out, ::image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn r(url: String) -> ImageRef {
        ImageRef {
            url,
            param: "messages[0].content[1]".into(),
        }
    }

    fn err(url: String, p: &ImagePolicy) -> String {
        let e = resolve(&r(url), p).unwrap_err();
        assert!(matches!(e, ApiError::Image { .. }));
        e.to_string()
    }

    #[test]
    fn data_urls_decode_with_limits() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png(40, 20));
        let im = resolve(&r(format!("data:image/png;base64,{b64}")), &policy()).unwrap();
        assert_eq!(im.size(), (40, 20));
        // Unpadded and line-wrapped payloads are accepted; the format is sniffed from the bytes.
        let wrapped: String = b64
            .trim_end_matches('=')
            .as_bytes()
            .chunks(10)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            resolve(&r(format!("data:;base64,{wrapped}")), &policy()).unwrap().key(),
            im.key()
        );
        assert!(err(format!("data:image/png,{b64}"), &policy()).contains("only base64"));
        assert!(err("data:image/png;base64,!!!!".into(), &policy()).contains("not valid base64"));
        assert!(err(format!("data:text/plain;base64,{b64}"), &policy()).contains("not an image"));
        assert!(err("data:image/png;base64,aGVsbG8=".into(), &policy()).contains("unrecognised"));
        let big = base64::engine::general_purpose::STANDARD.encode(png(200, 100));
        let e = err(format!("data:image/png;base64,{big}"), &policy());
        assert!(e.contains("20000 pixels") && e.contains("10000"), "{e}");
        assert!(e.starts_with("messages[0].content[1]"), "{e}");
    }

    #[test]
    fn sources_need_their_flags() {
        assert!(err("https://example.com/a.png".into(), &policy()).contains("--allow-remote-urls"));
        assert!(err("HTTP://example.com/a.png".into(), &policy()).contains("--allow-remote-urls"));
        assert!(err("/tmp/a.png".into(), &policy()).contains("--allow-local-files"));
        assert!(err("file:///tmp/a.png".into(), &policy()).contains("--allow-local-files"));
        assert!(err("ftp://x/a.png".into(), &policy()).contains("unsupported URL scheme"));
    }

    #[test]
    fn local_files_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("in");
        std::fs::create_dir(&inside).unwrap();
        std::fs::write(inside.join("a.png"), png(8, 8)).unwrap();
        std::fs::write(dir.path().join("b.png"), png(8, 8)).unwrap();
        let mut p = policy();
        p.allow_local_files = true;
        let a = inside.join("a.png");
        assert_eq!(resolve(&r(a.display().to_string()), &p).unwrap().size(), (8, 8));
        assert_eq!(
            resolve(&r(format!("file://{}", a.display())), &p).unwrap().size(),
            (8, 8)
        );
        p.local_root = Some(inside.clone());
        assert!(resolve(&r("a.png".into()), &p).is_ok());
        // Outside the root and missing: the same answer (only the path the client gave differs).
        let answer = |u: String| err(u.clone(), &p).replace(&u, "PATH");
        let outside = answer(format!("{}/../b.png", inside.display()));
        assert!(outside.contains("not an image file under"), "{outside}");
        assert_eq!(answer(dir.path().join("b.png").display().to_string()), outside);
        assert_eq!(answer("missing.png".into()), outside);
        assert_eq!(answer(inside.join("missing.png").display().to_string()), outside);
    }

    #[test]
    fn schemes() {
        assert!(has_scheme("data:x") && has_scheme("http://a") && has_scheme("file:///a"));
        assert!(!has_scheme("C:\\a.png") && !has_scheme("/a/b.png") && !has_scheme("a.png"));
    }
}
