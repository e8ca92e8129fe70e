#!/usr/bin/env bash
# Inference speed of packed 1- and 2-bit models against f32, qlstm and PyTorch in one run:
# `qlstm bench --inference` (exported f32, packed bc, packed tc: batch 1 and 64) for char H512,
# text8 H2000 and word 2x650, then scripts/pytorch_inference.py (nn.LSTM, torch.no_grad) on the
# same shapes and threads, right after.
#
# usage: scripts/bench_inference.sh VENV_DIR [THREADS] [ROUNDS]
#   VENV_DIR  a Python venv with torch (created as scripts/bench_vs_pytorch.sh does if missing)
#   THREADS   default 1 (the packed kernel runs on one thread; say 2 to see the GEMM's gain)
#   ROUNDS    timed rounds per row, default 10
# writes results/bench/inference_<date>.csv (qlstm's rows), inference_pytorch_<date>.csv and
#        results/bench/INFERENCE.md (the side-by-side table, machine, date)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${1:?usage: scripts/bench_inference.sh VENV_DIR [THREADS] [ROUNDS]}"
threads="${2:-1}"
rounds="${3:-10}"
"$here/torch_venv.sh" "$venv"
# QLSTM=/path/to/qlstm times that binary instead of building this checkout's
if [ -z "${QLSTM:-}" ]; then (cd "$root" && cargo build --release --quiet); fi
qlstm="${QLSTM:-$root/target/release/qlstm}"
out="$root/results/bench"
mkdir -p "$out"
day="$(date -u +%Y-%m-%d)"
ours="$out/inference_${day}_t$threads.csv"
theirs="$out/inference_pytorch_${day}_t$threads.csv"
tmp="$(mktemp)"; tmp2="$(mktemp)"
"$qlstm" bench --inference --config all --threads "$threads" --steps "$rounds" > "$tmp"
echo "config,impl,threads,batch,tokens_per_s,best_tokens_per_s" > "$tmp2"
for config in char text8 word2; do
  OMP_NUM_THREADS="$threads" "$venv/bin/python" "$here/pytorch_inference.py" "$config" "$threads" "$rounds" >> "$tmp2"
done
mv "$tmp" "$ours"; mv "$tmp2" "$theirs"; chmod 644 "$ours" "$theirs"
COMMAND="scripts/bench_inference.sh VENV_DIR $threads $rounds" TORCH_VERSION="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')" \
  python3 "$here/inference_table.py" "$ours" "$theirs" > "$out/INFERENCE.md.part" && mv "$out/INFERENCE.md.part" "$out/INFERENCE.md"
echo "bench: wrote $ours, $theirs and $out/INFERENCE.md"
