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
 *
 * Counting (issue 19 part 5): without a capacity a check-in touches no
 * shared memory here.  Each device-API thread counts its check-ins'
 * outcomes (served, deferred, refused for their credential) in a slot of
 * its own, a cache line no other core writes, with plain stores; /metrics
 * sums the slots.  An atomic add on one shared counter per check-in (and
 * the per-second peak's compare-and-swap) moved that line between the
 * cores at every check-in.  The peak, a rate, is kept only under a
 * capacity, where the bucket's compare-and-swap already shares a line.
 * Each count is only ever incremented, after the outcome is known, so
 * every sum /metrics shows is monotonic.
 */
#include "admission.h"

#include "../clock.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

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
static _Atomic int64_t g_second;       /* the current otacd second and its admissions (capacity only) */
static _Atomic int64_t g_peak;         /* the most admitted in one otacd second (capacity only) */

/* ---- outcome counts, one slot per thread -------------------------------- */

/* One thread's counts.  Written by the slot's owner only (plain load and
 * store of each word: no lock prefix), except the shared overflow slot. */
enum outcome { SERVED, DEFERRED, REFUSED, NOUTCOMES };

struct count_slot {
	_Alignas(64) _Atomic uint64_t n[NOUTCOMES];
	int used;                      /* under g_slots_mu */
};

#define NSLOTS 64                      /* a pool has at most 8 threads; restarts give slots back */
static struct count_slot g_slots[NSLOTS + 1];   /* [NSLOTS]: shared by threads beyond NSLOTS, atomically */
static pthread_mutex_t g_slots_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t g_slot_key;
static pthread_once_t g_slot_once = PTHREAD_ONCE_INIT;
static __thread struct count_slot *t_slot;

/* a thread's end: its slot, counts kept, for another thread */
static void slot_release(void *p)
{
	struct count_slot *s = p;
	pthread_mutex_lock(&g_slots_mu);
	s->used = 0;
	pthread_mutex_unlock(&g_slots_mu);
}

static void slot_key_init(void)
{
	if (pthread_key_create(&g_slot_key, slot_release) != 0)
		abort();
}

/* This thread's slot, taken at its first count (the shared one when none is free). */
static struct count_slot *my_slot(void)
{
	struct count_slot *s = &g_slots[NSLOTS];

	if (t_slot)
		return t_slot;
	pthread_once(&g_slot_once, slot_key_init);
	pthread_mutex_lock(&g_slots_mu);
	for (int i = 0; i < NSLOTS; i++)
		if (!g_slots[i].used) {
			if (pthread_setspecific(g_slot_key, &g_slots[i]) == 0) {
				s = &g_slots[i];
				s->used = 1;
			}
			break;
		}
	pthread_mutex_unlock(&g_slots_mu);
	return t_slot = s;
}

static void count(enum outcome o)
{
	struct count_slot *s = my_slot();
	_Atomic uint64_t *c = &s->n[o];

	if (s == &g_slots[NSLOTS])
		atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
	else /* this thread's own line: no other writer */
		atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

static uint64_t sum(enum outcome o)
{
	uint64_t n = 0;
	for (int i = 0; i <= NSLOTS; i++)
		n += atomic_load_explicit(&g_slots[i].n[o], memory_order_relaxed);
	return n;
}

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

/* Count an admission in its otacd second, and the peak (capacity only). */
static void count_peak(int64_t now_ms)
{
	int64_t sec = now_ms / 1000, v = atomic_load(&g_second), next, n, peak;

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

	if (!g_capacity)
		return 1; /* counted by admission_checkin_done */
	tat = atomic_load(&g_tat);
	if (!turn_due(now, turn_ms) && atomic_load(&g_horizon) > now)
		goto deferred; /* devices are waiting for their turns: to the end */
	do {
		if (tat - now > g_tolerance_ns)
			goto deferred;
		next = (tat > now ? tat : now) + g_interval_ns;
	} while (!atomic_compare_exchange_weak(&g_tat, &tat, next));
	count_peak(now_ms);
	return 1;
deferred:
	count(DEFERRED);
	turn = take_turn(now, tat);
	out->turn_ms = (turn + NS_PER_MS - 1) / NS_PER_MS;
	out->retry_after_ms = out->turn_ms - now_ms;
	out->window_ms = g_tolerance_ns / 2 / NS_PER_MS; /* half the depth: the other half absorbs the way there */
	return 0;
}

void admission_checkin_done(int credential_refused)
{
	if (!credential_refused) {
		count(SERVED);
		return;
	}
	if (g_capacity) /* it did no work: its token back */
		atomic_fetch_sub(&g_tat, g_interval_ns);
	count(REFUSED);
}

uint64_t admission_checkins_taken(void)
{
	return sum(SERVED) + sum(DEFERRED) + sum(REFUSED);
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
		   sum(SERVED));
	buf_printf(b, "# HELP otacd_devapi_checkins_deferred_total Check-ins over capacity, answered 503 with a turn.\n"
		      "# TYPE otacd_devapi_checkins_deferred_total counter\notacd_devapi_checkins_deferred_total %" PRIu64 "\n",
		   sum(DEFERRED));
	buf_printf(b, "# HELP otacd_devapi_checkins_admitted_peak_second The most check-ins served in one otacd second.\n"
		      "# TYPE otacd_devapi_checkins_admitted_peak_second gauge\n"
		      "otacd_devapi_checkins_admitted_peak_second %" PRId64 "\n", (int64_t)atomic_load(&g_peak));
	buf_printf(b, "# HELP otacd_devapi_checkin_backlog_seconds Otacd seconds until the last deferred device's turn.\n"
		      "# TYPE otacd_devapi_checkin_backlog_seconds gauge\notacd_devapi_checkin_backlog_seconds %.3f\n",
		   backlog > 0 ? (double)backlog / (double)NS_PER_S : 0.0);
}
