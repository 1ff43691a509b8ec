#!/bin/sh
# make bench: build and run the benchmark program against the built binaries.
# Sizes can be lowered for a quick look: BENCH_ARGS="50 100 500 50" make bench
set -eu
"$OTACD_BIN/otacd-bench" "$OTACD_BIN" ${BENCH_ARGS:-200 1000 10000 200}
