//! Quantization and dequantization with ggml's own reference kernels (`ggml_quantize_chunk`,
//! `type_traits.to_float`), rows in parallel with rayon.

use rayon::prelude::*;

use super::sys;
use super::{GgmlError, Result};
use crate::gguf::GgmlType;

/// Rows per rayon task: large enough to amortize scheduling, small enough to balance 2..16 cores.
const ROWS_PER_TASK: usize = 16;

fn check_rows(ty: GgmlType, n: usize, n_per_row: usize) -> Result<usize> {
    if n_per_row == 0 || !n.is_multiple_of(n_per_row) {
        return Err(GgmlError::Quantize(format!(
            "{n} values are not whole rows of {n_per_row}"
        )));
    }
    ty.row_size(n_per_row).ok_or_else(|| {
        GgmlError::Quantize(format!(
            "row length {n_per_row} is not a multiple of {}'s block size {}",
            ty.name(),
            ty.block_size()
        ))
    })
}

/// Converts f32 rows of `n_per_row` values to `ty` (f32, f16, bf16 or a quantized type).
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    let row_bytes = check_rows(ty, src.len(), n_per_row)?;
    let n_rows = src.len() / n_per_row;
    // SAFETY: a pure query on a valid type id.
    if unsafe { sys::ggml_quantize_requires_imatrix(ty as u32 as sys::ggml_type) } {
        return Err(GgmlError::Quantize(format!(
            "{} needs an importance matrix, which we do not support",
            ty.name()
        )));
    }
    // SAFETY: initializes ggml's lookup tables for this type (idempotent, internally locked).
    unsafe { sys::ggml_quantize_init(ty as u32 as sys::ggml_type) };
    let mut dst = vec![0u8; n_rows * row_bytes];
    dst.par_chunks_mut(ROWS_PER_TASK * row_bytes)
        .zip(src.par_chunks(ROWS_PER_TASK * n_per_row))
        .try_for_each(|(out, inp)| {
            let rows = inp.len() / n_per_row;
            // SAFETY: `inp` holds `rows` whole rows of f32 and `out` exactly rows*row_bytes bytes; the type
            // supports quantization without an imatrix (checked) and the row length fits its block.
            let written = unsafe {
                sys::ggml_quantize_chunk(
                    ty as u32 as sys::ggml_type,
                    inp.as_ptr(),
                    out.as_mut_ptr().cast(),
                    0,
                    rows as i64,
                    n_per_row as i64,
                    std::ptr::null(),
                )
            };
            if written != out.len() {
                return Err(GgmlError::Quantize(format!(
                    "{} wrote {written} bytes, expected {}",
                    ty.name(),
                    out.len()
                )));
            }
            Ok(())
        })?;
    Ok(dst)
}

/// Converts `n` values stored as `ty` back to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let need = ty
        .nbytes(&[n])
        .ok_or_else(|| GgmlError::Quantize(format!("{n} values do not fill whole {} blocks", ty.name())))?;
    if bytes.len() != need {
        return Err(GgmlError::Quantize(format!(
            "{} bytes given for {n} {} values ({need} needed)",
            bytes.len(),
            ty.name()
        )));
    }
    if ty == GgmlType::F32 {
        return Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    // SAFETY: a valid type id; returns a static traits table.
    let to_float = unsafe { (*sys::ggml_get_type_traits(ty as u32 as sys::ggml_type)).to_float }
        .ok_or_else(|| GgmlError::Quantize(format!("{} has no conversion to f32", ty.name())))?;
    let mut out = vec![0f32; n];
    let block = ty.block_size();
    let blocks_per_task = 4096;
    let in_chunk = blocks_per_task * ty.type_size();
    out.par_chunks_mut(blocks_per_task * block)
        .zip(bytes.par_chunks(in_chunk))
        .for_each(|(o, i)| {
            // SAFETY: `i` holds whole blocks encoding exactly o.len() values (sizes checked above).
            unsafe { to_float(i.as_ptr().cast(), o.as_mut_ptr(), o.len() as i64) };
        });
    Ok(out)
}
