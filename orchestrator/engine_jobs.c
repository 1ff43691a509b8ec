/*
 * engine_jobs.c - a job's attempts, from an agent's claim to its result.
 *
 * Why apart from engine.c: this is the agent-facing half of the engine.
 * Agents register, claim a queued job whose labels they carry (bounded by
 * the labels they registered with), keep its lease alive with heartbeats,
 * upload artifacts and report a result; in-daemon jobs report through
 * engine_job_complete.  Each of these is a command run on the engine thread
 * inside one transaction (engine_call, engine_core.h).
 *
 * How it works.  A claim takes the oldest matching job off the dispatch
 * queue, starts attempt n+1 with a lease and a deadline and hands the agent
 * a one-time job token (only its hash is stored).  The end of an attempt
 * (a finish, a lost lease, a timeout, an agent restart) goes through
 * eng_attempt_done: the stage kind's verdict, then pass, retry (back on the
 * queue, counted against retries or infra retries) or fail, and the run
 * moves on (eng_advance_run).  A finish for an attempt already recorded is
 * answered with the recorded state, so a resent finish is harmless.
 *
 * SQL.  Every statement runs on the storage layer (db/db.h, store_q()) and
 * is a named constant (jq_*), listed by engine_jobs_sql(), so
 * tests/test_dbconv_jobs.c prepares each on PostgreSQL as well and runs
 * the claim, attempt and retry statements on both backends.  A failed
 * statement spoils the engine's transaction (docs/storage.md), so every
 * error is returned, never stepped over.
 */
#include "engine.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "../common/log.h"
#include "auth.h"
#include "clock.h"
#include "../common/mask.h"
#include "logstore.h"
#include "engine_core.h"
#include "db/db.h"
#include "policy.h"
#include "../stages/reports_kind.h"

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

/*
 * The kind's verdict (*failed), given the attempt's stored reports (and
 * the baseline run's, for `baseline:`); *message may replace r->message.
 * Reports that cannot be read are an error, not an empty list: judging
 * without them could pass a failed test, and the read that failed has
 * spoiled the transaction anyway (docs/storage.md).
 */
static int attempt_verdict(struct engine *e, struct jobrow *j, const struct stage_kind *kind,
			   const struct job_result *r, int *failed, char **message)
{
	json_t *reports = NULL, *baseline = NULL;
	struct verdict_input in = { 0 };
	int rc;

	rc = rk_load_for_verdict(e->db, j->run_id, j->id, j->attempt, j->spec, &reports, &baseline,
				 &in.baseline_run);
	if (rc < 0) {
		ota_error_prefix("job %" PRId64 ": cannot load its reports", j->id);
		goto out;
	}
	in.reports = reports;
	in.baseline = baseline;
	*failed = kind->verdict(j->spec, r, &in, message);
out:
	json_decref(reports);
	json_decref(baseline);
	return rc;
}

int eng_attempt_done(struct engine *e, struct jobrow *j, const struct job_result *r, const char **state_out)
{
	const struct stage_kind *kind = stage_kind_find(j->kind, NULL);
	struct job_result rv = *r;
	char *message = NULL;
	int failed = r->failure_kind != NULL, rc;

	logstore_end(j->id, j->attempt); /* the log is complete: write what masking held back */
	if (kind && kind->verdict) {
		if ((rc = attempt_verdict(e, j, kind, r, &failed, &message)) < 0)
			goto out;
		if (message)
			rv.message = message;
	}
	if (rv.message && !message) /* a message may quote a step's output */
		rv.message = message = xstrdup(rv.message);
	if (message)
		mask_string(logstore_mask(), message);
	rc = attempt_record(e, j, &rv, failed, state_out);
	if (rc >= 0)
		ota_log(OTA_LOG_DEBUG, "engine: job %" PRId64 " (stage %s) attempt %d: %s", j->id, j->stage_name,
			j->attempt, *state_out);
out:
	free(message);
	return rc;
}

static const char jq_attempt_end[] =
	"UPDATE job_attempts SET finished_at = ?, exit_code = ?, failure = ?, message = ?"
	" WHERE job_id = ? AND attempt = ?";
static const char jq_agent_free[] = "UPDATE agents SET current_job = NULL WHERE id = ? AND current_job = ?";
/* back to the queue; ?4 and ?5 (0 or 1) take one infra or one counted retry */
static const char jq_job_requeue[] =
	"UPDATE jobs SET state = 'queued', agent_id = NULL, lease_expires = NULL,"
	" deadline = NULL, exit_code = ?, failure = ?, message = ?,"
	" infra_retries_left = infra_retries_left - ?, retries_left = retries_left - ?,"
	" queued_at = ?7 WHERE id = ?6";
static const char jq_job_final[] =
	"UPDATE jobs SET state = ?, finished_at = ?, exit_code = ?, failure = ?, message = ?,"
	" lease_expires = NULL, deadline = NULL, real_finished_at = ?7 WHERE id = ?6";

/* The agent holding job no longer does (if it still says so). */
static int agent_free(struct engine *e, int64_t agent_id, int64_t job_id)
{
	struct db_stmt *st = store_q(e->db, jq_agent_free);

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, agent_id);
	db_bind_int64(st, 2, job_id);
	return db_run(st);
}

static int attempt_record(struct engine *e, struct jobrow *j, const struct job_result *r, int failed,
			  const char **state_out)
{
	const char *failure = r->failure_kind;
	int64_t now = clock_now_ms();
	int rc;
	struct db_stmt *st;

	if (failed && !failure)
		failure = "script";

	if (!(st = store_q(e->db, jq_attempt_end)))
		return OTA_ERROR;
	db_bind_int64(st, 1, now);
	db_bind_int64(st, 2, r->exit_code);
	db_bind_text(st, 3, failure);
	db_bind_text(st, 4, r->message);
	db_bind_int64(st, 5, j->id);
	db_bind_int64(st, 6, j->attempt);
	if ((rc = db_run(st)) < 0)
		return rc;
	if ((rc = agent_free(e, j->agent_id, j->id)) < 0)
		return rc;

	if (failed && strcmp(failure, "canceled") != 0) {
		/* "daemon": the attempt was lost because otacd itself went away
		 * or stalled; it is retried and counts against no budget. */
		int use_daemon = !strcmp(failure, "daemon");
		int use_infra = !use_daemon && !strcmp(failure, "infra") && j->infra_left > 0;
		int use_count = !use_daemon && !use_infra && retry_on(j->spec, failure) && j->retries_left > 0;
		if (use_daemon || use_infra || use_count) {
			if (!(st = store_q(e->db, jq_job_requeue)))
				return OTA_ERROR;
			db_bind_int64(st, 1, r->exit_code);
			db_bind_text(st, 2, failure);
			db_bind_text(st, 3, r->message);
			db_bind_int64(st, 4, use_infra);
			db_bind_int64(st, 5, use_count);
			db_bind_int64(st, 6, j->id);
			db_bind_int64(st, 7, clock_real_ms());
			if ((rc = db_run(st)) < 0)
				return rc;
			eng_event(e, j->run_id, j->id, "job.retry",
			      json_pack("{si ss ss*}", "attempt", j->attempt, "failure", failure, "message", r->message));
			eng_queue_add(e, j->id, json_object_get(j->spec, "labels"));
			e->changed_work = 1;
			e->changed_state = 1;
			*state_out = "queued";
			return 0;
		}
	}

	*state_out = !failed ? "passed" : (failure && !strcmp(failure, "canceled")) ? "canceled" : "failed";
	if (!(st = store_q(e->db, jq_job_final)))
		return OTA_ERROR;
	db_bind_text(st, 1, *state_out);
	db_bind_int64(st, 2, now);
	db_bind_int64(st, 3, r->exit_code);
	db_bind_text(st, 4, failure);
	db_bind_text(st, 5, r->message);
	db_bind_int64(st, 6, j->id);
	db_bind_int64(st, 7, clock_real_ms()); /* real durations of agents' jobs (issue 18) */
	if ((rc = db_run(st)) < 0)
		return rc;
	eng_event(e, j->run_id, j->id, "job.final",
	      json_pack("{ss si ss*}", "state", *state_out, "attempt", j->attempt, "failure", failure));
	e->changed_state = 1;
	return eng_advance_run(e, j->run_id);
}

static const char jq_agent_jobs[] =
	"SELECT id, COALESCE(started_at, 0) FROM jobs WHERE agent_id = ? AND state = 'running'";

/* Give up the jobs an agent holds (the agent restarted, was lost, or asks
 * for more work); failure is "infra", or "daemon" when otacd's own restart
 * lost it.  A job claimed (otacd time) before `lost_before` is otacd's
 * loss whatever `failure` says: see do_claim. */
static int release_agent_jobs(struct engine *e, int64_t agent_id, int64_t lost_before, const char *failure,
			      const char *why)
{
	struct db_stmt *st = store_q(e->db, jq_agent_jobs);
	int64_t ids[16], started[16];
	size_t n = 0;
	int rc = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, agent_id);
	while (n < OTA_ARRAY_SIZE(ids) && (rc = db_step(st)) == 1) {
		ids[n] = db_column_int64(st, 0);
		started[n++] = db_column_int64(st, 1);
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct jobrow j;
		const char *state;
		struct job_result r = { -1, failure, why };
		if (started[i] < lost_before) {
			r.failure_kind = "daemon";
			r.message = "otacd restarted before the agent got this job";
		}
		if ((rc = eng_job_load(e, ids[i], &j)) == 0)
			rc = eng_attempt_done(e, &j, &r, &state);
		eng_job_release(&j);
	}
	return rc;
}

static int release_agent_job_as(struct engine *e, int64_t agent_id, const char *failure, const char *why)
{
	return release_agent_jobs(e, agent_id, INT64_MIN, failure, why);
}

static int release_agent_job(struct engine *e, int64_t agent_id, const char *why)
{
	return release_agent_job_as(e, agent_id, "infra", why);
}

/* ---- agents: registration, claims, leases ------------------------------- */

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

struct register_args {
	const char *name;
	const json_t *labels;
	int local;
	int64_t agent_id;
};

static const char jq_agent_restarted[] = "SELECT registered_at < ? FROM agents WHERE name = ?";
static const char jq_agent_upsert[] =
	"INSERT INTO agents(name, labels, local, registered_at, last_seen) VALUES (?,?,?,?,?)"
	" ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, local = excluded.local,"
	" registered_at = excluded.registered_at, last_seen = excluded.last_seen RETURNING id";

static int do_register(struct engine *e, void *arg)
{
	struct register_args *a = arg;
	char *labels = NULL;
	int64_t now = clock_now_ms();
	struct db_stmt *st;
	int rc;

	/* A local agent registering for the first time since this daemon
	 * started was started by it: the one before it (and its job) went
	 * away with the previous daemon (a machine restart), not by its own
	 * fault.  Read before the row is updated. */
	int daemon_lost = 0;

	if (a->local) {
		if (!(st = store_q(e->db, jq_agent_restarted)))
			return OTA_ERROR;
		db_bind_int64(st, 1, e->started_at);
		db_bind_text(st, 2, a->name);
		if ((rc = db_step(st)) == 1)
			daemon_lost = (int)db_column_int64(st, 0);
		db_reset(st);
		if (rc < 0)
			return rc;
	}
	if (!(st = store_q(e->db, jq_agent_upsert)))
		return OTA_ERROR;
	labels = json_dumps(a->labels, JSON_COMPACT);
	db_bind_text(st, 1, a->name);
	db_bind_text(st, 2, labels); /* copied */
	db_bind_int64(st, 3, a->local);
	db_bind_int64(st, 4, now);
	db_bind_int64(st, 5, now);
	free(labels);
	rc = db_step(st);
	a->agent_id = rc == 1 ? db_column_int64(st, 0) : 0;
	db_reset(st);
	if (rc != 1)
		return rc < 0 ? rc : ota_error_set(OTA_ERROR, "agent registration lost");
	eng_event(e, 0, 0, "agent.registered", json_pack("{ss sI}", "name", a->name, "agent", (json_int_t)a->agent_id));
	/* A registering agent has restarted: whatever it held is gone. */
	if (daemon_lost)
		return release_agent_job_as(e, a->agent_id, "daemon",
					    "otacd restarted and its local agent with it while running this job");
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

static const char jq_run_names[] = "SELECT repo, ref, pipeline FROM runs WHERE id = ?";

/*
 * Where a job's `cache:` may be read from and written to (docs/security.md,
 * "Caches"), decided here from the run's stored trust, never from the
 * pipeline, which could otherwise name a protected namespace:
 *   - the namespace base is the repository ("repo:NAME") or, for an
 *     uploaded pipeline, the pipeline's name ("pipeline:NAME");
 *   - a protected run reads and writes BASE|protected only;
 *   - an unprotected run writes BASE|ref:REF only (its own ref), and
 *     reads that first, then BASE|protected: it may use what protected runs
 *     built, and nothing it writes is ever restored by a protected run or
 *     by another ref.
 * The agent maps each namespace to a directory by its SHA-256, so no name
 * reaches a path.  *out: the scope of j's run, whose stored trust is prot
 * (policy.h).
 */
static int cache_scope(struct engine *e, const struct jobrow *j, int prot, json_t **out)
{
	struct db_stmt *st = store_q(e->db, jq_run_names);
	char *base = NULL, *protected_ns = NULL, *own = NULL;
	int rc;

	*out = NULL;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, j->run_id);
	if ((rc = db_step(st)) == 1) {
		const char *repo = db_column_text(st, 0), *ref = db_column_text(st, 1);
		base = repo ? xasprintf("repo:%s", repo) : xasprintf("pipeline:%s", db_column_text(st, 2));
		protected_ns = xasprintf("%s|protected", base);
		own = prot == 1 ? xstrdup(protected_ns) : xasprintf("%s|ref:%s", base, ref ? ref : "");
		*out = prot == 1 ? json_pack("{ss s[s]}", "write", own, "read", own)
				 : json_pack("{ss s[ss]}", "write", own, "read", own, protected_ns);
	}
	db_reset(st);
	free(base);
	free(protected_ns);
	free(own);
	return rc < 0 ? rc : 0;
}

static const char jq_run_source[] = "SELECT ref, repo, commit_id, tree_id FROM runs WHERE id = ?";

/* Where the code comes from: the agent fetches the tree from us. */
static int job_source(struct engine *e, const struct jobrow *j, json_t *out)
{
	struct db_stmt *st = store_q(e->db, jq_run_source);
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, j->run_id);
	if ((rc = db_step(st)) == 1) {
		json_object_set_new(out, "ref", json_string(db_column_text(st, 0)));
		if (db_column_text(st, 1) && db_column_text(st, 2)) {
			char *url = xasprintf("/api/v1/agent/jobs/%" PRId64 "/source?attempt=%d", j->id, j->attempt);
			json_object_set_new(out, "source",
					    json_pack("{ss ss ss ss* ss}", "url", url, "repo", db_column_text(st, 1),
						      "commit", db_column_text(st, 2), "tree", db_column_text(st, 3),
						      "ref", db_column_text(st, 0)));
			free(url);
		}
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

/* *out: what the agent is given for attempt j->attempt of j. */
static int job_payload(struct engine *e, const struct jobrow *j, json_t **out)
{
	json_t *p = json_deep_copy(j->spec), *secrets = json_object(), *names, *name;
	int prot = policy_run_protected(e->db, j->run_id), rc = 0;
	size_t i;

	*out = NULL;
	if (prot < 0) {
		rc = prot;
		goto out;
	}
	/* Secrets go only to protected runs, decided when the run was made
	 * and checked again here, where they leave the daemon (policy.h). */
	names = prot == 1 ? json_object_get(j->spec, "secrets") : NULL;
	json_array_foreach(names, i, name) {
		json_t *v = e->cfg.secrets ? json_object_get(e->cfg.secrets, json_string_value(name)) : NULL;
		if (v)
			json_object_set(secrets, json_string_value(name), v);
	}
	json_object_set(p, "secrets", secrets);
	json_object_set_new(p, "job_id", json_integer(j->id));
	json_object_set_new(p, "attempt", json_integer(j->attempt));
	json_object_set_new(p, "run_id", json_integer(j->run_id));
	json_object_set_new(p, "stage", json_string(j->stage_name));
	json_object_set_new(p, "max_log_bytes", json_integer(logstore_max_bytes()));
	/* the scope is ours to say, whatever the stored spec holds */
	json_object_del(p, "cache_scope");
	if (json_is_object(json_object_get(p, "cache"))) {
		json_t *scope;
		if ((rc = cache_scope(e, j, prot, &scope)) < 0)
			goto out;
		if (scope)
			json_object_set_new(p, "cache_scope", scope);
		else
			json_object_del(p, "cache"); /* no scope, no cache */
	}
	if ((rc = job_source(e, j, p)) < 0)
		goto out;
	*out = p;
	p = NULL;
out:
	json_decref(secrets);
	json_decref(p);
	return rc;
}

static const char jq_agent_labels[] = "SELECT labels FROM agents WHERE id = ? AND revoked_at IS NULL";
static const char jq_agent_seen[] = "UPDATE agents SET last_seen = ? WHERE id = ?";
static const char jq_job_claim[] =
	"UPDATE jobs SET state = 'running', attempt = ?, agent_id = ?, lease_expires = ?, deadline = ?,"
	" started_at = ?5, finished_at = NULL, real_started_at = ?7, real_finished_at = NULL"
	" WHERE id = ?6 AND state = 'queued'";
/* The wait in the queue (real ms), read from the row jq_job_claim left
 * queued_at in; NULL for jobs queued before migration 14.  The CASE keeps
 * that NULL on PostgreSQL too, whose GREATEST (SQLite's scalar MAX there)
 * would skip it (docs/storage.md). */
static const char jq_attempt_start[] =
	"INSERT INTO job_attempts(job_id, attempt, agent_id, started_at, token_hash, queue_wait_ms)"
	" VALUES (?1,?2,?3,?4,?5, (SELECT CASE WHEN queued_at IS NOT NULL THEN MAX(?6 - queued_at, 0) END"
	" FROM jobs WHERE id = ?1))";
static const char jq_agent_holds[] = "UPDATE agents SET current_job = ? WHERE id = ?";

/* The labels agent_id registered with, if it is registered (else NULL). */
static int agent_labels(struct engine *e, int64_t agent_id, json_t **labels)
{
	struct db_stmt *st = store_q(e->db, jq_agent_labels);
	int rc;

	*labels = NULL;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, agent_id);
	if ((rc = db_step(st)) == 1)
		*labels = json_loads(db_column_text(st, 0), 0, NULL);
	db_reset(st);
	return rc < 0 ? rc : 0;
}

static int agent_seen(struct engine *e, int64_t agent_id)
{
	struct db_stmt *st = store_q(e->db, jq_agent_seen);

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, clock_now_ms());
	db_bind_int64(st, 2, agent_id);
	return db_run(st);
}

/* Start attempt j->attempt of j on agent j->agent_id, with token_hash. */
static int attempt_start(struct engine *e, const struct jobrow *j, const char *token_hash)
{
	int64_t real = clock_real_ms(), now = clock_now_ms();
	int64_t timeout = json_integer_value(json_object_get(j->spec, "timeout_ms"));
	struct db_stmt *st;
	int rc;

	if (!(st = store_q(e->db, jq_job_claim)))
		return OTA_ERROR;
	db_bind_int64(st, 1, j->attempt);
	db_bind_int64(st, 2, j->agent_id);
	db_bind_int64(st, 3, real + e->cfg.lease_ms);
	db_bind_int64(st, 4, real + timeout + e->cfg.lease_ms);
	db_bind_int64(st, 5, now);
	db_bind_int64(st, 6, j->id);
	db_bind_int64(st, 7, real);
	if ((rc = db_run(st)) < 0)
		return rc;
	/* The dispatch queue said queued; if the row disagrees, the command
	 * rolls back and the queue is rebuilt from the rows (engine.c),
	 * rather than a second attempt running beside the first. */
	if (db_changes(st) != 1)
		return ota_error_set(OTA_ECONFLICT, "job %" PRId64 " is not queued", j->id);

	if (!(st = store_q(e->db, jq_attempt_start)))
		return OTA_ERROR;
	db_bind_int64(st, 1, j->id);
	db_bind_int64(st, 2, j->attempt);
	db_bind_int64(st, 3, j->agent_id);
	db_bind_int64(st, 4, now);
	db_bind_text(st, 5, token_hash);
	db_bind_int64(st, 6, real);
	if ((rc = db_run(st)) < 0)
		return rc;

	if (!(st = store_q(e->db, jq_agent_holds)))
		return OTA_ERROR;
	db_bind_int64(st, 1, j->id);
	db_bind_int64(st, 2, j->agent_id);
	return db_run(st);
}

static int do_claim(struct engine *e, void *arg)
{
	struct claim_args *a = arg;
	json_t *labels = NULL;
	struct jobrow j = { 0 };
	char token[65] = "", token_hash[65];
	int rc;
	size_t i;

	if ((rc = agent_labels(e, a->agent_id, &labels)) < 0)
		return rc;
	if (!labels)
		return ota_error_set(OTA_ENOTFOUND, "agent %" PRId64 " is not registered", a->agent_id);
	labels_bound(labels, a->allowed);

	/* An agent asking for work holds none: release a job it still owns.
	 * One claimed before this daemon started most likely never reached
	 * the agent (the daemon died between its commit and its answer; an
	 * agent that got it would report on it, not ask for more): otacd's
	 * fault, which costs the job no retry (test_jobdur). */
	if ((rc = release_agent_jobs(e, a->agent_id, e->started_at, "infra",
				     "agent asked for new work while holding this job")) < 0)
		goto out;
	if ((rc = agent_seen(e, a->agent_id)) < 0)
		goto out;

	for (i = 0; i < e->nqueue; i++)
		if (labels_match(e->queue[i].labels, labels))
			break;
	if (i == e->nqueue)
		goto out; /* nothing for this agent */

	if ((rc = eng_job_load(e, e->queue[i].id, &j)) < 0)
		goto out;
	eng_queue_remove(e, j.id);
	j.attempt++;
	j.agent_id = a->agent_id;
	/* The attempt's job token: only its hash is kept (in the attempt's row,
	 * so a restarted daemon still knows it); the agent gets it once. */
	if ((rc = ota_random_hex(token, 32)) < 0)
		goto out;
	auth_sha256_hex(token, token_hash);
	if ((rc = attempt_start(e, &j, token_hash)) < 0)
		goto out;
	eng_event(e, j.run_id, j.id, "job.running", json_pack("{si sI}", "attempt", j.attempt, "agent", (json_int_t)a->agent_id));
	/* log_level: debug; the line carries the run and job (eng_job_load) */
	ota_log(OTA_LOG_DEBUG, "engine: job %" PRId64 " (stage %s) attempt %d: claimed by agent %" PRId64, j.id,
		j.stage_name, j.attempt, a->agent_id);
	e->changed_state = 1;
	if ((rc = job_payload(e, &j, &a->job)) < 0)
		goto out;
	json_object_set_new(a->job, "job_token", json_string(token));
out:
	OPENSSL_cleanse(token, sizeof(token));
	eng_job_release(&j);
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

static const char jq_job_lease[] = "SELECT state, attempt, COALESCE(agent_id, 0) FROM jobs WHERE id = ?";
static const char jq_job_lease_renew[] = "UPDATE jobs SET lease_expires = ? WHERE id = ?";

static int do_heartbeat(struct engine *e, void *arg)
{
	struct heartbeat_args *a = arg;
	struct db_stmt *st = store_q(e->db, jq_job_lease);
	char state[16] = "";
	int attempt = 0, rc;
	int64_t agent = 0;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, a->job_id);
	rc = db_step(st);
	if (rc == 1) {
		snprintf(state, sizeof(state), "%s", db_column_text(st, 0));
		attempt = (int)db_column_int64(st, 1);
		agent = db_column_int64(st, 2);
	}
	db_reset(st);
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
	if (!(st = store_q(e->db, jq_job_lease_renew)))
		return OTA_ERROR;
	db_bind_int64(st, 1, clock_real_ms() + e->cfg.lease_ms);
	db_bind_int64(st, 2, a->job_id);
	if ((rc = db_run(st)) < 0)
		return rc;
	return agent_seen(e, a->agent_id);
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

static const char jq_attempt_open[] =
	"SELECT finished_at IS NULL FROM job_attempts WHERE job_id = ? AND attempt = ? AND agent_id = ?";
static const char jq_attempt_cancel[] =
	"UPDATE job_attempts SET finished_at = ?, exit_code = ?, failure = 'canceled' WHERE job_id = ? AND attempt = ?";

static int do_finish(struct engine *e, void *arg)
{
	struct finish_args *a = arg;
	struct jobrow j;
	struct db_stmt *st;
	int rc, attempt_open = 0;

	if ((rc = eng_job_load(e, a->job_id, &j)) < 0)
		return rc;
	if (!(st = store_q(e->db, jq_attempt_open))) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, a->job_id);
	db_bind_int64(st, 2, a->attempt);
	db_bind_int64(st, 3, a->agent_id);
	rc = db_step(st);
	if (rc == 1)
		attempt_open = (int)db_column_int64(st, 0);
	db_reset(st);
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
		if (!(st = store_q(e->db, jq_attempt_cancel))) {
			rc = OTA_ERROR;
			goto out;
		}
		db_bind_int64(st, 1, clock_now_ms());
		db_bind_int64(st, 2, a->r->exit_code);
		db_bind_int64(st, 3, a->job_id);
		db_bind_int64(st, 4, a->attempt);
		if ((rc = db_run(st)) < 0)
			goto out;
		rc = agent_free(e, a->agent_id, a->job_id);
		a->state = "canceled";
		goto out;
	}
	if (strcmp(j.state, "running") != 0 || j.attempt != a->attempt) {
		rc = ota_error_set(OTA_ECONFLICT, "job %" PRId64 " is %s", a->job_id, j.state);
		goto out;
	}
	rc = eng_attempt_done(e, &j, a->r, &a->state);
out:
	eng_job_release(&j);
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

static const char jq_run_artifact_bytes[] =
	"SELECT COALESCE(SUM(size), 0) FROM artifacts WHERE run_id = ? AND NOT (job_id = ? AND attempt = ? AND name = ?)";
static const char jq_artifact_upsert[] =
	"INSERT INTO artifacts(run_id, job_id, attempt, name, sha256, size, type, hardware, created_at)"
	" VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(job_id, attempt, name) DO UPDATE SET"
	" sha256 = excluded.sha256, size = excluded.size, type = excluded.type, hardware = excluded.hardware"
	" RETURNING id";

/* Would the artifact a->info of j take its run past its cap?  An artifact
 * sent again under its name replaces the one before, so that one's size
 * does not count. */
static int artifact_within_cap(struct engine *e, const struct jobrow *j, const struct artifact_args *a)
{
	struct db_stmt *st = store_q(e->db, jq_run_artifact_bytes);
	int64_t used = 0;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, j->run_id);
	db_bind_int64(st, 2, j->id);
	db_bind_int64(st, 3, a->attempt);
	db_bind_text(st, 4, a->info->name);
	if ((rc = db_step(st)) == 1)
		used = db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	if (used + a->info->size > e->cfg.max_run_artifact_bytes)
		return ota_error_set(OTA_ETOOBIG, "run %" PRId64 " would hold %" PRId64 " bytes of artifacts, over its limit of %" PRId64,
				     j->run_id, used + a->info->size, e->cfg.max_run_artifact_bytes);
	return 0;
}

static int do_artifact_add(struct engine *e, void *arg)
{
	struct artifact_args *a = arg;
	struct jobrow j;
	struct db_stmt *st;
	int rc;

	if ((rc = eng_job_load(e, a->job_id, &j)) < 0)
		return rc;
	if (strcmp(j.state, "running") != 0 || j.attempt != a->attempt) {
		rc = ota_error_set(OTA_ECONFLICT, "attempt %d of job %" PRId64 " is not running", a->attempt, a->job_id);
		goto out;
	}
	if (e->cfg.max_run_artifact_bytes > 0 && (rc = artifact_within_cap(e, &j, a)) < 0)
		goto out;
	if (!(st = store_q(e->db, jq_artifact_upsert))) {
		rc = OTA_ERROR;
		goto out;
	}
	db_bind_int64(st, 1, j.run_id);
	db_bind_int64(st, 2, j.id);
	db_bind_int64(st, 3, a->attempt);
	db_bind_text(st, 4, a->info->name);
	db_bind_text(st, 5, a->info->sha256);
	db_bind_int64(st, 6, a->info->size);
	db_bind_text(st, 7, a->info->type);
	db_bind_text(st, 8, a->info->hardware);
	db_bind_int64(st, 9, clock_now_ms());
	rc = db_step(st);
	if (rc == 1)
		a->id = db_column_int64(st, 0);
	db_reset(st);
	if (rc <= 0) {
		rc = rc < 0 ? rc : ota_error_set(OTA_ERROR, "artifact %s of job %" PRId64 ": no row recorded", a->info->name, j.id);
		goto out;
	}
	rc = 0;
	eng_event(e, j.run_id, j.id, "artifact.added", json_pack("{ss ss sI}", "name", a->info->name, "sha256",
							      a->info->sha256, "size", (json_int_t)a->info->size));
out:
	eng_job_release(&j);
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

int engine_job_complete(struct engine *e, int64_t job_id, const struct job_result *r, const char **state)
{
	struct jobrow j;
	const char *st = NULL;
	int rc;

	if ((rc = eng_job_load(e, job_id, &j)) < 0)
		return rc;
	if (strcmp(j.state, "running") != 0) {
		eng_job_release(&j);
		return ota_error_set(OTA_ECONFLICT, "job %" PRId64 " is %s, not running", job_id, j.state);
	}
	rc = eng_attempt_done(e, &j, r, &st);
	eng_job_release(&j);
	if (state)
		*state = st;
	return rc;
}

/* ---- for tests (engine_int.h) ------------------------------------------- */

static const struct engine_jobs_sql k_sql[] = {
#define Q(name) { #name, name }
	Q(jq_attempt_end),     Q(jq_agent_free),       Q(jq_job_requeue),       Q(jq_job_final),
	Q(jq_agent_jobs),      Q(jq_agent_restarted),  Q(jq_agent_upsert),      Q(jq_run_names),
	Q(jq_run_source),      Q(jq_agent_labels),     Q(jq_agent_seen),        Q(jq_job_claim),
	Q(jq_attempt_start),   Q(jq_agent_holds),      Q(jq_job_lease),         Q(jq_job_lease_renew),
	Q(jq_attempt_open),    Q(jq_attempt_cancel),   Q(jq_run_artifact_bytes), Q(jq_artifact_upsert),
#undef Q
};

const struct engine_jobs_sql *engine_jobs_sql(size_t *n)
{
	*n = OTA_ARRAY_SIZE(k_sql);
	return k_sql;
}
