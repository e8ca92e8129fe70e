#!/usr/bin/env python3
"""Markdown table of a bench_vs_pytorch CSV: tokens/s of each tool and the ratios.
usage: bench_table.py BENCH.csv THREADS"""
import csv, datetime, os, sys

from hostinfo import cpu

path, threads = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(path)))
tok = {(r["tool"], r["config"], r["variant"]): float(r["tokens_per_s"]) for r in rows}
roof = {r["config"]: r for r in rows if r["tool"] == "qlstm" and r["variant"] == "fp/none"}


unit = {"mnist": "pixel steps/s (÷784 = images/s)"}
print(f"# qlstm vs PyTorch, training throughput\n")
torch = os.environ.get("TORCH_VERSION", "unknown")
print(f"Measured {datetime.date.today()} on {cpu()}, {os.cpu_count()} cores, {threads} threads, PyTorch {torch}, "
      f"by `scripts/bench_vs_pytorch.sh` (raw rows: `{os.path.basename(path)}`). Tokens per second of a "
      "training step (forward, backward, clip, Adam), median of the timed steps; PyTorch runs in the same "
      "script, right after qlstm, on the same shapes. Ratios above 1 mean qlstm is faster.\n")
print("| config | qlstm fp/none | PyTorch fused | ratio | qlstm SGEMM roof fraction | peak RSS MB |")
print("|---|---|---|---|---|---|")
for c in ["char", "word1", "word2", "mnist"]:
    q, p = tok.get(("qlstm", c, "fp/none")), tok.get(("pytorch", c, "fused"))
    if q and p:
        r = roof[c]
        print(f"| {c} | {q:,.0f} | {p:,.0f} | {q / p:.2f}× | {float(r['roof_fraction']):.2f} of {float(r['roof_gflops']):.0f} GFLOP/s | {r['peak_rss_mb']} |")
print()
print("| config | qlstm bc/none | authors' structure (bc) | ratio | qlstm bc/layer | authors' LN | ratio | qlstm bc/batch_shared | authors' BN | ratio | qlstm bc/weight |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in ["char", "word1", "word2", "mnist"]:
    cells = []
    for qv, pv in [("bc/none", "official"), ("bc/layer", "official_ln"), ("bc/batch_shared", "official_bn")]:
        q, p = tok.get(("qlstm", c, qv)), tok.get(("pytorch", c, pv))
        cells += [f"{q:,.0f}" if q else "", f"{p:,.0f}" if p else "", f"{q / p:.2f}×" if q and p else ""]
    w = tok.get(("qlstm", c, "bc/weight"))
    print(f"| {c} | " + " | ".join(cells) + (f" | {w:,.0f} |" if w else " | |"))
print()
print("| config | qlstm GRU fp/none | PyTorch fused nn.GRU | ratio |")
print("|---|---|---|---|")
for c in ["char", "word1", "mnist"]:
    q, p = tok.get(("qlstm", c, "gru:fp/none")), tok.get(("pytorch", c, "fused_gru"))
    if q and p:
        print(f"| {c} | {q:,.0f} | {p:,.0f} | {q / p:.2f}× |")
print()
for c, u in unit.items():
    print(f"{c}: {u}.")
