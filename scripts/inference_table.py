#!/usr/bin/env python3
"""Markdown table of `qlstm bench --inference` rows beside PyTorch's (scripts/bench_inference.sh).
usage: inference_table.py QLSTM.csv PYTORCH.csv"""
import csv, datetime, os, sys

from hostinfo import cpu

ours = list(csv.DictReader(open(sys.argv[1])))
theirs = {}
for r in csv.DictReader(open(sys.argv[2])):
    # PyTorch's fastest way at each (config, batch): nn.LSTM, or nn.LSTMCell for one-token calls
    key = (r["config"], r["batch"])
    if key not in theirs or float(r["tokens_per_s"]) > float(theirs[key]["tokens_per_s"]):
        theirs[key] = r


threads = ours[0]["threads"]
bw = ours[0]["read_bw_gb_per_s"]
print("# Inference: packed 1- and 2-bit models against f32\n")
print(f"Measured {datetime.date.today()} on {cpu()}, {os.cpu_count()} cores, {threads} thread(s), PyTorch "
      f"{os.environ.get('TORCH_VERSION', 'unknown')}, by `scripts/bench_inference.sh` (raw rows: "
      f"`{os.path.basename(sys.argv[1])}`, `{os.path.basename(sys.argv[2])}`). Same-run memory read bandwidth "
      f"{bw} GB/s. Tokens per second, median of the timed rounds; batch 1 is streaming generation (one token "
      "per call, state carried), batch 64 windows of 64 × 20 tokens. f32 is an exported full-precision qlstm "
      "model (dense weights, GEMM); packed bc/tc are exported 1-/2-bit files run through the bit kernels; "
      "PyTorch is fp32 under torch.no_grad, the faster of nn.LSTM and (batch 1) nn.LSTMCell per layer, as the last table lists. Weight bytes are what one time step reads (recurrent "
      "layers + the f32 decoder); the fraction is that traffic over the read bandwidth.\n")
print("| config | batch | weights | tokens/s | × f32 | × PyTorch | LSTM bytes/step | decoder bytes/step | GB/s | of bandwidth | G weights/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in ours:
    t = theirs.get((r["config"], r["batch"]))
    vs = f"{float(r['tokens_per_s']) / float(t['tokens_per_s']):.2f}" if t else ""
    w = "f32" if r["weights"] == "f32" else f"packed {r['quantizer']}"
    print(f"| {r['config']} | {r['batch']} | {w} | {float(r['tokens_per_s']):,.0f} | {r['speedup_vs_f32']} | {vs} | "
          f"{int(r['lstm_weight_bytes']):,} | {int(r['decoder_weight_bytes']):,} | {r['weight_gb_per_s']} | "
          f"{r['bandwidth_fraction']} | {r['lstm_gweights_per_s']} |")
print(f"\nCommand: `{os.environ.get('COMMAND', 'scripts/bench_inference.sh VENV_DIR')}`.")
print("\n| config | batch | PyTorch | tokens/s |")
print("|---|---|---|---|")
for r in csv.DictReader(open(sys.argv[2])):
    print(f"| {r['config']} | {r['batch']} | {r['impl']} | {float(r['tokens_per_s']):,.0f} |")
