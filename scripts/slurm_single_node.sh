#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the tests marked `slurm` (.ci/run calls it).
# Idempotent: installs Debian's slurm-wlm and munge if missing, writes /etc/slurm/slurm.conf for
# this host (its real hostname, CPUs and memory, from `slurmd -C`), starts munged, slurmctld and
# slurmd without systemd, and waits until `sinfo` shows the node idle. Needs root.
# Exit 0: the cluster answers. Non-zero (with the reason on stderr): it does not, and the slurm
# tests skip, saying why. Settings that work in a container: proctrack/linuxproc, task/none,
# select/cons_tres, no accounting (so sacct is not there; the daemon falls back to scontrol).
set -uo pipefail
say() { echo "slurm_single_node: $*" >&2; }
fail() { say "$*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (installs packages, writes /etc/slurm, starts daemons)"

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
   || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "slurm-wlm is not installed and there is no apt-get"
  say "installing slurm-wlm and munge"
  apt-get update -qq || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || fail "apt-get install slurm-wlm munge failed"
fi

# -- munge: a key, and munged running as its own user ----------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work (see /var/log/munge/munged.log)"
fi

# -- slurm.conf for this host ----------------------------------------------------------------
host=$(hostname -s)
node=$(slurmd -C 2>/dev/null | head -n 1)
case "$node" in NodeName=*) ;; *) fail "slurmd -C printed no node line";; esac
node="${node/NodeName=* CPUs/NodeName=$host CPUs}"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
conf=/etc/slurm/slurm.conf
new=$(cat <<EOF
# Written by yolo-supervisor's scripts/slurm_single_node.sh: one node, for the tests.
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=300
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$new" ]; then
  printf '%s\n' "$new" > "$conf"
  changed=1
fi

# -- the daemons -------------------------------------------------------------------------------
running() { pgrep -x "$1" >/dev/null 2>&1; }
if [ "$changed" = 1 ] && running slurmctld; then
  say "slurm.conf changed: restarting slurmctld and slurmd"
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  for _ in $(seq 100); do running slurmctld || running slurmd || break; sleep 0.1; done
fi
running slurmctld || slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
running slurmd || slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"

state=""
for _ in $(seq 120); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1)
  case "$state" in
    idle|mixed|allocated) break;;
    drained*|draining*|down*) scontrol update nodename="$host" state=resume >/dev/null 2>&1;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated) say "node $host is $state";;
  *) fail "node $host is '${state:-unknown}' after 60 s (see /var/log/slurm/)";;
esac
