#!/usr/bin/env python3
"""PyTorch CPU baselines for `qlstm bench`: the same four shapes and the same step (forward,
backward, clip_grad_norm 0.25, Adam), timed the same way (2 warm-up steps, median of N).

usage: pytorch_baseline.py CONFIG IMPL THREADS [STEPS]
  CONFIG  char (PTB char H512 B64 T100) | word1 (PTB word 1x300 B20 T35)
          | word2 (PTB word 2x650 B20 T35) | mnist (sequential MNIST H100 B100 T784)
  IMPL    fused     torch.nn.LSTM (PyTorch's fused CPU kernel), full precision
          fused_gru torch.nn.GRU (fused), full precision: the side-by-side for `--cell gru`
          fused_bf16 torch.nn.LSTM with the forward under torch.autocast("cpu", bfloat16),
                    PyTorch's mixed precision on CPU (oneDNN; AMX where the CPU has it): the
                    side-by-side for `qlstm bench --gemm-precision bf16`
          official  the authors' structure (houlu369/Normalized-Quantized-LSTM): each of the
                    8 gate blocks binarized (sign·mean|w|, straight-through) once per forward,
                    then a Python loop over time with F.linear for W_x·x and W_h·h, one bias
          official_ln / official_bn   the same with per-gate-block LayerNorm / BatchNorm1d
                    (shared statistics) on both products, 8 modules called every step
prints one CSV row: config,impl,threads,steps,median_ms,best_ms,tokens_per_s,achieved_gflops
FLOPs per step: 3 x (sum over layers of 2(in+H)GH per token + 2 H out per prediction), G = 4 gate
blocks for the LSTM, 3 for the GRU (as `qlstm bench` counts them).
"""
import statistics, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {  # V (vocab / classes), E (input width), H, L, B, T, per-step output?
    "char": (50, 50, 512, 1, 64, 100, True),
    "word1": (10000, 300, 300, 1, 20, 35, True),
    "word2": (10000, 650, 650, 2, 20, 35, True),
    "mnist": (10, 1, 100, 1, 100, 784, False),
}


class SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return torch.sign(w) * w.abs().mean()

    @staticmethod
    def backward(ctx, g):
        return g


class AuthorsLayer(nn.Module):
    """One LSTM layer in the structure of the authors' code."""

    def __init__(self, inp, hidden, norm):
        super().__init__()
        k = hidden ** -0.5
        self.h, self.norm, self.quantize_x = hidden, norm, inp > 1
        self.w_x = nn.Parameter(torch.empty(4 * hidden, inp).uniform_(-k, k))
        self.w_h = nn.Parameter(torch.empty(4 * hidden, hidden).uniform_(-k, k))
        self.b = nn.Parameter(torch.zeros(4 * hidden))
        make = {"ln": lambda: nn.LayerNorm(hidden), "bn": lambda: nn.BatchNorm1d(hidden)}.get(norm)
        if make:
            self.nx = nn.ModuleList([make() for _ in range(4)])
            self.nh = nn.ModuleList([make() for _ in range(4)])

    def quantized(self, w):
        return torch.cat([SignSTE.apply(b) for b in w.chunk(4, 0)])

    def forward(self, x, state):
        w_x = self.quantized(self.w_x) if self.quantize_x else self.w_x
        w_h = self.quantized(self.w_h)
        h, c = state
        out = []
        for t in range(x.size(0)):
            zx, zh = F.linear(x[t], w_x), F.linear(h, w_h)
            if self.norm:
                zx, zh = zx.chunk(4, 1), zh.chunk(4, 1)
                g = torch.cat([self.nx[k](zx[k]) + self.nh[k](zh[k]) for k in range(4)], 1) + self.b
            else:
                g = zx + zh + self.b
            i, f, a, o = g.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(a)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out), (h, c)


def main():
    name, impl, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, E, H, L, B, T, seq_out = CONFIGS[name]
    emb = nn.Embedding(V, E) if name.startswith("word") else None
    gru = impl == "fused_gru"
    autocast = impl == "fused_bf16"
    if autocast:
        impl = "fused"
    if impl == "fused":
        rnn = nn.LSTM(E, H, L)
    elif gru:
        rnn = nn.GRU(E, H, L)
    else:
        norm = {"official": "", "official_ln": "ln", "official_bn": "bn"}[impl]
        rnn = nn.ModuleList([AuthorsLayer(E if l == 0 else H, H, norm) for l in range(L)])
    dec = nn.Linear(H, V)
    params = list(rnn.parameters()) + list(dec.parameters()) + (list(emb.parameters()) if emb else [])
    opt = torch.optim.Adam(params, lr=1e-3)
    if name == "mnist":
        xs, ys = torch.rand(T, B, 1), torch.randint(0, V, (B,))
    else:
        xs, ys = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))

    def forward(state):
        x = emb(xs) if emb else (F.one_hot(xs, V).float() if name == "char" else xs)
        if impl == "fused":
            y, state = rnn(x, state)
        elif gru:
            y, h = rnn(x, state[0])
            state = (h, state[1])
        else:
            hs, cs = [], []
            y = x
            for l, layer in enumerate(rnn):
                y, (h, c) = layer(y, (state[0][l], state[1][l]))
                hs.append(h)
                cs.append(c)
            state = (torch.stack(hs), torch.stack(cs))
        logits = dec(y) if seq_out else dec(y[-1])
        return F.cross_entropy(logits.reshape(-1, V), ys.reshape(-1)), state

    state = (torch.zeros(L, B, H), torch.zeros(L, B, H))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        if name == "mnist":
            state = (torch.zeros(L, B, H), torch.zeros(L, B, H))
        state = tuple(s.detach() for s in state)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, state = forward(state)
        state = tuple(s.float() for s in state)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    G = 3 if gru else 4
    per_token = sum(2 * ((E if l == 0 else H) + H) * G * H for l in range(L)) + (2 * H * V if seq_out else 2 * H * V / T)
    flops = 3 * per_token * B * T
    if autocast:
        impl = "fused_bf16"
    print(f"{name},{impl},{threads},{steps},{med * 1e3:.1f},{min(times) * 1e3:.1f},{B * T / med:.0f},{flops / med / 1e9:.1f}", flush=True)


if __name__ == "__main__":
    main()
