/*
 * engine.c - the single writer of run state.
 *
 * How it works.  engine_start() recovers from the database and starts one
 * thread.  Public functions package their arguments into a `struct call`,
 * queue it, and sleep until the engine thread has run it; the engine thread
 * runs every call inside BEGIN IMMEDIATE … COMMIT, so each command is atomic
 * on disk.  Between calls the thread wakes for the next lease or job
 * deadline (stored as absolute wall-clock times in the jobs table) and fails
 * the attempts that ran out.
 *
 * State the engine thread alone touches: the writer connection, the
 * in-memory dispatch queue (queued jobs of running stages, ordered by job
 * id, rebuilt from the database on start and after any failed command).
 *
 * Every job state change is also written to the events table; the final
 * state of a job is written there exactly once ("job.final"), which tests
 * use to prove nothing finished twice.
 */
#include "engine.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "artifact.h"
#include "auth.h"
#include "clock.h"
#include "config.h"
#include "gate.h"
#include "../common/mask.h"
#include "logstore.h"
#include "engine_int.h"
#include "policy.h"
#include "rollout.h"
#include "../stages/reports_kind.h"

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

	/* Set by a command, acted on after its COMMIT: waking a waiter before
	 * the commit would let it read the old state and sleep again. */
	int changed_work;           /* a job became claimable */
	int changed_state;          /* a job or run changed state */
	int changed_rollout;        /* a rollout started or changed: wake the controller */
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

	/* engine thread only */
	struct qjob *queue;
	size_t nqueue, capqueue;
	struct notifier work;
};

int engine_state_final(const char *s)
{
	return !strcmp(s, "passed") || !strcmp(s, "failed") || !strcmp(s, "canceled") ||
	       !strcmp(s, "skipped");
}

/* ---- small SQL helpers (engine thread) ----------------------------- */

#define STMT(e, sql) store_stmt((e)->db, sql)

static void event(struct engine *e, int64_t run, int64_t job, const char *kind, json_t *detail)
{
	sqlite3_stmt *st = STMT(e, "INSERT INTO events(at, run_id, job_id, kind, detail) VALUES (?,?,?,?,?)");
	char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;

	e->changed_state = 1; /* wakes /api/v1/events followers after the commit */
	if (st) {
		sqlite3_bind_int64(st, 1, clock_now_ms());
		if (run)
			sqlite3_bind_int64(st, 2, run);
		if (job)
			sqlite3_bind_int64(st, 3, job);
		sqlite3_bind_text(st, 4, kind, -1, SQLITE_STATIC);
		if (text)
			sqlite3_bind_text(st, 5, text, -1, SQLITE_TRANSIENT);
		store_step_done(e->db, st);
	}
	free(text);
	json_decref(detail);
}

/* ---- dispatch queue ------------------------------------------------- */

static void queue_add(struct engine *e, int64_t job, json_t *labels)
{
	size_t i;
	if (e->nqueue == e->capqueue) {
		e->capqueue = e->capqueue ? e->capqueue * 2 : 64;
		e->queue = xrealloc(e->queue, e->capqueue * sizeof(*e->queue));
	}
	/* keep ordered by id: the oldest job goes first, including retries */
	for (i = e->nqueue; i > 0 && e->queue[i - 1].id > job; i--)
		;
	memmove(e->queue + i + 1, e->queue + i, (e->nqueue - i) * sizeof(*e->queue));
	e->queue[i].id = job;
	e->queue[i].labels = json_incref(labels);
	e->nqueue++;
}

static void queue_remove(struct engine *e, int64_t job)
{
	for (size_t i = 0; i < e->nqueue; i++) {
		if (e->queue[i].id == job) {
			json_decref(e->queue[i].labels);
			memmove(e->queue + i, e->queue + i + 1, (e->nqueue - i - 1) * sizeof(*e->queue));
			e->nqueue--;
			return;
		}
	}
}

static void queue_clear(struct engine *e)
{
	for (size_t i = 0; i < e->nqueue; i++)
		json_decref(e->queue[i].labels);
	e->nqueue = 0;
}

static int queue_rebuild(struct engine *e)
{
	sqlite3_stmt *st = STMT(e,
		"SELECT j.id, j.spec FROM jobs j JOIN stages s ON s.id = j.stage_id "
		"JOIN runs r ON r.id = j.run_id "
		"WHERE j.state = 'queued' AND s.state = 'running' AND r.state = 'running' ORDER BY j.id");
	int rc;

	queue_clear(e);
	if (!st)
		return OTA_ERROR;
	while ((rc = store_step_row(e->db, st)) == 1) {
		json_t *spec = json_loads(store_col_text(st, 1), 0, NULL);
		json_t *labels = spec ? json_object_get(spec, "labels") : NULL;
		json_t *empty = json_array();
		queue_add(e, store_col_int(st, 0), labels ? labels : empty);
		json_decref(empty);
		json_decref(spec);
	}
	sqlite3_reset(st);
	return rc < 0 ? rc : 0;
}

static int labels_match(const json_t *need, const json_t *have)
{
	size_t i, j;
	json_t *n, *h;
	json_array_foreach(need, i, n) {
		int found = 0;
		json_array_foreach(have, j, h) {
			if (json_equal(n, h)) {
				found = 1;
				break;
			}
		}
		if (!found)
			return 0;
	}
	return 1;
}

/* ---- loading rows ---------------------------------------------------- */

struct jobrow {
	int64_t id, run_id, stage_id, agent_id;
	int attempt, retries_left, infra_left;
	char state[16];
	char stage_name[256];
	char kind[64];
	json_t *spec;
};

static int job_load(struct engine *e, int64_t id, struct jobrow *j)
{
	sqlite3_stmt *st = STMT(e,
		"SELECT j.run_id, j.stage_id, COALESCE(j.agent_id, 0), j.attempt, j.retries_left,"
		" j.infra_retries_left, j.state, j.spec, s.name, s.kind"
		" FROM jobs j JOIN stages s ON s.id = j.stage_id WHERE j.id = ?");
	int rc;

	memset(j, 0, sizeof(*j));
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, id);
	rc = store_step_row(e->db, st);
	if (rc == 1) {
		j->id = id;
		j->run_id = store_col_int(st, 0);
		j->stage_id = store_col_int(st, 1);
		j->agent_id = store_col_int(st, 2);
		j->attempt = (int)store_col_int(st, 3);
		j->retries_left = (int)store_col_int(st, 4);
		j->infra_left = (int)store_col_int(st, 5);
		snprintf(j->state, sizeof(j->state), "%s", store_col_text(st, 6));
		j->spec = json_loads(store_col_text(st, 7), 0, NULL);
		snprintf(j->stage_name, sizeof(j->stage_name), "%s", store_col_text(st, 8));
		snprintf(j->kind, sizeof(j->kind), "%s", store_col_text(st, 9));
	}
	sqlite3_reset(st);
	if (rc == 0)
		return ota_error_set(OTA_ENOTFOUND, "job %" PRId64 " not found", id);
	if (rc < 0)
		return rc;
	if (!j->spec)
		return ota_error_set(OTA_ERROR, "job %" PRId64 " has a corrupt spec", id);
	return 0;
}

static void job_release(struct jobrow *j)
{
	json_decref(j->spec);
	j->spec = NULL;
}

static int set_state(struct engine *e, const char *sql, int64_t id, const char *state, int64_t now)
{
	sqlite3_stmt *st = STMT(e, sql);
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int64(st, 3, id);
	return store_step_done(e->db, st);
}

/* ---- run progression ------------------------------------------------- */

struct stagerow {
	int64_t id;
	char name[256];
	char state[16];
	json_t *needs;
	int skip_by_when;
	char *held;         /* skipped by the release policy: why (policy.h) */
};

static int advance_run(struct engine *e, int64_t run_id);

/*
 * Mark a job running inside otacd (agent 0).  Jobs for the stage worker
 * get a deadline (their timeout); rollouts (no_deadline) run as long as
 * their plan says and are timed by the rollout controller instead.
 */
static int mark_inproc_running(struct engine *e, int64_t job, int no_deadline, int *attempt_out)
{
	sqlite3_stmt *st = STMT(e, "SELECT run_id, attempt + 1, spec FROM jobs WHERE id = ?");
	int64_t run = 0, timeout = 0, real = clock_real_ms(), now = clock_now_ms();
	int attempt = 0, rc;

	sqlite3_bind_int64(st, 1, job);
	if ((rc = store_step_row(e->db, st)) == 1) {
		json_t *spec = json_loads(store_col_text(st, 2), 0, NULL);
		run = store_col_int(st, 0);
		attempt = (int)store_col_int(st, 1);
		timeout = json_integer_value(json_object_get(spec, "timeout_ms"));
		json_decref(spec);
	}
	sqlite3_reset(st);
	if (rc != 1)
		return rc < 0 ? rc : OTA_ERROR;
	st = STMT(e, "UPDATE jobs SET state = 'running', attempt = ?, agent_id = 0, lease_expires = NULL, deadline = ?,"
		     " started_at = ? WHERE id = ?");
	sqlite3_bind_int(st, 1, attempt);
	if (no_deadline)
		sqlite3_bind_null(st, 2);
	else
		sqlite3_bind_int64(st, 2, real + (timeout > 0 ? timeout : e->cfg.default_timeout_ms));
	sqlite3_bind_int64(st, 3, now);
	sqlite3_bind_int64(st, 4, job);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	st = STMT(e, "INSERT INTO job_attempts(job_id, attempt, agent_id, started_at) VALUES (?,?,0,?)");
	sqlite3_bind_int64(st, 1, job);
	sqlite3_bind_int(st, 2, attempt);
	sqlite3_bind_int64(st, 3, now);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	event(e, run, job, "job.running", json_pack("{si ss}", "attempt", attempt, "agent", "otacd"));
	e->changed_state = 1;
	*attempt_out = attempt;
	return 0;
}

/* Start an in-daemon job: running at once on the stage worker, or as a
 * rollout handed to the rollout controller. */
static int start_inproc(struct engine *e, int64_t job, const struct stage_kind *kind)
{
	int attempt, rc;

	if ((rc = mark_inproc_running(e, job, kind->rollout, &attempt)) < 0)
		return rc;
	if (kind->rollout || !strcmp(kind->name, "release")) {
		/* keys and the fleet only for protected runs, checked again here */
		sqlite3_stmt *st = STMT(e, "SELECT run_id FROM jobs WHERE id = ?");
		int64_t run = 0;
		sqlite3_bind_int64(st, 1, job);
		if (store_step_row(e->db, st) == 1)
			run = store_col_int(st, 0);
		sqlite3_reset(st);
		if ((rc = policy_run_protected(e->db, run)) == 0) {
			struct job_result res = { 1, "script", "refused: this run is not protected (docs/security.md)" };
			if ((rc = engine_audit(e, "otacd", "policy_refused", 0, 0, res.message,
					       json_pack("{sI sI ss}", "run", (json_int_t)run, "job", (json_int_t)job, "stage",
							 kind->name))) < 0)
				return rc;
			return engine_job_complete(e, job, &res, NULL);
		}
		if (rc < 0)
			return rc;
	}
	if (kind->rollout) {
		e->changed_rollout = 1;
		return rollout_job_start(e, job);
	}
	strvec_pushf(&e->started_inproc, "%" PRId64 " %d", job, attempt);
	return 0;
}

static int enqueue_stage_jobs(struct engine *e, int64_t stage_id)
{
	sqlite3_stmt *st = STMT(e, "SELECT j.id, j.spec, s.kind FROM jobs j JOIN stages s ON s.id = j.stage_id"
				   " WHERE j.stage_id = ? AND j.state = 'queued' ORDER BY j.id");
	int64_t inproc[256];
	const struct stage_kind *inkind[256];
	size_t ninproc = 0;
	int rc, any = 0;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, stage_id);
	while ((rc = store_step_row(e->db, st)) == 1) {
		const struct stage_kind *kind = stage_kind_find(store_col_text(st, 2), NULL);
		if (kind && (kind->run || kind->rollout)) {
			if (ninproc < OTA_ARRAY_SIZE(inproc)) {
				inkind[ninproc] = kind;
				inproc[ninproc++] = store_col_int(st, 0);
			}
			continue;
		}
		json_t *spec = json_loads(store_col_text(st, 1), 0, NULL);
		json_t *labels = spec ? json_object_get(spec, "labels") : NULL;
		json_t *empty = json_array();
		queue_add(e, store_col_int(st, 0), labels ? labels : empty);
		json_decref(empty);
		json_decref(spec);
		any = 1;
	}
	sqlite3_reset(st);
	if (any)
		e->changed_work = 1;
	for (size_t i = 0; i < ninproc && rc >= 0; i++)
		rc = start_inproc(e, inproc[i], inkind[i]);
	return rc < 0 ? rc : 0;
}

/* Final state of a stage from its jobs, or NULL while some are unfinished. */
static const char *stage_outcome(struct engine *e, int64_t stage_id, int *rc)
{
	sqlite3_stmt *st = STMT(e,
		"SELECT COUNT(*), SUM(state IN ('passed','failed','canceled','skipped')),"
		" SUM(state = 'passed'), SUM(state = 'canceled') FROM jobs WHERE stage_id = ?");
	int64_t total, final, passed, canceled;

	*rc = 0;
	if (!st) {
		*rc = OTA_ERROR;
		return NULL;
	}
	sqlite3_bind_int64(st, 1, stage_id);
	if ((*rc = store_step_row(e->db, st)) != 1) {
		sqlite3_reset(st);
		*rc = *rc < 0 ? *rc : OTA_ERROR;
		return NULL;
	}
	*rc = 0;
	total = store_col_int(st, 0);
	final = store_col_int(st, 1);
	passed = store_col_int(st, 2);
	canceled = store_col_int(st, 3);
	sqlite3_reset(st);
	if (final < total)
		return NULL;
	if (passed == total)
		return "passed";
	return canceled ? "canceled" : "failed";
}

static int finish_run(struct engine *e, int64_t run_id, const char *state, const char *concurrency,
		      const char *error)
{
	sqlite3_stmt *st = STMT(e, "UPDATE runs SET state = ?, finished_at = ?, error = COALESCE(?, error) WHERE id = ?");
	int rc;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, clock_now_ms());
	if (error)
		sqlite3_bind_text(st, 3, error, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, run_id);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	event(e, run_id, 0, "run.final", json_pack("{ss}", "state", state));
	e->changed_state = 1;

	/* Let the next run waiting on the same concurrency group go. */
	if (concurrency) {
		int64_t next = 0;
		st = STMT(e, "SELECT id FROM runs WHERE concurrency = ? AND state IN ('queued','blocked') ORDER BY id LIMIT 1");
		if (!st)
			return OTA_ERROR;
		sqlite3_bind_text(st, 1, concurrency, -1, SQLITE_TRANSIENT);
		if (store_step_row(e->db, st) == 1)
			next = store_col_int(st, 0);
		sqlite3_reset(st);
		if (next)
			return advance_run(e, next);
	}
	return 0;
}

static int load_stages(struct engine *e, int64_t run_id, struct stagerow **out, size_t *n)
{
	sqlite3_stmt *st = STMT(e, "SELECT id, name, state, needs, when_filter FROM stages WHERE run_id = ? ORDER BY idx");
	struct stagerow *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, run_id);
	while ((rc = store_step_row(e->db, st)) == 1) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			v = xrealloc(v, cap * sizeof(*v));
		}
		memset(&v[cnt], 0, sizeof(v[cnt]));
		v[cnt].id = store_col_int(st, 0);
		snprintf(v[cnt].name, sizeof(v[cnt].name), "%s", store_col_text(st, 1));
		snprintf(v[cnt].state, sizeof(v[cnt].state), "%s", store_col_text(st, 2));
		v[cnt].needs = json_loads(store_col_text(st, 3), 0, NULL);
		if (!v[cnt].needs)
			v[cnt].needs = json_array();
		v[cnt].skip_by_when = sqlite3_column_type(st, 4) != SQLITE_NULL;
		if (v[cnt].skip_by_when && strcmp(store_col_text(st, 4), "no-match") != 0)
			v[cnt].held = xstrdup(store_col_text(st, 4));
		cnt++;
	}
	sqlite3_reset(st);
	*out = v;
	*n = cnt;
	return rc < 0 ? rc : 0;
}

static void free_stages(struct stagerow *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		json_decref(v[i].needs);
		free(v[i].held);
	}
	free(v);
}

static struct stagerow *find_stage(struct stagerow *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			return &v[i];
	return NULL;
}

static int stage_set(struct engine *e, struct stagerow *s, int64_t run_id, const char *state, const char *why)
{
	int64_t now = clock_now_ms();
	int rc;

	if (!strcmp(state, "running"))
		rc = set_state(e, "UPDATE stages SET state = ?, started_at = ? WHERE id = ?", s->id, state, now);
	else
		rc = set_state(e, "UPDATE stages SET state = ?, finished_at = ? WHERE id = ?", s->id, state, now);
	if (rc < 0)
		return rc;
	snprintf(s->state, sizeof(s->state), "%s", state);
	if (!strcmp(state, "skipped")) {
		/* its jobs never run */
		sqlite3_stmt *st = STMT(e, "UPDATE jobs SET state = 'skipped', finished_at = ? WHERE stage_id = ? AND state = 'queued'");
		if (!st)
			return OTA_ERROR;
		sqlite3_bind_int64(st, 1, now);
		sqlite3_bind_int64(st, 2, s->id);
		if ((rc = store_step_done(e->db, st)) < 0)
			return rc;
	}
	event(e, run_id, 0, "stage.state", json_pack("{ss ss ss*}", "stage", s->name, "state", state, "reason", why));
	return 0;
}

/*
 * Move a run forward as far as its current state allows.  Idempotent: it
 * only acts on what the database says, so recovery simply calls it for every
 * unfinished run.
 */
static int advance_run(struct engine *e, int64_t run_id)
{
	sqlite3_stmt *st = STMT(e, "SELECT state, concurrency FROM runs WHERE id = ?");
	char state[16] = "", *concurrency = NULL;
	struct stagerow *stages = NULL;
	size_t nstages = 0;
	int rc = 0, changed, any_failed = 0, all_final = 1;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, run_id);
	if ((rc = store_step_row(e->db, st)) == 1) {
		snprintf(state, sizeof(state), "%s", store_col_text(st, 0));
		if (store_col_text(st, 1))
			concurrency = xstrdup(store_col_text(st, 1));
	}
	sqlite3_reset(st);
	if (rc <= 0) {
		rc = rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", run_id);
		goto out;
	}
	rc = 0;
	if (engine_state_final(state))
		goto out;

	if (!strcmp(state, "queued") || !strcmp(state, "blocked")) {
		if (concurrency) {
			int busy;
			st = STMT(e, "SELECT 1 FROM runs WHERE concurrency = ? AND id < ? "
				     "AND state IN ('queued','blocked','running') LIMIT 1");
			if (!st) {
				rc = OTA_ERROR;
				goto out;
			}
			sqlite3_bind_text(st, 1, concurrency, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int64(st, 2, run_id);
			busy = store_step_row(e->db, st) == 1;
			sqlite3_reset(st);
			if (busy) {
				if (strcmp(state, "blocked") != 0) {
					st = STMT(e, "UPDATE runs SET state = 'blocked' WHERE id = ?");
					if (!st || (sqlite3_bind_int64(st, 1, run_id), store_step_done(e->db, st)) < 0) {
						rc = OTA_ERROR;
						goto out;
					}
					event(e, run_id, 0, "run.state", json_pack("{ss ss}", "state", "blocked",
										  "reason", "waiting for concurrency group"));
				}
				goto out;
			}
		}
		if ((rc = set_state(e, "UPDATE runs SET state = ?, started_at = ? WHERE id = ?", run_id, "running",
				    clock_now_ms())) < 0)
			goto out;
		event(e, run_id, 0, "run.state", json_pack("{ss}", "state", "running"));
	}

	if ((rc = load_stages(e, run_id, &stages, &nstages)) < 0)
		goto out;
	do {
		changed = 0;
		for (size_t i = 0; i < nstages; i++) {
			struct stagerow *s = &stages[i];
			if (!strcmp(s->state, "queued")) {
				int all_passed = 1;
				const char *bad = NULL;
				size_t k;
				json_t *need;
				json_array_foreach(s->needs, k, need) {
					struct stagerow *dep = find_stage(stages, nstages, json_string_value(need));
					if (!dep)
						continue; /* validated at trigger time */
					if (!strcmp(dep->state, "passed"))
						continue;
					all_passed = 0;
					if (engine_state_final(dep->state))
						bad = dep->name;
				}
				if (s->held) {
					rc = stage_set(e, s, run_id, "skipped", s->held);
					changed = 1;
				} else if (bad) {
					char *why = xasprintf("needs '%s', which did not pass", bad);
					rc = stage_set(e, s, run_id, "skipped", why);
					free(why);
					changed = 1;
				} else if (all_passed && s->skip_by_when) {
					rc = stage_set(e, s, run_id, "skipped", "'when' does not match the run's ref");
					changed = 1;
				} else if (all_passed) {
					if ((rc = stage_set(e, s, run_id, "running", NULL)) == 0)
						rc = enqueue_stage_jobs(e, s->id);
					changed = 1;
				}
			} else if (!strcmp(s->state, "running")) {
				const char *outcome = stage_outcome(e, s->id, &rc);
				if (outcome) {
					rc = stage_set(e, s, run_id, outcome, NULL);
					changed = 1;
				}
			}
			if (rc < 0)
				goto out;
		}
	} while (changed);

	/* Skipped stages do not fail a run: a skip caused by a failure has a
	 * failed stage upstream, and a skip by `when` is intended. */
	for (size_t i = 0; i < nstages; i++) {
		if (!engine_state_final(stages[i].state))
			all_final = 0;
		else if (!strcmp(stages[i].state, "failed") || !strcmp(stages[i].state, "canceled"))
			any_failed = 1;
	}
	if (all_final)
		rc = finish_run(e, run_id, any_failed ? "failed" : "passed", concurrency, NULL);
out:
	free_stages(stages, nstages);
	free(concurrency);
	return rc;
}

/* ---- attempts -------------------------------------------------------- */

static int retry_on(const json_t *spec, const char *failure)
{
	json_t *on = json_object_get(json_object_get(spec, "retry"), "on");
	size_t i;
	json_t *v;
	json_array_foreach(on, i, v)
		if (json_is_string(v) && !strcmp(json_string_value(v), failure))
			return 1;
	return 0;
}

/*
 * Record the end of the running attempt of j and decide what happens next:
 * pass, retry (back to the queue) or fail.  Caller holds the transaction.
 */
static int attempt_record(struct engine *e, struct jobrow *j, const struct job_result *r, int failed,
			  const char **state_out);

/* The kind's verdict, given the attempt's stored reports (and the baseline
 * run's, for `baseline:`); *message may replace r->message. */
static int attempt_verdict(struct engine *e, struct jobrow *j, const struct stage_kind *kind,
			   const struct job_result *r, char **message)
{
	json_t *reports = NULL, *baseline = NULL;
	struct verdict_input in = { 0 };
	int failed;

	if (rk_load_for_verdict(e->db, j->run_id, j->id, j->attempt, j->spec, &reports, &baseline,
				&in.baseline_run) < 0)
		fprintf(stderr, "otacd: engine: job %" PRId64 ": cannot load its reports: %s\n", j->id, ota_error_last());
	in.reports = reports ? reports : json_array();
	in.baseline = baseline;
	failed = kind->verdict(j->spec, r, &in, message);
	if (!reports)
		json_decref((json_t *)in.reports);
	json_decref(reports);
	json_decref(baseline);
	return failed;
}

static int attempt_done(struct engine *e, struct jobrow *j, const struct job_result *r, const char **state_out)
{
	const struct stage_kind *kind = stage_kind_find(j->kind, NULL);
	struct job_result rv = *r;
	char *message = NULL;
	int failed = r->failure_kind != NULL, rc;

	logstore_end(j->id, j->attempt); /* the log is complete: write what masking held back */
	if (kind && kind->verdict) {
		failed = attempt_verdict(e, j, kind, r, &message);
		if (message)
			rv.message = message;
	}
	if (rv.message && !message) /* a message may quote a step's output */
		rv.message = message = xstrdup(rv.message);
	if (message)
		mask_string(logstore_mask(), message);
	rc = attempt_record(e, j, &rv, failed, state_out);
	free(message);
	return rc;
}

static int attempt_record(struct engine *e, struct jobrow *j, const struct job_result *r, int failed,
			  const char **state_out)
{
	const char *failure = r->failure_kind;
	int64_t now = clock_now_ms();
	int rc;
	sqlite3_stmt *st;

	if (failed && !failure)
		failure = "script";

	st = STMT(e, "UPDATE job_attempts SET finished_at = ?, exit_code = ?, failure = ?, message = ? "
		     "WHERE job_id = ? AND attempt = ?");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_int(st, 2, r->exit_code);
	if (failure)
		sqlite3_bind_text(st, 3, failure, -1, SQLITE_STATIC);
	if (r->message)
		sqlite3_bind_text(st, 4, r->message, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 5, j->id);
	sqlite3_bind_int(st, 6, j->attempt);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;

	st = STMT(e, "UPDATE agents SET current_job = NULL WHERE id = ? AND current_job = ?");
	sqlite3_bind_int64(st, 1, j->agent_id);
	sqlite3_bind_int64(st, 2, j->id);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;

	if (failed && strcmp(failure, "canceled") != 0) {
		int use_infra = !strcmp(failure, "infra") && j->infra_left > 0;
		int use_count = !use_infra && retry_on(j->spec, failure) && j->retries_left > 0;
		if (use_infra || use_count) {
			st = STMT(e, "UPDATE jobs SET state = 'queued', agent_id = NULL, lease_expires = NULL,"
				     " deadline = NULL, exit_code = ?, failure = ?, message = ?,"
				     " infra_retries_left = infra_retries_left - ?, retries_left = retries_left - ? WHERE id = ?");
			sqlite3_bind_int(st, 1, r->exit_code);
			sqlite3_bind_text(st, 2, failure, -1, SQLITE_STATIC);
			if (r->message)
				sqlite3_bind_text(st, 3, r->message, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int(st, 4, use_infra);
			sqlite3_bind_int(st, 5, use_count);
			sqlite3_bind_int64(st, 6, j->id);
			if ((rc = store_step_done(e->db, st)) < 0)
				return rc;
			event(e, j->run_id, j->id, "job.retry",
			      json_pack("{si ss ss*}", "attempt", j->attempt, "failure", failure, "message", r->message));
			queue_add(e, j->id, json_object_get(j->spec, "labels"));
			e->changed_work = 1;
			e->changed_state = 1;
			*state_out = "queued";
			return 0;
		}
	}

	*state_out = !failed ? "passed" : (failure && !strcmp(failure, "canceled")) ? "canceled" : "failed";
	st = STMT(e, "UPDATE jobs SET state = ?, finished_at = ?, exit_code = ?, failure = ?, message = ?,"
		     " lease_expires = NULL, deadline = NULL WHERE id = ?");
	sqlite3_bind_text(st, 1, *state_out, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int(st, 3, r->exit_code);
	if (failure)
		sqlite3_bind_text(st, 4, failure, -1, SQLITE_STATIC);
	if (r->message)
		sqlite3_bind_text(st, 5, r->message, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 6, j->id);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	event(e, j->run_id, j->id, "job.final",
	      json_pack("{ss si ss*}", "state", *state_out, "attempt", j->attempt, "failure", failure));
	e->changed_state = 1;
	return advance_run(e, j->run_id);
}

/* Give up the job an agent holds (the agent restarted or was lost). */
static int release_agent_job(struct engine *e, int64_t agent_id, const char *why)
{
	sqlite3_stmt *st = STMT(e, "SELECT id FROM jobs WHERE agent_id = ? AND state = 'running'");
	int64_t ids[16];
	size_t n = 0;
	int rc = 0;

	sqlite3_bind_int64(st, 1, agent_id);
	while (n < OTA_ARRAY_SIZE(ids) && store_step_row(e->db, st) == 1)
		ids[n++] = store_col_int(st, 0);
	sqlite3_reset(st);
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct jobrow j;
		const char *state;
		struct job_result r = { -1, "infra", why };
		if ((rc = job_load(e, ids[i], &j)) == 0)
			rc = attempt_done(e, &j, &r, &state);
		job_release(&j);
	}
	return rc;
}

/* ---- the engine thread ------------------------------------------------ */

static int64_t compute_next_due(struct engine *e)
{
	sqlite3_stmt *st = STMT(e,
		"SELECT MIN(MIN(COALESCE(lease_expires, 9000000000000000), COALESCE(deadline, 9000000000000000)))"
		" FROM jobs WHERE state = 'running'");
	int64_t due = INT64_MAX;
	if (st && store_step_row(e->db, st) == 1 && sqlite3_column_type(st, 0) != SQLITE_NULL)
		due = store_col_int(st, 0);
	if (st)
		sqlite3_reset(st);
	return due;
}

/* Fail every running attempt whose lease or deadline has passed. */
static int tick(struct engine *e, void *arg)
{
	sqlite3_stmt *st = STMT(e, "SELECT id, lease_expires <= ?1 FROM jobs WHERE state = 'running'"
				   " AND (lease_expires <= ?1 OR deadline <= ?1) LIMIT 64");
	int64_t now = clock_real_ms(), ids[64];
	int lost[64];
	size_t n = 0;
	int rc = 0;

	(void)arg;
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, now);
	while (n < 64 && store_step_row(e->db, st) == 1) {
		ids[n] = store_col_int(st, 0);
		lost[n++] = (int)store_col_int(st, 1);
	}
	sqlite3_reset(st);
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct jobrow j;
		const char *state;
		char msg[160];
		struct job_result r = { -1, lost[i] ? "infra" : "timeout", msg };
		if ((rc = job_load(e, ids[i], &j)) < 0)
			break;
		if (lost[i])
			snprintf(msg, sizeof(msg), "agent %" PRId64 " lost: no heartbeat for %" PRId64 " ms",
				 j.agent_id, e->cfg.lease_ms);
		else
			snprintf(msg, sizeof(msg), "job exceeded its timeout and its agent did not report");
		rc = attempt_done(e, &j, &r, &state);
		job_release(&j);
	}
	return rc;
}

static void run_call(struct engine *e, struct call *c)
{
	ota_error_clear();
	if (store_begin(e->db) < 0) {
		c->rc = OTA_ERROR;
	} else {
		c->rc = c->fn(e, c->arg);
		if (c->rc < 0) {
			store_rollback(e->db);
			/* The in-memory queue may have moved ahead of the database. */
			queue_rebuild(e);
		} else if (store_commit(e->db) < 0) {
			store_rollback(e->db);
			queue_rebuild(e);
			c->rc = OTA_ERROR;
		}
	}
	if (c->rc < 0)
		snprintf(c->err, sizeof(c->err), "%s", ota_error_last());
	/* In-daemon jobs start once their "running" state is committed. */
	if (e->started_inproc.n) {
		pthread_mutex_lock(&e->inproc_lock);
		for (size_t i = 0; i < e->started_inproc.n; i++)
			if (c->rc >= 0)
				strvec_push(&e->inproc_queue, e->started_inproc.v[i]);
		pthread_cond_broadcast(&e->inproc_cond);
		pthread_mutex_unlock(&e->inproc_lock);
		strvec_clear(&e->started_inproc);
	}
	/* Objects go only after the rows naming them are gone for good. */
	for (size_t i = 0; i < e->dead_objects.n; i++)
		if (c->rc >= 0 && artifact_backend())
			artifact_backend()->remove(artifact_backend(), e->dead_objects.v[i]);
	strvec_clear(&e->dead_objects);
	if (e->changed_work)
		notifier_bump(&e->work);
	if (e->changed_state)
		notifier_bump(logstore_changes());
	if (e->changed_rollout && c->rc >= 0 && e->rollout_hook)
		e->rollout_hook(e->rollout_hook_arg);
	e->changed_work = e->changed_state = e->changed_rollout = 0;
	e->next_due = compute_next_due(e);
}

/*
 * Artifact retention: records of unreleased artifacts of finished runs
 * older than the retention go; an object goes with its last record (after
 * the commit, in run_call).  Released artifacts are kept forever.
 */
static int do_gc(struct engine *e, void *arg)
{
	int *removed = arg;
	sqlite3_stmt *st = STMT(e, "SELECT a.id, a.sha256, a.run_id FROM artifacts a JOIN runs r ON r.id = a.run_id"
				   " WHERE a.released = 0 AND a.created_at < ?"
				   " AND r.state IN ('passed','failed','canceled') LIMIT 500");
	struct strvec shas = STRVEC_INIT;
	int64_t ids[500], runs[500];
	size_t n = 0;
	int rc = 0;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, clock_now_ms() - e->cfg.artifact_retention_ms);
	while (n < 500 && store_step_row(e->db, st) == 1) {
		ids[n] = store_col_int(st, 0);
		strvec_push(&shas, store_col_text(st, 1));
		runs[n++] = store_col_int(st, 2);
	}
	sqlite3_reset(st);
	for (size_t i = 0; i < n && rc == 0; i++) {
		int still_used;
		st = STMT(e, "DELETE FROM artifacts WHERE id = ?");
		sqlite3_bind_int64(st, 1, ids[i]);
		if ((rc = store_step_done(e->db, st)) < 0)
			break;
		st = STMT(e, "SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1");
		sqlite3_bind_text(st, 1, shas.v[i], -1, SQLITE_STATIC);
		still_used = store_step_row(e->db, st) == 1;
		sqlite3_reset(st);
		if (!still_used && !strvec_contains(&e->dead_objects, shas.v[i]))
			strvec_push(&e->dead_objects, shas.v[i]);
		event(e, runs[i], 0, "artifact.expired", json_pack("{sI ss}", "artifact", (json_int_t)ids[i],
								   "sha256", shas.v[i]));
	}
	*removed = (int)n;
	strvec_clear(&shas);
	return rc;
}

static void *engine_main(void *arg)
{
	struct engine *e = arg;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		struct call *c;
		/* Sleep until a call arrives, a lease or deadline falls due, or
		 * the next artifact expiry pass. */
		while (!e->head && !e->stopping) {
			int64_t wait = e->next_due - clock_real_ms();
			int64_t gc_wait = e->cfg.artifact_retention_ms > 0 ? e->next_gc - clock_mono_ms() : INT64_MAX;
			struct timespec ts;
			if (gc_wait < wait)
				wait = gc_wait;
			if (wait <= 0)
				break;
			if (wait > 5000)
				wait = 5000;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += wait / 1000;
			ts.tv_nsec += (wait % 1000) * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&e->cond, &e->lock, &ts);
		}
		if (e->stopping && !e->head)
			break;
		c = e->head;
		if (c) {
			e->head = c->next;
			if (!e->head)
				e->tail = NULL;
		}
		pthread_mutex_unlock(&e->lock);

		if (c)
			run_call(e, c);
		if (clock_real_ms() >= e->next_due) {
			struct call t = { tick, NULL, 0, 0, "", NULL };
			run_call(e, &t);
			if (t.rc < 0)
				fprintf(stderr, "otacd: engine: %s\n", t.err);
		}
		if (e->cfg.artifact_retention_ms > 0 && clock_mono_ms() >= e->next_gc) {
			int removed = 0;
			struct call g = { do_gc, &removed, 0, 0, "", NULL };
			/* every minute, or more often when the retention (in real
			 * time, at this time scale) is short */
			int64_t every = (int64_t)((double)e->cfg.artifact_retention_ms / clock_scale() / 4);
			e->next_gc = clock_mono_ms() + (every < 1000 ? 1000 : every > 60000 ? 60000 : every);
			run_call(e, &g);
			if (g.rc < 0)
				fprintf(stderr, "otacd: artifact expiry: %s\n", g.err);
		}

		pthread_mutex_lock(&e->lock);
		if (c) {
			c->done = 1;
			pthread_cond_broadcast(&e->done_cond);
		}
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

static int engine_call(struct engine *e, int (*fn)(struct engine *, void *), void *arg)
{
	struct call c = { fn, arg, 0, 0, "", NULL };

	pthread_mutex_lock(&e->lock);
	if (e->stopping) {
		pthread_mutex_unlock(&e->lock);
		return ota_error_set(OTA_ERROR, "otacd is shutting down");
	}
	/* c lives on this stack until the engine marks it done, below. */
	if (e->tail)
		e->tail->next = &c;
	else
		e->head = &c; // cppcheck-suppress autoVariables
	e->tail = &c; // cppcheck-suppress autoVariables
	pthread_cond_signal(&e->cond);
	while (!c.done)
		pthread_cond_wait(&e->done_cond, &e->lock);
	pthread_mutex_unlock(&e->lock);
	if (c.rc < 0)
		ota_error_set(c.rc, "%s", c.err);
	return c.rc;
}

int release_version_cmp(const char *a, const char *b)
{
	for (int i = 0; i < 3; i++) {
		long x = strtol(a, (char **)&a, 10), y = strtol(b, (char **)&b, 10);
		if (x != y)
			return x < y ? -1 : 1;
		if (*a == '.')
			a++;
		if (*b == '.')
			b++;
	}
	return 0;
}

/* The anti-rollback and version rules, on connection db. */
static int release_rules(struct store *db, const char *product, const char *branch, const char *version,
			 int64_t counter, int64_t skip_run)
{
	sqlite3_stmt *st = store_stmt(db, "SELECT security_counter, version, run_id FROM releases WHERE product = ?"
					  " AND run_id != ? ORDER BY security_counter DESC LIMIT 1");
	int rc;

	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, product, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, skip_run);
	if ((rc = store_step_row(db, st)) == 1 && store_col_int(st, 0) > counter) {
		rc = ota_error_set(OTA_ECONFLICT,
				   "security counter %" PRId64 " is lower than %" PRId64 " (release %s of %s): devices that "
				   "hold %" PRId64 " refuse it; release with security_counter >= %" PRId64,
				   counter, store_col_int(st, 0), store_col_text(st, 1), product, store_col_int(st, 0),
				   store_col_int(st, 0));
		sqlite3_reset(st);
		return rc;
	}
	sqlite3_reset(st);
	st = store_stmt(db, "SELECT version FROM releases WHERE product = ? AND branch = ? AND run_id != ?"
			    " ORDER BY id DESC LIMIT 1");
	sqlite3_bind_text(st, 1, product, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, branch, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, skip_run);
	if ((rc = store_step_row(db, st)) == 1 && release_version_cmp(version, store_col_text(st, 0)) <= 0) {
		rc = ota_error_set(OTA_ECONFLICT, "version %s is not greater than %s, the last release of %s on %s",
				   version, store_col_text(st, 0), product, branch);
		sqlite3_reset(st);
		return rc;
	}
	sqlite3_reset(st);
	return rc < 0 ? rc : 0;
}

int release_check(const char *product, const char *branch, const char *version, int64_t security_counter)
{
	struct store *db = store_reader();
	if (!db)
		return ota_error_set(OTA_ERROR, "database unavailable");
	return release_rules(db, product, branch, version, security_counter, 0);
}

struct release_args {
	const struct release_record *r;
	int64_t id;
};

static int do_release_record(struct engine *e, void *arg)
{
	struct release_args *a = arg;
	const struct release_record *r = a->r;
	sqlite3_stmt *st = STMT(e, "SELECT id FROM releases WHERE run_id = ?");
	int rc;

	sqlite3_bind_int64(st, 1, r->run_id);
	rc = store_step_row(e->db, st);
	if (rc == 1)
		a->id = store_col_int(st, 0);
	sqlite3_reset(st);
	if (rc != 0)
		return rc < 0 ? rc : 0; /* recorded before a crash: done */
	if ((rc = release_rules(e->db, r->product, r->branch, r->version, r->security_counter, r->run_id)) < 0)
		return rc;
	st = STMT(e, "INSERT INTO releases(run_id, product, version, branch, security_counter, key_id, manifest_artifact,"
		     " envelope_artifact, provenance_artifact, created_at, state, reissue_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)");
	sqlite3_bind_int64(st, 1, r->run_id);
	sqlite3_bind_text(st, 2, r->product, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, r->version, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, r->branch, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, r->security_counter);
	sqlite3_bind_text(st, 6, r->key_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, r->manifest_artifact);
	sqlite3_bind_int64(st, 8, r->envelope_artifact);
	sqlite3_bind_int64(st, 9, r->provenance_artifact);
	sqlite3_bind_int64(st, 10, clock_now_ms());
	sqlite3_bind_text(st, 11, r->reissue_of ? "reissue" : "created", -1, SQLITE_STATIC);
	if (r->reissue_of)
		sqlite3_bind_int64(st, 12, r->reissue_of);
	else
		sqlite3_bind_null(st, 12);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	a->id = sqlite3_last_insert_rowid(store_db(e->db));
	if (r->reissue_for) {
		/* the halted release's devices roll forward to this one */
		st = STMT(e, "UPDATE releases SET state = 'rolled_back', rollback_to = ? WHERE id = ?");
		sqlite3_bind_int64(st, 1, a->id);
		sqlite3_bind_int64(st, 2, r->reissue_for);
		if ((rc = store_step_done(e->db, st)) < 0)
			return rc;
		e->changed_rollout = 1;
	}
	for (size_t i = 0; i < r->nkeep; i++) {
		st = STMT(e, "UPDATE artifacts SET released = 1 WHERE id = ?");
		sqlite3_bind_int64(st, 1, r->keep[i]);
		if ((rc = store_step_done(e->db, st)) < 0)
			return rc;
	}
	event(e, r->run_id, 0, "release.created", json_pack("{sI ss ss sI ss}", "release", (json_int_t)a->id,
								"product", r->product, "version", r->version,
								"security_counter", (json_int_t)r->security_counter,
								"key", r->key_id));
	return 0;
}

int engine_release_record(struct engine *e, const struct release_record *r, int64_t *release_id)
{
	struct release_args a = { r, 0 };
	int rc = engine_call(e, do_release_record, &a);
	if (rc == 0)
		*release_id = a.id;
	return rc;
}

int engine_artifact_gc(struct engine *e, int *removed)
{
	return engine_call(e, do_gc, removed);
}

/* ---- the stage worker: in-daemon stage kinds ---------------------------- */

void stage_log(const struct stage_ctx *c, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	int64_t size;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	buf_putc(&b, '\n');
	logstore_append(c->job_id, c->attempt, logstore_size(c->job_id, c->attempt), b.ptr, b.len, &size);
	buf_release(&b);
}

static void run_inproc(struct engine *e, int64_t job, int attempt)
{
	struct store *db = store_reader();
	sqlite3_stmt *st;
	struct stage_ctx ctx = { 0 };
	struct job_result r = { 0, NULL, NULL };
	const struct stage_kind *kind = NULL;
	const char *state = NULL;
	json_t *spec = NULL;

	if (!db || !(st = store_stmt(db, "SELECT j.run_id, j.spec, s.kind FROM jobs j JOIN stages s ON s.id = j.stage_id"
					 " WHERE j.id = ? AND j.state = 'running' AND j.attempt = ?")))
		return;
	sqlite3_bind_int64(st, 1, job);
	sqlite3_bind_int(st, 2, attempt);
	if (store_step_row(db, st) == 1) {
		ctx.run_id = store_col_int(st, 0);
		spec = json_loads(store_col_text(st, 1), 0, NULL);
		kind = stage_kind_find(store_col_text(st, 2), NULL);
	}
	sqlite3_reset(st);
	if (!spec || !kind || !kind->run) {
		json_decref(spec);
		return; /* canceled or finished meanwhile */
	}
	ctx.job_id = job;
	ctx.attempt = attempt;
	ctx.job = spec;
	ctx.config = e->cfg.config;
	ctx.engine = e;
	if (kind->run(&ctx, &r) < 0 && !r.failure_kind) {
		r.failure_kind = "infra";
		r.message = "the stage failed inside otacd";
	}
	if (engine_finish(e, 0, job, attempt, &r, &state) < 0 && ota_error_last()[0])
		fprintf(stderr, "otacd: stage worker: job %" PRId64 ": %s\n", job, ota_error_last());
	json_decref(spec);
}

static void *inproc_main(void *arg)
{
	struct engine *e = arg;

	pthread_mutex_lock(&e->inproc_lock);
	while (!e->inproc_stop) {
		char *item;
		long long job;
		int attempt;
		if (!e->inproc_queue.n) {
			pthread_cond_wait(&e->inproc_cond, &e->inproc_lock);
			continue;
		}
		item = e->inproc_queue.v[0];
		memmove(e->inproc_queue.v, e->inproc_queue.v + 1, e->inproc_queue.n * sizeof(char *));
		e->inproc_queue.n--;
		pthread_mutex_unlock(&e->inproc_lock);
		if (sscanf(item, "%lld %d", &job, &attempt) == 2)
			run_inproc(e, job, attempt);
		free(item);
		pthread_mutex_lock(&e->inproc_lock);
	}
	pthread_mutex_unlock(&e->inproc_lock);
	return NULL;
}

/* ---- recovery ------------------------------------------------------------ */

static int recover(struct engine *e, void *arg)
{
	sqlite3_stmt *st = STMT(e, "SELECT id FROM runs WHERE state IN ('queued','blocked','running') ORDER BY id");
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc;

	(void)arg;
	if ((rc = queue_rebuild(e)) < 0)
		return rc;
	/* Agents kept working while we were down: give each running job one
	 * full lease to be heard from again before calling its agent lost.
	 * (Local agents died with the old daemon; when they re-register under
	 * the same name their jobs are released at once.) */
	{
		sqlite3_stmt *up = STMT(e, "UPDATE jobs SET lease_expires = MAX(lease_expires, ?) WHERE state = 'running'");
		if (!up)
			return OTA_ERROR;
		sqlite3_bind_int64(up, 1, clock_real_ms() + e->cfg.lease_ms);
		if ((rc = store_step_done(e->db, up)) < 0)
			return rc;
	}
	{
		/* in-daemon jobs that were running when otacd died run again */
		sqlite3_stmt *in = STMT(e, "SELECT id, attempt FROM jobs WHERE state = 'running' AND agent_id = 0"
					     " AND id NOT IN (SELECT job_id FROM rollouts)");
		if (!in)
			return OTA_ERROR;
		while (store_step_row(e->db, in) == 1)
			strvec_pushf(&e->started_inproc, "%" PRId64 " %d", store_col_int(in, 0), (int)store_col_int(in, 1));
		sqlite3_reset(in);
	}
	if (!st)
		return OTA_ERROR;
	while ((rc = store_step_row(e->db, st)) == 1) {
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			ids = xrealloc(ids, cap * sizeof(*ids));
		}
		ids[n++] = store_col_int(st, 0);
	}
	sqlite3_reset(st);
	for (size_t i = 0; i < n && rc >= 0; i++)
		rc = advance_run(e, ids[i]);
	free(ids);
	return rc < 0 ? rc : 0;
}

int engine_start(struct engine **out, struct store *db, const struct engine_config *cfg)
{
	struct engine *e = xcalloc(1, sizeof(*e));
	struct call c = { recover, NULL, 0, 0, "", NULL };

	e->db = db;
	e->cfg = *cfg;
	if (e->cfg.lease_ms <= 0)
		e->cfg.lease_ms = 30000;
	if (e->cfg.heartbeat_ms <= 0)
		e->cfg.heartbeat_ms = 1000;
	if (e->cfg.default_timeout_ms <= 0)
		e->cfg.default_timeout_ms = 3600 * 1000;
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	pthread_cond_init(&e->done_cond, NULL);
	pthread_mutex_init(&e->inproc_lock, NULL);
	pthread_cond_init(&e->inproc_cond, NULL);
	notifier_init(&e->work);
	if (pthread_create(&e->inproc_thread, NULL, inproc_main, e) != 0) {
		free(e);
		return ota_error_set(OTA_ERROR, "cannot start the stage worker");
	}

	run_call(e, &c);
	if (c.rc < 0) {
		int rc = ota_error_set(c.rc, "recovery failed: %s", c.err);
		engine_stop(e);
		return rc;
	}
	if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
		engine_stop(e);
		return ota_error_set(OTA_ERROR, "cannot start the engine thread");
	}
	*out = e;
	return 0;
}

void engine_stop(struct engine *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	e->stopping = 1;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	if (e->thread)
		pthread_join(e->thread, NULL);
	pthread_mutex_lock(&e->inproc_lock);
	e->inproc_stop = 1;
	pthread_cond_broadcast(&e->inproc_cond);
	pthread_mutex_unlock(&e->inproc_lock);
	pthread_join(e->inproc_thread, NULL);
	strvec_clear(&e->inproc_queue);
	strvec_clear(&e->started_inproc);
	pthread_cond_destroy(&e->inproc_cond);
	pthread_mutex_destroy(&e->inproc_lock);
	notifier_bump(&e->work);
	queue_clear(e);
	free(e->queue);
	strvec_clear(&e->dead_objects);
	notifier_destroy(&e->work);
	pthread_cond_destroy(&e->cond);
	pthread_cond_destroy(&e->done_cond);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

struct notifier *engine_work(struct engine *e)
{
	return &e->work;
}

/* ---- commands -------------------------------------------------------------- */

static void bind_opt(sqlite3_stmt *st, int col, const char *s)
{
	if (s)
		sqlite3_bind_text(st, col, s, -1, SQLITE_STATIC);
}

/* Insert a run row and close the delivery it answers, if any. */
static int insert_run(struct engine *e, const struct trigger_req *req, const struct policy_trust *trust,
		      const char *name, const char *concurrency, const char *state, const char *error, int64_t *run_id)
{
	int64_t now = clock_now_ms();
	int final = engine_state_final(state);
	sqlite3_stmt *st;
	int rc;

	st = STMT(e, "INSERT INTO runs(pipeline, file, yaml, ref, commit_id, state, concurrency, trigger, created_at,"
		     " started_at, finished_at, error, repo, tree_id, author, committer, message, pusher, delivery_id,"
		     " protected, trust_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, req->file, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, req->yaml ? req->yaml : "", req->yaml ? (int)req->len : 0, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, req->ref, -1, SQLITE_STATIC);
	bind_opt(st, 5, req->commit);
	sqlite3_bind_text(st, 6, state, -1, SQLITE_STATIC);
	bind_opt(st, 7, concurrency);
	sqlite3_bind_text(st, 8, req->trigger, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 9, now);
	if (final) {
		sqlite3_bind_int64(st, 10, now);
		sqlite3_bind_int64(st, 11, now);
	}
	bind_opt(st, 12, error);
	bind_opt(st, 13, req->repo);
	bind_opt(st, 14, req->tree);
	bind_opt(st, 15, req->author);
	bind_opt(st, 16, req->committer);
	bind_opt(st, 17, req->message);
	bind_opt(st, 18, req->pusher);
	if (req->delivery_id)
		sqlite3_bind_int64(st, 19, req->delivery_id);
	sqlite3_bind_int(st, 20, trust->protected_run);
	sqlite3_bind_text(st, 21, trust->reason, -1, SQLITE_STATIC);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	*run_id = sqlite3_last_insert_rowid(store_db(e->db));
	if (req->delivery_id) {
		st = STMT(e, "UPDATE deliveries SET state = 'done', run_id = ? WHERE id = ?");
		sqlite3_bind_int64(st, 1, *run_id);
		sqlite3_bind_int64(st, 2, req->delivery_id);
		if ((rc = store_step_done(e->db, st)) < 0)
			return rc;
	}
	event(e, *run_id, 0, "run.created", json_pack("{ss ss ss ss*}", "pipeline", name, "ref", req->ref,
						      "trigger", req->trigger, "commit", req->commit));
	if (final) {
		event(e, *run_id, 0, "run.final", json_pack("{ss ss*}", "state", state, "error", error));
		e->changed_state = 1;
	}
	return 0;
}

struct trigger_args {
	const struct trigger_req *req;
	const struct pipeline *p;
	json_t *plan;       /* [{name, kind, needs, skip, skip_reason?, jobs:[spec…]}] */
	struct policy_trust trust;
	int64_t run_id;
};

static int do_trigger(struct engine *e, void *arg)
{
	struct trigger_args *a = arg;
	sqlite3_stmt *st;
	size_t i, k;
	json_t *stage, *job, *held = json_array();
	int rc;

	if ((rc = insert_run(e, a->req, &a->trust, a->p->name, a->p->concurrency, "queued", NULL, &a->run_id)) < 0) {
		json_decref(held);
		return rc;
	}

	json_array_foreach(a->plan, i, stage) {
		int64_t stage_id;
		char *needs = json_dumps(json_object_get(stage, "needs"), JSON_COMPACT);
		st = STMT(e, "INSERT INTO stages(run_id, idx, name, kind, state, needs, when_filter)"
			     " VALUES (?,?,?,?, 'queued', ?, ?)");
		sqlite3_bind_int64(st, 1, a->run_id);
		sqlite3_bind_int(st, 2, (int)i);
		sqlite3_bind_text(st, 3, json_string_value(json_object_get(stage, "name")), -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, json_string_value(json_object_get(stage, "kind")), -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 5, needs, -1, SQLITE_TRANSIENT);
		if (json_string_value(json_object_get(stage, "skip_reason"))) {
			/* skipped by the release policy: the reason is the filter */
			sqlite3_bind_text(st, 6, json_string_value(json_object_get(stage, "skip_reason")), -1, SQLITE_STATIC);
			json_array_append(held, json_object_get(stage, "name"));
		} else if (json_is_true(json_object_get(stage, "skip"))) {
			sqlite3_bind_text(st, 6, "no-match", -1, SQLITE_STATIC);
		}
		free(needs);
		if ((rc = store_step_done(e->db, st)) < 0) {
			json_decref(held);
			return rc;
		}
		stage_id = sqlite3_last_insert_rowid(store_db(e->db));

		json_array_foreach(json_object_get(stage, "jobs"), k, job) {
			json_t *retry = json_object_get(job, "retry");
			char *spec = json_dumps(job, JSON_COMPACT);
			st = STMT(e, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, retries_left, infra_retries_left)"
				     " VALUES (?,?,?,?,?, 'queued', ?, ?)");
			sqlite3_bind_int64(st, 1, a->run_id);
			sqlite3_bind_int64(st, 2, stage_id);
			sqlite3_bind_int(st, 3, (int)k);
			sqlite3_bind_text(st, 4, json_string_value(json_object_get(job, "name")), -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 5, spec, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int(st, 6, (int)json_integer_value(json_object_get(retry, "count")));
			sqlite3_bind_int(st, 7, json_object_get(retry, "infra")
						    ? (int)json_integer_value(json_object_get(retry, "infra")) : 2);
			free(spec);
			if ((rc = store_step_done(e->db, st)) < 0) {
				json_decref(held);
				return rc;
			}
		}
	}
	/* stages the policy holds back are refusals too: audited */
	if (json_array_size(held) &&
	    (rc = engine_audit(e, a->req->actor ? a->req->actor : a->req->pusher ? a->req->pusher : "otacd",
			       "policy_skip", 0, 0, a->trust.reason,
			       json_pack("{sI ss ss* sO}", "run", (json_int_t)a->run_id, "ref", a->req->ref, "repo",
					 a->req->repo, "stages", held))) < 0) {
		json_decref(held);
		return rc;
	}
	json_decref(held);
	return advance_run(e, a->run_id);
}

/* Build the run plan in the caller's thread: parsing and expansion need no
 * engine state and should not hold up the engine thread. */
static int build_plan(struct engine *e, const struct pipeline *p, const char *ref, const struct policy_trust *trust,
		      json_t **out, struct pl_diags *diags)
{
	json_t *plan = json_array();
	int rc = 0;

	if (p->gates && e->cfg.config) {
		/* gates name providers of the server config (docs/security.md, outbound requests) */
		const char *gname;
		json_t *gv;
		json_object_foreach(p->gates, gname, gv) {
			struct gate_spec g;
			char err[256];
			if (gate_spec_parse(gv, gname, &g, err, sizeof(err)) == 0 &&
			    gate_provider_check(&g, e->cfg.config->providers, e->cfg.config->prometheus_url) < 0) {
				snprintf(err, sizeof(err), "%s", ota_error_last());
				pl_diag_add(diags, (struct pl_pos){ 1, 1 }, "%s", err); /* gates keep no position */
			}
			gate_spec_release(&g);
		}
	}
	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *s = &p->stages[i];
		json_t *jobs = NULL, *needs = json_array(), *job;
		size_t k;

		for (size_t n = 0; n < s->secrets.n; n++) {
			if (!e->cfg.secrets || !json_object_get(e->cfg.secrets, s->secrets.v[n]))
				pl_diag_add(diags, s->pos, "stage '%s' uses secret '%s', which is not defined in otacd's configuration",
					    s->name, s->secrets.v[n]);
		}
		if ((rc = pipeline_expand_stage(p, s, &jobs)) < 0) {
			pl_diag_add(diags, s->pos, "%s", ota_error_last());
			json_decref(needs);
			continue;
		}
		json_array_foreach(jobs, k, job) {
			json_t *t = json_object_get(job, "timeout_ms");
			if (!t || json_integer_value(t) <= 0)
				json_object_set_new(job, "timeout_ms", json_integer(e->cfg.default_timeout_ms));
			json_object_set_new(job, "stage", json_string(s->name));
			policy_apply_job(e->cfg.config, p, s, job);
		}
		for (size_t n = 0; n < s->needs.n; n++)
			json_array_append_new(needs, json_string(s->needs.v[n]));
		json_array_append_new(plan, json_pack("{ss ss so sb so}", "name", s->name, "kind", s->kind,
						      "needs", needs, "skip",
						      s->when.set && !pipeline_filter_match(&s->when, ref), "jobs", jobs));
		if (!trust->protected_run && s->kind &&
		    (!strcmp(s->kind, "release") || !strcmp(s->kind, "soak") || !strcmp(s->kind, "rollout"))) {
			char *why = xasprintf("not a protected run: %s", trust->reason);
			json_object_set_new(json_array_get(plan, json_array_size(plan) - 1), "skip_reason", json_string(why));
			free(why);
		}
	}
	if (diags->n) {
		json_decref(plan);
		return OTA_EINVAL;
	}
	*out = plan;
	return 0;
}

/* A trigger request with its defaults filled in. */
static struct trigger_req trigger_defaults(const struct trigger_req *req)
{
	struct trigger_req r = *req;
	if (!r.ref || !*r.ref)
		r.ref = "refs/heads/main";
	if (!r.trigger)
		r.trigger = "api";
	if (!r.file)
		r.file = "pipeline.yml";
	return r;
}

struct refusal_args {
	const struct trigger_req *req;
	const struct pl_diags *diags;
	const char *trust;
};

/* A pipeline refused by the release policy: the audit log says who, what, why. */
static int do_refusal(struct engine *e, void *arg)
{
	struct refusal_args *a = arg;
	struct buf text = BUF_INIT;
	int rc;

	pl_diags_format(a->diags, &text);
	rc = engine_audit(e, a->req->actor ? a->req->actor : a->req->pusher ? a->req->pusher : "otacd", "policy_refused",
			  0, 0, buf_cstr(&text),
			  json_pack("{ss ss* ss ss* ss}", "ref", a->req->ref, "repo", a->req->repo, "trigger",
				    a->req->trigger, "commit", a->req->commit, "trust", a->trust));
	buf_release(&text);
	return rc;
}

int engine_trigger(struct engine *e, const struct trigger_req *req, int64_t *run_id, struct pl_diags *diags)
{
	struct trigger_req r = trigger_defaults(req);
	struct pipeline *p = NULL;
	struct trigger_args a = { &r, NULL, NULL, { 0, "" }, 0 };
	int rc;

	if ((rc = pipeline_parse(&p, r.file, r.yaml, r.len, diags)) < 0)
		return ota_error_set(OTA_EINVAL, "%s: pipeline does not validate", r.file);
	a.p = p;
	policy_trust(e->cfg.config, r.repo, r.ref, r.trigger, r.role, r.actor, &a.trust);
	if (a.trust.protected_run && policy_check_pipeline(e->cfg.config, store_reader(), p, r.repo, r.ref, r.trigger,
									diags) > 0) {
		struct refusal_args ra = { &r, diags, a.trust.reason };
		if ((rc = engine_call(e, do_refusal, &ra)) < 0)
			goto out;
		rc = ota_error_set(OTA_EPERM, "%s: refused by the release policy", r.file);
		goto out;
	}
	if ((rc = build_plan(e, p, r.ref, &a.trust, &a.plan, diags)) < 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: pipeline cannot run here", r.file);
		goto out;
	}
	if ((rc = engine_call(e, do_trigger, &a)) == 0)
		*run_id = a.run_id;
out:
	json_decref(a.plan);
	pipeline_free(p);
	return rc;
}

struct failed_run_args {
	const struct trigger_req *req;
	const char *name, *error;
	int64_t run_id;
};

static int do_failed_run(struct engine *e, void *arg)
{
	struct failed_run_args *a = arg;
	struct policy_trust t;
	policy_trust(e->cfg.config, a->req->repo, a->req->ref, a->req->trigger, a->req->role, a->req->actor, &t);
	return insert_run(e, a->req, &t, a->name, NULL, "failed", a->error, &a->run_id);
}

int engine_record_failed_run(struct engine *e, const struct trigger_req *req, const char *name,
			     const char *error, int64_t *run_id)
{
	struct trigger_req r = trigger_defaults(req);
	struct failed_run_args a = { &r, name, error, 0 };
	int rc;

	if ((rc = engine_call(e, do_failed_run, &a)) == 0)
		*run_id = a.run_id;
	return rc;
}

struct delivery_args {
	const struct delivery *d;
	const char *reason;
	int64_t id;
	int duplicate;
};

static int do_delivery_add(struct engine *e, void *arg)
{
	struct delivery_args *a = arg;
	sqlite3_stmt *st = STMT(e, "SELECT id FROM deliveries WHERE provider = ? AND delivery = ?");
	int rc;

	sqlite3_bind_text(st, 1, a->d->provider, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->d->delivery, -1, SQLITE_STATIC);
	rc = store_step_row(e->db, st);
	if (rc == 1)
		a->id = store_col_int(st, 0);
	sqlite3_reset(st);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		a->duplicate = 1;
		return 0;
	}
	st = STMT(e, "INSERT INTO deliveries(provider, delivery, repo, ref, before_sha, after_sha, forced, pusher,"
		     " received_at, state) VALUES (?,?,?,?,?,?,?,?,?, 'pending')");
	sqlite3_bind_text(st, 1, a->d->provider, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->d->delivery, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, a->d->repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, a->d->ref, -1, SQLITE_STATIC);
	bind_opt(st, 5, a->d->before);
	bind_opt(st, 6, a->d->after);
	sqlite3_bind_int(st, 7, a->d->forced);
	bind_opt(st, 8, a->d->pusher);
	sqlite3_bind_int64(st, 9, clock_now_ms());
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	a->id = sqlite3_last_insert_rowid(store_db(e->db));
	return 0;
}

int engine_delivery_add(struct engine *e, const struct delivery *d, int64_t *id, int *duplicate)
{
	struct delivery_args a = { d, NULL, 0, 0 };
	int rc = engine_call(e, do_delivery_add, &a);
	if (rc == 0) {
		*id = a.id;
		*duplicate = a.duplicate;
	}
	return rc;
}

static int do_delivery_done(struct engine *e, void *arg)
{
	struct delivery_args *a = arg;
	sqlite3_stmt *st = STMT(e, "UPDATE deliveries SET state = 'done', reason = ? WHERE id = ? AND state = 'pending'");
	sqlite3_bind_text(st, 1, a->reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, a->id);
	return store_step_done(e->db, st);
}

int engine_delivery_done(struct engine *e, int64_t id, const char *reason)
{
	struct delivery_args a = { NULL, reason, id, 0 };
	return engine_call(e, do_delivery_done, &a);
}

struct cancel_args {
	int64_t run_id;
	const char *actor, *reason;
};

static int do_cancel(struct engine *e, void *arg)
{
	struct cancel_args *a = arg;
	sqlite3_stmt *st = STMT(e, "SELECT state, concurrency FROM runs WHERE id = ?");
	char state[16] = "", *concurrency = NULL;
	int64_t now = clock_now_ms(), ids[256];
	size_t n = 0;
	int rc;

	sqlite3_bind_int64(st, 1, a->run_id);
	rc = store_step_row(e->db, st);
	if (rc == 1) {
		snprintf(state, sizeof(state), "%s", store_col_text(st, 0));
		if (store_col_text(st, 1))
			concurrency = xstrdup(store_col_text(st, 1));
	}
	sqlite3_reset(st);
	if (rc <= 0)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", a->run_id);
	if (engine_state_final(state)) {
		free(concurrency);
		return ota_error_set(OTA_ECONFLICT, "run %" PRId64 " already finished (%s)", a->run_id, state);
	}
	/* Queued jobs leave the dispatch queue; running ones learn on their next heartbeat. */
	do {
		n = 0;
		st = STMT(e, "SELECT id FROM jobs WHERE run_id = ? AND state IN ('queued','running') LIMIT 256");
		sqlite3_bind_int64(st, 1, a->run_id);
		while (n < OTA_ARRAY_SIZE(ids) && store_step_row(e->db, st) == 1)
			ids[n++] = store_col_int(st, 0);
		sqlite3_reset(st);
		for (size_t i = 0; i < n; i++) {
			queue_remove(e, ids[i]);
			st = STMT(e, "UPDATE jobs SET state = 'canceled', finished_at = ?, failure = 'canceled',"
				     " message = 'run canceled', lease_expires = NULL, deadline = NULL WHERE id = ?");
			sqlite3_bind_int64(st, 1, now);
			sqlite3_bind_int64(st, 2, ids[i]);
			if ((rc = store_step_done(e->db, st)) < 0)
				goto out;
			event(e, a->run_id, ids[i], "job.final", json_pack("{ss}", "state", "canceled"));
		}
	} while (n == OTA_ARRAY_SIZE(ids));
	if ((rc = rollout_on_run_canceled(e, a->run_id)) < 0)
		goto out;
	st = STMT(e, "UPDATE stages SET state = 'canceled', finished_at = ? WHERE run_id = ? AND state IN ('queued','running')");
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_int64(st, 2, a->run_id);
	if ((rc = store_step_done(e->db, st)) < 0)
		goto out;
	if ((rc = finish_run(e, a->run_id, "canceled", concurrency, "canceled by user")) < 0)
		goto out;
	rc = engine_audit(e, a->actor, "cancel", 0, 0, a->reason, json_pack("{sI}", "run", (json_int_t)a->run_id));
out:
	free(concurrency);
	return rc;
}

int engine_cancel_run(struct engine *e, int64_t run_id, const char *actor, const char *reason)
{
	struct cancel_args a = { run_id, actor, reason };
	return engine_call(e, do_cancel, &a);
}

int engine_audit(struct engine *e, const char *actor, const char *action, int64_t release, int64_t rollout,
		 const char *reason, json_t *detail)
{
	sqlite3_stmt *st = STMT(e, "INSERT INTO audit(at, actor, action, release_id, rollout_id, reason, detail)"
				   " VALUES (?,?,?,?,?,?,?)");
	char *d = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
	int rc;

	json_decref(detail);
	if (!st) {
		free(d);
		return OTA_ERROR;
	}
	sqlite3_bind_int64(st, 1, clock_now_ms());
	sqlite3_bind_text(st, 2, actor ? actor : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, action, -1, SQLITE_STATIC);
	if (release)
		sqlite3_bind_int64(st, 4, release);
	else
		sqlite3_bind_null(st, 4);
	if (rollout)
		sqlite3_bind_int64(st, 5, rollout);
	else
		sqlite3_bind_null(st, 5);
	sqlite3_bind_text(st, 6, reason ? reason : "", -1, SQLITE_STATIC);
	if (d)
		sqlite3_bind_text(st, 7, d, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 7);
	rc = store_step_done(engine_store(e), st);
	free(d);
	return rc;
}

struct register_args {
	const char *name;
	const json_t *labels;
	int local;
	int64_t agent_id;
};

static int do_register(struct engine *e, void *arg)
{
	struct register_args *a = arg;
	char *labels = json_dumps(a->labels, JSON_COMPACT);
	int64_t now = clock_now_ms();
	sqlite3_stmt *st;
	int rc;

	st = STMT(e, "INSERT INTO agents(name, labels, local, registered_at, last_seen) VALUES (?,?,?,?,?)"
		     " ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, local = excluded.local,"
		     " registered_at = excluded.registered_at, last_seen = excluded.last_seen");
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, labels, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 3, a->local);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_int64(st, 5, now);
	free(labels);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	st = STMT(e, "SELECT id FROM agents WHERE name = ?");
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	rc = store_step_row(e->db, st);
	a->agent_id = rc == 1 ? store_col_int(st, 0) : 0;
	sqlite3_reset(st);
	if (rc != 1)
		return rc < 0 ? rc : ota_error_set(OTA_ERROR, "agent registration lost");
	event(e, 0, 0, "agent.registered", json_pack("{ss sI}", "name", a->name, "agent", (json_int_t)a->agent_id));
	/* A registering agent has restarted: whatever it held is gone. */
	return release_agent_job(e, a->agent_id, "agent restarted while running this job");
}

int engine_agent_register(struct engine *e, const char *name, const json_t *labels, int local, int64_t *agent_id)
{
	struct register_args a = { name, labels, local, 0 };
	int rc = engine_call(e, do_register, &a);
	if (rc == 0)
		*agent_id = a.agent_id;
	return rc;
}

struct claim_args {
	int64_t agent_id;
	const json_t *allowed;   /* labels the agent may claim; NULL: any */
	json_t *job;
};

/* Keep only the labels that are also in allowed (the agent's registered
 * labels): an agent never claims a job outside them, whatever it announced. */
static void labels_bound(json_t *labels, const json_t *allowed)
{
	size_t i = 0;
	while (allowed && i < json_array_size(labels)) {
		json_t *one = json_pack("[O]", json_array_get(labels, i));
		int ok = labels_match(one, allowed);
		json_decref(one);
		if (ok)
			i++;
		else
			json_array_remove(labels, i);
	}
}

static json_t *job_payload(struct engine *e, const struct jobrow *j)
{
	json_t *out = json_deep_copy(j->spec), *secrets = json_object(), *names, *name;
	size_t i;

	/* Secrets go only to protected runs, decided when the run was made
	 * and checked again here, where they leave the daemon (policy.h). */
	names = policy_run_protected(e->db, j->run_id) == 1 ? json_object_get(j->spec, "secrets") : NULL;
	json_array_foreach(names, i, name) {
		json_t *v = e->cfg.secrets ? json_object_get(e->cfg.secrets, json_string_value(name)) : NULL;
		if (v)
			json_object_set(secrets, json_string_value(name), v);
	}
	json_object_set_new(out, "secrets", secrets);
	json_object_set_new(out, "job_id", json_integer(j->id));
	json_object_set_new(out, "attempt", json_integer(j->attempt));
	json_object_set_new(out, "run_id", json_integer(j->run_id));
	json_object_set_new(out, "stage", json_string(j->stage_name));
	json_object_set_new(out, "max_log_bytes", json_integer(logstore_max_bytes()));

	/* Where the code comes from: the agent fetches the tree from us. */
	{
		sqlite3_stmt *st = STMT(e, "SELECT ref, repo, commit_id, tree_id FROM runs WHERE id = ?");
		sqlite3_bind_int64(st, 1, j->run_id);
		if (store_step_row(e->db, st) == 1) {
			json_object_set_new(out, "ref", json_string(store_col_text(st, 0)));
			if (store_col_text(st, 1) && store_col_text(st, 2)) {
				char *url = xasprintf("/api/v1/agent/jobs/%" PRId64 "/source?attempt=%d", j->id, j->attempt);
				json_object_set_new(out, "source",
						    json_pack("{ss ss ss ss* ss}", "url", url, "repo", store_col_text(st, 1),
							      "commit", store_col_text(st, 2), "tree", store_col_text(st, 3),
							      "ref", store_col_text(st, 0)));
				free(url);
			}
		}
		sqlite3_reset(st);
	}
	return out;
}

static int do_claim(struct engine *e, void *arg)
{
	struct claim_args *a = arg;
	sqlite3_stmt *st = STMT(e, "SELECT labels FROM agents WHERE id = ? AND revoked_at IS NULL");
	json_t *labels = NULL;
	struct jobrow j = { 0 };
	int64_t real = clock_real_ms(), now = clock_now_ms(), timeout;
	char token[65] = "", token_hash[65];
	int rc;
	size_t i;

	sqlite3_bind_int64(st, 1, a->agent_id);
	rc = store_step_row(e->db, st);
	if (rc == 1)
		labels = json_loads(store_col_text(st, 0), 0, NULL);
	sqlite3_reset(st);
	if (rc <= 0 || !labels)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "agent %" PRId64 " is not registered", a->agent_id);
	labels_bound(labels, a->allowed);

	/* An agent asking for work holds none: release a job it still owns. */
	if ((rc = release_agent_job(e, a->agent_id, "agent asked for new work while holding this job")) < 0)
		goto out;
	st = STMT(e, "UPDATE agents SET last_seen = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_int64(st, 2, a->agent_id);
	if ((rc = store_step_done(e->db, st)) < 0)
		goto out;

	for (i = 0; i < e->nqueue; i++)
		if (labels_match(e->queue[i].labels, labels))
			break;
	if (i == e->nqueue)
		goto out; /* nothing for this agent */

	if ((rc = job_load(e, e->queue[i].id, &j)) < 0)
		goto out;
	queue_remove(e, j.id);
	j.attempt++;
	j.agent_id = a->agent_id;
	timeout = json_integer_value(json_object_get(j.spec, "timeout_ms"));
	st = STMT(e, "UPDATE jobs SET state = 'running', attempt = ?, agent_id = ?, lease_expires = ?, deadline = ?,"
		     " started_at = ?, finished_at = NULL WHERE id = ? AND state = 'queued'");
	sqlite3_bind_int(st, 1, j.attempt);
	sqlite3_bind_int64(st, 2, a->agent_id);
	sqlite3_bind_int64(st, 3, real + e->cfg.lease_ms);
	sqlite3_bind_int64(st, 4, real + timeout + e->cfg.lease_ms);
	sqlite3_bind_int64(st, 5, now);
	sqlite3_bind_int64(st, 6, j.id);
	if ((rc = store_step_done(e->db, st)) < 0)
		goto out;
	/* The attempt's job token: only its hash is kept (in the attempt's row,
	 * so a restarted daemon still knows it); the agent gets it once. */
	if ((rc = ota_random_hex(token, 32)) < 0)
		goto out;
	auth_sha256_hex(token, token_hash);
	st = STMT(e, "INSERT INTO job_attempts(job_id, attempt, agent_id, started_at, token_hash) VALUES (?,?,?,?,?)");
	sqlite3_bind_int64(st, 1, j.id);
	sqlite3_bind_int(st, 2, j.attempt);
	sqlite3_bind_int64(st, 3, a->agent_id);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_text(st, 5, token_hash, -1, SQLITE_STATIC);
	if ((rc = store_step_done(e->db, st)) < 0)
		goto out;
	st = STMT(e, "UPDATE agents SET current_job = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, j.id);
	sqlite3_bind_int64(st, 2, a->agent_id);
	if ((rc = store_step_done(e->db, st)) < 0)
		goto out;
	event(e, j.run_id, j.id, "job.running", json_pack("{si sI}", "attempt", j.attempt, "agent", (json_int_t)a->agent_id));
	e->changed_state = 1;
	a->job = job_payload(e, &j);
	json_object_set_new(a->job, "job_token", json_string(token));
out:
	OPENSSL_cleanse(token, sizeof(token));
	job_release(&j);
	json_decref(labels);
	return rc;
}

int engine_claim(struct engine *e, int64_t agent_id, const json_t *allowed, json_t **job)
{
	struct claim_args a = { agent_id, allowed, NULL };
	int rc = engine_call(e, do_claim, &a);
	if (rc < 0) {
		json_decref(a.job);
		return rc;
	}
	*job = a.job;
	return 0;
}

struct heartbeat_args {
	int64_t agent_id, job_id;
	int attempt;
	int cancel;
};

static int do_heartbeat(struct engine *e, void *arg)
{
	struct heartbeat_args *a = arg;
	sqlite3_stmt *st = STMT(e, "SELECT state, attempt, COALESCE(agent_id, 0) FROM jobs WHERE id = ?");
	char state[16] = "";
	int attempt = 0, rc;
	int64_t agent = 0;

	sqlite3_bind_int64(st, 1, a->job_id);
	rc = store_step_row(e->db, st);
	if (rc == 1) {
		snprintf(state, sizeof(state), "%s", store_col_text(st, 0));
		attempt = (int)store_col_int(st, 1);
		agent = store_col_int(st, 2);
	}
	sqlite3_reset(st);
	if (rc <= 0)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "job %" PRId64 " not found", a->job_id);
	if (attempt != a->attempt || agent != a->agent_id)
		return ota_error_set(OTA_ECONFLICT, "attempt %d of job %" PRId64 " is not leased to this agent",
				     a->attempt, a->job_id);
	if (!strcmp(state, "canceled")) {
		a->cancel = 1;
		return 0;
	}
	if (strcmp(state, "running") != 0)
		return ota_error_set(OTA_ECONFLICT, "job %" PRId64 " is %s", a->job_id, state);
	st = STMT(e, "UPDATE jobs SET lease_expires = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, clock_real_ms() + e->cfg.lease_ms);
	sqlite3_bind_int64(st, 2, a->job_id);
	if ((rc = store_step_done(e->db, st)) < 0)
		return rc;
	st = STMT(e, "UPDATE agents SET last_seen = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, clock_now_ms());
	sqlite3_bind_int64(st, 2, a->agent_id);
	return store_step_done(e->db, st);
}

int engine_heartbeat(struct engine *e, int64_t agent_id, int64_t job_id, int attempt, int *cancel)
{
	struct heartbeat_args a = { agent_id, job_id, attempt, 0 };
	int rc = engine_call(e, do_heartbeat, &a);
	*cancel = a.cancel;
	return rc;
}

struct finish_args {
	int64_t agent_id, job_id;
	int attempt;
	const struct job_result *r;
	const char *state;
};

static const char *static_state(const char *s)
{
	static const char *const states[] = { "queued", "running", "passed", "failed", "canceled", "skipped", "blocked" };
	for (size_t i = 0; i < OTA_ARRAY_SIZE(states); i++)
		if (!strcmp(states[i], s))
			return states[i];
	return "unknown";
}

static int do_finish(struct engine *e, void *arg)
{
	struct finish_args *a = arg;
	struct jobrow j;
	sqlite3_stmt *st;
	int rc, attempt_open = 0;

	if ((rc = job_load(e, a->job_id, &j)) < 0)
		return rc;
	st = STMT(e, "SELECT finished_at IS NULL FROM job_attempts WHERE job_id = ? AND attempt = ? AND agent_id = ?");
	sqlite3_bind_int64(st, 1, a->job_id);
	sqlite3_bind_int(st, 2, a->attempt);
	sqlite3_bind_int64(st, 3, a->agent_id);
	rc = store_step_row(e->db, st);
	if (rc == 1)
		attempt_open = (int)store_col_int(st, 0);
	sqlite3_reset(st);
	if (rc < 0)
		goto out;
	if (rc == 0) {
		rc = ota_error_set(OTA_ECONFLICT, "attempt %d of job %" PRId64 " was not leased to this agent",
				   a->attempt, a->job_id);
		goto out;
	}
	rc = 0;
	if (!attempt_open) {
		/* Already recorded (a resent finish, or a lease that expired first). */
		a->state = static_state(j.state);
		if (j.attempt != a->attempt || !strcmp(j.state, "running"))
			rc = ota_error_set(OTA_ECONFLICT, "attempt %d of job %" PRId64 " already ended", a->attempt, a->job_id);
		goto out;
	}
	if (!strcmp(j.state, "canceled")) {
		/* The run was canceled while this attempt ran: just close the attempt. */
		st = STMT(e, "UPDATE job_attempts SET finished_at = ?, exit_code = ?, failure = 'canceled' WHERE job_id = ? AND attempt = ?");
		sqlite3_bind_int64(st, 1, clock_now_ms());
		sqlite3_bind_int(st, 2, a->r->exit_code);
		sqlite3_bind_int64(st, 3, a->job_id);
		sqlite3_bind_int(st, 4, a->attempt);
		if ((rc = store_step_done(e->db, st)) < 0)
			goto out;
		st = STMT(e, "UPDATE agents SET current_job = NULL WHERE id = ? AND current_job = ?");
		sqlite3_bind_int64(st, 1, a->agent_id);
		sqlite3_bind_int64(st, 2, a->job_id);
		rc = store_step_done(e->db, st);
		a->state = "canceled";
		goto out;
	}
	if (strcmp(j.state, "running") != 0 || j.attempt != a->attempt) {
		rc = ota_error_set(OTA_ECONFLICT, "job %" PRId64 " is %s", a->job_id, j.state);
		goto out;
	}
	rc = attempt_done(e, &j, a->r, &a->state);
out:
	job_release(&j);
	return rc;
}

int engine_finish(struct engine *e, int64_t agent_id, int64_t job_id, int attempt,
		  const struct job_result *r, const char **state)
{
	struct finish_args a = { agent_id, job_id, attempt, r, NULL };
	int rc = engine_call(e, do_finish, &a);
	if (a.state)
		*state = a.state;
	return rc;
}

struct artifact_args {
	int64_t job_id;
	int attempt;
	const struct artifact_info *info;
	int64_t id;
};

static int do_artifact_add(struct engine *e, void *arg)
{
	struct artifact_args *a = arg;
	struct jobrow j;
	sqlite3_stmt *st;
	int rc;

	if ((rc = job_load(e, a->job_id, &j)) < 0)
		return rc;
	if (strcmp(j.state, "running") != 0 || j.attempt != a->attempt) {
		rc = ota_error_set(OTA_ECONFLICT, "attempt %d of job %" PRId64 " is not running", a->attempt, a->job_id);
		goto out;
	}
	if (e->cfg.max_run_artifact_bytes > 0) {
		int64_t used = 0;
		st = STMT(e, "SELECT COALESCE(SUM(size), 0) FROM artifacts WHERE run_id = ? AND NOT (job_id = ? AND attempt = ? AND name = ?)");
		sqlite3_bind_int64(st, 1, j.run_id);
		sqlite3_bind_int64(st, 2, j.id);
		sqlite3_bind_int(st, 3, a->attempt);
		sqlite3_bind_text(st, 4, a->info->name, -1, SQLITE_STATIC);
		if (store_step_row(e->db, st) == 1)
			used = store_col_int(st, 0);
		sqlite3_reset(st);
		if (used + a->info->size > e->cfg.max_run_artifact_bytes) {
			rc = ota_error_set(OTA_ETOOBIG, "run %" PRId64 " would hold %" PRId64 " bytes of artifacts, over its limit of %" PRId64,
					   j.run_id, used + a->info->size, e->cfg.max_run_artifact_bytes);
			goto out;
		}
	}
	st = STMT(e, "INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, type, hardware, created_at)"
		     " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(job_id, attempt, name) DO UPDATE SET"
		     " sha256 = excluded.sha256, size = excluded.size, type = excluded.type, hardware = excluded.hardware");
	sqlite3_bind_int64(st, 1, j.run_id);
	sqlite3_bind_int64(st, 2, j.id);
	sqlite3_bind_int(st, 3, a->attempt);
	sqlite3_bind_text(st, 4, a->info->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, a->info->sha256, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, a->info->size);
	if (a->info->type)
		sqlite3_bind_text(st, 7, a->info->type, -1, SQLITE_STATIC);
	if (a->info->hardware)
		sqlite3_bind_text(st, 8, a->info->hardware, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 9, clock_now_ms());
	if ((rc = store_step_done(e->db, st)) < 0)
		goto out;
	st = STMT(e, "SELECT id FROM artifacts WHERE job_id = ? AND attempt = ? AND name = ?");
	sqlite3_bind_int64(st, 1, j.id);
	sqlite3_bind_int(st, 2, a->attempt);
	sqlite3_bind_text(st, 3, a->info->name, -1, SQLITE_STATIC);
	if (store_step_row(e->db, st) == 1)
		a->id = store_col_int(st, 0);
	sqlite3_reset(st);
	event(e, j.run_id, j.id, "artifact.added", json_pack("{ss ss sI}", "name", a->info->name, "sha256",
							      a->info->sha256, "size", (json_int_t)a->info->size));
out:
	job_release(&j);
	return rc;
}

int engine_artifact_add(struct engine *e, int64_t job_id, int attempt, const struct artifact_info *a,
			int64_t *artifact_id)
{
	struct artifact_args args = { job_id, attempt, a, 0 };
	int rc = engine_call(e, do_artifact_add, &args);
	if (rc == 0)
		*artifact_id = args.id;
	return rc;
}

/* ---- for the engine's own modules (engine_int.h) ------------------------ */

int engine_release_agent_job(struct engine *e, int64_t agent_id, const char *why)
{
	return release_agent_job(e, agent_id, why);
}

struct store *engine_store(struct engine *e)
{
	return e->db;
}

int engine_exec(struct engine *e, int (*fn)(struct engine *, void *), void *arg)
{
	return engine_call(e, fn, arg);
}

int engine_job_complete(struct engine *e, int64_t job_id, const struct job_result *r, const char **state)
{
	struct jobrow j;
	const char *st = NULL;
	int rc;

	if ((rc = job_load(e, job_id, &j)) < 0)
		return rc;
	if (strcmp(j.state, "running") != 0) {
		job_release(&j);
		return ota_error_set(OTA_ECONFLICT, "job %" PRId64 " is %s, not running", job_id, j.state);
	}
	rc = attempt_done(e, &j, r, &st);
	job_release(&j);
	if (state)
		*state = st;
	return rc;
}

void engine_emit(struct engine *e, int64_t run, int64_t job, const char *kind, json_t *detail)
{
	event(e, run, job, kind, detail);
	e->changed_state = 1;
}

void engine_rollout_changed(struct engine *e)
{
	e->changed_rollout = 1;
}

void engine_set_rollout_hook(struct engine *e, void (*fn)(void *), void *arg)
{
	pthread_mutex_lock(&e->lock);
	e->rollout_hook = fn;
	e->rollout_hook_arg = arg;
	pthread_mutex_unlock(&e->lock);
}

const struct engine_config *engine_cfg(struct engine *e)
{
	return &e->cfg;
}
