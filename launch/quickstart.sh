#!/usr/bin/env bash
# README command 1: set up, build, make the embedded dataset, train the
# quickstart world model on the CPU, and roll it out.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bash launch/setup.sh
t0=$(date +%s)
cargo build --release -j "${JOBS:-2}" --bin orrery
t1=$(date +%s)
orrery="$CARGO_TARGET_DIR/release/orrery"
run_dir="${RUN_DIR:-runs/quickstart}"
if [[ ! -f data/quickstart/part-00000.parquet ]]; then
  "$orrery" data synth --out data/quickstart --clips 512 --frames 16 --size 16 16 --seed 0
fi
"$orrery" train configs/quickstart.toml --run-dir "$run_dir" --resume never "$@"
t2=$(date +%s)
"$orrery" sample --checkpoint "$run_dir" --out "$run_dir/rollout.gif"
t3=$(date +%s)
echo
echo "build: $((t1 - t0)) s   train: $((t2 - t1)) s   sample: $((t3 - t2)) s"
echo "open TensorBoard with: tensorboard --logdir $run_dir/tensorboard"
