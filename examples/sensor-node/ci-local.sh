#!/bin/sh
# ci-local.sh - the CI part of .otacd/pipeline.yml (build, unit-tests,
# static-analysis, compliance, code-quality, hil) run by hand in one shell,
# without otacd.  (The verdicts of compliance and code-quality - rule
# counts after suppressions, metric limits - are otacd's; here the tools
# run and their reports are written, as the benchmark's baseline.)
#
# For trying a change before pushing it, and as the baseline of otacd's
# overhead benchmark: the same commands, the same order of work (the build
# is done twice per board in separate clean copies of the source, as
# `reproducible: true` does, and the digests compared).  Stops at the first
# failing stage, with its exit status.  Usage: ./ci-local.sh [WORKDIR]
# (default: a fresh temporary directory, removed at the end).
set -eu
src=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
work=${1:-}
if [ -z "$work" ]; then
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
fi
boards="mps2-an385 mps2-an386"
# libotadev: the firmware repository's submodule, or otacd's device/ when
# the example runs inside otacd's tree (the copies below lose ../../device)
if [ -z "${OTADEV:-}" ] && [ ! -d "$src/lib/otadev" ] && [ -d "$src/../../device" ]; then
	OTADEV=$(CDPATH='' cd -- "$src/../../device" && pwd)
	export OTADEV
fi

# a clean workspace: the sources without build output
checkout() {
	rm -rf "$1"
	mkdir -p "$1"
	(cd "$src" && tar -cf - --exclude=./build .) | (cd "$1" && tar -xf -)
}

stage() { printf '\n=== %s\n' "$*"; }

for b in $boards; do
	stage "build ($b)"
	for n in 1 2; do
		checkout "$work/build-$b-$n"
		(cd "$work/build-$b-$n" && make --no-print-directory BOARD="$b" >/dev/null)
	done
	d1=$(sha256sum <"$work/build-$b-1/build/$b/app.bin" | cut -d' ' -f1)
	d2=$(sha256sum <"$work/build-$b-2/build/$b/app.bin" | cut -d' ' -f1)
	echo "app.bin $d1 / $d2"
	if [ "$d1" != "$d2" ]; then
		echo "build ($b): not reproducible" >&2
		exit 1
	fi
done

stage unit-tests
checkout "$work/test"
(cd "$work/test" && make -s --no-print-directory test >/dev/null)
grep -o '<testsuites [^>]*>' "$work/test/build/test/unit.xml"

stage static-analysis
checkout "$work/lint"
(cd "$work/lint" && make -s --no-print-directory lint)
if grep -q 'severity="error"' "$work/lint/build/cppcheck.xml"; then
	echo "static-analysis: error findings" >&2
	exit 1
fi

stage compliance
checkout "$work/misra"
(cd "$work/misra" && make -s --no-print-directory misra)

stage code-quality
checkout "$work/metrics"
(cd "$work/metrics" && make -s --no-print-directory metrics)

for b in $boards; do
	stage "hil ($b)"
	checkout "$work/hil-$b"
	status=0
	(cd "$work/hil-$b" && OTACD_INPUTS="$work/build-$b-1" &&
	 ./hil/run.sh "$OTACD_INPUTS/build/$b/app.elf" "$b" build/hil.xml build/power.json >hil.log 2>&1) || status=$?
	grep '^hil:' "$work/hil-$b/hil.log" || cat "$work/hil-$b/hil.log"
	[ "$status" -eq 0 ] || exit "$status"
done
printf '\nci-local: all stages passed\n'
