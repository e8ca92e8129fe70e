#!/usr/bin/env python3
"""Is weight normalization's slow first epoch the model's or qlstm's? Train the same
full-precision PTB-char LSTM in PyTorch, from qlstm's own initial weights, with the same data
order, Adam and clipping, with weight normalization done by PyTorch's own
`torch.nn.utils.parametrizations.weight_norm` (per-row gains, dim = 0, on W_x and W_h, as the
authors' code wraps its quantized weights), and print the training loss and the validation
loss after the same number of steps as a qlstm run.

    scripts/weightnorm_check.py INIT_CHECKPOINT --steps 300 [--csv FILE]

INIT_CHECKPOINT is a qlstm checkpoint holding the initial weights: a run of the cell with
`--set train.lr=1e-30 --set train.max_steps=1` (qlstm refuses lr 0; one Adam step of at most
1e-30 leaves every f32 weight as initialised but the zero-initialised ones, which move by
1e-30; weight norm's gains are the initial row norms, docs/SPEC.md §1). Nothing of
qlstm's code is used but its data files, its tokenization (qlstm_torch.load_corpus) and its
tensor names; the cell is written here from docs/SPEC.md §1 (gate blocks i, f, a, o).
Prints one CSV line: steps, mean training loss, validation loss (nats) and BPC, and the mean
row norm of the effective W_h at the end (what weight norm holds to its gains).
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qlstm_torch import load_corpus, read_safetensors  # noqa: E402
import tomllib  # noqa: E402


class CharLSTM(torch.nn.Module):
    def __init__(self, tensors, vocab, hidden, wn):
        super().__init__()
        self.hidden = hidden
        self.w_x = torch.nn.Linear(vocab, 4 * hidden, bias=False)
        self.w_h = torch.nn.Linear(hidden, 4 * hidden, bias=False)
        self.bias = torch.nn.Parameter(tensors["lstm.0.bias"].reshape(-1).clone())
        self.decoder = torch.nn.Linear(hidden, vocab)
        with torch.no_grad():
            self.w_x.weight.copy_(tensors["lstm.0.w_x"])
            self.w_h.weight.copy_(tensors["lstm.0.w_h"])
            self.decoder.weight.copy_(tensors["decoder.weight"])
            self.decoder.bias.copy_(tensors["decoder.bias"].reshape(-1))
        if wn:
            for lin, which in ((self.w_x, "x"), (self.w_h, "h")):
                weight_norm(lin, dim=0)
                with torch.no_grad():
                    # g from qlstm's file (the initial row norms), v = the initial weights
                    lin.parametrizations.weight.original0.copy_(tensors[f"lstm.0.wn_gain_{which}"].reshape(-1, 1))

    def forward(self, x, state):
        wx, wh = self.w_x.weight, self.w_h.weight          # (4H, V), (4H, H), effective
        zx = wx.t()[x] + self.bias                          # one-hot input: columns of W_x
        h, c = state
        out = []
        H = self.hidden
        for t in range(x.shape[0]):
            g = zx[t] + h @ wh.t()
            i, f, a, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            c = torch.sigmoid(i) * torch.tanh(a) + torch.sigmoid(f) * c
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return self.decoder(torch.stack(out).reshape(-1, H)), (h, c)


def streams(tokens, batch):
    n = len(tokens) // batch
    return torch.tensor(tokens[:n * batch], dtype=torch.long).reshape(batch, n).t().contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("init")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--csv", help="write the per-step training loss here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tensors, meta = read_safetensors(a.init)
    spec = tomllib.loads(meta["spec"])
    m, tr = spec["model"], spec["train"]
    if spec["task"] != "ptb_char" or m["quantizer"] != "fp" or m["normalization"] not in ("none", "weight"):
        raise SystemExit(f"{a.init}: this check trains ptb_char fp/none or fp/weight, not "
                         f"{spec['task']} {m['quantizer']}/{m['normalization']}")
    (train, valid, _), vocab = load_corpus("ptb_char", spec["data"]["dir"])
    model = CharLSTM(tensors, vocab, m["hidden"], m["normalization"] == "weight")
    opt = torch.optim.Adam(model.parameters(), lr=0.002, betas=(0.9, 0.999), eps=1e-8)
    B, T = tr["batch_size"], tr["bptt"]
    data = streams(train, B)
    zeros = lambda b: (torch.zeros(b, m["hidden"]), torch.zeros(b, m["hidden"]))  # noqa: E731
    state = zeros(B)
    losses = []
    s = 0
    for step in range(a.steps):
        steps = min(T, data.shape[0] - 1 - s)
        x, y = data[s:s + steps], data[s + 1:s + 1 + steps]
        logits, (h, c) = model(x, state)
        loss = F.cross_entropy(logits, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr["clip"])
        opt.step()
        state = (h.detach(), c.detach())
        losses.append(loss.item())
        s += T
    vdata = streams(valid, tr["eval_batch_size"])
    vstate, total, count = zeros(tr["eval_batch_size"]), 0.0, 0
    with torch.no_grad():
        for s in range(0, vdata.shape[0] - 1, T):
            steps = min(T, vdata.shape[0] - 1 - s)
            logits, vstate = model(vdata[s:s + steps], vstate)
            total += F.cross_entropy(logits.double(), vdata[s + 1:s + 1 + steps].reshape(-1), reduction="sum").item()
            count += steps * vdata.shape[1]
    vloss = total / count
    row_norm = model.w_h.weight.detach().norm(dim=1).mean().item()
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("step,train_loss\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(losses)))
    print("normalization,steps,train_loss,valid_loss,valid_bpc,mean_row_norm_w_h")
    print(f"{m['normalization']},{a.steps},{sum(losses) / len(losses):.6f},{vloss:.6f},{vloss / math.log(2):.4f},{row_norm:.4f}")


if __name__ == "__main__":
    main()
