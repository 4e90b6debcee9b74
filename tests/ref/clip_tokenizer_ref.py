#!/usr/bin/python3
"""Reference ids of the CLIP BPE tokenizer as SDXL's two text branches compute them.

Written from the published algorithms (OpenAI CLIP simple_tokenizer, open_clip tokenizer, HF
CLIPTokenizer (slow), ftfy 6.3.1); no code is taken from them. It makes, under tests/ref/data/:

- tiny_bpe/merges.txt, tiny_bpe/vocab.json (HF layout) and tiny_bpe/bpe_tiny_vocab.txt.gz
  (OpenAI layout): a 1000-entry vocabulary (486 merges; sot 998, eot 999) learned here by a
  deterministic byte-level BPE over CORPUS below, for tests that run without ../shared;
- clip_tokenizer.json: the adversarial prompt set and the reference ids of every prompt under both
  conventions and both vocabularies;
- (the cleanup rules the C side follows are written by hand in clip_cleanup_rules.md.)

The two conventions (see clip_cleanup_rules.md for every step, exactly):
- "open_clip" (SDXL's OpenCLIP bigG branch, open_clip >= 2.20 `tokenize`):
  FTFY_SUBSET, html.unescape twice, strip, \\s+ -> " ", strip, lower(), pre-tokenize with the
  open_clip pattern (specials <start_of_text>/<end_of_text>), BPE; [sot] + ids + [eot]; longer
  than 77: keep 77 and set the last to eot; pad with 0.
- "hf" (SDXL's CLIP-L branch, HF slow CLIPTokenizer with ftfy installed, truncation=True,
  padding="max_length", max_length=77): split the raw text on the added tokens <|startoftext|> /
  <|endoftext|> (exact, case-sensitive, no whitespace stripping that could change an id); every
  other piece: FTFY_SUBSET, \\s+ -> " ", strip, lower(), OpenAI pattern, BPE; [bos] +
  content[:75] + [eos]; pad with eos.
FTFY_SUBSET is ftfy 6.3.1 fix_text with its default configuration minus fix_encoding (the
mojibake heuristic and the steps run only inside it: restore_byte_a0, replace_lossy_sequences,
decode_inconsistent_utf8). fix_c1_controls stays: in 6.3.1 it also runs on its own, in the main
fixer list.

clip_tokenizer.json layout:
  {"about": str, "context_length": 77,
   "pad": {"open_clip": 0, "hf": "eot"},
   "vocabs": {"full": {"size": 49408, "sot": 49406, "eot": 49407, ...},
              "tiny": {"size": 1000, "sot": 998, "eot": 999, ...}},
   "prompts": [str, ...],                  # JSON strings; non-printables escaped as \\uXXXX
   "ftfy_subset": [str, ...],              # FTFY_SUBSET(prompt) of the whole prompt
   "clean_open_clip": [str, ...],          # the open_clip string fed to the pre-tokenizer
   "mojibake_divergent": [int, ...],       # prompts real ftfy (fix_encoding) would change further
   "with_nul": [int, ...],                 # prompts holding U+0000 (a C string cannot carry them)
   "cases": [{"prompt": i, "vocab": "full"|"tiny", "convention": "open_clip"|"hf",
              "ids": [...]}, ...]}
  "ids" is the framed sequence before padding: [sot] + content + [eot] with the convention's
  truncation applied, so 2 <= len(ids) <= 77. The 77-id row is ids padded with the convention's
  pad: 0 for open_clip, the vocabulary's eot for hf. Every prompt has the two tiny cases; the two
  full cases exist when the real vocabulary was present at generation (the C test runs those only
  where ../shared/data/clip exists).

The real vocabulary (never copied into the repository) is read from ../shared/data/clip next to
the repository, else /work/shared/data/clip, else --clip-dir.

Run with Debian's Python (needs the `regex` module; ftfy is NOT needed, FTFY_SUBSET is here):
  /usr/bin/python3 tests/ref/clip_tokenizer_ref.py            # everything, self-checks included
  /usr/bin/python3 tests/ref/clip_tokenizer_ref.py --tiny     # only the tiny vocabulary files
  /usr/bin/python3 tests/ref/clip_tokenizer_ref.py --check    # recompute, compare, write nothing
                                                   # (--no-full: tiny cases only)
  /usr/bin/python3 tests/ref/clip_tokenizer_ref.py --report   # FTFY_SUBSET / mojibake analysis
  /usr/bin/python3 tests/ref/clip_tokenizer_ref.py --dump-entities FILE  # ftfy + html5 tables
Results depend on the Python build's Unicode data (NFC, lower(), NFKC for the width table,
html.entities.html5) and on the regex module's tables; generated with Python 3.11.2
(unicodedata 14.0.0) and regex 2.5.123 (Unicode 15.0 categories). The prompts use no code point
unassigned in Unicode 14.0.
"""
import argparse
import gzip
import hashlib
import html
import html.entities
import json
import os
import re as stdre
import sys
import time
import unicodedata
from collections import Counter

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(HERE, "data")
TINY_DIR = os.path.join(DATA, "tiny_bpe")
JSON_PATH = os.path.join(DATA, "clip_tokenizer.json")
CONTEXT = 77
MAX_MERGES = 49152 - 256 - 2  # 48,894: the merges every CLIP tokenizer uses
TINY_MERGES = 486  # vocabulary of 512 + 486 + 2 = 1000

# ----------------------------------------------------------------------------------------------
# Byte symbols


def byte_symbols():
    """Byte -> one-character symbol, and the symbol order that gives vocabulary ids 0..255.

    The 188 bytes that print as themselves in Latin-1 ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF)
    keep their code point; the other 68 bytes, in increasing order, become U+0100, U+0101, ...
    Id order: the 188 in increasing byte order, then the 68 in increasing byte order."""
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    moved = [b for b in range(256) if b not in set(keep)]
    table = {b: chr(b) for b in keep}
    for n, b in enumerate(moved):
        table[b] = chr(0x100 + n)
    order = [table[b] for b in keep] + [table[b] for b in moved]
    return table, order


BYTE_SYMBOL, BYTE_ORDER = byte_symbols()

# ----------------------------------------------------------------------------------------------
# FTFY_SUBSET: ftfy 6.3.1 fix_text, default configuration, without fix_encoding


def _ftfy_entity_table():
    """ftfy's entity table: every html5 name ending in ';' as '&name;', and for every such name
    that is all lower case, '&NAME;' (upper-cased) mapping to the upper-cased value, unless
    Python's html.unescape already decodes '&NAME;' to something else."""
    table = {}
    for name, value in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = value
        if name == name.lower():
            upper = "&" + name.upper()
            if html.unescape(upper) == upper:
                table[upper] = value.upper()
    return table


FTFY_ENTITIES = _ftfy_entity_table()
FTFY_ENTITY_RE = stdre.compile(r"&#?[0-9A-Za-z]{1,24};")


def ftfy_unescape_html(text):
    def one(m):
        ref = m.group(0)
        if ref in FTFY_ENTITIES:
            return FTFY_ENTITIES[ref]
        if ref.startswith("&#"):
            decoded = html.unescape(ref)
            # only a reference that html.unescape consumes up to and including the ';'
            return ref if ";" in decoded else decoded
        return ref

    return FTFY_ENTITY_RE.sub(one, text)


def _c1_table():
    """U+0080..U+009F -> the Windows-1252 character of that byte; the five bytes Windows-1252
    leaves undefined (81 8D 8F 90 9D) stay as they are ("sloppy" decoding)."""
    table = {}
    for b in range(0x80, 0xA0):
        try:
            table[b] = bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            table[b] = chr(b)
    return table


C1_TABLE = _c1_table()

LIGATURES = {  # ftfy's fix_latin_ligatures table (22 code points)
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e",
    0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj",
    0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj",
    0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u017ft",
    0xFB06: "st",
}


def _width_table():
    """U+3000 -> ' ', and every U+FF01..U+FFEF whose NFKC form differs -> that NFKC form."""
    table = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(cp))
        if alt != chr(cp):
            table[cp] = alt
    return table


WIDTH_TABLE = _width_table()
QUOTES_TABLE = {0x02BC: "'", **{cp: "'" for cp in range(0x2018, 0x201C)},
                **{cp: '"' for cp in range(0x201C, 0x2020)}}
CONTROL_TABLE = {cp: None for cp in
                 list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F]
                 + list(range(0x206A, 0x2070)) + [0xFEFF] + list(range(0xFFF9, 0xFFFD))}
ANSI_RE = stdre.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")  # str pattern: \d is any Unicode Nd


def fix_c1_controls(text):
    return "".join(C1_TABLE[ord(c)] if 0x80 <= ord(c) <= 0x9F else c for c in text)


def fix_line_breaks(text):
    return (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
            .replace("\u2029", "\n").replace("\u0085", "\n"))


def fix_surrogates(text):
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return text
    out, i = [], 0
    while i < len(text):
        c = ord(text[i])
        if 0xD800 <= c <= 0xDBFF and i + 1 < len(text) and 0xDC00 <= ord(text[i + 1]) <= 0xDFFF:
            out.append(chr(0x10000 + ((c - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)))
            i += 2
        elif 0xD800 <= c <= 0xDFFF:
            out.append("\ufffd")
            i += 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def ftfy_segment(text, unescape):
    """One segment (ftfy's fix_and_explain with explain off, fix_encoding off): the fixers in
    ftfy's order, repeated until a whole pass changes nothing."""
    if unescape == "auto" and "<" in text:
        unescape = False
    while True:
        before = text
        if unescape:  # True or "auto"
            text = ftfy_unescape_html(text)
        text = fix_c1_controls(text)
        text = text.translate(LIGATURES)
        text = text.translate(WIDTH_TABLE)
        text = text.translate(QUOTES_TABLE)
        text = fix_line_breaks(text)
        text = fix_surrogates(text)
        text = ANSI_RE.sub("", text)
        text = text.translate(CONTROL_TABLE)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def ftfy_subset(text, max_segment=1_000_000):
    """ftfy.fix_text: segments end after each '\\n' (or every max_segment code points); once a
    segment contains '<', HTML unescaping stays off for it and every later segment."""
    unescape = "auto"
    out, pos = [], 0
    while pos < len(text):
        end = text.find("\n", pos) + 1
        if end == 0:
            end = len(text)
        if end - pos > max_segment:
            end = pos + max_segment
        segment = text[pos:end]
        if unescape == "auto" and "<" in segment:
            unescape = False
        out.append(ftfy_segment(segment, unescape))
        pos = end
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# The two conventions' clean-up and pre-tokenizers

WS_RE = regex.compile(r"\s+")
TAIL = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
OAI_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
OC_SPECIALS = ("<start_of_text>", "<end_of_text>")
OAI_PAT = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|" + TAIL, regex.IGNORECASE)
OC_PAT = regex.compile(r"<start_of_text>|<end_of_text>|" + TAIL, regex.IGNORECASE)
HF_SPLIT = stdre.compile(r"<\|startoftext\|>|<\|endoftext\|>")


def whitespace_clean(text):
    return WS_RE.sub(" ", text).strip()


def clean_open_clip(text):
    text = ftfy_subset(text)
    text = html.unescape(html.unescape(text)).strip()
    return whitespace_clean(text).lower()


def clean_hf_piece(piece):
    return whitespace_clean(ftfy_subset(piece)).lower()


def hf_split(text):
    """The slow tokenizer's added-token split: ('special', token) and ('text', piece) items."""
    items, pos = [], 0
    for m in HF_SPLIT.finditer(text):
        if m.start() > pos:
            items.append(("text", text[pos:m.start()]))
        items.append(("special", m.group(0)))
        pos = m.end()
    if pos < len(text):
        items.append(("text", text[pos:]))
    return items


# ----------------------------------------------------------------------------------------------
# Vocabulary and BPE


def read_merges(path):
    """Merges from an OpenAI .txt.gz or an HF merges.txt: line 0 is a header; lines 1..48,894
    (or as many as there are) are 'a b' pairs. A trailing empty line is not a merge."""
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
    else:
        with open(path, encoding="utf-8") as f:
            lines = f.read().strip().split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    merges = [tuple(line.split()) for line in lines[1:1 + MAX_MERGES]]
    for m in merges:
        assert len(m) == 2, m
    return merges


class Bpe:
    def __init__(self, merges):
        self.tokens = list(BYTE_ORDER) + [s + "</w>" for s in BYTE_ORDER]
        self.tokens += [a + b for a, b in merges]
        self.tokens += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {t: i for i, t in enumerate(self.tokens)}
        assert len(self.encoder) == len(self.tokens), "duplicate token in the vocabulary"
        self.rank = {m: i for i, m in enumerate(merges)}
        self.size = len(self.tokens)
        self.sot, self.eot = self.size - 2, self.size - 1
        self.cache = {}

    def bpe(self, symbols):
        """symbols: the pre-token as byte symbols. Returns the merged symbols."""
        word = list(symbols[:-1]) + [symbols[-1] + "</w>"]
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = self.rank.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode_pretoken(self, tok):
        ids = self.cache.get(tok)
        if ids is None:
            symbols = "".join(BYTE_SYMBOL[b] for b in tok.encode("utf-8"))
            ids = [self.encoder[s] for s in self.bpe(symbols)]
            self.cache[tok] = ids
        return ids

    def encode_open_clip_content(self, text):
        ids = []
        for tok in OC_PAT.findall(clean_open_clip(text)):
            if tok == OC_SPECIALS[0]:
                ids.append(self.sot)
            elif tok == OC_SPECIALS[1]:
                ids.append(self.eot)
            else:
                ids.extend(self.encode_pretoken(tok))
        return ids

    def open_clip(self, text):
        ids = [self.sot] + self.encode_open_clip_content(text) + [self.eot]
        if len(ids) > CONTEXT:
            ids = ids[:CONTEXT]
            ids[-1] = self.eot
        return ids

    def hf_content(self, text):
        ids = []
        for kind, piece in hf_split(text):
            if kind == "special":
                ids.append(self.sot if piece == OAI_SPECIALS[0] else self.eot)
                continue
            for tok in OAI_PAT.findall(clean_hf_piece(piece)):
                # the tokenizer's BPE cache holds the two specials; their byte symbols are the
                # same characters, so a pre-token equal to one of them is that special's id
                if tok == OAI_SPECIALS[0]:
                    ids.append(self.sot)
                elif tok == OAI_SPECIALS[1]:
                    ids.append(self.eot)
                else:
                    ids.extend(self.encode_pretoken(tok))
        return ids

    def hf(self, text):
        return [self.sot] + self.hf_content(text)[:CONTEXT - 2] + [self.eot]


def pad(ids, convention, eot):
    return ids + [0 if convention == "open_clip" else eot] * (CONTEXT - len(ids))


# ----------------------------------------------------------------------------------------------
# The tiny vocabulary: a deterministic byte-level BPE over CORPUS

CORPUS = """
A photo of a cat sitting on a wooden table next to a cup of coffee. A close-up photograph of a
small dog running across a green field in the morning light. Two children playing with a red
ball on a sandy beach at sunset. An astronaut riding a white horse on the surface of the moon,
digital art, highly detailed. A bowl of fresh fruit on a kitchen counter: apples, oranges,
bananas and grapes. The city skyline at night, with bright lights reflected in the river. A
portrait of an old man with a long white beard, wearing a hat, oil painting. A mountain lake
surrounded by pine trees under a clear blue sky. A cat and a dog sleeping together on a sofa.
A black and white photo of a street in Paris in the rain. A plate of pasta with tomato sauce
and basil. A red sports car parked in front of a modern house. A watercolor painting of a
lighthouse on a rocky coast. A group of people walking through a market full of flowers. A
bird sitting on a branch, photographed with a telephoto lens. An illustration of a dragon
flying over a castle, fantasy art, 4k, trending on artstation. It's a sunny day and the cats
are playing in the garden; they're happy, aren't they? I'm sure we'll see them again, don't
you think? A photo of the Eiffel Tower at night. Three cups of tea on a tray. A close-up of a
flower with drops of water on its petals. A painting of a woman reading a book by the window.
A portrait photo of a smiling girl with curly hair, 85mm lens, soft light, bokeh. A cozy
living room with a fireplace, a couch and a large window. The photo shows a cat, a dog and a
bird. A white cat with blue eyes looking at the camera. A small wooden boat on a calm lake at
dawn. An old bicycle leaning against a brick wall. A plate of sushi and a pair of chopsticks.
Caf\u00e9 au lait and cr\u00e8me br\u00fbl\u00e9e in a small caf\u00e9 in Montr\u00e9al; a
na\u00efve pi\u00f1ata at the fa\u00e7ade; Stra\u00dfe in M\u00fcnchen, \u00c5ngstr\u00f6m.
\u732b \u72ac \u5199\u771f \u6771\u4eac \u5c71 \u6c34 \u3053\u3093\u306b\u3061\u306f \u732b\u306e\u5199\u771f
\uace0\uc591\uc774 \uc0ac\uc9c4 \u043a\u043e\u0448\u043a\u0430 \u0444\u043e\u0442\u043e
\u03b3\u03ac\u03c4\u03b1 \u0642\u0637\u0629 \u092c\u093f\u0932\u094d\u0932\u0940 \U0001f431 \U0001f436
"""


def corpus_words():
    counts = Counter()
    for tok in OAI_PAT.findall(clean_hf_piece(CORPUS)):
        counts["".join(BYTE_SYMBOL[b] for b in tok.encode("utf-8"))] += 1
    return counts


def train_tiny_bpe(n_merges=TINY_MERGES):
    """Each word is its byte symbols with '</w>' on the last one, weighted by its count. Each
    step merges the adjacent pair with the highest total count (ties: the smallest pair in
    Python's (str, str) order); a pair whose concatenation is already a token is never chosen,
    so that every token is distinct."""
    words = {}
    for w, c in corpus_words().items():
        symbols = tuple(w[:-1]) + (w[-1] + "</w>",)
        words[symbols] = words.get(symbols, 0) + c
    known = set(BYTE_ORDER) | {s + "</w>" for s in BYTE_ORDER}
    merges = []
    while len(merges) < n_merges:
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        candidates = [(-c, p) for p, c in pairs.items() if p[0] + p[1] not in known]
        if not candidates:
            raise SystemExit("tiny BPE: the corpus ran out of pairs after %d merges" % len(merges))
        _, best = min(candidates)
        merges.append(best)
        known.add(best[0] + best[1])
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == best[0] and w[i + 1] == best[1]:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def tiny_files(merges):
    hf_merges = "#version: 0.2\n" + "".join("%s %s\n" % m for m in merges)
    oai_text = "bpe_tiny_vocab.txt#version: 0.2\n" + "".join("%s %s\n" % m for m in merges)
    oai_gz = gzip.compress(oai_text.encode("utf-8"), compresslevel=9, mtime=0)
    vocab = Bpe(merges).encoder
    vocab_json = json.dumps(vocab, ensure_ascii=False, sort_keys=True)
    return {"merges.txt": hf_merges.encode("utf-8"), "vocab.json": vocab_json.encode("utf-8"),
            "bpe_tiny_vocab.txt.gz": oai_gz}


# ----------------------------------------------------------------------------------------------
# The prompt set

LONG_CAPTION = (
    "A breathtaking panoramic photograph of an ancient stone castle perched on a rugged cliff "
    "above a stormy sea, dramatic clouds swirling overhead, golden hour sunlight breaking "
    "through, waves crashing against the rocks below, seagulls circling the towers, moss and "
    "ivy climbing the weathered walls, a narrow winding path leading up to the heavy wooden "
    "gate, lanterns glowing in the windows, ultra detailed, 8k resolution, cinematic lighting, "
    "volumetric fog, masterpiece, award winning, trending on artstation, sharp focus, by a "
    "famous landscape photographer, shot on a medium format camera with a wide angle lens")

PROMPTS = [
    # clip-text.md section 1.8
    "a photo of a cat",
    "A Photo Of A Cat!!",
    "! !! !!!",
    "",
    "don't stop, it's 2024",
    "astronaut riding a horse on mars, 8k",
    "a cat & a dog",
    "<3 &amp; you",
    "New-York's 5th Ave.",
    "  multiple   spaces\tand\nnewline ",
    "a " * 100,
    # plain ASCII
    "hello!",
    "A DOG, A CAT; A BIRD: all in one frame.",
    "(masterpiece:1.2), best quality, ultra-detailed, 4k, [blurry:0.5]",
    "photo_of_a_cat",
    "e-mail me at someone@example.com #hashtag $100 50% off ~tilde~ ^caret^ `tick` {b} [c] |p| \\x",
    "https://example.com/path?x=1&y=2#frag",
    "a",
    ".",
    "'",
    "''",
    "     ",
    "\t\n\r\n \x0c",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ThisIsCamelCaseTextWithoutSpaces",
    "cat,dog,bird;fish:cow",
    "1girl, solo, long hair, looking at viewer",
    "!?!?.,;:--==++**//",
    "a.b.c.d e...f !!!a",
    # apostrophes and contractions
    "it's",
    "It'S A CAT'S TOY, ISN'T IT",
    "don't won't can't shan't y'all",
    "we're they've I'm you'll he'd",
    "'s 's 't 're start",
    "''s",
    "cat''s",
    "rock 'n' roll",
    "the cats' toys",
    "o'clock, rock'n'roll, ma'am",
    "'ll'll'll",
    "it\u2019s a cat\u2019s life",
    "\u2018single\u2019 and \u201cdouble\u201d quotes",
    "\u201breversed\u201f \u201elow\u201c \u201alow\u2018",
    "modifier apostrophe: it\u02bcs",
    "it`s and it\u00b4s",
    "it'\u017f a long s",
    "'\u017ft 'S 'T",
    "Don'T Do'nt",
    # numbers
    "2024",
    "3.14",
    "1,000,000 and -42 and 1e10",
    "\u00bd cup, \u00bc inch, \u00be",
    "x\u00b2 + y\u00b3 = z\u00b9",
    "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669 Arabic-Indic digits",
    "\u0967\u0968\u0969 \u0926\u0947\u0935\u0928\u093e\u0917\u0930\u0940 digits",
    "\u216b roman numeral \u2163 \u2177",
    "\u2460\u2461\u2462 circled",
    "\uff11\uff12\uff13 fullwidth digits",
    "\U0001d7d9\U0001d7da\U0001d7db math digits",
    # accents, composed and decomposed, combining marks
    "caf\u00e9",
    "cafe\u0301",
    "CAF\u00c9",
    "CAFE\u0301",
    "na\u00efve r\u00e9sum\u00e9 fa\u00e7ade jalape\u00f1o",
    "\u00c5ngstr\u00f6m \u00d8resund \u00c6sir",
    "Cr\u00e8me br\u00fbl\u00e9e \u00e0 la mode",
    "Dvo\u0159\u00e1k \u0141\u00f3d\u017a Krak\u00f3w",
    "Nguy\u1ec5n Vi\u1ec7t Nam ph\u1edf",
    "a\u0308\u0304 and q\u0307\u0323",
    "x\u0300\u0301\u0302\u0303 stacked marks",
    "\u0301 leading combining mark",
    "e\u0301\u0301",
    "Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d\u0308\u0307l\u036e\u0312\u036bg\u030c\u0317\u035a\u031ao\u0319\u0314\u036e\u0307\u0350\u0307",
    "\u1fbc \u1fb3 \u03b1\u0345 Greek iota subscript",
    "a\u0345b \u0345 x\u0345",
    "\u212a Kelvin \u212b Angstrom \u2126 ohm",
    # case mapping
    "\u0130stanbul",
    "ISTANBUL \u0131stanbul I\u0307",
    "\u039f\u0394\u039f\u03a3 \u039f\u0394\u039f\u03a3.",
    "\u03a3\u0391\u03a3 \u03a3 A\u03a3'",
    "Stra\u00dfe STRASSE \u1e9e",
    "\u01c5ungla \u01c8 \u01cb \u01c4 \u01f2",
    "\u0132SSELMEER \u0133s",
    "\ufb01sh \ufb02ower o\ufb03ce ba\ufb04e \ufb00 \ufb05 \ufb06",
    "\u0149 Afrikaans",
    "\u24b6\u24d1 circled letters",
    # scripts
    "\u732b\u306e\u5199\u771f",
    "\u4e00\u53ea\u732b \u5728 \u684c\u5b50\u4e0a",
    "\u6771\u4eac\u30bf\u30ef\u30fc \u591c\u666f",
    "\uff76\uff80\uff76\uff85 \uff8a\uff9e\uff76 \uff8a\uff9f\uff9d",
    "\u3072\u3089\u304c\u306a \u304b\u3099",
    "\ud55c\uad6d\uc5b4 \uace0\uc591\uc774 \uc0ac\uc9c4",
    "\u1100\u1161\u11a8 conjoining jamo",
    "\uffa1\uffa2\uffc2 halfwidth hangul",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0642\u0637\u0629 \u0639\u0644\u0649 \u0627\u0644\u0633\u062c\u0627\u062f\u0629 \u0662\u0660\u0662\u0664",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0416\u0418\u041a",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8",
    "cat\u732b\u043a\u043e\u0442\u0642\u0637\u0629",
    "\U0002000b\U0002123d rare CJK",
    # emoji
    "\U0001f431 cat emoji",
    "\U0001f600\U0001f603\U0001f604",
    "\U0001f44d\U0001f3fd thumbs up",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f3f3\ufe0f\u200d\U0001f308 rainbow flag",
    "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5 flags",
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Scotland",
    "\u2764\ufe0f vs \u2764\ufe0e",
    "1\ufe0f\u20e3 keycap",
    "cat\U0001f431dog\U0001f436",
    "\u2603\u2605\u2606\u2665",
    "party at the end \U0001f389",
    # HTML entities
    "&amp;",
    "&amp;amp;",
    "&amp;amp;amp;lt;",
    "&amp",
    "AT&T and R&D",
    "&lt;b&gt;bold&lt;/b&gt;",
    "<b>&amp;</b>",
    "&foo; unknown entity",
    "&AMP; &LT; &EACUTE; &NTILDE; &nTILDE; &SZLIG;",
    "&eacute;&Eacute;&EACUTE;",
    "&#233; &#xE9; &#XE9; &#x00e9;",
    "&#128512; &#x1F600;",
    "&#0; &#1; &#x80; &#133; &#x9F; &#xD800; &#1114112;",
    "&#59; &#x3b; &semi;",
    "&#65abc; &#x; &#; &#65",
    "&nbsp;non&nbsp;breaking",
    "&hellip; &mdash; &ndash; &lsquo;q&rsquo; &ldquo;dq&rdquo;",
    "&notin; &not &notit;",
    "&ampxyz &ltx",
    "&CounterClockwiseContourIntegral; long name",
    "&frac12; &sup2; &there4;",
    "&lt;3 with no angle bracket",
    "line one &amp;\n<html> line two &amp;",
    "<tag> first line\nsecond &amp; line",
    "a < b &amp; c",
    "&amp;lt;script&amp;gt;",
    "&NotEqualTilde; &nGt;",
    "&AElig; &AELIG; &aelig; &Amp;",
    "&#13 &#12 &#11 &#x85 &#x1c",
    "cafe&#769; cafe&#769 &#xFEFF",
    "&lt;b&gt;&amp;amp;",
    "one &amp;\rtwo <three>",
    "one &amp;\ntwo <three>",
    "&am\np; split entity",
    # whitespace and control characters
    "tab\tseparated\tvalues",
    "crlf\r\nline\rcr",
    "nbsp\u00a0here",
    "ideographic\u3000space",
    "zero\u200bwidth\u200bspace",
    "zwnj\u200cand zwj\u200d",
    "line\u2028separator\u2029para",
    "next\u0085line",
    "soft\u00adhyphen",
    "bom\ufeffinside",
    "\ufeffleading bom",
    "bell\x07 null\x00 esc\x1b vt\x0b ff\x0c del\x7f",
    "\x1b[31mred\x1b[0m text",
    "\x1b[1;32;40mgreen\x1b[m",
    "\x1b[\u0663\u0661mdigits\x1b[0m",
    "\x1b]0;title\x07 osc sequence",
    "\x1b[31 incomplete",
    "c1 controls \x80\x81\x8d\x8f\x90\x9d\x9f",
    "\x96 en dash via c1 \x93quoted\x94",
    "\u206a deprecated arabic control \u206f",
    "\ufff9annotation\ufffb \ufffc object",
    "\ufffd replacement char",
    "en\u2002space em\u2003space thin\u2009space",
    "\u180e mongolian vowel separator",
    "\u202f narrow nbsp \u205f math space \u1680 ogham",
    "\u00a0\u3000\u2003 \u2028",
    "RTL mark \u200f and LRM \u200e, embedding \u202bxyz\u202c",
    "\u2066isolate\u2069",
    "tag chars \U000e0041\U000e0042",
    "private use \ue000\uf8ff",
    "variation selector a\ufe0f",
    # fullwidth and halfwidth
    "\uff21\uff22\uff23 \uff41\uff42\uff43",
    "\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33\uff01",
    "\uff1c\uff5cendoftext\uff5c\uff1e",
    "\uffe0\uffe1\uffe2\uffe3\uffe4\uffe5\uffe6",
    "\uff5f\uff60\uff61\uff62\uff63\uff64\uff65",
    "\uff35\uff80\uff70\uff9d",
    # the special tokens as text
    "<|startoftext|>",
    "<|endoftext|>",
    "a cat<|endoftext|>a dog",
    "a cat <|endoftext|> a dog",
    "<|ENDOFTEXT|>",
    "<|EndOfText|> <|StartOfText|>",
    "<start_of_text>",
    "<end_of_text>",
    "<START_OF_TEXT> text <End_Of_Text>",
    "<|startoftext|><|endoftext|><start_of_text><end_of_text>",
    "<|endoftext| |endoftext|> < |endoftext| >",
    "<|\u017ftartoftext|> <\u017ftart_of_text>",
    "<|endoftext|> &amp; <b>",
    "&lt;|endoftext|&gt;",
    "&lt;end_of_text&gt;",
    "a " * 74 + "<|endoftext|>",
    "a " * 76 + "<|endoftext|> b",
    # lengths around the context window (content tokens: 73..78 of 'a')
    "a " * 73,
    "a " * 74,
    "a " * 75,
    "a " * 76,
    "a " * 77,
    "a " * 78,
    "a " * 74 + "antidisestablishmentarianism",
    "photograph " * 40,
    LONG_CAPTION,
    LONG_CAPTION.upper(),
    "!" * 200,
    "\U0001f431" * 40,
    "a, " * 40,
    # mojibake: FTFY_SUBSET leaves these; real ftfy's fix_encoding would repair them
    "mojibake caf\u00c3\u00a9 au lait",
    "\u00e2\u20ac\u0153smart quotes\u00e2\u20ac\x9d broken",
    "caf&Atilde;&copy; entity mojibake",
    "\u00f0\u0178\u02dc\u20ac emoji mojibake",
]

# Prompts whose result under real ftfy 6.3.1 would differ (fix_encoding), by index: the last
# four. Judged with --report's screen (only text that a single-byte codec can turn into
# UTF-8-shaped bytes can change) and, for every prompt it flags, by hand against ftfy's
# badness.BADNESS_RE: the others it flags are not is_bad (fix_encoding returns at once), or
# is_bad but not re-encodable (the fullwidth-symbol prompt), or take fix_encoding's Latin-1 ->
# Windows-1252 / fix_c1_controls path, which maps C1 controls exactly as FTFY_SUBSET does.
MOJIBAKE_DIVERGENT = [len(PROMPTS) - 4, len(PROMPTS) - 3, len(PROMPTS) - 2, len(PROMPTS) - 1]

# ----------------------------------------------------------------------------------------------
# JSON output


def json_string(s):
    """A JSON string with every character that is not plainly visible escaped as \\uXXXX."""
    out = ['"']
    for c in s:
        cp = ord(c)
        cat = unicodedata.category(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif (cp < 0x20 or 0x7F <= cp <= 0xA0 or cat in ("Mn", "Me", "Mc", "Cf", "Zs", "Zl", "Zp",
              "Co", "Cs", "Cn", "Cc") or c == "\u00ad") and c != " ":
            if cp > 0xFFFF:
                v = cp - 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)))
            else:
                out.append("\\u%04x" % cp)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def render_json(doc):
    lines = ["{"]
    lines.append('"about": %s,' % json_string(doc["about"]))
    lines.append('"context_length": %d,' % doc["context_length"])
    lines.append('"pad": %s,' % json.dumps(doc["pad"]))
    lines.append('"vocabs": %s,' % json.dumps(doc["vocabs"], sort_keys=True))
    for key in ("prompts", "ftfy_subset", "clean_open_clip"):
        lines.append('"%s": [' % key)
        items = doc[key]
        for i, s in enumerate(items):
            lines.append(json_string(s) + ("," if i + 1 < len(items) else ""))
        lines.append("],")
    lines.append('"mojibake_divergent": %s,' % json.dumps(doc["mojibake_divergent"]))
    lines.append('"with_nul": %s,' % json.dumps(doc["with_nul"]))
    lines.append('"cases": [')
    for i, c in enumerate(doc["cases"]):
        lines.append('{"prompt": %d, "vocab": "%s", "convention": "%s", "ids": [%s]}%s' % (
            c["prompt"], c["vocab"], c["convention"], ",".join(map(str, c["ids"])),
            "," if i + 1 < len(doc["cases"]) else ""))
    lines.append("]")
    lines.append("}")
    return ("\n".join(lines) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Self-checks


SECTION_1_8 = [
    ("a photo of a cat", "49406 320 1125 539 320 2368 49407"),
    ("A Photo Of A Cat!!", "49406 320 1125 539 320 2368 748 49407"),
    ("! !! !!!", "49406 256 748 995 49407"),
    ("", "49406 49407"),
    ("don't stop, it's 2024", "49406 847 713 1691 267 585 568 273 271 273 275 49407"),
    ("astronaut riding a horse on mars, 8k", "49406 18376 6765 320 4558 525 7496 267 279 330 49407"),
    ("a cat & a dog", "49406 320 2368 261 320 1929 49407"),
    ("<3 &amp; you", "49406 283 274 261 592 49407"),
    ("New-York's 5th Ave.", "49406 686 268 2705 568 276 640 4860 269 49407"),
    ("  multiple   spaces\tand\nnewline ", "49406 6470 9006 537 1218 1148 49407"),
    ("a " * 100, " ".join(["49406"] + ["320"] * 75 + ["49407"])),
]


def check(cond, what):
    if not cond:
        raise SystemExit("SELF-CHECK FAILED: " + what)


def self_check_ftfy():
    # documented behaviour of ftfy 6.3.1 (its docstrings and tests), less fix_encoding
    cases = [
        ("&lt;tag&gt;", "<tag>"),
        ("<em>HTML entities &lt;3</em>", "<em>HTML entities &lt;3</em>"),
        ("&amp;\n<html>\n&amp;", "&\n<html>\n&amp;"),
        ("P&EACUTE;REZ", "P\u00c9REZ"),
        ("BUNDESSTRA&SZLIG;E", "BUNDESSTRASSE"),
        ("&ntilde; &Ntilde; &NTILDE; &nTILDE;", "\u00f1 \u00d1 \u00d1 &nTILDE;"),
        ("&Jscr;ohn &HilbertSpace;ancock", "\U0001d4a5ohn \u210bancock"),
        ("\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33", "LOUD NOISES"),
        ("\uff35\uff80\uff70\uff9d", "U\u30bf\u30fc\u30f3"),
        ("\ufb02u\ufb03e\ufb06", "fluffiest"),
        ("Broken text&hellip; it&#x2019;s \ufb02ubberi\ufb01c!", "Broken text\u2026 it's flubberific!"),
        ("\u201chere\u2019s a test\u201d", "\"here's a test\""),
        ("\x1b[36;44mI'm blue, da ba dee da ba doo...\x1b[0m", "I'm blue, da ba dee da ba doo..."),
        ("\ufeffParty like\nit&rsquo;s 1999!", "Party like\nit's 1999!"),
        ("Content-type: text/plain\r\n\r\nHi.", "Content-type: text/plain\n\nHi."),
        ("&amp;amp;", "&"),
        ("", ""),
    ]
    for src, want in cases:
        got = ftfy_subset(src)
        check(got == want, "ftfy_subset(%r) = %r, want %r" % (src, got, want))
    check(len(ftfy_subset("\ufb01" * 100000)) == 200000, "ligature expansion length")


def self_check_full(bpe, clip_dir):
    with open(os.path.join(clip_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    check(bpe.size == 49408, "full vocabulary size %d" % bpe.size)
    check(vocab == bpe.encoder, "vocab.json differs from the vocabulary rebuilt from the merges")
    check(bpe.encoder["jekyll</w>"] == 49405 and bpe.encoder["in"] == 512, "well-known ids")
    for prompt, want in SECTION_1_8:
        got = " ".join(map(str, bpe.open_clip(prompt)))
        check(got == want, "open_clip %r: %s, want %s" % (prompt, got, want))
    for prompt in ("a photo of a cat",):
        want = [49406, 320, 1125, 539, 320, 2368, 49407]
        check(bpe.open_clip(prompt) == want and bpe.hf(prompt) == want, "a photo of a cat")
    check(bpe.open_clip("hello!") == [49406, 3306, 256, 49407], "hello!")


def self_check_tiny(tiny_dir):
    merges_hf = read_merges(os.path.join(tiny_dir, "merges.txt"))
    merges_oai = read_merges(os.path.join(tiny_dir, "bpe_tiny_vocab.txt.gz"))
    check(merges_hf == merges_oai and len(merges_hf) == TINY_MERGES, "tiny merges: two layouts")
    bpe = Bpe(merges_hf)
    with open(os.path.join(tiny_dir, "vocab.json"), encoding="utf-8") as f:
        check(json.load(f) == bpe.encoder, "tiny vocab.json differs from the rebuilt vocabulary")
    check(bpe.size == 1000 and bpe.sot == 998 and bpe.eot == 999, "tiny vocabulary size")
    return bpe


# ----------------------------------------------------------------------------------------------
# Analysis (--report)

SINGLE_BYTE = ["latin-1", "cp1252", "cp1251", "cp1250", "cp1253", "cp1254", "cp1257",
               "iso8859_2", "mac_roman", "cp437"]
# a UTF-8 lead byte and its continuation bytes, where a space may stand for byte A0
# (restore_byte_a0) and '?' or byte 1A for a lost byte (replace_lossy_sequences)
UTF8_LIKE = stdre.compile(rb"[\xc2-\xdf][\x80-\xbf \x1a?]|[\xe0-\xef][\x80-\xbf \x1a?]{2}"
                          rb"|[\xf0-\xf4][\x80-\xbf \x1a?]{3}")


def _reverse_codec(name):
    rev = {}
    for b in range(256):
        try:
            c = bytes([b]).decode(name)
        except UnicodeDecodeError:
            c = chr(b)  # ftfy's "sloppy" codecs pass undefined bytes through
        rev.setdefault(c, b)
    if name.startswith("cp125"):
        rev["\ufffd"] = 0x1A  # how the sloppy codecs encode U+FFFD
    return rev


REVERSE = {name: _reverse_codec(name) for name in SINGLE_BYTE}


def mojibake_screen(text):
    """Runs of characters that one of ftfy's single-byte encodings can encode and whose bytes
    hold something shaped like a multi-byte UTF-8 sequence (UTF8_LIKE): the only material
    fix_encoding can change, besides C1 controls, which it maps as FTFY_SUBSET's
    fix_c1_controls does. A necessary condition only: ftfy also needs is_bad(text)."""
    found = []
    for name, rev in REVERSE.items():
        runs, run = [], bytearray()
        for c in text:
            b = rev.get(c)
            if b is None:
                runs.append(bytes(run))
                run = bytearray()
            else:
                run.append(b)
        runs.append(bytes(run))
        for r in runs:
            m = UTF8_LIKE.search(r)
            if m:
                found.append((name, r.decode(name, "replace"), m.group(0)))
    return found


def report():
    changed = [i for i, p in enumerate(PROMPTS) if ftfy_subset(p) != p]
    changed_hf = [i for i, p in enumerate(PROMPTS)
                  if any(k == "text" and ftfy_subset(s) != s for k, s in hf_split(p))]
    print("prompts: %d" % len(PROMPTS))
    print("FTFY_SUBSET changes the whole prompt (open_clip input): %d" % len(changed))
    print("FTFY_SUBSET changes some HF piece: %d" % len(changed_hf))
    for i in changed:
        print("  %3d %s -> %s" % (i, json_string(PROMPTS[i]), json_string(ftfy_subset(PROMPTS[i]))))
    # sensitivity of the hf convention to a pre-lowercasing of the raw text outside the two
    # specials (what HF's tokenize() would do if the tokenizer had a true `do_lower_case`
    # attribute; CLIPTokenizer has none, the config's "do_lower_case": true is not applied)
    clip_dir = find_clip_dir(None)
    if clip_dir is not None:
        bpe = Bpe(read_merges(os.path.join(clip_dir, "bpe_simple_vocab_16e6.txt.gz")))
        lowered = []
        for i, p in enumerate(PROMPTS):
            pre = "".join(piece if kind == "special" else piece.lower() for kind, piece in hf_split(p))
            if bpe.hf(pre) != bpe.hf(p):
                lowered.append(i)
        print("hf ids that a pre-lowercasing of the raw text would change: %s" % lowered)
    print("mojibake screen (raw prompt and FTFY_SUBSET output):")
    for i, p in enumerate(PROMPTS):
        hits = mojibake_screen(p) + mojibake_screen(ftfy_subset(p))
        if hits:
            names = sorted(set(h[0] for h in hits))
            print("  %3d %s: %s %s" % (i, json_string(p), ",".join(names),
                                       sorted(set(h[2] for h in hits))))


# ----------------------------------------------------------------------------------------------


def find_clip_dir(arg):
    for d in ([arg] if arg else []) + [os.path.join(os.path.dirname(REPO), "shared", "data", "clip"),
                                       "/work/shared/data/clip"]:
        if d and os.path.isfile(os.path.join(d, "bpe_simple_vocab_16e6.txt.gz")):
            return d
    return None


def build_doc(tiny, full):
    cases = []
    for i, p in enumerate(PROMPTS):
        for vocab_name, bpe in (("tiny", tiny), ("full", full)):
            if bpe is None:
                continue
            cases.append({"prompt": i, "vocab": vocab_name, "convention": "open_clip",
                          "ids": bpe.open_clip(p)})
            cases.append({"prompt": i, "vocab": vocab_name, "convention": "hf", "ids": bpe.hf(p)})
    vocabs = {"tiny": {"size": tiny.size, "sot": tiny.sot, "eot": tiny.eot,
                       "files": "tests/ref/data/tiny_bpe/{merges.txt,vocab.json,bpe_tiny_vocab.txt.gz}"}}
    if full is not None:
        vocabs["full"] = {"size": full.size, "sot": full.sot, "eot": full.eot,
                          "files": "../shared/data/clip/{bpe_simple_vocab_16e6.txt.gz,merges.txt,vocab.json}"}
    return {
        "about": "CLIP tokenizer reference ids; generated by tests/ref/clip_tokenizer_ref.py "
                 "(see its docstring for the layout); do not edit",
        "context_length": CONTEXT,
        "pad": {"open_clip": 0, "hf": "eot"},
        "vocabs": vocabs,
        "prompts": PROMPTS,
        "ftfy_subset": [ftfy_subset(p) for p in PROMPTS],
        "clean_open_clip": [clean_open_clip(p) for p in PROMPTS],
        "mojibake_divergent": MOJIBAKE_DIVERGENT,
        "with_nul": [i for i, p in enumerate(PROMPTS) if "\0" in p],
        "cases": cases,
    }


def write_or_compare(path, data, check_only):
    old = None
    if os.path.exists(path):
        with open(path, "rb") as f:
            old = f.read()
    if check_only:
        if old != data:
            print("DIFFERS: %s" % os.path.relpath(path, REPO))
            return False
        return True
    if old != data:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        print("wrote %s (%d bytes)" % (os.path.relpath(path, REPO), len(data)))
    return True


def dump_entities(path):
    """Two tables, one line each entry, 'TABLE<TAB>KEY<TAB>VALUE' with the value as upper-case
    hex code points separated by spaces, sorted by key (Python str order):
    'ftfy' = ftfy's unescape_html table (keys '&name;'), 'html5' = html.entities.html5 (keys as
    html.unescape looks them up: the name without '&', with or without the ';')."""
    lines = []
    for k in sorted(FTFY_ENTITIES):
        lines.append("ftfy\t%s\t%s\n" % (k, " ".join("%X" % ord(c) for c in FTFY_ENTITIES[k])))
    for k in sorted(html.entities.html5):
        lines.append("html5\t%s\t%s\n" % (k, " ".join("%X" % ord(c) for c in html.entities.html5[k])))
    data = "".join(lines).encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)
    print("%s: %d ftfy + %d html5 entries, sha256 %s" % (
        path, len(FTFY_ENTITIES), len(html.entities.html5), hashlib.sha256(data).hexdigest()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="only the tiny vocabulary files")
    ap.add_argument("--check", action="store_true", help="recompute and compare; write nothing")
    ap.add_argument("--report", action="store_true", help="FTFY_SUBSET and mojibake analysis")
    ap.add_argument("--dump-entities", metavar="FILE", help="write ftfy's and html5's entity tables")
    ap.add_argument("--clip-dir", help="folder with the real CLIP vocabulary files")
    ap.add_argument("--no-full", action="store_true",
                    help="act as if the real vocabulary were absent (with --check: tiny cases only)")
    args = ap.parse_args()
    t0 = time.time()
    if args.dump_entities:
        dump_entities(args.dump_entities)
        return
    if args.report:
        report()
        return
    check(len(PROMPTS) == len(set(PROMPTS)), "duplicate prompts")
    check(all(unicodedata.category(c) != "Cn" for p in PROMPTS for c in p),
          "a prompt holds a code point unassigned in this Python's Unicode data")
    self_check_ftfy()

    ok = True
    merges = train_tiny_bpe()
    for name, data in tiny_files(merges).items():
        ok &= write_or_compare(os.path.join(TINY_DIR, name), data, args.check)
    if not args.check:
        tiny = self_check_tiny(TINY_DIR)
    else:
        tiny = Bpe(merges)
    if args.tiny:
        print("tiny vocabulary: %s (%.1f s)" % ("ok" if ok else "DIFFERS", time.time() - t0))
        sys.exit(0 if ok else 1)

    clip_dir = None if args.no_full else find_clip_dir(args.clip_dir)
    full = None
    if clip_dir is not None:
        full_oai = Bpe(read_merges(os.path.join(clip_dir, "bpe_simple_vocab_16e6.txt.gz")))
        full_hf = Bpe(read_merges(os.path.join(clip_dir, "merges.txt")))
        check(full_oai.tokens == full_hf.tokens, "the two layouts of the full vocabulary differ")
        self_check_full(full_oai, clip_dir)
        full = full_oai
    elif not args.check:
        raise SystemExit("no CLIP vocabulary found (../shared/data/clip); use --clip-dir, --tiny "
                         "or --check")
    doc = build_doc(tiny, full)
    if full is None:  # --check without the real vocabulary: compare the tiny cases only
        with open(JSON_PATH, encoding="utf-8") as f:
            old = json.load(f)
        old_tiny = [c for c in old["cases"] if c["vocab"] == "tiny"]
        same = old_tiny == doc["cases"] and old["prompts"] == PROMPTS
        print("tiny cases %s (full vocabulary absent, its cases not checked)" %
              ("ok" if same else "DIFFER"))
        ok &= same
    else:
        ok &= write_or_compare(JSON_PATH, render_json(doc), args.check)
        check(json.loads(render_json(doc))["prompts"] == PROMPTS, "JSON round trip of the prompts")
    print("%d prompts, %d cases, self-checks passed%s (%.1f s)" % (
        len(PROMPTS), len(doc["cases"]), "" if not args.check else
        ", files up to date" if ok else ", files DIFFER", time.time() - t0))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
