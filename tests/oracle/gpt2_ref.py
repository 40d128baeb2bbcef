"""
gpt2_ref.py - a small PyTorch reference for the GPT-2 architecture, LoRA adapters,
BitFit / full fine-tuning, the loss, AdamW with Hugging Face's schedules, and the
Hugging Face checkpoint layout (config.json + safetensors).

It mirrors transformers' GPT2LMHeadModel (eval mode, no dropout) and PEFT's LoRA
(dropout 0) closely enough to serve as the numerical oracle for the C engine.

Conventions
  - Base tensors are keyed by their Hugging Face names without the "transformer."
    prefix: "wte.weight", "h.0.attn.c_attn.weight", "ln_f.bias", ...
  - Conv1D weights are (in, out) and applied as x @ W + b.
  - LoRA tensors: "<site>.lora_A" (r, in) and "<site>.lora_B" (len, r), where <site> is
    "h.{l}.attn.c_attn.q|k|v", "h.{l}.attn.c_attn", "h.{l}.attn.c_proj",
    "h.{l}.mlp.c_fc" or "h.{l}.mlp.c_proj".
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------
# configuration


def resolve_config(cfg):
    """Returns a copy of cfg with defaults filled in and n_inner resolved."""
    c = dict(cfg)
    c.setdefault("layer_norm_epsilon", 1e-5)
    c.setdefault("activation_function", "gelu_new")
    c.setdefault("n_inner", None)
    c["inner"] = c["n_inner"] if c["n_inner"] is not None else 4 * c["n_embd"]
    if c["n_embd"] % c["n_head"] != 0:
        raise ValueError("n_embd must be divisible by n_head")
    if c["activation_function"] not in ("gelu_new", "gelu"):
        raise ValueError("unsupported activation %r" % c["activation_function"])
    return c


def base_shapes(cfg):
    """Ordered (name, shape) of every base tensor of the model."""
    c = resolve_config(cfg)
    C, I = c["n_embd"], c["inner"]
    out = [("wte.weight", (c["vocab_size"], C)), ("wpe.weight", (c["n_positions"], C))]
    for l in range(c["n_layer"]):
        p = "h.%d." % l
        out += [
            (p + "ln_1.weight", (C,)),
            (p + "ln_1.bias", (C,)),
            (p + "attn.c_attn.weight", (C, 3 * C)),
            (p + "attn.c_attn.bias", (3 * C,)),
            (p + "attn.c_proj.weight", (C, C)),
            (p + "attn.c_proj.bias", (C,)),
            (p + "ln_2.weight", (C,)),
            (p + "ln_2.bias", (C,)),
            (p + "mlp.c_fc.weight", (C, I)),
            (p + "mlp.c_fc.bias", (I,)),
            (p + "mlp.c_proj.weight", (I, C)),
            (p + "mlp.c_proj.bias", (C,)),
        ]
    out += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    return out


def bias_names(cfg):
    """The BitFit trainable set: every bias vector, LayerNorm biases included."""
    return [n for n, _ in base_shapes(cfg) if n.endswith(".bias")]


def init_base_params(cfg, gen):
    """Random float32 base weights: matrices N(0, 0.02), biases N(0, 0.02),
    LayerNorm weights 1 + N(0, 0.1) (non-trivial so LN and bias gradients matter)."""
    params = {}
    for name, shape in base_shapes(cfg):
        z = torch.randn(shape, generator=gen, dtype=torch.float32)
        if ".ln_" in name or name.startswith("ln_"):
            if name.endswith(".weight"):
                t = 1.0 + 0.1 * z
            else:
                t = 0.02 * z
        else:
            t = 0.02 * z
        params[name] = t.contiguous()
    return params


# ----------------------------------------------------------------------------------------
# LoRA sites

# target -> (module inside a block, first third of the output, number of thirds or None = all)
_TARGETS = {
    "q": ("attn.c_attn", 0, 1),
    "k": ("attn.c_attn", 1, 1),
    "v": ("attn.c_attn", 2, 1),
    "c_attn": ("attn.c_attn", 0, 3),
    "c_proj": ("attn.c_proj", 0, None),
    "c_fc": ("mlp.c_fc", 0, None),
    "mlp.c_proj": ("mlp.c_proj", 0, None),
}
TARGET_ORDER = ["q", "k", "v", "c_attn", "c_proj", "c_fc", "mlp.c_proj"]


def parse_targets(targets):
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    for t in targets:
        if t not in _TARGETS:
            raise ValueError("unknown LoRA target %r" % t)
    return [t for t in TARGET_ORDER if t in targets]


def lora_sites(cfg, targets):
    """Ordered list of dicts: site (tensor-name prefix), linear (base module key),
    off, len (output slice), inp (input features)."""
    c = resolve_config(cfg)
    C, I = c["n_embd"], c["inner"]
    fan = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, I), "mlp.c_proj": (I, C)}
    sites = []
    for l in range(c["n_layer"]):
        for t in parse_targets(targets):
            module, first, thirds = _TARGETS[t]
            fin, fout = fan[module]
            if thirds is None:
                off, ln = 0, fout
            else:
                off, ln = first * C, thirds * C
            linear = "h.%d.%s" % (l, module)
            site = linear + ("." + t if t in ("q", "k", "v") else "")
            sites.append({"site": site, "linear": linear, "off": off, "len": ln, "inp": fin})
    return sites


def lora_scale(r, alpha, use_rslora):
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def init_lora_params(cfg, targets, r, gen, b_std=0.02):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform bound), B ~ N(0, b_std).
    B is non-zero on purpose so that A receives a gradient."""
    out = {}
    for s in lora_sites(cfg, targets):
        bound = 1.0 / math.sqrt(s["inp"])
        a = (torch.rand((r, s["inp"]), generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound
        b = torch.randn((s["len"], r), generator=gen, dtype=torch.float32) * b_std
        out[s["site"] + ".lora_A"] = a.contiguous()
        out[s["site"] + ".lora_B"] = b.contiguous()
    return out


# ----------------------------------------------------------------------------------------
# the model


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class GPT2Ref:
    """GPT2LMHeadModel forward with optional LoRA adapters.

    params: dict of base tensors (names as base_shapes); lora: dict of LoRA tensors
    (names as init_lora_params) or None. Tensors are used as given (dtype included),
    so convert to float64 first for the oracle (see to_double)."""

    def __init__(self, cfg, params, lora=None, targets=(), r=0, alpha=0.0, use_rslora=False):
        self.cfg = resolve_config(cfg)
        self.params = params
        self.lora = lora or {}
        self.sites = {}
        if self.lora:
            self.scale = lora_scale(r, alpha, use_rslora)
            for s in lora_sites(cfg, targets):
                self.sites.setdefault(s["linear"], []).append(s)
        else:
            self.scale = 0.0

    def linear(self, x, key):
        y = x @ self.params[key + ".weight"] + self.params[key + ".bias"]
        for s in self.sites.get(key, ()):
            a = self.lora[s["site"] + ".lora_A"]
            b = self.lora[s["site"] + ".lora_B"]
            d = self.scale * ((x @ a.t()) @ b.t())
            width = y.shape[-1]
            if s["off"] != 0 or s["len"] != width:
                d = F.pad(d, (s["off"], width - s["off"] - s["len"]))
            y = y + d
        return y

    def layer_norm(self, x, key):
        C = self.cfg["n_embd"]
        return F.layer_norm(x, (C,), self.params[key + ".weight"], self.params[key + ".bias"],
                            self.cfg["layer_norm_epsilon"])

    def attention(self, x, l):
        B, T, C = x.shape
        nh = self.cfg["n_head"]
        hs = C // nh
        qkv = self.linear(x, "h.%d.attn.c_attn" % l)
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        v = v.view(B, T, nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        causal = torch.ones((T, T), dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.linear(y, "h.%d.attn.c_proj" % l)

    def mlp(self, x, l):
        h = self.linear(x, "h.%d.mlp.c_fc" % l)
        h = gelu_tanh(h) if self.cfg["activation_function"] == "gelu_new" else gelu_erf(h)
        return self.linear(h, "h.%d.mlp.c_proj" % l)

    def forward(self, tokens):
        """tokens (B, T) integer -> logits (B, T, V)."""
        tokens = tokens.long()
        B, T = tokens.shape
        if T > self.cfg["n_positions"]:
            raise ValueError("sequence longer than n_positions")
        wte = self.params["wte.weight"]
        x = wte[tokens] + self.params["wpe.weight"][torch.arange(T)][None, :, :]
        for l in range(self.cfg["n_layer"]):
            x = x + self.attention(self.layer_norm(x, "h.%d.ln_1" % l), l)
            x = x + self.mlp(self.layer_norm(x, "h.%d.ln_2" % l), l)
        x = self.layer_norm(x, "ln_f")
        return x @ wte.t()


def lm_loss(logits, targets, label_smoothing=0.0):
    """Mean cross-entropy over positions whose target is not -1."""
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1).long(), ignore_index=-1,
                           label_smoothing=label_smoothing)


def to_double(tensors):
    return {k: v.to(torch.float64) for k, v in tensors.items()}


# ----------------------------------------------------------------------------------------
# trainable sets and the optimiser


def trainable_names(cfg, method, targets=()):
    if method == "lora":
        names = []
        for s in lora_sites(cfg, targets):
            names += [s["site"] + ".lora_A", s["site"] + ".lora_B"]
        return names
    if method == "full":
        return [n for n, _ in base_shapes(cfg)]
    if method == "bitfit":
        return bias_names(cfg)
    raise ValueError("unknown method %r" % method)


def schedule_factor(kind, step, warmup, total):
    """Multiplier of the peak lr at 0-based step `step` (Hugging Face's lambdas)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError("unknown schedule %r" % kind)


def make_adamw(tensors, lr, betas, eps, weight_decay):
    """torch AdamW with decay on tensors of ndim >= 2 only."""
    decay = [t for t in tensors if t.dim() >= 2]
    no_decay = [t for t in tensors if t.dim() < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def global_grad_norm(tensors):
    return math.sqrt(sum(float((t.grad.double() ** 2).sum()) for t in tensors))


# ----------------------------------------------------------------------------------------
# safetensors (written and read here; no external package)

if sys.byteorder != "little":
    raise RuntimeError("the safetensors helpers here assume a little-endian host")

_DT_OUT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
           torch.float64: "F64", torch.int64: "I64"}
_DT_IN = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.int16, torch.bfloat16),
          "I32": (np.int32, None), "F64": (np.float64, None), "I64": (np.int64, None)}


def _tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def safetensors_bytes(tensors, metadata=None):
    """tensors: ordered dict name -> torch tensor (dtype kept). Returns the file's bytes."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, t in tensors.items():
        if t.dtype not in _DT_OUT:
            raise ValueError("%s: unsupported dtype %s" % (name, t.dtype))
        b = _tensor_bytes(t)
        header[name] = {"dtype": _DT_OUT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def write_safetensors(path, tensors, metadata=None):
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, metadata))


def read_safetensors(path):
    """Returns (dict name -> torch tensor in the stored dtype, metadata dict or {})."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: truncated" % path)
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError("%s: header past end of file" % path)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out, end = {}, 0
    for name, info in header.items():
        np_dt, view_as = _DT_IN[info["dtype"]]
        b0, b1 = info["data_offsets"]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if not (0 <= b0 <= b1 <= len(data)) or b1 - b0 != count * np.dtype(np_dt).itemsize:
            raise ValueError("%s: %s: bad data_offsets" % (path, name))
        arr = np.frombuffer(data[b0:b1], dtype=np_dt).copy()
        t = torch.from_numpy(arr).reshape(info["shape"])
        if view_as is not None:
            t = t.view(view_as)
        out[name] = t
        end = max(end, b1)
    if end != len(data):
        raise ValueError("%s: trailing bytes after the last tensor" % path)
    return out, meta


# ----------------------------------------------------------------------------------------
# Hugging Face checkpoint layout


def hf_config_json(cfg, torch_dtype="float32"):
    c = resolve_config(cfg)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": c["n_layer"],
        "n_head": c["n_head"],
        "n_embd": c["n_embd"],
        "n_positions": c["n_positions"],
        "n_ctx": c["n_positions"],
        "n_inner": c["n_inner"],
        "vocab_size": c["vocab_size"],
        "layer_norm_epsilon": c["layer_norm_epsilon"],
        "activation_function": c["activation_function"],
        "tie_word_embeddings": True,
        "torch_dtype": torch_dtype,
    }


_TORCH_DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_tensors(cfg, params, dtype=torch.float32, prefix="transformer.", buffers=False):
    """The checkpoint's tensors in HF naming (the LM head is tied, so it is not stored).
    buffers=True adds the legacy attention buffers attn.bias (1,1,P,P) and attn.masked_bias ()."""
    c = resolve_config(cfg)
    out = {}
    for name, _ in base_shapes(cfg):
        out[prefix + name] = params[name].to(dtype).contiguous()
        if buffers and name.endswith(".attn.c_proj.bias"):
            l = name.split(".")[1]
            P = c["n_positions"]
            out[prefix + "h.%s.attn.bias" % l] = torch.ones((P, P), dtype=dtype).tril().view(1, 1, P, P)
            out[prefix + "h.%s.attn.masked_bias" % l] = torch.tensor(-1e4, dtype=dtype)
    return out


def write_hf_model(dirpath, cfg, params, dtype=torch.float32, prefix="transformer.", buffers=False,
                   shards=1):
    """Writes config.json and model.safetensors (or `shards` shards plus the index).
    Returns the list of files written."""
    os.makedirs(dirpath, exist_ok=True)
    written = []
    cpath = os.path.join(dirpath, "config.json")
    with open(cpath, "w") as f:
        json.dump(hf_config_json(cfg, _TORCH_DTYPE_NAME[dtype]), f, indent=2)
        f.write("\n")
    written.append(cpath)
    tensors = hf_tensors(cfg, params, dtype, prefix, buffers)
    meta = {"format": "pt"}
    if shards <= 1:
        p = os.path.join(dirpath, "model.safetensors")
        write_safetensors(p, tensors, meta)
        written.append(p)
        return written
    names = list(tensors)
    per = (len(names) + shards - 1) // shards
    weight_map, total = {}, 0
    for i in range(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
        p = os.path.join(dirpath, fname)
        write_safetensors(p, part, meta)
        written.append(p)
    p = os.path.join(dirpath, "model.safetensors.index.json")
    with open(p, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    written.append(p)
    return written


def stored_params(cfg, params, dtype):
    """The base params exactly as a checkpoint of `dtype` holds them, as float64."""
    return {k: v.to(dtype).to(torch.float64) for k, v in params.items()}
