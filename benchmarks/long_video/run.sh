#!/usr/bin/env bash
# Issue 18's long-clip table: peak heap and step time of one training step
# versus tokens per clip, for the naive kernel, the blockwise kernel,
# blockwise with block checkpointing, and context parallelism over 2 and 4
# ranks (blockwise). Usage: bash benchmarks/long_video/run.sh [ORRERY] > table.md
# Naive stops at 8k tokens (16k would need about 33 GiB on this machine).
set -u
O=${1:-target/release/orrery}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cfg=configs/bench/long-video.toml
cell() { # frames ranks extra... -> "peak MiB / step s"
  local frames=$1 n=$2; shift 2
  local cmd=("$O" bench step "$cfg" --synthetic --steps 1 --warmup 0 --set "model.frames=$frames" "$@")
  if [ "$n" -gt 1 ]; then cmd=("$O" launch -n "$n" -- "${cmd[@]:1}"); fi
  local out; out=$(timeout 1200 "${cmd[@]}" 2>&1)
  local peak step
  peak=$(echo "$out" | sed -n 's/.*peak during them | [0-9.]* \/ \([0-9.]*\) MiB.*/\1/p' | head -1)
  step=$(echo "$out" | sed -n 's/.*step time, median (s) | \([0-9.]*\).*/\1/p' | head -1)
  if [ -z "$peak" ]; then echo "failed"; else printf "%.0f MiB / %.1f s" "$peak" "$step"; fi
}
echo "| tokens | frames | naive | blockwise | blockwise + block checkpointing | blockwise, C = 2 (per rank) | blockwise, C = 4 (per rank) |"
echo "|---|---|---|---|---|---|---|"
for frames in 4 8 16 32 64 128; do
  tokens=$((frames * 256))
  naive="-"
  if [ "$frames" -le 32 ]; then naive=$(cell "$frames" 1 --set model.attention_impl=naive); fi
  bw=$(cell "$frames" 1)
  ck=$(cell "$frames" 1 --set parallel.activation_checkpoint=block)
  c2=$(cell "$frames" 2 --set parallel.context=2)
  c4=$(cell "$frames" 4 --set parallel.context=4)
  echo "| $tokens | $frames | $naive | $bw | $ck | $c2 | $c4 |"
done
