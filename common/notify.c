/*
 * notify.c - generation-counter broadcasts; see notify.h.
 */
#include "notify.h"

#include <time.h>

void notifier_init(struct notifier *n)
{
	pthread_condattr_t attr;
	pthread_mutex_init(&n->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&n->cond, &attr);
	pthread_condattr_destroy(&attr);
	n->gen = 0;
}

void notifier_destroy(struct notifier *n)
{
	pthread_cond_destroy(&n->cond);
	pthread_mutex_destroy(&n->lock);
}

uint64_t notifier_gen(struct notifier *n)
{
	uint64_t g;
	pthread_mutex_lock(&n->lock);
	g = n->gen;
	pthread_mutex_unlock(&n->lock);
	return g;
}

void notifier_bump(struct notifier *n)
{
	pthread_mutex_lock(&n->lock);
	n->gen++;
	pthread_cond_broadcast(&n->cond);
	pthread_mutex_unlock(&n->lock);
}

uint64_t notifier_wait(struct notifier *n, uint64_t seen, int64_t timeout_ms)
{
	struct timespec ts;
	uint64_t g;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&n->lock);
	while (n->gen == seen) {
		if (pthread_cond_timedwait(&n->cond, &n->lock, &ts) != 0)
			break;
	}
	g = n->gen;
	pthread_mutex_unlock(&n->lock);
	return g;
}
