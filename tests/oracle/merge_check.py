"""
merge_check.py - a merged model written by `lora merge`, checked on the PyTorch side: its
logits (float64, from the merged directory alone) must equal those of the base model with the
adapters applied unmerged, computed here from the PEFT directories (LoRA: scale lora_alpha / r,
or / sqrt(r) with use_rslora, patterns per module; AdaLoRA: P diag(E) Q with the kept triplets
the file holds, scale lora_alpha / (init_r + 1e-5)), and those the engine computed unmerged
(expected.safetensors from merge_helper logits), within 1e-5 max-abs.

  merge_check.py --base DIR --merged DIR --expected FILE --adapter DIR[:SCALE] [...]
"""

import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref as ref  # noqa: E402
import peft_check  # noqa: E402

ADA_KEY = re.compile(r"^base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|"
                     r"mlp\.c_fc|mlp\.c_proj)\.lora_([AEB])(?:\.[A-Za-z0-9_]+)?$")


def load_adalora(adapter_dir):
    """-> {module: (A', B, scale)} with A' = diag(E) A over the stored (kept) triplets."""
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    tensors, _ = ref.read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    mods = {}
    for k, v in tensors.items():
        m = ADA_KEY.match(k)
        assert m, "not a PEFT AdaLoRA key: %s" % k
        mods.setdefault("h.%s.%s" % (m.group(1), m.group(2)), {})[m.group(3)] = v.double()
    init_r = cfg.get("init_r", cfg.get("r"))
    scale = cfg["lora_alpha"] / (init_r + 1e-5)
    return {mod: (t["E"] * t["A"], t["B"], scale) for mod, t in mods.items()}


def load_any(adapter_dir):
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    if cfg["peft_type"] == "ADALORA":
        return load_adalora(adapter_dir)
    return peft_check.load_adapter(adapter_dir)


class MultiAdapterGPT2(ref.GPT2Ref):
    def __init__(self, cfg, params, adapters):
        super().__init__(cfg, params)
        self.adapters = adapters  # [(user scale, {module: (A, B, scale)})]

    def linear(self, x, key):
        y = x @ self.params[key + ".weight"] + self.params[key + ".bias"]
        for user, ad in self.adapters:
            if key in ad:
                a, b, scale = ad[key]
                y = y + user * scale * ((x @ a.t()) @ b.t())
        return y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--adapter", action="append", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg, base = peft_check.load_model(a.base)
    mcfg, merged = peft_check.load_model(a.merged)
    for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        assert cfg[k] == mcfg[k], "config.json differs in %s" % k
    assert set(base) == set(merged), "the merged model's tensors differ from the base's"
    adapters = []
    for spec in a.adapter:
        d, scale = spec, 1.0
        if ":" in spec:
            head, tail = spec.rsplit(":", 1)
            try:
                d, scale = head, float(tail)
            except ValueError:
                pass
        adapters.append((scale, load_any(d)))
    exp, _ = ref.read_safetensors(a.expected)
    tokens = exp["tokens"]
    got = ref.GPT2Ref(mcfg, merged).forward(tokens)
    want = MultiAdapterGPT2(cfg, base, adapters).forward(tokens)
    d_torch = (got - want).abs().max().item()
    d_engine = (got - exp["logits"].double()).abs().max().item()
    print("%s: merged logits vs base + %d adapter(s) in PyTorch max-abs %.3e, vs the engine "
          "unmerged %.3e" % (a.merged, len(adapters), d_torch, d_engine))
    if not (d_torch <= 1e-5 and d_engine <= 1e-5):
        print("FAIL: above 1e-5")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
