#!/bin/sh
# build-deb.sh OUTDIR - build the Debian package (debian/), source and
# binary (`dpkg-buildpackage -us -uc`), from a copy of the tree, so the
# build (which starts with `make clean`) leaves the working tree's build/
# alone.  The .deb, the source package (.dsc, .tar.xz), .buildinfo and
# .changes land in OUTDIR.  Files git ignores are not copied; uncommitted
# edits are.
set -eu
out=$(mkdir -p "$1" && cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/otacd-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/otacd"
(cd "$top" && git ls-files -z --cached --others --exclude-standard |
	xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
	tar --null -T - -cf -) | tar -C "$tmp/otacd" -xf -
(cd "$tmp/otacd" && dpkg-buildpackage -us -uc -j"${DEB_JOBS:-2}")
rm -f "$out"/otacd_* "$out"/otacd-dbgsym_*
cp "$tmp"/*.deb "$tmp"/*.dsc "$tmp"/*.tar.* "$tmp"/*.buildinfo "$tmp"/*.changes "$out"/
ls "$out"/*.deb
