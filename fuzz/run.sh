#!/usr/bin/env bash
# Coverage-guided campaigns over the parsers (cargo fuzz = libFuzzer + AddressSanitizer), the
# same limits for each: a single allocation above 1 GB is a failure, as is one input taking over
# 10 s or the whole fuzzing process passing 2 GB (ASan's quarantine and shadow memory add several
# hundred MB to what the decoders use, so the process limit sits above the per-decode one).
# Needs the nightly toolchain and `cargo install cargo-fuzz`.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 600 s each; dicom image manifest report)
#
# Two targets run at a time (the development machine has 2 cores). Each target's summary
# (runs, coverage, corpus size, peak RSS) is the tail of fuzz/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else targets=(dicom image manifest report); fi
python3 seeds.py >/dev/null
mkdir -p logs
cargo +nightly fuzz build -O --debug-assertions
run() {
    ASAN_OPTIONS=quarantine_size_mb=64 cargo +nightly fuzz run -O --debug-assertions "$1" "corpus/$1" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -max_len=262144 -print_final_stats=1 >"logs/$1.log" 2>&1 && echo "$1: ok" || echo "$1: FAILED (see fuzz/logs/$1.log)"
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    run "${targets[i]}" &
    [ $((i + 1)) -lt ${#targets[@]} ] && run "${targets[i + 1]}" &
    wait
done
for t in "${targets[@]}"; do
    echo "== $t"; grep -E "^#[0-9]+.*(DONE|pulse)|stat::|Done [0-9]+ runs" "logs/$t.log" | tail -6
done
