#!/usr/bin/env python3
"""Parity fixtures in llm.c's manner: tiny models built in PyTorch (scripts/qlstm_torch.py, an
independent implementation of docs/SPEC.md), computed in float64, written as small
safetensors files under tests/fixtures/parity/ with everything one training step involves:
the weights (as qlstm names them), Adam's moments, the inputs, the carried state, the dropout
masks, and the expected logits, loss, gradients of every parameter, updated weights after one
clipped Adam (or SGD) step, and the batch-norm running statistics after the forward.
tests/parity.rs loads each, runs qlstm's forward, backward and optimizer, and compares.

Needs torch (not in CI): run by hand after changing a definition, and commit the fixtures.

    /path/to/venv/bin/python scripts/make_parity_fixture.py [--out tests/fixtures/parity]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qlstm_torch as qt  # noqa: E402

QUANTIZERS = ["fp", "bc", "bwn", "lab", "tc", "twn", "lat"]
NORMALIZATIONS = ["none", "weight", "layer", "batch_shared", "batch_separate"]


def spec_text(case):
    """The qlstm spec of a case (the fields that shape the model and the step)."""
    m, t = case["model"], case["train"]
    lines = [f'name = "{case["name"]}"', f'task = "{case["task"]}"', "[model]"]
    lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in m.items()]
    lines += ["[train]"] + [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in t.items()]
    return "\n".join(lines) + "\n"


def as_spec(case):
    """The dict qlstm_torch.Model reads (qlstm's defaults for what the case leaves out)."""
    m = {"cell": "lstm", "layers": 1, "embedding": 0, "dropout_input": 0.0, "dropout_between": 0.0, "dropout_output": 0.0}
    m.update(case["model"])
    t = {"bptt": case["steps"], "eval_batch_size": case["batch"]}
    t.update(case["train"])
    return {"task": case["task"], "model": m, "train": t}


def f32(x):
    """Round to float32 and back: the values qlstm holds."""
    return x.float().double()


def make(case, gen):
    spec = as_spec(case)
    vocab, steps, batch = case["vocab"], case["steps"], case["batch"]
    model = qt.Model(spec, vocab).double()
    mnist = model.mnist
    # weights away from the linear regime, as qlstm's gradient checks use them; rounded to f32
    with torch.no_grad():
        for name, (mod, attr) in qt.qlstm_names(model).items():
            t = getattr(mod, attr) if not attr.isdigit() else mod[int(attr)]
            if name.endswith("running_var"):
                t.copy_(f32(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64)))
            elif name.endswith("running_mean"):
                t.copy_(f32(0.2 * torch.randn(t.shape, generator=gen, dtype=torch.float64)))
            elif name.endswith("wn_gain_x") or name.endswith("wn_gain_h") or ".gain" in name:
                t.copy_(f32(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64)))
            else:
                t.copy_(f32(torch.rand(t.shape, generator=gen, dtype=torch.float64) * 1.6 - 0.8))
    names = qt.qlstm_names(model)
    params = {n: (getattr(mod, a) if not a.isdigit() else mod[int(a)]) for n, (mod, a) in names.items()}
    running_before = {n: p.detach().clone() for n, p in params.items() if "running_" in n}
    trained = {n: p for n, p in params.items() if isinstance(p, torch.nn.Parameter)}
    # Adam state from three earlier steps (positive second moments), so lab/lat use a curvature
    adam = case["train"]["optimizer"] == "adam"
    moments = {}
    if adam:
        for n, p in trained.items():
            moments[n] = (f32(0.01 * torch.randn(p.shape, generator=gen, dtype=torch.float64)),
                          f32(1e-4 + 1e-3 * torch.rand(p.shape, generator=gen, dtype=torch.float64)))
        for l, layer in enumerate(model.layers):
            p = f"{model.cell}.{l}"
            layer.d_x = qt.curvature(moments[f"{p}.w_x"][1]).double()
            layer.d_h = qt.curvature(moments[f"{p}.w_h"][1]).double()
    # inputs, targets, carried state, masks (time-major rows t·B + b, as qlstm's windows)
    if mnist:
        x = f32(torch.rand(steps, batch, 1, generator=gen, dtype=torch.float64))
        y = torch.randint(0, 10, (batch,), generator=gen)
        state = model.initial_state(batch)
    else:
        x = torch.randint(0, vocab, (steps, batch), generator=gen)
        y = torch.randint(0, vocab, (steps * batch,), generator=gen)
        hs, cs = model.zero_state(batch)
        hs = [f32(torch.rand(h.shape, generator=gen, dtype=torch.float64) * 1.6 - 0.8) for h in hs]
        cs = [f32(torch.rand(c.shape, generator=gen, dtype=torch.float64) * 1.6 - 0.8) for c in cs]
        state = (hs, cs)
    masks = {}
    rows = steps * batch
    for key, p, shape in [("input", spec["model"]["dropout_input"], (rows, spec["model"]["embedding"])),
                          ("output", spec["model"]["dropout_output"], (batch if mnist else rows, model.hidden))]:
        if p > 0:
            masks[key] = (torch.rand(shape, generator=gen, dtype=torch.float64) >= p).double() / (1 - p)
    if spec["model"]["dropout_between"] > 0 and model.nlayers > 1:
        p = spec["model"]["dropout_between"]
        masks["between"] = [(torch.rand(rows, model.hidden, generator=gen, dtype=torch.float64) >= p).double() / (1 - p)
                            for _ in range(model.nlayers - 1)]
    logits, _ = model(x, state, train=True, masks=masks)
    loss = F.cross_entropy(logits, y)
    for p in trained.values():
        p.grad = None
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trained.items()}
    # one clipped step: the global norm over every trained tensor; then Adam or SGD with the
    # latent weights' lr scaled
    clip, lr = case["train"]["clip"], case["train"]["lr"]
    scale_latent = case["train"].get("latent_lr_scale", 1.0)
    norm = sum((g.double() ** 2).sum() for g in grads.values()).sqrt().item()
    factor = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
    updated, new_moments = {}, {}
    t = 4  # the step after three earlier ones
    b1, b2, eps = 0.9, 0.999, 1e-8
    for n, p in trained.items():
        g = grads[n] * factor
        lr_p = lr * scale_latent if n.endswith(".w_x") or n.endswith(".w_h") else lr
        if adam:
            m, v = moments[n]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            step = lr_p / (1 - b1 ** t)
            updated[n] = p.detach() - step * m / (v.sqrt() / (1 - b2 ** t) ** 0.5 + eps)
            new_moments[n] = (m, v)
        else:
            updated[n] = p.detach() - lr_p * g
    # what to write: qlstm's 2-D shapes (vectors as 1 × n)
    out = {}

    def put(name, t):
        t = t.detach().double()
        out[name] = (t.reshape(1, -1) if t.dim() <= 1 else t.reshape(t.shape[0], -1)).float().contiguous()

    for n, p in params.items():
        if n in trained:
            put(n, p)
    # batch norm's running statistics before the forward, and after it (the forward moves them)
    for n, p in params.items():
        if n in running_before:
            put(n, running_before[n])
            put(f"expect.{n}", p)
    for n, (m, v) in moments.items():
        put(f"optimizer.m.{n}", m)
        put(f"optimizer.v.{n}", v)
    if mnist:
        put("input.pixels", x.reshape(rows, 1))
    else:
        put("input.tokens", x.reshape(rows, 1).double())
        for l in range(model.nlayers):
            put(f"state.h.{l}", state[0][l])
            if model.cell == "lstm":
                put(f"state.c.{l}", state[1][l])
    put("targets", y.reshape(-1, 1).double())
    for k, v in masks.items():
        if k == "between":
            for l, mm in enumerate(v):
                put(f"mask.between.{l}", mm)
        else:
            put(f"mask.{k}", v)
    put("expect.logits", logits)
    put("expect.loss", loss.reshape(1, 1))
    for n, g in grads.items():
        put(f"expect.grad.{n}", g)
    for n, u in updated.items():
        put(f"expect.updated.{n}", u)
    meta = {"format": "qlstm-parity-1", "spec": spec_text(case), "optimizer_t": "3" if adam else "0",
            "clip_factor": repr(factor), "made_by": "scripts/make_parity_fixture.py"}
    return out, meta


def cases():
    # batch 4: with 2 rows a batch-normalized feature is ±1 whatever its scale, and f32's
    # cancellation dominates the gradients through it
    base = lambda **kw: {"task": "ptb_char", "vocab": 5, "steps": 3, "batch": 4,  # noqa: E731
                         "train": {"optimizer": "adam", "lr": 0.01, "clip": 0.5, "bptt": 3, "batch_size": 4}, **kw}
    out = []
    for cell in ["lstm", "gru"]:
        for q in QUANTIZERS:
            for n in NORMALIZATIONS:
                c = base(name=f"{cell}_{q}_{n}", model={"cell": cell, "hidden": 4, "quantizer": q, "normalization": n})
                out.append(c)
        # two layers with carried state
        for q, n in [("fp", "layer"), ("bc", "batch_separate"), ("tc", "weight")]:
            out.append(base(name=f"{cell}_2layers_{q}_{n}",
                            model={"cell": cell, "hidden": 4, "layers": 2, "quantizer": q, "normalization": n}))
        # the word model with its dropout masks given, SGD and the bc/tc latent lr scale
        out.append({"task": "ptb_word", "vocab": 9, "steps": 3, "batch": 2, "name": f"{cell}_word_dropout",
                    "model": {"cell": cell, "hidden": 4, "layers": 2, "embedding": 3, "quantizer": "tc",
                              "normalization": "layer", "dropout_input": 0.3, "dropout_between": 0.3,
                              "dropout_output": 0.3},
                    "train": {"optimizer": "sgd", "lr": 1.0, "clip": 0.25, "bptt": 3, "batch_size": 2,
                              "latent_lr_scale": 4.0}})
        # sequential MNIST: pixels in, learned initial state, the last step classified
        # (no batch norm: at t = 0 the learned h0 is the same for every row, so a batch-normalized
        # W_h·h0 has zero variance and σ = √ε amplifies f32 rounding 316-fold into h0's gradient,
        # whose exact value is 0; qlstm's training adds noise to h0 there for this reason, and
        # the char cases check batch norm)
        for q, n in [("bc", "layer"), ("tc", "weight")]:
            out.append({"task": "seq_mnist", "vocab": 10, "steps": 6, "batch": 3, "name": f"{cell}_mnist_{q}_{n}",
                        "model": {"cell": cell, "hidden": 4, "quantizer": q, "normalization": n},
                        "train": {"optimizer": "adam", "lr": 0.01, "clip": 1.0, "bptt": 784, "batch_size": 3}})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    total = 0
    for i, case in enumerate(cases()):
        gen = torch.Generator().manual_seed(1000 + i)
        tensors, meta = make(case, gen)
        path = os.path.join(a.out, case["name"] + ".safetensors")
        save_file(tensors, path, metadata=meta)
        total += os.path.getsize(path)
    print(f"wrote {len(cases())} fixtures ({total} bytes) to {os.path.normpath(a.out)}")


if __name__ == "__main__":
    main()
