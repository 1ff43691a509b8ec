/*
 * admission.h - check-in admission (issue 15, thundering-herd control;
 * docs/delivery.md, "Admission").
 *
 * A configured capacity C of check-ins per otacd second, enforced by a
 * token bucket kept as one atomic (GCRA: the theoretical arrival time of
 * the next check-in), so the check-in hot path takes no lock.  A check-in
 * over capacity is not served: it is given a turn, a slot on a second
 * atomic (the queue's horizon) one 1/C after the previous turn, so the
 * devices waiting come back at capacity, in the order they were refused.
 * The device API answers it 503 with Retry-After (docs/update-server.md).
 * While devices wait, a check-in that does not come back at its turn
 * (says "turn" in its body) joins the end of the queue: newcomers do not
 * take the turns of the devices told to come back.
 *
 * Only check-ins are admitted: report batches and image downloads are
 * never refused here (a device already downloading finishes).
 * Capacity 0 (the default): unlimited, admission_checkin always admits.
 * Process-wide state: one device listener per otacd.
 */
#ifndef OTACD_ADMISSION_H
#define OTACD_ADMISSION_H

#include <stdint.h>

#include "../../common/util.h"

/* Capacity in check-ins per otacd second; 0: unlimited.  Call before the
 * device listener starts and after clock_init (main.c, from
 * device_checkin_capacity): the bucket's depth is a quarter of a real
 * second, so it depends on the time scale. */
void admission_configure(int64_t per_second);
int64_t admission_capacity(void);

/* A deferred check-in's turn, in otacd milliseconds. */
struct admission_defer {
	int64_t turn_ms;          /* the device's turn, otacd time (it says so when back) */
	int64_t retry_after_ms;   /* the same from now: not before now + this */
	int64_t window_ms;        /* pick a moment uniformly in [turn, turn + window) */
};

/* Decide one check-in at otacd time now_ms; turn_ms: the turn the device
 * says it comes back at (the check-in body's "turn"), 0 none.  1
 * admitted, 0 deferred (*out says when to come back). */
int admission_checkin(int64_t now_ms, int64_t turn_ms, struct admission_defer *out);

/* An admitted check-in's outcome, counted (every admitted check-in once):
 * served (whatever it was answered), or refused for its credential, which
 * did no work and gives its token back. */
void admission_checkin_done(int credential_refused);

/* Check-ins taken: served, deferred and refused for their credential
 * (otacd_device_checkins_total). */
uint64_t admission_checkins_taken(void);

/* The counters as Prometheus text (otacd_devapi_checkin_*), at now_ms. */
void admission_metrics_text(struct buf *b, int64_t now_ms);

#endif
