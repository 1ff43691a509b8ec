#!/bin/sh
# firmware.sh BINDIR [ROUNDS] - otacd's overhead on the sample firmware.
#
# The same work twice per round, in the same invocation:
#   by hand   examples/sensor-node/ci-local.sh (build both boards twice for
#             reproducibility, unit tests, cppcheck, HIL in QEMU) in one shell;
#   otacd     the example's .otacd/pipeline.yml up to its release stage, on a
#             real otacd with its 2 local agents and 2 rig agents.
# Prints both wall times and the overhead (target: under 5 %).  The otacd
# run is timed from trigger to the run's end as the client sees it.  Needs
# arm-none-eabi-gcc and qemu-system-arm; skips itself without them.
set -eu
bin=$1
rounds=${2:-3}
src=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
ex="$src/examples/sensor-node"

if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null; then
	echo "firmware: arm-none-eabi-gcc or qemu-system-arm missing; skipped"
	exit 0
fi
work=$(mktemp -d)
trap 'kill $daemon $rig1 $rig2 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
daemon= rig1= rig2=

now_ms() { date +%s%3N; }

# The pipeline without release and rollout, every stage starting with a copy
# of the example's sources (jobs of an uploaded pipeline get no checkout).
awk -v src="$ex" -v core="$src/device" '
	/^  # --- release/ { exit }
	/^stages:/ { print "env:\n  SRC: \"" src "\"\n  OTADEV: \"" core "\"\nstages:"; next }
	/^    steps:$/ { print; getline; sub(/- run: /, "- run: cp -R \"$SRC/.\" .\n      - run: "); print; next }
	{ print }' "$ex/.otacd/pipeline.yml" > "$work/pipeline.yml"

"$bin/otacd" --state-dir "$work/state" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 \
	--local-agents 2 2>"$work/otacd.log" &
daemon=$!
while [ ! -s "$work/state/otacd.url" ]; do sleep 0.05; done
url=$(cat "$work/state/otacd.url")
token=$(cat "$work/state/admin.token")
# each rig its own agent identity (a token file, mode 0600)
(umask 077
 OTACD_URL="$url" OTACD_TOKEN="$token" "$bin/otactl" agents add rig-an385 --labels hil,board=mps2-an385 \
	> "$work/rig1.token" 2>/dev/null
 OTACD_URL="$url" OTACD_TOKEN="$token" "$bin/otactl" agents add rig-an386 --labels hil,board=mps2-an386 \
	> "$work/rig2.token" 2>/dev/null)
"$bin/otacd-agent" --url "$url" --token-file "$work/rig1.token" --name rig-an385 --labels hil,board=mps2-an385 \
	--workdir "$work/rig1" 2>>"$work/rigs.log" &
rig1=$!
"$bin/otacd-agent" --url "$url" --token-file "$work/rig2.token" --name rig-an386 --labels hil,board=mps2-an386 \
	--workdir "$work/rig2" 2>>"$work/rigs.log" &
rig2=$!
export OTACD_URL="$url" OTACD_TOKEN="$token"

hand_total=0
otacd_total=0
i=1
while [ "$i" -le "$rounds" ]; do
	t0=$(now_ms)
	sh "$ex/ci-local.sh" "$work/hand" >/dev/null 2>&1 || { echo "firmware: ci-local.sh failed"; exit 1; }
	t1=$(now_ms)
	run=$("$bin/otactl" trigger "$work/pipeline.yml" --wait 2>/dev/null | head -1 | tr -cd '0-9')
	t2=$(now_ms)
	state=$("$bin/otactl" runs --json --limit 1 | grep -o '"state": *"[a-z]*"' | head -1)
	hand=$((t1 - t0))
	orch=$((t2 - t1))
	printf 'round %d: by hand %d ms, otacd run %s %d ms (%s)\n' "$i" "$hand" "$run" "$orch" "$state"
	hand_total=$((hand_total + hand))
	otacd_total=$((otacd_total + orch))
	i=$((i + 1))
done
awk -v h="$hand_total" -v o="$otacd_total" -v n="$rounds" 'BEGIN {
	printf "firmware pipeline: by hand %.0f ms, through otacd %.0f ms (mean of %d); overhead %+.1f%% (target < 5%%)\n",
	       h / n, o / n, n, (o - h) * 100.0 / h }'
