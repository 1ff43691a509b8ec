/*
 * fleet_answer.c - a check-in's answer as the JSON text the device API
 * sends, appended by hand: printf's format parsing was a tenth of a
 * check-in's own cost (issue 19 part 5).  The offer's text is made once
 * per exposure (fleet_offer.c, offer_compile); this only joins the pieces.
 */
#include "fleet_int.h"

#include <stdint.h>
#include <string.h>

struct answer_text {
	char *p;
	size_t len, cap;
};

static void answer_put(struct answer_text *a, const char *s, size_t n)
{
	if (a->len <= a->cap && n < a->cap - a->len)
		memcpy(a->p + a->len, s, n);
	a->len += n;
}

static void answer_int(struct answer_text *a, int64_t v)
{
	char tmp[24];
	size_t n = 0;
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	do
		tmp[sizeof(tmp) - 1 - n++] = (char)('0' + u % 10);
	while ((u /= 10));
	if (v < 0)
		tmp[sizeof(tmp) - 1 - n++] = '-';
	answer_put(a, tmp + sizeof(tmp) - n, n);
}

#define ANSWER_LIT(a, s) answer_put((a), (s), sizeof(s) - 1)

/* {"now":N,"time_scale":S,"next_poll_ms":P,"offer":O[,"revocations":C][,"flags":F]};
 * flags (issue 17) last, NULL or "" for none */
int fleet_answer_format(char *out, size_t cap, int64_t now, const char *scale, int64_t poll, const char *offer,
			int64_t crl, const char *flags)
{
	struct answer_text a = { out, 0, cap };
	ANSWER_LIT(&a, "{\"now\":");
	answer_int(&a, now);
	ANSWER_LIT(&a, ",\"time_scale\":");
	answer_put(&a, scale, strlen(scale));
	ANSWER_LIT(&a, ",\"next_poll_ms\":");
	answer_int(&a, poll);
	ANSWER_LIT(&a, ",\"offer\":");
	answer_put(&a, offer, strlen(offer));
	if (crl > 0) {
		ANSWER_LIT(&a, ",\"revocations\":");
		answer_int(&a, crl);
	}
	if (flags && flags[0]) {
		ANSWER_LIT(&a, ",\"flags\":");
		answer_put(&a, flags, strlen(flags));
	}
	ANSWER_LIT(&a, "}");
	if (a.len >= cap)
		return -1;
	out[a.len] = 0;
	return (int)a.len;
}
