#!/usr/bin/env python3
"""PyTorch fp32 inference baseline for `qlstm bench --inference`: the same shapes, the same
calls, timed the same way (one warm-up round, median over ROUNDS rounds), under torch.no_grad.

usage: pytorch_inference.py CONFIG THREADS [ROUNDS]
  CONFIG  char (PTB char, one-hot input, H 512) | text8 (one-hot, H 2000) | word2 (PTB word,
          embedding 650, 2 x 650)
At batch 1 each call is one token (nn.LSTM over a length-1 sequence with (h, c) carried, then
the decoder): streaming generation, as `qlstm sample` runs. nn.LSTM on CPU goes through a fused
kernel that prepares its weights on every call, which dominates one-token calls, so batch 1 is
also timed with nn.LSTMCell per layer (the same weights; one addmm per product), the faster way
to stream with PyTorch. At batch 64 each call is a window
of 64 x 20 tokens. The tokens per round match qlstm's (about 2e9 recurrent weight
applications, clamped as it does), so both tools time the same work.
prints one CSV row per (impl, batch): config,impl,threads,batch,tokens_per_s,best_tokens_per_s
"""
import sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {  # V, E (input width), H, L, embedding?
    "char": (50, 50, 512, 1, False),
    "text8": (27, 27, 2000, 1, False),
    "word2": (10000, 650, 650, 2, True),
}
WINDOW = 20


def main():
    name, threads = sys.argv[1], int(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, E, H, L, embedded = CONFIGS[name]
    emb = nn.Embedding(V, E) if embedded else None
    rnn, dec = nn.LSTM(E, H, L), nn.Linear(H, V)
    for m in (emb, rnn, dec):
        if m is not None:
            m.eval()
    # recurrent weights applied per token, as qlstm counts them (a one-hot input: one column)
    weights = sum(4 * H * (H + (1 if l == 0 and not embedded else (E if l == 0 else H))) for l in range(L))

    def embed(ids):
        return emb(ids) if emb is not None else F.one_hot(ids, V).float()

    cells = []
    for l in range(L):
        c = nn.LSTMCell(E if l == 0 else H, H)
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(c, p).data.copy_(getattr(rnn, f"{p}_l{l}").data)
        cells.append(c)

    def time_rounds(round_):
        round_()
        rates = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            n = round_()
            rates.append(n / (time.perf_counter() - t0))
        rates.sort()  # the same median as qlstm: the upper one for an even count
        return rates[len(rates) // 2], rates[-1]

    with torch.no_grad():
        for batch in (1, 64):
            tokens = min(max(int(2e9 / weights), 16), 4096)
            tokens = min(tokens, 512) if batch == 1 else max(tokens, batch * WINDOW)
            rows = []
            if batch == 1:
                ids = torch.randint(0, V, (tokens, 1, 1))

                def fused():
                    state = (torch.zeros(L, 1, H), torch.zeros(L, 1, H))
                    for t in range(tokens):
                        y, state = rnn(embed(ids[t]), state)
                        dec(y)
                    return tokens

                def by_cell():
                    state = [(torch.zeros(1, H), torch.zeros(1, H)) for _ in range(L)]
                    for t in range(tokens):
                        y = embed(ids[t])[0]
                        for l, c in enumerate(cells):
                            state[l] = c(y, state[l])
                            y = state[l][0]
                        dec(y)
                    return tokens

                rows = [("nn.LSTM", fused), ("nn.LSTMCell", by_cell)]
            else:
                windows = max(-(-tokens // (batch * WINDOW)), 1)
                ids = torch.randint(0, V, (WINDOW, batch))

                def fused():
                    state = (torch.zeros(L, batch, H), torch.zeros(L, batch, H))
                    for _ in range(windows):
                        y, state = rnn(embed(ids), state)
                        dec(y)
                    return windows * batch * WINDOW

                rows = [("nn.LSTM", fused)]
            for impl, round_ in rows:
                med, best = time_rounds(round_)
                print(f"{name},{impl},{threads},{batch},{med:.0f},{best:.0f}", flush=True)

if __name__ == "__main__":
    main()
