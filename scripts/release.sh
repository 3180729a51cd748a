#!/usr/bin/env bash
# Portable release binaries: `flotilla` and `flotilla-worker` for x86_64 and
# aarch64 Linux with glibc 2.17 or newer (RHEL/CentOS 7, SLES 12/15, every
# current HPC distribution), cross-linked by cargo-zigbuild with the Zig
# toolchain from PyPI. OpenSSL (the SSH channel) is built from source and
# linked in statically (feature `portable`), and so is zlib; nng's C library is
# built by cmake with zig cc for each target (cargo-zigbuild hands the cmake
# crate a toolchain file through CMAKE_TOOLCHAIN_FILE_<target>).
#
#   scripts/release.sh              both targets
#   scripts/release.sh x86_64       one target (x86_64 or aarch64)
#   scripts/release.sh --check      only check what dist/ holds
#
# Results: dist/<target>/flotilla and dist/<target>/flotilla-worker. Each one
# is checked: `file` names the target's architecture and `objdump -T` shows no
# GLIBC_2.x symbol version newer than 2.17; those for this machine's
# architecture must also run (`--version`). Needs python3 (with venv), rustup,
# cmake, perl and make; installs cargo-zigbuild and ziglang into
# target/release-tools/venv, and the Rust targets and llvm-tools with rustup.
set -euo pipefail
cd "$(dirname "$0")/.."

glibc_floor="2.17"
all_targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu)
bins=(flotilla flotilla-worker)
tools="$PWD/target/release-tools/venv"

check_only=0
targets=()
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        x86_64 | aarch64) targets+=("$arg-unknown-linux-gnu") ;;
        *) echo "usage: $0 [--check] [x86_64|aarch64]..." >&2; exit 2 ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")

# cargo-zigbuild and Zig, both wheels on PyPI, in a venv of their own; the
# venv comes first on PATH so cargo-zigbuild finds this Zig.
install_tools() {
    if ! "$tools/bin/cargo-zigbuild" --version >/dev/null 2>&1 ||
        ! "$tools/bin/python3" -m ziglang version >/dev/null 2>&1; then
        echo "installing cargo-zigbuild and ziglang into $tools"
        python3 -m venv "$tools"
        "$tools/bin/pip" install -q --disable-pip-version-check ziglang cargo-zigbuild
    fi
    export PATH="$tools/bin:$PATH"
    # llvm-objcopy from rustup's llvm-tools strips binaries of any target.
    rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
    objcopy="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ {print $2}')/bin/llvm-objcopy"
}

build_target() {
    local target="$1" start elapsed
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    start=$(date +%s)
    # LIBZ_SYS_STATIC: zlib (for libssh2) from source, linked in statically.
    LIBZ_SYS_STATIC=1 cargo zigbuild --release --locked \
        -p flotilla-cli -p flotilla-worker --features flotilla-cli/portable \
        --target "$target.$glibc_floor"
    elapsed=$(($(date +%s) - start))
    # dist/ gets the binaries without their line tables (a quarter of the
    # size; symbol names stay, so backtraces still name functions); the full
    # ones stay in target/<target>/release.
    mkdir -p "dist/$target"
    for bin in "${bins[@]}"; do
        "$objcopy" --strip-debug "target/$target/release/$bin" "dist/$target/$bin"
    done
    echo "built $target in ${elapsed}s"
}

# Fails unless the binary is an ELF for the target's machine whose newest
# GLIBC_2.x symbol version is at most the floor.
check_binary() {
    local target="$1" path="$2" arch description newest
    case "$target" in
        x86_64-*) arch="x86-64" ;;
        aarch64-*) arch="ARM aarch64" ;;
    esac
    description=$(file -b "$path")
    if [[ "$description" != *"ELF 64-bit"*"$arch"* ]]; then
        echo "FAIL $path: not an ELF for $arch: $description" >&2
        return 1
    fi
    newest=$(objdump -T "$path" | grep -o 'GLIBC_2\.[0-9]*' | sort -u -V | tail -n 1)
    if [ -z "$newest" ]; then
        echo "FAIL $path: no GLIBC symbol versions found" >&2
        return 1
    fi
    if [ "$(printf '%s\n%s\n' "${newest#GLIBC_}" "$glibc_floor" | sort -V | tail -n 1)" != "$glibc_floor" ]; then
        echo "FAIL $path: needs $newest, newer than GLIBC_$glibc_floor" >&2
        objdump -T "$path" | grep "$newest" >&2
        return 1
    fi
    # Binaries for this machine's architecture must also start.
    if [ "${target%%-*}" = "$(uname -m)" ] && ! "$path" --version >/dev/null; then
        echo "FAIL $path: does not run here" >&2
        return 1
    fi
    printf 'ok   %-45s %s, newest symbol version %s, %s bytes, needs: %s\n' \
        "$path" "$arch" "$newest" "$(stat -c %s "$path")" \
        "$(objdump -p "$path" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')"
}

if [ "$check_only" = 0 ]; then
    install_tools
    for target in "${targets[@]}"; do
        build_target "$target"
    done
fi
status=0
for target in "${targets[@]}"; do
    for bin in "${bins[@]}"; do
        check_binary "$target" "dist/$target/$bin" || status=1
    done
done
exit "$status"
