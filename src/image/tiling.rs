//! InternVL dynamic tiling and normalisation (spec §7.1 steps 2–4, HF README `dynamic_preprocess`,
//! `find_closest_aspect_ratio`, `build_transform`).
use ::image::RgbImage;
use rayon::prelude::*;

use super::error::{Error, Result};
use super::grid_order;
use super::resize::resize_bicubic;

/// Largest `max_tiles` accepted. The reference has no bound; 40 keeps the candidate search and the
/// resized image (`image_size * 40` pixels wide at most) small.
pub const MAX_TILES: u32 = 40;
/// Largest `image_size` accepted (InternVL2-1B uses 448).
pub const MAX_IMAGE_SIZE: u32 = 1024;
/// ImageNet mean used by `T.Normalize` (R, G, B).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation used by `T.Normalize` (R, G, B).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Parameters of `dynamic_preprocess`. The default is `load_image(file, input_size=448, max_num=12)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilingParams {
    /// Tile side in pixels (`image_size`, 448 for InternVL2-1B).
    pub image_size: u32,
    /// Smallest number of grid tiles (`min_num`), 1..=max_tiles.
    pub min_tiles: u32,
    /// Largest number of grid tiles (`max_num`), 1..=[`MAX_TILES`].
    pub max_tiles: u32,
    /// Append a whole-image thumbnail after the crops when the grid has more than one tile.
    pub use_thumbnail: bool,
}

impl Default for TilingParams {
    fn default() -> Self {
        TilingParams {
            image_size: 448,
            min_tiles: 1,
            max_tiles: 12,
            use_thumbnail: true,
        }
    }
}

impl TilingParams {
    /// The parameters `load_video` uses per frame: `max_num=1`, so one plain resize to
    /// `image_size²` and no thumbnail (spec §7.3).
    pub fn video_frame(image_size: u32) -> Self {
        TilingParams {
            image_size,
            min_tiles: 1,
            max_tiles: 1,
            use_thumbnail: true,
        }
    }

    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        if self.max_tiles == 0 || self.max_tiles > MAX_TILES {
            return Err(Error::MaxTilesOutOfRange {
                max_tiles: self.max_tiles,
                limit: MAX_TILES,
            });
        }
        if self.min_tiles == 0 || self.min_tiles > self.max_tiles {
            return Err(Error::MinTilesOutOfRange {
                min_tiles: self.min_tiles,
                max_tiles: self.max_tiles,
            });
        }
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE {
            return Err(Error::ImageSizeOutOfRange {
                image_size: self.image_size,
                limit: MAX_IMAGE_SIZE,
            });
        }
        Ok(())
    }
}

/// Candidate grids `(cols, rows)` in the exact order the reference scans them (CPython set order,
/// stable-sorted by tile count; see the `grid_order` module). For `(1, 12)`:
/// `(1,1),(1,2),(2,1),(3,1),(1,3),(2,2),(4,1),(1,4),…,(1,12),(6,2),(2,6)`.
pub fn candidate_grids(min_tiles: u32, max_tiles: u32) -> Result<Vec<(u32, u32)>> {
    TilingParams {
        image_size: 448,
        min_tiles,
        max_tiles,
        use_thumbnail: true,
    }
    .validate()?;
    Ok(grid_order::candidate_grids(min_tiles, max_tiles))
}

/// `find_closest_aspect_ratio`: the grid `(cols, rows)` for a `width`×`height` image.
///
/// Scans [`candidate_grids`] keeping the smallest `|W/H - i/j|` (f64, as Python); on an exact tie
/// the later grid wins only if `W·H > 0.5·image_size²·i·j`.
pub fn choose_grid(width: u32, height: u32, params: &TilingParams) -> Result<(u32, u32)> {
    params.validate()?;
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize {
            origin: "image".into(),
            width: width.into(),
            height: height.into(),
        });
    }
    Ok(closest(
        width,
        height,
        params,
        &grid_order::candidate_grids(params.min_tiles, params.max_tiles),
    ))
}

fn closest(width: u32, height: u32, params: &TilingParams, grids: &[(u32, u32)]) -> (u32, u32) {
    let aspect = f64::from(width) / f64::from(height);
    // Python compares the int area with a float exactly; both are exact in f64 here (< 2^53).
    let area = f64::from(width) * f64::from(height);
    let size = f64::from(params.image_size);
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for &(i, j) in grids {
        let diff = (aspect - f64::from(i) / f64::from(j)).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > 0.5 * size * size * f64::from(i) * f64::from(j) {
            best = (i, j);
        }
    }
    best
}

/// The resized grid image and the optional thumbnail: everything the tiles are cut from.
struct Layout {
    grid: (u32, u32),
    resized: RgbImage,
    thumbnail: Option<RgbImage>,
}

impl Layout {
    fn new(image: &RgbImage, params: &TilingParams) -> Result<Layout> {
        let grid = choose_grid(image.width(), image.height(), params)?;
        let s = params.image_size;
        let (cols, rows) = grid;
        let want_thumb = params.use_thumbnail && cols * rows != 1;
        // The big resize and the thumbnail are independent: run them side by side.
        let (resized, thumbnail) = rayon::join(
            || resize_bicubic(image, s * cols, s * rows),
            || want_thumb.then(|| resize_bicubic(image, s, s)).transpose(),
        );
        Ok(Layout {
            grid,
            resized: resized?,
            thumbnail: thumbnail?,
        })
    }

    fn count(&self) -> usize {
        (self.grid.0 * self.grid.1) as usize + usize::from(self.thumbnail.is_some())
    }

    /// Tile `k`: the image it lives in and its top-left corner (row-major crops, thumbnail last).
    fn source(&self, k: usize, s: u32) -> (&RgbImage, u32, u32) {
        let cols = self.grid.0 as usize;
        let grid_tiles = cols * self.grid.1 as usize;
        match &self.thumbnail {
            Some(t) if k >= grid_tiles => (t, 0, 0),
            _ => (&self.resized, (k % cols) as u32 * s, (k / cols) as u32 * s),
        }
    }
}

/// `dynamic_preprocess`: the uint8 tiles, `cols·rows` row-major crops of the image resized to
/// `(image_size·cols, image_size·rows)`, then the thumbnail (if enabled and more than one crop).
pub fn tile_u8(image: &RgbImage, params: &TilingParams) -> Result<Vec<RgbImage>> {
    let layout = Layout::new(image, params)?;
    let s = params.image_size;
    Ok((0..layout.count())
        .map(|k| {
            let (src, x0, y0) = layout.source(k, s);
            ::image::imageops::crop_imm(src, x0, y0, s, s).to_image()
        })
        .collect())
}

/// Normalised tiles ready for the vision encoder: `data` is `[n, 3, image_size, image_size]`
/// (f32, CHW per tile), tile order as [`tile_u8`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tiles {
    /// Number of tiles (grid crops plus thumbnail).
    pub n: usize,
    /// `n * 3 * image_size * image_size` values, `(x/255 - mean[c]) / std[c]`.
    pub data: Vec<f32>,
    /// Chosen grid `(cols, rows)`.
    pub grid: (u32, u32),
    /// Size `(width, height)` of the input image.
    pub orig_size: (u32, u32),
    /// Tile side.
    pub image_size: u32,
}

impl Tiles {
    /// The `3 * image_size²` values of tile `k`.
    pub fn tile(&self, k: usize) -> Option<&[f32]> {
        let len = 3 * (self.image_size as usize).pow(2);
        self.data.get(k * len..(k + 1) * len)
    }
}

/// `T.Normalize(mean, std)` per channel (R, G, B): the model's image statistics. InternVL2-1B uses
/// ImageNet's ([`Normalization::IMAGENET`]); a GGUF states its own (`clip.vision.image_mean` and
/// `clip.vision.image_std`, written by the converter from `preprocessor_config.json`), and the runtime uses those.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    mean: [f32; 3],
    std: [f32; 3],
}

impl Normalization {
    /// ImageNet's mean and standard deviation, rounded from f64 to f32 as `torch.as_tensor` does.
    pub const IMAGENET: Normalization = Normalization {
        mean: [
            IMAGENET_MEAN[0] as f32,
            IMAGENET_MEAN[1] as f32,
            IMAGENET_MEAN[2] as f32,
        ],
        std: [IMAGENET_STD[0] as f32, IMAGENET_STD[1] as f32, IMAGENET_STD[2] as f32],
    };

    /// Checked statistics: three finite means, three finite standard deviations above zero.
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Result<Normalization> {
        let bad = |which, values, reason| Err(Error::BadNormalization { which, values, reason });
        if !mean.iter().all(|m| m.is_finite()) {
            return bad("mean", mean, "every value must be finite");
        }
        if !std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return bad("std", std, "every value must be finite and above 0");
        }
        Ok(Normalization { mean, std })
    }

    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// `ToTensor` + `Normalize` as a per-channel table: `((v as f32 / 255) - mean) / std` in f32, the
    /// exact operations torchvision performs on a uint8 image.
    pub fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - mean) / std;
            }
        }
        lut
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::IMAGENET
    }
}

/// [`Normalization::lut`] of ImageNet's statistics (the table `tests/image_inputs.rs` checks against
/// torchvision).
pub fn normalize_lut() -> [[f32; 256]; 3] {
    Normalization::IMAGENET.lut()
}

/// The full `load_image` pipeline on a decoded image: tiling, then `ToTensor` + `Normalize` (ImageNet's
/// statistics) into one `[n, 3, s, s]` buffer. Tiles are normalised straight from the resized image,
/// without intermediate crops.
pub fn preprocess(image: &RgbImage, params: &TilingParams) -> Result<Tiles> {
    preprocess_with(image, params, &Normalization::IMAGENET)
}

/// [`preprocess`] with a model's own statistics (the engine passes the GGUF's).
pub fn preprocess_with(image: &RgbImage, params: &TilingParams, norm: &Normalization) -> Result<Tiles> {
    let layout = Layout::new(image, params)?;
    let s = params.image_size;
    let n = layout.count();
    let data = normalize_tiles(n, s, norm, |k| layout.source(k, s));
    Ok(Tiles {
        n,
        data,
        grid: layout.grid,
        orig_size: image.dimensions(),
        image_size: s,
    })
}

/// Writes `n` normalised CHW tiles; `source(k)` gives the image and corner of tile `k`, which must
/// contain the `s`×`s` square (true for every caller: crops of an exact multiple of `s`, or `s`×`s`
/// images). Parallel over tiles; each source row is read once and scattered to the three planes.
pub(super) fn normalize_tiles<'a, F>(n: usize, s: u32, norm: &Normalization, source: F) -> Vec<f32>
where
    F: Fn(usize) -> (&'a RgbImage, u32, u32) + Sync,
{
    let lut = norm.lut();
    let s = s as usize;
    let plane = s * s;
    let mut data = vec![0f32; n * 3 * plane];
    data.par_chunks_mut(3 * plane).enumerate().for_each(|(k, tile)| {
        let (img, x0, y0) = source(k);
        let stride = img.width() as usize * 3;
        let raw = img.as_raw();
        let (r_plane, rest) = tile.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        let rows = r_plane
            .chunks_exact_mut(s)
            .zip(g_plane.chunks_exact_mut(s))
            .zip(b_plane.chunks_exact_mut(s));
        for (y, ((r, g), b)) in rows.enumerate() {
            let start = (y0 as usize + y) * stride + x0 as usize * 3;
            let src = &raw[start..start + s * 3];
            for (x, px) in src.chunks_exact(3).enumerate() {
                r[x] = lut[0][usize::from(px[0])];
                g[x] = lut[1][usize::from(px[1])];
                b[x] = lut[2][usize::from(px[2])];
            }
        }
    });
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_statistics_normalize_with_them() {
        let norm = Normalization::new([0.5, 0.25, 0.0], [0.5, 2.0, 1.0]).unwrap();
        // One 4x4 tile of a 4x4 image: no resize, so every pixel value reaches the table as is.
        let img = RgbImage::from_fn(4, 4, |x, y| ::image::Rgb([(x * 60) as u8, (y * 60) as u8, 255]));
        let params = TilingParams {
            image_size: 4,
            min_tiles: 1,
            max_tiles: 1,
            use_thumbnail: false,
        };
        let ours = preprocess_with(&img, &params, &norm).unwrap();
        let imagenet = preprocess(&img, &params).unwrap();
        assert_eq!(ours.n, 1);
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let want = (f32::from(px[c]) / 255.0 - norm.mean()[c]) / norm.std()[c];
                assert_eq!(ours.data[c * 16 + i], want, "pixel {i} channel {c}");
            }
        }
        assert_ne!(ours.data, imagenet.data);
        assert_eq!(Normalization::default().lut(), normalize_lut());
    }

    #[test]
    fn bad_statistics_are_refused() {
        let ok = [0.5; 3];
        for (mean, std) in [
            ([f32::NAN, 0.5, 0.5], ok),
            ([0.5, f32::INFINITY, 0.5], ok),
            (ok, [0.5, 0.0, 0.5]),
            (ok, [0.5, 0.5, -0.1]),
            (ok, [f32::NAN, 0.5, 0.5]),
            (ok, [0.5, 0.5, f32::INFINITY]),
        ] {
            let e = Normalization::new(mean, std).unwrap_err();
            assert!(matches!(e, Error::BadNormalization { .. }), "{e}");
        }
        assert!(Normalization::new([-1.0, 0.0, 2.0], [1e-3, 1.0, 10.0]).is_ok());
    }

    #[test]
    fn spec_worked_examples() {
        let p = TilingParams::default();
        assert_eq!(choose_grid(1000, 747, &p).unwrap(), (4, 3));
        assert_eq!(choose_grid(1000, 1000, &p).unwrap(), (3, 3));
        // 950² = 902,500 is not above 0.5·448²·9 = 903,168, so (3,3) loses the tie to (2,2).
        assert_eq!(choose_grid(950, 950, &p).unwrap(), (2, 2));
        assert_eq!(choose_grid(951, 951, &p).unwrap(), (3, 3));
    }

    #[test]
    fn default_candidate_order_is_the_spec_list() {
        let spec = [
            (1, 1),
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (2, 2),
            (4, 1),
            (1, 4),
            (5, 1),
            (1, 5),
            (1, 6),
            (6, 1),
            (3, 2),
            (2, 3),
            (7, 1),
            (1, 7),
            (4, 2),
            (2, 4),
            (1, 8),
            (8, 1),
            (1, 9),
            (3, 3),
            (9, 1),
            (2, 5),
            (5, 2),
            (10, 1),
            (1, 10),
            (11, 1),
            (1, 11),
            (12, 1),
            (3, 4),
            (4, 3),
            (1, 12),
            (6, 2),
            (2, 6),
        ];
        assert_eq!(candidate_grids(1, 12).unwrap(), spec);
    }
}
