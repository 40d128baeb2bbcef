#!/usr/bin/env python3
"""
make_cases.py --out DIR

Writes the oracle's test models and cases (see README.md in this folder):
  DIR/models/{tiny,odd,tiny_f16,tiny_bf16,tiny_sharded,tiny_noprefix,tiny_buffers}/
  DIR/cases/load_<model>.safetensors   tokens + expected logits of a stored model
  DIR/cases/<case>.safetensors         forward / loss / gradient (and AdamW) cases

Everything is computed in float64 from the float32 (or f16/bf16) values actually stored,
and saved as float32. Deterministic for a fixed --seed. Fails (assert) if any of its
self-checks does not hold.
"""

import argparse
import os
import sys
import time
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref as ref  # noqa: E402

MODELS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=64, n_inner=256, vocab_size=512,
                 layer_norm_epsilon=1e-5, activation_function="gelu_new"),
    "odd": dict(n_layer=2, n_head=3, n_embd=54, n_positions=64, n_inner=None, vocab_size=509,
                layer_norm_epsilon=1e-5, activation_function="gelu"),
}

# loader variants of tiny: name -> (dtype, prefix, buffers, shards)
LOAD_VARIANTS = {
    "tiny": (torch.float32, "transformer.", False, 1),
    "odd": (torch.float32, "transformer.", False, 1),
    "tiny_f16": (torch.float16, "transformer.", False, 1),
    "tiny_bf16": (torch.bfloat16, "transformer.", False, 1),
    "tiny_sharded": (torch.float32, "transformer.", False, 2),
    "tiny_noprefix": (torch.float32, "", False, 1),
    "tiny_buffers": (torch.float32, "transformer.", True, 1),
}

OPT_DEFAULTS = dict(steps=0, lr=0.0, warmup=0, schedule="constant", clip=0.0, weight_decay=0.0,
                    beta1=0.9, beta2=0.999, eps=1e-8)

# pad: shorten rows 1.. with padding (targets -1); prompt: mask the first part of each row
CASES = [
    dict(name="tiny_lora_qv_r4", model="tiny", method="lora", r=4, alpha=8.0, targets="q,v",
         B=4, T=64, pad=True),
    dict(name="tiny_lora_qv_r1", model="tiny", method="lora", r=1, alpha=2.0, targets="q,v",
         B=2, T=16, pad=False),
    dict(name="tiny_lora_all_r16", model="tiny", method="lora", r=16, alpha=16.0,
         targets="c_attn,c_proj,c_fc,mlp.c_proj", use_rslora=1, B=2, T=32, pad=True),
    dict(name="tiny_lora_qv_prompt", model="tiny", method="lora", r=4, alpha=8.0, targets="q,v",
         label_smoothing=0.1, B=3, T=40, pad=True, prompt=True),
    dict(name="tiny_full", model="tiny", method="full", B=2, T=32, pad=True),
    dict(name="tiny_bitfit", model="tiny", method="bitfit", B=2, T=32, pad=True),
    dict(name="odd_lora_qkv_proj", model="odd", method="lora", r=3, alpha=4.0,
         targets="q,k,v,c_proj", B=3, T=37, pad=True),
    dict(name="odd_full", model="odd", method="full", B=1, T=64, pad=False),
    dict(name="odd_bitfit", model="odd", method="bitfit", B=2, T=20, pad=True),
    dict(name="tiny_lora_qv_adamw", model="tiny", method="lora", r=4, alpha=8.0, targets="q,v",
         B=2, T=32, pad=True,
         opt=dict(steps=20, lr=1e-2, warmup=5, schedule="linear", clip=0.11, weight_decay=0.01)),
    dict(name="odd_full_adamw", model="odd", method="full", B=2, T=24, pad=True,
         opt=dict(steps=20, lr=1e-3, warmup=3, schedule="cosine", clip=1.0, weight_decay=0.01)),
    dict(name="tiny_bitfit_adamw", model="tiny", method="bitfit", B=2, T=32, pad=True,
         opt=dict(steps=20, lr=1e-2, warmup=0, schedule="constant", clip=0.0, weight_decay=0.01)),
]


def generator(seed, name):
    return torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(name.encode())) % (2 ** 63))


def fmt_float(x):
    return repr(float(x))


def shape_str(t):
    return "(" + ",".join(str(d) for d in t.shape) + ")"


# ----------------------------------------------------------------------------------------
# data


def make_batch(gen, V, B, T, pad, prompt):
    """Random tokens; targets = the next token, -1 where there is none, on padding and on
    the prompt. Row 0 is never padded; padding uses token V-1."""
    tokens = torch.randint(0, V, (B, T), generator=gen, dtype=torch.int64)
    targets = torch.full((B, T), -1, dtype=torch.int64)
    for b in range(B):
        L = T
        if pad and b > 0:
            L = T - int(torch.randint(1, max(1, T // 4) + 1, (1,), generator=gen))
        tokens[b, L:] = V - 1
        P = int(torch.randint(T // 5, T // 2 + 1, (1,), generator=gen)) if prompt else 0
        targets[b, P:L - 1] = tokens[b, P + 1:L]
        assert (targets[b] >= 0).sum() > 0
    return tokens.to(torch.int32), targets.to(torch.int32)


# ----------------------------------------------------------------------------------------
# cases


class Case:
    def __init__(self, spec, seed, base32):
        self.spec = spec
        self.cfg = MODELS[spec["model"]]
        self.method = spec["method"]
        self.r = spec.get("r", 0)
        self.alpha = spec.get("alpha", 0.0)
        self.targets = spec.get("targets", "")
        self.use_rslora = spec.get("use_rslora", 0)
        self.ls = spec.get("label_smoothing", 0.0)
        self.opt = dict(OPT_DEFAULTS, **spec.get("opt", {}))
        gen = generator(seed, spec["name"])
        V = self.cfg["vocab_size"]
        self.tokens, self.tgt = make_batch(gen, V, spec["B"], spec["T"], spec.get("pad", False),
                                           spec.get("prompt", False))
        self.base32 = base32
        self.lora32 = (ref.init_lora_params(self.cfg, self.targets, self.r, gen)
                       if self.method == "lora" else {})
        self.names = ref.trainable_names(self.cfg, self.method, self.targets)
        src = self.lora32 if self.method == "lora" else self.base32
        self.init32 = {n: src[n] for n in self.names}

    def build(self, values=None):
        """A float64 model with fresh trainable leaves (from `values`, default the init)."""
        base = ref.to_double(self.base32)
        lora = ref.to_double(self.lora32)
        leaves = {}
        for n in self.names:
            v = (values or self.init32)[n].to(torch.float64).clone().requires_grad_(True)
            leaves[n] = v
            if self.method == "lora":
                lora[n] = v
            else:
                base[n] = v
        model = ref.GPT2Ref(self.cfg, base, lora, self.targets, self.r, self.alpha, self.use_rslora)
        return model, leaves

    def loss_of(self, model):
        logits = model.forward(self.tokens)
        return logits, ref.lm_loss(logits, self.tgt, self.ls)

    def train(self):
        o = self.opt
        model, leaves = self.build()
        params = [leaves[n] for n in self.names]
        optim = ref.make_adamw(params, o["lr"], (o["beta1"], o["beta2"]), o["eps"], o["weight_decay"])
        losses, norms = [], []
        for s in range(o["steps"]):
            lr = o["lr"] * ref.schedule_factor(o["schedule"], s, o["warmup"], o["steps"])
            for g in optim.param_groups:
                g["lr"] = lr
            optim.zero_grad(set_to_none=True)
            _, loss = self.loss_of(model)
            loss.backward()
            if o["clip"] > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(params, o["clip"]))
                # torch scales by min(1, clip / (norm + 1e-6))
                after = ref.global_grad_norm(params)
                assert abs(after - norm * min(1.0, o["clip"] / (norm + 1e-6))) <= 1e-9 * max(norm, 1e-30)
            else:
                norm = ref.global_grad_norm(params)
            norms.append(norm)
            losses.append(float(loss))
            optim.step()
        final = {n: leaves[n].detach() for n in self.names}
        return losses, norms, final

    def metadata(self):
        o = self.opt
        return {
            "model": self.spec["model"],
            "kind": "train",
            "method": self.method,
            "r": str(self.r),
            "alpha": fmt_float(self.alpha),
            "targets": ",".join(ref.parse_targets(self.targets)) if self.method == "lora" else "",
            "use_rslora": str(int(self.use_rslora)),
            "label_smoothing": fmt_float(self.ls),
            "steps": str(o["steps"]),
            "lr": fmt_float(o["lr"]),
            "warmup": str(o["warmup"]),
            "schedule": o["schedule"],
            "clip": fmt_float(o["clip"]),
            "weight_decay": fmt_float(o["weight_decay"]),
            "beta1": fmt_float(o["beta1"]),
            "beta2": fmt_float(o["beta2"]),
            "eps": fmt_float(o["eps"]),
        }


def finite_difference_check(case, model, leaves, grads, n_entries, h=1e-5, label=""):
    """Central differences of the float64 loss against autograd on a few entries per tensor."""
    gen = torch.Generator().manual_seed(7)
    worst = 0.0
    for n in case.names[:: max(1, len(case.names) // 6)] + [case.names[-1]]:
        t = leaves[n]
        for _ in range(n_entries):
            i = int(torch.randint(0, t.numel(), (1,), generator=gen))
            flat = t.data.view(-1)
            old = float(flat[i])
            with torch.no_grad():
                flat[i] = old + h
                lp = float(case.loss_of(model)[1])
                flat[i] = old - h
                lm = float(case.loss_of(model)[1])
                flat[i] = old
            fd = (lp - lm) / (2 * h)
            ag = float(grads[n].view(-1)[i])
            err = abs(fd - ag) / max(1e-6, abs(fd) + abs(ag))
            worst = max(worst, err)
            assert err < 1e-5 or abs(fd - ag) < 1e-9, \
                "%s: gradient check failed for %s[%d]: fd %.10g autograd %.10g" % (label, n, i, fd, ag)
    return worst


def check_roundtrip(path, tensors, meta=None):
    got, got_meta = ref.read_safetensors(path)
    assert list(got) == list(tensors), "%s: tensor names differ after re-read" % path
    for k, t in tensors.items():
        g = got[k]
        assert g.dtype == t.dtype and tuple(g.shape) == tuple(t.shape), "%s: %s dtype/shape" % (path, k)
        assert torch.equal(g, t), \
            "%s: %s differs after re-read" % (path, k)
    if meta is not None:
        assert got_meta == {str(a): str(b) for a, b in meta.items()}, "%s: metadata differs" % path
    return got


def write_case(path, tensors, meta):
    ref.write_safetensors(path, tensors, meta)
    check_roundtrip(path, tensors, meta)


# ----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--verbose", action="store_true", help="print per-step optimiser details")
    args = ap.parse_args()

    torch.set_num_threads(1)
    t_start = time.time()
    out = args.out
    models_dir = os.path.join(out, "models")
    cases_dir = os.path.join(out, "cases")
    os.makedirs(models_dir, exist_ok=True)
    os.makedirs(cases_dir, exist_ok=True)

    base32 = {m: ref.init_base_params(cfg, generator(args.seed, "model:" + m)) for m, cfg in MODELS.items()}

    # ---- models and load cases ----
    for variant, (dtype, prefix, buffers, shards) in LOAD_VARIANTS.items():
        mname = "odd" if variant == "odd" else "tiny"
        cfg = MODELS[mname]
        files = ref.write_hf_model(os.path.join(models_dir, variant), cfg, base32[mname], dtype, prefix,
                                   buffers, shards)
        expect = ref.hf_tensors(cfg, base32[mname], dtype, prefix, buffers)
        seen = {}
        for f in files:
            if f.endswith(".safetensors"):
                seen.update(check_roundtrip(f, {k: v for k, v in expect.items()
                                                if k in ref.read_safetensors(f)[0]}, {"format": "pt"}))
            print("wrote %s" % f)
        assert sorted(seen) == sorted(expect), "%s: shards do not cover the model" % variant

        gen = generator(args.seed, "load:" + mname)  # same tokens for every tiny variant
        tokens = torch.randint(0, cfg["vocab_size"], (2, 32), generator=gen, dtype=torch.int32)
        with torch.no_grad():
            logits = ref.GPT2Ref(cfg, ref.stored_params(cfg, base32[mname], dtype)).forward(tokens)
        p = os.path.join(cases_dir, "load_%s.safetensors" % variant)
        write_case(p, {"tokens": tokens, "logits": logits.float()}, {"model": variant, "kind": "load"})
        print("wrote %s  tokens %s logits %s" % (p, shape_str(tokens), shape_str(logits)))

    # model-level self-checks on tiny
    cfg = MODELS["tiny"]
    b64 = ref.to_double(base32["tiny"])
    gen = generator(args.seed, "check:causal")
    tok = torch.randint(0, cfg["vocab_size"], (2, 24), generator=gen, dtype=torch.int32)
    tok2 = tok.clone()
    tok2[:, 16:] = (tok2[:, 16:] + 1) % cfg["vocab_size"]
    with torch.no_grad():
        l1 = ref.GPT2Ref(cfg, b64).forward(tok)
        l2 = ref.GPT2Ref(cfg, b64).forward(tok2)
    assert torch.allclose(l1[:, :16], l2[:, :16], rtol=0, atol=1e-12), "attention is not causal"
    assert not torch.allclose(l1[:, 16:], l2[:, 16:]), "later tokens do not change the logits"

    # ---- training cases ----
    fd_done = set()
    for spec in CASES:
        case = Case(spec, args.seed, base32[spec["model"]])
        model, leaves = case.build()
        logits, loss = case.loss_of(model)
        loss.backward()
        grads = {n: leaves[n].grad.detach().clone() for n in case.names}
        for n in case.names:
            assert grads[n].abs().max() > 0, "%s: zero gradient for %s" % (spec["name"], n)

        notes = []
        if case.method == "lora":
            # B = 0 adapters leave the base model's logits exactly unchanged
            zeroB = {n: (torch.zeros_like(v) if n.endswith("lora_B") else v) for n, v in case.init32.items()}
            with torch.no_grad():
                m0, _ = case.build(zeroB)
                lz = m0.forward(case.tokens)
                lb = ref.GPT2Ref(case.cfg, ref.to_double(case.base32)).forward(case.tokens)
            assert torch.equal(lz, lb), "%s: B = 0 LoRA changes the logits" % spec["name"]
            assert not torch.allclose(logits.detach(), lb, rtol=0, atol=1e-9), \
                "%s: the adapters have no effect" % spec["name"]
        if spec["name"] in ("tiny_lora_qv_r1", "odd_lora_qkv_proj", "tiny_lora_all_r16",
                            "tiny_bitfit", "odd_full"):
            worst = finite_difference_check(case, model, leaves, grads, 3, label=spec["name"])
            notes.append("fd-check max rel err %.1e" % worst)
            fd_done.add(case.method)
        # label smoothing: compare with the explicit formula
        if case.ls > 0:
            lg = logits.detach().reshape(-1, logits.shape[-1])
            t = case.tgt.reshape(-1).long()
            keep = t >= 0
            lp = torch.log_softmax(lg[keep], dim=-1)
            nll = -lp.gather(1, t[keep][:, None])[:, 0]
            smooth = -lp.mean(dim=-1)
            manual = ((1 - case.ls) * nll + case.ls * smooth).mean()
            assert abs(float(manual) - float(loss)) < 1e-12, "label smoothing formula mismatch"

        tensors = {"tokens": case.tokens, "targets": case.tgt}
        for n in case.names:
            tensors["init." + n] = case.init32[n].float().contiguous()
        tensors["logits"] = logits.detach().float().contiguous()
        tensors["loss"] = loss.detach().float().reshape(1)
        for n in case.names:
            tensors["grad." + n] = grads[n].float().contiguous()

        o = case.opt
        if o["steps"] > 0:
            losses, norms, final = case.train()
            assert abs(losses[0] - float(loss)) < 1e-12
            tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
            tensors["grad_norms"] = torch.tensor(norms, dtype=torch.float32)
            for n in case.names:
                tensors["final." + n] = final[n].float().contiguous()
            if o["clip"] > 0:
                active = sum(1 for x in norms if x > o["clip"])
                notes.append("clip %g active on %d/%d steps (pre-clip norm %.3g..%.3g)"
                             % (o["clip"], active, len(norms), min(norms), max(norms)))
            notes.append("loss %.5f -> %.5f" % (losses[0], losses[-1]))
            assert losses[-1] < losses[0], "%s: training did not reduce the loss" % spec["name"]
            if args.verbose:
                for s, (l, g) in enumerate(zip(losses, norms)):
                    lr = o["lr"] * ref.schedule_factor(o["schedule"], s, o["warmup"], o["steps"])
                    print("  step %2d lr %.6g loss %.6f grad_norm %.6g" % (s, lr, l, g))

        p = os.path.join(cases_dir, spec["name"] + ".safetensors")
        write_case(p, tensors, case.metadata())
        print("wrote %s  %s %s B=%d T=%d tensors=%d loss=%.6f%s"
              % (p, spec["model"], case.method, spec["B"], spec["T"], len(case.names), float(loss),
                 ("  " + "; ".join(notes)) if notes else ""))

    assert fd_done == {"lora", "full", "bitfit"}
    print("done in %.1f s" % (time.time() - t_start), file=sys.stderr)


if __name__ == "__main__":
    main()
