"""
torch_generate.py - greedy generation speed of PyTorch on the GPT-2 of tests/oracle/gpt2_ref.py,
the PyTorch side of bench/generate.sh.

    /usr/bin/python3 bench/torch_generate.py MODEL_DIR [--prompt 64] [--new 128] [--reps 1]
                                             [--warmup 8] [--threads 2]

The model is gpt2_ref.GPT2Ref (its linear, layer-norm and MLP code, unchanged) with a KV cache
added here: every layer keeps preallocated key and value tensors (1, heads, prompt + new, hs),
a forward over new tokens writes theirs at their positions and attends to the cache up to them
(causal within the new tokens). Under torch.inference_mode, with torch.set_num_threads(threads):
a warm-up generation, then --reps timed ones: the prompt in one forward (prefill), then --new
single-token forwards, each fed the argmax of the previous logits (decode). Prints one line per
generation, as bench_generate does:
    prefill_tps=X decode_tps=Y tokens=ID,ID,...
The prompt is ids (37 i + 11) mod V. Not a test: the oracle's semantics are not touched.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "oracle"))
import gpt2_ref  # noqa: E402


def load_model(model_dir):
    """config dict and base tensors named as gpt2_ref.base_shapes (no "transformer." prefix)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors, _ = gpt2_ref.read_safetensors(os.path.join(model_dir, "model.safetensors"))
    params = {}
    for name, shape in gpt2_ref.base_shapes(cfg):
        t = tensors.get("transformer." + name, tensors.get(name))
        if t is None:
            raise SystemExit("torch_generate: %s: tensor %s is missing" % (model_dir, name))
        if tuple(t.shape) != tuple(shape):
            raise SystemExit("torch_generate: %s has shape %s, expected %s" %
                             (name, tuple(t.shape), shape))
        params[name] = t.float().contiguous()
    return cfg, params


class GPT2KV(gpt2_ref.GPT2Ref):
    """GPT2Ref with a KV cache: forward_kv(tokens, pos0) runs only the new tokens."""

    def reset_cache(self, max_len):
        c = self.cfg
        nh = c["n_head"]
        hs = c["n_embd"] // nh
        self.k = [torch.zeros((1, nh, max_len, hs)) for _ in range(c["n_layer"])]
        self.v = [torch.zeros((1, nh, max_len, hs)) for _ in range(c["n_layer"])]

    def attention_kv(self, x, l, pos0):
        B, T, C = x.shape
        nh = self.cfg["n_head"]
        hs = C // nh
        qkv = self.linear(x, "h.%d.attn.c_attn" % l)
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)
        self.k[l][:, :, pos0:pos0 + T] = k.view(B, T, nh, hs).transpose(1, 2)
        self.v[l][:, :, pos0:pos0 + T] = v.view(B, T, nh, hs).transpose(1, 2)
        n = pos0 + T
        kc, vc = self.k[l][:, :, :n], self.v[l][:, :, :n]
        att = (q @ kc.transpose(-2, -1)) / math.sqrt(hs)
        if T > 1:  # query t (position pos0 + t) sees keys [0, pos0 + t]
            causal = torch.ones((T, n), dtype=torch.bool).tril(diagonal=pos0)
            att = att.masked_fill(~causal, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ vc).transpose(1, 2).contiguous().view(B, T, C)
        return self.linear(y, "h.%d.attn.c_proj" % l)

    def forward_kv(self, tokens, pos0):
        """tokens (1, T) at positions [pos0, pos0 + T) -> logits (V) of the last one."""
        T = tokens.shape[1]
        x = self.params["wte.weight"][tokens] + self.params["wpe.weight"][pos0:pos0 + T][None]
        for l in range(self.cfg["n_layer"]):
            x = x + self.attention_kv(self.layer_norm(x, "h.%d.ln_1" % l), l, pos0)
            x = x + self.mlp(self.layer_norm(x, "h.%d.ln_2" % l), l)
        x = self.layer_norm(x[:, -1:], "ln_f")
        return (x @ self.params["wte.weight"].t())[0, 0]


def generate(model, prompt, n_new):
    model.reset_cache(len(prompt) + n_new)
    out = []
    t0 = time.perf_counter()
    logits = model.forward_kv(torch.tensor([prompt]), 0)
    t1 = time.perf_counter()
    pos = len(prompt)
    for _ in range(n_new):
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        logits = model.forward_kv(torch.tensor([[nxt]]), pos)
        pos += 1
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if min(a.prompt, a.new, a.reps, a.warmup, a.threads) < 1:
        ap.error("every count must be positive")
    torch.set_num_threads(a.threads)
    cfg, params = load_model(a.model)
    if a.prompt + a.new > cfg["n_positions"]:
        ap.error("prompt + new exceed the context %d" % cfg["n_positions"])
    model = GPT2KV(cfg, params)
    V = cfg["vocab_size"]
    prompt = [(37 * i + 11) % V for i in range(a.prompt)]
    with torch.inference_mode():
        generate(model, prompt, min(a.warmup, a.new))
        for _ in range(a.reps):
            tp, td, out = generate(model, prompt, a.new)
            print("prefill_tps=%.3f decode_tps=%.3f tokens=%s" %
                  (a.prompt / tp, a.new / td, ",".join(str(t) for t in out)), flush=True)


if __name__ == "__main__":
    main()
