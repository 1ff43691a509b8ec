#!/bin/sh
# fleetstore_e2e.sh BINDIR [DEVICES [SECONDS]] - the fleet store behind the
# real device API: what otacd writes to disk per accepted report.
#
# The real otacd (no agents, time scale $FLEETSTORE_E2E_SCALE, default 300,
# poll interval 6 h, registration limits raised) and otacd-fleetsim with
# DEVICES (1,000,000) devices sending a heartbeat every otacd hour, for
# SECONDS (240) real seconds: at scale 300 a million devices demand ~83,000
# reports/s and ~14,000 check-ins/s once all have checked in (their first
# check-ins are spread over one poll interval: 72 s).  No release is
# offered, so this is the fleet's steady state, not a rollout.  Run twice:
# the snapshot layout, then the legacy one (OTACD_FLEET_LAYOUT=legacy).
#
# Prints per layout: reports accepted and demanded (accepted + rejected +
# dropped, from the simulator's --stats), bytes otacd wrote to disk
# (/proc/PID/io write_bytes) per report accepted from the moment every
# device has checked in (and at least one poll interval passed:
# registrations and first check-ins are over, the steady state) to the end, and the ratio snapshot/legacy
# (FLEETSTORE_E2E_LEGACY=0 skips the legacy run).  Needs curl.  Nothing
# asserted.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-1000000}
secs=${3:-240}
scale=${FLEETSTORE_E2E_SCALE:-300}
warm=$(awk -v s="$scale" 'BEGIN { printf "%d", 6 * 3600 / s * 1.1 + 1 }')
[ "$warm" -lt "$secs" ] || { echo "fleetstore_e2e.sh: SECONDS must exceed one poll interval ($warm s at scale $scale)" >&2; exit 2; }
bench_begin fleete2e

bench_keypair "$tmp"
cat >"$tmp/otacd.yml" <<EOF
time_scale: $scale
poll_interval: 6h
device_register_burst: $devices
device_register_rate: $devices
EOF

io() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/io"; }

# run LAYOUT: one daemon and one simulator; sets acc, dem, bpr
run() {
	state="$tmp/$1"
	mkdir -p "$state"
	if [ "$1" = legacy ]; then layout=legacy; else layout=; fi
	OTACD_FLEET_LAYOUT=$layout "$bin/otacd" --config "$tmp/otacd.yml" --state-dir "$state" --listen 127.0.0.1:0 \
		--device-listen 127.0.0.1:0 --local-agents 0 2>>"$state.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd fleetstore_e2e.sh "$state.log" "$state/otacd-device.url" "$state/fleet.key"
	mport=$((20000 + ($$ + ${#1}) % 20000))
	# --engine model: a million devices need the 40-byte model (the core
	# engine would be the bottleneck, not the fleet store: docs/fleetsim.md)
	"$bin/otacd-fleetsim" --engine model --url "$(cat "$state/otacd-device.url")" --devices "$devices" --seed 1 --key "$tmp/k.pub" \
		--fleet-key "@$state/fleet.key" --product fw --report-every 1h --duration "$secs" --shared-downloads \
		--concurrency 512 --quiet --stats "$state.stats" --metrics-listen "127.0.0.1:$mport" >"$state.sim.log" 2>&1 &
	sim=$!
	pids="$pids $sim"
	# the window starts once every device has checked in: registrations
	# and first check-ins are over (at least one poll interval)
	t=0 w0= r0=
	while [ $t -lt "$secs" ] && kill -0 $sim 2>/dev/null; do
		sleep 1
		t=$((t + 1))
		m=$(curl -sf "http://127.0.0.1:$mport/metrics" || true)
		c=$(echo "$m" | awk '$1 == "fleetsim_checkins_total" { print $2 }')
		if [ $t -ge "$warm" ] && [ "${c:-0}" -ge "$devices" ]; then
			w0=$(io $pid write_bytes)
			r0=$(echo "$m" | awk '$1 == "fleetsim_reports_sent_total" { print $2 }')
			break
		fi
	done
	[ -n "$w0" ] || echo "  $1: the devices' first check-ins did not end within $secs s: no steady state measured" >&2
	w0=${w0:-$(io $pid write_bytes)} r0=${r0:-0} steady=$t
	wait $sim || true
	w1=$(io $pid write_bytes)
	kill $pid
	wait $pid 2>/dev/null || true
	acc=$(stat_of "$state.stats" reports_sent)
	rej=$(stat_of "$state.stats" reports_rejected)
	drop=$(stat_of "$state.stats" reports_dropped)
	acc=${acc:-0}
	dem=$((acc + ${rej:-0} + ${drop:-0}))
	bpr=$(awk -v w=$((w1 - w0)) -v a=$((acc - ${r0:-0})) 'BEGIN { printf "%.0f", (a > 0 ? w / a : 0) }')
	awk -v l="$1" -v a="$acc" -v d="$dem" -v s="$secs" -v w=$((w1 - w0)) -v b="$bpr" -v n="$devices" -v t="$steady" \
		-v r=$((acc - r0)) 'BEGIN {
		f = "  %-8s %d devices, %d s: %d reports accepted of %d demanded (%.3f); all checked in after %d s,"
		f = f " then %d reports at %.0f/s, otacd wrote %.1f MB: %s bytes per accepted report\n"
		printf f,
			l, n, s, a, d, (d > 0 ? a / d : 0), t, r, r / (s - t + 1e-9), w / 1e6, b }'
}

run snapshot
snap_bpr=$bpr snap_acc=$acc
[ "${FLEETSTORE_E2E_LEGACY:-1}" != 0 ] || exit 0
run legacy
awk -v a="$snap_bpr" -v b="$bpr" -v x="$snap_acc" -v y="$acc" 'BEGIN {
	printf "  snapshot/legacy: bytes per accepted report %.3f, reports accepted %.2f (target: <= 200 bytes, none dropped)\n",
		(b > 0 ? a / b : 0), (y > 0 ? x / y : 0) }'
