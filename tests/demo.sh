#!/bin/sh
# demo.sh BINDIR - what `make demo` runs: start otacd on its embedded
# defaults (state in ./otacd-state, API and page on 127.0.0.1:8470, two local
# agents), run the example pipeline through otactl, follow its logs live,
# show the result and the artifacts, and say where to look.
#
# From a terminal otacd keeps running until Ctrl-C; otherwise (scripts, CI)
# it stops once the run is shown.
set -eu
bin=$1
url=${OTACD_URL:-http://127.0.0.1:8470}
state=./otacd-state

if curl -s -o /dev/null "$url/api/v1/health"; then
	echo "demo: something already answers on $url; stop it first (or set OTACD_URL)." >&2
	exit 1
fi

mkdir -p "$state"
# A signing key for the demo's release stage, made once (a PEM file; real
# deployments name a PKCS#11 URI instead: docs/signing.md).
if [ ! -f "$state/demo-key.pem" ]; then
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$state/demo-key.pem" 2>/dev/null
	chmod 600 "$state/demo-key.pem"
fi
cat > "$state/demo-config.yml" <<EOT
keys:
  demo: { spec: $(cd "$state" && pwd)/demo-key.pem }
EOT
# --time-scale 3600: jobs run in real time, but an hour of a rollout's holds
# takes a second, so the 30-hour walk below is over in about a minute.
"$bin/otacd" --state-dir "$state" --listen "${url#http://}" --config "$state/demo-config.yml" \
	--time-scale 3600 2>> "$state/otacd.log" &
daemon=$!
sim=
trap 'kill $sim $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT INT TERM

i=0
until curl -s -o /dev/null "$url/api/v1/health"; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "demo: otacd did not start" >&2; exit 1; }
	kill -0 $daemon 2>/dev/null || { echo "demo: otacd exited" >&2; exit 1; }
	sleep 0.1
done

# A fleet of 5,000 simulated devices (A/B slots, MCUboot signature checks,
# reports), polling otacd's built-in update server.
openssl pkey -in "$state/demo-key.pem" -pubout -out "$state/demo-key.pub" 2>/dev/null
"$bin/otacd-fleetsim" --url "$(cat "$state/otacd-device.url")" --fleet-key "$(cat "$state/fleet.key")" \
	--key "$state/demo-key.pub" --product hello --devices 5000 --seed 1 --start-version 0.0.1 \
	--duration 3600 > "$state/fleetsim.log" 2>&1 &
sim=$!

export OTACD_URL="$url"
export OTACD_TOKEN="$(cat "$state/admin.token")"
ctl="$bin/otactl"

echo
# each demo run releases a new version: v0.1.N, N = runs so far + 1
n=$(( $("$ctl" runs --json --limit 500 | grep -o '"id":' | wc -l) + 1 ))
tag="refs/tags/v0.1.$n"

echo "== otactl lint pipelines/hello-release.yml"
"$ctl" lint pipelines/hello-release.yml
echo
echo "== otactl trigger pipelines/hello-release.yml --ref $tag"
run=$("$ctl" trigger pipelines/hello-release.yml --ref "$tag")
echo "run $run"
echo
echo "== otactl logs $run -f   (live: the agents run the jobs, then otacd walks the rollout)"
"$ctl" logs "$run" -f
echo
echo "== otactl show $run"
"$ctl" show "$run"
echo
echo "== otactl artifacts ls $run"
"$ctl" artifacts ls "$run"
echo
release=$(curl -s -H "Authorization: Bearer $OTACD_TOKEN" "$url/api/v1/releases" | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2)
echo "== otactl verify $release   (signatures, digests, provenance; offline checks)"
"$ctl" verify "$release"
echo
echo "== otactl rollout status $release   (where the release is in the fleet)"
"$ctl" rollout status "$release"
echo
echo "== otactl gates $release | tail -4   (every gate check is stored with its bounds)"
"$ctl" gates "$release" | tail -4
echo
echo "== otactl audit --release $release"
"$ctl" audit --release "$release"
echo
echo "== the simulated fleet (otacd-fleetsim)"
grep "^fleetsim t=\|^fleetsim final" "$state/fleetsim.log" | tail -1
echo
echo "== agents"
"$ctl" agents
cat <<EOT

Where to look:
  status page   $url/#token=$OTACD_TOKEN
  JSON API      curl -H "Authorization: Bearer \$(cat $state/admin.token)" $url/api/v1/runs
  CLI           OTACD_TOKEN=\$(cat $state/admin.token) $ctl runs
  daemon log    $state/otacd.log
  state         $state (SQLite database, logs, artifacts)
  device API    $(cat "$state/otacd-device.url")/metrics (Prometheus text)
  roll back     $ctl rollback $release --reason "why"
EOT
if [ -t 0 ]; then
	echo
	echo "otacd keeps running; press Ctrl-C to stop it."
	wait $daemon
fi
