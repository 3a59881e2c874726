"""The official `openai` Python client against internvl-serve on 127.0.0.1 (not run by CI).

    pip install openai
    python3 serve/tests/py/openai_smoke.py target/release/internvl-serve MODEL.gguf

Starts the server on a free loopback port with an API key, then: lists models, asks a text question,
asks about an image sent as a data: URL, streams an answer, and shows the error the client raises
for a wrong key and for a prompt over the context. Stops the server at the end.
"""
import base64
import io
import subprocess
import sys
import time

import openai
from openai import OpenAI

exe, model = sys.argv[1], sys.argv[2]
key = "local-test-key"
proc = subprocess.Popen(
    [exe, "-m", model, "--host", "127.0.0.1", "--port", "0", "--api-key", key],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
)
try:
    base = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    print("server:", base)
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)

    models = client.models.list()
    print("models:", [m.id for m in models.data])
    name = models.data[0].id

    r = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello! Who are you?"}], max_tokens=12)
    print("text:", repr(r.choices[0].message.content), "| finish:", r.choices[0].finish_reason,
          "| usage:", r.usage.prompt_tokens, "+", r.usage.completion_tokens)

    # A 64x48 PNG made without Pillow: 8-bit RGB, one IDAT.
    import struct, zlib
    w, h = 64, 48
    raw = b"".join(b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 128)) for x in range(w)) for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    t = time.time()
    r = client.chat.completions.create(model=name, max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}}]}])
    print("image:", repr(r.choices[0].message.content), "| prompt tokens:", r.usage.prompt_tokens,
          "| %.0f ms" % ((time.time() - t) * 1e3))

    pieces = []
    stream = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Count to five."}], max_tokens=10, stream=True,
        stream_options={"include_usage": True}, temperature=0.7, seed=1, stop=["\n\n"])
    finish = usage = None
    for ev in stream:
        if ev.choices:
            if ev.choices[0].delta.content:
                pieces.append(ev.choices[0].delta.content)
            finish = ev.choices[0].finish_reason or finish
        if ev.usage:
            usage = ev.usage
    print("stream: %d chunks -> %r | finish: %s | usage: %s" % (len(pieces), "".join(pieces), finish,
          usage and usage.completion_tokens))

    try:
        OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    except openai.AuthenticationError as e:
        print("wrong key:", type(e).__name__, e.status_code, e.body)
    try:
        client.chat.completions.create(model=name, max_tokens=4,
                                       messages=[{"role": "user", "content": "word " * 5000}])
    except openai.BadRequestError as e:
        print("too long:", type(e).__name__, e.status_code, e.code)
finally:
    proc.terminate()
    proc.wait(timeout=30)
    print("server exit code:", proc.returncode)
