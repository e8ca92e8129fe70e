#!/usr/bin/env python3
"""qlstm's models in plain PyTorch: the quantized and normalized LSTM and GRU cells of
docs/SPEC.md (7 quantizers, 5 normalizations; language models with one-hot or embedding input,
and the sequential-MNIST classifier), loading qlstm's own checkpoints.

    python scripts/qlstm_torch.py eval RUN_DIR [--split valid|test] [--checkpoint FILE]

prints the split's mean cross-entropy (nats) and metric, computed here from qlstm's data files,
with the checkpoint's spec; it should equal `qlstm eval RUN_DIR`. As a module:

    from qlstm_torch import load_checkpoint
    spec, model = load_checkpoint("results/ptb_char/best.safetensors")
    logits, state = model(tokens, model.zero_state(batch))       # tokens: (T, B) int64

It is written to be read beside docs/SPEC.md, not to be fast; every definition follows the spec
(§1 the cell and normalizations, §2 the quantizers, §3 the models, §6 the GRU). It also builds
the parity fixtures (scripts/make_parity_fixture.py) that qlstm's tests compare against.
"""
import argparse
import json
import math
import os
import sys
import tomllib

import torch
import torch.nn.functional as F
from safetensors import safe_open

EPS_NORM = 1e-5   # layer and batch norm (§1)
EPS_WN = 1e-8     # weight norm (§1)
MOMENTUM = 0.1    # batch norm's running statistics (§1)


# ---------------------------------------------------------------- §2 quantizers, per block

def quantize_block(q, w, d=None):
    """Q(w) of one gate block (rows × in). d: the loss-aware curvature sqrt(v) + 1e-8 (lab, lat;
    None: d = 1). Scales and thresholds are computed in float64, as qlstm does."""
    w64 = w.double()
    d64 = torch.ones_like(w64) if d is None else d.double()
    if q == "fp":
        return w
    if q == "bc":
        return torch.sign(w64).to(w.dtype)
    if q == "bwn":
        return (w64.abs().mean() * torch.sign(w64)).to(w.dtype)
    if q == "lab":
        alpha = (d64 * w64.abs()).sum() / d64.sum()
        return (alpha * torch.sign(w64)).to(w.dtype)
    if q in ("tc", "twn"):
        delta = 0.7 * w64.abs().mean()
        t = (w64 > delta).double() - (w64 < -delta).double()
        if q == "tc":
            return t.to(w.dtype)
        kept = w64.abs() > delta
        alpha = w64.abs()[kept].mean() if kept.any() else torch.zeros((), dtype=torch.float64)
        return (alpha * t).to(w.dtype)
    if q == "lat":
        b = torch.sign(w64)
        alpha_prev = math.nan
        alpha = 0.0
        for _ in range(100):
            den = (d64 * b.abs()).sum()
            alpha = float((d64 * w64.abs() * b.abs()).sum() / den) if den > 0 else 0.0
            if abs(alpha - alpha_prev) <= 1e-6 or alpha == 0.0:
                break
            alpha_prev = alpha
            b = (w64 > alpha / 2).double() - (w64 < -alpha / 2).double()
        else:
            alpha = alpha_prev
        t = (w64 > alpha / 2).double() - (w64 < -alpha / 2).double()
        return (alpha * t).to(w.dtype)
    raise ValueError(f"quantizer {q!r}")


class StraightThrough(torch.autograd.Function):
    """Forward Q(W) per gate block; backward hands ∂L/∂Q(W) to W unchanged (§2)."""

    @staticmethod
    def forward(ctx, w, quantizer, blocks, d):
        h = w.shape[0] // blocks
        rows = [quantize_block(quantizer, w[k * h:(k + 1) * h], None if d is None else d[k * h:(k + 1) * h])
                for k in range(blocks)]
        return torch.cat(rows, 0)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None


def effective(w, quantizer, blocks, gain=None, d=None):
    """Q(W), then weight norm (§1): row j ↦ g_j · Q(W)_j / (‖Q(W)_j‖ + 1e-8)."""
    q = w if quantizer == "fp" else StraightThrough.apply(w, quantizer, blocks, d)
    if gain is None:
        return q
    norms = q.norm(dim=1, keepdim=True)
    # an all-zero row: the norm's derivative is taken as 0 there (§1)
    norms = torch.where(norms > 0, norms, norms.detach())
    return q * (gain.reshape(-1, 1) / (norms + EPS_WN))


# ---------------------------------------------------------------- §1 layer and batch norm

class Norm(torch.nn.Module):
    """The normalizer of one product (G gate blocks of H features)."""

    def __init__(self, kind, hidden, blocks, slots):
        super().__init__()
        self.kind, self.hidden, self.blocks = kind, hidden, blocks
        g = blocks * hidden
        self.gain = torch.nn.Parameter(torch.ones(g))
        self.bias = torch.nn.Parameter(torch.zeros(g))
        n = slots if kind == "batch_separate" else 1
        self.register_buffer("running_mean", torch.zeros(n, g))
        self.register_buffer("running_var", torch.ones(n, g))

    def forward(self, z, t, train):
        """z: (B, G·H), the rows of in-window step t."""
        if self.kind == "layer":
            zb = z.reshape(z.shape[0], self.blocks, self.hidden)
            mean = zb.mean(-1, keepdim=True)
            var = zb.var(-1, unbiased=False, keepdim=True)
            xhat = ((zb - mean) / torch.sqrt(var + EPS_NORM)).reshape(z.shape)
        else:
            slot = min(t, self.running_mean.shape[0] - 1)
            if train:
                mean = z.mean(0)
                var = z.var(0, unbiased=False)
                n = z.shape[0]
                with torch.no_grad():
                    unbias = n / (n - 1) if n > 1 else 1.0
                    self.running_mean[slot] = (1 - MOMENTUM) * self.running_mean[slot] + MOMENTUM * mean.detach()
                    self.running_var[slot] = (1 - MOMENTUM) * self.running_var[slot] + MOMENTUM * var.detach() * unbias
            else:
                mean, var = self.running_mean[slot], self.running_var[slot]
            xhat = (z - mean) / torch.sqrt(var + EPS_NORM)
        return self.gain * xhat + self.bias


# ---------------------------------------------------------------- §1 and §6 the cells

class Layer(torch.nn.Module):
    def __init__(self, cell, input_size, hidden, quantizer, normalization, slots, quantize_input=True):
        super().__init__()
        self.cell, self.hidden, self.quantizer, self.normalization = cell, hidden, quantizer, normalization
        self.blocks = 4 if cell == "lstm" else 3
        self.quantize_input = quantize_input
        g = self.blocks * hidden
        self.w_x = torch.nn.Parameter(torch.zeros(g, input_size))
        self.w_h = torch.nn.Parameter(torch.zeros(g, hidden))
        self.bias = torch.nn.Parameter(torch.zeros(g))
        self.bias_hn = torch.nn.Parameter(torch.zeros(hidden)) if cell == "gru" else None
        wn = normalization == "weight"
        self.wn_gain_x = torch.nn.Parameter(torch.ones(g)) if wn else None
        self.wn_gain_h = torch.nn.Parameter(torch.ones(g)) if wn else None
        products = normalization in ("layer", "batch_shared", "batch_separate")
        self.norm_x = Norm(normalization, hidden, self.blocks, slots) if products else None
        self.norm_h = Norm(normalization, hidden, self.blocks, slots) if products else None
        # lab/lat: d = sqrt(v) + 1e-8 of each latent weight (None: d = 1)
        self.d_x = None
        self.d_h = None

    def forward(self, x, h0, c0, train):
        """x: (T, B, in) dense, or (T, B) token ids (one-hot); returns the outputs (T, B, H) and
        the final (h, c)."""
        qx = self.quantizer if self.quantize_input else "fp"
        wx = effective(self.w_x, qx, self.blocks, self.wn_gain_x, self.d_x)
        wh = effective(self.w_h, self.quantizer, self.blocks, self.wn_gain_h, self.d_h)
        zx = wx.t()[x] if x.dtype == torch.long else x @ wx.t()          # (T, B, G·H)
        steps = zx.shape[0]
        h, c = h0, c0
        out = []
        hidden = self.hidden
        for t in range(steps):
            gx = self.norm_x(zx[t], t, train) + self.bias if self.norm_x is not None else zx[t] + self.bias
            zh = h @ wh.t()
            if self.norm_h is not None:
                zh = self.norm_h(zh, t, train)
            if self.cell == "lstm":
                g = gx + zh
                i, f, a, o = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
                c = torch.sigmoid(i) * torch.tanh(a) + torch.sigmoid(f) * c
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                r = torch.sigmoid(gx[:, :hidden] + zh[:, :hidden])
                z = torch.sigmoid(gx[:, hidden:2 * hidden] + zh[:, hidden:2 * hidden])
                u = zh[:, 2 * hidden:] + self.bias_hn
                n = torch.tanh(gx[:, 2 * hidden:] + r * u)
                h = (1 - z) * n + z * h
            out.append(h)
        return torch.stack(out), (h, c)


# ---------------------------------------------------------------- §3 the models

class Model(torch.nn.Module):
    """Input (one-hot tokens, an embedding, or pixels) → recurrent layers → a softmax layer at
    every step (language models) or on the last step (sequential MNIST)."""

    def __init__(self, spec, vocab):
        super().__init__()
        m, t = spec["model"], spec["train"]
        self.mnist = spec["task"] in ("seq_mnist", "pmnist")
        self.cell, self.hidden, self.nlayers = m.get("cell", "lstm"), m["hidden"], m["layers"]
        self.dropout = (m["dropout_input"], m["dropout_between"], m["dropout_output"])
        words = spec["task"] == "ptb_word"
        self.embedding = torch.nn.Embedding(vocab, m["embedding"]) if words else None
        width = 1 if self.mnist else (m["embedding"] if words else vocab)
        self.layers = torch.nn.ModuleList(
            Layer(self.cell, width if l == 0 else self.hidden, self.hidden, m["quantizer"], m["normalization"],
                  t["bptt"], quantize_input=not (self.mnist and l == 0))
            for l in range(self.nlayers))
        outputs = 10 if self.mnist else vocab
        self.decoder = torch.nn.Linear(self.hidden, outputs)
        self.h0 = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(self.hidden)) for _ in range(self.nlayers)) if self.mnist else None
        self.c0 = (torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(self.hidden)) for _ in range(self.nlayers))
                   if self.mnist and self.cell == "lstm" else None)

    def zero_state(self, batch):
        c = self.hidden if self.cell == "lstm" else 0
        return ([torch.zeros(batch, self.hidden, dtype=self.decoder.weight.dtype) for _ in range(self.nlayers)],
                [torch.zeros(batch, c, dtype=self.decoder.weight.dtype) for _ in range(self.nlayers)])

    def initial_state(self, batch):
        """Sequential MNIST's learned h0 (and c0); zeros for language models."""
        hs, cs = self.zero_state(batch)
        if self.h0 is not None:
            hs = [p.expand(batch, -1) for p in self.h0]
        if self.c0 is not None:
            cs = [p.expand(batch, -1) for p in self.c0]
        return hs, cs

    def forward(self, x, state, train=False, masks=None):
        """x: (T, B) token ids or (T, B, 1) pixels. masks: dropout masks (0 or 1/(1−p)) as
        qlstm draws them, {"input", "between": [...], "output"}, used in training; None: no
        dropout. Returns the logits (T·B or B, V) and the final state."""
        masks = masks or {}
        hs, cs = state
        inp = x
        if self.embedding is not None:
            inp = self.embedding(x)
            if train and "input" in masks:
                inp = inp * masks["input"].reshape(inp.shape)
        new_h, new_c = [], []
        for l, layer in enumerate(self.layers):
            out, (h, c) = layer(inp, hs[l], cs[l], train)
            new_h.append(h)
            new_c.append(c)
            inp = out
            if l + 1 < self.nlayers and train and "between" in masks:
                inp = inp * masks["between"][l].reshape(inp.shape)
        top = inp[-1] if self.mnist else inp.reshape(-1, self.hidden)
        if train and "output" in masks:
            top = top * masks["output"].reshape(top.shape)
        return self.decoder(top), (new_h, new_c)


# ---------------------------------------------------------------- loading qlstm's files

def read_safetensors(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def load_checkpoint(path, dtype=torch.float32):
    """A qlstm checkpoint (best.safetensors or checkpoint.safetensors) as (spec, Model)."""
    tensors, meta = read_safetensors(path)
    spec = tomllib.loads(meta["spec"])
    vocab = tensors["decoder.weight"].shape[0]
    model = Model(spec, vocab).to(dtype)
    set_qlstm_tensors(model, tensors)
    return spec, model


def qlstm_names(model):
    """qlstm's tensor name → (module, attribute) of every tensor the model has."""
    names = {}
    if model.embedding is not None:
        names["embedding.weight"] = (model.embedding, "weight")
    for l, layer in enumerate(model.layers):
        p = f"{model.cell}.{l}"
        for a in ("w_x", "w_h", "bias", "bias_hn", "wn_gain_x", "wn_gain_h"):
            if getattr(layer, a) is not None:
                names[f"{p}.{a}"] = (layer, a)
        for which in ("norm_x", "norm_h"):
            n = getattr(layer, which)
            if n is not None:
                names[f"{p}.{which}.gain"] = (n, "gain")
                names[f"{p}.{which}.bias"] = (n, "bias")
                if n.kind != "layer":
                    names[f"{p}.{which}.running_mean"] = (n, "running_mean")
                    names[f"{p}.{which}.running_var"] = (n, "running_var")
        if model.h0 is not None:
            names[f"{p}.h0"] = (model.h0, str(l))
        if model.c0 is not None:
            names[f"{p}.c0"] = (model.c0, str(l))
    names["decoder.weight"] = (model.decoder, "weight")
    names["decoder.bias"] = (model.decoder, "bias")
    return names


def set_qlstm_tensors(model, tensors):
    """Copy qlstm's tensors (2-D, vectors as 1 × n) into the model; lab/lat take their
    curvature from the optimizer's second moments when the file has them."""
    with torch.no_grad():
        for name, (mod, attr) in qlstm_names(model).items():
            if name not in tensors:
                raise KeyError(f"lacks tensor {name}")
            dst = getattr(mod, attr) if not attr.isdigit() else mod[int(attr)]
            dst.copy_(tensors[name].reshape(dst.shape).to(dst.dtype))
    for l, layer in enumerate(model.layers):
        p = f"{model.cell}.{l}"
        if layer.quantizer in ("lab", "lat"):
            layer.d_x, layer.d_h = (curvature(tensors.get(f"optimizer.v.{p}.{w}")) for w in ("w_x", "w_h"))


def curvature(v):
    """d = sqrt(v) + 1e-8 from Adam's raw second moment, in float32 as qlstm computes it."""
    return None if v is None else v.float().sqrt() + 1e-8


# ---------------------------------------------------------------- data and evaluation (§3)

def load_corpus(task, data):
    """Token ids of train, valid, test, tokenized as qlstm does."""
    if task in ("ptb_char", "ptb_word"):
        d, pat = ("ptb_char", "ptb.char.%s.txt") if task == "ptb_char" else ("ptb", "ptb.%s.txt")
        index, splits = {}, []
        for s in ("train", "valid", "test"):
            ids = []
            with open(os.path.join(data, d, pat % s), encoding="utf-8") as f:
                for line in f.read().splitlines():
                    for w in line.split() + ["<eos>"]:
                        ids.append(index.setdefault(w, len(index)))
            splits.append(ids)
        return splits, len(index)
    if task == "warpeace":
        b = open(os.path.join(data, "warpeace", "input.txt"), "rb").read()
        syms = sorted(set(b))
        m = {v: i for i, v in enumerate(syms)}
        ids = [m[x] for x in b]
        n = len(ids)
        return [ids[:n * 8 // 10], ids[n * 8 // 10:n * 8 // 10 + n // 10], ids[n * 8 // 10 + n // 10:]], len(syms)
    raise ValueError(f"{task}: this script evaluates the language-model tasks ptb_char, ptb_word, warpeace")


def evaluate(spec, model, split="valid"):
    """Mean loss (nats) over a split: eval_batch_size streams, bptt windows, carried state."""
    (train, valid, test), _ = load_corpus(spec["task"], spec["data"]["dir"])
    tokens = valid if split == "valid" else test
    b, bptt = spec["train"]["eval_batch_size"], spec["train"]["bptt"]
    n = len(tokens) // b
    data = torch.tensor(tokens[:n * b], dtype=torch.long).reshape(b, n).t()    # (n, B) time-major
    state = model.zero_state(b)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, n - 1, bptt):
            steps = min(bptt, n - 1 - s)
            x, y = data[s:s + steps], data[s + 1:s + 1 + steps]
            logits, state = model(x, state)
            total += F.cross_entropy(logits.double(), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval")
    e.add_argument("run")
    e.add_argument("--split", default="valid", choices=["valid", "test"])
    e.add_argument("--checkpoint")
    e.add_argument("--double", action="store_true", help="compute in float64")
    a = ap.parse_args()
    path = a.checkpoint or (os.path.join(a.run, "best.safetensors") if os.path.isdir(a.run) else a.run)
    spec, model = load_checkpoint(path, torch.float64 if a.double else torch.float32)
    loss = evaluate(spec, model, a.split)
    metric = {"ptb_word": ("ppl", math.exp(loss))}.get(spec["task"], ("bpc", loss / math.log(2)))
    print(f"{spec['name']},{path},{a.split},{metric[0]},{metric[1]},{loss}")


if __name__ == "__main__":
    main()
