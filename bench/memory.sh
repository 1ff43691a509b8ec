#!/bin/sh
# bench/memory.sh BINDIR - idle memory of otacd (with its two local agents,
# as `make demo` runs it) and of a Buildbot master, measured in the same
# run from /proc/PID/smaps_rollup: Rss split into private pages (this
# process alone) and shared ones (library text also mapped by others), and
# Pss (shared pages divided among their users).  Buildbot is Debian's
# `buildbot` package with its sample master.cfg (one worker, one builder,
# no web UI); without it the comparison is skipped and said so.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$1
bench_begin memory

# mem PID - "Rss R MB = private P MB + shared S MB; Pss Q MB"
mem() {
	awk '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Shared_(Clean|Dirty):/{s+=$2} /^Private_(Clean|Dirty):/{v+=$2}
	     END{printf "Rss %5.1f MB = private %5.1f MB + shared %5.1f MB; Pss %5.1f MB\n", r/1024, v/1024, s/1024, p/1024}' \
		"/proc/$1/smaps_rollup"
}

"$bin/otacd" --state-dir "$tmp/otacd" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 \
	--local-agents 2 2>"$tmp/otacd.log" &
otacd=$!
pids="$otacd"
bench_wait_otacd memory "$tmp/otacd.log" "$tmp/otacd/otacd.url"
sleep 2    # agents registered, start-up work done
echo "  otacd         $(mem "$otacd")"
for a in $(pgrep -P "$otacd" otacd-agent || true); do
	echo "  otacd-agent   $(mem "$a")"
done
if pgrep -P "$otacd" otacd-git >/dev/null; then
	echo "  (an otacd-git helper is running: not idle)"
fi

if ! command -v buildbot >/dev/null; then
	echo "  buildbot      not installed (Debian package buildbot): no comparison in this run"
	exit 0
fi
buildbot create-master -r "$tmp/bb" >/dev/null 2>&1
# the sample configuration, on a free port
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed "s/'port': 9989/'port': $port/" "$tmp/bb/master.cfg.sample" >"$tmp/bb/master.cfg"
if ! buildbot start "$tmp/bb" >"$tmp/bb.log" 2>&1; then
	echo "  buildbot      did not start: $(tail -2 "$tmp/bb.log")"
	exit 0
fi
sleep 2
bb=$(cat "$tmp/bb/twistd.pid")
echo "  buildbot      $(mem "$bb")  (master $(dpkg-query -W -f '${Version}' buildbot 2>/dev/null), sample master.cfg)"
buildbot stop "$tmp/bb" >/dev/null 2>&1 || kill "$bb"
