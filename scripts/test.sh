#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or an old one, as root:
# installs what the tests need (cmake for nng's C library; Slurm, munge and
# OpenSSH for the provider tests; Podman with runc, Charliecloud and a static
# busybox for the container tests; a Python environment in .venv for Python
# servables), starts a real 2-node Slurm, an sshd and a Kubernetes control
# plane (API server, controller-manager and scheduler built once from
# Debian's source package and cached, on etcd) on 127.0.0.1
# (tests/infra), builds every binary, runs every test (unit tests and
# end-to-end tests with real processes on loopback), stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# A real Slurm (2 fake nodes on this host) and sshd for the provider tests.
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
# Container runtimes for the launcher tests, and a static busybox for their
# minimal image.
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v ch-run >/dev/null 2>&1 || missing+=(charliecloud-runtime)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
# `man`, for the test that renders the generated manual pages.
command -v man >/dev/null 2>&1 || missing+=(man-db)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python servables (the examples, the test servables) run in .venv; the
# ONNX tests also need onnx, onnxruntime (its library is what the worker
# loads) and skl2onnx there.
export FLOTILLA_ONNX=1
# shellcheck source=python-env.sh
. scripts/python-env.sh
if [ "$FLOTILLA_PYTHON_OK" != 1 ]; then
    echo "cannot make a Python environment with msgpack, numpy and scikit-learn in .venv" >&2
    exit 1
fi
# Wheels for the servable-environment tests, which publish with no index.
# shellcheck source=test-wheelhouse.sh
. scripts/test-wheelhouse.sh

# The Slurm test cluster and sshd (tests/infra), stopped again on exit.
if [ "$(id -u)" -ne 0 ]; then
    echo "the provider tests start a Slurm test cluster, which needs root; run as root (CI does)" >&2
    exit 1
fi
# Charliecloud's ch-run insists on $USER, which a root shell may lack.
export USER="${USER:-$(id -un)}"
trap 'tests/infra/kube-down.sh; tests/infra/sshd-down.sh; tests/infra/slurm-down.sh' EXIT
eval "$(tests/infra/slurm-up.sh 2)"
eval "$(tests/infra/sshd-up.sh)"
# The Kubernetes provider tests' control plane: built from source the
# first time on a machine (several minutes; cached under
# FLOTILLA_KUBE_CACHE, default /var/cache/flotilla-kube), then started.
tests/infra/kube-build.sh >/dev/null
eval "$(tests/infra/kube-up.sh)"

# End-to-end tests run the flotilla and flotilla-worker executables; build
# them explicitly so a partial run (`cargo test -p flotilla-tests`) never
# meets stale ones.
# A clean build of the suite takes about 3 GB under target/; a disk that
# fills up mid-link shows only as the linker dying of SIGBUS, so say so first.
free_gb=$(df -P -k . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "${free_gb:-0}" -lt 4 ]; then
    echo "warning: ${free_gb} GB free here; a clean build of the tests needs about 3 GB (a linker killed by SIGBUS means the disk filled)" >&2
fi
cargo build --workspace --bins
cargo test --workspace "$@"

# The Python client (clients/python): the shared protocol vectors, and tests
# that drive a real daemon and workers built above (run, futures, map over
# 10,000 inputs, errors, the catalog, the examples).
FLOTILLA_PYTHON_TESTS=1 . scripts/python-env.sh
if [ "$FLOTILLA_PYTHON_OK" != 1 ]; then
    echo "cannot install the Python client's test dependencies (pytest, parsl) into .venv" >&2
    exit 1
fi
FLOTILLA_BIN_DIR="$PWD/target/debug" .venv/bin/python -m pytest clients/python/tests -q
