#!/usr/bin/env bash
# Issue 18's CPU step table: the 4.17M-parameter video DiT
# (configs/bench/video-4m.toml, batch 8, 512 tokens per clip) against the
# same model and step in compiled JAX (benchmarks/jax/video_dit_step.py),
# for two orrery binaries (say, before and after a change), all in one run
# and in turn, ROUNDS times. Medians of 5 steps after one warm-up step.
# Usage: bash benchmarks/cpu_step/run.sh BEFORE AFTER [ROUNDS] > table.md
set -u
before=${1:?the orrery binary before}
after=${2:?the orrery binary after}
rounds=${3:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cfg=configs/bench/video-4m.toml
median() { sed -n 's/.*step time, median (s) | \([0-9.]*\).*/\1/p' | head -1; }
orrery() { # binary ranks extra... -> median step seconds
  local bin=$1 n=$2; shift 2
  local cmd=("$bin" bench step "$cfg" --synthetic --steps 5 --warmup 1 "$@")
  if [ "$n" -gt 1 ]; then cmd=("$bin" launch -n "$n" -- "${cmd[@]:1}"); fi
  timeout 900 "${cmd[@]}" 2>&1 | median
}
jax() { python3 benchmarks/jax/video_dit_step.py --steps 5 --warmup 2 2>&1 | sed -n 's/^median step \([0-9.]*\) s.*/\1/p'; }
rows=("JAX (jit, XLA CPU)" "before, one process" "after, one process"
  "before, 2 ranks x 1 thread (orrery launch -n 2)" "after, 2 ranks x 1 thread (orrery launch -n 2)"
  "after, one process, 2 thread ranks (--threads 2)")
declare -A cell
for r in $(seq 1 "$rounds"); do
  cell[0,$r]=$(jax)
  cell[1,$r]=$(orrery "$before" 1)
  cell[2,$r]=$(orrery "$after" 1)
  cell[3,$r]=$(orrery "$before" 2)
  cell[4,$r]=$(orrery "$after" 2)
  cell[5,$r]=$(orrery "$after" 1 --threads 2)
done
printf "| |"; for r in $(seq 1 "$rounds"); do printf " run %s |" "$r"; done; echo " against JAX |"
printf "|---|"; for r in $(seq 1 "$rounds"); do printf -- "---|"; done; echo "---|"
for i in "${!rows[@]}"; do
  printf "| %s |" "${rows[$i]}"
  ratios=""
  for r in $(seq 1 "$rounds"); do
    printf " %s s |" "${cell[$i,$r]}"
    ratios+="$(python3 -c "print(f'{${cell[$i,$r]:-0}/${cell[0,$r]}:.2f}')" 2>/dev/null)x "
  done
  echo " $ratios|"
done
