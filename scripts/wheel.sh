#!/usr/bin/env bash
# The `flotilla` wheel for one architecture: the Python packages of
# clients/python (the `flotilla` client and the `flotilla_servable` shim) plus
# the portable `flotilla` and `flotilla-worker` executables that
# scripts/release.sh put in dist/<target>/, as the wheel's scripts (pip puts
# them in the environment's bin/). Tagged manylinux_2_17 (and its older
# spelling manylinux2014) since the executables need glibc 2.17 or newer, so
# pip on SLES 15, RHEL 8 or Ubuntu 20.04 accepts it.
#
#   scripts/release.sh x86_64 && scripts/wheel.sh x86_64    dist/flotilla-*-manylinux_2_17_x86_64*.whl
#   scripts/wheel.sh aarch64
#
# Needs python3 with venv; installs `wheel` into target/release-tools/venv.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-x86_64}"
case "$arch" in
    x86_64 | aarch64) ;;
    *) echo "usage: $0 [x86_64|aarch64]" >&2; exit 2 ;;
esac
bindir="dist/$arch-unknown-linux-gnu"
for bin in flotilla flotilla-worker; do
    if [ ! -x "$bindir/$bin" ]; then
        echo "$bindir/$bin is missing: run scripts/release.sh $arch first" >&2
        exit 1
    fi
done

tools="$PWD/target/release-tools/venv"
if ! "$tools/bin/python3" -c 'import wheel' >/dev/null 2>&1; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check wheel
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The pure-Python wheel from clients/python's own packaging...
"$tools/bin/pip" wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$work/pure" ./clients/python 2>/dev/null ||
    "$tools/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/pure" ./clients/python
pure=$(ls "$work"/pure/flotilla-*-py3-none-any.whl)
"$tools/bin/python3" -m wheel unpack -d "$work/unpacked" "$pure" >/dev/null
root=$(ls -d "$work"/unpacked/flotilla-*)
name_version=$(basename "$root")

# ...plus the executables as scripts, and platform tags instead of `any`.
mkdir -p "$root/$name_version.data/scripts"
install -m 0755 "$bindir/flotilla" "$bindir/flotilla-worker" "$root/$name_version.data/scripts/"
wheel_file="$root/$name_version.dist-info/WHEEL"
sed -i -e '/^Tag:/d' -e '/^$/d' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: false/' "$wheel_file"
printf 'Tag: py3-none-manylinux_2_17_%s\nTag: py3-none-manylinux2014_%s\n' "$arch" "$arch" >>"$wheel_file"

mkdir -p dist
"$tools/bin/python3" -m wheel pack -d dist "$root"
ls -l dist/"$name_version"-py3-none-*manylinux_2_17_"$arch".whl
