#!/bin/sh
# load.sh BINDIR [RUNS] - the API under hostile load (issue 12, part 6).
#
# An otacd daemon (no agents) seeded with RUNS (10,000) runs, and a trivial
# libmicrohttpd server with the same flags (load-bench trivial: epoll thread
# pool of the same size, suspend/resume) in the same run.  For each, the
# p50 and p99 latency of GET /api/v1/runs, /api/v1/pipelines and
# /api/v1/releases under 64 concurrent connections (wrk, the median of
# REPEAT runs), first quiet, then while 1,000 slow clients (load-bench
# slow) hold half-sent requests from 20 other loopback addresses.  Prints
# the figures and the ratios (to the trivial server, and under attack to
# quiet).  Target: p99 < 10 ms at 64 connections.  Needs sqlite3 and wrk.
set -eu
bin=$(cd "${1:-build/bin}" && pwd)
runs=${2:-10000}
secs=${LOAD_BENCH_SECONDS:-3}
repeat=${LOAD_BENCH_REPEAT:-3}
slow_n=${LOAD_BENCH_SLOW:-1000}
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/otacd-loadbench-XXXXXX")
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

for tool in sqlite3 wrk curl; do
	command -v $tool >/dev/null || { echo "load.sh: $tool is missing" >&2; exit 1; }
done

start() {
	rm -f "$1/otacd.url"
	"$bin/otacd" --state-dir "$1" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 --local-agents 0 2>>"$1.log" &
	pid=$!
	pids="$pids $pid"
	i=0
	until [ -s "$1/otacd.url" ] && curl -sf -o /dev/null "$(cat "$1/otacd.url")/api/v1/health"; do
		i=$((i + 1))
		[ $i -lt 200 ] || { echo "load.sh: otacd did not start: $(tail -3 "$1.log")" >&2; exit 1; }
		sleep 0.05
	done
	url=$(cat "$1/otacd.url")
}

ms() {
	echo "$1" | awk '/us$/ { sub(/us$/, ""); printf "%.3f", $0 / 1000; next }
		/ms$/ { sub(/ms$/, ""); printf "%.3f", $0; next }
		/s$/ { sub(/s$/, ""); printf "%.3f", $0 * 1000; next } { print $0 }'
}
median() {
	sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
# latency URL: "p50 p99 req/s non-2xx+errors" (medians of $repeat wrk runs)
latency() {
	for _ in $(seq 1 "$repeat"); do
		out=$(wrk -t2 -c64 -d"${secs}s" --latency -H "Authorization: Bearer $token" "$1")
		echo "$(ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")" \
			"$(ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")" \
			"$(echo "$out" | awk '/Requests\/sec/ { print $2 }')" \
			"$(echo "$out" | awk '/Non-2xx|Socket errors/ { gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) s += $i } END { print s + 0 }')"
	done > "$tmp/lat"
	echo "$(awk '{ print $1 }' "$tmp/lat" | median) $(awk '{ print $2 }' "$tmp/lat" | median)" \
		"$(awk '{ print $3 }' "$tmp/lat" | median) $(awk '{ s += $4 } END { print s }' "$tmp/lat")"
}

# seed the daemon's database
mkdir -p "$tmp/big"
start "$tmp/big"
kill "$pid"; wait "$pid" 2>/dev/null || true
sqlite3 "$tmp/big/otacd.db" ".parameter set :n $runs" ".read $src/tests/web/seed-runs.sql"
start "$tmp/big"
token=$(cat "$tmp/big/admin.token")
api=$url

# the trivial server: its port on the first line; it stops when its stdin closes
mkfifo "$tmp/trivial.in"
"$bin/load-bench" trivial < "$tmp/trivial.in" > "$tmp/trivial.port" 2>/dev/null &
tpid=$!
pids="$pids $tpid"
exec 9> "$tmp/trivial.in"
i=0
until [ -s "$tmp/trivial.port" ]; do i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.05; done
trivial="http://127.0.0.1:$(cat "$tmp/trivial.port")"

# round NAME: every path on both servers into $tmp/NAME
round() {
	echo "trivial $(latency "$trivial/api/v1/runs")" > "$tmp/$1"
	for p in "/api/v1/runs?limit=50" "/api/v1/pipelines" "/api/v1/releases"; do
		echo "$p $(latency "$api$p")" >> "$tmp/$1"
	done
}

round quiet
port_api=${api##*:}
port_trivial=${trivial##*:}
budget=$(( (4 * repeat * secs) + 15 ))
"$bin/load-bench" slow "$port_api" "$slow_n" "$budget" > "$tmp/slow.api" &
s1=$!
"$bin/load-bench" slow "$port_trivial" "$slow_n" "$budget" > "$tmp/slow.trivial" &
s2=$!
pids="$pids $s1 $s2"
sleep 3
round attacked
health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$api/api/v1/health" || true)
wait "$s1" "$s2" 2>/dev/null || true

echo "== API under 64 connections (wrk, ${secs}s each, median of $repeat), $runs runs; target p99 < 10 ms"
echo "   quiet, and while $slow_n slow clients hold half-sent requests (to otacd and to the trivial server each)"
printf '  %-24s %8s %8s %9s | %8s %8s %9s | %8s %8s  %s\n' path "p50" "p99" "req/s" "p50 att" "p99 att" "req/s" \
	"p99/triv" "att/quiet" "errors"
t99q=$(awk '$1 == "trivial" { print $3 }' "$tmp/quiet")
t99a=$(awk '$1 == "trivial" { print $3 }' "$tmp/attacked")
while read -r p p50 p99 rps errs; do
	set -- $(awk -v p="$p" '$1 == p { print $2, $3, $4, $5 }' "$tmp/attacked")
	base=$t99q
	printf '  %-24s %8s %8s %9s | %8s %8s %9s | %8s %8s  %s\n' "$p" "$p50" "$p99" "$rps" "$1" "$2" "$3" \
		"$(awk -v a="$p99" -v b="$base" 'BEGIN { printf "%.1fx", (b > 0) ? a / b : 0 }')" \
		"$(awk -v a="$2" -v b="$p99" 'BEGIN { printf "%.2fx", (b > 0) ? a / b : 0 }')" "$((errs + $4))"
done < "$tmp/quiet"
echo "  (ms; 'trivial' is load-bench trivial with the API's flags; its p99 quiet $t99q, attacked $t99a)"
echo "  slow clients on otacd: $(cat "$tmp/slow.api"); on the trivial server: $(cat "$tmp/slow.trivial")"
echo "  otacd's health during the attack: HTTP $health; load average now: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
