#!/bin/sh
# mtls_fleetsim.sh BINDIR [DEVICES [SECONDS]] - device check-ins per second
# over mutual TLS (client certificates, issue 13) against HMAC tokens over
# the same TLS listener, in the same run.
#
# Two fresh daemons with the device listener on TLS (a test server
# certificate, client_ca = the daemon's device CA, poll interval 1 s so
# DEVICES devices demand DEVICES check-ins a second): one with
# `device_auth: cert`, where otacd-fleetsim --provisioner makes a key and a
# CSR per device and gets its certificate from POST /device/v1/provision,
# then checks in and reports by certificate; one with `device_auth: token`,
# where otacd-fleetsim registers the devices with the fleet key.  Each
# simulator runs SECONDS (20) real seconds after provisioning.  Prints
# check-ins a second (from the simulator's --stats), the provisioning time,
# and the ratio mTLS/token.  Nothing asserted.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-3000}
secs=${3:-20}
bench_begin mtls

(
	cd "$tmp"
	N='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'
	# shellcheck disable=SC2086
	openssl req -x509 $N -keyout srvca.key -out srvca.pem -days 2 -subj /CN=bench-ca
	# shellcheck disable=SC2086
	openssl req $N -keyout srv.key -out srv.csr -subj /CN=otacd-bench
	printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >srv.ext
	openssl x509 -req -in srv.csr -CA srvca.pem -CAkey srvca.key -set_serial 0x1001 -days 2 -extfile srv.ext -out srv.pem
) >/dev/null 2>&1
bench_keypair "$tmp"
now_ms() { date +%s%3N; }

# run MODE (cert | token): sets rate, prov_s
run() {
	state="$tmp/$1/state"
	mkdir -p "$state"
	if [ "$1" = cert ]; then
		"$bin/otactl" fleet ca init --offline --state "$state" --cn 'bench device CA' --days 30 >/dev/null
	fi
	cat >"$tmp/$1/otacd.yml" <<EOF
poll_interval: 1s
device_auth: $1
device_register_burst: $devices
device_register_rate: $devices
tls:
  cert: $tmp/srv.pem
  key: $tmp/srv.key
  client_ca: $state/devca/ca.pem
EOF
	[ "$1" = cert ] || sed -i '/client_ca/d' "$tmp/$1/otacd.yml"
	OTACD_CACERT="$tmp/srvca.pem" "$bin/otacd" --config "$tmp/$1/otacd.yml" --state-dir "$state" \
		--listen 127.0.0.1:0 --device-listen 127.0.0.1:0 --local-agents 0 2>>"$tmp/$1.log" &
	pid=$!
	pids="$pids $pid"
	bench_wait_otacd mtls_fleetsim.sh "$tmp/$1.log" "$state/otacd-device.url" "$state/otacd.url" "$state/admin.token"
	if [ "$1" = cert ]; then
		tok=$(OTACD_URL=$(cat "$state/otacd.url") OTACD_TOKEN=$(cat "$state/admin.token") OTACD_CACERT="$tmp/srvca.pem" \
			"$bin/otactl" fleet provisioners add sim --prefix dev- --max "$devices" --rate 100000 2>/dev/null |
			grep -E '^[0-9a-f]{64}$')
		cred="--provisioner $tok"
	else
		cred="--fleet-key @$state/fleet.key"
	fi
	t0=$(now_ms)
	# shellcheck disable=SC2086
	# --engine model: the handshake cost is measured with the model's
	# transfers, as in docs/benchmarks.md (the core engine opens one
	# connection per device change on a worker, which this ratio would mix in)
	"$bin/otacd-fleetsim" --engine model --url "$(cat "$state/otacd-device.url")" --devices "$devices" --seed 1 --key "$tmp/k.pub" \
		$cred --product fw --report-every 1h --duration "$secs" --concurrency 512 --quiet \
		--cacert "$tmp/srvca.pem" --stats "$tmp/$1.stats" >"$tmp/$1.sim.log" 2>&1 || true
	t1=$(now_ms)
	kill $pid
	wait $pid 2>/dev/null || true
	c=$(stat_of "$tmp/$1.stats" checkins)
	f=$(stat_of "$tmp/$1.stats" requests_failed)
	prov_s=$(awk -v a="$t0" -v b="$t1" -v s="$secs" 'BEGIN { printf "%.1f", (b - a) / 1000 - s }')
	rate=$(awk -v c="${c:-0}" -v s="$secs" 'BEGIN { printf "%.0f", c / s }')
	printf '  %-5s %d devices: %s check-ins in %d s = %s/s (failed requests %s); provisioning/registration took %s s\n' \
		"$1" "$devices" "${c:-0}" "$secs" "$rate" "${f:-?}" "$prov_s"
}

run token
tok_rate=$rate
run cert
awk -v a="$rate" -v b="$tok_rate" 'BEGIN { printf "  mTLS/token: check-ins per second %.2f\n", (b > 0 ? a / b : 0) }'
