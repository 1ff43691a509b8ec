/*
 * notify.h - "something changed" broadcasts between threads.
 *
 * A notifier is a generation counter with a condition variable.  A waiter
 * reads the generation, checks the state it cares about, and then waits for
 * the generation to move past what it read; that order means no wake-up is
 * ever lost.  Used for agents long-polling for work and for live log
 * followers.
 */
#ifndef OTA_NOTIFY_H
#define OTA_NOTIFY_H

#include <pthread.h>
#include <stdint.h>

struct notifier {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t gen;
};

void notifier_init(struct notifier *n);
void notifier_destroy(struct notifier *n);
uint64_t notifier_gen(struct notifier *n);
void notifier_bump(struct notifier *n);
/* Wait until the generation differs from seen or timeout_ms passes.
 * Returns the current generation. */
uint64_t notifier_wait(struct notifier *n, uint64_t seen, int64_t timeout_ms);

#endif
