#!/bin/sh
# device_footprint.sh - libotadev's flash (code) and RAM (struct otadev)
# per build configuration, for a Cortex-M3 (arm-none-eabi-gcc) and the
# host; each figure with its ratio to the default configuration (-Os,
# OTADEV_IO_MAX 2048, 64 tokens, 8 queued reports) of the same run.
set -e
src=${OTACD_SRC:-.}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ln -s /usr/include/jsmn.h "$tmp/jsmn.h"
printf '#include "otadev.h"\nchar otadev_ram[sizeof(struct otadev)];\n' > "$tmp/ram.c"

measure() { # CC ARCHFLAGS OPT DEFS -> "text ram"
	cc=$1; arch=$2; opt=$3; defs=$4
	text=0
	for f in otadev otadev_json otadev_mcuboot otadev_chain; do
		$cc -std=c99 $arch $opt $defs -ffunction-sections -I"$tmp" -I"$src/device" -c "$src/device/$f.c" -o "$tmp/$f.o"
		t=$(size "$tmp/$f.o" 2>/dev/null | awk 'NR==2 {print $1}')
		[ -n "$t" ] || t=$(arm-none-eabi-size "$tmp/$f.o" | awk 'NR==2 {print $1}')
		text=$((text + t))
	done
	$cc -std=c99 $arch $defs -I"$tmp" -I"$src/device" -c "$tmp/ram.c" -o "$tmp/ram.o"
	ram=$(nm -S "$tmp/ram.o" 2>/dev/null | awk '/otadev_ram/ {print $2}')
	echo "$text $((0x$ram))"
}

if command -v arm-none-eabi-gcc >/dev/null; then
	CC=arm-none-eabi-gcc; ARCH="-mcpu=cortex-m3 -mthumb"; target=cortex-m3
else
	CC=cc; ARCH=""; target=host
fi
set -- $(measure $CC "$ARCH" -Os "")
base_text=$1; base_ram=$2
printf '%-44s %8s %6s %8s %6s\n' "configuration ($target)" "flash B" "ratio" "RAM B" "ratio"
for cfg in "-Os|" "-O2|" "-Os|-DOTADEV_IO_MAX=512 -DOTADEV_TOKENS=48 -DOTADEV_QUEUE=4" \
	   "-Os|-DOTADEV_IO_MAX=4096 -DOTADEV_QUEUE=16"; do
	opt=${cfg%%|*}; defs=${cfg#*|}
	set -- $(measure $CC "$ARCH" "$opt" "$defs")
	printf '%-44s %8d %6.2f %8d %6.2f\n' "$opt ${defs:-(defaults)}" "$1" \
		"$(echo "$1 / $base_text" | bc -l)" "$2" "$(echo "$2 / $base_ram" | bc -l)"
done

# The whole sample firmware (examples/sensor-node) with libotadev on its MCU
# hooks, as linked (-Os, --gc-sections), per board: the image's flash and
# RAM, and what of it the update agent takes: the core's and the port's
# code (their objects before the linker drops unused sections: an upper
# bound), the state (struct otadev, symbol "ota").
if command -v arm-none-eabi-gcc >/dev/null && [ -r /usr/include/jsmn.h ]; then
	mkdir -p "$tmp/fw"
	(cd "$src/examples/sensor-node" && tar -cf - --exclude=./build .) | (cd "$tmp/fw" && tar -xf -)
	printf '\n%-28s %8s %6s %8s %10s %10s %8s\n' "sensor-node firmware" "flash B" "data B" "bss B" \
		"core code" "port code" "state B"
	for b in mps2-an385 mps2-an386; do
		make -s -C "$tmp/fw" BOARD=$b OTADEV="$(cd "$src/device" && pwd)" >/dev/null
		o="$tmp/fw/build/$b"
		set -- $(arm-none-eabi-size "$o/app.elf" | awk 'NR==2 {print $1, $2, $3}')
		core=$(arm-none-eabi-size "$o"/obj/otadev/*.o | awk 'NR>1 {t += $1} END {print t}')
		port=$(arm-none-eabi-size "$o/obj/ota_port.o" "$o/obj/ota_link.o" "$o/obj/sha256.o" | awk 'NR>1 {t += $1} END {print t}')
		state=$(arm-none-eabi-nm -S "$o/app.elf" | awk '$4 == "ota" {print $2}')
		printf '%-28s %8d %6d %8d %10d %10d %8d\n' "$b" "$1" "$2" "$3" "$core" "$port" "$((0x$state))"
	done
fi
