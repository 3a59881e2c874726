"""Structured answers through the official `openai` Python client against internvl-serve (not run by CI).

    pip install openai jsonschema
    python3 serve/tests/py/openai_structured.py target/release/internvl-serve MODEL.gguf

Starts the server on a free loopback port, then checks (and exits non-zero on the first failure):
`response_format=json_schema` gives JSON that validates against the schema (`jsonschema`, independent of
the server's grammar engine), for several seeds; `json_object` gives an object; `logprobs=True,
top_logprobs=3` comes back in OpenAI's shape, non-streamed and streamed, and matches the answer's text;
`tools=[...]` is a 400 whose `param` is `tools`; a schema the engine cannot compile is a 400 about
`response_format`. Works with the tiny random model (whose free answers are gibberish).
"""
import json
import subprocess
import sys

import jsonschema
import openai
from openai import OpenAI

exe, model = sys.argv[1], sys.argv[2]
proc = subprocess.Popen([exe, "-m", model, "--host", "127.0.0.1", "--port", "0"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit("FAILED: " + what)
    checks += 1


try:
    base = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    name = client.models.list().data[0].id
    ask = [{"role": "user", "content": "Which object is on the table, and where?"}]

    schema = {
        "type": "object", "additionalProperties": False, "required": ["object", "box", "graspable"],
        "properties": {
            "object": {"enum": ["cup", "bottle", "box"]},
            "box": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "minItems": 4, "maxItems": 4},
            "graspable": {"type": "boolean"},
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "detection", "schema": schema, "strict": True}}
    for seed in range(5):
        r = client.chat.completions.create(model=name, messages=ask, max_tokens=128, temperature=1.0, seed=seed,
                                           response_format=fmt)
        text = r.choices[0].message.content
        v = json.loads(text)
        jsonschema.validate(v, schema)
        check(r.choices[0].finish_reason == "stop", "json_schema finish")
        print("json_schema seed %d: %s" % (seed, text))

    r = client.chat.completions.create(model=name, messages=ask, max_tokens=200, temperature=0.0,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        check(isinstance(json.loads(r.choices[0].message.content), dict), "json_object is an object")
    print("json_object:", r.choices[0].message.content, "| finish:", r.choices[0].finish_reason)

    r = client.chat.completions.create(model=name, messages=ask, max_tokens=8, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    check(len(lp) == r.usage.completion_tokens, "one logprob entry per token")
    for e in lp:
        check(e.logprob <= 0 and len(e.top_logprobs) == 3, "logprob entry shape")
        check(all(a.logprob >= b.logprob for a, b in zip(e.top_logprobs, e.top_logprobs[1:])), "top sorted")
        check(e.bytes is not None and isinstance(e.token, str), "token and bytes")
    check(b"".join(bytes(e.bytes) for e in lp).decode("utf-8", "replace").strip() == r.choices[0].message.content,
          "the tokens spell the answer")
    print("logprobs:", [(e.token, round(e.logprob, 3), [t.token for t in e.top_logprobs]) for e in lp])

    stream = client.chat.completions.create(model=name, messages=ask, max_tokens=8, logprobs=True,
                                            top_logprobs=3, stream=True)
    streamed = []
    for ev in stream:
        if ev.choices and ev.choices[0].logprobs and ev.choices[0].logprobs.content:
            streamed.extend(ev.choices[0].logprobs.content)
    check([e.token for e in streamed] == [e.token for e in lp], "streamed logprobs equal the non-streamed")
    print("streamed logprobs: %d entries" % len(streamed))

    tools = [{"type": "function", "function": {"name": "grasp", "parameters": {"type": "object"}}}]
    try:
        client.chat.completions.create(model=name, messages=ask, max_tokens=4, tools=tools)
        check(False, "tools must be refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == "tools", "tools refused with param")
        print("tools:", e.status_code, e.body)

    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}
    try:
        client.chat.completions.create(model=name, messages=ask, max_tokens=4, response_format=bad)
        check(False, "a bad schema must be refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param.startswith("response_format"), "bad schema refused")
        print("bad schema:", e.status_code, e.body)
    print("all %d checks passed" % checks)
finally:
    proc.terminate()
    proc.wait(timeout=30)
