#!/bin/sh
# run.sh TEST... - run each cmocka test binary, print its output, and end
# with one summary line "N passed, N failed".  Exits 1 if anything failed.
# Each binary's wall time is printed after it ("-- NAME: Ns"), to keep an
# eye on CI's time budget.
set -u
passed=0
failed=0
broken=""
for t in "$@"; do
	name=$(basename "$t")
	echo "== $name"
	start=$(date +%s)
	out=$("$t" 2>&1)
	rc=$?
	printf '%s\n' "$out"
	echo "-- $name: $(($(date +%s) - start))s"
	p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
	f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		# crashed or exited early: count the binary as one failure
		failed=$((failed + 1))
		broken="$broken $name"
	fi
done
[ -n "$broken" ] && echo "crashed or exited early:$broken"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
