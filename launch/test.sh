#!/usr/bin/env bash
# README command 2: set up and run every test, then check the CUDA build.
#   ORRERY_SKIP_CUDA_BUILD=1 skips the (slow, ~10 CPU-minutes) CUDA build check.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bash launch/setup.sh --test
cargo test -j "${JOBS:-2}" --workspace
if [[ "${ORRERY_SKIP_CUDA_BUILD:-0}" != 1 ]]; then
  echo "checking that the CUDA build compiles (cargo build --features cuda)"
  # cudarc picks its CUDA API version at build time; 13000 matches driver 580 / CUDA 13.0.
  CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}" cargo build -j "${JOBS:-2}" --features cuda --bin orrery
fi
