#!/usr/bin/env python3
"""Times the reference preprocessing (Pillow + torchvision, HF README load_image) on image1.jpg and
compares it with our criterion results.

    cargo bench -p internvl --bench preprocess        # writes target/criterion/...
    python3 bench/pillow_preprocess.py               # prints reference times and ours/theirs ratios

Single-threaded comparison (both sides on one core):
    RAYON_NUM_THREADS=1 cargo bench -p internvl --bench preprocess
    python3 bench/pillow_preprocess.py --threads 1

Stages, matched to benches/preprocess.rs:
  decode      Image.open(f).convert('RGB') (forces the load)
  tiles_f32   dynamic_preprocess(max_num=12, use_thumbnail=True) + build_transform per tile + torch.stack
  end_to_end  both
If torchvision is missing, the transform falls back to numpy (uint8/255, (x-mean)/std, HWC->CHW) and
says so. By default torch keeps its intra-op threads (all cores), as our rayon pool does; `--threads N`
sets torch's thread count (pair it with RAYON_NUM_THREADS=N for our side).
"""
import json
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
IMAGE = os.path.join(ROOT, "..", "shared", "media", "image1.jpg")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# The reference preprocessing, transcribed from the InternVL2-1B README (spec §7). The one Python copy:
# tests/py/make_image_fixtures.py and bench/bnb_common.py import it from here.
def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float('inf')
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def target_ratios_for(min_num, max_num):
    """The README's candidate grids in CPython's order (a set, then a stable sort by tile count)."""
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1) if
        i * j <= max_num and i * j >= min_num)
    return sorted(target_ratios, key=lambda x: x[0] * x[1])


def dynamic_preprocess_with_grid(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    """The README's dynamic_preprocess, also returning the chosen (columns, rows) grid."""
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = target_ratios_for(min_num, max_num)
    target_aspect_ratio = find_closest_aspect_ratio(
        aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = ((i % (target_width // image_size)) * image_size, (i // (target_width // image_size)) * image_size,
               ((i % (target_width // image_size)) + 1) * image_size,
               ((i // (target_width // image_size)) + 1) * image_size)
        processed_images.append(resized_img.crop(box))
    assert len(processed_images) == blocks
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images, target_aspect_ratio


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    return dynamic_preprocess_with_grid(image, min_num, max_num, image_size, use_thumbnail)[0]


def make_transform():
    try:
        import torch
        import torchvision.transforms as T
        from torchvision.transforms.functional import InterpolationMode
    except ImportError:
        mean = np.array(MEAN, np.float32)[:, None, None]
        std = np.array(STD, np.float32)[:, None, None]

        def numpy_stack(tiles):
            return np.stack([(np.asarray(t).transpose(2, 0, 1).astype(np.float32) / 255 - mean) / std for t in tiles])
        return numpy_stack, "Pillow + numpy (torchvision not installed)"
    transform = T.Compose([
        T.Lambda(lambda img: img.convert('RGB') if img.mode != 'RGB' else img),
        T.Resize((448, 448), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=MEAN, std=STD)])

    def torch_stack(tiles):
        return torch.stack([transform(t) for t in tiles])
    return torch_stack, f"Pillow {Image.__version__} + torchvision (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def timeit(fn, min_time=3.0, min_runs=10):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def criterion_ms(group, name):
    path = os.path.join(ROOT, "target", "criterion", group, name, "new", "estimates.json")
    try:
        with open(path) as fh:
            return json.load(fh)["median"]["point_estimate"] / 1e6
    except (OSError, KeyError, ValueError):
        return None


def main():
    if "--threads" in sys.argv:
        import torch
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    stack, label = make_transform()

    def decode():
        return Image.open(IMAGE).convert("RGB")
    rgb = decode()

    def tiles():
        return stack(dynamic_preprocess(rgb, max_num=12, image_size=448, use_thumbnail=True))
    out = tiles()
    assert tuple(out.shape) == (13, 3, 448, 448), out.shape

    def end_to_end():
        return stack(dynamic_preprocess(decode(), max_num=12, image_size=448, use_thumbnail=True))

    print(f"reference: {label}; image1.jpg 1000x747 -> 13 tiles")
    print(f"{'stage':<12} {'reference ms':>13} {'ours ms':>9} {'ours/ref':>9}")
    for stage, fn in [("decode", decode), ("tiles_f32", tiles), ("end_to_end", end_to_end)]:
        ref = timeit(fn) * 1e3
        ours = criterion_ms("preprocess", f"{stage}_image1")
        ratio = f"{ours / ref:9.3f}" if ours else "      n/a"
        ours_s = f"{ours:9.2f}" if ours else "      n/a"
        print(f"{stage:<12} {ref:13.2f} {ours_s} {ratio}")
    if criterion_ms("preprocess", "end_to_end_image1") is None:
        print("(run `cargo bench -p internvl --bench preprocess` first for our numbers)", file=sys.stderr)


if __name__ == "__main__":
    main()
