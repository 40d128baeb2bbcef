"""
make_task.py - a byte-level tokenizer and a small prompt/completion task for end-to-end tests.

  make_task.py tokenizer DIR       writes vocab.json (the 256 bytes in GPT-2's byte-to-unicode
                                   spelling, ids 0..255, and <|endoftext|> = 256) and an empty
                                   merges.txt into DIR
  make_task.py data DIR            writes train.jsonl (400 lines) and val.jsonl (40 lines):
                                   {"prompt": "copy: <word> =", "completion": " <word>"}
No third-party modules: runs with any python3.
"""
import json
import os
import random
import sys


def byte_symbols():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer(d):
    os.makedirs(d, exist_ok=True)
    sym = byte_symbols()
    vocab = {sym[b]: b for b in range(256)}
    vocab["<|endoftext|>"] = 256
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")


def data(d):
    os.makedirs(d, exist_ok=True)
    rng = random.Random(5)
    letters = "abcdefgh"

    def line():
        w = "".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
        return json.dumps({"prompt": "copy: %s =" % w, "completion": " " + w})

    for name, n in (("train.jsonl", 400), ("val.jsonl", 40)):
        with open(os.path.join(d, name), "w") as f:
            for _ in range(n):
                f.write(line() + "\n")


if __name__ == "__main__":
    {"tokenizer": tokenizer, "data": data}[sys.argv[1]](sys.argv[2])
