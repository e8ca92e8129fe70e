#!/usr/bin/env bash
# Reproduce the paper's table2: see scripts/reproduce.sh (options: --profile budget|paper, --jobs N, --out DIR).
exec "$(dirname "${BASH_SOURCE[0]}")/reproduce.sh" table2 "$@"
