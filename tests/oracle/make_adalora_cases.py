#!/usr/bin/env python3
"""
make_adalora_cases.py --out DIR

Writes AdaLoRA oracle cases for the C engine (tests/oracle/test_adalora_oracle.c):
  DIR/models/{tiny,odd}/          tiny random GPT-2 checkpoints (as make_cases.py's)
  DIR/cases/<case>.safetensors    forward / loss (with the orthogonality penalty) / gradients,
                                  and for run cases the AdamW steps with the rank allocator

Case file keys: tokens, targets (I32), init.<name>, logits, loss, grad.<name> (F32, computed
in float64); run cases also losses, grad_norms (steps), budgets, masked (I32, steps),
masks (I32, steps x init_bgt: 1 kept), scores (F64, steps x init_bgt: triplet scores from the
EMAs after that step's allocator call), final.<name>. Metadata as make_cases.py's plus
target_r, tinit, tfinal, delta_t, ada_beta1, ada_beta2, orth_reg.
DIR/peft_fixture/ is an AdaLoRA directory laid out as PEFT saves one (whole c_attn and
mlp.c_proj modules, a rank pattern with one module pruned to rank 0, tensors cut to the kept
triplets) with expected.safetensors (tokens, logits) for the engine's reader.
Deterministic for a fixed --seed; asserts its own self-checks.

make_adalora_cases.py --check-adapter DIR --model MODEL reads an AdaLoRA directory written by
the engine as PEFT would load it and compares the logits with DIR/expected.safetensors.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adalora_ref as ada  # noqa: E402
import gpt2_ref as ref  # noqa: E402
import make_cases as mc  # noqa: E402

OPT_DEFAULTS = dict(steps=0, lr=0.0, warmup=0, schedule="constant", clip=0.0, weight_decay=0.0,
                    beta1=0.9, beta2=0.999, eps=1e-8)
ALLOC_DEFAULTS = dict(target_r=0, tinit=0, tfinal=0, delta_t=1, beta1=0.85, beta2=0.85)

CASES = [
    dict(name="ada_tiny_qv", model="tiny", r=4, alpha=8.0, targets="q,v", orth_reg=0.5,
         B=4, T=64, pad=True),
    dict(name="ada_tiny_qkv_proj_noreg", model="tiny", r=5, alpha=16.0, targets="q,k,v,c_proj",
         orth_reg=0.0, B=2, T=32, pad=True),
    dict(name="ada_odd_all", model="odd", r=3, alpha=4.0,
         targets="c_attn,c_proj,c_fc,mlp.c_proj", orth_reg=0.1, B=3, T=37, pad=True),
    # A moderate lr on purpose: at lr 2e-2 a float32 PyTorch run of this very reference already
    # drifts from the float64 one by ~1.5e-4 (relative) in the triplet scores after 30 steps
    # (AdamW amplifies rounding), which would hide what the comparison is for: the allocator.
    dict(name="ada_tiny_run60", model="tiny", r=6, alpha=12.0, targets="q,v,c_proj,c_fc",
         orth_reg=0.5, B=2, T=32, pad=True,
         opt=dict(steps=60, lr=5e-3, warmup=5, schedule="linear", clip=0.4, weight_decay=0.01),
         alloc=dict(target_r=3, tinit=10, tfinal=10, delta_t=5)),
]

MIN_GAP = 1e-3  # the masking decisions must not hinge on rounding


class AdaCase:
    def __init__(self, spec, seed, base32):
        self.spec = spec
        self.cfg = mc.MODELS[spec["model"]]
        self.r, self.alpha, self.targets = spec["r"], spec["alpha"], spec["targets"]
        self.gamma = spec["orth_reg"]
        self.opt = dict(OPT_DEFAULTS, **spec.get("opt", {}))
        self.alloc = dict(ALLOC_DEFAULTS, **spec.get("alloc", {}))
        gen = mc.generator(seed, spec["name"])
        self.tokens, self.tgt = mc.make_batch(gen, self.cfg["vocab_size"], spec["B"], spec["T"],
                                              spec.get("pad", False), False)
        self.base32 = base32
        self.init32 = ada.init_ada_params(self.cfg, self.targets, self.r, gen)
        self.names = ada.ada_names(self.cfg, self.targets)
        self.sites = ada.ada_sites(self.cfg, self.targets)

    def build(self, values=None):
        leaves = {n: (values or self.init32)[n].to(torch.float64).clone().requires_grad_(True)
                  for n in self.names}
        model = ada.AdaLoraGPT2(self.cfg, ref.to_double(self.base32), leaves, self.targets,
                                self.r, self.alpha)
        return model, leaves

    def loss_of(self, model):
        logits = model.forward(self.tokens)
        loss = ref.lm_loss(logits, self.tgt) + ada.orth_penalty(model.ada, self.sites, self.gamma)
        return logits, loss

    def train(self):
        o, a = self.opt, self.alloc
        model, leaves = self.build()
        params = [leaves[n] for n in self.names]
        optim = ref.make_adamw(params, o["lr"], (o["beta1"], o["beta2"]), o["eps"],
                               o["weight_decay"])
        alloc = ada.Allocator(self.sites, leaves, self.r, a["target_r"], a["tinit"], a["tfinal"],
                              a["delta_t"], o["steps"], a["beta1"], a["beta2"])
        rec = dict(losses=[], norms=[], budgets=[], masked=[], masks=[], scores=[], gaps=[])
        for s in range(o["steps"]):
            lr = o["lr"] * ref.schedule_factor(o["schedule"], s, o["warmup"], o["steps"])
            for g in optim.param_groups:
                g["lr"] = lr
            optim.zero_grad(set_to_none=True)
            _, loss = self.loss_of(model)
            loss.backward()
            if o["clip"] > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(params, o["clip"]))
            else:
                norm = ref.global_grad_norm(params)
            rec["losses"].append(float(loss))
            rec["norms"].append(norm)
            optim.step()
            b, masked, gap = alloc.after_step(s)
            assert b == alloc.budget(s)[0]
            rec["budgets"].append(b)
            rec["masked"].append(int(masked))
            rec["masks"].append(alloc.mask.to(torch.int32).clone())
            rec["scores"].append(alloc.scores().clone())
            if gap is not None:
                rec["gaps"].append((s, gap))
        final = {n: leaves[n].detach() for n in self.names}
        return rec, final

    def metadata(self):
        o, a = self.opt, self.alloc
        return {
            "model": self.spec["model"],
            "kind": "train",
            "method": "adalora",
            "r": str(self.r),
            "alpha": mc.fmt_float(self.alpha),
            "targets": ",".join(ref.parse_targets(self.targets)),
            "orth_reg": mc.fmt_float(self.gamma),
            "target_r": str(a["target_r"]),
            "tinit": str(a["tinit"]),
            "tfinal": str(a["tfinal"]),
            "delta_t": str(a["delta_t"]),
            "ada_beta1": mc.fmt_float(a["beta1"]),
            "ada_beta2": mc.fmt_float(a["beta2"]),
            "steps": str(o["steps"]),
            "lr": mc.fmt_float(o["lr"]),
            "warmup": str(o["warmup"]),
            "schedule": o["schedule"],
            "clip": mc.fmt_float(o["clip"]),
            "weight_decay": mc.fmt_float(o["weight_decay"]),
            "beta1": mc.fmt_float(o["beta1"]),
            "beta2": mc.fmt_float(o["beta2"]),
            "eps": mc.fmt_float(o["eps"]),
        }


def self_checks(case, model, leaves, logits):
    """The closed-form penalty gradient equals autograd's; a pruned triplet (Lambda_i = 0)
    contributes nothing whatever its P column and Q row hold."""
    if case.gamma > 0:
        pen = ada.orth_penalty(leaves, case.sites, case.gamma)
        g = torch.autograd.grad(pen, [leaves[n] for n in case.names], allow_unused=True)
        auto = dict(zip(case.names, g))
        for n, want in ada.orth_penalty_grad(leaves, case.sites, case.gamma).items():
            assert torch.allclose(auto[n], want, rtol=1e-10, atol=1e-14), "penalty gradient " + n
    pruned = {n: v.clone() for n, v in case.init32.items()}
    site = case.sites[0]["site"]
    pruned[site + ".lora_E"][1] = 0.0
    with torch.no_grad():
        m1, _ = case.build(pruned)
        l1 = m1.forward(case.tokens)
        pruned[site + ".lora_A"][1].zero_()
        pruned[site + ".lora_B"][:, 1].zero_()
        m2, _ = case.build(pruned)
        l2 = m2.forward(case.tokens)
    assert torch.equal(l1, l2), "a pruned triplet changes the logits"
    assert not torch.allclose(l1, logits.detach(), rtol=0, atol=1e-9), "triplet has no effect"


def write_peft_fixture(out_dir, cfg, base32, seed):
    """PEFT's own layout: init_r 5, lora_alpha 10, modules c_attn and mlp.c_proj."""
    c = ref.resolve_config(cfg)
    C, I = c["n_embd"], c["inner"]
    gen = mc.generator(seed, "peft_fixture")
    init_r, alpha = 5, 10.0
    tensors, modules, pattern = {}, {}, {}
    keeps = {0: {"attn.c_attn": [1, 0, 1, 1, 0], "mlp.c_proj": [0, 0, 0, 1, 0]},
             1: {"attn.c_attn": [1, 1, 1, 1, 1], "mlp.c_proj": [0, 0, 0, 0, 0]}}
    for l in range(c["n_layer"]):
        for mod, fin, fout in (("attn.c_attn", C, 3 * C), ("mlp.c_proj", I, C)):
            keep = torch.tensor(keeps[l][mod], dtype=torch.bool)
            a = torch.randn((init_r, fin), generator=gen) * 0.1
            e = torch.randn((init_r, 1), generator=gen) * 0.5
            b = torch.randn((fout, init_r), generator=gen) * 0.1
            e = e * keep.view(-1, 1)  # pruned triplets hold a zero singular value
            key = "base_model.model.transformer.h.%d.%s" % (l, mod)
            a, e, b = a[keep].contiguous(), e[keep].contiguous(), b[:, keep].contiguous()
            tensors[key + ".lora_A"], tensors[key + ".lora_E"], tensors[key + ".lora_B"] = a, e, b
            pattern["transformer.h.%d.%s.lora_E" % (l, mod)] = [bool(k) for k in keep]
            modules["h.%d.%s" % (l, mod)] = (a.double(), e.double(), b.double())
    os.makedirs(out_dir, exist_ok=True)
    ref.write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), tensors,
                          {"format": "pt"})
    config = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "tiny",
        "beta1": 0.85, "beta2": 0.85, "bias": "none", "deltaT": 10, "fan_in_fan_out": True,
        "inference_mode": True, "init_lora_weights": True, "init_r": init_r,
        "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
        "lora_alpha": alpha, "lora_dropout": 0.1, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "orth_reg_weight": 0.5,
        "peft_type": "ADALORA", "r": 8, "rank_pattern": pattern, "revision": None,
        "target_modules": ["c_attn", "mlp.c_proj"], "target_r": 2, "task_type": "CAUSAL_LM",
        "tfinal": 100, "tinit": 200, "total_step": 1000, "use_dora": False, "use_rslora": False,
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokens = torch.tensor([[(7 * i + 3) % c["vocab_size"] for i in range(24)],
                           [(11 * i + 5) % c["vocab_size"] for i in range(24)]], dtype=torch.int32)
    with torch.no_grad():
        logits = ada.PeftAdaGPT2(cfg, ref.to_double(base32), modules,
                                 ada.ada_scale(alpha, init_r)).forward(tokens)
    ref.write_safetensors(os.path.join(out_dir, "expected.safetensors"),
                          {"tokens": tokens, "logits": logits.float().contiguous()})
    return out_dir


def check_adapter(adapter_dir, model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tensors, _ = ref.read_safetensors(os.path.join(model_dir, "model.safetensors"))
    params = ref.to_double({k[len("transformer."):] if k.startswith("transformer.") else k: v
                            for k, v in tensors.items()})
    modules, scale, acfg = ada.load_peft_adalora(adapter_dir)
    exp, _ = ref.read_safetensors(os.path.join(adapter_dir, "expected.safetensors"))
    with torch.no_grad():
        logits = ada.PeftAdaGPT2(cfg, params, modules, scale).forward(exp["tokens"])
    d = (logits - exp["logits"].double()).abs().max().item()
    ranks = [int(a.shape[0]) for a, _, _ in modules.values()]
    print("%s: %d modules, init_r %d, kept ranks %s, logits max-abs %.2e"
          % (adapter_dir, len(modules), acfg["init_r"], ranks, d))
    if not d <= 1e-4:
        print("FAIL: logits differ by %.3e > 1e-4" % d)
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", help="output directory (required unless --check-adapter)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--check-adapter", metavar="DIR")
    ap.add_argument("--model", metavar="DIR", help="with --check-adapter")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check_adapter:
        return check_adapter(args.check_adapter, args.model)
    if not args.out:
        ap.error("--out is required")
    t0 = time.time()
    models_dir = os.path.join(args.out, "models")
    cases_dir = os.path.join(args.out, "cases")
    os.makedirs(cases_dir, exist_ok=True)
    base32 = {m: ref.init_base_params(cfg, mc.generator(args.seed, "model:" + m))
              for m, cfg in mc.MODELS.items()}
    for m, cfg in mc.MODELS.items():
        for f in ref.write_hf_model(os.path.join(models_dir, m), cfg, base32[m]):
            print("wrote %s" % f)

    p = write_peft_fixture(os.path.join(args.out, "peft_fixture"), mc.MODELS["tiny"],
                           base32["tiny"], args.seed)
    print("wrote %s (PEFT's AdaLoRA layout)" % p)

    for spec in CASES:
        case = AdaCase(spec, args.seed, base32[spec["model"]])
        model, leaves = case.build()
        logits, loss = case.loss_of(model)
        loss.backward()
        grads = {n: leaves[n].grad.detach().clone() for n in case.names}
        for n in case.names:
            assert grads[n].abs().max() > 0, "%s: zero gradient for %s" % (spec["name"], n)
        self_checks(case, model, leaves, logits)
        notes = []
        if spec["name"] == "ada_odd_all":
            worst = mc.finite_difference_check(case, model, leaves, grads, 3, label=spec["name"])
            notes.append("fd-check max rel err %.1e" % worst)

        tensors = {"tokens": case.tokens, "targets": case.tgt}
        for n in case.names:
            tensors["init." + n] = case.init32[n].float().contiguous()
        tensors["logits"] = logits.detach().float().contiguous()
        tensors["loss"] = loss.detach().float().reshape(1)
        for n in case.names:
            tensors["grad." + n] = grads[n].float().contiguous()
        if case.opt["steps"] > 0:
            rec, final = case.train()
            assert abs(rec["losses"][0] - float(loss)) < 1e-12
            tensors["losses"] = torch.tensor(rec["losses"], dtype=torch.float32)
            tensors["grad_norms"] = torch.tensor(rec["norms"], dtype=torch.float32)
            tensors["budgets"] = torch.tensor(rec["budgets"], dtype=torch.int32)
            tensors["masked"] = torch.tensor(rec["masked"], dtype=torch.int32)
            tensors["masks"] = torch.stack(rec["masks"]).contiguous()
            tensors["scores"] = torch.stack(rec["scores"]).to(torch.float64).contiguous()
            for n in case.names:
                tensors["final." + n] = final[n].float().contiguous()
            gaps = [g for _, g in rec["gaps"] if g is not None]
            assert gaps and min(gaps) > MIN_GAP, "%s: a masking decision is within %g of a " \
                "tie: %r" % (spec["name"], MIN_GAP, rec["gaps"])
            kept = [int(m.sum()) for m in rec["masks"]]
            clip = case.opt["clip"]
            notes.append("loss %.5f -> %.5f; kept %d -> %d (budget %d -> %d); mask steps %s; "
                         "min decision gap %.2e; clip active %d/%d"
                         % (rec["losses"][0], rec["losses"][-1], kept[0], kept[-1],
                            rec["budgets"][0], rec["budgets"][-1],
                            ",".join(str(s) for s, m in enumerate(rec["masked"]) if m and
                                     s <= case.opt["steps"] - case.alloc["tfinal"]),
                            min(gaps), sum(1 for x in rec["norms"] if clip > 0 and x > clip),
                            len(rec["norms"])))
            assert kept[-1] <= rec["budgets"][-1]
            if args.verbose:
                for s in range(case.opt["steps"]):
                    print("  step %2d loss %.6f norm %.4g budget %d masked %d kept %d"
                          % (s, rec["losses"][s], rec["norms"][s], rec["budgets"][s],
                             rec["masked"][s], kept[s]))
        p = os.path.join(cases_dir, spec["name"] + ".safetensors")
        mc.write_case(p, tensors, case.metadata())
        print("wrote %s  %s B=%d T=%d tensors=%d loss=%.6f%s"
              % (p, spec["model"], spec["B"], spec["T"], len(case.names), float(loss),
                 ("  " + "; ".join(notes)) if notes else ""))
    print("done in %.1f s" % (time.time() - t0), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
