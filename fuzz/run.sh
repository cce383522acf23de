#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named as arguments) for a while.
#
#   bash fuzz/run.sh                      # each target for 30 s
#   FUZZ_SECONDS=300 bash fuzz/run.sh     # each target for 5 min
#   FUZZ_SECONDS=0 FUZZ_RUNS=1000000 bash fuzz/run.sh   # each until 1,000,000 runs
#   bash fuzz/run.sh filter http_request  # only these targets
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 30; 0 = no time limit)
#   FUZZ_RUNS       stop each target after this many runs (default: no limit)
#   FUZZ_SANITIZER  address (default) or none; cargo fuzz's --sanitizer
#
# Corpus: fuzz/corpus/<target> (written, git-ignored) and fuzz/seeds/<target>
# (read only, committed). A crash leaves its input in fuzz/artifacts/<target>/
# and makes this script exit non-zero, after the other targets have run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

seconds="${FUZZ_SECONDS:-30}"
runs="${FUZZ_RUNS:-}"
sanitizer="${FUZZ_SANITIZER:-address}"
all_targets=(client_message event_validation filter http_request)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

# cargo fuzz uses nightly-only rustc flags (-Zsanitizer, coverage passes);
# RUSTC_BOOTSTRAP lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"

logs="$here/target/fuzz-logs"
mkdir -p "$logs"
libfuzzer_args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
if [ -n "$runs" ]; then
    libfuzzer_args+=(-runs="$runs")
fi

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="$here/corpus/$target"
    seeds="$here/seeds/$target"
    mkdir -p "$corpus" "$seeds"
    log="$logs/$target.log"
    target_args=()
    if [ "$target" = http_request ]; then
        # A relay runs in the background of this target, so an input's
        # mallocs and frees rarely balance, and libFuzzer would re-run nearly
        # every input under LeakSanitizer: 2.5x slower, for leaks that a
        # long-lived server's memory hides anyway.
        target_args+=(-detect_leaks=0)
    fi
    if [ "$seconds" = 0 ]; then limit="no time limit"; else limit="${seconds}s"; fi
    echo "== fuzzing $target ($limit${runs:+, at most $runs runs}); log: $log"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "$seeds" -- \
        "${libfuzzer_args[@]}" "${target_args[@]}" >"$log" 2>&1 || status=$?
    done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)"
    if [ "$status" -eq 0 ] && [ -n "$done_line" ]; then
        executions="$(echo "$done_line" | awk '{print $2}')"
        elapsed="$(echo "$done_line" | awk '{print $5}')"
        summary+=("$(printf '%-18s ok      %12s runs in %6s s' "$target" "$executions" "$elapsed")")
    elif grep -q "failed to build fuzz script" "$log"; then
        # cargo fuzz run rebuilds first: the sources changed since the build above.
        failed+=("$target")
        summary+=("$(printf '%-18s BUILD FAILED (exit %s); see %s' "$target" "$status" "$log")")
        grep -E -A6 "^error" "$log" | head -n 30 || true
    else
        failed+=("$target")
        summary+=("$(printf '%-18s FAILED  (exit %s); see %s and fuzz/artifacts/%s/' "$target" "$status" "$log" "$target")")
        # The crash report: libFuzzer's and the panic's own lines.
        grep -E -A3 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written to|artifact_prefix" "$log" | tail -n 40 || true
    fi
    echo "${summary[-1]}"
done

# The http_request target keeps its relay's database in a directory named
# after its pid; remove those whose process is gone (not a concurrent run's).
for dir in "${TMPDIR:-/tmp}"/nostr-relayd-fuzz/*; do
    if [ -d "$dir" ] && [ ! -d "/proc/${dir##*/}" ]; then
        rm -rf "$dir"
    fi
done
rmdir "${TMPDIR:-/tmp}/nostr-relayd-fuzz" 2>/dev/null || true

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
