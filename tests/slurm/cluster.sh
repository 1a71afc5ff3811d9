#!/usr/bin/env bash
# A one-host Slurm cluster with two node names, for tests.
#   tests/slurm/cluster.sh start DIR   install Slurm + munge if missing, write
#                                      DIR/slurm.conf, start munged, slurmctld
#                                      and one slurmd per node (slurmd -N)
#   tests/slurm/cluster.sh stop DIR    stop them
# Then: export SLURM_CONF=DIR/slurm.conf (start prints it). Needs root (the
# slurmd run in private mount namespaces). On one host OpenMPI's shared-memory
# transport fails across the fake nodes: run jobs with OMPI_MCA_btl=self,tcp.
set -euo pipefail
cmd=${1:?start or stop}
dir=$(mkdir -p "${2:?a state directory}" && cd "$2" && pwd)
host=$(hostname)

stop() {
  local pids=()
  for f in "$dir"/*.pid; do
    [[ -f $f ]] && pids+=("$(cat "$f")") && rm -f "$f"
  done
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

if [[ $cmd == stop ]]; then
  stop
  exit 0
fi

# Debian packages, checked by name (launch/packages.sh).
# shellcheck source=launch/packages.sh
. "$(dirname "$0")/../../launch/packages.sh"
slurm_packages=(
  slurmctld     # the controller
  slurmd        # the node daemon, one per fake node
  slurm-client  # sinfo, srun, sbatch
  munge         # the authentication daemon Slurm's auth/munge talks to
  util-linux    # unshare, for each slurmd's private mount namespace
)
mapfile -t missing < <(missing_packages "${slurm_packages[@]}")
install_packages cluster.sh "${missing[@]}"
stop
mkdir -p "$dir/state" "$dir/spool"
cpus=$(nproc)
cat > "$dir/slurm.conf" <<CONF
ClusterName=orrerytest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=16817
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$dir/slurm.conf
# munge: the package's key, a socket the tools find by default.
mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
if ! pgrep -x munged >/dev/null; then
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
  else
    munged --force
  fi
fi
# The PMIx plugin puts each step's client directory at the same path on
# every "node" (no %n there), so two slurmd on one host collide: give each
# slurmd a private mount of that directory.
echo "PMIxCliTmpDirBase=$dir/pmix" > "$dir/mpi.conf"
mkdir -p "$dir/pmix"
slurmctld -f "$dir/slurm.conf"
for n in node1 node2; do
  mkdir -p "$dir/pmix-$n"
  unshare -m --propagation private \
    sh -c "mount --bind '$dir/pmix-$n' '$dir/pmix' && exec slurmd -f '$dir/slurm.conf' -N $n"
done
for _ in $(seq 60); do
  idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c idle || true)
  [[ $idle -ge 2 ]] && break
  sleep 1
done
sinfo -N
if [[ ${idle:-0} -lt 2 ]]; then
  echo "cluster.sh: nodes did not come up; logs in $dir" >&2
  tail -n 20 "$dir"/*.log >&2 || true
  exit 1
fi
echo "export SLURM_CONF=$dir/slurm.conf"
