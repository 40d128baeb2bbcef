"""
peft_check.py - PEFT adapter directories on the PyTorch side, written from PEFT's documented
semantics (no peft package): keys base_model.model.transformer.h.N.<module>.lora_A.weight
(r, in) and .lora_B.weight (out, r); every adapter covers its whole module; the scale is
lora_alpha / r (or / sqrt(r) with use_rslora), with r and alpha overridden per module by
rank_pattern / alpha_pattern (keys matched against the module name as a dotted suffix).

  make-fixture --model DIR --out DIR   write an adapter the way PEFT lays it out (c_attn with a
                                       full, unstructured B; mlp.c_fc with its own rank and
                                       alpha via the patterns) plus expected.safetensors
                                       (tokens, logits) computed here
  check --model DIR --adapter DIR [--tol T]
                                       load an adapter written by the engine and compare the
                                       logits with its expected.safetensors (max-abs <= T,
                                       default 1e-4)
"""

import argparse
import json
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref as ref  # noqa: E402

KEY = re.compile(r"^base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|"
                 r"mlp\.c_fc|mlp\.c_proj)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def load_model(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tensors, _ = ref.read_safetensors(os.path.join(model_dir, "model.safetensors"))
    params = {k[len("transformer."):] if k.startswith("transformer.") else k: v
              for k, v in tensors.items()}
    return cfg, ref.to_double(params)


def pattern_value(patterns, module, default):
    for key, value in (patterns or {}).items():
        if re.match(r"(.*\.)?%s$" % re.escape(key), module):
            return value
    return default


def load_adapter(adapter_dir):
    """-> {module 'h.N.attn.c_attn': (A, B, scale)} in float64."""
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["fan_in_fan_out"] is True and cfg["bias"] == "none"
    tensors, meta = ref.read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert meta.get("format") == "pt"
    mods = {}
    for k, v in tensors.items():
        m = KEY.match(k)
        assert m, "not a PEFT LoRA key: %s" % k
        mods.setdefault("h.%s.%s" % (m.group(1), m.group(2)), {})[m.group(3)] = v.to(torch.float64)
    out = {}
    for mod, ab in mods.items():
        r = pattern_value(cfg.get("rank_pattern"), mod, cfg["r"])
        alpha = pattern_value(cfg.get("alpha_pattern"), mod, cfg["lora_alpha"])
        assert ab["A"].shape[0] == r and ab["B"].shape[1] == r, mod
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[mod] = (ab["A"], ab["B"], scale)
    return out


class PeftGPT2(ref.GPT2Ref):
    def __init__(self, cfg, params, adapter):
        super().__init__(cfg, params)
        self.adapter = adapter

    def linear(self, x, key):
        y = x @ self.params[key + ".weight"] + self.params[key + ".bias"]
        if key in self.adapter:
            a, b, scale = self.adapter[key]
            y = y + scale * ((x @ a.t()) @ b.t())
        return y


def make_fixture(model_dir, out_dir):
    cfg, params = load_model(model_dir)
    c = ref.resolve_config(cfg)
    C, I, L = c["n_embd"], c["inner"], c["n_layer"]
    g = torch.Generator().manual_seed(77)
    tensors, adapter = {}, {}
    for l in range(L):
        for mod, fin, fout, r, alpha in (("attn.c_attn", C, 3 * C, 4, 8.0),
                                          ("mlp.c_fc", C, I, 2, 6.0)):
            a = (torch.rand((r, fin), generator=g) * 2 - 1) / math.sqrt(fin)
            b = torch.randn((fout, r), generator=g) * 0.05
            key = "base_model.model.transformer.h.%d.%s" % (l, mod)
            tensors[key + ".lora_A.weight"] = a
            tensors[key + ".lora_B.weight"] = b
            adapter["h.%d.%s" % (l, mod)] = (a.double(), b.double(), alpha / r)
    os.makedirs(out_dir, exist_ok=True)
    ref.write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), tensors,
                          {"format": "pt"})
    config = {
        "alpha_pattern": {"c_fc": 6.0}, "auto_mapping": None, "base_model_name_or_path": "tiny",
        "bias": "none", "fan_in_fan_out": True, "inference_mode": True,
        "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": 8, "lora_dropout": 0.05, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": 4,
        "rank_pattern": {"c_fc": 2}, "revision": None, "target_modules": ["c_attn", "c_fc"],
        "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokens = torch.tensor([[(7 * i + 3) % c["vocab_size"] for i in range(24)],
                           [(11 * i + 5) % c["vocab_size"] for i in range(24)]], dtype=torch.int32)
    logits = PeftGPT2(cfg, params, adapter).forward(tokens)
    ref.write_safetensors(os.path.join(out_dir, "expected.safetensors"),
                          {"tokens": tokens, "logits": logits.float().contiguous()})


def check(model_dir, adapter_dir, tol=1e-4):
    cfg, params = load_model(model_dir)
    adapter = load_adapter(adapter_dir)
    exp, _ = ref.read_safetensors(os.path.join(adapter_dir, "expected.safetensors"))
    logits = PeftGPT2(cfg, params, adapter).forward(exp["tokens"])
    d = (logits - exp["logits"].double()).abs().max().item()
    ranks = sorted({int(a.shape[0]) for a, _, _ in adapter.values()})
    print("%s: %d modules, ranks %s, logits max-abs %.2e" % (adapter_dir, len(adapter), ranks, d))
    if not d <= tol:
        print("FAIL: logits differ by %.3e > %g" % (d, tol))
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["make-fixture", "check"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    ap.add_argument("--adapter")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.mode == "make-fixture":
        make_fixture(a.model, a.out)
        return 0
    return check(a.model, a.adapter, a.tol)


if __name__ == "__main__":
    sys.exit(main())
