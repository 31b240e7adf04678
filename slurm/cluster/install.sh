#!/usr/bin/env bash
# Install a single-node SLURM cluster on this Debian 12 machine (root, no systemd needed) and write its configs.
#
#   slurm/cluster/install.sh      # as root (sudo ... otherwise); start.sh runs it too; later stop.sh
#
# - Packages (Debian's): slurmctld, slurmd, slurm-client, slurmdbd, munge, mariadb-server. `apt-get update` runs
#   only when one of them is missing; nothing is started by the install (a temporary policy-rc.d forbids it).
# - Node: this machine under `hostname -s` (added to /etc/hosts if it does not resolve), CPUs and sockets from
#   `slurmd -C`, RealMemory 90 % of the detected memory (a value above the real one drains the node), and
#   ADVPRUNE_SLURM_GPUS (default 2) fake GPUs of model `fake`: GRES gpu:fake backed by /dev/null, /dev/zero, ...,
#   so `--gpus=1` and `--gpus=fake:1` jobs run (with CUDA_VISIBLE_DEVICES set) on a machine without a GPU.
# - Partitions: `cpu` (default) and `gpu`, both on this node.
# - Accounting: slurmdbd + MariaDB (database slurm_acct_db, user slurm over the unix socket), so `sacct` works
#   as the Snakemake SLURM executor expects.
# Configs go to /etc/slurm (see common.sh for every path). Safe to run any number of times: a config is
# rewritten only when its content changes, and start.sh restarts running daemons whose configs changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
require_root

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: cannot install ${missing[*]}"
  log "installing ${missing[*]}"
  # Debian's maintainer scripts would try to start the daemons: forbid that while installing.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" > "$APT_LOG" 2>&1 \
    || { tail -20 "$APT_LOG" >&2; die "apt-get install failed (full log: $APT_LOG)"; }
fi

node=$(node_name)
if ! getent hosts "$node" >/dev/null; then
  log "adding $node to /etc/hosts"
  echo "127.0.0.1 $node" >> /etc/hosts
fi

# Node geometry as slurmd detects it: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105".
geometry=$(slurmd -C | head -1)
field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<< "$geometry"; }
cpus=$(field CPUs)
[ -n "$cpus" ] || die "could not read the node geometry from 'slurmd -C': $geometry"
real_mem=$(( $(field RealMemory) * 9 / 10 ))
layout=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<< "$geometry")
# Default memory of a job that asks for none (without it such a job takes the whole node).
def_mem=$(( real_mem / cpus / 2 ))

# install_file MODE OWNER PATH: write stdin to PATH when the content differs (keeps the mtime otherwise).
install_file() {
  local mode=$1 owner=$2 path=$3 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
  else
    install -D -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path"
    rm -f "$tmp"
    log "wrote $path"
  fi
}

install_file 644 root:root "$SLURM_ETC/slurm.conf" <<EOF
# Written by advprune slurm/cluster/install.sh: a single-node cluster for running and testing the workflow.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$node
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$SLURM_STATE/slurmctld
SlurmdSpoolDir=$SLURM_STATE/slurmd
SlurmctldPidFile=$SLURM_RUN/slurmctld.pid
SlurmdPidFile=$SLURM_RUN/slurmd.pid
SlurmctldLogFile=$SLURM_LOG/slurmctld.log
SlurmdLogFile=$SLURM_LOG/slurmd.log
# No cgroups in a container: track processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# Look for startable jobs every 5 s (defaults: 60 s, backfill 30 s): a requeued job starts again promptly.
SchedulerParameters=sched_interval=5,bf_interval=5
# Cores, memory and GPUs are consumable: jobs share the node as far as their requests fit.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Accounting through slurmdbd: sacct (the Snakemake executor's status command) needs it.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$node
AccountingStorageTRES=gres/gpu,gres/gpu:fake
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
# Store the job comment (the Snakemake plugin puts rule and wildcards there): sacct -o Comment.
AccountingStoreFlags=job_comment
# Finished jobs stay visible to squeue/scontrol for 5 min.
MinJobAge=300
# SIGTERM -> SIGKILL grace on scancel, requeue and time limits.
KillWait=10
# Batch jobs may be requeued (scontrol requeue, node failure, preemption).
JobRequeue=1
# Job step credentials live 15 s (default 120): long enough to launch a step on this node, and a requeued job
# waits cred_expire + 1 s before it may start again (instead of two minutes).
AuthInfo=cred_expire=15
NodeName=$node CPUs=$cpus $layout RealMemory=$real_mem Gres=gpu:fake:$FAKE_GPUS State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE DefMemPerCPU=$def_mem State=UP
PartitionName=gpu Nodes=$node Default=NO MaxTime=INFINITE DefMemPerCPU=$def_mem State=UP
EOF

# A GRES needs a device file (without File= the node goes INVAL), one distinct file per GPU: harmless
# character devices stand in for them.
devices=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
[ "$FAKE_GPUS" -ge 1 ] && [ "$FAKE_GPUS" -le ${#devices[@]} ] || die "ADVPRUNE_SLURM_GPUS must be 1..${#devices[@]}"
install_file 644 root:root "$SLURM_ETC/gres.conf" <<EOF
# Written by advprune slurm/cluster/install.sh: fake GPUs of model "fake" (no device behind them).
$(for dev in "${devices[@]:0:$FAKE_GPUS}"; do echo "NodeName=$node Name=gpu Type=fake File=$dev"; done)
EOF

install_file 600 slurm:slurm "$SLURM_ETC/slurmdbd.conf" <<EOF
# Written by advprune slurm/cluster/install.sh. MariaDB user slurm authenticates over the unix socket.
AuthType=auth/munge
DbdHost=$node
SlurmUser=slurm
PidFile=$SLURM_RUN/slurmdbd.pid
LogFile=$SLURM_LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF

install -d -o slurm -g slurm "$SLURM_STATE/slurmctld" "$SLURM_STATE/slurmd" "$SLURM_LOG"
log "installed: node $node, $cpus CPUs, RealMemory ${real_mem} MB, $FAKE_GPUS fake GPU(s); partitions cpu (default), gpu"
