#!/bin/sh
# fsdelta.sh BINDIR [DEVICES] - the fleet bandwidth of one rollout with and
# without deltas (issue 15, docs/delivery.md "Delta updates"), measured with
# otacd-fleetsim's core engine (every device runs libotadev).
#
# Per run, a fresh otacd releases 1.0.0 (a 64 KiB image of random bytes,
# signed), then 1.1.0 (the same image with 2 KiB in the middle replaced:
# a changed function) and rolls it out (1 % / 10 % / 100 %, 1 h holds at
# time scale 600, polls every 1 h) to DEVICES (10,000) fleetsim devices that
# all run the 1.0.0 image (--start-image).  Twice in this invocation, on the
# same fleet:
#
#   full    the release without deltas: each device downloads the image;
#   delta   the release with `deltas: {from: [1.0.0]}` (real xdelta3): each
#           device fetches the patch in Range GETs, rebuilds the image with
#           libotadev's decoder on its flash, verifies and installs it.
#
# Prints, per run: devices on 1.1.0, patches applied, bytes otacd served
# (otacd_image_bytes_served_total + otacd_delta_bytes_served_total, the
# simulator's one whole fetch of the image and the patch included), bytes
# per device, wall time, the simulator's peak RSS (VmHWM) per device (the
# delta path adds no per-device state: the two runs' figures match); then
# the ratio delta / full.  Each device's Range
# GETs are real requests (no --shared-downloads) unless FSDELTA_SHARED=1,
# for fleets whose transfers loopback cannot carry: then only fleetsim's
# own counts (bytes the devices received) grow with the fleet.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-10000}
timeout=${FSDELTA_TIMEOUT:-$((devices / 50 > 600 ? devices / 50 : 600))}
shared=""
[ "${FSDELTA_SHARED:-0}" = 1 ] && shared=--shared-downloads
if ! command -v xdelta3 >/dev/null; then
	echo "  SKIP: needs xdelta3"
	exit 0
fi
bench_begin fsdelta "${FSDELTA_KEEP:-}"
bench_keypair "$tmp"
head -c 65536 /dev/urandom >"$tmp/fw-1.0.0.bin"
{ head -c 30000 "$tmp/fw-1.0.0.bin"; head -c 2048 /dev/urandom; tail -c +32049 "$tmp/fw-1.0.0.bin"; } >"$tmp/fw-1.1.0.bin"
cat >"$tmp/profile.json" <<EOF
{"hardware": {"mps2-an385": 1.0}, "silent": 0, "flaky": 0,
 "default": {"crash_rate": 0, "boot_fail_rate": 0, "revert_rate": 0}}
EOF

# pipeline VERSION DELTAS ROLLOUT - FILE: one board, the image of VERSION
pipeline() {
	cat <<EOF
name: fw
stages:
  - name: build
    steps: [ { run: "cp $tmp/fw-$1.bin fw.bin" } ]
    artifacts: [ { path: fw.bin, name: fw, type: application, hardware: mps2-an385 } ]
  - { name: release, kind: release, needs: [build], version: "$1", security_counter: 1, key: bench$2 }
EOF
	[ -z "$3" ] || bench_rollout_stage
}

# run LABEL DELTAS: one daemon, 1.0.0 released, the fleet on it, 1.1.0 rolled out
run() {
	label=$1
	bench_fleet_otacd fsdelta.sh "$label" "$devices"
	pipeline 1.0.0 "" "" >"$tmp/$label-1.yml"
	run1=$("$bin/otactl" trigger "$tmp/$label-1.yml" --wait 2>/dev/null | head -1 | tr -cd '0-9')
	"$bin/otactl" artifacts get "$run1/release/mps2-an385/fw.signed.bin" -o "$tmp/$label-v1.img" >/dev/null 2>&1 ||
		{ echo "fsdelta.sh: release 1.0.0 failed: $(tail -3 "$state.log")" >&2; exit 1; }
	t0=$(date +%s.%N)
	nice "$bin/otacd-fleetsim" --engine core --url "$dev" --devices "$devices" --seed 1 --key "$tmp/k.pub" \
		--fleet-key "@$state/fleet.key" --product fw --profile "$tmp/profile.json" \
		--start-image "$tmp/$label-v1.img" --report-every 1h $shared \
		--until 1.1.0:1.0 --duration "$timeout" --concurrency 256 --quiet --stats "$state.stats" \
		>"$state.sim.log" 2>&1 &
	sim=$!
	pids="$pids $sim"
	pipeline 1.1.0 "$2" rollout >"$tmp/$label-2.yml"
	"$bin/otactl" trigger "$tmp/$label-2.yml" >"$state.trigger" 2>&1 ||
		{ echo "fsdelta.sh: trigger failed: $(cat "$state.trigger")" >&2; exit 1; }
	hwm=0
	while kill -0 $sim 2>/dev/null; do
		h=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$sim/status" 2>/dev/null || echo 0)
		[ "${h:-0}" -le "$hwm" ] || hwm=$h
		sleep 1
	done
	wait $sim || true
	bench_fleet_stop
	landed=$(sed -n 's/.*"1\.1\.0": *\([0-9]*\).*/\1/p' "$state.stats" | head -1)
	applied=$(stat_of "$state.stats" deltas_applied)
	img=$(metric "$state.metrics" "otacd_image_bytes_served_total ")
	pat=$(metric "$state.metrics" "otacd_delta_bytes_served_total ")
	dimg=$(stat_of "$state.stats" image_bytes)
	dpat=$(stat_of "$state.stats" patch_bytes)
	total=$((img + pat))
	[ -z "$shared" ] || total=$((dimg + dpat))
	printf "  %-5s %6s devices, %6s on 1.1.0, %6s patches applied in %4ss: otacd served %11s B image + %9s B patch = %11s B, %7s B a device (devices received %s + %s B); fleetsim peak RSS %s KB = %s B/device, records %s B/device\n" \
		"$label" "$devices" "${landed:-0}" "${applied:-0}" "$wall" "$img" "$pat" "$total" \
		"$(awk -v t="$total" -v n="$devices" 'BEGIN { printf "%.0f", t / n }')" "${dimg:-0}" "${dpat:-0}" "$hwm" \
		"$(awk -v h="$hwm" -v n="$devices" 'BEGIN { printf "%.0f", h * 1024 / n }')" \
		"$(awk -v r="$(stat_of "$state.stats" record_bytes)" -v n="$devices" 'BEGIN { printf "%.1f", r / n }')"
	eval "total_$label=$total"
}

run full ""
run delta ", deltas: { from: ['1.0.0'] }"
awk -v f="$total_full" -v d="$total_delta" 'BEGIN {
	printf "  fleet bytes of the rollout, delta / full: %s / %s = %.4f\n", d, f, (f > 0 ? d / f : 0) }'
