/*
 * fuzz_cron.c - libFuzzer target for the cron expression parser
 * (orchestrator/sched/cron.c), which reads `schedules:` from otacd's
 * config.
 *
 * The input is an expression of any bytes, NULs included.  Besides
 * crashes and UB, the target aborts when a refusal gives no reason, when
 * an accepted expression sets a bit outside its field's range, and when
 * the slot search disagrees with itself: the next slot after a time must
 * be a slot at or before itself (cron_prev), and strictly later.
 *
 *   make fuzz   or   build/fuzz/fuzz_cron fuzz/corpus/fuzz_cron
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/sched/cron.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const int64_t t = INT64_C(1767225600000); /* 2026-01-01T00:00Z */
	struct cron_expr c;
	char why[256] = "";
	int64_t next;

	if (cron_parse(&c, (const char *)data, size, why, sizeof(why)) < 0) {
		if (!why[0])
			abort();
		return 0;
	}
	if ((c.minute >> 60) || (c.hour >> 24) || (c.mday & 1) ||
	    (c.month & 1) || (c.month >> 13) || (c.wday >> 7))
		abort();
	if (!c.minute || !c.hour || !c.mday || !c.month || !c.wday)
		abort();
	next = cron_next(&c, t);
	if (next >= 0 && (next <= t || cron_prev(&c, next) != next || next % 60000))
		abort();
	return 0;
}
