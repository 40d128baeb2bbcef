#!/usr/bin/env python3
"""copy_toy.py — data for the copying check of the training engine.

Writes records "w1 ... wn | w1 ... wn" whose words are drawn at random from a small list of
words that the tokenizer keeps as single tokens, so the second half can only be predicted by
copying the first. A 2-layer model trained on them (copy_toy.sh) must learn induction heads;
copy.jsonl and control.jsonl then measure whether it did, as copy_probe.py does for the base
model: the same completions, with the answer in the prompt (copy) or not (control).

usage: copy_toy.py --vocab VOCAB.json --out DIR [--words 64] [--n 100000] [--length 24] [--seed 1]
Python 3 standard library only.
"""
import argparse
import json
import os
import random
import re


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", required=True, help="the tokenizer's vocab.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--words", type=int, default=64, help="size of the word list")
    ap.add_argument("--n", type=int, default=100000, help="training records")
    ap.add_argument("--length", type=int, default=24, help="words per half")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    with open(a.vocab, encoding="utf-8") as f:
        vocab = json.load(f)
    # "Ġword" is the byte-level BPE token of " word"
    pool = sorted(k[1:] for k in vocab if re.fullmatch("\u0120[a-z]{4,8}", k))
    if len(pool) < a.words:
        raise SystemExit(f"{a.vocab}: only {len(pool)} single-token words, {a.words} wanted")
    rng = random.Random(a.seed)
    words = rng.sample(pool, a.words)

    def seq():
        return " ".join(rng.choice(words) for _ in range(a.length))

    os.makedirs(a.out, exist_ok=True)
    train = []
    for _ in range(a.n):
        s = seq()
        train.append({"text": s + " | " + s})
    write_jsonl(os.path.join(a.out, "train.jsonl"), train)
    copy, control = [], []
    for _ in range(200):
        s, t = seq(), seq()
        copy.append({"prompt": s + " |", "completion": " " + s})
        control.append({"prompt": t + " |", "completion": " " + s})
    write_jsonl(os.path.join(a.out, "copy.jsonl"), copy)
    write_jsonl(os.path.join(a.out, "control.jsonl"), control)


if __name__ == "__main__":
    main()
