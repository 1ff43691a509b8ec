#!/bin/sh
# web.sh BINDIR [RUNS] - the status page at scale.
#
# Two otacd daemons (no agents) on loopback: a baseline with 10 runs and one
# with RUNS (10,000) runs, both seeded straight into a stopped daemon's
# database with tests/web/seed-runs.sql.  For each it measures
#
#   1. time to first render of the overview in Debian's headless Chromium:
#      from navigation start to the page's performance mark
#      "otacd-overview-rendered" (set once the runs, releases and rollouts
#      are on screen), the median of 7 fresh page loads;
#   2. the API latency of the overview's requests (and a filtered and an
#      older page of runs) under 64 concurrent connections with wrk: p50,
#      p99 and requests/s per path, each the median of REPEAT (3) runs of
#      wrk; the target is p99 < 10 ms.  Also the median of 50 requests one
#      at a time ("alone": the service time, with curl's connection set-up).
#      /api/v1/health is the floor: the same HTTP server, threads and token
#      check, and no database.
#      With 64 requests always in flight, latency is 64 / throughput (Little's
#      law), so p99 < 10 ms needs > 6,400 requests/s on this machine;
#      "alone" tells service time from queueing.
#   3. the same for two lists while runs are created (a few a second), so that
#      the answers kept between commits (orchestrator/api/api_cache.c) are
#      rebuilt all the time: what a busy day looks like.
#
# and prints the figures and the ratio RUNS / baseline.  Needs sqlite3, wrk,
# /usr/bin/chromium and tests/web/node_modules (cd tests/web && npm ci).
set -eu
bin=$(cd "${1:-build/bin}" && pwd)
runs=${2:-10000}
secs=${WEB_BENCH_SECONDS:-3}
repeat=${WEB_BENCH_REPEAT:-3}
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/otacd-webbench-XXXXXX")
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

for tool in sqlite3 wrk node; do
	command -v $tool >/dev/null || { echo "web.sh: $tool is missing" >&2; exit 1; }
done
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "web.sh: ${CHROMIUM:-/usr/bin/chromium} is missing" >&2; exit 1; }
[ -d "$src/tests/web/node_modules/playwright-core" ] || (cd "$src/tests/web" && npm ci --no-audit --no-fund >/dev/null)

# start STATE: otacd on a free port; sets $pid and $url
start() {
	rm -f "$1/otacd.url"
	"$bin/otacd" --state-dir "$1" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 --local-agents 0 2>>"$1.log" &
	pid=$!
	pids="$pids $pid"
	i=0
	until [ -s "$1/otacd.url" ] && curl -sf -o /dev/null "$(cat "$1/otacd.url")/api/v1/health"; do
		i=$((i + 1))
		[ $i -lt 200 ] || { echo "web.sh: otacd did not start: $(tail -3 "$1.log")" >&2; exit 1; }
		sleep 0.05
	done
	url=$(cat "$1/otacd.url")
}

# seed STATE N: a database with N runs
seed() {
	mkdir -p "$1"
	start "$1"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	t0=$(date +%s%N)
	sqlite3 "$1/otacd.db" ".parameter set :n $2" ".read $src/tests/web/seed-runs.sql"
	echo "seeded $2 runs in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

cat > "$tmp/render.mjs" <<'EOF'
// Median time from navigation start to the overview's first render.
import { chromium } from 'playwright-core';
const [url, token, n] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
const times = [];
for (let i = 0; i < Number(n); i++) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await ctx.addInitScript((t) => localStorage.setItem('otacd-token', t), token);
  const page = await ctx.newPage();
  await page.goto(url + '/#/');
  await page.waitForFunction(() => performance.getEntriesByName('otacd-overview-rendered').length > 0, null, { timeout: 30000 });
  const t = await page.evaluate(() => performance.getEntriesByName('otacd-overview-rendered')[0].startTime);
  const rows = await page.locator('tr.run-row').count();
  if (rows === 0) throw new Error('no runs on the overview');
  times.push(t);
  await ctx.close();
}
await browser.close();
times.sort((a, b) => a - b);
console.log(times[Math.floor(times.length / 2)].toFixed(1), times[0].toFixed(1), times[times.length - 1].toFixed(1));
EOF
ln -s "$src/tests/web/node_modules" "$tmp/node_modules"

# ms VALUE-WITH-UNIT: wrk's "1.23ms" / "850.00us" / "1.2s" in milliseconds
ms() {
	echo "$1" | awk '/us$/ { sub(/us$/, ""); printf "%.3f", $0 / 1000; next }
		/ms$/ { sub(/ms$/, ""); printf "%.3f", $0; next }
		/s$/ { sub(/s$/, ""); printf "%.3f", $0 * 1000; next } { print $0 }'
}

# median of the numbers on stdin
median() {
	sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# latency PATH: "p50 p99 req/s non-2xx" (medians of $repeat wrk runs)
latency() {
	for _ in $(seq 1 "$repeat"); do
		out=$(wrk -t2 -c64 -d"${secs}s" --latency -H "Authorization: Bearer $token" "$url$1")
		echo "$(ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")" \
			"$(ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")" \
			"$(echo "$out" | awk '/Requests\/sec/ { print $2 }')" \
			"$(echo "$out" | awk '/Non-2xx/ { print $NF }' | grep . || echo 0)"
	done > "$tmp/lat"
	echo "$(awk '{ print $1 }' "$tmp/lat" | median) $(awk '{ print $2 }' "$tmp/lat" | median)" \
		"$(awk '{ print $3 }' "$tmp/lat" | median) $(awk '{ s += $4 } END { print s }' "$tmp/lat")"
}

# measure NAME STATE: render and wrk figures into $tmp/NAME.*
measure() {
	name=$1 state=$2
	start "$state"
	token=$(cat "$state/admin.token")
	node "$tmp/render.mjs" "$url" "$token" 7 > "$tmp/$name.render"
	for p in "/api/v1/health" "/api/v1/runs?limit=50" "/api/v1/releases" "/api/v1/rollouts" "/api/v1/pipelines" \
		"/api/v1/runs?limit=50&pipeline=p3&state=failed" "/api/v1/runs?limit=50&before=$((runs / 2))"; do
		set -- $(latency "$p")
		# one request at a time (one kept-alive connection): the service time
		one=$(for _ in $(seq 1 50); do
				curl -s -H "Authorization: Bearer $token" -o /dev/null -w '%{time_total}\n' "$url$p"
			done | awk '{ print $1 * 1000 }' | median)
		echo "$p $1 $2 $3 $4 $one" >> "$tmp/$name.wrk"
	done
	if [ "$name" = big ]; then
		# runs created while the lists are read: every commit invalidates
		( while :; do
			curl -s -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
				-d '{"file":"w.yml","pipeline":"name: w\nstages:\n  - { name: s, steps: [ { run: \"true\" } ] }\n"}' \
				"$url/api/v1/runs"
			sleep 0.05
		  done ) &
		writer=$!
		for p in "/api/v1/runs?limit=50" "/api/v1/pipelines"; do
			echo "$p $(latency "$p")" >> "$tmp/writes.wrk"
		done
		kill "$writer"
		wait "$writer" 2>/dev/null || true
		sqlite3 "$state/otacd.db" "SELECT COUNT(*) FROM runs WHERE pipeline = 'w'" > "$tmp/writes.count"
	fi
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

seed "$tmp/small" 10
seed "$tmp/big" "$runs"
measure small "$tmp/small"
measure big "$tmp/big"

echo
echo "== overview: time to first render in headless Chromium (median of 7 loads; min, max)"
set -- $(cat "$tmp/small.render")
small=$1
printf '  %6s runs  %8s ms  (%s, %s)\n' 10 "$1" "$2" "$3"
set -- $(cat "$tmp/big.render")
printf '  %6s runs  %8s ms  (%s, %s)\n' "$runs" "$1" "$2" "$3"
echo "  ratio $(awk -v a="$1" -v b="$small" 'BEGIN { printf "%.2f", a / b }')x"
echo
echo "== API latency under 64 connections (wrk, ${secs}s each, median of $repeat); target p99 < 10 ms"
printf '  %-48s %8s %8s %8s %8s %9s  %s\n' path "alone ms" "p50 ms" "p99 ms" "p99 10" "req/s" "p99 vs 10 runs"
worst=0
while read -r p p50 p99 rps errs one; do
	base=$(awk -v p="$p" '$1 == p { print $3 }' "$tmp/small.wrk")
	ok=$(awk -v v="$p99" 'BEGIN { print (v < 10) ? "ok" : "OVER" }')
	[ "$ok" = ok ] || worst=1
	[ "$errs" = 0 ] || { ok="$ok, $errs non-2xx"; worst=1; }
	printf '  %-48s %8s %8s %8s %8s %9s  %sx %s\n' "$p" "$one" "$p50" "$p99" "$base" "$rps" \
		"$(awk -v a="$p99" -v b="$base" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" "$ok"
done < "$tmp/big.wrk"
floor=$(awk 'NR == 1 { print $3 }' "$tmp/big.wrk")
echo "  (the first line is the floor: no database; load average now: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores)"
echo
echo "== the same while runs are created ($(cat "$tmp/writes.count") runs in $((2 * repeat * secs)) s)"
printf '  %-48s %8s %8s %9s  %s\n' path "p50 ms" "p99 ms" "req/s" "p99 vs floor"
while read -r p p50 p99 rps errs; do
	ok=$(awk -v v="$p99" 'BEGIN { print (v < 10) ? "ok" : "OVER" }')
	[ "$errs" = 0 ] || ok="$ok, $errs non-2xx"
	printf '  %-48s %8s %8s %9s  %sx %s\n' "$p" "$p50" "$p99" "$rps" \
		"$(awk -v a="$p99" -v b="$floor" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')" "$ok"
done < "$tmp/writes.wrk"
[ $worst = 0 ] && echo "  every p99 under 10 ms with $runs runs" || echo "  SOME p99 OVER 10 ms (or errors) with $runs runs"
