#!/usr/bin/env bash
# Issue 19 on ViZDoom's frames, on the CPU: three autoencoders (no KL and no
# GAN; KL; KL + patch discriminator), `orrery encode` on 1 and 2 ranks, and
# world models on pixels and on latents for the same number of DiT steps
# (the same step time: 64 tokens a frame either way). Every run is 2 ranks.
#   benchmarks/latent/run.sh WORK_DIR    (ORRERY, VAE_STEPS, DIT_STEPS to change)
# Writes WORK_DIR/latent-bench.log; the tables in BENCHMARKS.md come from it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:?usage: run.sh WORK_DIR}
orrery=${ORRERY:-$repo/target/release/orrery}
vae_steps=${VAE_STEPS:-1200}
dit_steps=${DIT_STEPS:-800}
mkdir -p "$work" && cd "$work"
log=$work/latent-bench.log
say() { echo "== $*" | tee -a "$log"; }
timed() { local t0=$SECONDS; "$@" 2>&1 | tee -a "$log"; say "took $((SECONDS - t0)) s: $*"; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

[[ -d clips/vizdoom ]] || timed python3 "$repo/datasets/vizdoom_record.py" --out clips/vizdoom --clips 600 --frames 16
[[ -d data/vizdoom ]] || timed "$orrery" data import --from clips/vizdoom --out data/vizdoom --shard-mb 16

vae() {  # name, extra --set flags
  local name=$1; shift
  [[ -d runs/$name/checkpoints ]] && return
  timed "$orrery" launch -n 2 -- vae train "$repo/configs/vizdoom-vae.toml" --run-dir "runs/$name" \
    --set run.steps="$vae_steps" --set train.disc_start=$((vae_steps * 3 / 4)) "$@"
}
vae vae-plain --set train.kl_weight=0 --set train.disc_weight=0
vae vae-kl --set train.disc_weight=0
vae vae-gan

rm -rf data/lat-1 data/lat-2
timed "$orrery" encode --vae runs/vae-kl --from data/vizdoom --out data/lat-1
timed "$orrery" launch -n 2 -- encode --vae runs/vae-kl --from data/vizdoom --out data/lat-2
python3 - <<'PY' | tee -a "$log"
import glob, pyarrow.parquet as pq
a, b = (sorted(glob.glob(f'data/{d}/*.parquet')) for d in ('lat-1', 'lat-2'))
same = len(a) == len(b) and all(pq.read_table(x).equals(pq.read_table(y)) for x, y in zip(a, b))
print(f'lat-1 and lat-2: {len(a)} files, identical tables: {same}')
PY

wm() {  # name, config, extra --set flags
  local name=$1 config=$2; shift 2
  [[ -d runs/$name/checkpoints ]] || timed "$orrery" launch -n 2 -- train "$repo/configs/$config" \
    --run-dir "runs/$name" --set run.steps="$dit_steps" "$@"
  timed "$orrery" sample --checkpoint "runs/$name" --out "runs/$name/rollout.gif" \
    --save-frames "runs/$name/frames.safetensors"
}
wm wm-pixels vizdoom.toml --set data.url=data/vizdoom
wm wm-latent vizdoom-latent.toml --set data.url=data/lat-1 --set data.vae=runs/vae-kl
