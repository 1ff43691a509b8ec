#!/bin/sh
# uboot_boot.sh - an EMULATION of the bootloader side of otacd-device's
# U-Boot backend, for the tests.  It is not U-Boot: it does at each
# "power-on" what U-Boot (CONFIG_BOOTCOUNT_LIMIT, CONFIG_BOOTCOUNT_ENV) and
# the boot script of docs/device.md do with the environment, on the same
# environment through the real fw_printenv / fw_setenv, and "boots" a slot
# by writing the kernel command line otacd-device reads (otacd.slot=a|b).
#
#   uboot_boot.sh FW_ENV_CONFIG CMDLINE_FILE   prints "boot X" or "altboot X"
#
# Exit 1 when the environment cannot be read (real U-Boot would boot its
# built-in default environment; the tests treat that as a failure).
set -eu
conf=$1
cmdline=$2
get() { fw_printenv -c "$conf" -n "$1"; }
ua=$(get upgrade_available) || exit 1
bc=$(get bootcount) || exit 1
bl=$(get bootlimit) || exit 1
slot=$(get otacd_slot) || exit 1
[ -n "$slot" ] || slot=a
# bootcount_load(): bootcount when upgrade_available, else 0; bootcount_inc()
# adds 1; bootcount_store() saves it only when upgrade_available
if [ "${ua:-0}" = 1 ]; then
	bc=$((${bc:-0} + 1))
	fw_setenv -c "$conf" bootcount "$bc"
else
	bc=1
fi
# autoboot: bootlimit set and bootcount > bootlimit: altbootcmd, not bootcmd
what=boot
if [ "${bl:-0}" -gt 0 ] && [ "$bc" -gt "$bl" ]; then
	# altbootcmd: the other slot, nothing on trial, one saveenv
	if [ "$slot" = b ]; then slot=a; else slot=b; fi
	fw_setenv -c "$conf" otacd_slot "$slot" upgrade_available 0 bootcount 0
	what=altboot
fi
# bootcmd (otacd_boot): boot ${otacd_slot}, passing it to the kernel
echo "console=ttyS0,115200 rootwait ro otacd.slot=$slot" > "$cmdline"
echo "$what $slot"
