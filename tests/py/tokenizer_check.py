#!/usr/bin/env python3
"""Cross-check of the InternVL2-1B tokenizer and generator of tests/fixtures/tokenizer_golden.json.

Three implementations are compared on ~300 strings (chat prompts with <IMG_CONTEXT> runs, Chinese, emoji,
CRLF, contractions, `#`-heavy text, grounding tags, random mixes):
  1. transformers `AutoTokenizer` loaded from the checkpoint's slow-tokenizer files (spec §6.3);
  2. a pure-Python re-implementation of the slow `Qwen2Tokenizer` of transformers 4.37 written here
     (NFC, split on added tokens, the §6.1 regex, GPT-2 byte map, BPE by merge rank), which shares no
     code with `tokenizers`;
  3. (if present) the JSON that our Rust `build_hf_tokenizer_json` produced, loaded with Python `tokenizers`.
     `cargo test --release -p internvl --test tokenizer` writes it to target/tmp/internvl2-1b.tokenizer.json.

Usage: python3 tests/py/tokenizer_check.py [--write-fixture]
The fixture (ids and decodes from transformers) is what the Rust test `golden_fixture_matches` checks, so CI
needs no Python. Regenerate it with --write-fixture when the string set changes (bump VERSION).
"""
import json
import os
import random
import sys
import unicodedata

import regex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "..", "shared", "model", "InternVL2-1B")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tokenizer_golden.json")
OURS = os.path.join(ROOT, "target", "tmp", "internvl2-1b.tokenizer.json")
MAGIC = "internvl-tokenizer-golden"
VERSION = 1

PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SYS = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class SlowQwen2:
    """Independent slow byte-level BPE, following transformers 4.37 Qwen2Tokenizer semantics."""

    def __init__(self, d):
        self.vocab = json.load(open(os.path.join(d, "vocab.json"), encoding="utf-8"))
        self.ranks = {}
        with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
            for i, line in enumerate(f):
                line = line.strip()
                if (i == 0 and line.startswith("#version:")) or not line:
                    continue
                a, b = line.split()
                self.ranks[(a, b)] = len(self.ranks)
        self.added = json.load(open(os.path.join(d, "added_tokens.json"), encoding="utf-8"))
        self.byte_enc = bytes_to_unicode()
        self.byte_dec = {v: k for k, v in self.byte_enc.items()}
        self.pat = regex.compile(PAT)
        alts = sorted(self.added, key=len, reverse=True)
        self.split_re = regex.compile("(" + "|".join(regex.escape(a) for a in alts) + ")")
        self.id_to_tok = {v: k for k, v in self.vocab.items()}
        self.id_to_tok.update({v: k for k, v in self.added.items()})
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best = min(((self.ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))))
            if best[0] == 1 << 60:
                break
            a, b = parts[best[1]], parts[best[1] + 1]
            out, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        self.cache[word] = parts
        return parts

    def encode(self, text):
        text = unicodedata.normalize("NFC", text)
        ids = []
        for chunk in self.split_re.split(text):
            if not chunk:
                continue
            if chunk in self.added:
                ids.append(self.added[chunk])
                continue
            for piece in self.pat.findall(chunk):
                word = "".join(self.byte_enc[b] for b in piece.encode("utf-8"))
                ids.extend(self.vocab[t] for t in self.bpe(word))
        return ids

    def decode(self, ids, skip_special):
        toks = [self.id_to_tok[i] for i in ids if not (skip_special and i in self.added.values())]
        data = bytearray()
        for t in toks:
            if t in self.added:
                data += t.encode("utf-8")
            else:
                data += bytes(self.byte_dec[c] for c in t)
        return data.decode("utf-8", errors="replace")


def handcrafted():
    ctx = "<IMG_CONTEXT>"
    s = [
        "", " ", "  ", "\n", "\n\n", "\r\n", "\r\n\r\n", "\t", " \t \n ", "a", "A", "1", "12", "123", "1234567890",
        "3.14159", "1,000,000", "-42", "x=1+2*3/4", "Hello, world!", "Hello, who are you?",
        "Please describe the image shortly.", "What is the red panda doing?",
        "I'm", "I'M", "you're", "YOU'RE", "we've", "they'll", "he'd", "it's", "IT'S", "don't", "DON'T",
        "it’s curly", "'s", "''", "'''", "rock 'n' roll",
        "#", "##", "###", "####", "#######", "# region", "#region", "## Title\n### Subtitle\n#### Deep",
        "#!/bin/bash\necho hi", "#include <stdio.h>", "C# and F#", "a#b", " ##", "## ", "#1 #2 #3", "##中文",
        "<|im_start|>user\n", "<|im_start|>system\n" + SYS + "<|im_end|>", SYS,
        "<|im_start|>assistant\n", "<|im_end|><|im_start|>", "a<|im_end|>b", "<|im_start |>", "<|endoftext|>",
        "<img></img>", "<img>" + ctx * 3 + "</img>", "<img>" + ctx * 17 + "</img>\nDescribe.",
        "Image-1: <img>" + ctx * 4 + "</img>\nImage-2: <img>" + ctx * 2 + "</img>\nCompare.",
        "Frame1: <image>\nFrame2: <image>\nWhat happens?", "<image>", "<image>\n", "<IMG_CONTEXT>x<IMG_CONTEXT>",
        "<ref>the cat</ref><box>[[12, 34, 567, 890]]</box>",
        "<ref>two dogs</ref><box>[[1, 2, 3, 4], [500, 600, 700, 800]]</box>",
        "<quad>[[1, 2, 3, 4, 5, 6, 7, 8]]</quad>", "<box>[[0, 0, 1000, 1000]]</box>",
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>a red panda</ref>",
        "你好", "你好，世界！", "中文测试。", "上海人工智能实验室", "日本語のテキスト", "한국어 텍스트", "Ελληνικά", "Русский текст",
        "العربية", "עברית", "हिन्दी", "ไทย", "Tiếng Việt",
        "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧‍👦", "🇨🇳🇺🇸", "❤️", "🐼 red panda 🐾", "emoji at end 🎉", "混合 text 和 emoji 😊！",
        "e\u0301", "cafe\u0301", "\u1100\u1161\u11a8", "A\u030a", "\u212b", "\uff21\uff22", "ﬁ ligature",
        "\u200b", "\ufeff", "zero\u200bwidth", "\x00", "\x01\x02", "\x7f", "tab\there", "nbsp\u00a0here",
        "line1\nline2\r\nline3\rline4", "trailing   ", "   leading", "a  b   c    d", "a\n \n b", "\n\n\n\nx",
        "def f(x):\n    return x ** 2\n", "{\"key\": [1, 2, 3]}", "https://example.com/a?b=c&d=e", "user@example.com",
        "ALLCAPS WORDS", "MiXeD CaSe", "snake_case_name", "camelCaseName", "x86_64", "H2O", "2024-05-01T12:00:00Z",
        "¡Hola! ¿Qué tal?", "naïve façade", "Zürich", "ß", "İstanbul", "ǅ",
        "…", "——", "«quotes»", "“curly”", "½ ¼", "∑∫√", "$100 €50 ¥30", "%d %s", "\\n not newline",
    ]
    # The reference prompts (spec §10), with short IMG_CONTEXT runs to keep the fixture small.
    s.append("<|im_start|>system\n" + SYS + "<|im_end|><|im_start|>user\n<img>" + ctx * 5 +
             "</img>\nPlease describe the image shortly.<|im_end|><|im_start|>assistant\n")
    return s


def randomized(n, seed=1234):
    rng = random.Random(seed)
    pool = [
        "the", " cat", " 猫", "熊猫", "，", "。", "！", "?", " ", "  ", "\n", "\r\n", "\t", "#", "##", "'s", "'LL",
        "😀", "🐼", "👍🏽", "e\u0301", "<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>", "<ref>",
        "</ref>", "<box>", "</box>", "[[1, 2, 3, 4]]", "123", "4567", "3.5", "_", "-", "...", "Image-1: ",
        "Frame2: ", "<image>", "Ünïcödé", "データ", "데이터", "x", "Y", "\u00a0", "\u3000", "()", "{}", "\\",
    ]
    ranges = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x4e00, 0x9fff), (0x3040, 0x30ff),
              (0xac00, 0xd7a3), (0x1f300, 0x1f64f), (0x2000, 0x206f), (0x0300, 0x036f)]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.7:
                parts.append(rng.choice(pool))
            else:
                lo, hi = rng.choice(ranges)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 4))))
        out.append("".join(parts))
    return out


def main():
    from transformers import AutoTokenizer

    strings = handcrafted()
    strings += randomized(310 - len(strings))
    hf = AutoTokenizer.from_pretrained(MODEL)
    slow = SlowQwen2(MODEL)
    ours = None
    if os.path.exists(OURS):
        import tokenizers
        ours = tokenizers.Tokenizer.from_file(OURS)

    mism = {"hf_vs_slow": 0, "hf_vs_ours": 0, "decode": 0}
    entries = []
    for s in strings:
        a = hf.encode(s, add_special_tokens=False)
        b = slow.encode(s)
        if a != b:
            mism["hf_vs_slow"] += 1
            print("HF != slow:", repr(s), a, b)
        if ours is not None:
            c = ours.encode(s, add_special_tokens=False).ids
            if c != a:
                mism["hf_vs_ours"] += 1
                print("HF != ours:", repr(s), a, c)
        dk = hf.decode(a, skip_special_tokens=False)
        ds = hf.decode(a, skip_special_tokens=True)
        if dk != slow.decode(a, False) or ds != slow.decode(a, True):
            mism["decode"] += 1
            print("decode differs:", repr(s), repr(dk), repr(slow.decode(a, False)))
        entries.append({"text": s, "ids": a, "decoded": dk, "decoded_skip_special": ds})

    print(f"{len(strings)} strings; mismatches: {mism}; ours {'checked' if ours else 'not found at ' + OURS}")
    if "--write-fixture" in sys.argv:
        import transformers
        doc = {
            "magic": MAGIC,
            "version": VERSION,
            "generator": f"tests/py/tokenizer_check.py --write-fixture (transformers {transformers.__version__})",
            "model_dir": "../shared/model/InternVL2-1B",
            "entries": entries,
        }
        with open(FIXTURE, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=0)
            f.write("\n")
        print("wrote", FIXTURE)
    return 1 if any(mism.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
