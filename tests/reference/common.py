"""Inputs and file helpers shared by make_goldens.py and plain_reference.py.

Only the *inputs* are shared (pixel normalization, prompt text, raw-file I/O, checkpoint reading); each script
computes the model forward on its own, so the two stay independent references.
"""

import hashlib
import json
import os

import numpy as np

# Spec §7.1 step 3 (torchvision ToTensor + Normalize with the ImageNet constants of preprocessor_config.json).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NORMALIZE_DOC = (
    "per element, all in IEEE float32 with round-to-nearest: x = ((float32(u8) / 255.0f) - float32(mean[c])) "
    "/ float32(std[c]); a true division at both steps (no reciprocal multiply, no fused ops); "
    "mean=(0.485,0.456,0.406), std=(0.229,0.224,0.225) rounded to float32 first; layout HWC uint8 -> "
    "[T,3,448,448] (CHW) float32 (= torchvision ToTensor + Normalize)"
)

# Spec §5.1: Hermes-2 template, verbatim system message (ASCII ", " after InternVL, everything else full-width).
SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
QUESTION = "Describe the image in detail."
IMG_CONTEXT = "<IMG_CONTEXT>"
IMG_CONTEXT_ID = 151648  # spec §6.1

DEFAULT_TILES_NPY = "/work/shared/reference/image1_tiles_uint8.npy"


def normalize_tiles(tiles_u8: np.ndarray) -> np.ndarray:
    """uint8 [T,H,W,3] -> float32 [T,3,H,W] exactly as NORMALIZE_DOC says."""
    if tiles_u8.dtype != np.uint8 or tiles_u8.ndim != 4 or tiles_u8.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T,H,W,3] tiles, got {tiles_u8.dtype} {tiles_u8.shape}")
    x = tiles_u8.astype(np.float32)
    x = x / np.float32(255.0)
    mean = np.asarray(MEAN, dtype=np.float32)
    std = np.asarray(STD, dtype=np.float32)
    x = (x - mean) / std  # broadcasts over the last (channel) axis; stays float32
    assert x.dtype == np.float32
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_tiles(path: str, indices) -> np.ndarray:
    tiles = np.load(path)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"{path}: expected [T,H,W,3], got {tiles.shape}")
    for i in indices:
        if not 0 <= i < tiles.shape[0]:
            raise ValueError(f"tile index {i} out of range for {path} with {tiles.shape[0]} tiles")
    return tiles[list(indices)]


def render_prompt(question: str, n_tiles: int, num_image_token: int) -> str:
    """Spec §5.1/§5.2: chat() with history None and one image of n_tiles tiles."""
    if "<image>" not in question:
        question = "<image>\n" + question
    prompt = (
        "<|im_start|>system\n" + SYSTEM_MESSAGE + "<|im_end|>"
        + "<|im_start|>user\n" + question + "<|im_end|>"
        + "<|im_start|>assistant\n"
    )
    block = "<img>" + IMG_CONTEXT * (num_image_token * n_tiles) + "</img>"
    return prompt.replace("<image>", block, 1)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def subset_ids(vocab: int, size: int) -> np.ndarray:
    """Fixed vocabulary subset: numpy default_rng(0).choice(V, size, replace=False), sorted ascending."""
    return np.sort(np.random.default_rng(0).choice(vocab, size, replace=False)).astype(np.int64)


def write_f32(path: str, arr) -> list:
    """Raw float32 little-endian, C order; returns the shape (PyTorch order)."""
    a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
    with open(path, "wb") as f:
        f.write(a.tobytes())
    return list(a.shape)


def read_f32(goldens_dir: str, manifest: dict, name: str) -> np.ndarray:
    entry = manifest["arrays"][name]
    path = os.path.join(goldens_dir, entry["file"])
    a = np.fromfile(path, dtype="<f4")
    want = int(np.prod(entry["shape"]))
    if a.size != want:
        raise ValueError(f"{path}: {a.size} floats, manifest shape {entry['shape']} needs {want}")
    return a.reshape(entry["shape"])


def checkpoint_files(ckpt: str) -> list:
    """The safetensors files of a checkpoint dir: model.safetensors, or the shards named by
    model.safetensors.index.json (the layout HF uses for large checkpoints)."""
    single = os.path.join(ckpt, "model.safetensors")
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(single):
        return [single]
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(ckpt, s) for s in shards]
    raise SystemExit(f"{ckpt}: neither model.safetensors nor model.safetensors.index.json")


def checkpoint_sha256(ckpt: str):
    """sha256 of model.safetensors, or {shard file name: sha256} for a sharded checkpoint."""
    files = checkpoint_files(ckpt)
    if len(files) == 1 and os.path.basename(files[0]) == "model.safetensors":
        return sha256_file(files[0])
    return {os.path.basename(f): sha256_file(f) for f in files}


def load_checkpoint_config(ckpt: str) -> dict:
    with open(os.path.join(ckpt, "config.json"), encoding="utf-8") as f:
        return json.load(f)
