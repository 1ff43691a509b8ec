/*
 * clock.h - otacd's one clock.
 *
 * Two readings, both in milliseconds since the Unix epoch:
 *
 *   clock_now_ms()   otacd time.  Runs `scale` times faster than the wall
 *                    clock (--time-scale), so a 24-hour soak can pass in
 *                    seconds in tests and demos.  Every business deadline
 *                    (holds, soaks, retry delays) and every timestamp shown
 *                    to users is in otacd time and stored as an absolute
 *                    value in the database.
 *   clock_real_ms()  wall time.  Used only for things that bound real
 *                    processes: agent leases, job timeouts.  A job's
 *                    compiler does not run faster because the demo does.
 *
 * otacd time is anchored: now = anchor_otacd + (real - anchor_real) * scale.
 * The anchor is kept in the database (store meta), so after a restart otacd
 * time continues where it was (including the time the daemon was down,
 * scaled), and deadlines stored before the crash keep their meaning.
 *
 * On PostgreSQL with several instances the anchor is the leader's: only
 * an instance that takes the lead writes it, and a follower adopts it at
 * each leadership poll, whatever its own time_scale (docs/scale.md,
 * "One clock").  clock_init() may so run while other threads read: they
 * see the old anchor or the new one, never a mix.
 *
 * No code sleeps for business logic: the engine waits on a condition
 * variable until clock_real_delay_ms(next deadline).
 */
#ifndef OTA_CLOCK_H
#define OTA_CLOCK_H

#include <stdint.h>

void clock_init(double scale, int64_t anchor_real_ms, int64_t anchor_otacd_ms);
double clock_scale(void);
/* The anchor in force: scale, anchor_real_ms, anchor_otacd_ms. */
void clock_anchor(double *scale, int64_t *anchor_real_ms, int64_t *anchor_otacd_ms);
int64_t clock_now_ms(void);
int64_t clock_real_ms(void);
/* Monotonic milliseconds, for measuring intervals. */
int64_t clock_mono_ms(void);
/* Real milliseconds until otacd time reaches `deadline` (0 if passed). */
int64_t clock_real_delay_ms(int64_t deadline);
/* Formats otacd time as RFC 3339 UTC ("2026-11-25T00:41:53.123Z"). */
void clock_format(char out[32], int64_t ms);

#endif
