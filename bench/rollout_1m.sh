#!/bin/sh
# rollout_1m.sh BINDIR [DEVICES] - a staged rollout to a simulated fleet of
# DEVICES (1,000,000) behind the real otacd (issue 19 part 5).
#
# The real otacd (embedded defaults, two local agents, time scale
# $ROLLOUT_SCALE, default 300, poll interval 6 h, registration limits
# raised, a PEM signing key) and otacd-fleetsim with DEVICES devices on
# 1.0.0.  `otactl trigger` runs a pipeline (a two-board build, a release
# stage signing 1.1.0, a rollout 1 % / 10 % / 100 % with 1 h holds and the
# builtin gates boots and crash_free); the simulator runs until 98 % of the
# fleet confirmed 1.1.0 (~1 % never does: failed test boots, reverts, devices
# not offered yet) (or ROLLOUT_TIMEOUT real seconds, default 1800).
# Once a second it samples the devices' confirmations (the simulator's
# /metrics) and the fleet's committed boot_ok count for 1.1.0 (otacd's
# device /metrics, what the gates read).  Prints, each with its target:
#
#   - reports accepted / demanded (the simulator's stats: accepted, rejected,
#     dropped after retries; demanded = the three);
#   - bytes otacd wrote to disk (/proc/PID/io write_bytes, daemon start to
#     end) per accepted report;
#   - the lag between the devices' confirmations and the committed count:
#     max and p50 in devices and in seconds (how long ago the simulator had
#     reached the count otacd shows), and the lag_ms every builtin gate
#     evaluation recorded (max, p50), and passes recorded with lag_ms above
#     gate_max_lag (must be 0);
#   - the rollout's wall time (trigger to the rollout stage passed);
#   - check-ins against the trivial libmicrohttpd handler: devapi-bench's
#     ratio, run first in the same invocation.
#
# Then the same rollout again as the baseline, with the legacy fleet store
# layout (OTACD_FLEET_LAYOUT=legacy) at ROLLOUT_BASELINE_DEVICES (100,000
# or DEVICES if smaller; 0 skips it), and the ratios.  ROLLOUT_ENGINE=core
# runs the simulated devices on libotadev instead of the model.  Needs curl, openssl.
# Figures only: PASS/MISS are printed, nothing exits non-zero for a MISS.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-1000000}
scale=${ROLLOUT_SCALE:-300}
timeout=${ROLLOUT_TIMEOUT:-1800}
base_n=${ROLLOUT_BASELINE_DEVICES:-$([ "$devices" -lt 100000 ] && echo "$devices" || echo 100000)}
src=$(cd "$(dirname "$0")/.." && pwd)
bench_begin rollout1m "${ROLLOUT_KEEP:-}"

bench_keypair "$tmp"
bench_rollout_yml "$tmp/rollout.yml" /dev/zero
cat >>"$tmp/rollout.yml" <<'EOF'
    gates: [boots, crash_free]
gates:
  boots:      { metric: boot_success_rate, min: 0.9, min_devices: 20 }
  crash_free: { metric: crash_rate, max: 0.2, min_devices: 20 }
EOF

io() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/io"; }

echo "  check-ins against the trivial handler (devapi-bench 5, same invocation):"
: >"$tmp/devapi.txt"
[ "${ROLLOUT_DEVAPI:-1}" = 0 ] || OTACD_SRC=$src "$bin/devapi-bench" 5 >"$tmp/devapi.txt" 2>&1 || true
sed 's/^/    /' "$tmp/devapi.txt" | grep -v '^    $' | head -12
ratio=$(awk '$1 == "ratio" { print $2 }' "$tmp/devapi.txt")

# run LABEL LAYOUT N: one daemon, one simulator, one rollout; sets acc dem
# bpr wall lagd lags glag
run() {
	label=$1 n=$3
	state="$tmp/$label"
	mkdir -p "$state"
	cat >"$tmp/$label.yml" <<EOF
time_scale: $scale
poll_interval: 6h
device_register_burst: $n
device_register_rate: $n
keys:
  bench: { spec: $tmp/k.pem }
EOF
	OTACD_FLEET_LAYOUT=$2 nice "$bin/otacd" --config "$tmp/$label.yml" --state-dir "$state" --listen 127.0.0.1:0 \
		--device-listen 127.0.0.1:0 2>>"$state.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd rollout_1m.sh "$state.log" "$state/otacd-device.url" "$state/fleet.key" "$state/otacd.url"
	dev=$(cat "$state/otacd-device.url")
	export OTACD_URL="$(cat "$state/otacd.url")" OTACD_TOKEN="$(cat "$state/admin.token")"
	mport=$((20000 + ($$ + ${#label}) % 20000))
	t0=$(date +%s.%N)
	# --engine model by default: the 40-byte model; ROLLOUT_ENGINE=core runs
	# every device on libotadev (~300 B a device, fewer check-ins a second
	# on 2 shared cores: docs/fleetsim.md "Scale")
	nice "$bin/otacd-fleetsim" --engine "${ROLLOUT_ENGINE:-model}" --url "$dev" --devices "$n" --seed 1 --key "$tmp/k.pub" --fleet-key "@$state/fleet.key" \
		--product bench --start-version 1.0.0 --report-every 1h --until 1.1.0:0.98 --duration "$timeout" \
		--shared-downloads --concurrency 512 --quiet --stats "$state.stats" --metrics-listen "127.0.0.1:$mport" \
		>"$state.sim.log" 2>&1 &
	sim=$!
	pids="$pids $sim"
	"$bin/otactl" trigger "$tmp/rollout.yml" --ref refs/tags/v1.1.0 >"$state.trigger" 2>&1 ||
		{ echo "rollout_1m.sh: trigger failed: $(cat "$state.trigger")" >&2; exit 1; }
	tt=$(date +%s.%N)
	rel= done_at=
	: >"$state.samples"
	while kill -0 $sim 2>/dev/null; do
		sleep 1
		now=$(date +%s.%N)
		curl -sf "http://127.0.0.1:$mport/metrics" >"$state.m1" 2>/dev/null || : >"$state.m1"
		curl -sf "$dev/metrics" >"$state.m2" 2>/dev/null || : >"$state.m2"
		c=$(metric "$state.m1" "fleetsim_confirmed_total ")
		o=$(metric "$state.m2" 'otacd_fleet_boot_ok{product="bench",version="1.1.0",cohort="*"}')
		echo "$now $c $o" >>"$state.samples"
		if [ -z "$rel" ]; then
			rel=$(curl -sf -H "Authorization: Bearer $OTACD_TOKEN" "$OTACD_URL/api/v1/releases" |
				grep -o '"id": *[0-9]*' | head -1 | grep -o '[0-9]*$' || true)
		elif [ -z "$done_at" ]; then
			st=$(curl -sf -H "Authorization: Bearer $OTACD_TOKEN" "$OTACD_URL/api/v1/releases/$rel/rollout" || true)
			rs=$(echo "$st" | grep -o '"stage": *"fleet", *"kind": *"rollout", *"state": *"[a-z]*"' | grep -o '[a-z]*"$' | tr -d '"')
			case "$rs" in
			passed) done_at=$now ;;
			paused | halted | failed | rolled_back)
				echo "  $label: the rollout stopped ($rs): $(echo "$st" | grep -o '"reason": *"[^"]*"' | head -1)" >&2
				done_at=-
				kill -INT $sim 2>/dev/null || true ;;
			esac
		fi
	done
	wait $sim || true
	w=$(io $pid write_bytes)
	[ -n "$rel" ] && curl -sf -H "Authorization: Bearer $OTACD_TOKEN" "$OTACD_URL/api/v1/releases/$rel/gates" \
		>"$state.gates" || : >"$state.gates"
	[ -n "$rel" ] && curl -sf -H "Authorization: Bearer $OTACD_TOKEN" "$OTACD_URL/api/v1/releases/$rel/rollout" \
		>"$state.rollout" || : >"$state.rollout"
	kill $pid
	wait $pid 2>/dev/null || true
	acc=$(stat_of "$state.stats" reports_sent)
	rej=$(stat_of "$state.stats" reports_rejected)
	drop=$(stat_of "$state.stats" reports_dropped)
	conf=$(stat_of "$state.stats" confirmed)
	hb=$(stat_of "$state.stats" heartbeats)
	oms=$(stat_of "$state.stats" otacd_elapsed_ms)
	acc=${acc:-0}
	dem=$((acc + ${rej:-0} + ${drop:-0}))
	bpr=$(awk -v w="$w" -v a="$acc" 'BEGIN { printf "%.0f", (a > 0 ? w / a : 0) }')
	end=$(date +%s.%N)
	wall=$(awk -v a="$tt" -v b="${done_at:-}" 'BEGIN { if (b == "" || b == "-") print "- (not passed)"; else printf "%.0f", b - a }')
	# lag in devices (confirmed by the devices - committed) and seconds (how
	# long ago the devices had reached the committed count), max and p50
	# over the samples taken while the rollout ran (some device confirmed,
	# the committed count below the final)
	set -- $(awk 'function srt(a, n,   i, j, v) { for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j > 0 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v } }
		{ t[NR] = $1; c[NR] = $2; o[NR] = $3 } END {
		j = 1; k = 0
		for (i = 1; i <= NR; i++) {
			if (c[i] == 0) continue
			while (j < i && c[j] < o[i]) j++
			k++; d[k] = c[i] - o[i]; s[k] = (o[i] >= c[i]) ? 0 : t[i] - t[j]
		}
		if (k == 0) { print "- - - -"; exit }
		n = k; srt(d, n); srt(s, n)
		printf "%d %d %.1f %.1f\n", d[n], d[int((n + 1) / 2)], s[n], s[int((n + 1) / 2)] }' "$state.samples")
	lagd=$1 lagd50=$2 lags=$3 lags50=$4
	# the gates' own record: lag_ms of every builtin evaluation; passes with
	# lag_ms above gate_max_lag (60 s) would be a gate passing on stale evidence
	grep -o '"verdict": *"[a-z]*"[^{}]*"lag_ms": *[0-9]*\|"lag_ms": *[0-9]*[^{}]*"verdict": *"[a-z]*"' "$state.gates" |
		awk '{ match($0, /"lag_ms": *[0-9]+/); v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v)
			print v + 0, ($0 ~ /"pass"/ ? 1 : 0) }' | sort -n >"$state.lags" || true
	set -- $(awk '{ n++; l[n] = $1; if ($2 && $1 > 60000) bad++ }
		END { if (n == 0) { print "0 - - 0"; exit } printf "%d %d %d %d\n", n, l[n], l[int((n + 1) / 2)], bad + 0 }' "$state.lags")
	gn=$1 glag=$2 glag50=$3 gbad=$4
	final=$(tail -1 "$state.samples")
	awk -v l="$label" -v n="$n" -v a="$acc" -v d="$dem" -v r="${rej:-0}" -v x="${drop:-0}" -v w="$w" -v b="$bpr" \
		-v wall="$wall" -v run=$(awk -v a="$t0" -v b="$end" 'BEGIN { printf "%.0f", b - a }') -v conf="${conf:-0}" \
		-v ld="$lagd" -v ld50="$lagd50" -v ls="$lags" -v ls50="$lags50" -v gn="$gn" -v gl="$glag" -v gl50="$glag50" \
		-v gb="$gbad" -v fin="$final" -v hb="${hb:-0}" -v oms="${oms:-0}" 'BEGIN {
		split(fin, f, " ")
		printf "  %s: %d devices, run %d s, rollout (trigger to the last step passed) %s s, %d confirmed 1.1.0 (committed boot_ok %d)\n",
			l, n, run, wall, conf, f[3]
		printf "    reports accepted %d of %d demanded (%.4f; rejected %d, dropped %d)  target: all  %s\n",
			a, d, (d > 0 ? a / d : 0), r, x, (a == d && a > 0 ? "PASS" : "MISS")
		# the model: a heartbeat per device per otacd hour from its first
		# check-in, those spread over the first 6 h poll interval
		h = oms / 3600000; m = n * (h > 6 ? h - 3 : h * h / 12)
		printf "    heartbeats produced by the simulator %d of ~%d the model demands (%.2f) in %.1f otacd hours\n",
			hb, m, (m > 0 ? hb / m : 0), h
		printf "    otacd wrote %.1f MB: %d bytes per accepted report  target: <= 200  %s\n",
			w / 1e6, b, (b <= 200 && a > 0 ? "PASS" : "MISS")
		printf "    confirmations - committed boot_ok: max %s devices, p50 %s; max %s s, p50 %s s behind the devices\n",
			ld, ld50, ls, ls50
		printf "    gate evaluations %d: lag_ms max %s, p50 %s; passes on lag > gate_max_lag: %d  target: 0  %s\n",
			gn, gl, gl50, gb, (gb == 0 ? "PASS" : "MISS") }'
}

run snapshot "" "$devices"
s_bpr=$bpr s_acc=$acc s_dem=$dem s_wall=$wall
[ -z "$ratio" ] || awk -v r="$ratio" 'BEGIN { printf "    check-ins / trivial handler %.2f  target: >= 0.8  %s\n", r, (r >= 0.8 ? "PASS" : "MISS") }'
if [ "$base_n" -gt 0 ]; then
	run legacy legacy "$base_n"
	awk -v a="$s_bpr" -v b="$bpr" -v sa="$s_acc" -v sd="$s_dem" -v la="$acc" -v ld="$dem" -v n="$devices" -v m="$base_n" 'BEGIN {
		printf "  snapshot (%d devices) / legacy layout (%d devices): bytes per accepted report %.3f, accepted/demanded %.4f / %.4f\n",
			n, m, (b > 0 ? a / b : 0), (sd > 0 ? sa / sd : 0), (ld > 0 ? la / ld : 0) }'
fi
