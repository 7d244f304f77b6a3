#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests (run as root):
#   bash tests/slurm_cluster.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#   bash tests/slurm_cluster.sh stop DIR
# Installs munge and Slurm with apt if needed (idempotent). Its own munged,
# slurmctld and slurmd keep their key, sockets, state and logs in DIR;
# SLURM_PORT (default 6817) and SLURM_PORT + 1 are their ports. The node has
# this machine's name and CPUs, in the partition 'local'.
set -euo pipefail
if [ $# -ne 2 ] || [[ ! $1 =~ ^(start|stop)$ ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi
DIR=$(realpath -m "$2")

if [ "$1" = stop ]; then
    for daemon in slurmd slurmctld munged; do
        pid=$(cat "$DIR/$daemon.pid" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || continue
        # Gone before the next daemon, within 10 s.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
        install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$DIR/state" "$DIR/spool"
chmod 700 "$DIR"
[ -f "$DIR/munge.key" ] || mungekey --create --keyfile="$DIR/munge.key"
munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" \
    --seed-file="$DIR/munged.seed"

PORT=${SLURM_PORT:-6817}
HOST=$(hostname -s)
cat >"$DIR/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$DIR/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$DIR/slurm.conf
slurmctld
slurmd
# Ready when the node accepts jobs.
for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
        exit 0
    fi
    sleep 1
done
echo "error: the local Slurm node did not come up; see $DIR/*.log" >&2
exit 1
