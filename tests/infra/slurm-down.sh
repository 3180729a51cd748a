#!/usr/bin/env bash
# Stops the test cluster slurm-up.sh started (its jobs die with it).
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
root=$infra/slurm
for pidfile in "$root"/slurmd-*.pid "$root/slurmctld.pid" "$root/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
done
# Fresh state next time: no leftover jobs.
rm -rf "$root/state" "$root/spool"
