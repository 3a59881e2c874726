//! The exception hierarchy: every engine error becomes an `InternVLError` subclass carrying the runtime's
//! message, so Python code can catch one base class or the specific kind.
use internvl::engine::EngineError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::PyErr;

create_exception!(
    internvl,
    InternVLError,
    PyException,
    "Base class of the errors the internvl runtime raises."
);
create_exception!(
    internvl,
    ModelError,
    InternVLError,
    "The model file could not be loaded or used (missing, truncated, wrong tensors, no tokenizer, ...)."
);
create_exception!(
    internvl,
    ImageError,
    InternVLError,
    "An image could not be read, decoded or converted (bad bytes, wrong array shape or dtype, ...)."
);
create_exception!(
    internvl,
    ContextOverflowError,
    InternVLError,
    "The prompt (history, images, question) does not fit the session's context."
);
create_exception!(
    internvl,
    ParameterError,
    InternVLError,
    "An invalid parameter (tiles, sampling, memory budget, ...)."
);

/// The Python exception for an engine error, with the engine's message.
pub fn to_py(e: EngineError) -> PyErr {
    let msg = e.to_string();
    match e {
        EngineError::Model(_) | EngineError::Tokenizer(_) | EngineError::NoTokenizer { .. } => ModelError::new_err(msg),
        EngineError::Hf(_) | EngineError::NonFiniteLogits { .. } => ModelError::new_err(msg),
        EngineError::Image(_)
        | EngineError::Video { .. }
        | EngineError::TileCount { .. }
        | EngineError::UnsavableImage { .. } => ImageError::new_err(msg),
        #[cfg(feature = "video")]
        EngineError::VideoFile(_) => ImageError::new_err(msg),
        EngineError::ContextOverflow { .. } => ContextOverflowError::new_err(msg),
        EngineError::Param(_)
        | EngineError::Placeholders { .. }
        | EngineError::Budget(_)
        | EngineError::Constraint(_) => ParameterError::new_err(msg),
        _ => InternVLError::new_err(msg),
    }
}

/// A decoding error of the image module as `ImageError`.
pub fn image_err(e: internvl::image::Error) -> PyErr {
    ImageError::new_err(e.to_string())
}
