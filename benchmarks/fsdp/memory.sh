#!/usr/bin/env bash
# Peak RSS of each FSDP rank while training and writing a checkpoint, then
# while resuming from it (BENCHMARKS.md, "FSDP checkpoints ... peak memory").
#   benchmarks/fsdp/memory.sh BIN [RANKS]   (run from the repository root;
#   needs mpirun and GNU time: apt install time)
# The quickstart config with a 130M-parameter model (518 MB per f32 copy).
set -euo pipefail
bin=$(realpath "$1"); n=${2:-2}
run=$(mktemp -d)/run
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RAYON_NUM_THREADS=1
big="--set model.hidden=768 --set model.depth=12 --set model.heads=12"
common="configs/quickstart.toml --set data.url=data/quickstart $big --set data.global_batch=4
  --set data.holdout_clips=4 --set logging.eval_every=1000 --set parallel.strategy=fsdp --run-dir $run"
peaks() { mpirun --oversubscribe -n "$n" /usr/bin/time -f "rss %M" "$bin" train $common "$@" 2>&1 \
  | awk '/^rss/ {printf "%s%.0f", sep, $2 / 1024; sep=" / "}'; }
echo "| phase | peak RSS per rank (MB) |"
echo "|---|---|"
echo "| train 2 steps + checkpoint | $(peaks --set run.steps=2 --set checkpoint.every=2 --resume never) |"
echo "| resume, 1 step | $(peaks --set run.steps=3 --set checkpoint.every=100) |"
rm -rf "$(dirname "$run")"
