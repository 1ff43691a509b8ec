/*
 * admission.c - check-in admission at a configured capacity (admission.h;
 * docs/delivery.md, "Admission").
 *
 * The bucket is GCRA, the token bucket written as one number: tat, the
 * theoretical arrival time of the next check-in at capacity C.  A
 * check-in at time t is admitted when tat - t <= TOL (the bucket's
 * depth, C * TOL check-ins at once) and moves tat to max(tat, t) +
 * 1/C; that is one compare-and-swap, no lock, on the hot path.  So in any
 * span of T otacd seconds at most C*T + C*TOL + 1 check-ins are
 * admitted.
 *
 * A refused check-in gets a turn: horizon is the end of the queue of
 * devices told to come back, each turn 1/C after the previous one (and
 * not before the bucket has room), so the refused come back at capacity
 * in the order they were refused, and horizon - now is the backlog in
 * seconds (the Retry-After).  While the queue is not empty, a check-in
 * that does not name its turn is a newcomer and goes to the end: were it
 * served, a device coming back at its turn would find the bucket empty
 * and its turn would be lost (the herd served in far more than N/C).
 * The turn a device names is not authenticated: a device lying about it
 * jumps the queue, but the bucket still holds the rate at capacity.  The
 * device picks a moment in [turn, turn + TOL/2): full jitter over a
 * window the bucket's depth absorbs, with the other half of the depth
 * left for the request's way (a stream 1/C apart delayed by less than TOL
 * always fits).  N devices at once are all served within about N/C
 * seconds (docs/delivery.md computes the bound).
 *
 * Times are otacd nanoseconds (otacd time is scaled by time_scale: a
 * capacity is per otacd second, as polls are), kept in int64_t.
 */
#include "admission.h"

#include "../clock.h"

#include <inttypes.h>
#include <stdatomic.h>

#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
/* The bucket's depth: a quarter of a real second of capacity.  Real, not
 * otacd, time: what bunches check-ins up (network, scheduling) runs in
 * real time, also under a time scale.  Set by admission_configure. */
#define DEPTH_REAL_NS (250 * NS_PER_MS)
#define PEAK_SHIFT 24                     /* admitted-this-second: second << 24 | count */
#define PEAK_COUNT_MASK ((1LL << PEAK_SHIFT) - 1)

static int64_t g_capacity;             /* per otacd second; 0: unlimited */
static int64_t g_interval_ns;          /* 1/C */
static int64_t g_tolerance_ns;         /* the bucket's depth, otacd ns */
static _Atomic int64_t g_tat;          /* GCRA: theoretical arrival time */
static _Atomic int64_t g_horizon;      /* the last turn given to a refused check-in */
static _Atomic uint64_t g_admitted, g_deferred;
static _Atomic int64_t g_second;       /* the current otacd second and its admissions */
static _Atomic int64_t g_peak;         /* the most admitted in one otacd second */

void admission_configure(int64_t per_second)
{
	g_capacity = per_second > 0 ? per_second : 0;
	g_interval_ns = g_capacity ? NS_PER_S / g_capacity : 0;
	if (g_capacity && !g_interval_ns)
		g_interval_ns = 1;
	g_tolerance_ns = (int64_t)((double)DEPTH_REAL_NS * clock_scale());
	atomic_store(&g_tat, 0);
	atomic_store(&g_horizon, 0);
}

int64_t admission_capacity(void)
{
	return g_capacity;
}

/* Count an admission in its otacd second, and the peak. */
static void count_admitted(int64_t now_ms)
{
	int64_t sec = now_ms / 1000, v = atomic_load(&g_second), next, n, peak;

	atomic_fetch_add(&g_admitted, 1);
	do
		next = (v >> PEAK_SHIFT) == sec ? v + ((v & PEAK_COUNT_MASK) < PEAK_COUNT_MASK) : (sec << PEAK_SHIFT) | 1;
	while (!atomic_compare_exchange_weak(&g_second, &v, next));
	n = next & PEAK_COUNT_MASK;
	peak = atomic_load(&g_peak);
	while (n > peak && !atomic_compare_exchange_weak(&g_peak, &peak, n))
		;
}

/* The next turn in the queue of refused check-ins: 1/C after the last
 * one, and not before the bucket (whose arrival time was tat) has room. */
static int64_t take_turn(int64_t now, int64_t tat)
{
	int64_t h = atomic_load(&g_horizon), turn, from = tat - g_tolerance_ns > now ? tat - g_tolerance_ns : now;
	do
		turn = (h > from ? h : from) + g_interval_ns;
	while (!atomic_compare_exchange_weak(&g_horizon, &h, turn));
	return turn;
}

/* A named turn counts when it has come (give or take the window and the
 * bucket's depth) and is not from long ago (a device away since). */
static int turn_due(int64_t now, int64_t turn_ms)
{
	int64_t turn;

	if (turn_ms <= 0 || turn_ms > INT64_MAX / NS_PER_MS)
		return 0; /* none, or a device's number too big to be a time */
	turn = turn_ms * NS_PER_MS;
	return turn <= now + 2 * g_tolerance_ns && now - turn <= 3600 * NS_PER_S;
}

int admission_checkin(int64_t now_ms, int64_t turn_ms, struct admission_defer *out)
{
	int64_t now = now_ms * NS_PER_MS, tat, next, turn;

	if (!g_capacity) {
		count_admitted(now_ms);
		return 1;
	}
	tat = atomic_load(&g_tat);
	if (!turn_due(now, turn_ms) && atomic_load(&g_horizon) > now)
		goto deferred; /* devices are waiting for their turns: to the end */
	do {
		if (tat - now > g_tolerance_ns)
			goto deferred;
		next = (tat > now ? tat : now) + g_interval_ns;
	} while (!atomic_compare_exchange_weak(&g_tat, &tat, next));
	count_admitted(now_ms);
	return 1;
deferred:
	atomic_fetch_add(&g_deferred, 1);
	turn = take_turn(now, tat);
	out->turn_ms = (turn + NS_PER_MS - 1) / NS_PER_MS;
	out->retry_after_ms = out->turn_ms - now_ms;
	out->window_ms = g_tolerance_ns / 2 / NS_PER_MS; /* half the depth: the other half absorbs the way there */
	return 0;
}

void admission_refund(void)
{
	if (g_capacity)
		atomic_fetch_sub(&g_tat, g_interval_ns);
	atomic_fetch_sub(&g_admitted, 1);
}

void admission_metrics_text(struct buf *b, int64_t now_ms)
{
	int64_t backlog = atomic_load(&g_horizon) - now_ms * NS_PER_MS;

	buf_printf(b, "# HELP otacd_devapi_checkin_capacity Check-ins admitted per otacd second (0: unlimited).\n"
		      "# TYPE otacd_devapi_checkin_capacity gauge\notacd_devapi_checkin_capacity %" PRId64 "\n",
		   g_capacity);
	buf_printf(b, "# HELP otacd_devapi_checkin_burst Check-ins the bucket admits at once (its depth).\n"
		      "# TYPE otacd_devapi_checkin_burst gauge\notacd_devapi_checkin_burst %" PRId64 "\n",
		   g_capacity ? g_tolerance_ns / g_interval_ns : 0);
	buf_printf(b, "# HELP otacd_devapi_checkins_admitted_total Check-ins served.\n"
		      "# TYPE otacd_devapi_checkins_admitted_total counter\notacd_devapi_checkins_admitted_total %" PRIu64 "\n",
		   (uint64_t)atomic_load(&g_admitted));
	buf_printf(b, "# HELP otacd_devapi_checkins_deferred_total Check-ins over capacity, answered 503 with a turn.\n"
		      "# TYPE otacd_devapi_checkins_deferred_total counter\notacd_devapi_checkins_deferred_total %" PRIu64 "\n",
		   (uint64_t)atomic_load(&g_deferred));
	buf_printf(b, "# HELP otacd_devapi_checkins_admitted_peak_second The most check-ins served in one otacd second.\n"
		      "# TYPE otacd_devapi_checkins_admitted_peak_second gauge\n"
		      "otacd_devapi_checkins_admitted_peak_second %" PRId64 "\n", (int64_t)atomic_load(&g_peak));
	buf_printf(b, "# HELP otacd_devapi_checkin_backlog_seconds Otacd seconds until the last deferred device's turn.\n"
		      "# TYPE otacd_devapi_checkin_backlog_seconds gauge\notacd_devapi_checkin_backlog_seconds %.3f\n",
		   backlog > 0 ? (double)backlog / (double)NS_PER_S : 0.0);
}
