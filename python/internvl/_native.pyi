"""Typed interface of the native module (python/src/*.rs). Re-exported by `internvl`."""

import os
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
from PIL.Image import Image as _PILImage

__version__: str
VIDEO: bool
"""True when built with the `video` feature (FFmpeg)."""
CUDA: bool
"""True when built with the `cuda` feature."""

ImageLike = Union[_PILImage, npt.NDArray[np.uint8], str, os.PathLike, bytes, bytearray, memoryview]
"""A PIL image (converted with ``convert("RGB")`` as the reference does), a numpy uint8 array of shape
(H, W, 3) or (H, W, 4) (RGB/RGBA, or BGR/BGRA with ``channels="bgr"``; any strides), a file path, or an
encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF)."""

class InternVLError(Exception):
    """Base class of the runtime's errors; the message is the runtime's."""

class ModelError(InternVLError):
    """The model could not be loaded or used."""

class ImageError(InternVLError):
    """An image could not be read, decoded or converted."""

class ContextOverflowError(InternVLError):
    """The prompt does not fit the session's context."""

class ParameterError(InternVLError):
    """An invalid parameter (tiles, memory budget, placeholders, ...)."""

class Timings:
    """Seconds spent in each stage of a turn."""
    @property
    def preprocess(self) -> float: ...
    @property
    def vision(self) -> float: ...
    @property
    def prefill(self) -> float: ...
    @property
    def time_to_first_token(self) -> float: ...
    @property
    def decode(self) -> float: ...
    @property
    def total(self) -> float: ...

class GroundingBox:
    """A box of a grounded answer, normalized to 0..1000 of the image."""
    @property
    def label(self) -> Optional[str]: ...
    @property
    def x1(self) -> float: ...
    @property
    def y1(self) -> float: ...
    @property
    def x2(self) -> float: ...
    @property
    def y2(self) -> float: ...
    def to_pixels(self, width: int, height: int) -> Tuple[float, float, float, float]:
        """The box in pixels of a ``width`` x ``height`` image."""

class Reply:
    """The answer of one turn."""
    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> Literal["stop", "length", "context_full", "cancelled"]: ...
    @property
    def token_ids(self) -> List[int]: ...
    @property
    def boxes(self) -> List[GroundingBox]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def image_tokens(self) -> int: ...
    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens evaluated in this turn (the rest came from the KV cache)."""
    @property
    def reused_tokens(self) -> int: ...
    @property
    def generated_tokens(self) -> int: ...
    @property
    def tiles_encoded(self) -> int: ...
    @property
    def tiles_cached(self) -> int: ...
    @property
    def dropped_turns(self) -> int: ...
    @property
    def timings(self) -> Timings: ...
    @property
    def tokens_per_second(self) -> float: ...

class Stream(Iterator[str]):
    """Pieces of an answer as they are generated. ``result`` is the `Reply` once exhausted."""
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    @property
    def result(self) -> Optional[Reply]: ...
    def close(self) -> None:
        """Stops generation."""

class Session:
    """A conversation over one KV cache (multi-turn, only new tokens are evaluated each turn)."""
    def chat(
        self,
        prompt: str,
        images: Union[None, ImageLike, Sequence[ImageLike]] = None,
        *,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stream: bool = False,
        stop: Optional[Sequence[str]] = None,
        channels: Literal["rgb", "bgr"] = "rgb",
        grounding: bool = False,
        json_schema: Union[None, str, Dict[str, Any]] = None,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
    ) -> Union[Reply, Stream]:
        """Asks ``prompt`` about ``images`` (one ``<image>`` each, prepended unless the prompt places them)
        and generates. ``stream=True`` returns a `Stream`. The answer ends before the first of the
        ``stop`` strings (which is not part of it). At most one of ``json_schema`` (a dict or a JSON string;
        ``{"type": "object"}`` for any JSON object), ``regex`` (the whole answer matches it) or ``grammar``
        (llguidance's Lark-like dialect) constrains decoding; a bad one raises ParameterError before anything
        is evaluated. ``grounding=True`` keeps the ``<ref>``/``<box>`` tags in the text."""
    def reset(self) -> None:
        """Forgets the conversation (the caches stay for a conversation that starts the same way)."""
    def clear_caches(self) -> None:
        """Forgets the KV cache and the image embeddings too."""
    @property
    def history(self) -> List[Tuple[str, Optional[str]]]: ...
    @property
    def n_past(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...

class Model:
    """A loaded model; thread-safe, share it and open one `Session` per thread."""
    def __init__(
        self,
        path: Union[str, os.PathLike],
        threads: Optional[int] = None,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        weights: Literal["repacked", "mapped", "f32-vision", "int8-vision", "int8"] = "repacked",
        n_ctx: int = 4096,
        kv_type: Literal["f32", "f16", "q8_0", "q4_0"] = "f16",
        batch_size: int = 512,
        max_tiles: Optional[int] = None,
        mmproj: Optional[Union[str, os.PathLike]] = None,
        tokenizer: Optional[Union[str, os.PathLike]] = None,
        system: Optional[str] = None,
    ) -> None: ...
    @staticmethod
    def from_hf(
        repo: str,
        type: str = "q8_0",
        threads: Optional[int] = None,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        weights: Literal["repacked", "mapped", "f32-vision", "int8-vision", "int8"] = "repacked",
        n_ctx: int = 4096,
        kv_type: Literal["f32", "f16", "q8_0", "q4_0"] = "f16",
        batch_size: int = 512,
        max_tiles: Optional[int] = None,
        system: Optional[str] = None,
    ) -> "Model":
        """A checkpoint from the Hugging Face cache, converted once by ``internvl-convert`` (on PATH)."""
    def session(
        self,
        n_ctx: Optional[int] = None,
        threads: Optional[int] = None,
        kv_type: Optional[Literal["f32", "f16", "q8_0", "q4_0"]] = None,
        max_tiles: Optional[int] = None,
        system: Optional[str] = None,
        truncate_history: bool = False,
        mem_budget: int = 0,
    ) -> Session: ...
    def chat(
        self,
        prompt: str,
        images: Union[None, ImageLike, Sequence[ImageLike]] = None,
        *,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stream: bool = False,
        stop: Optional[Sequence[str]] = None,
        channels: Literal["rgb", "bgr"] = "rgb",
        grounding: bool = False,
        json_schema: Union[None, str, Dict[str, Any]] = None,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
    ) -> Union[Reply, Stream]:
        """One question in a fresh session (see `Session.chat`)."""
    @property
    def weight_bytes(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def system(self) -> str: ...
