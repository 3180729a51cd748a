#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from
# Debian bookworm's `kubernetes` source package with Debian's Go, for the
# Kubernetes provider tests (no API server binary is packaged in Debian).
# The binaries are cached outside the clone, keyed by the source version,
# so a second run on the same machine reuses them. Needs root (apt) and
# network access to the Debian mirror on the first run. Prints the cache's
# bin directory on stdout.
#
# Debian's source vendors an old github.com/modern-go/reflect2 that crashes
# under Go 1.19 when encoding maps; it is replaced by Debian's packaged
# reflect2 (golang-github-modern-go-reflect2-dev), which supports that Go.
set -euo pipefail
version=${FLOTILLA_KUBE_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
cache=${FLOTILLA_KUBE_CACHE:-/var/cache/flotilla-kube}
bins=(kube-apiserver kube-controller-manager kube-scheduler)
out=$cache/$version/bin

have_all() {
    for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}
if have_all; then
    echo "$out"
    exit 0
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
log() { echo "kube-build: $*" >&2; }

# deb-src entries for the configured Debian suites, if none exist yet.
if ! grep -rqs '^\(Types:.*deb-src\|deb-src \)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "enabling deb-src for the configured Debian suites"
    src=/etc/apt/sources.list.d/flotilla-deb-src.sources
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | $sudo tee "$src" >/dev/null
    else
        grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' \
            | $sudo tee /etc/apt/sources.list.d/flotilla-deb-src.list >/dev/null
    fi
    $sudo apt-get update -qq
fi

pkgs=(golang-go golang-github-modern-go-reflect2-dev etcd-server dpkg-dev make rsync openssl curl)
command -v kubectl >/dev/null 2>&1 || pkgs+=(kubernetes-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The unpacked, patched source stays until the build succeeds, so a build
# cut short (a full disk, an interrupted run) resumes with Go's cache
# rather than starting again.
work=$cache/$version/src
tree=""
[ -d "$work" ] && tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
if [ -z "$tree" ] || [ ! -f "$work/.prepared" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    log "fetching the kubernetes=$version source package"
    (cd "$work" && apt-get source -qq "kubernetes=$version" >&2)
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
    if [ -z "$tree" ]; then
        log "apt-get source produced no kubernetes-* directory in $work"
        exit 1
    fi
    reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    if [ ! -d "$reflect2" ]; then
        log "Debian's reflect2 sources are missing at $reflect2"
        exit 1
    fi
    log "replacing the vendored reflect2 with Debian's"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
    find "$reflect2" -maxdepth 1 -type f -name '*.go' ! -name '*_test.go' \
        -exec cp {} "$tree/vendor/github.com/modern-go/reflect2/" \;
    touch "$work/.prepared"
else
    log "resuming the build in $tree"
fi

# Several GB of disk while building (the sources and Go's cache, removed
# once the binaries are cached; 0.25 GB after).
log "building ${bins[*]} (several minutes)"
start=$SECONDS
what=""
for b in "${bins[@]}"; do what="$what cmd/$b"; done
(cd "$tree" && make WHAT="${what# }" >&2)
log "built in $((SECONDS - start)) s"

mkdir -p "$out.tmp"
for b in "${bins[@]}"; do
    found=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n 1)
    if [ -z "$found" ]; then
        log "the build produced no $b"
        exit 1
    fi
    cp "$found" "$out.tmp/$b"
done
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$work"
echo "$out"
