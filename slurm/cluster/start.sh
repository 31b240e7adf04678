#!/usr/bin/env bash
# Start the local single-node SLURM cluster: munged, MariaDB, slurmdbd, slurmctld, slurmd (in that order),
# without systemd. Runs install.sh first, which installs what is missing and describes the node as this machine
# is now (cores, memory, GPUs): a machine restarted with fewer cores or less memory would otherwise keep a node
# that promises more than it has, and jobs sized for it would never start.
#
#   slurm/cluster/start.sh        # as root (sudo slurm/cluster/start.sh otherwise); idempotent: daemons
#                                 # already running with unchanged configs are left alone
#
# Returns when the node is idle and `sacct` answers. Paths of configs, logs and pid files: common.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
require_root

"$here/install.sh"

config_sum() { cat "$SLURM_ETC/slurm.conf" "$SLURM_ETC/gres.conf" "$SLURM_ETC/slurmdbd.conf" | sha256sum | cut -d' ' -f1; }
# Daemons running with configs that install.sh has rewritten since (or with configs this script did not
# record): restart them.
if live_pid "$SLURM_RUN/slurmctld.pid" slurmctld >/dev/null \
   && [ "$(cat "$SLURM_RUN/config.sha256" 2>/dev/null)" != "$(config_sum)" ]; then
  log "configs in $SLURM_ETC changed since the daemons started: restarting them"
  "$here/stop.sh"
fi

# One start or stop at a time (the daemons must not inherit the lock: each is started with 9>&-).
exec 9> /run/lock/advprune-slurm.lock
flock -w 120 9 || die "another start.sh/stop.sh holds /run/lock/advprune-slurm.lock"

node=$(node_name)
grep -q "^SlurmctldHost=$node\$" "$SLURM_ETC/slurm.conf" \
  || die "$SLURM_ETC/slurm.conf is for another host name (now: $node): run install.sh again"

install -d -m 755 -o munge -g munge "$MUNGE_RUN" /var/log/munge
install -d -m 755 -o mysql -g mysql "$MYSQL_RUN" /var/log/mysql
install -d -m 755 -o slurm -g slurm "$SLURM_RUN" "$SLURM_LOG" "$SLURM_STATE/slurmctld" "$SLURM_STATE/slurmd"

started=()
# fail_start LOG: a daemon exited at once (it daemonizes only after reading its config): show why.
fail_start() { tail -5 "$1" >&2; die "a daemon failed to start, see $1"; }

# --- munge: authentication between all SLURM commands and daemons
if ! live_pid "$MUNGE_RUN/munged.pid" munged >/dev/null; then
  rm -f "$MUNGE_RUN/munged.pid" "$MUNGE_RUN"/munge.socket.*
  runuser -u munge -- /usr/sbin/munged 9>&- || fail_start /var/log/munge/munged.log
  started+=(munged)
fi
wait_for 20 "munge credentials" bash -c 'munge -n | unmunge'

# --- MariaDB: accounting storage behind slurmdbd. mariadbd does not daemonize: setsid, in the background.
# --skip-networking: only the unix socket, nothing listens on a port.
if ! live_pid "$MYSQL_RUN/mysqld.pid" mariadbd >/dev/null; then
  rm -f "$MYSQL_RUN/mysqld.pid"
  setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file="$MYSQL_RUN/mysqld.pid" \
    --socket="$MYSQL_RUN/mysqld.sock" --log-error=/var/log/mysql/error.log < /dev/null > /dev/null 2>&1 9>&- &
  started+=(mariadbd)
fi
wait_for 60 "MariaDB" mariadb -e "SELECT 1"
mariadb <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# --- slurmdbd (daemonizes itself; runs as SlurmUser=slurm)
if ! live_pid "$SLURM_RUN/slurmdbd.pid" slurmdbd >/dev/null; then
  rm -f "$SLURM_RUN/slurmdbd.pid"
  /usr/sbin/slurmdbd 9>&- || fail_start $SLURM_LOG/slurmdbd.log
  started+=(slurmdbd)
fi
wait_for 60 "slurmdbd (see $SLURM_LOG/slurmdbd.log)" sacctmgr -n list cluster

# --- slurmctld (registers the cluster in the accounting database on its first start)
if ! live_pid "$SLURM_RUN/slurmctld.pid" slurmctld >/dev/null; then
  rm -f "$SLURM_RUN/slurmctld.pid"
  /usr/sbin/slurmctld 9>&- || fail_start $SLURM_LOG/slurmctld.log
  started+=(slurmctld)
fi
wait_for 60 "slurmctld (see $SLURM_LOG/slurmctld.log)" bash -c 'scontrol ping | grep -q UP'

# --- slurmd (root: it starts the jobs)
if ! live_pid "$SLURM_RUN/slurmd.pid" slurmd >/dev/null; then
  rm -f "$SLURM_RUN/slurmd.pid"
  /usr/sbin/slurmd 9>&- || fail_start $SLURM_LOG/slurmd.log
  started+=(slurmd)
fi

node_state() { sinfo -h -N -n "$node" -o %t | head -1; }
# A node left DOWN or DRAINED by an earlier stop comes back with state=resume.
wait_for 30 "node $node to register" bash -c "sinfo -h -N -n $node -o %t | grep -q ."
case "$(node_state)" in
  down*|drain*|drng*|fail*) scontrol update nodename="$node" state=resume || true ;;
esac
wait_for 60 "node $node to become idle (see $SLURM_LOG/slurmd.log)" \
  bash -c "sinfo -h -N -n $node -o %t | grep -Eq '^(idle|mix|alloc)'"
# The cluster is in the accounting database once slurmctld has registered it: then sacct answers.
wait_for 60 "the cluster in slurmdbd" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER_NAME"
wait_for 30 "sacct" sacct -n -X -S now

config_sum > "$SLURM_RUN/config.sha256"
if [ ${#started[@]} -gt 0 ]; then
  log "started ${started[*]}; node $node: $(node_state)"
else
  log "already running; node $node: $(node_state)"
fi
