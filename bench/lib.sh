# bench/lib.sh - helpers the benchmarks share (sourced: . bench/lib.sh).

# bench_begin NAME [KEEP] - a fresh work directory $tmp (otacd-NAME-XXXXXX)
# and an empty $pids; at exit every process in $pids is stopped and $tmp
# removed (kept, and said so, when KEEP is not empty).  Put each background
# process's pid in $pids.
bench_begin() {
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/otacd-$1-XXXXXX")
	pids=""
	bench_keep=${2:-}
	trap bench_cleanup EXIT INT TERM
}
bench_cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	if [ -n "$bench_keep" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}

# bench_keypair DIR - a P-256 release signing key: DIR/k.pem, DIR/k.pub
bench_keypair() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1/k.pem" 2>/dev/null
	openssl pkey -in "$1/k.pem" -pubout -out "$1/k.pub" 2>/dev/null
}

# bench_wait_otacd WHO LOG FILE... - wait (20 s at most) until every FILE
# (what otacd writes into its state directory once it serves) is non-empty;
# else say "WHO: otacd did not start" with LOG's last lines and exit 1.
bench_wait_otacd() {
	who=$1 log=$2
	shift 2
	i=0
	for f in "$@"; do
		until [ -s "$f" ]; do
			i=$((i + 1))
			[ $i -lt 400 ] || { echo "$who: otacd did not start: $(tail -3 "$log")" >&2; exit 1; }
			sleep 0.05
		done
	done
}

# bench_rollout_yml FILE FILL - the pipeline both rollout benchmarks trigger:
# a two-board build (a 64 KiB fw.bin per board, its bytes from the file
# FILL, e.g. /dev/zero), a release stage signing with key "bench", and a
# rollout 1 % / 10 % / 100 % with 1 h holds.  The rollout stage comes last,
# so a caller may append keys of its own (gates) to FILE.
bench_rollout_yml() {
	cat >"$1" <<EOT
name: bench
stages:
  - name: build
    matrix:
      board: [mps2-an385, mps2-an386]
    timeout: 2m
    steps:
      - name: firmware
        run: |
          mkdir -p "build/\${{ matrix.board }}"
          head -c 65536 $2 > "build/\${{ matrix.board }}/fw.bin"
    artifacts:
      - path: "build/\${{ matrix.board }}/fw.bin"
        name: "fw-\${{ matrix.board }}"
        type: application
        hardware: "\${{ matrix.board }}"
  - name: release
    kind: release
    needs: [build]
    security_counter: 1
    key: bench
EOT
	bench_rollout_stage >>"$1"
}

# bench_rollout_stage - the rollout stage the rollout benchmarks end their
# pipelines with: 1 % / 10 % / 100 % of the fleet, 1 h holds.
bench_rollout_stage() {
	cat <<EOT
  - name: fleet
    kind: rollout
    needs: [release]
    steps:
      - { percent: 1, hold: 1h }
      - { percent: 10, hold: 1h }
      - { percent: 100, hold: 1h }
EOT
}

# bench_fleet_otacd WHO LABEL DEVICES [EXTRA_CONFIG] - start $bin/otacd for
# one rollout to a simulated fleet: state directory $state ($tmp/LABEL, its
# log $state.log), time scale 600, polls every 1 h, registration open to
# DEVICES devices at once, the release key "bench" ($tmp/k.pem from
# bench_keypair), then EXTRA_CONFIG's lines.  Sets $pid (also added to
# $pids) and $dev (the device API's URL), and exports OTACD_URL and
# OTACD_TOKEN for otactl.  WHO names the script in its errors.
bench_fleet_otacd() {
	state="$tmp/$2"
	mkdir -p "$state"
	cat >"$tmp/$2.yml" <<EOT
time_scale: 600
poll_interval: 1h
device_register_burst: $3
device_register_rate: $3
keys:
  bench: { spec: $tmp/k.pem }
${4:-}
EOT
	nice "$bin/otacd" --config "$tmp/$2.yml" --state-dir "$state" --listen 127.0.0.1:0 \
		--device-listen 127.0.0.1:0 2>>"$state.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd "$1" "$state.log" "$state/otacd-device.url" "$state/fleet.key" "$state/otacd.url"
	dev=$(cat "$state/otacd-device.url")
	OTACD_URL="$(cat "$state/otacd.url")" OTACD_TOKEN="$(cat "$state/admin.token")"
	export OTACD_URL OTACD_TOKEN
}

# bench_fleet_stop - once the simulator is done: $wall, the whole seconds
# since $t0 (date +%s.%N); the device API's /metrics in $state.metrics
# (empty when it does not answer); the otacd of bench_fleet_otacd stopped.
bench_fleet_stop() {
	wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
	curl -sf "$dev/metrics" >"$state.metrics" || : >"$state.metrics"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

# stat_of FILE KEY - the integer KEY of a JSON stats file (fleetsim's)
stat_of() { sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p" "$1" | head -1; }

# metric FILE PREFIX - the value of the last Prometheus sample whose line
# starts with PREFIX (0 without one), as an integer
metric() { awk -v k="$2" 'index($0, k) == 1 { v = $NF } END { printf "%.0f\n", v + 0 }' "$1"; }
