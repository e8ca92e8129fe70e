#!/usr/bin/env bash
# qlstm against PyTorch on the same machine, one after the other, same shapes and step.
#
# usage: scripts/bench_vs_pytorch.sh VENV_DIR [THREADS] [STEPS]
#   VENV_DIR  a Python venv with torch; created (python3 -m venv, pip install torch numpy) if it
#             does not exist. The PyPI torch wheel is the CUDA build, ~5.4 GB installed; it runs
#             on CPU. Put it anywhere with the space, e.g. ~/venvs/torch.
#   THREADS   default 2; STEPS: timed steps per measurement, default 10.
# writes results/bench/bench_<date>.csv (every row of both tools) and
#        results/bench/README.md (tokens/s side by side, ratios, machine, date).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${1:?usage: scripts/bench_vs_pytorch.sh VENV_DIR [THREADS] [STEPS]}"
threads="${2:-2}"
steps="${3:-10}"
"$here/torch_venv.sh" "$venv"
(cd "$root" && cargo build --release --quiet)
qlstm="$root/target/release/qlstm"
out="$root/results/bench"
mkdir -p "$out"
day="$(date -u +%Y-%m-%d)"
csv="$out/bench_$day.csv"
tmp="$(mktemp)"
echo "tool,config,variant,threads,median_ms,tokens_per_s,gflops,roof_gflops,roof_fraction,peak_rss_mb" > "$tmp"
for config in char word1 word2 mnist; do
  # qlstm: fp/none and bc with each normalization (CSV columns: see `qlstm bench --help`)
  "$qlstm" bench --config "$config" --quantizer fp,bc --normalization none,weight,layer,batch_shared \
      --threads "$threads" --steps "$steps" --no-header |
    awk -F, '{printf "qlstm,%s,%s/%s,%s,%s,%s,%s,%s,%s,%s\n", $1, $2, $3, $4, $6, $8, $9, $10, $11, $12}' >> "$tmp"
  if [ "$config" != word2 ]; then
    # the GRU side by side (issue: quantized GRU): qlstm's GRU cell against fused nn.GRU
    "$qlstm" bench --config "$config" --cell gru --quantizer fp --normalization none \
        --threads "$threads" --steps "$steps" --no-header |
      awk -F, '{printf "qlstm,%s,gru:%s/%s,%s,%s,%s,%s,%s,%s,%s\n", $1, $2, $3, $4, $6, $8, $9, $10, $11, $12}' >> "$tmp"
  fi
  for impl in fused fused_gru official official_ln official_bn; do
    [ "$impl" = fused_gru ] && [ "$config" = word2 ] && continue
    OMP_NUM_THREADS="$threads" "$venv/bin/python" "$here/pytorch_baseline.py" "$config" "$impl" "$threads" "$steps" |
      awk -F, '{printf "pytorch,%s,%s,%s,%s,%s,%s,,,\n", $1, $2, $3, $5, $7, $8}' >> "$tmp"
  done
done
mv "$tmp" "$csv"
chmod 644 "$csv"
TORCH_VERSION="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')" \
  python3 "$here/bench_table.py" "$csv" "$threads" > "$out/README.md.part" && mv "$out/README.md.part" "$out/README.md"
echo "bench: wrote $csv and $out/README.md"
