#!/bin/sh
# Makes a minimal container image root file system in DIR: busybox, the C
# library (and loader) that each given PROGRAM links against, and the files
# container runtimes bind over. Nothing else: no /usr, no Python, no shell
# beyond busybox, so a program that runs in it needs nothing beyond libc.
#
#   tests/infra/minimal-image.sh DIR PROGRAM...
set -eu
root=$1
shift
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "minimal-image.sh: needs a static $busybox (apt-get install busybox-static)" >&2
    exit 1
fi
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/dev" "$root/sys" \
    "$root/opt/flotilla/bin"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
ln -sf busybox "$root/bin/sh"
for program in "$@"; do
    for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
for f in passwd group hosts resolv.conf; do
    [ -e "$root/etc/$f" ] || : > "$root/etc/$f"
done
