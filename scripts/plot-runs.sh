#!/usr/bin/env bash
# Draws saved runs side by side in one SVG chart (issue 13), for the bench scripts:
#   scripts/plot-runs.sh OUT.svg CHART 'RAW/GLOB*.json' [TITLE]
# CHART: spectrum (latency by percentile, log axis), rss (node RSS against connections) or
# rate (messages received per second over time). Each run is labelled by its file name.
# A run that lacks the chart's figures (an older summary, no --node-pid) is reported, and
# the chart is drawn from the others; no chart at all is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 chart=$2 glob=$3 title=${4:-}
LOADGEN=${LOADGEN:-target/release/ringpush-loadgen}
runs=()
for f in $glob; do
    [[ -f $f ]] || continue
    if "$LOADGEN" plot --chart "$chart" -o /dev/null "$f" 2>/dev/null; then
        runs+=("$(basename "$f" .json)=$f")
    else
        echo "plot-runs: $f has no $chart figures; left out of $out" >&2
    fi
done
if ((${#runs[@]} == 0)); then
    echo "plot-runs: no run matching $glob has $chart figures" >&2
    exit 1
fi
"$LOADGEN" plot --chart "$chart" ${title:+--title "$title"} -o "$out" "${runs[@]}"
echo "plot-runs: $out (${#runs[@]} runs)"
