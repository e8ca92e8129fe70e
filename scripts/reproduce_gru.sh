#!/usr/bin/env bash
# Reproduce the GRU question (docs/SPEC.md §6): see scripts/reproduce.sh (options: --profile budget|paper, --jobs N, --out DIR).
exec "$(dirname "${BASH_SOURCE[0]}")/reproduce.sh" gru "$@"
