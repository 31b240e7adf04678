# Shared settings of the local single-node SLURM cluster scripts (sourced by install.sh, start.sh, stop.sh).
#
# Everything lives in Debian's standard locations:
#   configs     /etc/slurm/{slurm.conf,gres.conf,slurmdbd.conf}   (written by install.sh)
#   state       /var/lib/slurm/{slurmctld,slurmd}, MariaDB in /var/lib/mysql (database slurm_acct_db)
#   logs        /var/log/slurm/{slurmctld,slurmd,slurmdbd}.log, /var/log/slurm/mariadb.log,
#               /var/log/munge/munged.log
#   pid files   /run/slurm/{slurmctld,slurmd,slurmdbd}.pid, /run/mysqld/mysqld.pid, /run/munge/munged.pid
#   other       /run/slurm/config.sha256 (configs the daemons run with), /run/lock/advprune-slurm.lock,
#               /var/log/advprune-slurm-install.log (apt-get output of the last package install)
# Override the file locations only for experiments: every variable below can be set in the environment.

SLURM_ETC=${SLURM_ETC:-/etc/slurm}
SLURM_RUN=${SLURM_RUN:-/run/slurm}
SLURM_LOG=${SLURM_LOG:-/var/log/slurm}
SLURM_STATE=${SLURM_STATE:-/var/lib/slurm}
MYSQL_RUN=/run/mysqld
MUNGE_RUN=/run/munge
APT_LOG=/var/log/advprune-slurm-install.log
# Name of the SLURM cluster in the accounting database (sacct -M, sacctmgr show cluster).
CLUSTER_NAME=${ADVPRUNE_SLURM_CLUSTER:-advprune}
# How many fake GPUs the node advertises (each one a harmless character device such as /dev/null: jobs see
# CUDA_VISIBLE_DEVICES, no device). Two let two GPU jobs run side by side on a 2-core machine.
FAKE_GPUS=${ADVPRUNE_SLURM_GPUS:-2}

PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

log() { echo "slurm-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || { log "must run as root (it installs packages and starts system daemons)"; exit 2; }
}

# The pid recorded in FILE when that process is alive and runs PROGRAM, else nothing (exit 1).
live_pid() {
  local file=$1 program=$2 pid
  [ -s "$file" ] || return 1
  pid=$(tr -dc 0-9 < "$file")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  # /proc/PID/comm is truncated to 15 characters.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${program:0:15}" ] || return 1
  echo "$pid"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

node_name() { hostname -s; }
