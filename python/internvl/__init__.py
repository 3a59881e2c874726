"""InternVL2-1B on ggml, in Python.

>>> import internvl
>>> model = internvl.Model("model.gguf")
>>> reply = model.chat("Describe the image.", images=["photo.jpg"], max_tokens=64)
>>> print(reply.text, reply.timings.decode)

`Model` loads the weights once (share it between threads); `Model.session()` opens a multi-turn conversation
that reuses its KV cache; `chat(..., stream=True)` returns an iterator of text pieces. Images may be
`PIL.Image.Image`, numpy uint8 arrays (H, W, 3) in RGB or, with ``channels="bgr"``, OpenCV's BGR order, file
paths, or encoded bytes. Errors are `InternVLError` subclasses carrying the runtime's message.
"""

from ._native import (
    CUDA,
    VIDEO,
    ContextOverflowError,
    GroundingBox,
    ImageError,
    InternVLError,
    Model,
    ModelError,
    ParameterError,
    Reply,
    Session,
    Stream,
    Timings,
    __version__,
)

__all__ = [
    "CUDA",
    "VIDEO",
    "ContextOverflowError",
    "GroundingBox",
    "ImageError",
    "InternVLError",
    "Model",
    "ModelError",
    "ParameterError",
    "Reply",
    "Session",
    "Stream",
    "Timings",
    "__version__",
]
