#!/bin/sh
# pushsim.sh BINDIR [DEVICES] [CAPACITY] - push hints against 6 h polling,
# measured with otacd-fleetsim (issue 15, "Push"; docs/delivery.md).
#
# DEVICES (20,000) otacd-fleetsim devices (--engine model, the fast model; the default
# profile: two hardware variants), otacd with poll_interval 6h at time
# scale SCALE, chosen so the polling load is ~POLL_RATE (200) check-ins
# per real second: SCALE = POLL_RATE * 21600 / DEVICES (at a higher load
# the simulator lags, and a lag of 1 s real is SCALE s of otacd time).  A
# release of both variants opens one 100 % step once otacd knows every
# device, twice in this invocation:
#
#   push     mosquitto (password file, ACL) on a free port; otacd with
#            push.capacity CAPACITY (500/s), push.window 1 s; fleetsim
#            --mqtt-url: one cohort hint per variant, window
#            max(1 s, DEVICES / CAPACITY);
#   polling  the same with no broker listening: the baseline.
#
# Prints per run: the time from the step's opening (the rollout API's
# step_started_at) to 50 / 95 / 100 % of the cohort offered, in otacd time
# and in real seconds; the check-ins otacd counted
# (otacd_device_checkins_total) in the hint window and in the first real
# minute after the opening, as a rate against CAPACITY + the polling load;
# the hints fleetsim received.  Then polling / push for the time to 95 %
# in otacd time.  At time scale 1 (a real fleet) a push run's otacd time is
# its real time.  Needs mosquitto; skips with a message without it.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-20000}
capacity=${3:-500}
poll_rate=${POLL_RATE:-200}
mosq=${OTACD_MOSQUITTO:-/usr/sbin/mosquitto}
if [ ! -x "$mosq" ]; then
	echo "  SKIP: needs mosquitto ($mosq): see .ci/run"
	exit 0
fi
scale=$(awk -v r="$poll_rate" -v n="$devices" 'BEGIN { s = int(r * 21600 / n); print (s < 1 ? 1 : s) }')
window_ms=$(awk -v n="$devices" -v c="$capacity" 'BEGIN { w = int(n * 1000 / c); print (w < 1000 ? 1000 : w) }')
bench_begin pushsim "${PUSHSIM_KEEP:-}"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

bench_keypair "$tmp"
bench_rollout_yml "$tmp/rollout.yml" /dev/urandom
# one step of 100 %, held: the cohort is the fleet
sed -i '/- { percent: 1, hold: 1h }/d; /- { percent: 10, hold: 1h }/d; s/- { percent: 100, hold: 1h }/- { percent: 100, hold: 1000h }/' \
	"$tmp/rollout.yml"

# the broker: otacd writes otacd/#, the simulator's one user reads it
mqp=$(port)
printf 'user otacd\ntopic write otacd/#\n\nuser fleetsim\ntopic read otacd/#\n' >"$tmp/acl"
mosquitto_passwd -c -b "$tmp/passwd" otacd otacd-pw
mosquitto_passwd -b "$tmp/passwd" fleetsim fleetsim-pw
echo otacd-pw >"$tmp/otacd.pw"
echo fleetsim-pw >"$tmp/fleetsim.pw"
cat >"$tmp/mosquitto.conf" <<EOF
listener $mqp 127.0.0.1
persistence false
allow_anonymous false
password_file $tmp/passwd
acl_file $tmp/acl
EOF
[ "$(id -u)" = 0 ] && echo "user $(id -un)" >>"$tmp/mosquitto.conf"

# otacd's counter, and the rollout's step_started_at and now (otacd ms)
checkins() { curl -sf "$dev/metrics" | awk '$1 == "otacd_device_checkins_total" { print $2 }'; }
step_open() {
	curl -sf -H "Authorization: Bearer $OTACD_TOKEN" "$OTACD_URL/api/v1/releases/$1/rollout" |
		python3 -c 'import json,sys; r=json.load(sys.stdin)["rollouts"]; print(r[0]["step_started_at"] if r else 0)' 2>/dev/null ||
		echo 0
}
devices_on() {
	curl -sf "$dev/metrics" | awk -v v="$1" 'index($0, "otacd_fleet_devices{product=\"bench\",version=\"" v "\",cohort=\"*\"}") == 1 { n = $2 } END { print n + 0 }'
}

# run LABEL MQTT_PORT: one daemon, one simulator, one step
run() {
	label=$1
	state="$tmp/$label"
	mkdir -p "$state"
	cat >"$tmp/$label.yml" <<EOF
time_scale: $scale
poll_interval: 6h
device_register_burst: $devices
device_register_rate: $devices
keys:
  bench: { spec: $tmp/k.pem }
push: { url: "mqtt://127.0.0.1:$2", username: otacd, password_file: $tmp/otacd.pw, window: 1,
        capacity: $capacity, per_device_max: 1000 }
EOF
	nice "$bin/otacd" --config "$tmp/$label.yml" --state-dir "$state" --listen 127.0.0.1:0 \
		--device-listen 127.0.0.1:0 2>>"$state.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd pushsim.sh "$state.log" "$state/otacd-device.url" "$state/fleet.key" "$state/otacd.url"
	dev=$(cat "$state/otacd-device.url")
	export OTACD_URL="$(cat "$state/otacd.url")" OTACD_TOKEN="$(cat "$state/admin.token")"
	nice "$bin/otacd-fleetsim" --engine model --url "$dev" --devices "$devices" --seed 1 --key "$tmp/k.pub" \
		--fleet-key "@$state/fleet.key" --product bench --start-version 1.0.0 --report-every 6h \
		--concurrency 256 --quiet --stats "$state.stats" --mqtt-url "mqtt://127.0.0.1:$2" \
		--mqtt-username fleetsim --mqtt-password-file "$tmp/fleetsim.pw" --mqtt-window-ms 1000 \
		>"$state.sim.log" 2>&1 &
	sim=$!
	pids="$pids $sim"
	# warm-up: otacd knows every device (a cohort hint's window is sized to them)
	t=$(now)
	until [ "$(devices_on 1.0.0)" -ge "$devices" ]; do
		sleep 1
		awk -v a="$t" -v b="$(now)" 'BEGIN { exit !(b - a > 3600) }' &&
			{ echo "pushsim.sh: warm-up did not end: $(devices_on 1.0.0) of $devices" >&2; exit 1; }
	done
	run_id=$("$bin/otactl" trigger "$tmp/rollout.yml" --ref refs/tags/v1.1.0 2>"$state.trigger" |
		sed -n 's/.*run \([0-9]*\).*/\1/p' | head -1)
	# until the step opens, sample the counter; the last sample is the baseline
	rel="" opened=0
	until [ "$opened" -gt 0 ] 2>/dev/null; do
		c0=$(checkins) t0=$(now)
		[ -n "$rel" ] || rel=$(sqlite3 "$state/otacd.db" "SELECT id FROM releases ORDER BY id DESC LIMIT 1" 2>/dev/null || true)
		[ -z "$rel" ] || opened=$(step_open "$rel")
		[ "$opened" -gt 0 ] 2>/dev/null || sleep 0.05
	done
	cw="" cm=""
	wait_s=$(awk -v w="$window_ms" 'BEGIN { print w / 1000 + 0.5 }')
	# the hint window, the first minute, then until the cohort is reached (6 h otacd at most)
	end_s=$(awk -v s="$scale" 'BEGIN { e = 21600 / s * 1.1 + 5; print (e < 61 ? 61 : e) }')
	while :; do
		c=$(checkins) el=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
		awk -v e="$el" -v w="$wait_s" 'BEGIN { exit !(e <= w) }' && cw=$((c - c0)) ew=$el
		awk -v e="$el" 'BEGIN { exit !(e <= 60) }' && cm=$((c - c0))
		awk -v e="$el" -v m="$end_s" 'BEGIN { exit !(e > m) }' && break
		sleep 0.2
	done
	kill $sim
	wait $sim || true
	kill $pid
	wait $pid 2>/dev/null || true
	python3 - "$state.stats" "$opened" "$scale" "$label" "${cw:-0}" "${ew:-1}" "${cm:-0}" "$capacity" \
		"$devices" "$window_ms" <<'EOF'
import json, sys
st = json.load(open(sys.argv[1]))
opened, scale, label = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
cw, ew, cm, cap, n, win = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
r = st.get("reach", {}).get("1.1.0", {})
poll = n * scale / 21600
def t(k):
    if k not in r:
        return "      -"
    ms = r[k] - opened
    return "%7.0f s otacd (%6.2f s real)" % (ms / 1000, ms / 1000 / scale)
push = st.get("push", {})
print("  %-7s %d devices, time scale %g, hint window %d ms real: cohort offered %d" % (label, n, scale, win, r.get("devices", 0)))
print("          step open -> 50 %%: %s, 95 %%: %s, 100 %%: %s" % (t("p50_ms"), t("p95_ms"), t("p100_ms")))
print("          check-ins otacd counted: %d in the first %.1f s (%.0f/s), %d in the first minute (%.0f/s);"
      " capacity %d/s + polling %.0f/s = %.0f/s" % (cw, ew, cw / ew, cm, cm / 60.0, cap, poll, cap + poll))
print("          hints received %d, ignored %d, check-ins brought forward %d" % (
    push.get("hints_received", 0), push.get("hints_ignored", 0), push.get("checkins_brought_forward", 0)))
h = r.get("from_first_hint_ms")
if h:
    print("          from the first hint: 50 %% %.2f s, 95 %% %.2f s, 100 %% %.2f s real" % (
        h["p50"] / 1000 / scale, h["p95"] / 1000 / scale, h["p100"] / 1000 / scale))
p95 = r.get("p95_ms", 0) - opened if "p95_ms" in r else 0
open(sys.argv[1] + ".p95", "w").write("%d %d" % (p95, p95 / scale))
EOF
	set -- $(cat "$state.stats.p95")
	eval "p95_$label=$1 p95real_$label=$2"
}

"$mosq" -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.log" 2>&1 &
pids="$pids $!"
i=0
until (echo >/dev/tcp/127.0.0.1/$mqp) 2>/dev/null || python3 -c "import socket; socket.create_connection(('127.0.0.1', $mqp), 1)" 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "pushsim.sh: mosquitto did not start: $(cat "$tmp/mosquitto.log")" >&2; exit 1; }
	sleep 0.1
done
run push "$mqp"
run polling "$(port)"
awk -v a="$p95_polling" -v b="$p95_push" -v c="$p95real_push" 'BEGIN {
	printf "  time from the step opening to 95 %% of its cohort, otacd time, polling / push: %.0f s / %.0f s = %.1f\n",
		a / 1000, b / 1000, (b > 0 ? a / b : 0)
	printf "  the same for a real fleet (time scale 1: the hint window is real time, the poll interval otacd time),\n"
	printf "  polling otacd time / push real time: %.0f s / %.1f s = %.0f\n", a / 1000, c / 1000, (c > 0 ? a / c : 0) }'
