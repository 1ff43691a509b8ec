#!/bin/sh
# fleetsim_core.sh BINDIR [DEVICES [SECONDS]] - otacd-fleetsim's two
# engines against the same real otacd, in the same invocation (issue 14):
# the device model (--engine model, before) and every device running
# libotadev on simulated flash (--engine core, after).
#
# One fresh daemon per run, poll interval 1 s and time scale 1, so DEVICES
# devices demand DEVICES check-ins a second, and with --report-every 2s
# DEVICES/2 heartbeat reports a second.  Each simulator runs SECONDS (20)
# real seconds after registration; without SECONDS, 20 or DEVICES/5000
# for each run, whichever is longer (at a million devices the first
# check-ins alone take a minute or two, and a device that never ran has no
# record yet, so a 20 s run would understate memory per device; the
# script says so when a run checked in fewer times than it has devices).
# Prints per engine: check-ins a second
# and reports accepted a second against what the model demands (from the
# simulator's --stats), the simulator's peak RSS (VmHWM), and memory per
# device as the slope between this run and one of DEVICES/10 (fixed costs,
# such as the core engine's worker contexts and connections, cancel);
# for the core engine also the compact state per device (struct sizes +
# the encoded records); then the ratios core/model.  Nothing asserted.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
all=${2:-20000}
secs_arg=${3:-}
bench_begin fscore

bench_keypair "$tmp"

# run ENGINE [N]: sets ck rep hwm
run() {
	devices=${2:-$all}
	secs=${secs_arg:-$((devices / 5000 > 20 ? devices / 5000 : 20))}
	state="$tmp/$1-$devices/state"
	mkdir -p "$state"
	cat >"$tmp/$1-$devices/otacd.yml" <<EOF
poll_interval: 1s
device_register_burst: $devices
device_register_rate: $devices
EOF
	"$bin/otacd" --config "$tmp/$1-$devices/otacd.yml" --state-dir "$state" --listen 127.0.0.1:0 \
		--device-listen 127.0.0.1:0 --local-agents 0 2>>"$tmp/$1.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd fleetsim_core.sh "$tmp/$1.log" "$state/otacd-device.url" "$state/fleet.key"
	"$bin/otacd-fleetsim" --engine "$1" --url "$(cat "$state/otacd-device.url")" --devices "$devices" --seed 1 \
		--key "$tmp/k.pub" --fleet-key "@$state/fleet.key" --report-every 2s --duration "$secs" \
		--concurrency 256 --quiet --stats "$tmp/$1-$devices.stats" >"$tmp/$1.sim.log" 2>&1 &
	sim=$!
	hwm=0
	while kill -0 $sim 2>/dev/null; do
		h=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$sim/status" 2>/dev/null || echo 0)
		[ "${h:-0}" -gt "$hwm" ] && hwm=$h
		sleep 0.5
	done
	wait $sim || true
	kill $pid
	wait $pid 2>/dev/null || true
	c=$(stat_of "$tmp/$1-$devices.stats" checkins)
	r=$(stat_of "$tmp/$1-$devices.stats" reports_sent)
	ck=$(awk -v c="${c:-0}" -v s="$secs" 'BEGIN { printf "%.0f", c / s }')
	rep=$(awk -v c="${r:-0}" -v s="$secs" 'BEGIN { printf "%.0f", c / s }')
	printf '  %-5s %d devices, %d s: check-ins %s/s of %d demanded (%.0f %%), reports %s/s of %d demanded (%.0f %%), peak RSS %d KB = %.0f B/device\n' \
		"$1" "$devices" "$secs" "$ck" "$devices" "$(awk -v a="$ck" -v b="$devices" 'BEGIN { print 100 * a / b }')" \
		"$rep" $((devices / 2)) "$(awk -v a="$rep" -v b="$devices" 'BEGIN { print 200 * a / b }')" \
		"$hwm" "$(awk -v h="$hwm" -v n="$devices" 'BEGIN { print h * 1024 / n }')"
	[ "${c:-0}" -ge "$devices" ] ||
		echo "        (only ${c:-0} check-ins for $devices devices: not every device ran; give more SECONDS)"
	if [ "$1" = core ]; then
		sb=$(stat_of "$tmp/$1-$devices.stats" state_bytes_per_device)
		rb=$(stat_of "$tmp/$1-$devices.stats" record_bytes)
		printf '        compact state per device: %s B of structs + %.1f B of encoded record (%d B unencoded), %s reboots\n' \
			"${sb:-?}" "$(awk -v r="${rb:-0}" -v n="$devices" 'BEGIN { print r / n }')" 944 \
			"$(stat_of "$tmp/$1-$devices.stats" reboots)"
	fi
}

small=$((all / 10))
slope() { awk -v a="$1" -v b="$2" -v n="$all" -v m="$small" 'BEGIN { printf "%.0f", (a - b) * 1024 / (n - m) }'; }
run model "$small"
m_small=$hwm
run model
m_ck=$ck m_rep=$rep m_hwm=$hwm
run core "$small"
c_small=$hwm
run core
m_slope=$(slope "$m_hwm" "$m_small")
c_slope=$(slope "$hwm" "$c_small")
echo "  memory per device (RSS slope $small -> $all devices): model $m_slope B, core $c_slope B"
awk -v a="$ck" -v b="$m_ck" -v c="$rep" -v d="$m_rep" -v e="$c_slope" -v f="$m_slope" 'BEGIN {
	printf "  core/model: check-ins/s %.2f, reports/s %.2f, memory per device %.2f\n", (b ? a / b : 0), (d ? c / d : 0), (f ? e / f : 0) }'
