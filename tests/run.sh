#!/bin/sh
# run.sh TEST... - run each cmocka test binary, print its output, and end
# with one summary line "N passed, N failed".  Exits 1 if anything failed.
# Each binary's wall time is printed after it ("-- NAME: Ns"), to keep an
# eye on CI's time budget.
#
# CHECK_JOBS=N runs N binaries at a time (most of the suite waits on
# daemons, not on the CPU; every test takes its ports from the kernel and
# its files under its own mkdtemp directory: docs/testing.md).  Each
# binary's output is kept until it ends and printed whole, under a lock, so
# blocks never interleave; the summary adds up the same counts.  The
# binaries named in CHECK_ALONE (default below) run after the others, one
# at a time: they drive CPU-heavy simulated fleets or count what happens in
# a few real seconds, and on a busy machine a gate goes inconclusive or a
# window comes up short.
set -u
alone=${CHECK_ALONE-test_rollout test_fleetsim test_web}

# run_one TEST: run one binary and print its block; sets p, f (its passed
# and failed counts) and rc, and in block its whole output
run_one() {
	name=$(basename "$1")
	start=$(date +%s)
	out=$("$1" 2>&1)
	rc=$?
	block=$(printf '== %s\n%s\n-- %s: %ss' "$name" "$out" "$name" "$(($(date +%s) - start))")
	p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
	f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
}

# one of the CHECK_JOBS workers (started by xargs below): --one INDEX TEST
# prints the block and leaves "passed failed rc name" in $RUN_DIR/INDEX
if [ "${1:-}" = --one ]; then
	run_one "$3"
	{
		flock 9
		printf '%s\n' "$block"
	} 9>"$RUN_DIR/lock"
	echo "$p $f $rc $name" >"$RUN_DIR/$2.tmp" && mv "$RUN_DIR/$2.tmp" "$RUN_DIR/$2"
	exit 0
fi

passed=0
failed=0
broken=""
# count P F RC NAME: add one binary's result to the summary
count() {
	passed=$((passed + $1))
	failed=$((failed + $2))
	if [ "$3" -ne 0 ] && [ "$2" -eq 0 ]; then
		# crashed or exited early: count the binary as one failure
		failed=$((failed + 1))
		broken="$broken $4"
	fi
}

jobs=${CHECK_JOBS:-1}
case $jobs in '' | *[!0-9]*) echo "run.sh: CHECK_JOBS must be a number, not '$jobs'" >&2; exit 2 ;; esac
if [ "$jobs" -le 1 ]; then
	for t in "$@"; do
		echo "== $(basename "$t")"
		run_one "$t"
		printf '%s\n' "$block" | sed 1d
		count "$p" "$f" "$rc" "$name"
	done
else
	RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/otacd-run-XXXXXX") || exit 2
	export RUN_DIR
	trap 'rm -rf "$RUN_DIR"' EXIT
	trap 'exit 130' INT TERM
	# list 1|0 TEST...: "INDEX TEST" lines of the binaries in CHECK_ALONE
	# (1) or of the others (0)
	list() {
		want=$1
		shift
		i=0
		for t in "$@"; do
			i=$((i + 1))
			case " $alone " in *" $(basename "$t") "*) a=1 ;; *) a=0 ;; esac
			[ "$a" = "$want" ] && printf '%s %s\n' "$i" "$t"
		done
	}
	list 0 "$@" | xargs -r -n 2 -P "$jobs" sh "$0" --one
	list 1 "$@" | xargs -r -n 2 -P 1 sh "$0" --one
	i=0
	for t in "$@"; do
		i=$((i + 1))
		if [ -f "$RUN_DIR/$i" ]; then
			read -r rp rf rrc rname <"$RUN_DIR/$i"
			count "$rp" "$rf" "$rrc" "$rname"
		else
			count 0 0 1 "$(basename "$t")"   # its worker never reported
		fi
	done
fi
[ -n "$broken" ] && echo "crashed or exited early:$broken"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
