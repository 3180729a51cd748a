#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or an old one: installs what
# the tests need (cmake for nng's C library; a Python environment in .venv
# for Python servables), builds every binary, runs every test (unit tests and
# end-to-end tests with real processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python servables (the examples, the test servables) run in .venv.
# shellcheck source=python-env.sh
. scripts/python-env.sh
if [ "$FLOTILLA_PYTHON_OK" != 1 ]; then
    echo "cannot make a Python environment with msgpack, numpy and scikit-learn in .venv" >&2
    exit 1
fi

# End-to-end tests run the flotilla and flotilla-worker executables; build
# them explicitly so a partial run (`cargo test -p flotilla-tests`) never
# meets stale ones.
cargo build --workspace --bins
cargo test --workspace "$@"
