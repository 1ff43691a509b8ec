#!/bin/sh
# run.sh IMAGE.elf BOARD [OUT.xml] - boot a sensor-node image in QEMU and
# check it over its UART: version line, CRC-valid sample frames, self-test,
# answers to the "v" and "s" commands.  One JUnit testcase per check goes to
# OUT.xml.  Exit 0 when every check passed, 1 otherwise, 2 on bad usage.
#
# Environment: HIL_TIMEOUT (seconds for the whole run, default 30),
# HIL_EXPECT_VERSION / HIL_EXPECT_COUNTER (default: what the Makefile
# builds), QEMU (default qemu-system-arm).  The work is done by hil.py
# (python3 standard library only); see the top of that file.
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
if [ $# -lt 2 ] || [ $# -gt 4 ]; then
	echo "usage: $0 IMAGE.elf BOARD [OUT.xml [POWER.json]]" >&2
	exit 2
fi
if [ ! -r "$1" ]; then
	echo "run.sh: cannot read image '$1'" >&2
	exit 2
fi
command -v python3 >/dev/null 2>&1 || { echo "run.sh: python3 is needed" >&2; exit 2; }
exec python3 -B "$here/hil.py" "$@"
