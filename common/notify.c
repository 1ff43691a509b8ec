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
	for (int i = 0; i < NOTIFIER_MAX_HOOKS; i++) {
		n->hook[i] = NULL;
		n->hook_arg[i] = NULL;
	}
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
	/* under the lock, so that a hook is never called after its unhook */
	for (int i = 0; i < NOTIFIER_MAX_HOOKS; i++)
		if (n->hook[i])
			n->hook[i](n->hook_arg[i]);
	pthread_mutex_unlock(&n->lock);
}

int notifier_hook(struct notifier *n, void (*fn)(void *arg), void *arg)
{
	int rc = -1;
	pthread_mutex_lock(&n->lock);
	for (int i = 0; i < NOTIFIER_MAX_HOOKS && rc < 0; i++) {
		if (!n->hook[i]) {
			n->hook[i] = fn;
			n->hook_arg[i] = arg;
			rc = 0;
		}
	}
	pthread_mutex_unlock(&n->lock);
	return rc;
}

void notifier_unhook(struct notifier *n, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&n->lock);
	for (int i = 0; i < NOTIFIER_MAX_HOOKS; i++) {
		if (n->hook[i] == fn && n->hook_arg[i] == arg) {
			n->hook[i] = NULL;
			n->hook_arg[i] = NULL;
		}
	}
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
