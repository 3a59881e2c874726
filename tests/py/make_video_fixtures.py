#!/usr/bin/env python3
"""Regenerates tests/fixtures/video/ (decord reference frames for tests/video_ffmpeg.rs).

Run from the repository root:  python3 tests/py/make_video_fixtures.py
Needs: decord 0.6.0 (its wheel bundles FFmpeg 4.1), Pillow, numpy, and the `ffmpeg` CLI (to encode the clips).

The reference is the model card's `load_video`: `VideoReader(path, ctx=cpu(0), num_threads=1)`, frame `i` is
`vr[i].asnumpy()`, then `Image.fromarray(...).convert('RGB')` and `dynamic_preprocess(image_size=448,
use_thumbnail=True, max_num=1)` (one 448x448 tile per frame; bench/pillow_preprocess.py).

Outputs:
  video.json           magic/version, decord/Pillow versions, one case per clip: pixel format and tags as
                       ffprobe reports them, size, frame count, the frames compared, sha256 of each frame and
                       of each 448 tile
  <clip>               small clips (a few frames, tiny sizes) covering yuv420p/yuv444p/yuvj420p, BT.601/BT.709
                       tags, limited/full range, odd sizes, MJPEG
  <clip>.frames.png    decord's frames stacked vertically (lossless; the test prints max |diff|)
red-panda.mp4 (../shared/media) is checked too, by sha256 only (8 frames of 360x640 would be large).
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "video")
SHARED = os.path.join(HERE, "..", "..", "..", "shared")
MAGIC = "internvl-video-fixtures"
VERSION = 1

sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))
from pillow_preprocess import dynamic_preprocess_with_grid as dynamic_preprocess  # noqa: E402

# name, source size, ffmpeg output options. testsrc2 has sharp colour edges (chroma upsampling) and
# gradients; `format=rgb24,crop` first so odd sizes stay odd.
CLIPS = [
    ("yuv420p_bt601_tv_64x48.mp4", (64, 48), ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-colorspace", "smpte170m",
                                              "-color_primaries", "smpte170m", "-color_trc", "smpte170m",
                                              "-color_range", "tv"]),
    ("yuv420p_bt709_tv_64x48.mp4", (64, 48), ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                                              "-color_primaries", "bt709", "-color_trc", "bt709",
                                              "-color_range", "tv"]),
    ("yuv420p_untagged_64x48.mp4", (64, 48), ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
    ("yuv420p_bt601_pc_64x48.mp4", (64, 48), ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-colorspace", "smpte170m",
                                              "-color_range", "pc"]),
    ("yuv444p_bt709_tv_64x48.mp4", (64, 48), ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-colorspace", "bt709",
                                              "-color_range", "tv"]),
    ("yuv444p_bt709_pc_67x51.mp4", (67, 51), ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-colorspace", "bt709",
                                              "-color_range", "pc"]),
    ("yuv420p_untagged_67x51.mkv", (67, 51), ["-c:v", "ffv1", "-pix_fmt", "yuv420p"]),
    ("yuv420p_bt709_pc_67x51.mkv", (67, 51), ["-c:v", "ffv1", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                                              "-color_range", "pc"]),
    ("mjpeg_yuvj420p_64x48.avi", (64, 48), ["-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v", "3"]),
]
FRAMES = 4


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def probe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,pix_fmt,color_range,color_space", "-of", "json", path],
                         capture_output=True, check=True, text=True).stdout
    return json.loads(out)["streams"][0]


def reference(path, indices):
    from decord import VideoReader, cpu
    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    frames = [vr[i].asnumpy() for i in indices]
    tiles = []
    for f in frames:
        img = Image.fromarray(f).convert("RGB")
        t, _ = dynamic_preprocess(img, min_num=1, max_num=1, image_size=448, use_thumbnail=True)
        assert len(t) == 1
        tiles.append(np.asarray(t[0]))
    return len(vr), vr.get_avg_fps(), frames, tiles


def case(path, name, indices, store_png):
    n, fps, frames, tiles = reference(path, indices)
    tags = probe(path)
    c = {"clip": name, "codec": tags.get("codec_name"), "pix_fmt": tags.get("pix_fmt"),
         "color_range": tags.get("color_range", "unknown"), "color_space": tags.get("color_space", "unknown"),
         "size": [int(frames[0].shape[1]), int(frames[0].shape[0])], "num_frames": n, "indices": indices,
         "frames_sha256": [sha(f) for f in frames], "tiles_sha256": [sha(t) for t in tiles], "frames": None}
    if store_png:
        c["frames"] = name + ".frames.png"
        Image.fromarray(np.concatenate(frames, axis=0)).save(os.path.join(OUT, c["frames"]), optimize=True)
    return c


def main():
    import decord
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    manifest = {"magic": MAGIC, "version": VERSION, "regenerate": "python3 tests/py/make_video_fixtures.py",
                "decord": decord.__version__, "pillow": Image.__version__, "clips": [], "shared": []}
    for name, (w, h), opts in CLIPS:
        src = f"testsrc2=size={w + 1}x{h + 1}:rate=10,format=rgb24,crop={w}:{h}:0:0"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-frames:v", str(FRAMES),
                        "-threads", "1", *opts, os.path.join(OUT, name)], check=True)
        c = case(os.path.join(OUT, name), name, list(range(FRAMES)), store_png=True)
        assert c["size"] == [w, h], (name, c["size"])
        manifest["clips"].append(c)
    panda = os.path.join(SHARED, "media", "red-panda.mp4")
    # The 8-segment indices of spec §7.3 (get_index with 8 segments over 895 frames).
    manifest["shared"].append(case(panda, "media/red-panda.mp4", [55, 167, 279, 390, 502, 614, 725, 837], False))
    with open(os.path.join(OUT, "video.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(manifest['clips'])} clips + red-panda.mp4, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
