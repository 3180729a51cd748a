#!/usr/bin/env bash
# Starts a real Slurm test cluster on this machine: munged, slurmctld and
# NODES slurmd daemons (default 1; several are fake nodes n1..nN on this
# host, each on its own port). Needs Debian's slurmctld, slurmd,
# slurm-client and munge packages and root. Prints `export SLURM_CONF=...`
# for the caller to eval. Idempotent: a running cluster is restarted.
set -euo pipefail
nodes=${1:-1}
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
root=$infra/slurm
here=$(cd "$(dirname "$0")" && pwd)
"$here/slurm-down.sh" >/dev/null 2>&1 || true
mkdir -p "$root"/{state,spool,log,munge}
chmod 755 "$root/munge"

if [ ! -f "$root/munge/munge.key" ]; then
    dd if=/dev/urandom of="$root/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$root/munge/munge.key"
fi
munged --force --key-file="$root/munge/munge.key" --socket="$root/munge/munge.socket" \
    --pid-file="$root/munge/munged.pid" --log-file="$root/munge/munged.log" \
    --seed-file="$root/munge/munge.seed"

host=$(hostname -s)
cpus=$(nproc)
conf=$root/slurm.conf
{
    echo "ClusterName=flotilla-test"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "AuthInfo=socket=$root/munge/munge.socket"
    echo "CredType=cred/munge"
    echo "MpiDefault=none"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=batch_sched_delay=0"
    echo "EnforcePartLimits=ALL"
    echo "MailProg=/bin/true"
    echo "ReturnToService=2"
    echo "MinJobAge=300"
    echo "KillWait=5"
    echo "StateSaveLocation=$root/state"
    echo "SlurmdSpoolDir=$root/spool/%n"
    echo "SlurmctldPidFile=$root/slurmctld.pid"
    echo "SlurmdPidFile=$root/slurmd-%n.pid"
    echo "SlurmctldLogFile=$root/log/slurmctld.log"
    echo "SlurmdLogFile=$root/log/slurmd-%n.log"
    echo "SlurmctldPort=16817"
    for i in $(seq 1 "$nodes"); do
        echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus RealMemory=1000 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
} > "$conf"
export SLURM_CONF=$conf

slurmctld
for i in $(seq 1 "$nodes"); do
    mkdir -p "$root/spool/n$i"
    slurmd -N "n$i"
done

# Ready when every node is idle and the main scheduler has run once (else
# the first job waits a few seconds).
deadline=$((SECONDS + 60))
until [ "$(sinfo -h -o '%T' 2>/dev/null | sort -u)" = "idle" ] \
    && sdiag 2>/dev/null | grep -q "Last cycle:[[:space:]]*[1-9]"; do
    if [ "$SECONDS" -gt "$deadline" ]; then
        echo "slurm did not become ready; logs in $root/log" >&2
        sinfo >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "export SLURM_CONF=$conf"
