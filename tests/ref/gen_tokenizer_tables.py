#!/usr/bin/env python3
"""Writes src/models/tokenizer_tables.h: the Unicode and HTML tables the CLIP
tokenizer needs, from Python's own unicodedata, str.lower and html.entities.

The C tokenizer must agree with the reference tokenizers, which run on Python:
  * \\p{L} / \\p{N} of the split pattern: general categories L* and N*;
  * whitespace of the cleaning step: str.isspace (what re's \\s and str.strip use);
  * lowercasing: str.lower, including its Final_Sigma rule, which needs the
    Cased and Case_Ignorable properties. Python does not expose them, so they are
    measured through str.lower itself (see sigma_props);
  * html.unescape: the HTML5 named character references.
Run with the Python whose Unicode version the tables should carry (`make
fixtures` runs it with /usr/bin/python3; the optional `regex` module adds a check):
    python3 tests/ref/gen_tokenizer_tables.py [--out PATH|-]
which writes src/models/tokenizer_tables.h by default.
"""
import argparse
import contextlib
import os
import html.entities
import sys
import unicodedata

MAXCP = 0x110000


def chars():
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        yield cp, chr(cp)


def ranges(pred):
    out, lo = [], None
    for cp in range(MAXCP + 1):
        ok = cp < MAXCP and not (0xD800 <= cp <= 0xDFFF) and pred(cp)
        if ok and lo is None:
            lo = cp
        elif not ok and lo is not None:
            out.append((lo, cp - 1))
            lo = None
    return out


# Characters the split pattern matches with none of its alternatives: under
# IGNORECASE the regex module (which CLIP uses) tests a class against a
# character's case variants, and U+0345 (Mn, uppercase U+0399) falls out of
# [\p{L}], [\p{N}] and [^\s\p{L}\p{N}] alike, so findall skips it.
UNMATCHED = {0x345}


def check_unmatched():
    try:
        import regex
    except ImportError:
        return
    # the whole pattern: regex's answer depends on the pattern's shape (with
    # the classes alone as alternatives, U+0345 does match)
    pat = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                        r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)
    found = {cp for cp, ch in chars()
             if unicodedata.category(ch) != "Cn" and not ch.isspace() and not pat.findall(ch)}
    assert found == UNMATCHED, sorted(map(hex, found))


def char_classes():
    """(lo, hi, cls) with cls 1 = letter, 2 = number, 3 = matched by no
    alternative (skipped), merged where adjacent."""
    check_unmatched()

    def cls(cp):
        if cp in UNMATCHED:
            return 3
        c = unicodedata.category(chr(cp))[0]
        return 1 if c == "L" else 2 if c == "N" else 0
    out, lo, cur = [], 0, None
    for cp in range(MAXCP + 1):
        k = cls(cp) if cp < MAXCP and not (0xD800 <= cp <= 0xDFFF) else 0
        if k != cur:
            if cur:
                out.append((lo, cp - 1, cur))
            lo, cur = cp, k
    return out


def lower_runs():
    """Runs (lo, hi, delta, stride): for cp = lo, lo+stride, ... <= hi,
    lower(cp) = cp + delta. U+0130 (the one multi-character lowercase) and
    U+03A3 (context dependent) are handled in C and left out."""
    pairs = []
    for cp, ch in chars():
        lo = ch.lower()
        if cp in (0x130, 0x3A3):
            continue
        assert len(lo) == 1, hex(cp)
        if ord(lo) != cp:
            pairs.append((cp, ord(lo) - cp))
    runs = []
    for cp, d in pairs:
        if runs:
            lo, hi, rd, st = runs[-1]
            if rd == d and st == 0 and cp - hi in (1, 2):
                runs[-1] = (lo, cp, d, cp - hi)
                continue
            if rd == d and st and cp - hi == st:
                runs[-1] = (lo, cp, d, st)
                continue
        runs.append((cp, cp, d, 0))
    return [(lo, hi, d, st or 1) for lo, hi, d, st in runs]


def sigma_props():
    """Case_Ignorable, and Cased for the characters that are not ignorable
    (an ignorable character is always skipped by the Final_Sigma scan, so its
    Cased value never matters). Measured through str.lower:
      'A'+c+'Σ' ends in ς  iff  ignorable(c) or cased(c)
      '1'+c+'Σ' ends in ς  iff  not ignorable(c) and cased(c)"""
    ign, cased = set(), set()
    for cp, ch in chars():
        p = ("A" + ch + "\u03a3").lower().endswith("\u03c2")
        q = ("1" + ch + "\u03a3").lower().endswith("\u03c2")
        if q:
            cased.add(cp)
        elif p:
            ign.add(cp)
    # spot checks of the measurement against known members
    assert 0x41 in cased and 0x61 in cased and 0x3A3 in cased and 0x27 in ign and 0x301 in ign
    assert 0x31 not in cased and 0x31 not in ign
    return ranges(lambda cp: cp in ign), ranges(lambda cp: cp in cased)


def nfc_tables():
    """Canonical combining classes, canonical decompositions, primary
    composites (a canonical pair decomposition that NFC recomposes, i.e. not
    excluded), and the characters after which a string may not be NFC as it
    stands (non-zero class, second element of a composition, or changed by NFC
    alone). Hangul is algorithmic in C and left out of the tables."""
    ccc, dec, comp, quick = [], [], [], set()
    for cp, ch in chars():
        k = unicodedata.combining(ch)
        if k:
            ccc.append((cp, k))
            quick.add(cp)
        if 0xAC00 <= cp <= 0xD7A3:
            continue
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<"):
            parts = [int(x, 16) for x in d.split()]
            assert len(parts) in (1, 2)
            dec.append((cp, parts[0], parts[1] if len(parts) == 2 else 0))
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
                comp.append((parts[0], parts[1], cp))
                quick.add(parts[1])
        if unicodedata.normalize("NFC", ch) != ch:
            quick.add(cp)
    quick |= set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V and T jamo
    runs = []
    for cp, k in ccc:
        if runs and runs[-1][1] == cp - 1 and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], cp, k)
        else:
            runs.append((cp, cp, k))
    comp.sort()
    assert min(cp for cp in quick) >= 0x300
    return runs, dec, comp, ranges(lambda cp: cp in quick)


def entities():
    ents = sorted(html.entities.html5.items(), key=lambda kv: kv[0].encode())
    for name, val in ents:
        assert name.isascii() and 1 <= len(val) <= 2, name
    return ents


def emit_items(items):
    line = ""
    for item in items:
        if len(line) + len(item) > 100:
            print("    " + line)
            line = ""
        line += item
    if line:
        print("    " + line)


def emit_ranges(name, rs, comment):
    print(f"/* {comment} ({len(rs)} ranges) */")
    print(f"static const uint32_t {name}[][2] = {{")
    line = ""
    for lo, hi in rs:
        item = f"{{0x{lo:x},0x{hi:x}}},"
        if len(line) + len(item) > 100:
            print("    " + line)
            line = ""
        line += item
    if line:
        print("    " + line)
    print("};")


def main():
    cc = char_classes()
    lr = lower_runs()
    ign, cased = sigma_props()
    spaces = [cp for cp, ch in chars() if ch.isspace()]
    ents = entities()
    print("/* Generated by tests/ref/gen_tokenizer_tables.py from Python %d.%d (Unicode %s); do not edit. */"
          % (sys.version_info[0], sys.version_info[1], unicodedata.unidata_version))
    print("#ifndef AP_MODELS_TOKENIZER_TABLES_H")
    print("#define AP_MODELS_TOKENIZER_TABLES_H")
    print("#include <stdint.h>")
    print(f'#define AP_TOK_UNICODE_VERSION "{unicodedata.unidata_version}"')
    print()
    print(f"/* Classes of the split pattern: 1 letter (L*), 2 number (N*), 3 matched by no alternative; sorted ({len(cc)}). */")
    print("static const uint32_t tok_uc_class[][3] = {")
    line = ""
    for lo, hi, k in cc:
        item = f"{{0x{lo:x},0x{hi:x},{k}}},"
        if len(line) + len(item) > 100:
            print("    " + line)
            line = ""
        line += item
    print("    " + line)
    print("};")
    print()
    print(f"/* str.isspace() ({len(spaces)} code points, sorted) */")
    print("static const uint32_t tok_uc_space[] = {")
    emit_items([f"0x{c:x}," for c in spaces])
    print("};")
    print()
    print(f"/* str.lower(): for cp = lo, lo+stride, ... <= hi, lower = cp + delta ({len(lr)} runs).")
    print(" * Not here: U+0130 -> U+0069 U+0307, and U+03A3 (Final_Sigma). */")
    print("static const int32_t tok_uc_lower[][4] = {")
    line = ""
    for lo, hi, d, st in lr:
        item = f"{{0x{lo:x},0x{hi:x},{d},{st}}},"
        if len(line) + len(item) > 100:
            print("    " + line)
            line = ""
        line += item
    print("    " + line)
    print("};")
    print()
    emit_ranges("tok_uc_case_ignorable", ign, "Case_Ignorable, as str.lower's Final_Sigma rule sees it")
    print()
    emit_ranges("tok_uc_cased", cased, "Cased (among characters that are not Case_Ignorable)")
    print()
    blob, offs = "", []
    for name, _ in ents:
        offs.append(len(blob))
        blob += name + "\\0"
    print(f"/* HTML5 named character references (html.entities.html5, {len(ents)}), sorted by name bytes.")
    print(" * Names with a trailing ';' and the legacy names without one are separate entries. */")
    print("static const char tok_ent_names[] =")
    line = ""
    for name, _ in ents:
        item = name + "\\0"
        if len(line) + len(item) > 96:
            print(f'    "{line}"')
            line = ""
        line += item
    print(f'    "{line}";')
    print("static const struct { uint16_t name; uint32_t cp[2]; } tok_ent[] = {")
    line = ""
    pos = 0
    for name, val in ents:
        cps = [ord(x) for x in val] + [0]
        item = f"{{{pos},{{0x{cps[0]:x},0x{cps[1]:x}}}}},"
        pos += len(name) + 1
        if len(line) + len(item) > 100:
            print("    " + line)
            line = ""
        line += item
    print("    " + line)
    print("};")
    assert pos < 65536
    print()
    runs, dec, comp, quick = nfc_tables()
    print(f"/* NFC: canonical combining classes (lo, hi, class), sorted ({len(runs)}) */")
    print("static const uint32_t tok_nfc_ccc[][3] = {")
    emit_items([f"{{0x{a:x},0x{b:x},{k}}}," for a, b, k in runs])
    print("};")
    print(f"/* NFC: canonical decompositions (cp, first, second or 0), sorted by cp ({len(dec)}) */")
    print("static const uint32_t tok_nfc_decomp[][3] = {")
    emit_items([f"{{0x{a:x},0x{b:x},0x{c:x}}}," for a, b, c in dec])
    print("};")
    print(f"/* NFC: primary composites (first, second, composite), sorted by (first, second) ({len(comp)}) */")
    print("static const uint32_t tok_nfc_comp[][3] = {")
    emit_items([f"{{0x{a:x},0x{b:x},0x{c:x}}}," for a, b, c in comp])
    print("};")
    emit_ranges("tok_nfc_quick", quick, "NFC: characters that may make a string not NFC as it stands")
    print()
    # numeric references: html.unescape's replacements (the HTML5 rules: C1
    # controls read as windows-1252, NUL and CR special) and the code points it
    # drops; both are module-private data of Python's html package
    inv = sorted(html._invalid_charrefs.items())
    assert all(len(v) == 1 for _, v in inv)
    print(f"/* html.unescape numeric references replaced by another character ({len(inv)}) */")
    print("static const uint32_t tok_html_charref[][2] = {")
    emit_items([f"{{0x{k:x},0x{ord(v):x}}}," for k, v in inv])
    print("};")
    emit_ranges("tok_html_dropped", ranges(lambda cp: cp in html._invalid_codepoints),
                "html.unescape numeric references that produce nothing")
    print()
    print("#endif")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(here, "../../src/models/tokenizer_tables.h"))
    args = ap.parse_args()
    if args.out == "-":
        main()
    else:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f, contextlib.redirect_stdout(f):
            main()
        os.replace(tmp, args.out)
