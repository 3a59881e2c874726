//! Images as the engine sees them: decoded pixels plus the tiling they will get, identified by a
//! content hash so that their vision embeddings are computed once ([`EmbeddingCache`]).
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::image::{self as img, video, Limits, RgbImage, TilingParams};

use super::error::{EngineError, Result};

/// Identity of an image for the embedding cache and the KV-cache prefix match: a 128-bit hash of
/// its pixels, size and tiling. Two files with the same pixels share a key; the same pixels tiled
/// differently (another `--max-tiles`, a video frame) do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey(pub u128);

impl std::fmt::Display for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Where an image came from (what a saved conversation records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    File(PathBuf),
    /// Frame `index` (of all frames, before sampling) of an animated GIF.
    GifFrame {
        path: PathBuf,
        index: usize,
    },
    /// Frame `index` (in decoding order, before sampling) of a video file (the `video` feature).
    VideoFrame {
        path: PathBuf,
        index: usize,
    },
    /// Pixels handed over by the caller.
    Memory,
}

/// A decoded image ready to be tiled. Cheap to clone (the pixels are shared).
#[derive(Debug, Clone)]
pub struct Image {
    rgb: Arc<RgbImage>,
    tiling: TilingParams,
    key: ImageKey,
    n_tiles: usize,
    source: ImageSource,
}

impl Image {
    /// Decodes an image file (spec §7.1 step 1) with the default decoding limits.
    pub fn open(path: &Path, tiling: &TilingParams) -> Result<Image> {
        let rgb = img::load_path(path, &Limits::default())?;
        Self::new(rgb, tiling, ImageSource::File(path.to_path_buf()))
    }

    /// Wraps decoded pixels.
    pub fn from_rgb(rgb: RgbImage, tiling: &TilingParams) -> Result<Image> {
        Self::new(rgb, tiling, ImageSource::Memory)
    }

    fn new(rgb: RgbImage, tiling: &TilingParams, source: ImageSource) -> Result<Image> {
        let (cols, rows) = img::choose_grid(rgb.width(), rgb.height(), tiling)?;
        let grid = (cols as usize) * (rows as usize);
        let n_tiles = grid + usize::from(tiling.use_thumbnail && grid != 1);
        let key = content_key(&rgb, tiling);
        Ok(Image {
            rgb: Arc::new(rgb),
            tiling: *tiling,
            key,
            n_tiles,
            source,
        })
    }

    /// `n_frames` frames of a video for the video prompt (spec §5.3, §7.3): each one tile of
    /// `image_size²`. `path` is a directory of frame images (sorted by name), an animated GIF, or
    /// with the `video` feature any video file FFmpeg reads (MP4, MKV, WebM, ...; frames picked as
    /// decord would, spec §7.3).
    pub fn video_frames(path: &Path, n_frames: usize, image_size: u32) -> Result<Vec<Image>> {
        let tiling = TilingParams::video_frame(image_size);
        let limits = Limits::default();
        if path.is_dir() {
            let paths = video::frame_dir_paths(path)?;
            // A frame directory has no frame rate; get_index only uses it for time bounds.
            let idx = video::frame_indices(paths.len(), 1.0, n_frames, None)?;
            return idx
                .into_iter()
                .map(|i| {
                    let p = paths.get(i).ok_or_else(|| EngineError::Video {
                        path: path.to_path_buf(),
                        detail: format!("frame {i} missing"),
                    })?;
                    Image::open(p, &tiling)
                })
                .collect();
        }
        let is_gif = is_gif(path)?;
        #[cfg(feature = "video")]
        if !is_gif {
            let s = img::ffmpeg::sample(path, n_frames, None, &limits)?;
            return s
                .indices
                .into_iter()
                .zip(s.frames)
                .map(|(index, frame)| {
                    Self::new(
                        frame,
                        &tiling,
                        ImageSource::VideoFrame {
                            path: path.to_path_buf(),
                            index,
                        },
                    )
                })
                .collect();
        }
        #[cfg(not(feature = "video"))]
        if !is_gif {
            return Err(EngineError::Video {
                path: path.to_path_buf(),
                detail: "not a directory of frames or an animated GIF; MP4 and other containers need a build with the \
                         `video` feature (system FFmpeg libraries), or extract frames first, e.g. \
                         `ffmpeg -i in.mp4 frames/%05d.png`, and pass the directory"
                    .into(),
            });
        }
        let all = video::load_gif(path, &limits)?;
        let idx = video::frame_indices(all.frames.len(), all.fps.unwrap_or(1.0), n_frames, None)?;
        idx.into_iter()
            .map(|i| {
                let frame = all.frames.get(i).cloned().ok_or_else(|| EngineError::Video {
                    path: path.to_path_buf(),
                    detail: format!("frame {i} missing"),
                })?;
                Self::new(
                    frame,
                    &tiling,
                    ImageSource::GifFrame {
                        path: path.to_path_buf(),
                        index: i,
                    },
                )
            })
            .collect()
    }

    /// Frame `index` of an animated GIF (as [`Image::video_frames`] records it).
    pub fn gif_frame(path: &Path, index: usize, tiling: &TilingParams) -> Result<Image> {
        let all = video::load_gif(path, &Limits::default())?;
        let n = all.frames.len();
        let frame = all.frames.into_iter().nth(index).ok_or_else(|| EngineError::Video {
            path: path.to_path_buf(),
            detail: format!("frame {index} requested, the GIF has {n}"),
        })?;
        Self::new(
            frame,
            tiling,
            ImageSource::GifFrame {
                path: path.to_path_buf(),
                index,
            },
        )
    }

    /// Frame `index` of a video file as [`Image::video_frames`] records it ([`ImageSource::VideoFrame`]).
    #[cfg(feature = "video")]
    pub fn video_file_frame(path: &Path, index: usize, tiling: &TilingParams) -> Result<Image> {
        let mut frames = img::ffmpeg::read_frames(path, &[index], &Limits::default())?;
        let frame = frames.pop().ok_or_else(|| EngineError::Video {
            path: path.to_path_buf(),
            detail: format!("frame {index} missing"),
        })?;
        Self::new(
            frame,
            tiling,
            ImageSource::VideoFrame {
                path: path.to_path_buf(),
                index,
            },
        )
    }

    /// Frame `index` of an animated GIF or (with the `video` feature) a video file.
    pub fn frame_of(path: &Path, index: usize, tiling: &TilingParams) -> Result<Image> {
        #[cfg(feature = "video")]
        if !is_gif(path)? {
            return Self::video_file_frame(path, index, tiling);
        }
        Self::gif_frame(path, index, tiling)
    }

    pub fn key(&self) -> ImageKey {
        self.key
    }
    /// Tiles this image becomes (grid crops plus thumbnail), known before preprocessing.
    pub fn n_tiles(&self) -> usize {
        self.n_tiles
    }
    /// `(width, height)` of the original image (grounding boxes are scaled to it, spec §9).
    pub fn size(&self) -> (u32, u32) {
        self.rgb.dimensions()
    }
    pub fn rgb(&self) -> &RgbImage {
        &self.rgb
    }
    pub fn tiling(&self) -> &TilingParams {
        &self.tiling
    }
    pub fn source(&self) -> &ImageSource {
        &self.source
    }
    /// True for a video frame (one tile, no thumbnail).
    pub fn is_video_frame(&self) -> bool {
        self.tiling.max_tiles == 1
    }

    /// Tiles and normalizes (spec §7.1) with the model's statistics `norm` (the key does not include them:
    /// embeddings are cached per model), checking the tile count the prompt was built with.
    pub(crate) fn preprocess(&self, norm: &img::Normalization) -> Result<img::Tiles> {
        let tiles = img::preprocess_with(&self.rgb, &self.tiling, norm)?;
        if tiles.n != self.n_tiles {
            return Err(EngineError::TileCount {
                key: self.key.to_string(),
                found: tiles.n,
                expected: self.n_tiles,
            });
        }
        Ok(tiles)
    }
}

/// True when the file starts with a GIF signature.
fn is_gif(path: &Path) -> Result<bool> {
    std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 6];
            std::io::Read::read_exact(&mut f, &mut magic).map(|_| magic)
        })
        .map(|m| &m[..] == b"GIF89a" || &m[..] == b"GIF87a")
        .map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })
}

/// SipHash (std's fixed-key hasher) twice with different salts: 128 bits, so that accidental
/// collisions are out of the question (this is not a defence against crafted collisions; a
/// collision would only reuse another image's embeddings).
fn content_key(rgb: &RgbImage, t: &TilingParams) -> ImageKey {
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        rgb.dimensions().hash(&mut h);
        (t.image_size, t.min_tiles, t.max_tiles, t.use_thumbnail).hash(&mut h);
        h.write(rgb.as_raw());
        h.finish()
    };
    ImageKey((u128::from(half(0x5eed_0001)) << 64) | u128::from(half(0x5eed_0002)))
}

/// Projector rows of encoded images (`[tiles * 256, n_embd]` each), least recently used evicted
/// beyond a byte budget. Images still referenced by a conversation can always be re-encoded from
/// their pixels, so eviction only costs time.
#[derive(Debug)]
pub struct EmbeddingCache {
    map: HashMap<ImageKey, (Arc<Vec<f32>>, u64)>,
    clock: u64,
    bytes: usize,
    budget: usize,
}

impl EmbeddingCache {
    pub fn new(budget_bytes: usize) -> Self {
        EmbeddingCache {
            map: HashMap::new(),
            clock: 0,
            bytes: 0,
            budget: budget_bytes,
        }
    }

    pub fn get(&mut self, key: ImageKey) -> Option<Arc<Vec<f32>>> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(&key).map(|(rows, used)| {
            *used = clock;
            rows.clone()
        })
    }

    /// Stores rows, evicting the least recently used entries until the budget holds (the newest
    /// entry always stays, even if it alone is over budget).
    pub fn insert(&mut self, key: ImageKey, rows: Arc<Vec<f32>>) {
        self.clock += 1;
        let size = rows.len() * std::mem::size_of::<f32>();
        if let Some((old, _)) = self.map.insert(key, (rows, self.clock)) {
            self.bytes -= old.len() * std::mem::size_of::<f32>();
        }
        self.bytes += size;
        while self.bytes > self.budget && self.map.len() > 1 {
            let Some(oldest) = self
                .map
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&oldest) {
                self.bytes -= old.len() * std::mem::size_of::<f32>();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// An [`EmbeddingCache`] shared by several chats (a server's sessions, see
/// [`Chat::share_image_cache`](super::Chat::share_image_cache)), so that an image sent again in another
/// request, to another session, is not encoded again. Cheap to clone (one `Arc`); rows are `Arc`s, so a
/// chat's own cache and the shared one hold the same memory, not two copies.
#[derive(Debug, Clone)]
pub struct SharedEmbeddingCache(Arc<std::sync::Mutex<EmbeddingCache>>);

impl SharedEmbeddingCache {
    pub fn new(budget_bytes: usize) -> Self {
        SharedEmbeddingCache(Arc::new(std::sync::Mutex::new(EmbeddingCache::new(budget_bytes))))
    }

    /// The cache; a panic of another holder does not make it unusable (it only holds finished rows).
    fn lock(&self) -> std::sync::MutexGuard<'_, EmbeddingCache> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn get(&self, key: ImageKey) -> Option<Arc<Vec<f32>>> {
        self.lock().get(key)
    }
    pub fn insert(&self, key: ImageKey, rows: Arc<Vec<f32>>) {
        self.lock().insert(key, rows)
    }
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32, v: u8) -> RgbImage {
        RgbImage::from_pixel(w, h, ::image::Rgb([v, v, v]))
    }

    #[test]
    fn keys_follow_content_and_tiling() {
        let t = TilingParams::default();
        let a = Image::from_rgb(img(20, 10, 1), &t).unwrap();
        let b = Image::from_rgb(img(20, 10, 1), &t).unwrap();
        let c = Image::from_rgb(img(20, 10, 2), &t).unwrap();
        let d = Image::from_rgb(img(20, 10, 1), &TilingParams { max_tiles: 6, ..t }).unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_ne!(a.key(), d.key());
        // 2:1 aspect -> (2,1) grid plus thumbnail; one tile for a video frame.
        assert_eq!(a.n_tiles(), 3);
        assert_eq!(a.preprocess(&img::Normalization::IMAGENET).unwrap().n, 3);
        let f = Image::from_rgb(img(20, 10, 1), &TilingParams::video_frame(448)).unwrap();
        assert_eq!(f.n_tiles(), 1);
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let mut c = EmbeddingCache::new(3 * 4 * 10);
        let rows = || Arc::new(vec![0f32; 10]);
        c.insert(ImageKey(1), rows());
        c.insert(ImageKey(2), rows());
        c.insert(ImageKey(3), rows());
        assert!(c.get(ImageKey(1)).is_some()); // 1 is now more recent than 2
        c.insert(ImageKey(4), rows());
        assert!(c.get(ImageKey(2)).is_none());
        assert!(c.get(ImageKey(1)).is_some() && c.get(ImageKey(3)).is_some() && c.get(ImageKey(4)).is_some());
        assert_eq!(c.bytes(), 3 * 40);
        // An entry larger than the budget stays alone.
        c.insert(ImageKey(5), Arc::new(vec![0f32; 100]));
        assert_eq!(c.len(), 1);
        assert!(c.get(ImageKey(5)).is_some());
    }
}
