/*
 * engine.c - the single writer of run state.
 *
 * How it works.  engine_start() recovers from the database and starts one
 * thread.  Public functions package their arguments into a `struct call`,
 * queue it, and sleep until the engine thread has run it; the engine thread
 * runs every call inside one transaction (store_begin … store_commit: the
 * storage layer's writer lock, db/db.h), so each command is atomic on
 * disk.  Between calls the thread wakes for the next lease or job deadline
 * (stored as absolute wall-clock times in the jobs table) and fails the
 * attempts that ran out.
 *
 * State the engine thread alone touches: the writer connection, the
 * in-memory dispatch queue (queued jobs of running stages, ordered by job
 * id, rebuilt from the database on start and after any failed command).
 *
 * Every job state change is also written to the events table; the final
 * state of a job is written there exactly once ("job.final"), which tests
 * use to prove nothing finished twice.
 *
 * This file holds the thread, the command queue, the dispatch queue, run
 * and stage progression, the stage worker and recovery.  The commands live
 * beside it and share its state through engine_core.h: engine_jobs.c
 * (attempts, claims, leases, finishes, artifacts), engine_runs.c (triggers,
 * deliveries, cancels), engine_release.c (releases, the audit log).
 */
#include "engine.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "artifact.h"
#include "clock.h"
#include "commitwatch.h"
#include "db/db.h"
#include "db/db_leader.h"
#include "diskguard.h"
#include "logstore.h"
#include "engine_core.h"
#include "notify/notify.h"
#include "policy.h"
#include "rollout.h"

int engine_state_final(const char *s)
{
	return !strcmp(s, "passed") || !strcmp(s, "failed") || !strcmp(s, "canceled") ||
	       !strcmp(s, "skipped");
}

/* ---- events (engine thread) ------------------------------------------ */

static void note_store_trouble(struct engine *e);

void eng_event(struct engine *e, int64_t run, int64_t job, const char *kind, json_t *detail)
{
	struct db_stmt *st = store_q(e->db, "INSERT INTO events(at, run_id, job_id, kind, detail) VALUES (?,?,?,?,?)");
	char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;

	e->changed_state = 1; /* wakes /api/v1/events followers after the commit */
	if (st) {
		/* run, job and detail left unbound are NULL */
		db_bind_int64(st, 1, clock_now_ms());
		if (run)
			db_bind_int64(st, 2, run);
		if (job)
			db_bind_int64(st, 3, job);
		db_bind_text(st, 4, kind);
		db_bind_text(st, 5, text);
		/* A failure spoils the command's transaction, whose commit then
		 * fails; note a full disk now, while SQLite still says so. */
		if (db_run(st) < 0)
			note_store_trouble(e);
	}
	free(text);
	json_decref(detail);
}

/* ---- dispatch queue ------------------------------------------------- */

void eng_queue_add(struct engine *e, int64_t job, json_t *labels)
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

void eng_queue_remove(struct engine *e, int64_t job)
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
	struct db_stmt *st = store_q(e->db,
		"SELECT j.id, j.spec FROM jobs j JOIN stages s ON s.id = j.stage_id "
		"JOIN runs r ON r.id = j.run_id "
		"WHERE j.state = 'queued' AND s.state = 'running' AND r.state = 'running' ORDER BY j.id");
	int rc;

	queue_clear(e);
	if (!st)
		return OTA_ERROR;
	while ((rc = db_step(st)) == 1) {
		json_t *spec = json_loads(db_column_text(st, 1), 0, NULL);
		json_t *labels = spec ? json_object_get(spec, "labels") : NULL;
		json_t *empty = json_array();
		eng_queue_add(e, db_column_int64(st, 0), labels ? labels : empty);
		json_decref(empty);
		json_decref(spec);
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int eng_job_load(struct engine *e, int64_t id, struct jobrow *j)
{
	struct db_stmt *st = store_q(e->db,
		"SELECT j.run_id, j.stage_id, COALESCE(j.agent_id, 0), j.attempt, j.retries_left,"
		" j.infra_retries_left, j.state, j.spec, s.name, s.kind"
		" FROM jobs j JOIN stages s ON s.id = j.stage_id WHERE j.id = ?");
	int rc;

	memset(j, 0, sizeof(*j));
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	rc = db_step(st);
	if (rc == 1) {
		j->id = id;
		j->run_id = db_column_int64(st, 0);
		j->stage_id = db_column_int64(st, 1);
		j->agent_id = db_column_int64(st, 2);
		j->attempt = (int)db_column_int64(st, 3);
		j->retries_left = (int)db_column_int64(st, 4);
		j->infra_left = (int)db_column_int64(st, 5);
		snprintf(j->state, sizeof(j->state), "%s", db_column_text(st, 6));
		j->spec = json_loads(db_column_text(st, 7), 0, NULL);
		snprintf(j->stage_name, sizeof(j->stage_name), "%s", db_column_text(st, 8));
		snprintf(j->kind, sizeof(j->kind), "%s", db_column_text(st, 9));
		ota_log_ctx_work(j->run_id, id); /* this thread works on it (common/log.h) */
	}
	db_reset(st);
	if (rc == 0)
		return ota_error_set(OTA_ENOTFOUND, "job %" PRId64 " not found", id);
	if (rc < 0)
		return rc;
	if (!j->spec)
		return ota_error_set(OTA_ERROR, "job %" PRId64 " has a corrupt spec", id);
	return 0;
}

void eng_job_release(struct jobrow *j)
{
	json_decref(j->spec);
	j->spec = NULL;
}

static int set_state(struct engine *e, const char *sql, int64_t id, const char *state, int64_t now)
{
	struct db_stmt *st = store_q(e->db, sql);
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, state);
	db_bind_int64(st, 2, now);
	db_bind_int64(st, 3, id);
	return db_run(st);
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


/*
 * Mark a job running inside otacd (agent 0).  Jobs for the stage worker
 * get a deadline (their timeout); rollouts (no_deadline) run as long as
 * their plan says and are timed by the rollout controller instead.
 */
static int mark_inproc_running(struct engine *e, int64_t job, int no_deadline, int *attempt_out)
{
	struct db_stmt *st = store_q(e->db, "SELECT run_id, attempt + 1, spec FROM jobs WHERE id = ?");
	int64_t run = 0, timeout = 0, real = clock_real_ms(), now = clock_now_ms();
	int attempt = 0, rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job);
	if ((rc = db_step(st)) == 1) {
		json_t *spec = json_loads(db_column_text(st, 2), 0, NULL);
		run = db_column_int64(st, 0);
		attempt = (int)db_column_int64(st, 1);
		timeout = json_integer_value(json_object_get(spec, "timeout_ms"));
		json_decref(spec);
	}
	db_reset(st);
	if (rc != 1)
		return rc < 0 ? rc : OTA_ERROR;
	st = store_q(e->db, "UPDATE jobs SET state = 'running', attempt = ?, agent_id = 0, lease_expires = NULL, deadline = ?,"
		     " started_at = ? WHERE id = ?");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, attempt);
	if (no_deadline)
		db_bind_null(st, 2);
	else
		db_bind_int64(st, 2, real + (timeout > 0 ? timeout : e->cfg.default_timeout_ms));
	db_bind_int64(st, 3, now);
	db_bind_int64(st, 4, job);
	if ((rc = db_run(st)) < 0)
		return rc;
	st = store_q(e->db, "INSERT INTO job_attempts(job_id, attempt, agent_id, started_at) VALUES (?,?,0,?)");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job);
	db_bind_int64(st, 2, attempt);
	db_bind_int64(st, 3, now);
	if ((rc = db_run(st)) < 0)
		return rc;
	eng_event(e, run, job, "job.running", json_pack("{si ss}", "attempt", attempt, "agent", "otacd"));
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
		struct db_stmt *st = store_q(e->db, "SELECT run_id FROM jobs WHERE id = ?");
		int64_t run = 0;
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, job);
		if ((rc = db_step(st)) == 1)
			run = db_column_int64(st, 0);
		db_reset(st);
		if (rc < 0)
			return rc;
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

/* The stage's jobs enter the dispatch queue now: their wait for an agent
 * (queue_wait_ms, /metrics) counts from here, in real time, since agents'
 * capacity is real whatever --time-scale says. */
static int mark_queued(struct engine *e, int64_t stage_id)
{
	struct db_stmt *st = store_q(e->db, "UPDATE jobs SET queued_at = ? WHERE stage_id = ? AND state = 'queued'");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, clock_real_ms());
	db_bind_int64(st, 2, stage_id);
	return db_run(st);
}

static int enqueue_stage_jobs(struct engine *e, int64_t stage_id)
{
	struct db_stmt *st = store_q(e->db, "SELECT j.id, j.spec, s.kind FROM jobs j JOIN stages s ON s.id = j.stage_id"
				   " WHERE j.stage_id = ? AND j.state = 'queued' ORDER BY j.id");
	int64_t inproc[256];
	const struct stage_kind *inkind[256];
	size_t ninproc = 0;
	int rc, any = 0;

	if (!st)
		return OTA_ERROR;
	if ((rc = mark_queued(e, stage_id)) < 0)
		return rc;
	db_bind_int64(st, 1, stage_id);
	while ((rc = db_step(st)) == 1) {
		const struct stage_kind *kind = stage_kind_find(db_column_text(st, 2), NULL);
		if (kind && (kind->run || kind->rollout)) {
			if (ninproc < OTA_ARRAY_SIZE(inproc)) {
				inkind[ninproc] = kind;
				inproc[ninproc++] = db_column_int64(st, 0);
			}
			continue;
		}
		json_t *spec = json_loads(db_column_text(st, 1), 0, NULL);
		json_t *labels = spec ? json_object_get(spec, "labels") : NULL;
		json_t *empty = json_array();
		eng_queue_add(e, db_column_int64(st, 0), labels ? labels : empty);
		json_decref(empty);
		json_decref(spec);
		any = 1;
	}
	db_reset(st);
	if (any)
		e->changed_work = 1;
	for (size_t i = 0; i < ninproc && rc >= 0; i++)
		rc = start_inproc(e, inproc[i], inkind[i]);
	return rc < 0 ? rc : 0;
}

int engine_store_stage_outcome(struct store *s, int64_t stage_id, const char **out)
{
	struct db_stmt *st = store_q(s,
		/* CASE, not SUM(state = 'passed'): PostgreSQL has no SUM of booleans */
		"SELECT COUNT(*), SUM(CASE WHEN state IN ('passed','failed','canceled','skipped') THEN 1 ELSE 0 END),"
		" SUM(CASE WHEN state = 'passed' THEN 1 ELSE 0 END), SUM(CASE WHEN state = 'canceled' THEN 1 ELSE 0 END)"
		" FROM jobs WHERE stage_id = ?");
	int64_t total, final, passed, canceled;
	int rc;

	*out = NULL;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, stage_id);
	if ((rc = db_step(st)) != 1) {
		db_reset(st);
		return rc < 0 ? rc : ota_error_set(OTA_ERROR, "stage %" PRId64 ": no count of its jobs", stage_id);
	}
	/* SUM over no rows is NULL, read as 0 */
	total = db_column_int64(st, 0);
	final = db_column_int64(st, 1);
	passed = db_column_int64(st, 2);
	canceled = db_column_int64(st, 3);
	db_reset(st);
	if (final < total)
		return 0;
	if (passed == total)
		*out = "passed";
	else
		*out = canceled ? "canceled" : "failed";
	return 0;
}

int eng_finish_run(struct engine *e, int64_t run_id, const char *state, const char *concurrency,
		      const char *error)
{
	struct db_stmt *st = store_q(e->db, "UPDATE runs SET state = ?, finished_at = ?, error = COALESCE(?, error)"
					    " WHERE id = ?");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, state);
	db_bind_int64(st, 2, clock_now_ms());
	if (error)
		db_bind_text(st, 3, error);
	db_bind_int64(st, 4, run_id);
	if ((rc = db_run(st)) < 0)
		return rc;
	/* issue 17: statuses and notifications, committed with the state */
	if ((rc = outbox_run_event(e, run_id, state)) < 0)
		return rc;
	eng_event(e, run_id, 0, "run.final", json_pack("{ss}", "state", state));
	e->changed_state = 1;

	/* Let the next run waiting on the same concurrency group go. */
	if (concurrency) {
		int64_t next = 0;
		st = store_q(e->db, "SELECT id FROM runs WHERE concurrency = ? AND state IN ('queued','blocked')"
				    " ORDER BY id LIMIT 1");
		if (!st)
			return OTA_ERROR;
		db_bind_text(st, 1, concurrency);
		if (db_step(st) == 1)
			next = db_column_int64(st, 0);
		db_reset(st);
		if (next)
			return eng_advance_run(e, next);
	}
	return 0;
}

static int load_stages(struct engine *e, int64_t run_id, struct stagerow **out, size_t *n)
{
	struct db_stmt *st = store_q(e->db, "SELECT id, name, state, needs, when_filter FROM stages WHERE run_id = ?"
					    " ORDER BY idx");
	struct stagerow *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run_id);
	while ((rc = db_step(st)) == 1) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			v = xrealloc(v, cap * sizeof(*v));
		}
		memset(&v[cnt], 0, sizeof(v[cnt]));
		v[cnt].id = db_column_int64(st, 0);
		snprintf(v[cnt].name, sizeof(v[cnt].name), "%s", db_column_text(st, 1));
		snprintf(v[cnt].state, sizeof(v[cnt].state), "%s", db_column_text(st, 2));
		v[cnt].needs = json_loads(db_column_text(st, 3), 0, NULL);
		if (!v[cnt].needs)
			v[cnt].needs = json_array();
		v[cnt].skip_by_when = db_column_type(st, 4) != DB_NULL;
		if (v[cnt].skip_by_when && strcmp(db_column_text(st, 4), "no-match") != 0)
			v[cnt].held = xstrdup(db_column_text(st, 4));
		cnt++;
	}
	db_reset(st);
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
		struct db_stmt *st = store_q(e->db, "UPDATE jobs SET state = 'skipped', finished_at = ?"
						    " WHERE stage_id = ? AND state = 'queued'");
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, now);
		db_bind_int64(st, 2, s->id);
		if ((rc = db_run(st)) < 0)
			return rc;
	}
	/* issue 17: the stage's own commit status, committed with its state */
	if ((rc = outbox_stage_event(e, run_id, s->name, state)) < 0)
		return rc;
	eng_event(e, run_id, 0, "stage.state", json_pack("{ss ss ss*}", "stage", s->name, "state", state, "reason", why));
	return 0;
}

/*
 * Move a run forward as far as its current state allows.  Idempotent: it
 * only acts on what the database says, so recovery simply calls it for every
 * unfinished run.
 */
int eng_advance_run(struct engine *e, int64_t run_id)
{
	struct db_stmt *st = store_q(e->db, "SELECT state, concurrency FROM runs WHERE id = ?");
	char state[16] = "", *concurrency = NULL;
	struct stagerow *stages = NULL;
	size_t nstages = 0;
	int rc = 0, changed, any_failed = 0, all_final = 1;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run_id);
	if ((rc = db_step(st)) == 1) {
		snprintf(state, sizeof(state), "%s", db_column_text(st, 0));
		if (db_column_text(st, 1))
			concurrency = xstrdup(db_column_text(st, 1));
	}
	db_reset(st);
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
			st = store_q(e->db, "SELECT 1 FROM runs WHERE concurrency = ? AND id < ? "
				     "AND state IN ('queued','blocked','running') LIMIT 1");
			if (!st) {
				rc = OTA_ERROR;
				goto out;
			}
			db_bind_text(st, 1, concurrency);
			db_bind_int64(st, 2, run_id);
			busy = db_step(st);
			db_reset(st);
			if (busy < 0) {
				rc = busy;
				goto out;
			}
			if (busy) {
				if (strcmp(state, "blocked") != 0) {
					st = store_q(e->db, "UPDATE runs SET state = 'blocked' WHERE id = ?");
					if (!st) {
						rc = OTA_ERROR;
						goto out;
					}
					db_bind_int64(st, 1, run_id);
					if ((rc = db_run(st)) < 0)
						goto out;
					eng_event(e, run_id, 0, "run.state", json_pack("{ss ss}", "state", "blocked",
										  "reason", "waiting for concurrency group"));
				}
				goto out;
			}
		}
		if ((rc = set_state(e, "UPDATE runs SET state = ?, started_at = ? WHERE id = ?", run_id, "running",
				    clock_now_ms())) < 0 ||
		    (rc = outbox_run_event(e, run_id, "running")) < 0) /* issue 17 */
			goto out;
		eng_event(e, run_id, 0, "run.state", json_pack("{ss}", "state", "running"));
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
				const char *outcome = NULL;
				rc = engine_store_stage_outcome(e->db, s->id, &outcome);
				if (rc == 0 && outcome) {
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
		rc = eng_finish_run(e, run_id, any_failed ? "failed" : "passed", concurrency, NULL);
out:
	free_stages(stages, nstages);
	free(concurrency);
	return rc;
}

/* ---- the engine thread ------------------------------------------------ */

int64_t engine_store_next_due(struct store *s)
{
	struct db_stmt *st = store_q(s,
		"SELECT MIN(MIN(COALESCE(lease_expires, 9000000000000000), COALESCE(deadline, 9000000000000000)))"
		" FROM jobs WHERE state = 'running'");
	int64_t due = INT64_MAX;

	if (!st)
		return due;
	if (db_step(st) == 1 && db_column_type(st, 0) != DB_NULL)
		due = db_column_int64(st, 0);
	db_reset(st);
	return due;
}

static int stall_grace(struct engine *e, void *arg);

int engine_store_due_jobs(struct store *s, int64_t now, int64_t *ids, int *lost, size_t max, size_t *n)
{
	struct db_stmt *st = store_q(s, "SELECT id, CASE WHEN lease_expires <= ?1 THEN 1 ELSE 0 END FROM jobs"
					" WHERE state = 'running' AND (lease_expires <= ?1 OR deadline <= ?1) LIMIT ?2");
	int rc = 0;

	*n = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now);
	db_bind_int64(st, 2, (int64_t)max);
	while (*n < max && (rc = db_step(st)) == 1) {
		ids[*n] = db_column_int64(st, 0);
		lost[(*n)++] = (int)db_column_int64(st, 1);
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

/* Fail every running attempt whose lease or deadline has passed. */
static int tick(struct engine *e, void *arg)
{
	int64_t now = clock_real_ms(), ids[64];
	int lost[64];
	size_t n = 0;
	int rc = 0, spared = 0;
	/* While otacd could not write for want of disk (within the last
	 * lease), heartbeats were refused by otacd's own fault: a lease that ran out then is not
	 * an agent lost, and gets a new term instead. */
	int own_fault = e->store_trouble_real && now - e->store_trouble_real <= e->cfg.lease_ms;

	(void)arg;
	if ((rc = engine_store_due_jobs(e->db, now, ids, lost, OTA_ARRAY_SIZE(ids), &n)) < 0)
		return rc;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct jobrow j;
		const char *state;
		char msg[160];
		struct job_result r = { -1, lost[i] ? "infra" : "timeout", msg };
		if (lost[i] && own_fault) {
			spared = 1;
			continue;
		}
		if ((rc = eng_job_load(e, ids[i], &j)) < 0)
			break;
		if (lost[i])
			snprintf(msg, sizeof(msg), "agent %" PRId64 " lost: no heartbeat for %" PRId64 " ms",
				 j.agent_id, e->cfg.lease_ms);
		else
			snprintf(msg, sizeof(msg), "job exceeded its timeout and its agent did not report");
		rc = eng_attempt_done(e, &j, &r, &state);
		eng_job_release(&j);
	}
	if (rc == 0 && spared) {
		if (!diskguard_low())
			ota_log(OTA_LOG_WARN, "engine: leases ran out while the database could not commit; running jobs get a new lease");
		rc = stall_grace(e, NULL);
	}
	return rc;
}

/*
 * The engine thread was away for longer than it ever sleeps (the process
 * was stopped, or a call hung on the disk): agents could not be heard
 * meanwhile, so no lease may expire for that; each running job gets one
 * full lease from now.
 */
static int stall_grace(struct engine *e, void *arg)
{
	(void)arg;
	return engine_store_extend_leases(e->db, clock_real_ms() + e->cfg.lease_ms);
}

int engine_store_extend_leases(struct store *s, int64_t until)
{
	/*
	 * Only jobs that hold a lease: a running job with none (NULL) runs
	 * inside otacd (agent 0: the stage worker, a rollout) and is timed
	 * by its deadline or the rollout controller, never by a lease, so
	 * it keeps none.  The WHERE says so for both backends: SQLite's
	 * MAX(NULL, x) is NULL, but PostgreSQL's GREATEST (the rewrite of
	 * MAX(a, b)) ignores NULL and would give such a job a lease that
	 * tick() then fails as "agent 0 lost".
	 */
	struct db_stmt *st = store_q(s, "UPDATE jobs SET lease_expires = MAX(lease_expires, ?)"
					" WHERE state = 'running' AND lease_expires IS NOT NULL");

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, until);
	return db_run(st);
}

/*
 * The database failed for want of disk (full, I/O error): otacd's fault,
 * not its agents' (see tick).  db_disk_error() remembers it since the
 * transaction began, through the rollback.
 *
 * Only SQLite's disk is the state directory's, which diskguard watches.
 * On PostgreSQL a full disk (SQLSTATE 53100) is the server's: the failed
 * call's message says so, and noting it here would give back the state
 * directory's reserve and refuse work until that disk, which has room,
 * is polled again.
 */
static void note_store_trouble(struct engine *e)
{
	struct db *db = store_conn(e->db);
	int ec = db_disk_error(db);

	if (ec && db_backend(db) == DB_SQLITE) {
		e->store_trouble_real = clock_real_ms();
		/* new work is refused and the commit retried with a back-off,
		 * not at the pace of callers (diskguard.h) */
		diskguard_note_failure(ec == DB_ENOSPACE ? "database commit: disk full"
							 : "database commit: I/O error or cannot open its files");
	}
}

/* Tell the other instances about this commit, in its own transaction
 * (commitwatch.h: PostgreSQL only; what changed is a hint for them). */
static int announce_commit(struct engine *e)
{
	unsigned what = (e->changed_state ? CW_STATE : 0) | (e->changed_work ? CW_WORK : 0) |
			(e->changed_rollout ? CW_ROLLOUT : 0) | (e->changed_auth ? CW_AUTH : 0);

	return commitwatch_announce(store_conn(e->db), what);
}

/*
 * Issue 16: before a call commits, check that this instance still leads
 * (db_leader_fence(), under the writers' lock the transaction holds).
 * Another instance took over behind our back: nothing of this call is
 * stored, and the process ends at once with EX_TEMPFAIL, as on a lost
 * poll (main.c; docs/scale.md says why a restart, not a step down).
 */
static void fence(struct engine *e, struct call *c)
{
	int rc;
	if (!e->cfg.leader_epoch)
		return;
	rc = db_leader_fence(store_conn(e->db), e->cfg.leader_epoch);
	if (rc == OTA_ECONFLICT) {
		ota_log(OTA_LOG_ERROR, "engine: %s; stored nothing more, exiting to come back as a follower",
			ota_error_last());
		store_rollback(e->db);
		_exit(75);
	}
	if (rc < 0)
		c->rc = rc;
}

/*
 * Run one call in its own transaction.  Not through db_transact(), which
 * runs its function again after a lost race: a call also changes memory
 * (the dispatch queue, started_inproc, dead_objects, the rollout module),
 * and run twice it would hand a job to the stage worker twice.  A failure
 * rolls back, rebuilds the dispatch queue and is the caller's to see
 * (docs/storage.md, "Transactions take turns").
 */
static void run_call(struct engine *e, struct call *c)
{
	struct ota_log_ctx saved;

	/* a call that loads a job (eng_job_load) logs with its ids; the next
	 * call starts without them */
	ota_log_ctx_save(&saved);
	ota_error_clear();
	if (store_begin(e->db) < 0) {
		c->rc = OTA_ERROR;
		note_store_trouble(e);
	} else {
		c->rc = c->fn(e, c->arg);
		if (c->rc >= 0)
			fence(e, c);
		if (c->rc < 0) {
			note_store_trouble(e);
			store_rollback(e->db);
			/* The in-memory queue may have moved ahead of the database. */
			queue_rebuild(e);
		} else if (announce_commit(e) < 0 || store_commit(e->db) < 0) {
			note_store_trouble(e);
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
	e->changed_work = e->changed_state = e->changed_rollout = e->changed_auth = 0;
	e->next_due = engine_store_next_due(e->db);
	ota_log_ctx_restore(&saved);
}

/* Delete one artifact record; *still_used says whether another record
 * names the same object (then the object stays). */
static int gc_delete_artifact(struct engine *e, int64_t id, const char *sha256, int *still_used)
{
	struct db_stmt *st = store_q(e->db, "DELETE FROM artifacts WHERE id = ?");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	if ((rc = db_run(st)) < 0)
		return rc;
	if (!(st = store_q(e->db, "SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1")))
		return OTA_ERROR;
	db_bind_text(st, 1, sha256);
	rc = db_step(st);
	db_reset(st);
	*still_used = rc == 1;
	return rc < 0 ? rc : 0;
}

/*
 * Artifact retention: records of unreleased artifacts of finished runs
 * older than the retention go; an object goes with its last record (after
 * the commit, in run_call).  Released artifacts are kept forever.
 */
static int do_gc(struct engine *e, void *arg)
{
	int *removed = arg;
	struct db_stmt *st = store_q(e->db, "SELECT a.id, a.sha256, a.run_id FROM artifacts a JOIN runs r ON r.id = a.run_id"
				   " WHERE a.released = 0 AND a.created_at < ?"
				   " AND r.state IN ('passed','failed','canceled') LIMIT 500");
	struct strvec shas = STRVEC_INIT;
	int64_t ids[500], runs[500];
	size_t n = 0;
	int rc = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, clock_now_ms() - e->cfg.artifact_retention_ms);
	while (n < 500 && (rc = db_step(st)) == 1) {
		ids[n] = db_column_int64(st, 0);
		strvec_push(&shas, db_column_text(st, 1));
		runs[n++] = db_column_int64(st, 2);
	}
	db_reset(st);
	if (rc > 0)
		rc = 0; /* stopped at 500 */
	for (size_t i = 0; i < n && rc == 0; i++) {
		int still_used;
		if ((rc = gc_delete_artifact(e, ids[i], shas.v[i], &still_used)) < 0)
			break;
		if (!still_used && !strvec_contains(&e->dead_objects, shas.v[i]))
			strvec_push(&e->dead_objects, shas.v[i]);
		eng_event(e, runs[i], 0, "artifact.expired", json_pack("{sI ss}", "artifact", (json_int_t)ids[i],
								   "sha256", shas.v[i]));
	}
	*removed = (int)n;
	strvec_clear(&shas);
	return rc;
}

/* One retention batch, inside run_call's transaction; the artifact
 * objects it orphaned go after the commit like do_gc's. */
static int prune_batch(struct engine *e, void *arg)
{
	int rc;
	(void)arg;
	e->prune_out.ndead_jobs = 0;
	strvec_clear(&e->prune_out.dead_objects);
	rc = retention_batch(e->db, &e->cfg.retention, &e->prune_pass, &e->prune_out);
	for (size_t i = 0; rc >= 0 && i < e->prune_out.dead_objects.n; i++)
		if (!strvec_contains(&e->dead_objects, e->prune_out.dead_objects.v[i]))
			strvec_push(&e->dead_objects, e->prune_out.dead_objects.v[i]);
	if (rc >= 0 && e->prune_out.runs_deleted)
		e->changed_state = 1;
	return rc;
}

/* Real ms between retention passes: a quarter of the shortest bound at
 * this time scale, between 1 s and 1 min. */
static int64_t prune_every(const struct engine *e)
{
	const struct retention_cfg *r = &e->cfg.retention;
	int64_t shortest = INT64_MAX, every;
	if (r->runs_max_age_ms > 0)
		shortest = r->runs_max_age_ms;
	if (r->logs_max_age_ms > 0 && r->logs_max_age_ms < shortest)
		shortest = r->logs_max_age_ms;
	every = shortest == INT64_MAX ? 60000 : (int64_t)((double)shortest / clock_scale() / 4);
	return every < 1000 ? 1000 : every > 60000 ? 60000 : every;
}

/*
 * The retention pass, one batch per call, so commands queue between
 * batches rather than behind a whole pass.  At the end of a pass: free
 * pages back to the file system (incremental vacuum) and truncate the WAL.
 */
static void prune_step(struct engine *e)
{
	struct call c = { prune_batch, NULL, 0, 0, "", NULL };

	if (!e->prune_active) {
		if (clock_mono_ms() < e->next_prune)
			return;
		if (!e->prune_swept) {
			int n = retention_sweep_orphans(e->db);
			if (n > 0)
				ota_log(OTA_LOG_INFO, "retention: removed %d orphaned log directories", n);
			e->prune_swept = 1;
		}
		retention_pass_start(&e->prune_pass, clock_now_ms());
		e->prune_active = 1;
	}
	run_call(e, &c);
	if (c.rc < 0) {
		ota_log(OTA_LOG_WARN, "retention: %s", c.err);
		e->prune_out.ndead_jobs = 0;
		e->prune_active = 0;
		e->next_prune = clock_mono_ms() + prune_every(e);
		return;
	}
	retention_after_commit(&e->prune_out);
	if (c.rc == 0) {
		int freed = 0;
		if (retention_maintain(e->db, 4096, &freed) < 0)
			ota_log(OTA_LOG_WARN, "%s", ota_error_last());
		if (e->prune_pass.runs_deleted)
			ota_log(OTA_LOG_INFO, "retention: deleted %" PRId64 " runs, logs of %" PRId64 " runs",
				e->prune_pass.runs_deleted, e->prune_pass.logs_pruned);
		if (e->prune_pass.outbox_deleted)
			ota_log(OTA_LOG_INFO, "retention: deleted %" PRId64 " finished notification outbox rows",
				e->prune_pass.outbox_deleted);
		e->prune_active = 0;
		/* more free pages than one step gives back: again soon */
		e->next_prune = clock_mono_ms() + (freed == 4096 ? 1000 : prune_every(e));
	}
}

/* A tick that failed for want of disk is not retried before its back-off
 * ran out, however often calls wake the thread. */
static int tick_backing_off(const struct engine *e)
{
	return e->tick_retry_at && clock_real_ms() < e->tick_retry_at;
}

static void *engine_main(void *arg)
{
	struct engine *e = arg;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		struct call *c;
		ota_log_ctx_work(0, 0); /* a job a tick loaded is not the next one's */
		/* Sleep until a call arrives, a lease or deadline falls due, or
		 * the next artifact expiry pass. */
		while (!e->head && !e->stopping) {
			int64_t due = e->next_due > e->tick_retry_at ? e->next_due : e->tick_retry_at;
			int64_t wait = due - clock_real_ms();
			int64_t gc_wait = e->cfg.artifact_retention_ms > 0 ? e->next_gc - clock_mono_ms() : INT64_MAX;
			/* a pass under way goes on at once, unless the database
			 * cannot commit (then after the tick's back-off) */
			int64_t prune_wait = !retention_enabled(&e->cfg.retention) || tick_backing_off(e) ? INT64_MAX
					     : e->prune_active ? 0 : e->next_prune - clock_mono_ms();
			struct timespec ts;
			if (gc_wait < wait)
				wait = gc_wait;
			if (prune_wait < wait)
				wait = prune_wait;
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

		{
			/* the wait above is at most 5 s: a longer gap is a stall */
			int64_t now = clock_real_ms();
			if (e->awake_real && now - e->awake_real > 5000 + e->cfg.lease_ms / 2) {
				struct call g = { stall_grace, NULL, 0, 0, "", NULL };
				ota_log(OTA_LOG_WARN, "engine: stalled for %" PRId64 " ms; running jobs get a new lease",
					now - e->awake_real);
				run_call(e, &g);
			}
			e->awake_real = now;
		}
		diskguard_poll();
		if (c)
			run_call(e, c);
		if (clock_real_ms() >= e->next_due && !tick_backing_off(e)) {
			struct call t = { tick, NULL, 0, 0, "", NULL };
			run_call(e, &t);
			if (t.rc < 0) {
				/* the database cannot commit (a full disk): the
				 * leases stay due, so try again after a back-off
				 * (1 s doubling to 30 s) rather than in a tight
				 * loop; the disk guard logged it */
				if (!diskguard_low())
					ota_log(OTA_LOG_WARN, "engine: %s", t.err);
				e->tick_retry_at = clock_real_ms() + diskguard_backoff_ms();
			} else
				e->tick_retry_at = 0;
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
				ota_log(OTA_LOG_WARN, "artifact expiry: %s", g.err);
		}
		if (retention_enabled(&e->cfg.retention) && !tick_backing_off(e))
			prune_step(e);

		pthread_mutex_lock(&e->lock);
		if (c) {
			c->done = 1;
			pthread_cond_broadcast(&e->done_cond);
		}
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

int engine_call(struct engine *e, int (*fn)(struct engine *, void *), void *arg)
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
	struct db_stmt *st;
	struct stage_ctx ctx = { 0 };
	struct job_result r = { 0, NULL, NULL };
	const struct stage_kind *kind = NULL;
	const char *state = NULL;
	json_t *spec = NULL;

	if (!db || !(st = store_q(db, "SELECT j.run_id, j.spec, s.kind FROM jobs j JOIN stages s ON s.id = j.stage_id"
					 " WHERE j.id = ? AND j.state = 'running' AND j.attempt = ?")))
		return;
	db_bind_int64(st, 1, job);
	db_bind_int64(st, 2, attempt);
	if (db_step(st) == 1) {
		ctx.run_id = db_column_int64(st, 0);
		spec = json_loads(db_column_text(st, 1), 0, NULL);
		kind = stage_kind_find(db_column_text(st, 2), NULL);
	}
	db_reset(st);
	if (!spec || !kind || !kind->run) {
		json_decref(spec);
		return; /* canceled or finished meanwhile */
	}
	ctx.job_id = job;
	ctx.attempt = attempt;
	ota_log_ctx_work(ctx.run_id, job);
	ctx.job = spec;
	ctx.config = e->cfg.config;
	ctx.engine = e;
	if (kind->run(&ctx, &r) < 0 && !r.failure_kind) {
		r.failure_kind = "infra";
		r.message = "the stage failed inside otacd";
	}
	if (engine_finish(e, 0, job, attempt, &r, &state) < 0 && ota_error_last()[0])
		ota_log(OTA_LOG_WARN, "stage worker: job %" PRId64 ": %s", job, ota_error_last());
	ota_log_ctx_work(0, 0);
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
	struct db_stmt *st = store_q(e->db, "SELECT id FROM runs WHERE state IN ('queued','blocked','running') ORDER BY id");
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc;

	(void)arg;
	if ((rc = queue_rebuild(e)) < 0)
		return rc;
	/* Agents kept working while we were down: give each running job one
	 * full lease to be heard from again before calling its agent lost.
	 * (Local agents keep running too and are adopted (localagents.c); a
	 * local agent that did not survive is started again, and when it
	 * registers its job is released as a `daemon` failure.) */
	if ((rc = engine_store_extend_leases(e->db, clock_real_ms() + e->cfg.lease_ms)) < 0)
		return rc;
	{
		/* in-daemon jobs that were running when otacd died run again */
		struct db_stmt *in = store_q(e->db, "SELECT id, attempt FROM jobs WHERE state = 'running' AND agent_id = 0"
					     " AND id NOT IN (SELECT job_id FROM rollouts)");
		if (!in)
			return OTA_ERROR;
		while ((rc = db_step(in)) == 1)
			strvec_pushf(&e->started_inproc, "%" PRId64 " %d", db_column_int64(in, 0), (int)db_column_int64(in, 1));
		db_reset(in);
		if (rc < 0)
			return rc;
	}
	if (!st)
		return OTA_ERROR;
	while ((rc = db_step(st)) == 1) {
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			ids = xrealloc(ids, cap * sizeof(*ids));
		}
		ids[n++] = db_column_int64(st, 0);
	}
	db_reset(st);
	for (size_t i = 0; i < n && rc >= 0; i++)
		rc = eng_advance_run(e, ids[i]);
	free(ids);
	return rc < 0 ? rc : 0;
}

int engine_start(struct engine **out, struct store *db, const struct engine_config *cfg)
{
	struct engine *e = xcalloc(1, sizeof(*e));
	struct call c = { recover, NULL, 0, 0, "", NULL };

	e->db = db;
	e->cfg = *cfg;
	e->started_at = clock_now_ms();
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
	retention_out_release(&e->prune_out);
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

struct store *engine_store(struct engine *e)
{
	return e->db;
}

int engine_exec(struct engine *e, int (*fn)(struct engine *, void *), void *arg)
{
	return engine_call(e, fn, arg);
}

void engine_emit(struct engine *e, int64_t run, int64_t job, const char *kind, json_t *detail)
{
	eng_event(e, run, job, kind, detail);
	e->changed_state = 1;
}

void engine_rollout_changed(struct engine *e)
{
	e->changed_rollout = 1;
}

void engine_auth_changed(struct engine *e)
{
	e->changed_auth = 1;
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
