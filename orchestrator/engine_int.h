/*
 * engine_int.h - what the engine lends to modules that run on its thread.
 *
 * The rollout module (rollout.c) keeps its state in the same database and
 * changes it only on the engine thread, inside the engine's transactions:
 * its functions are either called by the engine (rollout_job_start) or
 * run through engine_exec.  Nothing here is for HTTP handlers.
 */
#ifndef OTA_ENGINE_INT_H
#define OTA_ENGINE_INT_H

#include "engine.h"

/* The writer connection: engine thread only. */
struct store *engine_store(struct engine *e);
/* Run fn on the engine thread inside one transaction (like every public
 * engine call) and return its result. */
int engine_exec(struct engine *e, int (*fn)(struct engine *, void *), void *arg);
/* Engine thread: finish a running job's attempt as if its agent reported r. */
int engine_job_complete(struct engine *e, int64_t job_id, const struct job_result *r, const char **state);
/* Engine thread: write an event (shown live on the page). */
void engine_emit(struct engine *e, int64_t run, int64_t job, const char *kind, json_t *detail);
/* Engine thread: an audit log entry (who did what and why) in the current
 * transaction; release and rollout 0 when it is about neither.  Takes
 * detail. */
int engine_audit(struct engine *e, const char *actor, const char *action, int64_t release, int64_t rollout,
		 const char *reason, json_t *detail);
/* Engine thread: a rollout changed; the hook runs after the commit. */
void engine_rollout_changed(struct engine *e);
/* Engine thread: tokens, registered agents or the release revocation list
 * changed (other instances reload theirs when this commit is announced:
 * commitwatch.h, CW_AUTH). */
void engine_auth_changed(struct engine *e);
/* The function called after a commit that changed a rollout. */
void engine_set_rollout_hook(struct engine *e, void (*fn)(void *), void *arg);
const struct engine_config *engine_cfg(struct engine *e);
/* Engine thread: give up the job an agent holds (an infra failure, retried
 * if the job has infra retries left); why is the attempt's message. */
int engine_release_agent_job(struct engine *e, int64_t agent_id, const char *why);

/* Every SQL statement engine_jobs.c runs, by its constant's name, for
 * tests that prepare and run them on each storage backend
 * (tests/test_dbconv_jobs.c, docs/storage.md). */
struct engine_jobs_sql {
	const char *name; /* "jq_attempt_start" */
	const char *sql;  /* the address engine_jobs.c's statement cache keys on */
};
const struct engine_jobs_sql *engine_jobs_sql(size_t *n);

/*
 * The engine's table work that needs no engine thread, on a store directly
 * (the writer's, inside its transaction), so tests run it on both storage
 * backends (tests/test_dbconv_engine.c).
 */
/* Every running job that holds a lease gets one until at least until
 * (wall-clock ms); jobs run inside otacd hold none and get none. */
int engine_store_extend_leases(struct store *s, int64_t until);
/* The wall-clock ms the next lease or deadline of a running job falls due;
 * INT64_MAX when none does (or on error). */
int64_t engine_store_next_due(struct store *s);
/* Up to max running jobs whose lease or deadline passed by now: ids[i],
 * and lost[i] 1 if it was the lease (its agent went quiet), 0 if only the
 * deadline; *n how many. */
int engine_store_due_jobs(struct store *s, int64_t now, int64_t *ids, int *lost, size_t max, size_t *n);
/* A stage's final state from its jobs' ("passed", "failed", "canceled"),
 * or NULL in *out while some job has not finished. */
int engine_store_stage_outcome(struct store *s, int64_t stage_id, const char **out);

/*
 * Issue 16: the table work of engine_runs.c and engine_release.c on a store
 * s, without the engine thread, so tests run it on SQLite and PostgreSQL
 * (tests/test_dbconv_runs.c).  The engine's do_* callbacks call these in
 * their transaction and add the events.  now: the time recorded (ms).
 */
struct policy_trust;
/* Insert a run (final states get started/finished = now), its pull request
 * and close the delivery it answers. */
int runs_store_insert(struct store *s, const struct trigger_req *req, const struct policy_trust *trust,
		      const char *name, const char *concurrency, const char *state, const char *error, int64_t now,
		      int64_t *run_id);
/* Record a delivery "pending"; a (provider, delivery) recorded before sets
 * *duplicate and gives the earlier *id. */
int runs_store_delivery_add(struct store *s, const struct delivery *d, int64_t now, int64_t *id, int *duplicate);
/* Record a release under the anti-rollback and version rules (OTA_ECONFLICT
 * with the reason).  1 and the earlier *id when the run has its release. */
int release_store_record(struct store *s, const struct release_record *r, int64_t now, int64_t *id);

#endif
