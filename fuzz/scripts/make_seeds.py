#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/seed-*. Needs numpy, Pillow and gguf-py.

Run from the repository root: python3 fuzz/scripts/make_seeds.py
Every seed is small (< 200 KB); they are committed, so this script only documents how they were made.
"""
import io
import json
import os
import struct

import numpy as np
from PIL import Image

import gguf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CORPUS = os.path.join(ROOT, "corpus")
TOK = open(os.path.join(ROOT, "seeds", "tokenizer-small.json"), encoding="utf-8").read()


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def gguf_bytes(build):
    path = "/tmp/internvl-fuzz-seed.gguf"
    w = gguf.GGUFWriter(path, arch="internvl")
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = open(path, "rb").read()
    os.remove(path)
    return data


# --- gguf_reader ---------------------------------------------------------------------------------
def small_kv(w):
    w.add_uint32("test.u32", 7)
    w.add_int32("test.i32", -3)
    w.add_float32("test.f32", 0.5)
    w.add_float64("test.f64", -2.25)
    w.add_bool("test.bool", True)
    w.add_string("test.str", "héllo")
    w.add_array("test.arr_i32", [1, 2, 3])
    w.add_array("test.arr_str", ["a", "bc", ""])
    w.add_array("test.arr_f32", [0.25, 1.5])
    w.add_uint64("test.u64", 1 << 40)
    w.add_tensor("a", np.arange(8, dtype=np.float32))
    w.add_tensor("b", np.ones((2, 3), dtype=np.float16))
    w.add_tensor("c.q8", np.zeros((2, 34), dtype=np.uint8), raw_shape=(2, 34), raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def tiny_model_meta(w):
    # The hyperparameter keys of Hparams::tiny() (no weights), so hparams_from_gguf/meta_from_gguf run.
    u = w.add_uint32
    u("clip.vision.image_size", 448); u("clip.vision.patch_size", 14); u("clip.vision.embedding_length", 64)
    u("clip.vision.feed_forward_length", 256); u("clip.vision.block_count", 2); u("clip.vision.attention.head_count", 4)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    u("qwen2.vocab_size", 1212); u("qwen2.embedding_length", 448); u("qwen2.feed_forward_length", 608)
    u("qwen2.block_count", 2); u("qwen2.attention.head_count", 14); u("qwen2.attention.head_count_kv", 2)
    u("qwen2.context_length", 32768)
    w.add_float32("qwen2.rope.freq_base", 1e6); w.add_float32("qwen2.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("internvl.downsample_ratio", 0.5); w.add_string("internvl.ps_version", "v2")
    w.add_array("internvl.token.stop_ids", [1202, 1201, 1200])
    w.add_array("clip.vision.image_mean", [0.485, 0.456, 0.406]); w.add_array("clip.vision.image_std", [0.229, 0.224, 0.225])
    u("clip.vision.preproc_max_tiles", 12); w.add_bool("internvl.use_thumbnail", True)
    w.add_string("tokenizer.huggingface.json", TOK)
    w.add_tensor("v.class_embd", np.zeros(64, dtype=np.float32))


def aligned(w):
    w.add_uint32("general.alignment", 64)
    w.add_tensor("x", np.arange(5, dtype=np.float32))
    w.add_tensor("y", np.arange(3, dtype=np.float32))


out("gguf_reader", "small.gguf", gguf_bytes(small_kv))
out("gguf_reader", "tiny-meta.gguf", gguf_bytes(tiny_model_meta))
out("gguf_reader", "align64.gguf", gguf_bytes(aligned))
out("gguf_reader", "empty-v3.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 0))


# --- safetensors_header ----------------------------------------------------------------------------
def st(tensors, meta=None):
    header, blobs, off = {}, [], 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


bf16 = (np.arange(6, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
out("safetensors_header", "bf16-f16-f32.safetensors", st([
    ("language_model.model.embed_tokens.weight", "BF16", [2, 3], bf16),
    ("h", "F16", [4], np.arange(4, dtype=np.float16).tobytes()),
    ("f", "F32", [2, 2], np.arange(4, dtype=np.float32).tobytes()),
], {"format": "pt"}))
out("safetensors_header", "ints-empty.safetensors", st([
    ("i", "I64", [2], np.arange(2, dtype=np.int64).tobytes()),
    ("e", "F32", [0, 3], b""),
    ("s", "BF16", [], b"\x80\x3f"),
]))
out("safetensors_header", "header-only.safetensors", st([]))


# --- tokenizer_data --------------------------------------------------------------------------------
out("tokenizer_data", "small.json", b"\x00" + TOK.encode())
out("tokenizer_data", "tiny-wordlevel.json", b"\x02" + json.dumps({
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": i + 3, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}
                     for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"])],
    "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
    "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "[UNK]": 2}, "unk_token": "[UNK]"}}).encode())
# Structured mode: a few mutation streams (the arbitrary crate decodes whatever bytes follow).
out("tokenizer_data", "mutate-1", b"\x01" + bytes(range(0, 64)) + "Hello <image> 你好".encode())
out("tokenizer_data", "mutate-2", b"\x03" + b"\x05\xff\xff\xff\x7f" * 4 + b"text <|im_start|>user\n")


# --- image_tiling ----------------------------------------------------------------------------------
rng = np.random.default_rng(1)


def enc(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


rgb = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), "RGB")
grad = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1)), "L")
ctl = bytes([0b0010_0100])  # load_bytes, image_size 16, max_tiles 2
out("image_tiling", "rgb.jpg", ctl + enc(rgb, "JPEG", quality=70))
out("image_tiling", "cmyk.jpg", ctl + enc(rgb.convert("CMYK"), "JPEG", quality=70))
out("image_tiling", "gray.jpg", ctl + enc(grad, "JPEG"))
out("image_tiling", "rgb.png", bytes([0b1100_1000]) + enc(rgb, "PNG"))
out("image_tiling", "rgba.png", ctl + enc(rgb.convert("RGBA"), "PNG"))
g16 = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
out("image_tiling", "gray16.png", ctl + enc(g16, "PNG"))
out("image_tiling", "palette.png", ctl + enc(rgb.convert("P"), "PNG"))
out("image_tiling", "bilevel.png", ctl + enc(grad.convert("1"), "PNG"))
out("image_tiling", "rgb.tiff", ctl + enc(rgb, "TIFF"))
out("image_tiling", "rgb-lzw.tiff", ctl + enc(rgb.resize((20, 12)), "TIFF", compression="tiff_lzw"))
out("image_tiling", "rgb.bmp", ctl + enc(rgb.resize((17, 9)), "BMP"))
out("image_tiling", "rgb.webp", ctl + enc(rgb, "WEBP", quality=50))
out("image_tiling", "lossless.webp", ctl + enc(rgb.resize((16, 16)), "WEBP", lossless=True))
out("image_tiling", "still.gif", ctl + enc(rgb.convert("P"), "GIF"))
frames = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), "RGB").convert("P") for _ in range(3)]
anim = io.BytesIO()
frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
out("image_tiling", "anim.gif", bytes([0b0010_0111]) + anim.getvalue())  # gif_frames path
out("image_tiling", "pixel.png", ctl + enc(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"))
# Raw frame: 9-byte header (w u16, h u16, stride u32 with bit 31 = tight + low byte, format u8) + pixels.
for name, fmt, bpp, pad in [("raw-rgb", 0, 3, 0), ("raw-bgra-padded", 3, 4, 5)]:
    w, h = 7, 5
    hdr = struct.pack("<HHIB", w, h, 0x8000_0000 | pad, fmt)
    out("image_tiling", name, bytes([0b0010_0110]) + hdr + rng.integers(0, 255, (w * bpp + pad) * h, dtype=np.uint8).tobytes())


# --- chat_grounding --------------------------------------------------------------------------------
for i, s in enumerate([
    "<ref>the red panda</ref><box>[[120, 80, 560, 900]]</box>",
    "<ref>cat</ref> <box>[[1,2,3,4],[5, 6, 7, 8]]</box> and [[9, 10, 1100, -3]]",
    "<image>\nDescribe <image> and <img><IMG_CONTEXT></img> please<|im_end|>tail",
    "Image-1: <image>\n[[0.5, 1e3, NaN, 4]] <box>[[</box><ref></ref>",
]):
    out("chat_grounding", f"text-{i}", s.encode())
