#!/usr/bin/python3
"""Cross-checks `lora score` against NLTK's corpus_bleu and corpus_nist.

  nltk_check.py prepare REFS WORKDIR   from grouped references (the E2E format), writes
                                       hyps.txt (a perturbed reference per group, seeded),
                                       short.txt (the same cut to about 60%: brevity and length
                                       penalties apply), multi.refs.txt (the other references
                                       of each group) and single.refs.txt (one per group)
  nltk_check.py compare WORKDIR        reads {hyps,short}.{multi,single}.json (lora score
                                       --json on the files above) and compares: BLEU with
                                       several references, BLEU and NIST with one (NLTK's NIST
                                       matches mteval's only with a single reference)

Exit status 0 when every figure agrees within 1e-4, 1 otherwise. The tokeniser below follows
mteval-v13a's rules, the tokenisation `lora score` documents; the scores come from NLTK.
"""
import json
import os
import random
import re
import string
import sys

from nltk.translate.bleu_score import corpus_bleu
from nltk.translate.nist_score import corpus_nist

TOLERANCE = 1e-4
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def mteval_tokens(text):
    """mteval-v13a's normalisation and tokenisation, lower-cased."""
    for pattern, repl in (("<skipped>", ""), ("-\n", ""), ("\n", " "), ("&quot;", '"'),
                          ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(pattern, repl)
    text = " " + text.translate(ASCII_LOWER) + " "  # ASCII only, as mteval's tr/A-Z/a-z/
    text = re.sub(r"([{-~\[-` -&(-+:-@/])", r" \1 ", text)
    text = re.sub(r"([^0-9])([.,])", r"\1 \2 ", text)
    text = re.sub(r"([.,])([^0-9])", r" \1 \2", text)
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)
    return text.split()


def read_groups(path):
    groups, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                cur.append(line)
            elif cur:
                groups.append(cur)
                cur = []
    if cur:
        groups.append(cur)
    return groups


def write_groups(path, groups):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join("\n".join(g) + "\n" for g in groups))


def perturb(words, rng, vocab):
    """0-3 edits: drop, repeat, swap, substitute, punctuate."""
    w = list(words)
    for _ in range(rng.randint(0, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(w))
        if op == 0 and len(w) > 6:
            del w[i]
        elif op == 1:
            w.insert(i, w[i])
        elif op == 2 and i + 1 < len(w):
            w[i], w[i + 1] = w[i + 1], w[i]
        elif op == 3:
            w[i] = rng.choice(vocab)
        else:
            w[i] = w[i] + rng.choice([",", ".", ";", "!"])
    return w


def prepare(refs_path, work):
    rng = random.Random(20240617)
    groups = [g for g in read_groups(refs_path) if len(g) >= 2]
    vocab = sorted({w for g in groups for r in g for w in r.split()})
    hyps, short, multi, single = [], [], [], []
    for k, g in enumerate(groups):
        source = g[-1]
        if rng.random() < 0.1:  # now and then, an output for a different input
            source = groups[(k + 1 + rng.randrange(len(groups) - 1)) % len(groups)][0]
        hyp = " ".join(perturb(source.split(), rng, vocab))
        if rng.random() < 0.3:
            hyp = hyp.upper() if rng.random() < 0.5 else hyp.capitalize()
        assert len(mteval_tokens(hyp)) >= 4, hyp  # NLTK and mteval differ below 4 tokens
        hyps.append(hyp)
        words = hyp.split()
        short.append(" ".join(words[:max(6, (6 * len(words)) // 10)]))
        multi.append(g[:-1])
        single.append([g[0]])
    for name, lines in (("hyps.txt", hyps), ("short.txt", short)):
        with open(os.path.join(work, name), "w", encoding="utf-8") as f:
            f.write("".join(h + "\n" for h in lines))
    write_groups(os.path.join(work, "multi.refs.txt"), multi)
    write_groups(os.path.join(work, "single.refs.txt"), single)


def load_json(work, name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)


def compare(work):
    multi = [[mteval_tokens(r) for r in g]
             for g in read_groups(os.path.join(work, "multi.refs.txt"))]
    single = [[mteval_tokens(r) for r in g]
              for g in read_groups(os.path.join(work, "single.refs.txt"))]
    per_seg = sum(map(len, multi)) / len(multi)
    rows = []
    for kind in ("hyps", "short"):
        with open(os.path.join(work, kind + ".txt"), encoding="utf-8") as f:
            hyps = [mteval_tokens(line.rstrip("\n")) for line in f]
        ours_multi = load_json(work, kind + ".multi.json")
        ours_single = load_json(work, kind + ".single.json")
        rows += [
            ("%s BLEU, %.1f refs" % (kind, per_seg), ours_multi["bleu"],
             corpus_bleu(multi, hyps)),
            ("%s BLEU, 1 ref" % kind, ours_single["bleu"], corpus_bleu(single, hyps)),
            ("%s NIST, 1 ref" % kind, ours_single["nist"], corpus_nist(single, hyps, n=5)),
        ]
    bad = 0
    print("%d segments" % len(multi))
    for name, ours, ref in rows:
        diff = abs(ours - ref)
        ok = diff <= TOLERANCE
        bad += not ok
        print("%-24s lora %.10f  nltk %.10f  |diff| %.2e  %s" % (name, ours, ref, diff,
                                                                   "ok" if ok else "MISMATCH"))
    return 1 if bad else 0


def main(argv):
    if len(argv) == 4 and argv[1] == "prepare":
        prepare(argv[2], argv[3])
        return 0
    if len(argv) == 3 and argv[1] == "compare":
        return compare(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
