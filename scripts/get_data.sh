#!/usr/bin/env bash
# Fetch qlstm's datasets into data/ and verify their checksums.
# usage: scripts/get_data.sh [ptb|warpeace|mnist|text8|all]...   (default: ptb warpeace mnist)
# `all` also tries text8, whose only source is its original URL; a failure there is reported
# but does not fail `all`. DATA_DIR overrides the destination (default: data/ beside scripts/).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${DATA_DIR:-$here/../data}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ptb warpeace mnist)
for t in "${targets[@]}"; do
  case "$t" in
    all)
      python3 "$here/fetch_data.py" "$data" ptb warpeace mnist
      python3 "$here/fetch_data.py" "$data" text8 || echo "get_data: text8 skipped (see above)" ;;
    ptb|warpeace|mnist|text8) python3 "$here/fetch_data.py" "$data" "$t" ;;
    *) echo "get_data: unknown target '$t' (allowed: ptb, warpeace, mnist, text8, all)" >&2; exit 2 ;;
  esac
done
