#!/usr/bin/env bash
# qlstm binaries and PyTorch's fused nn.LSTM, alternating on one machine, same shapes and step:
# the A/B of two builds and the ratio to PyTorch come from one run. Keep the machine quiet
# (no sweep running) while it runs.
#
# usage: scripts/side_by_side.sh VENV_DIR ROUNDS OUT.csv LABEL=BINARY [LABEL=BINARY ...]
#   VENV_DIR  a venv with torch (scripts/torch_venv.sh makes one); ROUNDS: rounds of every
#             config; LABEL=BINARY: a qlstm binary and the name its rows get (e.g. A=/tmp/qlstm-old).
# Environment: CONFIGS (default "char word1 word2 mnist"), STEPS (timed steps, default 8),
# THREADS (default 2), PRECISIONS (qlstm's --gemm-precision values, default "f32"; a bf16 row's
# binary column is LABEL-bf16), TORCH_IMPLS (pytorch_baseline.py IMPLs, default "fused"; add
# fused_bf16 for autocast bf16). Writes OUT.csv and OUT.host (CPU model, flags, the date).
# Each round and config also gets a torch-sgemm row: PyTorch's SGEMM roof (its roof_gflops),
# measured on the shapes and in the way `qlstm bench` measures its own.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:?usage: side_by_side.sh VENV_DIR ROUNDS OUT.csv LABEL=BINARY...}"
rounds="${2:?rounds}"
out="${3:?OUT.csv}"
shift 3
[ $# -ge 1 ] || { echo "side_by_side: name at least one LABEL=BINARY" >&2; exit 2; }
configs="${CONFIGS:-char word1 word2 mnist}"
steps="${STEPS:-8}"
threads="${THREADS:-2}"
precisions="${PRECISIONS:-f32}"
torch_impls="${TORCH_IMPLS:-fused}"
"$here/torch_venv.sh" "$venv"
python3 -c "import sys; sys.path.insert(0, '$here'); import hostinfo; print(hostinfo.cpu())" > "$out.host"
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ' >> "$out.host"
echo >> "$out.host"
date -u +%FT%TZ >> "$out.host"
echo "round,tool,binary,config,variant,threads,median_ms,best_ms,tokens_per_s,gflops,roof_gflops,roof_fraction,peak_rss_mb" > "$out"
for r in $(seq 1 "$rounds"); do
  for config in $configs; do
    for lb in "$@"; do
      for p in $precisions; do
        label="${lb%%=*}" bin="${lb#*=}"
        [ "$p" = f32 ] || label="$label-$p"
        # CSV: config,quantizer,normalization,threads,steps,median_ms,best_ms,tokens_per_s,gflops,roof,fraction,rss,cell,precision
        "$bin" bench --config "$config" --quantizer fp --normalization none --threads "$threads" --steps "$steps" \
            --gemm-precision "$p" --no-header |
          awk -F, -v r="$r" -v l="$label" '{printf "%s,qlstm,%s,%s,%s/%s,%s,%s,%s,%s,%s,%s,%s,%s\n", r, l, $1, $2, $3, $4, $6, $7, $8, $9, $10, $11, $12}' >> "$out"
        "$bin" bench --config "$config" --quantizer bc --normalization none,layer,batch_shared,batch_separate \
            --threads "$threads" --steps "$steps" --gemm-precision "$p" --no-header |
          awk -F, -v r="$r" -v l="$label" '{printf "%s,qlstm,%s,%s,%s/%s,%s,%s,%s,%s,%s,%s,%s,%s\n", r, l, $1, $2, $3, $4, $6, $7, $8, $9, $10, $11, $12}' >> "$out"
      done
    done
    # pytorch_baseline.py CSV: config,impl,threads,steps,median_ms,best_ms,tokens_per_s,gflops
    for impl in $torch_impls; do
      OMP_NUM_THREADS="$threads" "$venv/bin/python" "$here/pytorch_baseline.py" "$config" "$impl" "$threads" "$steps" |
        awk -F, -v r="$r" -v t="torch-$impl" '{printf "%s,pytorch,%s,%s,%s,%s,%s,%s,%s,%s,,,\n", r, t, $1, $2, $3, $5, $6, $7, $8}' >> "$out"
    done
    # PyTorch's own SGEMM roof (MKL/oneDNN), measured as qlstm's: its row's roof_gflops
    OMP_NUM_THREADS="$threads" "$venv/bin/python" "$here/torch_sgemm_roof.py" "$config" "$threads" |
      awk -F, -v r="$r" '{printf "%s,pytorch,torch-sgemm,%s,sgemm,%s,,,,,%s,,\n", r, $1, $2, $3}' >> "$out"
  done
done
echo "side_by_side: wrote $out and $out.host" >&2
