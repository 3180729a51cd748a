#!/usr/bin/env bash
# Builds Flotilla (release) and runs `flotilla demo`: a throw-away daemon with
# the embedded local configuration, sync, async and bulk requests, timings.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: cmake (nng's C library needs it)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends cmake
fi

# Python with scikit-learn for the digits servable; the demo says so plainly
# and skips that part if it cannot be had.
# shellcheck source=python-env.sh
. scripts/python-env.sh || true

cargo build --release -p flotilla-cli -p flotilla-worker
exec target/release/flotilla demo
