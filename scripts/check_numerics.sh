#!/usr/bin/env bash
# Numerics fingerprint of a qlstm binary: a fixed set of short real runs at one thread and at
# two (the split-batch paths), and the SHA-256 of every metrics.csv (timing columns removed),
# lambda.csv and grad_norm.csv.
# Two binaries that compute the same numbers print the same manifest, so a restructuring (or
# a speed change that must not move numerics) is checked with
#
#   scripts/check_numerics.sh OLD_BINARY /tmp/old > old.txt
#   scripts/check_numerics.sh target/release/qlstm /tmp/new > new.txt
#   diff old.txt new.txt && echo identical
#
# usage: scripts/check_numerics.sh BINARY OUT_DIR      (needs the data: scripts/get_data.sh)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="$(realpath "${1:?usage: check_numerics.sh BINARY OUT_DIR}")"
out="$(realpath -m "${2:?usage: check_numerics.sh BINARY OUT_DIR}")"
rm -rf "$out" && mkdir -p "$out"
data="data.dir=$root/data"
diag=(--set diagnostics.lambda_every=5 --set diagnostics.grad_every=10)
mkdir -p "$out/specs"
for t in ptb_char ptb_word seq_mnist; do echo "task = \"$t\"" >"$out/specs/$t.toml"; done

run() { # name task sets...   (THREADS: 1 unless set)
  local name="$1" task="$2" rc=0; shift 2
  "$bin" run "$out/specs/$task.toml" --set "name=$name" --set "$data" "${diag[@]}" "$@" \
    --threads "${THREADS:-1}" --out "$out" >"$out/$name.log" 2>&1 || rc=$?
  # a diverged run (exit 3) is a result too; anything else is a failure of the check
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
    echo "check_numerics: $name failed (exit $rc), see $out/$name.log" >&2
    exit 1
  fi
}

# PTB-char, one epoch capped at 30 steps, a checkpoint every 10 (the run writes what resume reads)
for qn in fp:none bc:weight tc:layer lab:batch_shared lat:batch_separate; do
  q="${qn%%:*}" n="${qn##*:}"
  run "char_${q}_${n}" ptb_char --set "model.quantizer=$q" --set "model.normalization=$n" \
    --set model.hidden=64 --set train.epochs=1 --set train.max_steps=30 --set train.checkpoint_every=10
done
# layer norm over gate blocks of H = 100, not a multiple of 16 (the sums' tails)
run char_bc_layer_h100 ptb_char --set model.quantizer=bc --set model.normalization=layer \
  --set model.hidden=100 --set train.epochs=1 --set train.max_steps=10
# the GRU cell (docs/SPEC.md §6): layer norm, and plain tc (its λ1 explodes)
for qn in tc:layer tc:none; do
  q="${qn%%:*}" n="${qn##*:}"
  run "char_gru_${q}_${n}" ptb_char --set model.cell=gru --set "model.quantizer=$q" --set "model.normalization=$n" \
    --set model.hidden=64 --set train.epochs=1 --set train.max_steps=20
done
# PTB-word, two layers with all three dropouts (SGD, the task's recipe otherwise)
run word_2layer_dropout ptb_word --set model.hidden=64 --set model.embedding=64 --set model.layers=2 \
  --set model.dropout_between=0.5 --set train.epochs=1 --set train.max_steps=30
# sequential MNIST, binarized with layer norm (learned h0/c0, noise on them in training)
run mnist_bc_layer seq_mnist --set model.hidden=32 --set model.quantizer=bc --set model.normalization=layer \
  --set train.epochs=1 --set train.max_steps=4 --set train.eval_batch_size=500
# and without an input normalizer (its one-pixel product written step by step in the time loop)
run mnist_tc_weight seq_mnist --set model.hidden=32 --set model.quantizer=tc --set model.normalization=weight \
  --set train.epochs=1 --set train.max_steps=4 --set train.eval_batch_size=500

# Two threads: each half of the batch on its own thread (the split paths: no normalizer, layer
# norm, batch norm exchanging statistics at every step, N_x over the window's halves). Their
# sums are taken in a fixed order, so these are as repeatable as the one-thread runs.
for qn in bc:none tc:layer bc:batch_shared lat:batch_separate; do
  q="${qn%%:*}" n="${qn##*:}"
  THREADS=2 run "t2_char_${q}_${n}" ptb_char --set "model.quantizer=$q" --set "model.normalization=$n" \
    --set model.hidden=64 --set train.epochs=1 --set train.max_steps=12
done
THREADS=2 run t2_word_2layer_bc_layer ptb_word --set model.hidden=64 --set model.embedding=64 --set model.layers=2 \
  --set model.quantizer=bc --set model.normalization=layer --set train.epochs=1 --set train.max_steps=12
THREADS=2 run t2_char_gru_bc_batch_shared ptb_char --set model.cell=gru --set model.quantizer=bc \
  --set model.normalization=batch_shared --set model.hidden=64 --set train.epochs=1 --set train.max_steps=12
for qn in fp:none bc:layer; do
  q="${qn%%:*}" n="${qn##*:}"
  THREADS=2 run "t2_mnist_${q}_${n}" seq_mnist --set model.hidden=32 --set "model.quantizer=$q" \
    --set "model.normalization=$n" --set train.epochs=1 --set train.max_steps=3 --set train.eval_batch_size=500
done
THREADS=2 run t2_mnist_tc_batch_separate seq_mnist --set model.hidden=32 --set model.quantizer=tc \
  --set model.normalization=batch_separate --set train.epochs=1 --set train.max_steps=3 --set train.eval_batch_size=500

# metrics.csv and summary.csv without their timing columns; the diagnostics files whole
for d in "$out"/*/; do
  [ -f "$d/metrics.csv" ] || continue
  n="$(basename "$d")"
  for f in metrics.csv summary.csv; do
    python3 - "$d/$f" <<'EOF' | sha256sum | sed "s|-\$|$n/$f (no timings)|"
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline="")))
keep = [i for i, h in enumerate(rows[0]) if h not in ("tokens_per_s", "train_tokens_per_s", "wall_s")]
for r in rows:
    print(",".join(r[i] for i in keep))
EOF
  done
  for f in lambda.csv grad_norm.csv; do
    (cd "$out" && sha256sum "$n/$f")
  done
done
