/*
 * flight.h - what the fleet benchmarks share: a monotonic clock and a
 * bound on the asynchronous fleet calls in flight (fleet_checkin_async,
 * fleet_report_async answer on the writer's thread, after their commit).
 * Header only: each benchmark is one program built from one file.
 */
#ifndef OTACD_BENCH_FLIGHT_H
#define OTACD_BENCH_FLIGHT_H

#include <pthread.h>
#include <time.h>

static inline double bench_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct flight {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int n, failed;      /* calls in flight; answers that were errors */
};

#define FLIGHT_INIT { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 }

/* The calls' done callback (ctx: the struct flight), also called by the
 * caller with the call's result when it answered at once (rc <= 0). */
static inline void flight_done(void *ctx, int rc)
{
	struct flight *fl = ctx;
	pthread_mutex_lock(&fl->mu);
	fl->n--;
	if (rc < 0)
		fl->failed++;
	pthread_cond_broadcast(&fl->cv);
	pthread_mutex_unlock(&fl->mu);
}

/* Wait until fewer than limit are in flight, then count one more. */
static inline void flight_take(struct flight *fl, int limit)
{
	pthread_mutex_lock(&fl->mu);
	while (fl->n >= limit)
		pthread_cond_wait(&fl->cv, &fl->mu);
	fl->n++;
	pthread_mutex_unlock(&fl->mu);
}

/* Wait until every call has answered. */
static inline void flight_wait_all(struct flight *fl)
{
	pthread_mutex_lock(&fl->mu);
	while (fl->n > 0)
		pthread_cond_wait(&fl->cv, &fl->mu);
	pthread_mutex_unlock(&fl->mu);
}

#endif
