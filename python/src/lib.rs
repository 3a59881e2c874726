//! `internvl._native`: the Python binding of `internvl::engine` (PyO3, abi3 for CPython 3.9+).
//!
//! The pure-Python package `internvl` (python/internvl/) re-exports these classes; its `__init__.pyi` is the
//! typed interface and docs/python.md the guide.
//!
//! Threads: a [`Model`] is shared freely; a [`Session`] holds its conversation behind a mutex (one generation at
//! a time per session; several sessions run in parallel). A generation runs on a worker thread that never touches
//! Python; the calling thread waits for it without the GIL and wakes every 50 ms to run Python's signal
//! handlers, so Ctrl-C (`KeyboardInterrupt`) cancels the generation (at the next token, prefill chunk or vision
//! batch), waits for the worker to stop, and propagates.
mod errors;
mod images;
mod session;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<session::Model>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<session::Reply>()?;
    m.add_class::<session::Timings>()?;
    m.add_class::<session::GroundingBox>()?;
    m.add_class::<session::Stream>()?;
    m.add("InternVLError", py.get_type::<errors::InternVLError>())?;
    m.add("ModelError", py.get_type::<errors::ModelError>())?;
    m.add("ImageError", py.get_type::<errors::ImageError>())?;
    m.add("ContextOverflowError", py.get_type::<errors::ContextOverflowError>())?;
    m.add("ParameterError", py.get_type::<errors::ParameterError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("VIDEO", cfg!(feature = "video"))?;
    m.add("CUDA", cfg!(feature = "cuda"))?;
    Ok(())
}
