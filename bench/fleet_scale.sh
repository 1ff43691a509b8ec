#!/bin/sh
# fleet_scale.sh BINDIR [DEVICES [SECONDS]] - device check-ins/s and report
# events/s with one, two and three otacd instances on PostgreSQL, against
# one otacd on SQLite, in one run (issue 16, docs/scale.md "The fleet on
# several instances").
#
# Every configuration is served through a real haproxy (HTTP mode, round
# robin over the instances' device listeners), so each pays the same
# proxy hop: SQLite, one instance (no fleet_database on PostgreSQL:
# otacd.db and fleet.db in its state directory); then one PostgreSQL
# cluster (fsync on, unix socket) with the leader alone, the leader and a
# follower, the leader and two followers.  Only the leader holds the fleet;
# a follower forwards check-ins and reports to it.  Each fleet registers
# DEVICES (default 20,000; FLEET_SCALE_DEVICES) devices dev-0000000... with
# the fleet key through /device/v1/register and checks every one in once
# (wrk, CHECKIN=once); then per configuration wrk (2 threads, 64
# connections, SECONDS (3; FLEET_SCALE_SECONDS) s each) sends
# bench/wrk/checkin.lua (steady check-ins of random registered devices)
# and bench/wrk/reports.lua (batches of 100 report events).
#
# Prints per configuration and load: requests/s (events/s for reports:
# 100 per batch, checked against the leader's accepted-reports counter),
# p50/p99 latency, errors (non-2xx answers and socket errors, loudly),
# the CPU seconds each instance, PostgreSQL (all its processes) and haproxy used
# during the run (/proc), and the ratio to SQLite of the same run.  The
# load average at start and end.  Nothing asserted.  Needs wrk, haproxy,
# curl, PostgreSQL's initdb/pg_ctl (the PostgreSQL rows are skipped
# without them).
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
devices=${2:-${FLEET_SCALE_DEVICES:-20000}}
secs=${3:-${FLEET_SCALE_SECONDS:-3}}
haproxy=${HAPROXY:-/usr/sbin/haproxy}
bench_begin fleetscale "${FLEET_SCALE_KEEP:-}"
hz=$(getconf CLK_TCK)
echo "  load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# one fleet key and device secret for every instance (docs/scale.md, "What
# every instance must share")
fleet_key=$(openssl rand -hex 32)
openssl rand -hex 32 | tr -d '\n' >"$tmp/device.secret"
chmod 600 "$tmp/device.secret"

# cpu PID... - the CPU seconds (user + system, ticks) the processes used
cpu() {
	for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || echo "0 (x) S 0 0 0 0 0 0 0 0 0 0 0 0"; done |
		sed 's/.*) //' | awk '{ t += $12 + $13 } END { print t + 0 }'
}
# pg_pids - every process of the PostgreSQL cluster (the postmaster's children)
pg_pids() {
	[ -n "${pgmaster:-}" ] || return 0
	echo "$pgmaster"
	for s in /proc/[0-9]*/stat; do
		sed 's/.*) //' "$s" 2>/dev/null | awk -v m="$pgmaster" -v p="${s#/proc/}" '$2 == m { sub("/stat", "", p); print p }'
	done
}

# start_otacd LABEL [DATABASE_YAML] - an otacd with its state in $tmp/LABEL;
# sets $pid (added to $pids) and $dev (its device API's host:port)
start_otacd() {
	state="$tmp/$1"
	mkdir -p "$state"
	cat >"$tmp/$1.yml" <<EOT
poll_interval: 6h
leader_poll: 1s
device_register_burst: $devices
device_register_rate: $devices
fleet_key: "$fleet_key"
device_secret_file: "$tmp/device.secret"
${2:-}
EOT
	"$bin/otacd" --config "$tmp/$1.yml" --state-dir "$state" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 \
		--local-agents 0 2>>"$state.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd fleet_scale.sh "$state.log" "$state/otacd-device.url" "$state/otacd.url"
	dev=$(sed 's|^http://||' "$state/otacd-device.url")
}

# proxy HOST:PORT... - haproxy round robin over the device listeners
# given, on a port below the ephemeral range (the next one when that one is
# taken); sets $url (restarted per configuration)
proxy() {
	[ -z "${hapid:-}" ] || { kill "$hapid"; wait "$hapid" 2>/dev/null || true; }
	port=$((10000 + $$ % 20000))
	for _ in 1 2 3 4 5 6 7 8; do
		port=$((port + 1))
		{
			printf 'global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n'
			printf '  timeout client 60s\n  timeout server 60s\nfrontend dev\n  bind 127.0.0.1:%d\n' "$port"
			printf '  default_backend otacd\nbackend otacd\n  balance roundrobin\n'
			i=0
			for s in "$@"; do
				printf '  server o%d %s\n' $i "$s"
				i=$((i + 1))
			done
		} >"$tmp/haproxy.cfg"
		"$haproxy" -f "$tmp/haproxy.cfg" -db 2>>"$tmp/haproxy.log" &
		hapid=$!
		url="http://127.0.0.1:$port"
		i=0
		until curl -s -o /dev/null "$url/metrics"; do
			i=$((i + 1))
			kill -0 $hapid 2>/dev/null && [ $i -lt 200 ] || break
			sleep 0.05
		done
		kill -0 $hapid 2>/dev/null && break
		wait $hapid 2>/dev/null || true
	done
	kill -0 $hapid 2>/dev/null || { echo "fleet_scale.sh: haproxy did not start: $(tail -3 "$tmp/haproxy.log")" >&2; exit 1; }
	pids="$pids $hapid"
}

# register DEVURL - DEVICES devices registered in batches of 10,000, their
# credentials in $tmp/creds (line i + 1: dev-i), then each checked in once
register() {
	: >"$tmp/creds"
	i=0
	while [ $i -lt "$devices" ]; do
		n=$((devices - i < 10000 ? devices - i : 10000))
		awk -v a=$i -v n=$n 'BEGIN { printf "{\"devices\":["
			for (k = 0; k < n; k++) printf "%s\"dev-%07d\"", (k ? "," : ""), a + k
			printf "]}" }' >"$tmp/reg.json"
		curl -sf -H "Authorization: Bearer $fleet_key" -H 'Content-Type: application/json' \
			--data-binary "@$tmp/reg.json" "$1/device/v1/register" | tr -d '\n' |
			sed 's/.*"credentials": *\[\([^]]*\)\].*/\1/' | tr ',' '\n' | tr -d '" ' >>"$tmp/creds"
		echo >>"$tmp/creds"
		i=$((i + n))
	done
	# (every line a credential: a refused batch leaves a line that is not)
	[ "$(grep -cE '^[0-9a-f]{32}$' "$tmp/creds")" -eq "$devices" ] && [ "$(wc -l <"$tmp/creds")" -eq "$devices" ] ||
		{ echo "fleet_scale.sh: $devices credentials expected, got $(wc -l <"$tmp/creds")" >&2; exit 1; }
	CHECKIN=once CREDS="$tmp/creds" wrk -t1 -c64 -d600s -s "$src/bench/wrk/checkin.lua" \
		"$1/device/v1/checkin" >"$tmp/once.log" 2>&1
}

# accepted DEVURL - the leader's count of accepted report events
accepted() {
	curl -sf "$1/metrics" | awk '/^otacd_device_reports_total\{outcome="accepted"\}/ { print $2 }'
}

# measure LABEL LEADER_DEVURL PIDS... - the two wrk runs through $url;
# prints one line per load, sets ck_rps, ev_rps
measure() {
	label=$1 leader=$2
	shift 2
	for load in checkin reports; do
		# shellcheck disable=SC2046 # one argument per process
		pg0=$(cpu $(pg_pids)) a0=$(accepted "$leader") hap0=$(cpu $hapid)
		c0=""
		for p in "$@"; do c0="$c0 $(cpu "$p")"; done
		CHECKIN=steady CREDS="$tmp/creds" wrk -t2 -c64 -d"${secs}s" --latency -s "$src/bench/wrk/$load.lua" \
			"$url/device/v1/$load" >"$tmp/wrk.log" 2>&1 || { echo "fleet_scale.sh: wrk failed: $(tail -3 "$tmp/wrk.log")" >&2; exit 1; }
		a1=$(accepted "$leader")
		# shellcheck disable=SC2046
		pgc=$(($(cpu $(pg_pids)) - pg0))
		cpus="" k=1
		for p in "$@"; do
			c=$(($(cpu "$p") - $(echo "$c0" | cut -d' ' -f$((k + 1)))))
			who=$([ $k -eq 1 ] && echo leader || echo "f$((k - 1))")
			cpus="$cpus $who $(awk -v c=$c -v h="$hz" 'BEGIN { printf "%.1f", c / h }')"
			k=$((k + 1))
		done
		[ -z "${pgmaster:-}" ] || cpus="$cpus pg $(awk -v c=$pgc -v h="$hz" 'BEGIN { printf "%.1f", c / h }')"
		cpus="$cpus haproxy $(awk -v c=$(($(cpu $hapid) - hap0)) -v h="$hz" 'BEGIN { printf "%.1f", c / h }')"
		rps=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk.log")
		p50=$(awk '$1 == "50%" { print $2 }' "$tmp/wrk.log")
		p99=$(awk '$1 == "99%" { print $2 }' "$tmp/wrk.log")
		non2xx=$(awk '/Non-2xx/ { print $NF }' "$tmp/wrk.log")
		sockerr=$(grep 'Socket errors' "$tmp/wrk.log" || true)
		if [ $load = reports ]; then
			rate=$(awk -v r="$rps" 'BEGIN { printf "%.0f", r * 100 }')
			ev_rps=$rate
			acc=$(awk -v a="${a1:-0}" -v b="${a0:-0}" -v s="$secs" 'BEGIN { printf "%.0f", (a - b) / s }')
			what="events/s (leader counted $acc/s)"
		else
			rate=$(awk -v r="$rps" 'BEGIN { printf "%.0f", r }')
			ck_rps=$rate
			what="check-ins/s"
		fi
		printf '  %-10s %-8s %7s %-34s p50 %-8s p99 %-8s cpu s:%s\n' "$label" $load "$rate" "$what" "$p50" "$p99" "$cpus"
		if [ -n "$non2xx" ] || [ -n "$sockerr" ]; then
			echo "  !!!!! $label $load: ERRORS: ${non2xx:-0} non-2xx answers ${sockerr:+; $sockerr} !!!!!"
		fi
	done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# SQLite, one instance
start_otacd sqlite
sq=$pid
proxy "$dev"
register "http://$dev"
measure sqlite "http://$dev" $sq
base_ck=$ck_rps base_ev=$ev_rps
kill $sq
wait $sq 2>/dev/null || true

# PostgreSQL: one cluster, the leader, then one and two followers
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pgbin" ] || [ ! -x "$pgbin/pg_ctl" ]; then
	echo "  PostgreSQL's binaries are missing: the PostgreSQL rows are skipped"
	exit 0
fi
# the cluster runs as postgres (or nobody) when we are root, as
# tests/pgcluster.c does; its data and socket in $tmp/pg
pgdir="$tmp/pg" pgdata="$tmp/pg/data" asuser=""
mkdir "$pgdir"
if [ "$(id -u)" = 0 ]; then
	pguser=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
	chmod 711 "$tmp"
	chown "$pguser" "$pgdir"
	asuser="runuser -u $pguser --"
fi
$asuser "$pgbin/initdb" -D "$pgdata" -U otacd -A trust -E UTF8 >"$tmp/initdb.log" 2>&1
pgstop() { $asuser "$pgbin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1 || true; }
trap 'bench_cleanup_pg' EXIT INT TERM
bench_cleanup_pg() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	pids=""
	pgstop
	bench_cleanup
}
$asuser "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdir/pg.log" -o "-k $pgdir -p 5432 -c listen_addresses= -c max_connections=100" \
	-w -t 120 start >/dev/null
pgmaster=$(head -1 "$pgdata/postmaster.pid")
for d in otacd fleet; do "$pgbin/createdb" -h "$pgdir" -p 5432 -U otacd $d; done
dbs="database: postgresql://otacd@/otacd?host=$pgdir&port=5432
fleet_database: postgresql://otacd@/fleet?host=$pgdir&port=5432"

start_otacd pg0 "$dbs"
lead=$pid lead_dev=$dev
i=0
until curl -sf -o /dev/null "$(cat "$state/otacd.url")/readyz"; do # 503 until it leads
	i=$((i + 1))
	[ $i -lt 600 ] || { echo "fleet_scale.sh: the first instance did not lead: $(tail -3 "$state.log")" >&2; exit 1; }
	sleep 0.05
done
proxy "$lead_dev"
register "http://$lead_dev"
measure pg-1 "http://$lead_dev" $lead
pg1_ck=$ck_rps pg1_ev=$ev_rps
start_otacd pg1 "$dbs"
f1=$pid f1_dev=$dev
proxy "$lead_dev" "$f1_dev"
measure pg-2 "http://$lead_dev" $lead $f1
pg2_ck=$ck_rps pg2_ev=$ev_rps
start_otacd pg2 "$dbs"
f2=$pid f2_dev=$dev
proxy "$lead_dev" "$f1_dev" "$f2_dev"
measure pg-3 "http://$lead_dev" $lead $f1 $f2
pg3_ck=$ck_rps pg3_ev=$ev_rps

echo "  ratios to SQLite (check-ins, events): pg-1 $(ratio $pg1_ck $base_ck) $(ratio $pg1_ev $base_ev)," \
	"pg-2 $(ratio $pg2_ck $base_ck) $(ratio $pg2_ev $base_ev), pg-3 $(ratio $pg3_ck $base_ck) $(ratio $pg3_ev $base_ev)"
echo "  $devices devices, $secs s per load; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
