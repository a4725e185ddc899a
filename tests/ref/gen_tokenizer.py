#!/usr/bin/env python3
"""An independent reference of the CLIP tokenizer, written from the description
in shared/spec/SD_FACTS.md section 3.3 with the standard library only, and the
writer of tests/ref/tokenizer_cases.txt, which tests/test_tokenizer.c reads.

    python3 tests/ref/gen_tokenizer.py [--merges bpe_simple_vocab_16e6.txt.gz] [--out PATH|-]
(the defaults: the bundled assets/clip copy, and tests/ref/tokenizer_cases.txt;
`make fixtures` runs it too).

Python's re has no \\p{L}, so the split pattern
    <\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+
(case-insensitive) is emulated by a scanner over unicodedata categories. When
the third-party `regex` module is importable, every case is also split with the
real pattern and the two must agree (texts with characters whose category
differs between regex's Unicode version and unicodedata's are not compared).

Text cleaning as the reference tokenizers do it, minus ftfy's repairs (not
reproduced): NFC (ftfy's last step, HF's fast tokenizer and BasicTokenizer do it
too; flag 2 turns it off), optional html.unescape twice (flag 1: OpenAI CLIP,
OpenCLIP; not HF CLIPTokenizer), then whitespace runs (str.isspace) to one
space, strip, str.lower().
Input bytes are decoded as UTF-8 with errors="replace", as a C caller's bytes
are by the C tokenizer.

File format, one record per line ('#' lines are comments showing the text):
    raw <flags> <hex of the UTF-8 input> : <ids without start/end>
    seq <flags> <pad id> <hex> : <77 ids>
flags: 1 html.unescape, 2 no NFC (the C tokenizer's AP_TOK_HTML_UNESCAPE, AP_TOK_NO_NFC).
"""
import argparse
import contextlib
import gzip
import html
import os
import random
import re
import unicodedata

try:
    import regex  # optional cross-check of the split scanner
except ImportError:  # pragma: no cover
    regex = None

SOT, EOT, CONTEXT = 49406, 49407, 77
N_MERGES = 49152 - 256 - 2


def byte_symbols():
    """The 256 byte symbols in id order: printable Latin-1 bytes stand for
    themselves, the other 68 bytes get code points 256, 257, ... in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    order = keep + [b for b in range(256) if b not in keep]
    cps = keep + [256 + n for n in range(256 - len(keep))]
    return order, {b: chr(cp) for b, cp in zip(order, cps)}


class Tokenizer:
    def __init__(self, path):
        with gzip.open(path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        order, self.sym = byte_symbols()
        vocab = [self.sym[b] for b in order]
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.ids = {v: i for i, v in enumerate(vocab)}
        self.rank = {m: i for i, m in enumerate(merges)}
        assert self.ids["<|endoftext|>"] == EOT

    def bpe(self, word):
        """word: list of byte symbols; the last one carries </w>."""
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.rank.get(p, float("inf")))
            if best not in self.rank:
                break
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def encode(self, data, flags):
        text = clean(data.decode("utf-8", errors="replace"), flags)
        out = []
        for tok in split(text):
            if tok in ("<|startoftext|>", "<|endoftext|>"):
                out.append(self.ids[tok])
                continue
            syms = [self.sym[b] for b in tok.encode("utf-8")]
            syms[-1] += "</w>"
            out += [self.ids.get(s, EOT) for s in self.bpe(syms)]
        return out

    def sequence(self, data, flags, pad):
        ids = self.encode(data, flags)[:CONTEXT - 2]
        seq = [SOT] + ids + [EOT]
        return seq + [pad] * (CONTEXT - len(seq))


def clean(text, flags):
    if not flags & 2:
        text = unicodedata.normalize("NFC", text)
    if flags & 1:
        text = html.unescape(html.unescape(text))
    text = re.sub(r"\s+", " ", text.strip()).strip()
    return text.lower()


# U+0345 (combining ypogegrammeni, Mn) folds to a Greek letter, and under
# IGNORECASE the regex module matches it with none of the pattern's classes, so
# findall skips it like whitespace.
UNMATCHED = {"\u0345"}


def cls(ch):
    c = unicodedata.category(ch)[0]
    if ch.isspace() or ch in UNMATCHED:
        return "S"
    return "L" if c == "L" else "N" if c == "N" else "P"


SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def same_ci(a, b):
    """The pattern is case-insensitive; after lowercasing, the only characters
    that still match a pattern letter they differ from are long s (U+017F ~ s)."""
    return a == b or (b == "s" and a == "\u017f")


def match_lit(text, i, lit):
    if i + len(lit) > len(text):
        return False
    return all(same_ci(text[i + k], lit[k]) for k in range(len(lit)))


def split(text):
    out, i, n = [], 0, len(text)
    while i < n:
        lit = next((x for x in SPECIALS + CONTRACTIONS if match_lit(text, i, x)), None)
        if lit:
            out.append(text[i:i + len(lit)])
            i += len(lit)
            continue
        k = cls(text[i])
        if k == "S":
            i += 1
            continue
        j = i + 1
        if k in "LP":
            while j < n and cls(text[j]) == k:
                j += 1
        out.append(text[i:j])
        i = j
    return out


PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def crosscheck(text):
    """Characters whose class differs between regex's Unicode version and
    unicodedata's are the C tables' (unicodedata's) business: not compared."""
    if regex is not None and all(regex_agrees(ch) for ch in text):
        got = regex.findall(PATTERN, text, regex.IGNORECASE)
        assert got == split(text), (text, got, split(text))


def regex_agrees(ch):
    """True when regex's Unicode data puts ch in the same class as unicodedata."""
    if regex is None:
        return True
    k = cls(ch)
    if regex.fullmatch(r"\p{L}", ch):
        return k == "L"
    if regex.fullmatch(r"\p{N}", ch):
        return k == "N"
    if regex.fullmatch(r"\s", ch):
        return k == "S"
    return k == "P"


FIXED = [
    # the spec's vectors
    "a photo of a cat",
    "An astronaut riding a horse on the moon.",
    "a cat's toy, 2 dogs!!",
    "",
    # punctuation, digits, apostrophes
    "hello, world! (really?) -- yes... #1 @home $5.99 100% a+b=c",
    "1234567890 3.14159 1,000,000 2nd 21st-century 4k 8K",
    "it's don't they're we've i'm you'll he'd she'S IT'S",
    "''s 's' rock'n'roll o'clock '' ' 'll'd",
    "\"quoted\" `back` [square] {curly} <angle> |pipe| \\back\\slash/",
    "a<b>c a<|b x<<|endoftext|> <|endoftext|>x",
    "a <|endoftext|> b <|startoftext|>",
    "<|STARTOFTEXT|>Hi<|EndOfText|>",
    "<|\u017ftartoftext|> it'\u017f \u017f",
    # accents, other scripts
    "caf\u00e9 na\u00efve cr\u00e8me br\u00fbl\u00e9e \u00c5ngstr\u00f6m CAF\u00c9",
    "cafe\u0301 (decomposed) CAFE\u0301 e\u0301\u0301 a\u0323\u0301 \u1e0b\u0323 \u0958 \u212b \u2126",
    "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8 \u0301abc \u0345\u0313\u03b1",
    "stra\u00dfe STRASSE \u0130stanbul \u0130 I\u0307",
    "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3 \u03a3\u0391\u03a3 \u0391\u03a3' \u0391\u03a3\u0301b",
    "\u041a\u043e\u0448\u043a\u0430 \u043d\u0430 \u041b\u0443\u043d\u0435 \u0401\u041b\u041a\u0410",
    "\u4e00\u53ea\u732b\u5728\u6708\u7403\u4e0a \u732b",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4 \u0627\u0644\u0642\u0637 \u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0663\u0664 \u00bd \u00b2 \u2163 \u2460 \uff11\uff12",
    # emoji
    "\U0001f431 cat \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
    # whitespace and case
    "  a\t\tphoto \n of   a cat  ",
    "\u3000a\u00a0photo\u2003of\u2028a\x1ccat\x85",
    "A PHOTO OF A CAT",
    # html entities (matter only with unescape)
    "&amp; &amp;amp; &lt;b&gt; &quot;hi&quot; &#39;s &#x27;s &#X41; &eacute;t&eacute;",
    "&ampfoo &amp;foo &notit; &notin; &AMP &Amp; &#128512; &#0; &#x110000; &#150; &#13; &#1;",
    "&#99999999999999999999; &#xFFFFFFFFFFFFF; &#xD800; &#; &#x; & ; &&amp;",
    "&abcdefghijklmnopqrstuvwxyzabcdefghijklm; &nbsp;&nbsp;x &NotNestedGreaterGreater; &fjlig;",
    "&ampamp; &amp\u00e9; &lt\u00e9",
    # control characters
    "a\x00b\x01c\x7fd\x1b[0m",
    # long words and prompts
    "a" * 300,
    "supercalifragilisticexpialidocious" * 5,
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    " ".join(["a photo of a cat"] * 30),
    " ".join(str(i) for i in range(60)),
]

RAW_BYTES = [
    b"\xff\xfe",
    b"caf\xc3",
    b"caf\xc3\xa9\xa9",
    b"\xed\xa0\x80 surrogate",
    b"\xc0\xaf overlong \xe0\x80\xaf",
    b"\xf0\x9f\x98 truncated \xf0\x9f",
    b"\xf4\x90\x80\x80 too big \xf8\x88\x80\x80\x80",
    b"a\x80b\xbfc",
]


def random_cases(rng, count):
    pool = (
        [chr(c) for c in range(0x20, 0x7F)] * 4
        + list("    \t\n'&;#<|>") * 3
        + [chr(c) for c in range(0xA0, 0x250)]
        + [chr(c) for c in range(0x370, 0x3D0)]
        + [chr(c) for c in range(0x400, 0x460)]
        + [chr(c) for c in range(0x300, 0x370)]
        + [chr(c) for c in range(0x4E00, 0x4E40)]
        + [chr(c) for c in range(0xAC00, 0xAC20)]
        + [chr(c) for c in range(0x1F300, 0x1F340)]
        + [chr(c) for c in range(0x2000, 0x2070)]
        + list("\u0130\u017f\u03a3\u00df\u0663\u00bd\u2163\u3000\ufffd\u200d\ufe0f")
        + [chr(c) for c in range(0x1100, 0x1113)] + [chr(c) for c in range(0x1161, 0x1176)]
        + [chr(c) for c in range(0x11A8, 0x11C3)] + [chr(c) for c in range(0xAC00, 0xAC40)]
        + list("\u0958\u212b\u2126\u0340\u0344\uf900\u1e0b\u0323\u0345\u1f00")
        + ["&amp;", "&lt", "&#39;", "&#x27;", "&eacute;", "<|endoftext|>", "'s", "'ll"]
    )
    pool = [p for p in pool if all(unicodedata.category(c) != "Cn" for c in p)]
    out = []
    for _ in range(count):
        n = rng.randrange(0, 40)
        out.append("".join(rng.choice(pool) for _ in range(n)))
    return out


def show(data):
    return repr(data.decode("utf-8", errors="replace"))[:150]


def main(path):
    tok = Tokenizer(path)
    # the spec's published vectors, checked before anything is written
    assert tok.encode(b"a photo of a cat", 0) == [320, 1125, 539, 320, 2368]
    assert tok.encode(b"An astronaut riding a horse on the moon.", 0) == [550, 18376, 6765, 320, 4558, 525, 518, 3293, 269]
    assert tok.encode(b"a cat's toy, 2 dogs!!", 0) == [320, 2368, 568, 5988, 267, 273, 3255, 748]

    rng = random.Random(1234)
    cases = [(t.encode("utf-8"), u) for t in FIXED for u in (0, 1)]
    cases += [(t.encode("utf-8"), 2) for t in FIXED if not unicodedata.is_normalized("NFC", t)]
    cases += [(b, 0) for b in RAW_BYTES]
    cases += [(t.encode("utf-8"), rng.randrange(4)) for t in random_cases(rng, 300)]
    print("# Generated by tests/ref/gen_tokenizer.py; do not edit.")
    for data, u in cases:
        text = data.decode("utf-8", errors="replace")
        crosscheck(clean(text, u))
        print("# " + show(data))
        ids = tok.encode(data, u)
        print(f"raw {u} {data.hex() or '-'} : {' '.join(map(str, ids))}")
    for t in ["a photo of a cat", "", " ".join(["a photo of a cat"] * 30), "a" * 300,
              " ".join(str(i) for i in range(80)), "&lt;3 &amp; \U0001f431"]:
        data = t.encode("utf-8")
        for u, pad in ((0, EOT), (1, 0)):
            print("# " + show(data))
            print(f"seq {u} {pad} {data.hex() or '-'} : {' '.join(map(str, tok.sequence(data, u, pad)))}")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--merges", default=os.path.join(here, "../../assets/clip/bpe_simple_vocab_16e6.txt.gz"))
    ap.add_argument("--out", default=os.path.join(here, "tokenizer_cases.txt"))
    args = ap.parse_args()
    if args.out == "-":
        main(args.merges)
    else:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f, contextlib.redirect_stdout(f):
            main(args.merges)
        os.replace(tmp, args.out)
