#!/usr/bin/env bash
# GPU smoke run of a `--features cuda` binary: bench the quickstart step on the
# GPU, train the quickstart longer than the CPU can, and roll it out.
#   launch/gpu-smoke.sh BINARY OUTDIR [STEPS] [TRAIN_SECONDS]
# Training is cut at TRAIN_SECONDS (default 300); the rollout then uses the
# newest checkpoint (one every 500 steps).
set -uo pipefail
bin=$1; out=$2; steps=${3:-3000}; train_s=${4:-300}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# cudarc loads libcuda from the driver and libnvrtc by name: point it at the toolkit's or pip's copy.
nvrtc=$(python3 -c "import nvidia.cuda_nvrtc as m, os; print(os.path.join(os.path.dirname(m.__file__), 'lib'))" 2>/dev/null || true)
export LD_LIBRARY_PATH="${nvrtc:+$nvrtc:}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
data=$(mktemp -d)/qs
"$bin" data synth --out "$data" --clips 512 --frames 16 --size 16 16 >/dev/null
"$bin" bench step configs/quickstart.toml --set run.device=cuda --set data.url="$data" --steps 20 --warmup 5 2>&1 | tee "$out/bench_gpu.txt"
timeout "$train_s" "$bin" train configs/quickstart.toml --set run.device=cuda --set data.url="$data" --set run.steps="$steps" \
  --set logging.every=250 --set logging.eval_every=500 --set checkpoint.every=500 --run-dir /tmp/gpu-run --resume never \
  > "$out/train_gpu.txt" 2>&1
tail -25 "$out/train_gpu.txt"
"$bin" sample --checkpoint /tmp/gpu-run --out "$out/rollout.gif" 2>&1 | tee "$out/sample_gpu.txt"
