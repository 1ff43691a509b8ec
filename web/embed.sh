#!/bin/sh
# embed.sh FILE... - print a C file that embeds each FILE as a byte array,
# looked up by name with web_asset_find() (orchestrator/web.h).
set -eu
echo '#include <stddef.h>'
echo '#include "orchestrator/web.h"'
i=0
for f in "$@"; do
	printf 'static const unsigned char asset%d[] = {\n' "$i"
	od -An -v -tx1 "$f" | sed -e 's/ *$//' -e 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'
	printf '0x00};\n'
	i=$((i + 1))
done
echo 'const struct web_asset web_assets[] = {'
i=0
for f in "$@"; do
	size=$(wc -c < "$f")
	printf '\t{ "/%s", asset%d, %d },\n' "$(basename "$f")" "$i" "$size"
	i=$((i + 1))
done
echo '\t{ NULL, NULL, 0 }'
echo '};'
