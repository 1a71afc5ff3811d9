#!/usr/bin/env bash
# FSDP next to DDP on the CPU: per-rank training state and heap, step time,
# communication time and bytes for 1, 2 and 4 ranks, on a parameter-heavy
# variant of the quickstart (hidden 512, depth 8: 25M parameters) so that the
# state, not the activations, dominates memory. Prints a markdown table.
#   bash benchmarks/fsdp/run.sh            (uses target/release/orrery)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${ORRERY:-target/release/orrery}
[ -d data/quickstart ] ||
  "$bin" data synth --out data/quickstart --clips 512 --frames 16 --size 16 16 --seed 0
set_args=(--set model.hidden=512 --set model.depth=8 --set model.heads=8 --set data.global_batch=4)
row() { { grep -F "| $1" <<<"$2" || true; } | head -1 | cut -d'|' -f3 | sed 's/^ *//; s/ *$//'; }
echo "| strategy | ranks | step, median (s) | communication (s) | sent per rank per step | param + grad + AdamW per rank | largest unit gathered | heap at start / peak (MiB) |"
echo "|---|---|---|---|---|---|---|---|"
for strategy in ddp fsdp; do
  for n in 1 2 4; do
    out=$("$bin" launch -n "$n" -- bench step configs/quickstart.toml "${set_args[@]}" \
      --set parallel.strategy=$strategy --steps 3 --warmup 2 2>&1)
    unit=$(row "largest unit" "$out")
    echo "| $strategy | $n | $(row "step time, median" "$out") | $(row "communication per step" "$out") | $(row "bytes sent" "$out" | sed 's/.*(//; s/)//') | $(row "parameter + gradient" "$out") | ${unit:--} | $(row "heap when" "$out" | sed 's/ MiB//') |"
  done
done
