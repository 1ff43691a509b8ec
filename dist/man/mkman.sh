#!/bin/sh
# mkman.sh BIN OUT VERSION - write the man pages into OUT.
#
# The programs' pages are help2man's reading of their own --help (so the
# options listed are the ones they take), plus the sections in NAME.h2m and
# the docs/*.md text named below, converted by md2man.awk: the pages say
# what the docs say.  otacd.yml(5), the pipeline file, is docs/pipeline.md.
# Dates follow SOURCE_DATE_EPOCH (Debian sets it from the changelog).
set -eu
bin=$1 out=$2 version=$3
here=$(dirname "$0")
top=$here/../..
mkdir -p "$out"
date=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%d)
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(date +%s)}"

# page NAME SECTION "what it is" [DOC.md [SECTION-TITLE [SKIPPED-SECTION [ONLY-SECTION]]]]
page() {
	name=$1 sec=$2 what=$3 doc=${4:-} title=${5:-} skip=${6:-} only=${7:-}
	inc=$out/$name.h2m
	cp "$here/$name.h2m" "$inc"
	if [ -n "$doc" ]; then
		printf '[%s]\n' "$title" >> "$inc"
		awk -v skip="$skip" -v only="$only" -f "$here/md2man.awk" "$top/$doc" >> "$inc"
	fi
	help2man --no-info --no-discard-stderr --section="$sec" --version-string="$version" \
		--source="otacd $version" --name="$what" --include="$inc" \
		--output="$out/$name.$sec" "$bin/$name"
	rm -f "$inc"
}

page otacd 8 "continuous delivery for firmware: the daemon" docs/config.md CONFIGURATION
page otactl 1 "the otacd command line"
page otacd-agent 8 "the otacd job runner for build machines and HIL rigs"
page otacd-fleetsim 1 "a simulated device fleet for otacd" docs/fleetsim.md "THE SIMULATOR" Code
page otacd-device 8 "the otacd update agent for Linux devices" docs/device.md USAGE "" otacd-device

{
	printf '.TH OTACD.YML 5 "%s" "otacd %s" "File Formats"\n' "$date" "$version"
	printf '.SH NAME\notacd.yml \\- the otacd pipeline file (.otacd/pipeline.yml)\n'
	printf '.SH DESCRIPTION\n'
	awk -v skip="For otacd developers" -f "$here/md2man.awk" "$top/docs/pipeline.md"
	printf '.SH SEE ALSO\n.BR otacd (8),\n.BR otactl (1)\n'
} > "$out/otacd.yml.5"
