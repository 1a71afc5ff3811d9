#!/usr/bin/env bash
# Multi-node training with OpenMPI's mpirun and a hostfile.
#
#   launch/mpirun.sh HOSTFILE RANKS configs/my.toml --run-dir runs/my [--set key=value ...]
#
# HOSTFILE lists one host per line with its slots (`node1 slots=8`); the run
# directory and the dataset must be visible to every host at the same path.
# ORRERY names the binary (default: target/release/orrery, same path on every host).
set -euo pipefail
hostfile=${1:?usage: launch/mpirun.sh HOSTFILE RANKS CONFIG [train args]}
ranks=${2:?usage: launch/mpirun.sh HOSTFILE RANKS CONFIG [train args]}
shift 2
orrery=${ORRERY:-$PWD/target/release/orrery}
extra=()
[[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
exec mpirun -n "$ranks" --hostfile "$hostfile" --bind-to none "${extra[@]}" \
  -x PATH -x LD_LIBRARY_PATH \
  "$orrery" train "$@" --resume auto
