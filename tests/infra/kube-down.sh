#!/usr/bin/env bash
# Stops the control plane kube-up.sh started and removes etcd's data (the
# logs stay until the next start).
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
root=$infra/kube
pids=()
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pidfile=$root/$name.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$pidfile"
done
# Up to 10 s for all of them to exit, then SIGKILL.
for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
done
rm -rf "$root/etcd"
