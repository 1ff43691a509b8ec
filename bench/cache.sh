#!/bin/sh
# cache.sh BINDIR [ROUNDS] [FILES] [KB] - what a `cache:` costs and saves
# (docs/pipeline.md, "Caches"), on a real otacd with one local agent.
#
# Per round, in the same invocation, each job's duration_ms from the API:
#   empty     a run whose step is `true` (the run's own overhead);
#   cold      a new key: the step makes FILES files of KB KiB (urandom, the
#             stand-in for a download), then the agent saves them;
#   warm      the same key again: the agent restores, the step finds them;
#   cp -a     the same tree copied by hand (the floor of any restore).
# Prints each, and the restore's cost over `empty` against `cp -a`.
set -eu
bin=$1
rounds=${2:-3}
files=${3:-200}
kb=${4:-512}
src=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
. "$src/bench/lib.sh"
bench_begin cache

now_ms() { date +%s%3N; }

"$bin/otacd" --state-dir "$tmp/state" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 --local-agents 1 \
	2>"$tmp/otacd.log" &
pids="$!"
bench_wait_otacd cache "$tmp/otacd.log" "$tmp/state/otacd.url" "$tmp/state/admin.token"
OTACD_URL=$(cat "$tmp/state/otacd.url")
OTACD_TOKEN=$(cat "$tmp/state/admin.token")
export OTACD_URL OTACD_TOKEN

printf 'name: empty\nstages:\n  - name: b\n    steps: [ { run: "true" } ]\n' > "$tmp/empty.yml"
timed() { # FILE: the job's duration_ms (wall clock, claim to finish), as the API says
	run=$("$bin/otactl" trigger "$1" --wait 2>/dev/null | head -1 | tr -cd '0-9') ||
		{ echo "cache: run of $1 failed" >&2; exit 1; }
	curl -sf -H "Authorization: Bearer $OTACD_TOKEN" "$OTACD_URL/api/v1/runs/$run" |
		jq -e '.stages[0].jobs[0] | select(.state == "passed") | .duration_ms'
}

"$bin/otactl" trigger "$tmp/empty.yml" --wait >/dev/null 2>&1  # warm-up
i=1
while [ "$i" -le "$rounds" ]; do
	cat > "$tmp/deps.yml" <<YML
name: deps
stages:
  - name: b
    cache: { key: "deps-round-$i", paths: [ .deps ] }
    steps:
      - run: |
          [ -d .deps ] && exit 0
          mkdir .deps
          for n in \$(seq 1 $files); do head -c ${kb}K /dev/urandom > .deps/f\$n; done
YML
	empty=$(timed "$tmp/empty.yml")
	cold=$(timed "$tmp/deps.yml")
	warm=$(timed "$tmp/deps.yml")
	if [ ! -d "$tmp/gen/.deps" ]; then
		mkdir -p "$tmp/gen/.deps"
		n=1
		while [ $n -le "$files" ]; do head -c "${kb}K" /dev/urandom > "$tmp/gen/.deps/f$n"; n=$((n + 1)); done
	fi
	rm -rf "$tmp/copy"
	t0=$(now_ms)
	cp -a "$tmp/gen/.deps" "$tmp/copy"
	sync "$tmp/copy" 2>/dev/null || true
	cp_ms=$(($(now_ms) - t0))
	printf 'round %d: empty %d ms, cold %d ms, warm %d ms, cp -a %d ms (%d files x %d KiB)\n' \
		"$i" "$empty" "$cold" "$warm" "$cp_ms" "$files" "$kb"
	echo "$empty $cold $warm $cp_ms" >> "$tmp/rows"
	i=$((i + 1))
done
awk -v mb="$(echo "$files * $kb / 1024" | bc)" '{ e += $1; c += $2; w += $3; p += $4; n++ } END {
	printf "cache (%d MiB): empty %.0f ms, cold %.0f ms, warm %.0f ms (mean of %d); restore costs %.0f ms over empty, cp -a %.0f ms\n",
	       mb, e / n, c / n, w / n, n, w / n - e / n, p / n }' "$tmp/rows"
