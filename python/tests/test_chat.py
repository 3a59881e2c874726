"""The Python package on the tiny random model: every image input form, streaming, multi-turn KV reuse,
threads, errors and Ctrl-C. Greedy decoding throughout, so equal inputs must give equal token ids."""

import _thread
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

import internvl

GEN = dict(max_tokens=12)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def png_path(pixels, tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "rand.png"
    Image.fromarray(pixels, "RGB").save(p)
    return p


def ask_again(session, image, **kw):
    """Forgets the conversation and asks the reference question about `image`."""
    session.reset()
    return session.chat("Describe the image.", images=[image], **GEN, **kw)


def is_cache_hit(r) -> bool:
    """The image's content key matched the one in the KV cache: no tile encoded and the whole prompt but its
    last token reused (an image with any other pixels has another key and is encoded again)."""
    return r.tiles_encoded == 0 and r.reused_tokens == r.prompt_tokens - 1


def test_text_only(model):
    r = model.chat("Hello, who are you?", **GEN)
    assert isinstance(r, internvl.Reply)
    assert isinstance(r.text, str)
    assert r.finish_reason in ("stop", "length")
    assert 0 < r.generated_tokens <= 12 and len(r.token_ids) == r.generated_tokens
    assert r.prompt_tokens > 10 and r.image_tokens == 0 and r.tiles_encoded == 0
    assert r.timings.total > 0 and r.timings.decode >= 0
    # Greedy: the same question gives the same answer.
    assert model.chat("Hello, who are you?", **GEN).token_ids == r.token_ids


def test_image_inputs_agree(model, pixels, png_path):
    """Path, bytes, PIL (RGB and RGBA), numpy RGB, numpy BGR with channels="bgr", and strided views of the same
    pixels are the same image to the engine: same answer and same content key (cache hit)."""
    s = model.session()
    first = s.chat("Describe the image.", images=[str(png_path)], **GEN)
    assert first.tiles_encoded == 1 and first.image_tokens > 0
    # The answer to compare with is a cache hit's too: a cached prefix was computed in a batch of another size
    # than a fresh prefill, which moves the tiny random model's near-ties.
    ref = ask_again(s, str(png_path))
    assert is_cache_hit(ref)

    bgr = np.ascontiguousarray(pixels[:, :, ::-1])
    big = np.zeros((60, 80, 3), dtype=np.uint8)
    big[5:53, 7:71] = pixels
    crop = big[5:53, 7:71]  # rows padded: not C-contiguous
    assert not crop.flags["C_CONTIGUOUS"]
    flipped = bgr[:, :, ::-1]  # negative channel stride
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 9, np.uint8)])
    variants = {
        "pathlib": (png_path, {}),
        "bytes": (png_path.read_bytes(), {}),
        "bytearray": (bytearray(png_path.read_bytes()), {}),
        "PIL": (Image.open(png_path), {}),
        "PIL RGBA": (Image.fromarray(rgba, "RGBA"), {}),
        "numpy RGB": (pixels, {}),
        "numpy BGR": (bgr, {"channels": "bgr"}),
        "numpy RGBA": (rgba, {}),
        "strided crop": (crop, {}),
        "negative stride": (flipped, {}),
        "Fortran order": (np.asfortranarray(pixels), {}),
    }
    for name, (image, kw) in variants.items():
        r = ask_again(s, image, **kw)
        assert is_cache_hit(r), name
        assert r.token_ids == ref.token_ids, name

    # Control: one changed pixel is another image (encoded again), so the check above can fail.
    other = pixels.copy()
    other[0, 0, 0] ^= 1
    assert ask_again(s, other).tiles_encoded == 1
    # BGR pixels read as RGB are another image too.
    assert ask_again(s, bgr).tiles_encoded == 1


def test_numpy_rgb_and_bgr_answers_equal(model, pixels):
    """A fresh session for each: the answers (not just the cache keys) are equal."""
    a = model.chat("What is in the picture?", images=[pixels], **GEN)
    b = model.chat("What is in the picture?", images=[np.ascontiguousarray(pixels[:, :, ::-1])], channels="bgr", **GEN)
    c = model.chat("What is in the picture?", images=[Image.fromarray(pixels)], **GEN)
    assert a.token_ids == b.token_ids == c.token_ids
    assert a.text == b.text == c.text


def test_streaming_equals_non_streaming(model, pixels):
    r = model.chat("Describe the image.", images=[pixels], max_tokens=24)
    st = model.chat("Describe the image.", images=[pixels], max_tokens=24, stream=True)
    assert isinstance(st, internvl.Stream)
    assert st.result is None
    pieces = list(st)
    assert len(pieces) >= 1 and all(isinstance(p, str) for p in pieces)
    assert st.result is not None
    assert st.result.token_ids == r.token_ids
    assert st.result.text == r.text
    # The reply text is the streamed text cleaned as the reference does (trimmed).
    assert "".join(pieces).strip() == r.text
    assert list(st) == []


def test_multi_turn_reuses_the_cache(model, pixels):
    s = model.session()
    r1 = s.chat("Describe the image.", images=[pixels], **GEN)
    assert r1.reused_tokens == 0 and r1.tiles_encoded == 1
    r2 = s.chat("What colours dominate?", **GEN)
    # Nothing of turn 1 is evaluated again: neither the image nor the history.
    assert r2.tiles_encoded == 0
    assert r2.reused_tokens >= r1.prompt_tokens
    assert r2.prefilled_tokens == r2.prompt_tokens - r2.reused_tokens
    # Only what follows turn 1's prompt: the new turn, and of the first answer at most the part whose re-rendered
    # text tokenizes differently from the generated ids (the tiny random model's answers are arbitrary text).
    assert 0 < r2.prefilled_tokens <= r2.prompt_tokens - r1.prompt_tokens < r1.image_tokens
    assert [q for q, _ in s.history] == ["<image>\nDescribe the image.", "What colours dominate?"]
    assert s.n_past > r2.prompt_tokens - 1


def test_four_threads_share_one_model(model, pixels):
    prompts = ["Describe the image.", "What is this?", "Count the objects.", "Hello!"]
    images = [pixels, pixels[::-1], pixels[:, ::-1], None]
    expected = [model.chat(p, images=[im] if im is not None else None, **GEN).token_ids for p, im in zip(prompts, images)]

    results = [None] * 4
    errors = []
    barrier = threading.Barrier(4)

    def worker(i):
        try:
            barrier.wait()
            out = []
            for _ in range(1):
                # A fresh session each time, as model.chat() used for the expected answers.
                s = model.session()
                im = images[i]
                out.append(s.chat(prompts[i], images=[im] if im is not None else None, **GEN).token_ids)
            results[i] = out
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i in range(4):
        assert results[i] == [expected[i]], i


def test_bad_images_raise_clear_errors(model, tmp_path):
    with pytest.raises(internvl.ImageError, match="image 0"):
        model.chat("x", images=[b"this is not an image"])
    with pytest.raises(internvl.ImageError, match="uint8"):
        model.chat("x", images=[np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(internvl.ImageError, match=r"shape"):
        model.chat("x", images=[np.zeros((8, 8), dtype=np.uint8)])
    with pytest.raises(internvl.ImageError, match="channels"):
        model.chat("x", images=[np.zeros((8, 8, 2), dtype=np.uint8)])
    missing = tmp_path / "missing.jpg"
    with pytest.raises(internvl.ImageError, match="missing.jpg"):
        model.chat("x", images=[str(missing)])
    with pytest.raises(internvl.ImageError, match="image 1: unsupported type"):
        model.chat("x", images=[np.zeros((8, 8, 3), np.uint8), 42])
    with pytest.raises(ValueError, match="channels"):
        model.chat("x", images=[np.zeros((8, 8, 3), np.uint8)], channels="yuv")
    with pytest.raises(internvl.ParameterError, match="placeholder"):
        model.chat("<image> <image>", images=[np.zeros((8, 8, 3), np.uint8)])
    # All of them are InternVLError.
    assert issubclass(internvl.ImageError, internvl.InternVLError)
    # The model still works.
    assert model.chat("x", max_tokens=2).generated_tokens > 0


def test_bad_model_raises_model_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(internvl.ModelError, match="bad.gguf"):
        internvl.Model(bad)
    with pytest.raises(internvl.ModelError, match="nowhere.gguf"):
        internvl.Model(tmp_path / "nowhere.gguf")
    with pytest.raises(ValueError, match="weights"):
        internvl.Model(bad, weights="zip")


def test_stop_strings_end_the_answer_before_them(model):
    free = model.chat("Describe the image.", max_tokens=24, temperature=1.0, seed=3)
    assert len(free.text) > 2, free.text
    stop = free.text[1:3]
    cut = model.chat("Describe the image.", max_tokens=24, temperature=1.0, seed=3, stop=[stop])
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert free.text.startswith(cut.text)


def test_json_schema_answers_parse_and_validate(model):
    import json

    schema = {
        "type": "object",
        "properties": {"object": {"enum": ["cup", "box"]}, "graspable": {"type": "boolean"}},
        "required": ["object", "graspable"],
        "additionalProperties": False,
    }
    for seed in range(3):
        reply = model.chat("What is it?", max_tokens=48, temperature=1.0, seed=seed, json_schema=schema)
        assert reply.finish_reason == "stop", reply.text
        value = json.loads(reply.text)
        assert value["object"] in ("cup", "box") and isinstance(value["graspable"], bool)
        assert set(value) == {"object", "graspable"}
    digits = model.chat("Count.", max_tokens=16, temperature=1.0, seed=1, regex=r"[0-9]{3}")
    assert digits.finish_reason == "stop" and len(digits.text) == 3 and digits.text.isdigit(), digits.text
    with pytest.raises(internvl.ParameterError):
        model.chat("x", regex="(")
    with pytest.raises(ValueError):
        model.chat("x", json_schema='{"type": "object", "properties": ')
    with pytest.raises(ValueError):
        model.chat("x", regex="a", grammar="start: 'a'")


def _interrupt_after(seconds):
    t = threading.Timer(seconds, _thread.interrupt_main)
    t.start()
    return t


def test_keyboard_interrupt_stops_generation(model):
    s = model.session()
    # A generation that does not end early (no end-of-turn token in its first 300 tokens), and its duration.
    full = s.chat("Tell me a very long story.", max_tokens=300)
    assert full.generated_tokens == 300, "the tiny model stopped early; the test needs a long generation"
    s.reset()
    t0 = time.monotonic()
    _interrupt_after(0.05)
    with pytest.raises(KeyboardInterrupt):
        s.chat("Tell me a very long story.", max_tokens=300)
    interrupted = time.monotonic() - t0
    assert interrupted < full.timings.total / 2, (interrupted, full.timings.total)
    # The session is usable afterwards.
    assert s.chat("Hello again.", max_tokens=3).generated_tokens > 0

    # The same while streaming: the iterator raises, generation stops.
    s.reset()
    st = s.chat("Tell me a very long story.", max_tokens=300, stream=True)
    n = 0
    t0 = time.monotonic()
    _interrupt_after(0.05)
    with pytest.raises(KeyboardInterrupt):
        for _ in st:
            n += 1
    st.close()  # when the interpreter raised in the loop body rather than in the iterator
    assert time.monotonic() - t0 < full.timings.total / 2
    assert n < 300
    assert s.chat("Hello again.", max_tokens=3).generated_tokens > 0


def test_single_image_and_reply_fields(model, pixels):
    r = model.chat("Describe.", images=Image.fromarray(pixels), max_tokens=3)
    assert r.tiles_encoded == 1
    assert r.tokens_per_second >= 0
    assert str(r) == r.text
    assert "Reply(" in repr(r)
    assert isinstance(r.boxes, list)
