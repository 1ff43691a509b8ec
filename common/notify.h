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

#define NOTIFIER_MAX_HOOKS 4

struct notifier {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t gen;
	/* called after each bump, under the lock (so a hook must not touch
	 * this notifier; it should only wake its loop), by the bumping thread:
	 * lets an event loop that cannot sleep on the condition variable
	 * (the HTTP server's parked requests, orchestrator/api/api_wait.c) learn
	 * of the change */
	void (*hook[NOTIFIER_MAX_HOOKS])(void *arg);
	void *hook_arg[NOTIFIER_MAX_HOOKS];
};

void notifier_init(struct notifier *n);
void notifier_destroy(struct notifier *n);
uint64_t notifier_gen(struct notifier *n);
void notifier_bump(struct notifier *n);
/* Wait until the generation differs from seen or timeout_ms passes.
 * Returns the current generation. */
uint64_t notifier_wait(struct notifier *n, uint64_t seen, int64_t timeout_ms);
/* Call fn(arg) after every bump from now on; 0, or -1 when all hook slots
 * are taken.  notifier_unhook removes it again. */
int notifier_hook(struct notifier *n, void (*fn)(void *arg), void *arg);
void notifier_unhook(struct notifier *n, void (*fn)(void *arg), void *arg);

#endif
