/*
 * engine_core.h - the engine's own state, shared by the files it is split
 * into: engine.c (thread, command queue, dispatch queue, run progression,
 * stage worker, recovery), engine_jobs.c (attempts, agents' claims, leases
 * and finishes, artifacts), engine_runs.c (triggers, deliveries, cancels)
 * and engine_release.c (release rules and records, the audit log).
 *
 * Nothing outside those files includes this: other modules on the engine
 * thread use engine_int.h, HTTP handlers engine.h.  Every function and
 * field here belongs to the engine thread unless its comment says
 * otherwise (struct engine marks the exceptions).
 */
#ifndef OTA_ENGINE_CORE_H
#define OTA_ENGINE_CORE_H

#include <pthread.h>

#include "engine_int.h"

struct qjob {
	int64_t id;
	json_t *labels;  /* array of strings (owned reference) */
};

struct call {
	int (*fn)(struct engine *e, void *arg);
	void *arg;
	int rc;
	int done;
	char err[1024];
	struct call *next;
};

struct engine {
	struct store *db;
	struct engine_config cfg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;        /* a call was queued, or stop */
	pthread_cond_t done_cond;   /* a call finished */
	struct call *head, *tail;
	int stopping;
	int64_t next_due;           /* wall-clock ms of the next lease/deadline */
	int64_t awake_real;         /* wall-clock ms the engine thread last woke (stall detection) */
	int64_t started_at;         /* otacd time (clock_now_ms) this daemon started */
	int64_t store_trouble_real; /* wall-clock ms a transaction last failed to begin or commit */
	int64_t tick_retry_at;      /* wall-clock ms before which a failed tick is not retried (0: none) */

	/* Set by a command, acted on after its COMMIT: waking a waiter before
	 * the commit would let it read the old state and sleep again. */
	int changed_work;           /* a job became claimable */
	int changed_state;          /* a job or run changed state */
	int changed_rollout;        /* a rollout started or changed: wake the controller */
	int changed_auth;           /* tokens or agents changed: other instances reload theirs */
	void (*rollout_hook)(void *);  /* called after such a commit (rollout_controller_kick) */
	void *rollout_hook_arg;
	struct strvec dead_objects; /* artifact objects to delete once committed */
	struct strvec started_inproc; /* "JOB ATTEMPT" of in-daemon jobs to hand over once committed */

	/* The stage worker: runs in-daemon stage kinds (stage_kind.run). */
	pthread_t inproc_thread;
	pthread_mutex_t inproc_lock;
	pthread_cond_t inproc_cond;
	struct strvec inproc_queue;   /* guarded by inproc_lock */
	int inproc_stop;
	int64_t next_gc;            /* monotonic ms of the next artifact expiry pass */
	/* retention (retention.h): a pass runs one batch per turn of the
	 * engine loop, between commands */
	int64_t next_prune;         /* monotonic ms of the next retention pass */
	int prune_active;           /* a pass is under way */
	int prune_swept;            /* orphaned logs swept since this start */
	struct retention_pass prune_pass;
	struct retention_out prune_out;

	/* engine thread only */
	struct qjob *queue;
	size_t nqueue, capqueue;
	struct notifier work;
};

/* A job as the engine loads it (eng_job_load). */

struct jobrow {
	int64_t id, run_id, stage_id, agent_id;
	int attempt, retries_left, infra_left;
	char state[16];
	char stage_name[256];
	char kind[64];
	json_t *spec;
};

/* A command on the engine thread: queue it, wait until it ran inside its
 * own transaction, return its result (engine.c). */
int engine_call(struct engine *e, int (*fn)(struct engine *, void *), void *arg);

/* Write an event in the current transaction; takes detail (engine.c). */
void eng_event(struct engine *e, int64_t run, int64_t job, const char *kind, json_t *detail);

/* The in-memory dispatch queue, ordered by job id (engine.c). */
void eng_queue_add(struct engine *e, int64_t job, json_t *labels);
void eng_queue_remove(struct engine *e, int64_t job);

/* Load job id into *j (OTA_ENOTFOUND when there is none); release it with
 * eng_job_release whatever the result (engine.c). */
int eng_job_load(struct engine *e, int64_t id, struct jobrow *j);
void eng_job_release(struct jobrow *j);

/* Move a run forward as far as its state allows; idempotent (engine.c). */
int eng_advance_run(struct engine *e, int64_t run_id);
/* Close a run in state (error may be NULL) and let the next run of its
 * concurrency group go (engine.c). */
int eng_finish_run(struct engine *e, int64_t run_id, const char *state, const char *concurrency,
		   const char *error);

/* End the running attempt of j with result r: its kind's verdict, then
 * pass, retry or fail; *state_out is the job's new state (engine_jobs.c). */
int eng_attempt_done(struct engine *e, struct jobrow *j, const struct job_result *r, const char **state_out);

#endif
