#!/usr/bin/env python3
"""copy_probe.py — the in-context copying probe of the base-model recipe.

A data-to-text task asks the model to copy slot values (names such as "The Golden Curry") from
its prompt. Whether a pretrained model can copy at all is measured here with two prompt/completion
sets built from held-out sentences S:

  copy.jsonl     prompt S,  completion " S"   (the completion repeats the prompt word for word)
  control.jsonl  prompt S', completion " S"   (S' another held-out sentence)

`lora eval` scores the completions only, so the two losses differ only in whether the answer is
in the context. A model that copies (one with induction heads) scores the copy set far below the
control; a model that cannot scores them about the same. The recipe writes both losses and their
difference to copy_probe.json next to the model.

usage: copy_probe.py --val VAL.jsonl --out DIR [--n 200] [--seed 0]
Python 3 standard library only.
"""
import argparse
import json
import os
import random
import sys


def sentences(path, min_words, max_words):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            for part in text.split(". "):
                words = part.split()
                if min_words <= len(words) <= max_words:
                    s = " ".join(words)
                    out.append(s if s.endswith(".") else s + ".")
    return out


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for prompt, completion in rows:
            f.write(json.dumps({"prompt": prompt, "completion": completion},
                               ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--val", required=True, help="held-out records, {\"text\": ...} per line")
    ap.add_argument("--out", required=True, help="directory for copy.jsonl and control.jsonl")
    ap.add_argument("--n", type=int, default=200, help="sentences (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    a = ap.parse_args(argv)
    try:
        pool = sentences(a.val, 8, 20)
    except (OSError, ValueError, KeyError) as e:
        print(f"copy_probe.py: {a.val}: {e}", file=sys.stderr)
        return 1
    if len(pool) < 2:
        print(f"copy_probe.py: {a.val}: fewer than 2 sentences of 8-20 words", file=sys.stderr)
        return 1
    random.Random(a.seed).shuffle(pool)
    pool = pool[:a.n]
    os.makedirs(a.out, exist_ok=True)
    write_jsonl(os.path.join(a.out, "copy.jsonl"), [(s, " " + s) for s in pool])
    write_jsonl(os.path.join(a.out, "control.jsonl"),
                [(pool[(i + 1) % len(pool)], " " + s) for i, s in enumerate(pool)])
    print(f"copy_probe.py: {len(pool)} sentences -> {a.out}/{{copy,control}}.jsonl",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
