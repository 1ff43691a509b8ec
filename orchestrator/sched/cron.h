/*
 * cron.h - 5-field cron expressions, parsed strictly, evaluated in UTC.
 *
 *   minute hour day-of-month month day-of-week
 *   0-59   0-23 1-31         1-12  0-7 (0 and 7: Sunday)
 *
 * Each field is a comma-separated list of items; an item is `*`, `N` or
 * `N-M`, optionally followed by `/STEP` (`1-30/2`; `5/10` means 5-max every
 * 10; a star with /15 is every 15 minutes).  Months accept jan..dec and days sun..sat (any case) as
 * values and range ends.  Like Vixie cron, when both day fields are
 * restricted (neither starts with `*`), a day matches if either does.
 *
 * Anything else is refused with the field and the reason: a sixth field,
 * `@daily` macros, `?`, `L`, `W`, `#`, empty list items, out-of-range
 * values, reversed ranges, a step of 0 or past the field's range, and
 * expressions longer than CRON_MAX_LEN.
 *
 * Times are milliseconds since the epoch (otacd time, clock.h); slots are
 * whole minutes, in UTC.
 */
#ifndef OTA_CRON_H
#define OTA_CRON_H

#include <stddef.h>
#include <stdint.h>

#define CRON_MAX_LEN 256

struct cron_expr {
	uint64_t minute;   /* bit m: minute m matches */
	uint32_t hour;
	uint32_t mday;     /* bits 1..31 */
	uint16_t month;    /* bits 1..12 */
	uint8_t wday;      /* bits 0..6, Sunday 0 */
	int mday_star, wday_star;  /* the field started with '*' */
};

/* Parse text (len bytes, need not be NUL-terminated).  OTA_EINVAL with
 * the reason in err ("field 2 (hour): 24 is out of range 0-23"). */
int cron_parse(struct cron_expr *out, const char *text, size_t len, char *err, size_t errlen);

/* The first slot strictly after `after_ms`, or -1 when none comes within
 * CRON_HORIZON_YEARS (an expression like "0 0 30 2 *"). */
int64_t cron_next(const struct cron_expr *c, int64_t after_ms);
/* The last slot at or before `at_ms`, or -1 when none within the horizon. */
int64_t cron_prev(const struct cron_expr *c, int64_t at_ms);

#define CRON_HORIZON_YEARS 30

#endif
