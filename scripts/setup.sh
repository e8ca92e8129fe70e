#!/usr/bin/env bash
# Everything qlstm's tests and runs need on a fresh machine, then a report of what was done:
#   - Debian packages: GNU parallel (the sweep test runs emitted job lists under it), munge and
#     Slurm 22.05's slurmctld, slurmd and client commands (the cluster test starts a one-node
#     Slurm on localhost and submits the job arrays `qlstm sweep --emit slurm` writes);
#   - the data: scripts/get_data.sh (PTB, PTB characters, War and Peace, MNIST; checksums
#     verified; DATA_DIR overrides where it goes).
# Missing packages are installed with apt-get (as root, or through sudo without a password);
# where that is not possible the script names them and fails. Safe to run again: what is
# there already is left as it is.
# usage: scripts/setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# command → Debian package that provides it
declare -A packages=([parallel]=parallel [munged]=munge [slurmctld]=slurmctld [slurmd]=slurmd
  [sbatch]=slurm-client [setpriv]=util-linux)
report=()

missing=()
for cmd in "${!packages[@]}"; do
  if command -v "$cmd" >/dev/null 2>&1; then
    report+=("$cmd: present ($(command -v "$cmd"))")
  else
    missing+=("${packages[$cmd]}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    apt=(sudo apt-get)
  else
    echo "setup: missing Debian packages: ${missing[*]}; install them (apt-get install ${missing[*]}) and run this again" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null
  for p in "${missing[@]}"; do report+=("$p: installed"); done
fi

"$here/get_data.sh" >&2
report+=("data: fetched and verified under ${DATA_DIR:-$here/../data}")

echo "setup: done" >&2
for line in "${report[@]}"; do echo "  $line" >&2; done
