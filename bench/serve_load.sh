#!/usr/bin/env bash
# Load test of `medvlp serve` on 127.0.0.1 with wrk (Debian: apt-get install wrk):
#  1. 10,000 requests at concurrency 32, a third of them invalid (truncated PNG, empty text,
#     wrong content type): counts of 2xx / 4xx / 503 / other 5xx, p50/p99 latency;
#  2. valid image embeds only, for images/s against `medvlp bench encode`'s offline figure
#     for the same model (the target is >= 80%);
#  3. the server's peak RSS (VmHWM) and that it is still alive.
# Usage: bench/serve_load.sh [--preset small] [--requests 10000] [--concurrency 32]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=small requests=10000 conc=32
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        --concurrency) conc=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
bin=target/release/medvlp
[ -x $bin ] || cargo build --release -p medvlp
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
$bin synth --n 8 --image-only 0 --text-only 0 --size 256 --seed 1 --out "$work/data" >/dev/null 2>&1
printf 'no pleural effusion\nmild cardiomegaly\nsmall left pneumothorax\n%.0s' {1..50} >"$work/corpus.txt"
$bin tokenizer train --vocab-size 200 --input "$work/corpus.txt" --out "$work/tok.json" >/dev/null 2>&1
$bin init --preset "$preset" --tokenizer "$work/tok.json" --out "$work/model" >/dev/null 2>&1
image=$(ls "$work"/data/images/*.png 2>/dev/null | head -1)
[ -n "$image" ] || image=$(find "$work/data" -name '*.png' | head -1)
threads=2
$bin serve --model "$work/model" --bind 127.0.0.1:0 --max-batch 32 --max-wait-ms 5 \
    >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores); model preset $preset; image $(basename "$image")"
run() { # $1 mix, $2 seconds
    LOAD_IMAGE=$image LOAD_MIX=$1 wrk -t$threads -c"$conc" -d"$2"s --timeout 30s \
        -s bench/serve_load.lua "$url" | tail -1
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }
# wrk runs for a time, not a count: a 5 s run sizes the run that makes at least $requests.
rate=$(field requests_per_s "$(run mixed 5)")
secs=$(python3 -c "import math; print(math.ceil($requests / $rate * 1.1) + 1)")
echo "mixed (1/3 invalid), ${secs} s: $(run mixed "$secs")"
echo "valid images only, 20 s:  $(run images 20)"
offline=$($bin bench encode --preset "$preset" --steps 5)
echo "offline encode:      $offline"
kill -0 $pid && echo "server alive after the load; peak RSS $(awk '/VmHWM/ {printf "%.0f MB", $2/1024}' /proc/$pid/status)"
grep -c "panicked" "$work/serve.err" | sed 's/^/panics in the server log: /' || true
