#!/usr/bin/env bash
# Fuzzing (cargo-fuzz, fuzz/): one target per decoder that reads bytes from
# a peer or a file: client API and interchange frames, servable stdio
# replies, typed inputs, servable.toml, site TOML, scheduler outputs.
#
#   scripts/fuzz.sh short      every target for 5 s on the checked-in corpus
#                              (what CI runs)
#   scripts/fuzz.sh long N     every target for N s, one after another, then
#                              a table of executions, time and exec/s
#   scripts/fuzz.sh runs R [TARGET...]
#                              every target (or those named) until it has
#                              executed R inputs, then the same table
#   scripts/fuzz.sh build      build the targets only
#
# Targets build with AddressSanitizer; FUZZ_SANITIZER=none builds them
# without one, several times faster (site_toml 4.7x), for long runs of
# these safe-Rust decoders. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). The checked-in corpus (fuzz/corpus/TARGET) is only read: what
# libFuzzer finds goes to a temporary directory that is removed afterwards.
# A crash, a hang (-timeout) or an allocation at the frame cap (the fuzz
# crate's allocator aborts on it, with or without a sanitizer) leaves its
# input in fuzz/artifacts/TARGET/ and makes the script exit 1 once every
# target has run; reproduce it with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '6,13p' "$0" >&2
    exit 2
}

mode="${1:-}"
only=()
case "$mode" in
short) seconds=5 ;;
long)
    seconds="${2:-}"
    [[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
    ;;
runs)
    runs_wanted="${2:-}"
    [[ "$runs_wanted" =~ ^[0-9]+$ ]] && [ "$runs_wanted" -gt 0 ] || usage
    shift 2
    only=("$@")
    ;;
build) seconds=0 ;;
*) usage ;;
esac
if [ "$mode" = runs ]; then
    limit=(-runs="$runs_wanted")
else
    limit=(-max_total_time="$seconds")
fi

# One allocation of the default frame cap (64 MiB, DEFAULT_MAX_FRAME_BYTES)
# or more is a failure: every input here is far smaller, so such an
# allocation could only come from a length a peer wrote. The fuzz crate's
# allocator enforces it in every build; libFuzzer's -malloc_limit_mb does
# too where a sanitizer gives it malloc hooks. The memory limit
# is libFuzzer's own default: a long run's RSS grows by itself under ASan
# (its allocator and shadow memory, not the target: one run of typed_input
# stopped at 514 MiB after 3.3 million inputs with 25 MiB of live heap, and
# the input it stopped on needs 34 MiB alone), so a tighter limit ends long
# runs with false findings.
MALLOC_LIMIT_MB=64
RSS_LIMIT_MB=2048
# Longest one input may take before it counts as a hang.
HANG_S=10
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=16:detect_leaks=0}"

# Debug assertions (and so overflow checks) on, as in the test builds.
sanitizer="${FUZZ_SANITIZER:-address}"
cargo +nightly fuzz build --debug-assertions --sanitizer "$sanitizer"
[ "$mode" = build ] && exit 0

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$triple/release"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
report=()
if [ "${#only[@]}" -gt 0 ]; then
    targets=("${only[@]}")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
    log="$scratch/$target.log"
    echo "== $target: ${limit[*]} (sanitizer: $sanitizer)"
    status=0
    started=$SECONDS
    # The scratch directory comes first: libFuzzer writes new inputs there,
    # and only reads the checked-in corpus after it.
    "$bin_dir/$target" \
        "${limit[@]}" \
        -timeout="$HANG_S" \
        -rss_limit_mb="$RSS_LIMIT_MB" \
        -malloc_limit_mb="$MALLOC_LIMIT_MB" \
        -artifact_prefix="fuzz/artifacts/$target/" \
        -print_final_stats=1 \
        "$scratch/$target" "fuzz/corpus/$target" >"$log" 2>&1 || status=$?
    took=$((SECONDS - started))
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
    rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")"
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        failed+=("$target (exit $status)")
    fi
    report+=("$(printf '%-16s %12s runs %6s s %8s exec/s %6s MiB peak rss %s' \
        "$target" "${runs:-?}" "$took" "${rate:-?}" "${rss:-?}" \
        "$([ "$status" -eq 0 ] && echo ok || echo FAILED)")")
done

printf '%s\n' "${report[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
