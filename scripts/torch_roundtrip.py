#!/usr/bin/env python3
"""The round trip, where torch is installed (not in CI): train a few steps in qlstm, then get
the same validation loss in PyTorch — through torch.nn.LSTM / nn.GRU from `qlstm export
--format torch` for plain and weight-normalized models, and through scripts/qlstm_torch.py from
the checkpoint itself for every model.

    /path/to/venv/bin/python scripts/torch_roundtrip.py [--qlstm target/release/qlstm] [--out DIR]

Prints one line per model and exits non-zero if any differs by more than 1e-5 relative.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import qlstm_torch as qt  # noqa: E402

root = os.path.dirname(here)


class Net(torch.nn.Module):
    """The modules `qlstm export --format torch` writes a state dict for."""

    def __init__(self, cell, inp, hidden, layers, vocab, embedding=0):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, embedding) if embedding else None
        rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.rnn = rnn(inp, hidden, num_layers=layers)
        self.decoder = torch.nn.Linear(hidden, vocab)
        self.vocab, self.cell = vocab, cell

    def forward(self, x, state):
        inp = self.embedding(x) if self.embedding is not None else F.one_hot(x, self.vocab).to(self.decoder.weight.dtype)
        out, state = self.rnn(inp, state)
        return self.decoder(out.reshape(-1, out.shape[-1])), state


def nn_loss(spec, sd):
    """Validation loss of the exported state dict in torch.nn modules."""
    m = spec["model"]
    (train, valid, test), vocab = qt.load_corpus(spec["task"], spec["data"]["dir"])
    emb = m["embedding"] if spec["task"] == "ptb_word" else 0
    net = Net(m.get("cell", "lstm"), emb or vocab, m["hidden"], m["layers"], vocab, emb).double()
    net.load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
    b, bptt = spec["train"]["eval_batch_size"], spec["train"]["bptt"]
    n = len(valid) // b
    data = torch.tensor(valid[:n * b]).reshape(b, n).t()
    zeros = torch.zeros(m["layers"], b, m["hidden"], dtype=torch.float64)
    state = (zeros, zeros.clone()) if m.get("cell", "lstm") == "lstm" else zeros
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, n - 1, bptt):
            steps = min(bptt, n - 1 - s)
            logits, state = net(data[s:s + steps], state)
            y = data[s + 1:s + 1 + steps].reshape(-1)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += y.numel()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlstm", default=os.path.join(root, "target", "release", "qlstm"))
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="qlstm-roundtrip-"))
    a = ap.parse_args()
    cases = [(c, q, n) for c in ("lstm", "gru") for q, n in
             [("fp", "none"), ("bc", "weight"), ("lab", "none"), ("tc", "layer"), ("bwn", "batch_shared"), ("lat", "batch_separate")]]
    worst, failed = 0.0, False
    for cell, q, n in cases:
        name = f"{cell}_{q}_{n}"
        spec_file = os.path.join(root, "configs", "paper", "ptb_char_fp_none.toml")
        sets = [f"name={name}", f"model.cell={cell}", f"model.quantizer={q}", f"model.normalization={n}",
                "model.hidden=32", "train.max_steps=40", f"data.dir={os.path.join(root, 'data')}"]
        cmd = [a.qlstm, "run", spec_file, "--threads", "1", "--out", a.out] + sum((["--set", s] for s in sets), [])
        subprocess.run(cmd, check=True, capture_output=True)
        run = os.path.join(a.out, name)
        ev = subprocess.run([a.qlstm, "eval", run, "--split", "valid", "--threads", "1"], check=True, capture_output=True, text=True)
        ours = float(ev.stdout.splitlines()[1].split(",")[-1])
        spec, model = qt.load_checkpoint(os.path.join(run, "best.safetensors"), torch.float64)
        py = qt.evaluate(spec, model, "valid")
        line = f"{name}: qlstm {ours:.10f}  qlstm_torch.py {py:.10f} ({abs(py - ours) / ours:.1e})"
        worst = max(worst, abs(py - ours) / ours)
        if n in ("none", "weight"):
            subprocess.run([a.qlstm, "export", run, "--format", "torch"], check=True, capture_output=True)
            nn = nn_loss(spec, load_file(os.path.join(run, "torch.safetensors")))
            line += f"  torch.nn.{cell.upper()} {nn:.10f} ({abs(nn - ours) / ours:.1e})"
            worst = max(worst, abs(nn - ours) / ours)
        failed |= worst > 1e-5
        print(line, flush=True)
    print(f"worst relative difference {worst:.1e} (limit 1e-5)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
