#!/usr/bin/python3
"""
torch_step.py - the PyTorch side of bench/run: times training steps of the GPT-2 in
tests/oracle/gpt2_ref.py (the architecture of Hugging Face's GPT2LMHeadModel, LoRA as PEFT
applies it) with the same config, method, optimizer and thread count as `lora bench`.

    /usr/bin/python3 bench/torch_step.py --model DIR [--method lora|full|bitfit] [--r 8]
        [--alpha 16] [--targets q,v] [--dropout 0.1] [--batch 4] [--seq-len 128]
        [--steps 10] [--warmup 2] [--threads 2] [--seed 1]

Prints one JSON object (the keys of `lora bench --json` that apply). A step is, as in
`lora bench`: zero_grad, forward, mean cross-entropy on a fixed batch of random tokens
(targets: the next token), backward, global grad-norm clip at 1.0, torch.optim.AdamW
(lr 2e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on matrices only).

The weights are random (N(0, 0.02), LayerNorm 1 and 0) with the shapes of DIR/config.json:
their values do not change the time of a step, and not reading the checkpoint keeps the
loader's buffers out of the peak memory. Needs torch only (the Debian python3-torch).
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "oracle"))
import gpt2_ref as ref  # noqa: E402


class GPT2Train(ref.GPT2Ref):
    """GPT2Ref for training: linears as one addmm over (B*T, in) rows, LoRA with PEFT's input
    dropout (lora_B(lora_A(dropout(x))) * scale) added in place to its output slice, and the
    causal mask built once per sequence length."""

    def __init__(self, cfg, params, lora, targets, r, alpha, dropout):
        super().__init__(cfg, params, lora, targets, r, alpha)
        self.dropout = dropout
        self.masks = {}

    def linear(self, x, key):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = self.params[key + ".weight"]
        y = torch.addmm(self.params[key + ".bias"], x2, w)
        for s in self.sites.get(key, ()):
            xin = F.dropout(x2, self.dropout, training=True) if self.dropout > 0 else x2
            d = F.linear(F.linear(xin, self.lora[s["site"] + ".lora_A"]),
                         self.lora[s["site"] + ".lora_B"]) * self.scale
            if s["off"] == 0 and s["len"] == w.shape[1]:
                y = y + d
            else:
                y[:, s["off"]:s["off"] + s["len"]] += d
        return y.view(*shape[:-1], w.shape[1])

    def attention(self, x, l):
        B, T, C = x.shape
        nh = self.cfg["n_head"]
        hs = C // nh
        qkv = self.linear(x, "h.%d.attn.c_attn" % l)
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        v = v.view(B, T, nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        if T not in self.masks:
            self.masks[T] = ~torch.ones((T, T), dtype=torch.bool).tril()
        att = torch.softmax(att.masked_fill(self.masks[T], float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.linear(y, "h.%d.attn.c_proj" % l)


def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    if not hf.get("tie_word_embeddings", True):
        raise SystemExit("torch_step.py: %s: an untied LM head is not supported" % model_dir)
    act = hf.get("activation_function", "gelu_new")
    if act in ("gelu_pytorch_tanh", "gelu_fast"):
        act = "gelu_new"
    return dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                n_positions=hf.get("n_positions", hf.get("n_ctx", 1024)),
                n_inner=hf.get("n_inner"), vocab_size=hf["vocab_size"],
                layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                activation_function=act)


def random_params(cfg, gen):
    params = {}
    for name, shape in ref.base_shapes(cfg):
        if ".ln_" in name or name.startswith("ln_"):
            t = torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        elif name.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        params[name] = t.contiguous()
    return params


def lora_params(cfg, targets, r, gen):
    """A kaiming-uniform (PEFT's bound), B zero, as a fresh adapter."""
    out = {}
    for s in ref.lora_sites(cfg, targets):
        bound = 1.0 / math.sqrt(s["inp"])
        out[s["site"] + ".lora_A"] = (torch.rand((r, s["inp"]), generator=gen) * 2 - 1) * bound
        out[s["site"] + ".lora_B"] = torch.zeros((s["len"], r))
    return out


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_now_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face GPT-2 directory (config.json)")
    ap.add_argument("--method", default="lora", choices=["lora", "full", "bitfit"])
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=0, help="default min(128, n_positions)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="default: torch's own")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0 or a.batch < 1:
        ap.error("--steps >= 1, --warmup >= 0 and --batch >= 1 are required")

    rss_base = rss_now_bytes()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.model)
    T = a.seq_len or min(128, cfg["n_positions"])
    if T > cfg["n_positions"]:
        ap.error("--seq-len %d exceeds n_positions %d" % (T, cfg["n_positions"]))
    B, V = a.batch, cfg["vocab_size"]
    gen = torch.Generator().manual_seed(a.seed)
    params = random_params(cfg, gen)
    if a.method == "full":
        model = GPT2Train(cfg, params, None, (), 0, 0.0, 0.0)
        trainable = [params[n] for n in ref.trainable_names(cfg, "full")]
    elif a.method == "bitfit":
        model = GPT2Train(cfg, params, None, (), 0, 0.0, 0.0)
        trainable = [params[n] for n in ref.trainable_names(cfg, "bitfit")]
    else:
        targets = "c_attn,c_proj,c_fc,mlp.c_proj" if a.targets == "all" else a.targets
        lora = lora_params(cfg, targets, a.r, gen)
        model = GPT2Train(cfg, params, lora, targets, a.r, a.alpha, a.dropout)
        trainable = [lora[n] for n in ref.trainable_names(cfg, "lora", targets)]
    for t in trainable:
        t.requires_grad_(True)
    opt = ref.make_adamw(trainable, 2e-4, (0.9, 0.999), 1e-8, 0.01)

    tokens = torch.randint(0, V, (B, T), generator=gen, dtype=torch.long)
    targets_t = torch.full((B, T), -1, dtype=torch.long)
    targets_t[:, :-1] = tokens[:, 1:]

    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = ref.lm_loss(model.forward(tokens), targets_t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if i >= a.warmup:
            times.append(dt)

    s = sorted(times)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    out = {
        "side": "torch", "torch": torch.__version__, "model": a.model,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "method": a.method, "r": a.r if a.method == "lora" else 0,
        "alpha": a.alpha if a.method == "lora" else 0,
        "targets": a.targets if a.method == "lora" else "",
        "dropout": a.dropout if a.method == "lora" else 0,
        "B": B, "T": T, "threads": torch.get_num_threads(), "warmup": a.warmup,
        "steps": a.steps, "step_s": times, "median_step_s": median,
        "tokens_per_s": B * T * n / sum(times),
        "loss_first": losses[0], "loss_last": losses[-1],
        "n_trainable": sum(t.numel() for t in trainable),
        "rss_base_bytes": rss_base, "rss_peak_bytes": peak_rss_bytes(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
