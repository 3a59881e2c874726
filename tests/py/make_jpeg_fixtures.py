#!/usr/bin/env python3
"""Regenerates tests/fixtures/images/jpeg/ (golden data for the JPEG checks of tests/image_parity.rs).

Run from the repository root:  python3 tests/py/make_jpeg_fixtures.py
Needs: Pillow (13 used, with its bundled libjpeg-turbo), numpy, and libjpeg-turbo's `cjpeg` (only to encode the
4:4:0 and 4:1:1 files, which Pillow's encoder cannot write; found under target/ after a build, or $CJPEG). The tiling reference is bench/pillow_preprocess.py (the README's
`dynamic_preprocess`, shared with tests/py/make_image_fixtures.py).

Outputs:
  jpeg.json          magic/version, Pillow and libjpeg-turbo versions, the decode and tiling cases
  *.jpg              inputs (synthetic content from fixed seeds; small)
  *.jpg.rgb.png      Pillow's Image.open(f).convert('RGB') of an input (lossless; the test prints max |diff|)
  tiles_*.png        a tiling case's uint8 tiles stacked vertically
Every case also records the sha256 of the RGB bytes, so a stale PNG cannot hide a change.
"""
import hashlib
import glob
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, features

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "images", "jpeg")
MAGIC = "internvl-jpeg-fixtures"
VERSION = 1

sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))
from pillow_preprocess import dynamic_preprocess_with_grid as dynamic_preprocess  # noqa: E402


def content(w, h, seed):
    """Smooth colour gradients (compress well) with saturated colour blocks and thin lines (sharp chroma
    edges: they exercise fancy upsampling and clamping), and one noise patch (many non-zero AC terms)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        127 + 120 * np.sin(x / max(w, 1) * 5.1 + seed),
        127 + 120 * np.cos(y / max(h, 1) * 4.3 + seed),
        (x + 2 * y) * 255 / max(w + 2 * h, 1),
    ], axis=-1)
    for _ in range(6):
        bw, bh = int(rng.integers(1, max(2, w // 3))), int(rng.integers(1, max(2, h // 3)))
        x0, y0 = int(rng.integers(0, max(1, w - bw))), int(rng.integers(0, max(1, h - bh)))
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 2, 3) * 255
    ph, pw = min(h, 16), min(w, 16)
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    img[y0:y0 + ph, x0:x0 + pw] = rng.integers(0, 256, (ph, pw, 3))
    img[h // 2, :] = [255, 0, 0]
    img[:, w // 2] = [0, 0, 255]
    return np.clip(img, 0, 255).astype(np.uint8)


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def path(name):
    return os.path.join(OUT, name)


def drop_adobe_marker(data):
    """The same JPEG without its APP14 "Adobe" segment: a CMYK file that does not announce inversion."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        code = data[pos + 1]
        if code == 0xDA:  # start of scan: copy the rest as is
            out += data[pos:]
            break
        seg_len = int.from_bytes(data[pos + 2:pos + 4], "big")
        seg = data[pos:pos + 2 + seg_len]
        if not (code == 0xEE and seg[4:9] == b"Adobe"):
            out += seg
        pos += 2 + seg_len
    assert b"Adobe" not in out[:pos]
    return bytes(out)


def make_inputs():
    """Writes every input; returns [(file, subsampling label, notes)]."""
    cases = []

    def save(name, im, label, **kw):
        im.save(path(name), **kw)
        cases.append((name, label))

    base = Image.fromarray(content(160, 120, 1))
    save("q95_444_160x120.jpg", base, "4:4:4", quality=95, subsampling=0)
    save("q50_422_160x120.jpg", base, "4:2:2", quality=50, subsampling=1)
    save("q90_420_160x120.jpg", base, "4:2:0", quality=90, subsampling=2)
    save("q50_420_160x120.jpg", base, "4:2:0", quality=50, subsampling=2)
    save("progressive_420_160x120.jpg", base, "4:2:0", quality=85, subsampling=2, progressive=True)
    save("progressive_444_160x120.jpg", base, "4:4:4", quality=85, subsampling=0, progressive=True)
    save("restart_rows_420_160x120.jpg", base, "4:2:0", quality=85, restart_marker_rows=1)
    save("restart_blocks_444_160x120.jpg", base, "4:4:4", quality=85, subsampling=0, restart_marker_blocks=3)
    save("gray_q90_160x120.jpg", base.convert("L"), "grey", quality=90)
    save("progressive_gray_160x120.jpg", base.convert("L"), "grey", quality=90, progressive=True)
    # Pillow writes CMYK inverted, with an Adobe marker (libjpeg adds it for 4-component files).
    cmyk = Image.fromarray(np.dstack([content(96, 72, 2), content(96, 72, 3)[:, :, 0]]), "CMYK")
    save("cmyk_adobe_96x72.jpg", cmyk, "CMYK 4:4:4", quality=90)
    with open(path("cmyk_adobe_96x72.jpg"), "rb") as f:
        plain = drop_adobe_marker(f.read())
    with open(path("cmyk_no_adobe_96x72.jpg"), "wb") as f:
        f.write(plain)
    cases.append(("cmyk_no_adobe_96x72.jpg", "CMYK 4:4:4"))
    # Odd sizes: partial MCUs at the right and bottom edges (upsampling at the border).
    save("q90_420_1001x747.jpg", Image.fromarray(content(1001, 747, 4)), "4:2:0", quality=90)
    save("q90_422_1001x747.jpg", Image.fromarray(content(1001, 747, 5)), "4:2:2", quality=90, subsampling=1)
    save("q90_420_17x3.jpg", Image.fromarray(content(17, 3, 6)), "4:2:0", quality=90)
    save("q90_422_17x3.jpg", Image.fromarray(content(17, 3, 7)), "4:2:2", quality=90, subsampling=1)
    save("q90_420_1x1.jpg", Image.fromarray(content(1, 1, 8)), "4:2:0", quality=90)
    save("progressive_420_33x17.jpg", Image.fromarray(content(33, 17, 9)), "4:2:0", quality=90, progressive=True)
    # EXIF orientation 6 (rotate 90): the reference does not apply it, neither do we.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_orientation6_64x40.jpg", Image.fromarray(content(64, 40, 10)), "4:2:0", quality=90, exif=exif)
    # 4:4:0 (h1v2 fancy upsampling) and 4:1:1: Pillow's encoder cannot write them (ffmpeg's MJPEG encoder
    # writes "yuvj440p" as h1v2 on every component, i.e. no subsampling), libjpeg-turbo's cjpeg can. The build
    # of the `turbojpeg` crate leaves one under target/; Pillow decodes the result (the reference).
    cjpeg = os.environ.get("CJPEG") or next(iter(sorted(glob.glob(
        os.path.join(HERE, "..", "..", "target", "*", "build", "turbojpeg-sys-*", "out", "bin", "cjpeg")))), None)
    if cjpeg is None:
        sys.exit("cjpeg not found: build the crate first (cargo build --release) or set CJPEG=/path/to/cjpeg")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src.ppm")
        Image.fromarray(content(161, 121, 11)).save(src)
        for name, sample, label in [("cjpeg_440_161x121.jpg", "1x2,1x1,1x1", "4:4:0"),
                                    ("cjpeg_411_161x121.jpg", "4x1,1x1,1x1", "4:1:1")]:
            subprocess.run([cjpeg, "-quality", "90", "-sample", sample, "-outfile", path(name), src], check=True)
            cases.append((name, label))
    return cases


def sampling_of(im):
    """Component sampling factors as Pillow reads them (h, v per component)."""
    return [[h, v] for (_, h, v, _) in im.layer] if hasattr(im, "layer") else []


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(path(f))
    manifest = {
        "magic": MAGIC, "version": VERSION, "regenerate": "python3 tests/py/make_jpeg_fixtures.py",
        "pillow": Image.__version__, "libjpeg_turbo": features.version_feature("libjpeg_turbo"),
        "decode": [], "tiling": [],
    }
    for name, label in make_inputs():
        im = Image.open(path(name))
        assert im.format == "JPEG", name
        mode, sampling, progressive = im.mode, sampling_of(im), bool(im.info.get("progressive"))
        rgb = np.asarray(im.convert("RGB"))
        case = {"input": name, "size": list(rgb.shape[1::-1]), "subsampling": label, "pillow_mode": mode,
                "sampling": sampling, "progressive": progressive, "rgb_sha256": sha(rgb), "rgb": None}
        png = io.BytesIO()
        Image.fromarray(rgb).save(png, format="PNG", optimize=True)
        if png.tell() <= 400_000:
            case["rgb"] = name + ".rgb.png"
            with open(path(case["rgb"]), "wb") as f:
                f.write(png.getvalue())
        manifest["decode"].append(case)

    # Tiling: 12 tiles + thumbnail from the odd-size photo, and the default 1..12 on a few others.
    for name, max_tiles in [("q90_420_1001x747.jpg", 12), ("q90_422_1001x747.jpg", 6), ("q90_420_17x3.jpg", 12),
                            ("cmyk_adobe_96x72.jpg", 12), ("cjpeg_440_161x121.jpg", 12)]:
        im = Image.open(path(name)).convert("RGB")
        p = {"image_size": 448, "min_tiles": 1, "max_tiles": max_tiles, "use_thumbnail": True}
        tiles, grid = dynamic_preprocess(im, min_num=1, max_num=max_tiles, image_size=448, use_thumbnail=True)
        arr = np.stack([np.asarray(t) for t in tiles])
        case = {"input": name, "params": p, "grid": list(grid), "n_tiles": len(tiles),
                "tiles_sha256": [sha(t) for t in arr], "tiles": None}
        strip = io.BytesIO()
        Image.fromarray(arr.reshape(-1, arr.shape[2], 3)).save(strip, format="PNG", optimize=True)
        if strip.tell() <= 400_000:
            case["tiles"] = f"tiles_{sha(arr)[:16]}.png"
            with open(path(case["tiles"]), "wb") as f:
                f.write(strip.getvalue())
        manifest["tiling"].append(case)

    with open(path("jpeg.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(path(f)) for f in os.listdir(OUT))
    print(f"{len(manifest['decode'])} decode cases, {len(manifest['tiling'])} tiling cases, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
