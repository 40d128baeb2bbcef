"""
adalora_ref.py - a PyTorch reference of AdaLoRA (Zhang et al., ICLR 2023) as PEFT computes
it, on top of gpt2_ref.py's GPT-2. Written from the formulas, for the C engine's oracle.

Per adapted site (same sites and slices as gpt2_ref.lora_sites):
  P = "<site>.lora_B" (len, r), Lambda = "<site>.lora_E" (r, 1), Q = "<site>.lora_A" (r, in)
  y[..., off:off+len] += scaling / (ranknum + 1e-5) * (x @ (Q * Lambda).T) @ P.T
  scaling = lora_alpha (r when alpha <= 0), ranknum = the initial r.

Orthogonality penalty (PEFT's form: Frobenius norm, not squared, mean over the matrices):
  R = gamma / n * sum_sites (||Q Q^T - I||_F + ||P^T P - I||_F),  n = 2 * sites

Rank allocator (PEFT's RankAllocator), called after every optimizer step with the 0-based
step index and the gradients that step used (after clipping):
  I = |w * g|, Ibar <- b1 Ibar + (1-b1) I, Ubar <- b2 Ubar + (1-b2) |I - Ibar|, s = Ibar * Ubar
  S_i = s(Lambda_i) + mean_j s(Q_ij) + mean_j s(P_ji)
  budget b(t): init_bgt (t <= tinit), target_bgt (t > T - tfinal),
               else int((init - target) * (1 - (t - tinit) / (T - tfinal - tinit))^3 + target),
               masking when t % deltaT == 0; at t == T - tfinal a forced mask, then the EMAs
               are reset and the pattern is re-applied after every later step.
  mask: threshold = the (init_bgt - b)-th smallest S over all sites; Lambda_i = 0 where
        S_i <= threshold.
"""

import json
import math
import os
import re

import torch

import gpt2_ref as ref


def ada_sites(cfg, targets):
    return ref.lora_sites(cfg, targets)


def ada_names(cfg, targets):
    names = []
    for s in ada_sites(cfg, targets):
        names += [s["site"] + ".lora_A", s["site"] + ".lora_E", s["site"] + ".lora_B"]
    return names


def ada_scale(alpha, r):
    scaling = alpha if alpha > 0 else float(r)
    return scaling / (r + 1e-5)


def init_ada_params(cfg, targets, r, gen, e_std=0.5):
    """Q ~ U(-1/sqrt(in), 1/sqrt(in)), Lambda ~ N(0, e_std), P ~ N(0, 0.2): every value
    non-zero so that every gradient is non-trivial (PEFT's own init has Lambda = 0)."""
    out = {}
    for s in ada_sites(cfg, targets):
        bound = 1.0 / math.sqrt(s["inp"])
        a = (torch.rand((r, s["inp"]), generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound
        e = torch.randn((r, 1), generator=gen, dtype=torch.float32) * e_std
        b = torch.randn((s["len"], r), generator=gen, dtype=torch.float32) * 0.2
        out[s["site"] + ".lora_A"] = a.contiguous()
        out[s["site"] + ".lora_E"] = e.contiguous()
        out[s["site"] + ".lora_B"] = b.contiguous()
    return out


class AdaLoraGPT2(ref.GPT2Ref):
    """GPT2Ref whose adapters are AdaLoRA's SVD-form updates (dropout 0)."""

    def __init__(self, cfg, params, ada, targets, r, alpha):
        super().__init__(cfg, params)
        self.ada = ada
        self.r = r
        self.ada_scale = ada_scale(alpha, r)
        self.sites = {}
        for s in ada_sites(cfg, targets):
            self.sites.setdefault(s["linear"], []).append(s)

    def linear(self, x, key):
        y = x @ self.params[key + ".weight"] + self.params[key + ".bias"]
        for s in self.sites.get(key, ()):
            q = self.ada[s["site"] + ".lora_A"]
            e = self.ada[s["site"] + ".lora_E"]
            p = self.ada[s["site"] + ".lora_B"]
            d = (x @ (q * e).t()) @ p.t() * self.ada_scale
            width = y.shape[-1]
            if s["off"] != 0 or s["len"] != width:
                d = torch.nn.functional.pad(d, (s["off"], width - s["off"] - s["len"]))
            y = y + d
        return y


def orth_penalty(ada, sites, gamma):
    """gamma / n * sum of ||Q Q^T - I||_F and ||P^T P - I||_F over every site."""
    if gamma <= 0 or not sites:
        return torch.zeros((), dtype=torch.float64)
    total, n = 0.0, 0
    for s in sites:
        q = ada[s["site"] + ".lora_A"]
        p = ada[s["site"] + ".lora_B"]
        for cov in (q @ q.t(), p.t() @ p):
            eye = torch.eye(cov.shape[0], dtype=cov.dtype)
            total = total + torch.linalg.matrix_norm(cov - eye, ord="fro")
            n += 1
    return gamma * total / n


def orth_penalty_grad(ada, sites, gamma):
    """The closed form of the penalty's gradient (checked against autograd by the caller):
    dQ = gamma/n * 2 (QQ^T - I) Q / ||QQ^T - I||, dP = gamma/n * 2 P (P^T P - I) / ||P^T P - I||."""
    n = 2 * len(sites)
    out = {}
    for s in sites:
        q = ada[s["site"] + ".lora_A"].detach()
        p = ada[s["site"] + ".lora_B"].detach()
        mq = q @ q.t() - torch.eye(q.shape[0], dtype=q.dtype)
        mp = p.t() @ p - torch.eye(p.shape[1], dtype=p.dtype)
        out[s["site"] + ".lora_A"] = gamma / n * 2.0 * (mq @ q) / torch.linalg.matrix_norm(mq)
        out[s["site"] + ".lora_B"] = gamma / n * 2.0 * (p @ mp) / torch.linalg.matrix_norm(mp)
    return out


class Allocator:
    """The rank allocator over float64 leaves (names as ada_names)."""

    def __init__(self, sites, leaves, r, target_r, tinit, tfinal, delta_t, total, beta1, beta2):
        self.sites = sites
        self.leaves = leaves
        self.r = r
        self.init_bgt = r * len(sites)
        self.target_bgt = target_r * len(sites)
        self.tinit, self.tfinal, self.delta_t, self.total = tinit, tfinal, delta_t, total
        self.beta1, self.beta2 = beta1, beta2
        self.mask = torch.ones(self.init_bgt, dtype=torch.bool)
        self.final = False
        self.reset()

    def reset(self):
        self.ipt = {n: torch.zeros_like(t) for n, t in self.leaves.items()}
        self.unc = {n: torch.zeros_like(t) for n, t in self.leaves.items()}

    def budget(self, t):
        """(b(t), masking step?) as PEFT's budget_schedule."""
        if t <= self.tinit:
            return self.init_bgt, False
        if t > self.total - self.tfinal:
            return self.target_bgt, True
        mul = 1.0 - (t - self.tinit) / (self.total - self.tfinal - self.tinit)
        b = int((self.init_bgt - self.target_bgt) * mul ** 3 + self.target_bgt)
        return b, t % self.delta_t == 0

    def update(self):
        with torch.no_grad():
            for n, w in self.leaves.items():
                i = (w * w.grad).abs()
                self.ipt[n] = self.beta1 * self.ipt[n] + (1 - self.beta1) * i
                self.unc[n] = self.beta2 * self.unc[n] + (1 - self.beta2) * (i - self.ipt[n]).abs()

    def scores(self):
        out = []
        for s in self.sites:
            se = (self.ipt[s["site"] + ".lora_E"] * self.unc[s["site"] + ".lora_E"]).view(-1)
            sq = (self.ipt[s["site"] + ".lora_A"] * self.unc[s["site"] + ".lora_A"]).mean(dim=1)
            sp = (self.ipt[s["site"] + ".lora_B"] * self.unc[s["site"] + ".lora_B"]).mean(dim=0)
            out.append(se + sq + sp)
        return torch.cat(out)

    def apply_mask(self):
        with torch.no_grad():
            for k, s in enumerate(self.sites):
                e = self.leaves[s["site"] + ".lora_E"]
                keep = self.mask[k * self.r:(k + 1) * self.r].to(e.dtype).view(-1, 1)
                e.mul_(keep)

    def mask_to_budget(self, b):
        """Returns the relative gap between the threshold and the next score (how robust the
        decision is to rounding), or None when nothing is pruned."""
        k = self.init_bgt - b
        if k <= 0:
            self.mask[:] = True
            return None
        sc = self.scores()
        srt = torch.sort(sc).values
        thr = float(srt[k - 1])
        self.mask = ~(sc <= thr)
        self.apply_mask()
        if k < len(srt):
            nxt = float(srt[k])
            return (nxt - thr) / max(abs(nxt), 1e-300)
        return 1.0

    def after_step(self, t):
        """Returns (budget, masked, gap)."""
        tf = self.total - self.tfinal
        if self.final or t > tf:
            self.apply_mask()
            return self.target_bgt, True, None
        if t < tf:
            self.update()
        b, m = self.budget(t)
        gap = None
        if m or t == tf:
            gap = self.mask_to_budget(b)
        if t == tf:
            self.final = True
            self.reset()
        return b, bool(m or t == tf), gap


# ----------------------------------------------------------------------------------------
# PEFT AdaLoRA directories, read as PEFT loads them (no peft package): every adapter covers a
# whole module; a rank_pattern resizes each module to its kept triplets before the (already
# cut) tensors load; the scale stays lora_alpha / (init_r + 1e-5).

_ADA_KEY = re.compile(r"^base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|"
                      r"mlp\.c_fc|mlp\.c_proj)\.lora_([AEB])(?:\.[A-Za-z0-9_]+)?$")


def load_peft_adalora(adapter_dir):
    """-> ({module 'h.N.attn.c_attn': (A, E, B)} in float64, scale, config)."""
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert cfg["peft_type"] == "ADALORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["fan_in_fan_out"] is True and cfg["bias"] == "none"
    for k in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
              "orth_reg_weight", "total_step", "lora_alpha", "target_modules"):
        assert k in cfg, "adapter_config.json lacks %s" % k
    init_r = cfg["init_r"]
    tensors, meta = ref.read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert meta.get("format") == "pt"
    mods = {}
    for k, v in tensors.items():
        m = _ADA_KEY.match(k)
        assert m, "not a PEFT AdaLoRA key: %s" % k
        mods.setdefault("h.%s.%s" % (m.group(1), m.group(2)), {})[m.group(3)] = v.to(torch.float64)
    pattern = cfg.get("rank_pattern") or {}
    out = {}
    for mod, t in mods.items():
        keys = [p for p in pattern if re.match(r"(.*\.)?%s\.lora_E$" % re.escape(mod), p)]
        rank = sum(bool(b) for b in pattern[keys[0]]) if keys else init_r
        if keys:
            assert len(pattern[keys[0]]) == init_r, mod
        assert t["A"].shape[0] == rank and t["E"].shape == (rank, 1) and t["B"].shape[1] == rank, \
            "%s: tensors do not have the rank_pattern's %d triplets" % (mod, rank)
        out[mod] = (t["A"], t["E"], t["B"])
    alpha = cfg["lora_alpha"]
    return out, (alpha if alpha > 0 else init_r) / (init_r + 1e-5), cfg


class PeftAdaGPT2(ref.GPT2Ref):
    def __init__(self, cfg, params, modules, scale):
        super().__init__(cfg, params)
        self.modules, self.ada_scale = modules, scale

    def linear(self, x, key):
        y = x @ self.params[key + ".weight"] + self.params[key + ".bias"]
        if key in self.modules:
            a, e, b = self.modules[key]
            y = y + (x @ (a * e).t()) @ b.t() * self.ada_scale
        return y
