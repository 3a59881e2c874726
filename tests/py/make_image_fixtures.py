#!/usr/bin/env python3
"""Regenerates tests/fixtures/images/ (golden data for tests/image_inputs.rs and tests/image_parity.rs).

Run from the repository root:  python3 tests/py/make_image_fixtures.py
Needs: Pillow (13 used), numpy; torch + torchvision for normalize_lut.json (skipped with a warning if
missing, keeping the committed file). The reference functions are transcribed from the
InternVL2-1B README: `dynamic_preprocess` and `find_closest_aspect_ratio` in bench/pillow_preprocess.py
(shared with the benchmarks), `build_transform` and `get_index` below; see spec §7.

Outputs (all small; inputs are deterministic from fixed seeds):
  manifest.json          magic/version, Pillow version, and the case lists below
  grid_order.txt         CPython's candidate-grid order (set + stable sort) for many (min, max)
  grid_choice.txt        find_closest_aspect_ratio results for many sizes and parameters
  frame_indices.json     get_index() results for a set of (num_frames, fps, segments, bound)
  normalize_lut.json     torchvision ToTensor+Normalize per channel and value, as f32 bit patterns
  *.png/.bmp/.tif/.webp/.gif/.jpg   inputs; *.rgb.png   Pillow's convert('RGB') of an input;
  tiles_<hash>.png       a case's uint8 tiles stacked vertically (n*S rows of S pixels);
  *.resized.png          Pillow's Image.resize output for a resize case.
"""
import hashlib
import io
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "images")
MAGIC = "internvl-image-fixtures"
VERSION = 1


# ---- reference code (README, transcribed) -------------------------------------------------------
# dynamic_preprocess and its helpers live in bench/pillow_preprocess.py (the one Python copy).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from pillow_preprocess import (  # noqa: E402
    dynamic_preprocess_with_grid as dynamic_preprocess, find_closest_aspect_ratio, target_ratios_for)


def get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    frame_indices = np.array([
        int(start_idx + (seg_size / 2) + np.round(seg_size * idx))
        for idx in range(num_segments)
    ])
    return frame_indices


# ---- synthetic content ---------------------------------------------------------------------------
def content(w, h, seed):
    """Random-colour blocks (sharp edges: bicubic overshoot and clipping) plus a noise patch and
    pure black/white lines. Compresses well, so fixtures stay small."""
    rng = np.random.default_rng(seed)
    bw, bh = max(1, w // 9), max(1, h // 7)
    colors = rng.integers(0, 256, (math.ceil(h / bh), math.ceil(w / bw), 3), dtype=np.uint8)
    img = np.repeat(np.repeat(colors, bh, 0), bw, 1)[:h, :w].copy()
    ph, pw = min(h, 24), min(w, 24)
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    img[y0:y0 + ph, x0:x0 + pw] = rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8)
    img[h // 3, :] = 255
    img[:, w // 3] = 0
    return img


def png_bytes(w, h, bit_depth, color_type, rows, extra_chunks=b""):
    """A minimal PNG writer for layouts Pillow cannot save (16-bit RGB, 16-bit grey + tRNS)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    data = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra_chunks
            + chunk(b"IDAT", zlib.compress(data, 9)) + chunk(b"IEND", b""))


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def save_png(arr, name):
    Image.fromarray(arr).save(os.path.join(OUT, name), optimize=True)


# ---- cases ---------------------------------------------------------------------------------------
def make_inputs():
    """name -> file name. Each input is written once; several cases may share it."""
    files = {}

    def rgb_png(w, h, seed):
        name = f"rgb_{w}x{h}.png"
        save_png(content(w, h, seed), name)
        files[name] = name

    for i, (w, h) in enumerate([(1, 1), (1, 4000), (4000, 1), (449, 448), (1000, 747), (896, 896),
                                (950, 950), (951, 951), (1000, 1000), (37, 23), (500, 2400)]):
        rgb_png(w, h, 100 + i)

    rng = np.random.default_rng(7)
    rgba = np.dstack([content(150, 100, 1), rng.integers(0, 256, (100, 150), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(os.path.join(OUT, "rgba_150x100.png"))
    pal = Image.fromarray(content(257, 129, 2)).quantize(colors=37, method=Image.Quantize.MEDIANCUT)
    pal.save(os.path.join(OUT, "palette_257x129.png"))
    Image.fromarray(content(200, 300, 3)[:, :, 1]).save(os.path.join(OUT, "gray_200x300.png"))
    la = np.dstack([content(150, 150, 4)[:, :, 0], rng.integers(0, 256, (150, 150), dtype=np.uint8)])
    Image.fromarray(la, "LA").save(os.path.join(OUT, "la_150x150.png"))
    Image.fromarray(content(77, 33, 5)[:, :, 2] > 127).save(os.path.join(OUT, "bilevel_77x33.png"))

    c16 = content(60, 45, 6).astype(np.uint16) * 257 + rng.integers(0, 257, (45, 60, 3)).astype(np.uint16)
    rows = [b"".join(struct.pack(">HHH", *px) for px in row) for row in c16.tolist()]
    open(os.path.join(OUT, "rgb16_60x45.png"), "wb").write(png_bytes(60, 45, 16, 2, rows))
    g16 = (content(64, 48, 7)[:, :, 0].astype(np.uint16) * 4)  # 0..1020: Pillow clips above 255
    rows = [b"".join(struct.pack(">H", v) for v in row) for row in g16.tolist()]
    open(os.path.join(OUT, "gray16_64x48.png"), "wb").write(png_bytes(64, 48, 16, 0, rows))
    trns = struct.pack(">I", 2) + b"tRNS" + struct.pack(">H", 400)
    trns += struct.pack(">I", zlib.crc32(b"tRNS" + struct.pack(">H", 400)) & 0xFFFFFFFF)
    open(os.path.join(OUT, "gray16trns_64x48.png"), "wb").write(png_bytes(64, 48, 16, 0, rows, trns))

    base = Image.fromarray(content(160, 120, 8))
    base.save(os.path.join(OUT, "rgb_160x120.bmp"))
    base.save(os.path.join(OUT, "rgb_160x120.tif"), compression="tiff_deflate")
    base.save(os.path.join(OUT, "rgb_160x120.webp"), lossless=True)
    base.quantize(colors=64).save(os.path.join(OUT, "palette_160x120.gif"))
    base.save(os.path.join(OUT, "q90_160x120.jpg"), quality=90)  # 4:2:0
    base.save(os.path.join(OUT, "q95_444_160x120.jpg"), quality=95, subsampling=0)
    base.save(os.path.join(OUT, "lossy_160x120.webp"), quality=80)

    # Animated GIF: 4 full-screen opaque frames, 100 ms each (10 fps).
    frames = [Image.fromarray(content(64, 40, 20 + k)).quantize(colors=32) for k in range(4)]
    frames[0].save(os.path.join(OUT, "anim_64x40.gif"), save_all=True, append_images=frames[1:],
                   duration=100, loop=0, optimize=False, disposal=1)
    return files


def tiling_cases():
    d = dict(min_tiles=1, max_tiles=12, image_size=448, use_thumbnail=True)
    cases = [(f, d) for f in [
        "rgb_1x1.png", "rgb_1x4000.png", "rgb_4000x1.png", "rgb_449x448.png", "rgb_1000x747.png",
        "rgb_896x896.png", "rgb_950x950.png", "rgb_951x951.png", "rgb_1000x1000.png", "rgb_500x2400.png",
        "rgba_150x100.png", "palette_257x129.png", "gray_200x300.png", "la_150x150.png",
        "bilevel_77x33.png", "rgb16_60x45.png", "gray16_64x48.png", "gray16trns_64x48.png",
        "rgb_160x120.bmp", "rgb_160x120.tif", "rgb_160x120.webp", "palette_160x120.gif"]]
    cases += [
        ("rgb_1000x747.png", dict(d, min_tiles=2, max_tiles=6)),
        ("rgb_1000x747.png", dict(d, max_tiles=12, use_thumbnail=False)),
        ("rgb_1000x747.png", dict(d, image_size=224, max_tiles=6)),
        ("rgb_4000x1.png", dict(d, max_tiles=40)),
        ("rgb_449x448.png", dict(d, min_tiles=2, max_tiles=8)),
        ("rgb_37x23.png", dict(d, max_tiles=1)),
    ]
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    make_inputs()
    manifest = {"magic": MAGIC, "version": VERSION,
                "regenerate": "python3 tests/py/make_image_fixtures.py",
                "pillow": Image.__version__, "numpy": np.__version__,
                "decode": [], "tiling": [], "resize": [], "lossy": [], "animation": []}

    # Decoding alone: Pillow's convert('RGB') for every non-RGB8 / non-PNG input.
    for f in ["rgba_150x100.png", "palette_257x129.png", "gray_200x300.png", "la_150x150.png",
              "bilevel_77x33.png", "rgb16_60x45.png", "gray16_64x48.png", "gray16trns_64x48.png",
              "rgb_160x120.bmp", "rgb_160x120.tif", "rgb_160x120.webp", "palette_160x120.gif"]:
        im = Image.open(os.path.join(OUT, f))
        rgb = np.asarray(im.convert("RGB"))
        name = f + ".rgb.png"
        save_png(rgb, name)
        manifest["decode"].append({"input": f, "pillow_mode": im.mode, "rgb": name})

    # Lossy formats: Pillow's decode, compared with a tolerance in Rust.
    for f in ["q90_160x120.jpg", "q95_444_160x120.jpg", "lossy_160x120.webp"]:
        rgb = np.asarray(Image.open(os.path.join(OUT, f)).convert("RGB"))
        save_png(rgb, f + ".rgb.png")
        manifest["lossy"].append({"input": f, "rgb": f + ".rgb.png"})

    for k, (f, p) in enumerate(tiling_cases()):
        im = Image.open(os.path.join(OUT, f)).convert("RGB")
        tiles, grid = dynamic_preprocess(im, min_num=p["min_tiles"], max_num=p["max_tiles"],
                                         image_size=p["image_size"], use_thumbnail=p["use_thumbnail"])
        arr = np.stack([np.asarray(t) for t in tiles])
        case = {"input": f, "params": p, "size": list(im.size), "grid": list(grid), "n_tiles": len(tiles),
                "tiles_sha256": [sha(t) for t in arr], "tiles": None}
        strip = io.BytesIO()
        Image.fromarray(arr.reshape(-1, arr.shape[2], 3)).save(strip, format="PNG", optimize=True)
        if strip.tell() <= 150_000:  # keep exact tiles (better failure messages) when cheap
            name = f"tiles_{hashlib.sha256(arr.tobytes()).hexdigest()[:16]}.png"  # identical strips share
            open(os.path.join(OUT, name), "wb").write(strip.getvalue())
            case["tiles"] = name
        manifest["tiling"].append(case)

    src = Image.open(os.path.join(OUT, "rgb_37x23.png")).convert("RGB")
    one = Image.open(os.path.join(OUT, "rgb_1x1.png")).convert("RGB")
    for im, f, size in [(src, "rgb_37x23.png", (5, 61)), (src, "rgb_37x23.png", (300, 7)),
                        (src, "rgb_37x23.png", (37, 50)), (src, "rgb_37x23.png", (80, 23)),
                        (src, "rgb_37x23.png", (37, 23)), (src, "rgb_37x23.png", (1, 1)),
                        (src, "rgb_37x23.png", (2, 200)), (one, "rgb_1x1.png", (3, 2)),
                        # Pillow 13 pass order: vertical first iff out_h < in_h and
                        # in_h - out_h > 2 * (in_w - out_w); (27, 3) is the equality (horizontal first).
                        (src, "rgb_37x23.png", (40, 5)), (src, "rgb_37x23.png", (30, 3)),
                        (src, "rgb_37x23.png", (20, 3)), (src, "rgb_37x23.png", (27, 3)),
                        (src, "rgb_37x23.png", (28, 3))]:
        name = f"resize_{f[:-4]}_to_{size[0]}x{size[1]}.resized.png"
        save_png(np.asarray(im.resize(size)), name)
        manifest["resize"].append({"input": f, "to": list(size), "output": name})

    gif = Image.open(os.path.join(OUT, "anim_64x40.gif"))
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB")))
    save_png(np.concatenate(frames, 0), "anim_64x40.frames.png")
    manifest["animation"].append({"input": "anim_64x40.gif", "n_frames": len(frames), "fps": 10.0,
                                  "frames": "anim_64x40.frames.png"})

    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")

    # Candidate-grid order: every max for min 1, and a spread of other mins.
    pairs = [(1, m) for m in range(1, 41)]
    pairs += [(mn, mx) for mn in (2, 3, 4, 6, 7, 12, 13, 20, 39, 40) for mx in (mn, mn + 1, 24, 36, 40) if mn <= mx <= 40]
    with open(os.path.join(OUT, "grid_order.txt"), "w") as fh:
        fh.write(f"# {MAGIC} grid_order v{VERSION}: CPython {sys.version.split()[0]} order of "
                 "sorted(set(candidates), key=i*j).\n# Regenerate: python3 tests/py/make_image_fixtures.py\n"
                 "# min max: cols,rows cols,rows ...\n")
        for mn, mx in sorted(set(pairs)):
            fh.write(f"{mn} {mx}: " + " ".join(f"{i},{j}" for i, j in target_ratios_for(mn, mx)) + "\n")

    # find_closest_aspect_ratio on many sizes, including exact aspect ties decided by the area rule.
    rng = np.random.default_rng(11)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 5000, (300, 2))]
    sizes += [(s, s) for s in (1, 447, 448, 633, 634, 949, 950, 951, 952, 1200, 1267, 1268, 1500, 3000)]
    sizes += [(2 * s, s) for s in (300, 448, 449, 633, 634, 700)] + [(s, 3 * s) for s in (200, 517, 518, 900)]
    sizes += [(int(w), 1) for w in rng.integers(1, 9000, 20)] + [(1, int(h)) for h in rng.integers(1, 9000, 20)]
    params = [(1, 12, 448), (1, 6, 448), (2, 12, 448), (1, 40, 448), (3, 9, 224), (1, 1, 448), (5, 24, 336)]
    with open(os.path.join(OUT, "grid_choice.txt"), "w") as fh:
        fh.write(f"# {MAGIC} grid_choice v{VERSION}: README find_closest_aspect_ratio over CPython's candidate order.\n"
                 "# Regenerate: python3 tests/py/make_image_fixtures.py\n"
                 "# width height min max image_size: cols,rows\n")
        for k, (w, h) in enumerate(sizes):
            for mn, mx, s in {params[0], params[k % len(params)]}:
                c, r = find_closest_aspect_ratio(w / h, target_ratios_for(mn, mx), w, h, s)
                fh.write(f"{w} {h} {mn} {mx} {s}: {c},{r}\n")

    fps_rp = 895000 / 29833
    cases = [(895, fps_rp, 8, None), (895, fps_rp, 32, None), (895, fps_rp, 8, (3.3, 10.1)),
             (10, 30.0, 10, None), (6, 30.0, 4, None), (100, 25.0, 7, (1.0, 3.0)),
             (100, 25.0, 7, (0.5, 100.0)), (300, 29.97, 16, (2.5, 7.3)), (1000, 0.001, 4, None),
             (50, 24.0, 16, (0.0, 0.1)), (12345, 59.94, 33, None), (5, 1.0, 1, None), (2, 0.5, 2, None),
             (90, 30.0, 8, (0.0, 0.0)), (90, 30.0, 8, (-5.0, 1.0)), (61, 2.5, 9, (1.2, 1.4))]
    fi = [{"num_frames": n, "fps": fps, "num_segments": s, "bound": b,
           "indices": [int(x) for x in get_index(b, fps, n - 1, first_idx=0, num_segments=s)]}
          for n, fps, s, b in cases]
    with open(os.path.join(OUT, "frame_indices.json"), "w") as fh:
        json.dump({"magic": MAGIC, "version": VERSION, "regenerate": "python3 tests/py/make_image_fixtures.py",
                   "cases": fi}, fh, indent=1)
        fh.write("\n")

    make_normalize_lut()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


def make_normalize_lut():
    try:
        import torch
        import torchvision.transforms as T
        from torchvision.transforms.functional import InterpolationMode
    except ImportError:
        print("torch/torchvision missing: keeping the committed normalize_lut.json", file=sys.stderr)
        return
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = T.Compose([  # README build_transform(448)
        T.Lambda(lambda img: img.convert('RGB') if img.mode != 'RGB' else img),
        T.Resize((448, 448), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std)])
    v = (np.arange(448 * 448) % 256).astype(np.uint8).reshape(448, 448)
    img = np.dstack([v, np.roll(v, 1), np.roll(v, 2)])
    out = transform(Image.fromarray(img)).numpy()  # [3, 448, 448]
    lut = []
    for c in range(3):
        table = np.zeros(256, np.float32)
        for val in range(256):
            sel = out[c][img[:, :, c] == val]
            assert sel.size and (sel.view(np.uint32) == sel[0].view(np.uint32)).all(), "transform not per-value"
            table[val] = sel[0]
        lut.append([int(x) for x in table.view(np.uint32)])
    with open(os.path.join(OUT, "normalize_lut.json"), "w") as fh:
        json.dump({"magic": MAGIC, "version": VERSION, "regenerate": "python3 tests/py/make_image_fixtures.py",
                   "torch": torch.__version__, "what": "f32 bits of build_transform(448) output per channel and "
                   "uint8 value", "lut_bits": lut}, fh)
        fh.write("\n")


if __name__ == "__main__":
    main()
