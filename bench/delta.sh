#!/bin/sh
# delta.sh BINDIR - delta updates on real firmware (issue 15, docs/delivery.md
# "Delta updates").
#
# Builds five successive versions of examples/sensor-node (mps2-an385) with
# the changes releases make: a version bump, a changed constant, a new
# function, a new log string, a rebuilt update library with another buffer
# size.  For each successive pair (and 1 -> 5) prints the full image size,
# the patch size / full size for otacd's format (VCDIFF, xdelta3 -S none -A
# -W 16384, what libotadev decodes) against xdelta3's default (secondary
# compression), bsdiff and zstd --patch-from (formats a Cortex-M cannot
# apply in its RAM, for reference), then libotadev's apply time per image
# against writing the full image through the same hooks (same run), its
# RAM, and the bytes a rollout to 10,000 devices on the previous version
# moves with and without deltas.  Needs arm-none-eabi-gcc; skips without.
set -eu
bin=$(CDPATH= cd -- "$1" && pwd)
src=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v xdelta3 >/dev/null; then
	echo "delta: arm-none-eabi-gcc or xdelta3 missing; skipped"
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$src/examples/sensor-node" "$work/sn"
cd "$work/sn"
build() { # VERSION OUT [make args]
	v=$1 o=$2
	shift 2
	make -s OTADEV="$src/device" VERSION="$v" "$@" >/dev/null
	cp build/mps2-an385/app.bin "$work/$o"
}
build 1.0.0 v1.bin
sed -i 's/#define SAMPLE_HZ   50u/#define SAMPLE_HZ   100u/' src/main.c
build 1.1.0 v2.bin
cat >> src/sensor.c <<'C'

/* 1.2.0: a moving average over the last samples */
uint32_t sensor_average(const uint16_t *v, unsigned n)
{
	uint32_t sum = 0;
	unsigned i;
	for (i = 0; i < n; i++)
		sum += v[i];
	return n ? sum / n : 0;
}
C
sed -i 's/^void sensor_sample(struct sensor \*s, struct sample \*out)$/uint32_t sensor_average(const uint16_t *v, unsigned n);\nvoid sensor_sample(struct sensor *s, struct sample *out)/' src/sensor.c
sed -i 's/^#include "version.h"$/#include "version.h"\nuint32_t sensor_average(const uint16_t *v, unsigned n);/' src/main.c
sed -i 's/\(sensor_sample(&sensor, &s);\)/\1\n\t{ static uint16_t h[4]; h[ticks \& 3] = (uint16_t)ticks; (void)sensor_average(h, 4); }/' src/main.c
build 1.2.0 v3.bin
sed -i 's/#define LINE_MAX    16u/#define LINE_MAX    24u/' src/main.c
build 1.3.0 v4.bin
build 1.4.0 v5.bin 'ARCH=-mcpu=cortex-m3 -mthumb -DOTADEV_IO_MAX=1024'
cd "$work"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
printf '%-8s %7s | %-22s %-14s %-14s %-14s | %s\n' pair full "vcdiff (otacd) B ratio" "xdelta3 -9" bsdiff "zstd -19 pf" "apply us / copy us (ratio), RAM"
sum_full=0 sum_delta=0 n=0
for pair in "1 2" "2 3" "3 4" "4 5" "1 5"; do
	set -- $pair
	a=v$1.bin b=v$2.bin
	full=$(stat -c %s "$b")
	xdelta3 -f -e -S none -A -W 16384 -s "$a" "$b" p.vcdiff
	xdelta3 -f -e -9 -s "$a" "$b" p.xd9
	bsdiff "$a" "$b" p.bsdiff
	zstd -q -f -19 --single-thread --patch-from="$a" "$b" -o p.zst 2>/dev/null
	vc=$(stat -c %s p.vcdiff)
	xd9=$(stat -c %s p.xd9)
	bs=$(stat -c %s p.bsdiff)
	zs=$(stat -c %s p.zst)
	xdelta3 -f -d -s "$a" p.vcdiff check.bin
	cmp -s check.bin "$b" || { echo "delta: xdelta3 does not rebuild $b"; exit 1; }
	ap=$("$bin/delta-bench" "$a" p.vcdiff "$b" 200)
	printf '%-8s %7d | %6d %-15s %5d %-8s %5d %-8s %5d %-8s | %s\n' "v$1->v$2" "$full" "$vc" "$(ratio "$vc" "$full")" \
		"$xd9" "$(ratio "$xd9" "$full")" "$bs" "$(ratio "$bs" "$full")" "$zs" "$(ratio "$zs" "$full")" "$ap"
	if [ "$1 $2" != "1 5" ]; then
		sum_full=$((sum_full + full))
		sum_delta=$((sum_delta + vc))
		n=$((n + 1))
	fi
done
echo "rollout of each of the $n releases to 10,000 devices on the previous one: full images $((sum_full * 10000)) B," \
     "with deltas $((sum_delta * 10000)) B ($(ratio "$sum_delta" "$sum_full") of full)"
