#!/bin/sh
# origin.sh BINDIR [DEVICES] - who serves the image bytes of one rollout
# (issue 15): otacd itself, the origin, the cache.
#
# One rollout (1 % / 10 % / 100 %, 1 h holds at time scale 600, polls every
# 1 h) of a two-board release to DEVICES (20,000) otacd-fleetsim devices, each
# downloading its own image (no --shared-downloads; flaky devices resume with
# Range), twice in this invocation:
#
#   baseline  image_origin otacd: every byte from otacd's device API;
#   cdn       artifact_store s3 (s3rver, from npm) as the origin, nginx with
#             proxy_cache in front of it as the CDN, image_origin cdn.
#
# Prints, per run: devices confirmed, bytes otacd sent
# (otacd_image_bytes_served_total), bytes the origin sent (nginx's
# $upstream_response_length, misses only), bytes the cache sent
# ($body_bytes_sent), cache hits / misses; then otacd's bytes cdn/baseline.
# Needs nginx (nginx-light) and s3rver (~/.cache/otacd-npm or
# $OTACD_S3RVER); skips with a message without them.  Figures only.
# ORIGIN_RUNS=cdn runs the cdn run alone.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$(cd "${1:-build/bin}" && pwd)
devices=${2:-20000}
timeout=${ORIGIN_TIMEOUT:-$((devices / 100 > 900 ? devices / 100 : 900))}
s3rver=${OTACD_S3RVER:-$HOME/.cache/otacd-npm/node_modules/.bin/s3rver}
nginx=${OTACD_NGINX:-/usr/sbin/nginx}
if [ ! -x "$s3rver" ] || [ ! -x "$nginx" ]; then
	echo "  SKIP: needs nginx ($nginx) and s3rver ($s3rver): see .ci/run"
	exit 0
fi
bench_begin origin "${ORIGIN_KEEP:-}"
chmod 0711 "$tmp"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitport() { i=0; until curl -s -o /dev/null "http://127.0.0.1:$1/"; do i=$((i + 1)); [ $i -lt 200 ] || return 1; sleep 0.1; done; }

bench_keypair "$tmp"
bench_rollout_yml "$tmp/rollout.yml" /dev/urandom

# s3rver (the origin) and nginx (the cache) for the cdn run
s3p=$(port)
mkdir -p "$tmp/s3" "$tmp/ngx/tmp" "$tmp/ngx/cache"
chmod -R 0777 "$tmp/ngx"
"$s3rver" -d "$tmp/s3" -a 127.0.0.1 -p "$s3p" --configure-bucket otacd --silent >"$tmp/s3rver.log" 2>&1 &
pids="$pids $!"
waitport "$s3p" || { echo "origin.sh: s3rver did not start" >&2; exit 1; }
echo "S3RVER:S3RVER" >"$tmp/s3.cred"
ngp=$(port)
user=""
[ "$(id -u)" = 0 ] && user="user nobody nogroup;"
cat >"$tmp/ngx/nginx.conf" <<EOF
$user
daemon off;
worker_processes 1;
pid $tmp/ngx/nginx.pid;
error_log $tmp/ngx/error.log;
events { worker_connections 4096; }
http {
  log_format cache '\$status \$upstream_cache_status \$body_bytes_sent \$upstream_response_length';
  access_log $tmp/ngx/access.log cache;
  client_body_temp_path $tmp/ngx/tmp/body; proxy_temp_path $tmp/ngx/tmp/proxy;
  fastcgi_temp_path $tmp/ngx/tmp/fcgi; uwsgi_temp_path $tmp/ngx/tmp/uwsgi; scgi_temp_path $tmp/ngx/tmp/scgi;
  proxy_cache_path $tmp/ngx/cache levels=1:2 keys_zone=img:4m max_size=1g inactive=1h use_temp_path=off;
  server {
    listen 127.0.0.1:$ngp;
    location /img/ {
      proxy_pass http://127.0.0.1:$s3p/otacd/sha256/;
      proxy_cache img; proxy_cache_key \$uri; proxy_cache_valid 200 1h; proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status always;
    }
  }
}
EOF
"$nginx" -p "$tmp/ngx" -c "$tmp/ngx/nginx.conf" -e stderr >"$tmp/ngx/stderr.log" 2>&1 &
pids="$pids $!"
waitport "$ngp" || { echo "origin.sh: nginx did not start: $(cat "$tmp/ngx/stderr.log")" >&2; exit 1; }

# run LABEL EXTRA_CONFIG: one daemon, one simulator, one rollout
run() {
	label=$1
	bench_fleet_otacd origin.sh "$label" "$devices" "$2"
	: >"$tmp/ngx/access.log"
	t0=$(date +%s.%N)
	# --engine model: whole-image downloads, as the runs in docs/benchmarks.md
	# (the core engine downloads in 2 KiB Range GETs, a different origin load)
	nice "$bin/otacd-fleetsim" --engine model --url "$dev" --devices "$devices" --seed 1 --key "$tmp/k.pub" \
		--fleet-key "@$state/fleet.key" --product bench --start-version 1.0.0 --report-every 1h \
		--until 1.1.0:0.95 --duration "$timeout" --concurrency 256 --quiet --stats "$state.stats" \
		>"$state.sim.log" 2>&1 &
	sim=$!
	pids="$pids $sim"
	"$bin/otactl" trigger "$tmp/rollout.yml" --ref refs/tags/v1.1.0 >"$state.trigger" 2>&1 ||
		{ echo "origin.sh: trigger failed: $(cat "$state.trigger")" >&2; exit 1; }
	wait $sim || true
	bench_fleet_stop
	conf=$(stat_of "$state.stats" confirmed)
	dls=$(stat_of "$state.stats" downloads)
	served=$(metric "$state.metrics" "otacd_image_bytes_served_total ")
	# nginx: origin bytes on misses, bytes sent, hits and misses
	set -- $(awk '{ sent += $3; if ($2 == "MISS" || $2 == "EXPIRED") { miss++; if ($4 ~ /^[0-9]+$/) orig += $4 }
		else if ($2 == "HIT") hit++ } END { printf "%.0f %.0f %d %d\n", orig, sent, hit, miss }' "$tmp/ngx/access.log")
	orig=$1 cache=$2 hits=$3 miss=$4
	if [ "$label" = baseline ]; then orig=$served cache=0 hits=0 miss=0; fi
	printf "  %-8s %6s devices, %6s confirmed, %6s downloads in %4ss: otacd sent %12s B, origin %12s B, cache %12s B (%s hits, %s misses)\n" \
		"$label" "$devices" "${conf:-0}" "${dls:-0}" "$wall" "$served" "$orig" "$cache" "$hits" "$miss"
	eval "served_$label=$served"
}

# ORIGIN_RUNS=cdn skips the baseline (a million devices: otacd would send
# every image itself, ~33 GB over loopback; its bytes are devices x image)
served_baseline=0
case "${ORIGIN_RUNS:-baseline cdn}" in *baseline*) run baseline "" ;; esac
run cdn "artifact_store: { backend: s3, endpoint: \"http://127.0.0.1:$s3p\", bucket: otacd, credentials_file: $tmp/s3.cred }
image_origin: { kind: cdn, url: \"http://127.0.0.1:$ngp/img\" }"
awk -v b="$served_baseline" -v c="$served_cdn" 'BEGIN {
	printf "  image bytes otacd itself sent, cdn / baseline: %s / %s = %.6f\n", c, b, (b > 0 ? c / b : 0) }'
