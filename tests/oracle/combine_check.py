"""
combine_check.py - the oracle of `lora combine`: the combination of LoRA adapters that PEFT's
LoraModel.add_weighted_adapter computes, written here from its documented semantics with torch
only (no peft package), in float64, and compared with the directory the engine wrote.

PEFT's rules, per module (a layer's c_attn, attn.c_proj, mlp.c_fc or mlp.c_proj) that any
input has, with weights w_i and scales s_i = alpha_i / r_i (alpha_i / sqrt(r_i) with rsLoRA):
  - one adapter is always combined linearly;
  - each adapter's rank is its config's r, or the largest rank_pattern value if larger;
  - linear (equal ranks): A = sum sgn(w_i s_i) sqrt|w_i s_i| A_i, B = sum sqrt|w_i s_i| B_i;
  - cat: A = [w_1 s_1 A_1; ...], B = [B_1 ...], ranks summed, zero-padded where a module is
    missing from some adapters;
  - svd: dW = sum w_i s_i B_i A_i = U S Vh, B = U_R S_R, A = Vh_R, R = --r or the largest rank;
  - only adapters that have the module take part;
  - the new config is the first adapter's with r = lora_alpha = R, the union of target_modules
    (lists merged, regular expressions joined as "(a)|(b)"), empty rank/alpha patterns and
    use_rslora false (PEFT's fix for the sqrt(R) overscaling of rsLoRA inputs).

  make-peft --model DIR --out DIR
      writes two adapters laid out as PEFT saves them (no slice metadata, regular-expression
      target_modules, patterns; p2 in F16 with rsLoRA) into DIR/p1 and DIR/p2
  check --how H --adapter D --weight W [...] [--r R] --out OUT [--model M --logits F]
        [--expect-slices S]
      compares OUT with the expected combination: A and B (linear, cat) within 1e-5 relative;
      for svd the product B A against the best rank-R approximation of dW (factors are unique
      only up to sign), ||B A - dW||_F against the norm of the tail singular values, and the
      rows of A orthonormal; the config; and with --logits the engine's logits of M with OUT
      loaded against this side's logits of M with the expected dW added to its weights.
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
import peft_check  # noqa: E402

TOL = 1e-5
ORDER = {"attn.c_attn": 0, "attn.c_proj": 1, "mlp.c_fc": 2, "mlp.c_proj": 3}
CHANGED = {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora",
           "inference_mode"}

failures = []


def expect(ok, msg):
    if not ok:
        failures.append(msg)
        print("FAIL: " + msg)


def rel(a, b):
    den = b.norm().item()
    return (a - b).norm().item() / (den if den > 0 else 1.0)


def mod_key(mod):
    m = re.match(r"h\.(\d+)\.(.*)$", mod)
    return int(m.group(1)), ORDER[m.group(2)]


def read_adapter(d):
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    return cfg, peft_check.load_adapter(d)


def config_rank(cfg):
    return max([cfg["r"]] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


def expected(inputs, weights, how, svd_rank):
    """-> (how, R, {module: ("AB", A, B) or ("dW", dW_R, dW)})"""
    if len(inputs) == 1:
        how = "linear"
    ranks = [config_rank(cfg) for cfg, _ in inputs]
    if how == "linear":
        assert len(set(ranks)) == 1, "linear needs equal ranks"
        R = ranks[0]
    elif how == "cat":
        R = sum(ranks)
    else:
        R = svd_rank or max(ranks)
    modules = sorted({m for _, mods in inputs for m in mods}, key=mod_key)
    out = {}
    for mod in modules:
        present = [(mods[mod], w) for (_, mods), w in zip(inputs, weights) if mod in mods]
        if how == "cat":
            A = torch.cat([w * s * a for (a, b, s), w in present], dim=0)
            B = torch.cat([b for (a, b, s), w in present], dim=1)
            A = torch.cat([A, torch.zeros(R - A.shape[0], A.shape[1], dtype=A.dtype)], dim=0)
            B = torch.cat([B, torch.zeros(B.shape[0], R - B.shape[1], dtype=B.dtype)], dim=1)
            out[mod] = ("AB", A, B)
        elif how == "linear":
            A = sum(math.copysign(math.sqrt(abs(w * s)), w * s) * a for (a, b, s), w in present)
            B = sum(math.sqrt(abs(w * s)) * b for (a, b, s), w in present)
            out[mod] = ("AB", A, B)
        else:
            dW = sum(w * s * (b @ a) for (a, b, s), w in present)
            U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
            out[mod] = ("dW", U[:, :R] @ torch.diag(S[:R]) @ Vh[:R], dW)
    return how, R, out


def union_targets(inputs):
    tms = [cfg.get("target_modules") for cfg, _ in inputs]
    if all(isinstance(t, str) for t in tms):
        return "|".join("(%s)" % t for t in tms)
    names = []
    for t in tms:
        for n in t:
            if n not in names:
                names.append(n)
    return names


def slices_hold(B, C, hint):
    """Zeros of B (3C, R) outside the column blocks of the slices in hint ("q,v")."""
    sl = ["qkv".index(x) for x in hint.split(",")]
    r = B.shape[1] // len(sl)
    for k, s in enumerate(sl):
        for o in range(3):
            if o != s and B[o * C:(o + 1) * C, k * r:(k + 1) * r].abs().max().item() != 0:
                return False
    return True


class DeltaGPT2(ref.GPT2Ref):
    """The base model with dW (out, in) added to the named linears."""

    def __init__(self, cfg, params, deltas):
        super().__init__(cfg, params)
        self.deltas = deltas

    def linear(self, x, key):
        y = x @ self.params[key + ".weight"] + self.params[key + ".bias"]
        if key in self.deltas:
            y = y + x @ self.deltas[key].t()
        return y


def check(a):
    if len(a.adapter) != len(a.weight):
        raise SystemExit("one --weight per --adapter")
    inputs = [read_adapter(d) for d in a.adapter]
    how, R, exp = expected(inputs, a.weight, a.how, a.r)
    cfg = json.load(open(os.path.join(a.out, "adapter_config.json")))
    tensors, meta = ref.read_safetensors(os.path.join(a.out, "adapter_model.safetensors"))
    got = peft_check.load_adapter(a.out)
    name = "%s %s" % (how, " ".join("%s*%g" % (os.path.basename(d), w)
                                   for d, w in zip(a.adapter, a.weight)))

    # the config
    expect(cfg["r"] == R and cfg["lora_alpha"] == R, "%s: r %s, lora_alpha %s, want %d"
           % (name, cfg["r"], cfg["lora_alpha"], R))
    expect(cfg["use_rslora"] is False and cfg["inference_mode"] is True,
           "%s: use_rslora / inference_mode" % name)
    want_pat = {m: t[1].shape[0] for m, t in exp.items() if t[0] == "AB" and t[1].shape[0] != R}
    expect(cfg["rank_pattern"] == want_pat and cfg["alpha_pattern"] == want_pat,
           "%s: rank_pattern %s, alpha_pattern %s, want %s"
           % (name, cfg["rank_pattern"], cfg["alpha_pattern"], want_pat))
    expect(cfg["target_modules"] == union_targets(inputs), "%s: target_modules %s, want %s"
           % (name, cfg["target_modules"], union_targets(inputs)))
    first = inputs[0][0]
    for k in set(first) | set(cfg):
        if k not in CHANGED:
            expect(cfg.get(k) == first.get(k), "%s: config '%s' is %r, the first adapter's %r"
                   % (name, k, cfg.get(k), first.get(k)))

    # the tensors
    want_keys = set()
    for m in exp:
        for ab in "AB":
            want_keys.add("base_model.model.transformer.%s.lora_%s.weight" % (m, ab))
    expect(set(tensors) == want_keys, "%s: tensors %s, want %s"
           % (name, sorted(set(tensors) ^ want_keys), "none of them"))
    expect(all(t.dtype == torch.float32 for t in tensors.values()), "%s: not F32" % name)
    worst = {"A": 0.0, "B": 0.0, "BA": 0.0, "tail": 0.0, "orth": 0.0}
    deltas = {}
    for m, t in exp.items():
        if m not in got:
            continue
        A, B, s = got[m]
        expect(s == 1.0, "%s: %s has scale %g, want 1" % (name, m, s))
        if t[0] == "AB":
            worst["A"] = max(worst["A"], rel(A, t[1]))
            worst["B"] = max(worst["B"], rel(B, t[2]))
            deltas[m] = t[2] @ t[1]
        else:
            dW_R, dW = t[1], t[2]
            BA = B @ A
            worst["BA"] = max(worst["BA"], rel(BA, dW_R))
            tail = torch.linalg.svdvals(dW)[R:].norm().item()
            gap = abs((BA - dW).norm().item() - tail) / dW.norm().item()
            worst["tail"] = max(worst["tail"], gap)
            worst["orth"] = max(worst["orth"],
                                (A @ A.t() - torch.eye(R, dtype=A.dtype)).abs().max().item())
            deltas[m] = dW_R
    for k, v in worst.items():
        expect(v <= TOL, "%s: %s differs by %.3g (> %g)" % (name, k, v, TOL))

    # the slice metadata: never wrong, and as the test expects
    hints = meta.get("lora.c_attn_slices", "")
    for part in filter(None, hints.split(";")):
        layer, hint = part.split(":")
        m = "h.%s.attn.c_attn" % layer
        expect(m in got and slices_hold(got[m][1], got[m][0].shape[1], hint),
               "%s: metadata says %s but B has no such blocks" % (name, part))
    if a.expect_slices is not None:
        expect(hints == a.expect_slices, "%s: slice metadata '%s', want '%s'"
               % (name, hints, a.expect_slices))

    line = "%s: R %d, %d modules; A %.1e B %.1e BA %.1e tail %.1e orth %.1e" % (
        name, R, len(exp), worst["A"], worst["B"], worst["BA"], worst["tail"], worst["orth"])
    if a.logits:
        mcfg, params = peft_check.load_model(a.model)
        engine = ref.read_safetensors(a.logits)[0]
        want = DeltaGPT2(mcfg, params, deltas).forward(engine["tokens"])
        base = DeltaGPT2(mcfg, params, {}).forward(engine["tokens"])
        d = rel(engine["logits"].double(), want)
        expect(d <= TOL, "%s: logits differ by %.3g relative (> %g)" % (name, d, TOL))
        expect(rel(base, want) > 100 * TOL, "%s: the adapters barely move the logits" % name)
        line += "; logits %.1e (moved %.1e)" % (d, rel(base, want))
    print(line)
    return 1 if failures else 0


def make_peft(a):
    mcfg, _ = peft_check.load_model(a.model)
    c = ref.resolve_config(mcfg)
    C, I, L = c["n_embd"], c["inner"], c["n_layer"]
    g = torch.Generator().manual_seed(5)
    specs = {
        "p1": ([("attn.c_attn", C, 3 * C, 4), ("mlp.c_fc", C, I, 2)], 4, 8.0,
               {"c_fc": 2}, {"c_fc": 6.0}, False, torch.float32, r".*\.(c_attn|c_fc)"),
        "p2": ([("attn.c_attn", C, 3 * C, 4), ("mlp.c_proj", I, C, 4)], 4, 4.0,
               {}, {"mlp.c_proj": 2.0}, True, torch.float16, r".*\.(c_attn|mlp\.c_proj)"),
    }
    for name, (mods, r, alpha, rpat, apat, rslora, dtype, targets) in specs.items():
        tensors = {}
        for l in range(L):
            for mod, fin, fout, rr in mods:
                key = "base_model.model.transformer.h.%d.%s" % (l, mod)
                tensors[key + ".lora_A.weight"] = ((torch.rand((rr, fin), generator=g) * 2 - 1)
                                                   / math.sqrt(fin)).to(dtype)
                tensors[key + ".lora_B.weight"] = (torch.randn((fout, rr), generator=g)
                                                   * 0.05).to(dtype)
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        ref.write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors,
                              {"format": "pt"})
        config = {
            "alpha_pattern": apat, "auto_mapping": None, "base_model_name_or_path": "tiny",
            "bias": "none", "fan_in_fan_out": True, "inference_mode": True,
            "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
            "lora_alpha": alpha, "lora_dropout": 0.05, "modules_to_save": None,
            "peft_type": "LORA", "r": r, "rank_pattern": rpat, "revision": None,
            "target_modules": targets, "task_type": "CAUSAL_LM", "use_dora": False,
            "use_rslora": rslora,
        }
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["make-peft", "check"])
    ap.add_argument("--model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--how", choices=["linear", "cat", "svd"], default="svd")
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--weight", action="append", type=float, default=[])
    ap.add_argument("--r", type=int, default=0)
    ap.add_argument("--logits")
    ap.add_argument("--expect-slices", dest="expect_slices")
    a = ap.parse_args()
    torch.set_num_threads(1)
    return make_peft(a) if a.mode == "make-peft" else check(a)


if __name__ == "__main__":
    sys.exit(main())
