#!/usr/bin/env bash
# Reproduce one of the paper's tables: sweep its cells (resuming where a previous call
# stopped), then lay the results out beside the published numbers.
#
# usage: scripts/reproduce.sh TABLE [--profile budget|paper] [--jobs N] [--out DIR]
#   TABLE    table2 (char: ptb_char, warpeace, text8) | table3 (ptb_word 300 and 650)
#            | table4 (seq_mnist) | two_layer (ptb_word 2×650)
#            | gru (the GRU on ptb_char, ptb_word 300, seq_mnist: docs/SPEC.md §6)
#   profile  budget (default): reduced budgets that fit under an hour per 15-run block on
#            2 cores (README, "Reproducing the paper"); paper: the full recipes of docs/SPEC.md §3.
# writes <out>/<profile>/<table>/<run>/... and <out>/<profile>/<table>.{csv,md}
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
table="${1:?usage: scripts/reproduce.sh TABLE [--profile budget|paper] [--jobs N] [--out DIR]}"
shift
profile=budget; jobs=; out="$root/results"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "reproduce: unknown option $1" >&2; exit 2 ;;
  esac
done
# seq_mnist's H = 100 keeps two threads of one run half idle, so table4 runs two at a time
# (one thread each) unless told otherwise; the larger char and word models use both cores.
if [ -z "$jobs" ]; then
  jobs=1
  if [ "$table" = table4 ] && [ "$(nproc)" -ge 2 ]; then jobs=2; fi
fi
case "$profile" in budget|paper) ;; *) echo "reproduce: --profile budget|paper" >&2; exit 2 ;; esac
case "$table" in
  table2) datasets="ptb_char warpeace text8" ;;
  table3) datasets="ptb_word ptb_word650" ;;
  table4) datasets="seq_mnist" ;;
  two_layer) datasets="ptb_word_2x650" ;;
  gru) datasets="ptb_char ptb_word seq_mnist" ;;
  *) echo "reproduce: TABLE is table2, table3, table4, two_layer or gru" >&2; exit 2 ;;
esac
(cd "$root" && cargo build --release --quiet)
qlstm="$root/target/release/qlstm"
specs=()
for d in $datasets; do
  for q in fp bc tc; do
    if [ "$table" = gru ]; then
      for f in "$root/configs/$profile/gru/${d}_gru_${q}_"*.toml; do specs+=("$f"); done
    else
      for f in "$root/configs/$profile/${d}_${q}_"*.toml; do specs+=("$f"); done
    fi
  done
done
# fetch what the specs need (text8 only if it can be had: its only source is the original URL)
"$root/scripts/get_data.sh" ptb warpeace mnist >/dev/null
runs="$out/$profile/$table"
# A run that fails (e.g. text8 without its data) is reported and left empty in the table.
"$qlstm" sweep "${specs[@]}" --jobs "$jobs" --out "$runs" || echo "reproduce: some runs did not finish (see above)"
# the gru table sets our LSTM runs (from the other tables) beside the GRU's
tables=("$runs"); [ "$table" = gru ] && tables=("$out/$profile")
"$qlstm" table "${tables[@]}" --layout "$table" --out "$out/$profile/$table.csv"
"$qlstm" table "${tables[@]}" --layout "$table" --markdown --out "$out/$profile/$table.md"
echo "reproduce: $out/$profile/$table.csv and $table.md"
