#!/usr/bin/env bash
# A one-node Slurm on this machine, for the tests (and for trying the project's sbatch scripts
# by hand): munged, slurmctld and slurmd, all state in one folder, on ports of their own, so a
# system Slurm (if any) is left alone. Idempotent and quick: when ours already answers, it is
# reused. Needs root (slurmd runs jobs as their user) and Debian's slurm-wlm and munge packages.
#
#   eval "$(tests/slurm/start_slurm.sh)"          # prints SLURM_CONF=...; then sbatch, squeue, ...
#   tests/slurm/start_slurm.sh --stop             # stop the three daemons
#
# LLMTRAIN_SLURM_DIR: the state folder (default /tmp/llmtrain-slurm). LLMTRAIN_SLURM_CPUS: the
# CPUs the node claims (default 16, more than the machine has: jobs are not CPU-bound here).
set -euo pipefail

DIR=${LLMTRAIN_SLURM_DIR:-/tmp/llmtrain-slurm}
CPUS=${LLMTRAIN_SLURM_CPUS:-16}
CONF="$DIR/slurm.conf"
HOST=$(hostname -s)
export SLURM_CONF="$CONF"

fail() { echo "start_slurm.sh: $*" >&2; exit 1; }

stop_pidfile() {  # stop the daemon whose pid is in $1, if it is still ours and alive
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$1"
}

if [ "${1:-}" = "--stop" ]; then
    for d in slurmd slurmctld munged; do stop_pidfile "$DIR/$d.pid"; done
    exit 0
fi

node_ready() {  # the controller answers and our node takes jobs
    scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    local state
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n 1)
    case "$state" in idle*|mix*|alloc*|comp*) return 0 ;; *) return 1 ;; esac
}

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
chmod 700 "$DIR"
write_conf() {  # the configuration, to $1
cat > "$1" <<CONF
# written by tests/slurm/start_slurm.sh: a one-node cluster on $HOST
ClusterName=llmtrain
SlurmctldHost=$HOST
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=30
NodeName=$HOST CPUs=$CPUS RealMemory=262144 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

write_conf "$CONF.new"
if cmp -s "$CONF.new" "$CONF" && command -v scontrol >/dev/null && node_ready; then
    rm -f "$CONF.new"
    echo "SLURM_CONF=$CONF"
    exit 0
fi
if ! cmp -s "$CONF.new" "$CONF"; then  # a configuration of an older version of this script: restart
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
fi
mv "$CONF.new" "$CONF"

for cmd in munged slurmctld slurmd sbatch scontrol; do
    command -v "$cmd" >/dev/null || fail "$cmd not found: install Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge)"
done
[ "$(id -u)" = 0 ] || fail "must run as root (slurmd starts jobs as their user)"

# munge: a key of our own and a socket in the state folder
if [ ! -s "$DIR/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge.key" bs=1 count=1024 status=none
    chmod 400 "$DIR/munge.key"
fi
if ! kill -0 "$(cat "$DIR/munged.pid" 2>/dev/null || echo none)" 2>/dev/null; then
    rm -f "$DIR/munge.socket" "$DIR/munged.pid"
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munged.seed" \
        || fail "munged did not start; see $DIR/log/munged.log"
fi


if ! scontrol ping 2>/dev/null | grep -q "is UP"; then
    stop_pidfile "$DIR/slurmctld.pid"
    slurmctld -f "$CONF" || fail "slurmctld did not start; see $DIR/log/slurmctld.log"
fi
if ! kill -0 "$(cat "$DIR/slurmd.pid" 2>/dev/null || echo none)" 2>/dev/null; then
    slurmd -f "$CONF" || fail "slurmd did not start; see $DIR/log/slurmd.log"
fi
for _ in $(seq 150); do
    if node_ready; then echo "SLURM_CONF=$CONF"; exit 0; fi
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;; esac
    sleep 0.2
done
fail "the node $HOST did not become idle within 30 s ($(sinfo -h -o '%t %E' 2>&1 | head -n 1)); see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
