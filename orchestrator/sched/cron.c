/*
 * cron.c - the cron expression parser and its evaluation; see cron.h.
 *
 * A field becomes a bit set, so matching a minute is five bit tests.  The
 * search for the next (or previous) slot walks calendar units from the
 * largest down: a month that does not match skips to the next month's
 * first minute, a day to the next day, an hour to the next hour, so even
 * "0 0 29 2 1" (Feb 29 or a Monday, Vixie rule) takes a few hundred steps.
 * Calendar arithmetic is timegm()/gmtime_r() on whole seconds: slots are in
 * UTC, whatever the machine's time zone.
 */
#define _DEFAULT_SOURCE
#include "cron.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../../common/util.h"

struct field {
	const char *name;
	int lo, hi;
	const char *const *names;   /* names[i] is value lo + i, or NULL */
};

static const char *const month_names[] = { "jan", "feb", "mar", "apr", "may", "jun",
					   "jul", "aug", "sep", "oct", "nov", "dec", NULL };
static const char *const day_names[] = { "sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL };

static const struct field fields[5] = {
	{ "minute", 0, 59, NULL },
	{ "hour", 0, 23, NULL },
	{ "day of month", 1, 31, NULL },
	{ "month", 1, 12, month_names },
	{ "day of week", 0, 7, day_names },
};

struct cursor {
	const char *p, *end;
	int index;              /* field number, 0-based */
	char *err;
	size_t errlen;
};

static int fail(struct cursor *c, const char *why)
{
	snprintf(c->err, c->errlen, "field %d (%s): %s", c->index + 1, fields[c->index].name, why);
	return OTA_EINVAL;
}

/* A number (at most 2 digits, no sign) or, where the field has them, a name. */
static int value(struct cursor *c, int *out)
{
	const struct field *f = &fields[c->index];
	char why[96];
	int n = 0, digits = 0;

	if (f->names && c->end - c->p >= 3) {
		for (int i = 0; f->names[i]; i++) {
			if (!strncasecmp(c->p, f->names[i], 3)) {
				c->p += 3;
				*out = f->lo + i;
				return 0;
			}
		}
	}
	while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
		if (++digits > 2)
			return fail(c, "a number has more than 2 digits");
		n = n * 10 + (*c->p++ - '0');
	}
	if (!digits)
		return fail(c, f->names ? "expected a number or a name" : "expected a number");
	if (n < f->lo || n > f->hi) {
		snprintf(why, sizeof(why), "%d is out of range %d-%d", n, f->lo, f->hi);
		return fail(c, why);
	}
	*out = n;
	return 0;
}

/* One list item: '*' | V | V-V, then optionally /STEP; sets bits in *bits. */
static int item(struct cursor *c, uint64_t *bits, int *star)
{
	const struct field *f = &fields[c->index];
	int lo = f->lo, hi = f->hi, step = 1, single = 0, rc;

	if (c->p < c->end && *c->p == '*') {
		c->p++;
		*star = 1;
	} else {
		if ((rc = value(c, &lo)) < 0)
			return rc;
		hi = lo;
		single = 1;
		if (c->p < c->end && *c->p == '-') {
			c->p++;
			if ((rc = value(c, &hi)) < 0)
				return rc;
			if (hi < lo)
				return fail(c, "a range's end is before its start");
			single = 0;
		}
	}
	if (c->p < c->end && *c->p == '/') {
		int digits = 0;
		c->p++;
		step = 0;
		while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && digits++ < 3)
			step = step * 10 + (*c->p++ - '0');
		if (!digits || step < 1 || step > f->hi - f->lo + 1)
			return fail(c, "a step must be a number from 1 to the field's span");
		if (single)
			hi = f->hi; /* "5/10": from 5 to the end, every 10 */
	}
	for (int v = lo; v <= hi; v += step)
		*bits |= 1ULL << v;
	return 0;
}

static int field(struct cursor *c, uint64_t *bits, int *star)
{
	int rc;
	*bits = 0;
	*star = 0;
	for (;;) {
		if ((rc = item(c, bits, star)) < 0)
			return rc;
		if (c->p == c->end || *c->p == ' ' || *c->p == '\t')
			return 0;
		if (*c->p != ',') {
			char why[64];
			unsigned char ch = (unsigned char)*c->p;
			if (ch >= 0x21 && ch < 0x7f)
				snprintf(why, sizeof(why), "unexpected '%c'", ch);
			else
				snprintf(why, sizeof(why), "unexpected byte 0x%02x", ch);
			return fail(c, why);
		}
		c->p++;
	}
}

static void skip_blanks(struct cursor *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
		c->p++;
}

int cron_parse(struct cron_expr *out, const char *text, size_t len, char *err, size_t errlen)
{
	struct cursor c = { text, text + len, 0, err, errlen };
	uint64_t bits[5];
	int star[5];

	memset(out, 0, sizeof(*out));
	if (len > CRON_MAX_LEN) {
		snprintf(err, errlen, "longer than %d bytes", CRON_MAX_LEN);
		return OTA_EINVAL;
	}
	skip_blanks(&c);
	if (c.p < c.end && *c.p == '@') {
		snprintf(err, errlen, "macros like @daily are not supported: write the 5 fields");
		return OTA_EINVAL;
	}
	for (c.index = 0; c.index < 5; c.index++) {
		int rc;
		if (c.p == c.end) {
			snprintf(err, errlen, "expected 5 fields (minute hour day-of-month month day-of-week), got %d",
				 c.index);
			return OTA_EINVAL;
		}
		if ((rc = field(&c, &bits[c.index], &star[c.index])) < 0)
			return rc;
		skip_blanks(&c);
	}
	if (c.p != c.end) {
		snprintf(err, errlen, "more than 5 fields (seconds and years are not supported)");
		return OTA_EINVAL;
	}
	out->minute = bits[0];
	out->hour = (uint32_t)bits[1];
	out->mday = (uint32_t)bits[2];
	out->month = (uint16_t)bits[3];
	out->wday = (uint8_t)((bits[4] | (bits[4] >> 7)) & 0x7f); /* 7 is Sunday too */
	out->mday_star = star[2];
	out->wday_star = star[4];
	return 0;
}

/* ---- evaluation --------------------------------------------------------- */

static int day_matches(const struct cron_expr *c, const struct tm *tm)
{
	int md = (c->mday >> tm->tm_mday) & 1, wd = (c->wday >> tm->tm_wday) & 1;
	if (c->mday_star || c->wday_star)
		return md && wd;
	return md || wd;
}

/* The tm for second t; tm fields are then moved and renormalised by timegm. */
static void tm_of(int64_t secs, struct tm *tm)
{
	time_t t = (time_t)secs;
	gmtime_r(&t, tm);
}

static int64_t secs_of(struct tm *tm)
{
	return (int64_t)timegm(tm);
}

int64_t cron_next(const struct cron_expr *c, int64_t after_ms)
{
	int64_t t = (after_ms >= 0 ? after_ms / 60000 : (after_ms - 59999) / 60000) * 60 + 60;
	struct tm tm;
	int limit;

	tm_of(t, &tm);
	limit = tm.tm_year + CRON_HORIZON_YEARS;
	for (;;) {
		tm_of(t, &tm);
		if (tm.tm_year > limit)
			return -1;
		if (!((c->month >> (tm.tm_mon + 1)) & 1)) {
			tm.tm_mon++, tm.tm_mday = 1, tm.tm_hour = 0, tm.tm_min = 0;
		} else if (!day_matches(c, &tm)) {
			tm.tm_mday++, tm.tm_hour = 0, tm.tm_min = 0;
		} else if (!((c->hour >> tm.tm_hour) & 1)) {
			tm.tm_hour++, tm.tm_min = 0;
		} else if (!((c->minute >> tm.tm_min) & 1)) {
			tm.tm_min++;
		} else {
			return t * 1000;
		}
		tm.tm_sec = 0;
		t = secs_of(&tm);
	}
}

int64_t cron_prev(const struct cron_expr *c, int64_t at_ms)
{
	int64_t t = (at_ms >= 0 ? at_ms / 60000 : (at_ms - 59999) / 60000) * 60;
	struct tm tm;
	int limit;

	tm_of(t, &tm);
	limit = tm.tm_year - CRON_HORIZON_YEARS;
	for (;;) {
		tm_of(t, &tm);
		if (tm.tm_year < limit)
			return -1;
		/* each step goes to the last minute before the unit that failed */
		if (!((c->month >> (tm.tm_mon + 1)) & 1)) {
			tm.tm_mday = 1, tm.tm_hour = 0, tm.tm_min = -1;
		} else if (!day_matches(c, &tm)) {
			tm.tm_hour = 0, tm.tm_min = -1;
		} else if (!((c->hour >> tm.tm_hour) & 1)) {
			tm.tm_min = -1;
		} else if (!((c->minute >> tm.tm_min) & 1)) {
			tm.tm_min--;
		} else {
			return t * 1000;
		}
		tm.tm_sec = 0;
		t = secs_of(&tm);
	}
}
