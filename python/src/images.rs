//! Python image objects to engine images: `PIL.Image.Image`, numpy `uint8` arrays (H x W x 3, or x 4 with
//! alpha), paths (`str`, `os.PathLike`) and encoded bytes (`bytes`, `bytearray`, `memoryview`).
//!
//! Pixels decoded by us follow Pillow's `Image.open(...).convert('RGB')` (see `internvl::image::decode`).
//! A PIL image is converted by Pillow itself (`convert('RGB')` unless it is already RGB), exactly what the
//! reference does after opening a file. A C-contiguous numpy array is read in place (no intermediate copy:
//! the engine's converter reads the array's own buffer); any other layout (a crop, a channel flip
//! `a[..., ::-1]`, a transposed view) is gathered row by row into one buffer first.
use std::path::PathBuf;

use internvl::engine::{Image, TilingParams};
use internvl::image::{self as img, PixelFormat, RawImage};
use numpy::{PyArray3, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

use crate::errors::{image_err, to_py, ImageError};

/// Channel order of numpy arrays (PIL images, files and bytes carry their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    Rgb,
    /// OpenCV's order.
    Bgr,
}

impl Channels {
    pub fn parse(s: &str) -> PyResult<Channels> {
        match s.to_ascii_lowercase().as_str() {
            "rgb" => Ok(Channels::Rgb),
            "bgr" => Ok(Channels::Bgr),
            _ => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "channels={s:?}: expected \"rgb\" or \"bgr\""
            ))),
        }
    }
}

/// Converts one Python image object. `index` names it in error messages.
pub fn to_image(obj: &Bound<'_, PyAny>, index: usize, channels: Channels, tiling: &TilingParams) -> PyResult<Image> {
    let py = obj.py();
    let from_rgb = |rgb| Image::from_rgb(rgb, tiling).map_err(to_py);

    if let Ok(b) = obj.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        let rgb = py.detach(|| img::load_bytes(bytes, &img::Limits::default()));
        return from_rgb(rgb.map_err(|e| with_index(index, image_err(e), py))?);
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        // One copy to an immutable `bytes` (a bytearray may change while we read it).
        let b = py.import("builtins")?.getattr("bytes")?.call1((obj,))?;
        return to_image(&b, index, channels, tiling);
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        let path: PathBuf = obj.extract()?;
        let t = *tiling;
        return py
            .detach(|| Image::open(&path, &t))
            .map_err(|e| with_index(index, to_py(e), py));
    }
    if is_pil_image(obj)? {
        return from_pil(obj, tiling).map_err(|e| with_index(index, e, py));
    }
    if obj.hasattr("__array_interface__")? || obj.hasattr("__array__")? {
        return from_array(obj, channels, tiling).map_err(|e| with_index(index, e, py));
    }
    let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
    Err(ImageError::new_err(format!(
        "image {index}: unsupported type {ty}; expected a PIL.Image.Image, a numpy uint8 array (H, W, 3), a path \
         (str or os.PathLike) or encoded bytes"
    )))
}

/// Prefixes the message with the image's position in the `images` list.
fn with_index(index: usize, e: PyErr, py: Python<'_>) -> PyErr {
    let msg = e.value(py).to_string();
    if e.is_instance_of::<ImageError>(py) || e.is_instance_of::<crate::errors::InternVLError>(py) {
        let new = PyErr::from_type(e.get_type(py), format!("image {index}: {msg}"));
        new.set_cause(py, Some(e));
        new
    } else {
        e
    }
}

fn is_pil_image(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    // Without importing PIL (it is optional): an instance of a class defined in a PIL module with the
    // methods we use.
    let module: String = obj.get_type().getattr("__module__")?.extract().unwrap_or_default();
    Ok(module.starts_with("PIL.") && obj.hasattr("convert")? && obj.hasattr("tobytes")?)
}

fn from_pil(obj: &Bound<'_, PyAny>, tiling: &TilingParams) -> PyResult<Image> {
    let mode: String = obj.getattr("mode")?.extract()?;
    let rgb_obj = if mode == "RGB" {
        obj.clone()
    } else {
        obj.call_method1("convert", ("RGB",))?
    };
    let (width, height): (u32, u32) = rgb_obj.getattr("size")?.extract()?;
    let raw = rgb_obj.call_method0("tobytes")?;
    let bytes = raw.cast::<PyBytes>()?.as_bytes();
    let rgb = img::from_raw(RawImage {
        data: bytes,
        width,
        height,
        stride: width as usize * 3,
        format: PixelFormat::Rgb8,
    })
    .map_err(image_err)?;
    Image::from_rgb(rgb, tiling).map_err(to_py)
}

fn from_array(obj: &Bound<'_, PyAny>, channels: Channels, tiling: &TilingParams) -> PyResult<Image> {
    let Ok(arr) = obj.cast::<PyArray3<u8>>() else {
        let shape = obj
            .getattr("shape")
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into());
        let dtype = obj
            .getattr("dtype")
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(ImageError::new_err(format!(
            "a numpy image must be a uint8 array of shape (height, width, 3) or (height, width, 4), got dtype \
             {dtype} and shape {shape} (convert with a.astype(numpy.uint8), or pass a PIL image)"
        )));
    };
    let arr = arr.try_readonly().map_err(|e| ImageError::new_err(e.to_string()))?;
    let shape = arr.shape().to_vec();
    let (h, w, c) = (shape[0], shape[1], shape[2]);
    let format = match (c, channels) {
        (3, Channels::Rgb) => PixelFormat::Rgb8,
        (3, Channels::Bgr) => PixelFormat::Bgr8,
        (4, Channels::Rgb) => PixelFormat::Rgba8,
        (4, Channels::Bgr) => PixelFormat::Bgra8,
        _ => {
            return Err(ImageError::new_err(format!(
                "a numpy image must have 3 (RGB/BGR) or 4 (RGBA/BGRA) channels, got shape ({h}, {w}, {c})"
            )))
        }
    };
    let (width, height) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(ImageError::new_err(format!("image of {w}x{h} pixels is too large"))),
    };
    let stride = w * c;
    // `as_slice` also accepts Fortran-contiguous arrays, whose buffer is not in row-major order.
    let c_order = if arr.is_c_contiguous() {
        arr.as_slice().ok()
    } else {
        None
    };
    let rgb = match c_order {
        // C-contiguous: the engine reads the array's buffer directly.
        Some(data) => img::from_raw(RawImage {
            data,
            width,
            height,
            stride,
            format,
        }),
        // Any other layout: gather in logical (row-major) order, then convert.
        None => {
            let packed: Vec<u8> = arr.as_array().iter().copied().collect();
            img::from_raw(RawImage {
                data: &packed,
                width,
                height,
                stride,
                format,
            })
        }
    }
    .map_err(image_err)?;
    Image::from_rgb(rgb, tiling).map_err(to_py)
}
