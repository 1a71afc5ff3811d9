#!/usr/bin/env bash
# Issue 19's recipe search for the ViZDoom world model on latents: one
# change at a time from configs/vizdoom-latent.toml (context noise, frame
# stacking, context dropout, action dropout and guidance, EDM, the x_0
# target and the residual skip, sampling steps, model size, steps), each
# run 2 ranks on the same data, scored against the true pixels. Needs benchmarks/latent/run.sh's WORK_DIR (its
# data/vizdoom, data/lat-1 and runs/vae-kl; wm-latent is the baseline).
#   benchmarks/latent/recipe.sh WORK_DIR [VARIANT ...]   (default: all, in order)
# Appends to WORK_DIR/recipe.log; recipe_table.py WORK_DIR makes the table.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:?usage: recipe.sh WORK_DIR [VARIANT ...]}
shift
orrery=${ORRERY:-$repo/target/release/orrery}
cd "$work"
log=$work/recipe.log
say() { echo "== $*" | tee -a "$log"; }
timed() { local t0=$SECONDS; "$@" 2>&1 | tee -a "$log"; say "took $((SECONDS - t0)) s: $*"; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
score() { python3 "$repo/benchmarks/latent/score_against_pixels.py" "$1" data/vizdoom 2>&1 | tee -a "$log"; }

train() {  # run name, config, --set flags...
  local name=$1 config=$2; shift 2
  [[ -d runs/$name/checkpoints ]] || timed "$orrery" launch -n 2 -- train "$repo/configs/$config" \
    --run-dir "runs/$name" "$@"
  [[ -f runs/$name/score_pixels.json ]] && return
  timed "$orrery" sample --checkpoint "runs/$name" --out "runs/$name/rollout.gif" \
    --save-frames "runs/$name/frames.safetensors"
  score "runs/$name"
}
latent() { local name=$1; shift; train "$name" vizdoom-latent.toml --set data.url=data/lat-1 --set data.vae=runs/vae-kl "$@"; }
resample() {  # run, subfolder, sample flags...: the same checkpoint sampled otherwise
  local run=$1 sub=$2; shift 2
  [[ -f runs/$run/$sub/score_pixels.json ]] && return
  mkdir -p "runs/$run/$sub"
  timed "$orrery" sample --checkpoint "runs/$run" --out "runs/$run/$sub/rollout.gif" \
    --save-frames "runs/$run/$sub/frames.safetensors" "$@"
  score "runs/$run/$sub"
}

variant() {
  case $1 in
    base) latent wm-latent ;;
    context-noise-0) latent r-cn0 --set objective.context_noise=0 ;;
    context-noise-0.2) latent r-cn02 --set objective.context_noise=0.2 ;;
    history-0) latent r-hist0 --set model.history_frames=0 ;;
    history-3) latent r-hist3 --set model.history_frames=3 ;;
    context-prob-0.9) latent r-cp09 --set objective.context_prob=0.9 ;;
    action-dropout-0) latent r-ad0 --set objective.action_dropout=0 ;;
    guidance) resample wm-latent g1.5 --guidance 1.5; resample wm-latent g3 --guidance 3 ;;
    sample-steps) resample wm-latent s1 --steps 1; resample wm-latent s3 --steps 3; resample wm-latent s30 --steps 30 ;;
    sample-seed) resample wm-latent seed1 --seed 1; resample wm-latent seed2 --seed 2 ;;
    x0) latent r-x0 --set objective.prediction='"x0"' ;;
    x0-residual) latent r-x0res --set objective.prediction='"x0"' --set objective.residual=true ;;
    residual) latent r-res --set objective.residual=true ;;
    edm) latent r-edm --set objective.interpolant='"vp_cosine"' --set objective.prediction='"v"' \
      --set objective.weighting='"none"' \
      --set objective.timesteps='{ kind = "edm_log_normal", p_mean = -1.2, p_std = 1.2 }' ;;
    wide) latent r-wide-600 --set model.hidden=192 --set model.depth=6 --set model.heads=6 --set run.steps=600 ;;  # ~ the time of 2400 base steps
    steps-2400) latent r-2400 --set run.steps=2400; resample r-2400 s3 --steps 3 ;;
    pixels-2400) train wm-pixels-2400 vizdoom.toml --set data.url=data/vizdoom --set run.steps=2400 ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
all=(base guidance sample-steps sample-seed context-noise-0 history-0 context-prob-0.9 action-dropout-0 edm
  context-noise-0.2 history-3 x0 x0-residual residual wide steps-2400 pixels-2400)
for v in "${@:-${all[@]}}"; do say "variant $v"; variant "$v"; done
