#!/usr/bin/env bash
# Bounded-time, coverage-guided fuzzing of every target, one after another (not run by CI).
#
#   fuzz/run.sh [--keep] [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; no TARGET means all of them (`cargo fuzz list`). Each
# target runs in one libFuzzer process for that long, from its saved corpus (corpus/TARGET,
# never written to) and a working corpus (target/corpus/TARGET, kept between runs, not in
# git). With --keep, the fewest inputs of the working corpus that cover the edges the saved
# corpus misses are added to corpus/TARGET afterwards. Crashing, hanging (FUZZ_TIMEOUT seconds, default 10) and
# out-of-memory inputs are left in artifacts/TARGET/. Prints a summary, and exits 1 when any
# target crashed.
#
# It runs on a stable toolchain: RUSTC_BOOTSTRAP=1 lets rustc take the -Z flags cargo-fuzz
# passes (sanitizer coverage, AddressSanitizer). FUZZ_SANITIZER=none builds without
# AddressSanitizer (about twice the executions per second). cargo-fuzz is installed if missing.
set -euo pipefail
cd "$(dirname "$0")"

keep=0
if [[ "${1:-}" == "--keep" ]]; then
    keep=1
    shift
fi
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
    echo "usage: fuzz/run.sh [--keep] [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
shift || true

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
build=(--sanitizer "${FUZZ_SANITIZER:-address}")

# One build for every target first, so the time limits measure fuzzing only.
cargo fuzz build "${build[@]}" "${targets[@]:0:1}" >&2
if [[ ${#targets[@]} -gt 1 ]]; then
    cargo fuzz build "${build[@]}" >&2
fi

logs=target/run-logs
mkdir -p "$logs"
failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "target/corpus/$t" "artifacts/$t"
    log="$logs/$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    echo "== $t: ${seconds}s" >&2
    status=0
    # The working corpus comes first: libFuzzer writes new inputs only to the first directory.
    # -max_total_time bounds the run; `timeout` bounds a run that stops making progress.
    timeout --kill-after=30 $((seconds + 120)) \
        cargo fuzz run "${build[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || status=$?
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [[ $status -ne 0 && $crashes -eq 0 ]]; then
        crashes="?"  # failed without leaving an input (build error, killed): see the log
    fi
    if [[ $status -ne 0 ]]; then
        failed=1
        tail -n 40 "$log" >&2
    fi
    # The last status line: `#RUNS ... cov: N ft: N corp: N/SIZE ...`.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' ||
        sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+\/[^ ]+).*/\1/p' <<<"$last")
    if [[ $keep -eq 1 && $status -eq 0 ]]; then
        cargo fuzz run "${build[@]}" "$t" "corpus/$t" "target/corpus/$t" -- \
            -set_cover_merge=1 -use_counters=0 -use_value_profile=0 \
            -timeout="${FUZZ_TIMEOUT:-10}" >>"$log" 2>&1 || failed=1
    fi
    saved=$(find "corpus/$t" -type f | wc -l)
    summary+=("$(printf '%-16s %6s %10s %6s %7s %12s %6s %7s' "$t" "$seconds" "${runs:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$saved" "$crashes")")
done

printf '\n%-16s %6s %10s %6s %7s %12s %6s %7s\n' target secs runs cov ft corpus saved crashes
printf '%s\n' "${summary[@]}"
echo "logs: fuzz/$logs/; crashing inputs: fuzz/artifacts/<target>/"
exit "$failed"
