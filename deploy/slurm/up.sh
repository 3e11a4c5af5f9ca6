#!/usr/bin/env bash
# A real single-node SLURM (Debian 12's slurm-wlm 22.05) on 127.0.0.1, for the
# `execution.profile: slurm` tests and for trying the profile on one machine.
#
#   sudo SLURM_CPUS=8 bash deploy/slurm/up.sh     # start (installs slurm-wlm + munge if missing)
#   sudo bash deploy/slurm/down.sh                # stop
#
# Runs as root, without systemd or cgroups: munged, slurmctld and slurmd are
# started directly and write PID files under /run, which down.sh uses to stop
# them (never by process name). Idempotent: when the cluster this script
# started is already up and answering, it only prints `sinfo`.
#
# Environment:
#   SLURM_CPUS=N       CPUs the node declares (default: nproc); more than the
#                      machine has oversubscribes, so array tasks run in parallel.
#   SLURM_MEMORY_MB=M  memory the node declares (default 2048).
#   WITH_ACCOUNTING=1  also start MariaDB + slurmdbd, so that `sacct` works.
#
# It writes /etc/slurm/slurm.conf, but refuses to replace one it did not write
# (a real cluster's configuration is never touched). Jobs run as root in the
# submitting directory. Finished jobs stay visible to `scontrol show job` and
# `squeue --states=all` for 300 s (MinJobAge).
set -euo pipefail

MARKER="# written by blockwise deploy/slurm/up.sh"
CONF=/etc/slurm/slurm.conf
WITH_ACCOUNTING=${WITH_ACCOUNTING:-0}
NCPU=${SLURM_CPUS:-$(nproc)}
MEMORY_MB=${SLURM_MEMORY_MB:-2048}

if [ "$(id -u)" != 0 ]; then
  echo "deploy/slurm/up.sh: must run as root (it installs packages and starts the SLURM daemons)" >&2
  exit 1
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  echo "deploy/slurm/up.sh: $CONF exists and was not written by this script; refusing to replace it" >&2
  exit 1
fi

if alive /run/slurmctld.pid && alive /run/slurmd.pid && alive /run/munge/munged.pid \
  && grep -qF "CPUs=$NCPU " "$CONF" 2>/dev/null \
  && sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  sinfo
  exit 0
fi
# something is half up (or up with other settings): start from a clean state
bash "$(dirname "$0")/down.sh"

export DEBIAN_FRONTEND=noninteractive
PKGS="slurm-wlm munge"
[ "$WITH_ACCOUNTING" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
# shellcheck disable=SC2086
dpkg -s $PKGS >/dev/null 2>&1 || {
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
}

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge && chmod 0755 /run/munge
[ -s /etc/munge/munge.key ] || {
  /usr/sbin/mungekey --create --force
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
}

if [ "$WITH_ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

cat >"$CONF" <<EOF
$MARKER
ClusterName=blockwise
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=300
# a cancelled job's processes get SIGTERM, then SIGKILL after this many seconds
KillWait=5
# accept a node definition that differs from the hardware (needed when SLURM_CPUS > nproc)
SlurmdParameters=config_overrides
# bind slurmctld/slurmd to what the host name resolves to (127.0.0.1 here), not 0.0.0.0
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# munged refuses to run as root unless forced; run it as its own user
su -s /bin/sh munge -c /usr/sbin/munged

if [ "$WITH_ACCOUNTING" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/slurm/mariadb.out 2>&1 &
  echo $! >/run/blockwise-mariadbd.pid
  for _ in $(seq 100); do mariadb -u root -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
                      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  install -m 600 /dev/stdin /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
# undocumented for slurmdbd in 22.05, but honoured: bind 127.0.0.1 instead of 0.0.0.0
CommunicationParameters=NoInAddrAny
EOF
  /usr/sbin/slurmdbd
  for _ in $(seq 100); do
    [ -S /run/mysqld/mysqld.sock ] && ss -ltn | grep -q ':6819 ' && break
    sleep 0.1
  done
fi

# -c: forget jobs a previous test cluster left in its state files
/usr/sbin/slurmctld -c
/usr/sbin/slurmd -N localhost
for _ in $(seq 300); do
  if sinfo -h -r -o '%T' 2>/dev/null | grep -q '^idle'; then
    sinfo
    exit 0
  fi
  sleep 0.1
done
echo "deploy/slurm/up.sh: the node did not become idle within 30 s; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
