#!/usr/bin/env bash
# Install what orrery's build and tests need, if missing. Safe to run again.
#   launch/setup.sh          build tools and OpenMPI (Rust must already be installed)
#   launch/setup.sh --test   also the Python readers the tests use
set -euo pipefail
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# OpenMPI (mpirun and the headers/libraries the mpi crate builds against) and
# libclang (its bindgen step), for multi-rank training.
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: please install: ${missing[*]}" >&2
    exit 1
  fi
fi
if ((want_test)); then
  if ! python3 -c "import safetensors, numpy, tensorboard" >/dev/null 2>&1; then
    python3 -m pip install -q -r "$(dirname "$0")/../tests/python/requirements.txt"
  fi
fi
