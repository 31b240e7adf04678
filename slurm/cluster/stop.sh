#!/usr/bin/env bash
# Stop the local SLURM cluster started by start.sh: slurmd, slurmctld, slurmdbd, MariaDB, munged (in that order),
# each by the pid in its pid file, and remove the pid files (slurmctld and slurmdbd leave stale ones).
#
#   sudo slurm/cluster/stop.sh         # idempotent: a daemon that is not running is skipped
#
# Jobs still running are killed with slurmd; slurmctld keeps its state (jobs, accounting) for the next start.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
require_root

exec 9> /run/lock/advprune-slurm.lock
flock -w 120 9 || die "another start.sh/stop.sh holds /run/lock/advprune-slurm.lock"

stopped=()
# stop PIDFILE PROGRAM: SIGTERM, wait up to 30 s, then SIGKILL; remove the pid file.
stop() {
  local file=$1 program=$2 pid
  if pid=$(live_pid "$file" "$program"); then
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 30 "$program (pid $pid) to exit" test ! -d "/proc/$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_for 5 "$program (pid $pid) to die" test ! -d "/proc/$pid" || true
    fi
    stopped+=("$program")
  fi
  rm -f "$file"
}

stop "$SLURM_RUN/slurmd.pid" slurmd
stop "$SLURM_RUN/slurmctld.pid" slurmctld
stop "$SLURM_RUN/slurmdbd.pid" slurmdbd
stop "$MYSQL_RUN/mysqld.pid" mariadbd
stop "$MUNGE_RUN/munged.pid" munged
rm -f "$SLURM_RUN/config.sha256"

if [ ${#stopped[@]} -gt 0 ]; then
  log "stopped ${stopped[*]}"
else
  log "nothing was running"
fi
