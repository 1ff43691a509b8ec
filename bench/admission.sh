#!/bin/sh
# admission.sh BINDIR [DEVICES] - a region's power comes back: DEVICES
# (1,000,000) simulated devices check in at once (otacd-fleetsim --herd;
# the device model, or libotadev with ADMISSION_ENGINE=core) against the
# real otacd (issue 15, thundering-herd control; docs/delivery.md,
# "Admission").
#
# First the baseline, the same herd without admission (capacity 0): how
# long otacd takes to serve every device once and its rate, the mean over
# the herd and the peak in one otacd second (otacd's own counters,
# otacd_devapi_checkins_admitted_*).  Then the herd against
# device_checkin_capacity C: ADMISSION_CAPACITY, or a quarter of the
# baseline's mean rate (so the capacity, not the machine, is what binds:
# the one simulator sends the herd's first check-ins and, before them, the
# deferred devices whose turn has come).  Prints, for
# the capacity run: the time to serve every device against the bound
# docs/delivery.md computes (N/C plus the window; and D/C plus the window,
# D the deferrals, which holds whatever turns were missed), the mean rate and the
# peak second against C (and C plus the bucket's depth), deferrals (total,
# per device, the most one device had), requests per device, and for both
# runs the requests that failed (must be 0: no error storm).  Time scale
# ADMISSION_SCALE (default 10), a real-time limit per run ADMISSION_TIMEOUT
# (default 1800 s).  Figures only: PASS/MISS are printed, nothing exits
# non-zero for a MISS.  Needs curl, openssl.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-1000000}
scale=${ADMISSION_SCALE:-10}
timeout=${ADMISSION_TIMEOUT:-1800}
engine=${ADMISSION_ENGINE:-model}
bench_begin admission "${ADMISSION_KEEP:-}"

bench_keypair "$tmp"
printf '{"default": {"crash_rate": 0, "boot_fail_rate": 0, "revert_rate": 0}, "silent": 0, "flaky": 0}\n' \
	>"$tmp/profile.json"

# run LABEL CAPACITY: one daemon, one herd; sets served last deferred dmax
# failed admitted peak burst
run() {
	label=$1
	state="$tmp/$label"
	mkdir -p "$state"
	cat >"$tmp/$label.yml" <<EOF
time_scale: $scale
poll_interval: 6h
device_register_burst: $devices
device_register_rate: $devices
device_checkin_capacity: $2
EOF
	nice "$bin/otacd" --config "$tmp/$label.yml" --state-dir "$state" --listen 127.0.0.1:0 \
		--device-listen 127.0.0.1:0 2>>"$state.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd admission.sh "$state.log" "$state/otacd-device.url" "$state/fleet.key"
	dev=$(cat "$state/otacd-device.url")
	nice "$bin/otacd-fleetsim" --engine "$engine" --herd --url "$dev" --devices "$devices" --seed 1 \
		--profile "$tmp/profile.json" --key "$tmp/k.pub" --fleet-key "@$state/fleet.key" --product bench \
		--start-version 1.0.0 --report-every 24h --duration "$timeout" --concurrency 512 --quiet \
		--stats "$state.stats" >"$state.sim.log" 2>&1 || true
	curl -sf "$dev/metrics" >"$state.metrics" || : >"$state.metrics"
	kill $pid
	wait $pid 2>/dev/null || true
	served=$(stat_of "$state.stats" served)
	last=$(stat_of "$state.stats" served_last_ms)
	deferred=$(stat_of "$state.stats" checkins_deferred)
	dmax=$(stat_of "$state.stats" deferrals_max)
	failed=$(stat_of "$state.stats" requests_failed)
	admitted=$(metric "$state.metrics" "otacd_devapi_checkins_admitted_total ")
	peak=$(metric "$state.metrics" "otacd_devapi_checkins_admitted_peak_second ")
	burst=$(metric "$state.metrics" "otacd_devapi_checkin_burst ")
	served=${served:-0} last=${last:-0} deferred=${deferred:-0} dmax=${dmax:-0} failed=${failed:-0}
}

rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.0f", (ms > 0 ? n * 1000 / ms : 0) }'; }

echo "  $devices devices at once, time scale $scale (otacd seconds; fleetsim --engine $engine, one otacd per run)"
run baseline 0
b_served=$served b_last=$last b_failed=$failed b_peak=${peak:-0}
# otacd counts the peak second only under a capacity (check-ins without
# one touch no shared counter: issue 19 part 5), so the baseline has none
b_peak_text=$b_peak
[ "$b_peak" -gt 0 ] || b_peak_text="n/a (counted only under a capacity)"
b_rate=$(rate "$served" "$last")
echo "  baseline, no admission: served $b_served/$devices in $(awk -v m="$b_last" 'BEGIN { printf "%.1f", m / 1000 }') s," \
	"mean $b_rate/s, peak second $b_peak_text, failed requests $b_failed"

# a quarter of what the machine did: while the herd's first check-ins are
# still arriving, the same two cores run otacd and the simulator, which
# must also send the deferred devices back on time (it sends them before
# the rest of the herd), or they miss their turns (the machine's limit,
# not the devices')
cap=${ADMISSION_CAPACITY:-$((b_rate / 4))}
[ "$cap" -ge 1 ] || cap=1
run capacity "$cap"
mean=$(rate "$served" "$last")
bound=$(awk -v n="$devices" -v c="$cap" -v s="$scale" 'BEGIN { printf "%.1f", n / c + 2 * 0.25 * s + s }')
took=$(awk -v m="$last" 'BEGIN { printf "%.1f", m / 1000 }')
verdict() { [ "$1" = 1 ] && echo PASS || echo MISS; }
echo "  capacity $cap/s (bucket depth $burst): served $served/$devices in $took s;" \
	"bound N/C + window = $bound s: $(verdict "$(awk -v a="$took" -v b="$bound" 'BEGIN { print (a <= b) }')")"
dbound=$(awk -v d="$deferred" -v c="$cap" -v s="$scale" 'BEGIN { printf "%.1f", d / c + 2 * 0.25 * s + s }')
echo "    every deferral is a turn 1/C apart: D/C + window = $dbound s:" \
	"$(verdict "$(awk -v a="$took" -v b="$dbound" 'BEGIN { print (a <= b) }')")"
echo "    mean rate $mean/s = $(awk -v m="$mean" -v c="$cap" 'BEGIN { printf "%.2f", m / c }') x capacity;" \
	"peak otacd second $peak (capacity + depth = $((cap + burst))):" \
	"$(verdict "$(awk -v p="$peak" -v c="$cap" -v b="$burst" 'BEGIN { print (p <= c + b + 1) }')")"
echo "    deferrals $deferred ($(awk -v d="$deferred" -v n="$devices" 'BEGIN { printf "%.2f", d / n }') a device," \
	"at most $dmax for one); check-in requests a device $(awk -v d="$deferred" -v n="$devices" 'BEGIN { printf "%.2f", (d + n) / n }');" \
	"admitted $admitted; failed requests $failed: $(verdict "$([ "$failed" = 0 ] && echo 1 || echo 0)")"
echo "    against the baseline (same run): time to serve all $(awk -v a="$last" -v b="$b_last" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }') x," \
	"peak second $(awk -v a="$peak" -v b="$b_peak" 'BEGIN { if (b > 0) printf "%.2f x", a / b; else print "n/a" }')"
