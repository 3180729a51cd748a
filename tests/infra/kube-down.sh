#!/usr/bin/env bash
# Stops the control plane kube-up.sh started and removes its state (etcd's
# data, logs are kept until the next start).
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
root=$infra/kube
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pidfile=$root/$name.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
done
rm -rf "$root/etcd"
