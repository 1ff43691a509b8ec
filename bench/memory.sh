#!/bin/sh
# bench/memory.sh BINDIR [BASELINE_BINDIR] - idle memory of otacd (with its
# two local agents, as `make demo` runs it) and of a Buildbot master,
# measured in the same run from /proc/PID/smaps_rollup: Rss split into
# private pages (this process alone) and shared ones (library text also
# mapped by others), and Pss (shared pages divided among their users).
# With BASELINE_BINDIR (another build, e.g. main's) that otacd is measured
# first, the same way, for a before/after in one run; each otacd line is
# followed by its Rss by kind of mapping (heap, other anonymous, its own
# file, libraries) with its thread count, and the libraries it maps with
# the most Rss.  Buildbot is
# Debian's `buildbot` package with its sample master.cfg (one worker, one
# builder, no web UI); without it the comparison is skipped and said so.
set -eu
. "$(dirname "$0")/lib.sh"
bin=$1
base=${2:-}
bench_begin memory

# mem PID - "Rss R MB = private P MB + shared S MB; Pss Q MB"
mem() {
	awk '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Shared_(Clean|Dirty):/{s+=$2} /^Private_(Clean|Dirty):/{v+=$2}
	     END{printf "Rss %5.1f MB = private %5.1f MB + shared %5.1f MB; Pss %5.1f MB\n", r/1024, v/1024, s/1024, p/1024}' \
		"/proc/$1/smaps_rollup"
}

# libs PID - the five libraries with the most Rss, "name KB" each
libs() {
	awk '/^[0-9a-f]+-/{n=$6; sub(/.*\//, "", n)} /^Rss:/{if (n ~ /\.so/) r[n]+=$2}
	     END{for (k in r) printf "%d %s\n", r[k], k}' "/proc/$1/smaps" |
		sort -rn | head -5 | awk '{printf "%s %s KB; ", $2, $1}'
}

# parts PID - Rss by kind of mapping: the heap, other anonymous memory
# (thread stacks, malloc arenas, SQLite's shared memory), the program's own
# file, shared libraries (and how much of theirs is private: relocated
# data), and the thread count
parts() {
	awk -v exe="$(readlink "/proc/$1/exe")" '
	     /^[0-9a-f]+-[0-9a-f]+ /{n=$6; k = n == "[heap]" ? "heap" : n == exe ? "exe" : n ~ /\.so/ ? "lib" : "anon"}
	     /^Rss:/{r[k]+=$2} /^Private_(Clean|Dirty):/{if (k == "lib") lp+=$2}
	     END{printf "heap %d KB, other anonymous %d KB, program %d KB, libraries %d KB (%d KB private)",
	         r["heap"], r["anon"], r["exe"], r["lib"], lp}' "/proc/$1/smaps"
	printf "; %d threads\n" "$(ls "/proc/$1/task" | wc -l)"
}

# idle BINDIR LABEL - start that otacd with two local agents, wait until
# it idles, print its memory and its agents', stop it
idle() {
	dir="$tmp/otacd-$2"
	"$1/otacd" --state-dir "$dir" --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 \
		--local-agents 2 2>"$dir.log" &
	otacd=$!
	pids="$pids $otacd"
	bench_wait_otacd memory "$dir.log" "$dir/otacd.url"
	sleep 2    # agents registered, start-up work done
	echo "  otacd ($2)  $(mem "$otacd")"
	echo "      by kind: $(parts "$otacd")"
	echo "      top libraries: $(libs "$otacd")"
	grep -q 'libxml2\|libicuuc' "/proc/$otacd/maps" && echo "      libxml2/ICU mapped at idle" || echo "      libxml2/ICU not mapped at idle"
	grep -q 'libcurl\|libpq' "/proc/$otacd/maps" && echo "      libcurl/libpq mapped at idle" || echo "      libcurl/libpq not mapped at idle"
	for a in $(pgrep -P "$otacd" otacd-agent || true); do
		echo "  otacd-agent   $(mem "$a")"
	done
	if pgrep -P "$otacd" otacd-git >/dev/null; then
		echo "  (an otacd-git helper is running: not idle)"
	fi
	kill "$otacd"
	wait "$otacd" 2>/dev/null || true
}

[ -z "$base" ] || idle "$base" baseline
idle "$bin" this

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
