#!/usr/bin/env bash
# Reproduce the paper's two_layer: see scripts/reproduce.sh (options: --profile budget|paper, --jobs N, --out DIR).
exec "$(dirname "${BASH_SOURCE[0]}")/reproduce.sh" two_layer "$@"
