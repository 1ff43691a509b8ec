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
"$bin/otacd" --state-dir "$state" --listen "${url#http://}" 2>> "$state/otacd.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT INT TERM

i=0
until curl -s -o /dev/null "$url/api/v1/health"; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "demo: otacd did not start" >&2; exit 1; }
	kill -0 $daemon 2>/dev/null || { echo "demo: otacd exited" >&2; exit 1; }
	sleep 0.1
done

export OTACD_URL="$url"
export OTACD_TOKEN="$(cat "$state/admin.token")"
ctl="$bin/otactl"

echo
echo "== otactl lint pipelines/hello.yml"
"$ctl" lint pipelines/hello.yml
echo
echo "== otactl trigger pipelines/hello.yml"
run=$("$ctl" trigger pipelines/hello.yml)
echo "run $run"
echo
echo "== otactl logs $run -f   (live, as the agents run the jobs)"
"$ctl" logs "$run" -f
echo
echo "== otactl show $run"
"$ctl" show "$run"
echo
echo "== artifacts"
curl -s -H "Authorization: Bearer $OTACD_TOKEN" "$url/api/v1/runs/$run/artifacts"
echo
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

Release rollouts (soak, canary, production rings) arrive with the rollout
stage kinds; until then pipelines use the 'command' kind shown here.
EOT
if [ -t 0 ]; then
	echo
	echo "otacd keeps running; press Ctrl-C to stop it."
	wait $daemon
fi
