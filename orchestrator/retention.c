/*
 * retention.c - the pruner: finished runs' rows and logs by age and count,
 * and the database file's upkeep; see retention.h.
 *
 * A pass has three phases, each done in batches of cfg->batch runs (one
 * engine transaction per batch):
 *
 *   runs    delete whole runs (reports, metrics, artifacts, attempts,
 *           jobs, stages, events, the run) that are finished and past the
 *           age or count bound and not kept (retention.h).  Walks runs by
 *           id from the cursor, so kept runs are read once per pass.
 *   logs    remove the log files of runs finished before logs_max_age
 *           (rows stay); a cursor in meta remembers how far it got.
 *   extras  rows that outlive their runs: events with no run, webhook
 *           deliveries whose run is gone, both past runs_max_age.
 *   outbox  the notification outbox's finished rows past outbox_max_age
 *           (real time) or beyond the newest outbox_keep (issue 18).
 *
 * Artifact objects (the blobs) go after the commit that removed the last
 * row naming them, like the artifact expiry in engine.c; released
 * artifacts are never touched (their runs are kept).
 */
#include "retention.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "clock.h"
#include "db/db.h"
#include "logstore.h"

int retention_enabled(const struct retention_cfg *cfg)
{
	return cfg->runs_max_age_ms > 0 || cfg->runs_keep > 0 || cfg->logs_max_age_ms > 0 ||
	       cfg->outbox_max_age_ms > 0 || cfg->outbox_keep > 0;
}

void retention_pass_start(struct retention_pass *p, int64_t now_ms)
{
	memset(p, 0, sizeof(*p));
	p->phase = RET_RUNS;
	p->now = now_ms;
	p->now_real = clock_real_ms();
}

static void out_add_job(struct retention_out *out, int64_t job)
{
	if (out->ndead_jobs == out->capdead_jobs) {
		out->capdead_jobs = out->capdead_jobs ? 2 * out->capdead_jobs : 64;
		out->dead_jobs = xrealloc(out->dead_jobs, out->capdead_jobs * sizeof(*out->dead_jobs));
	}
	out->dead_jobs[out->ndead_jobs++] = job;
}

/* Runs up to this id fall outside runs_keep (0: none). */
static int keep_cut(struct store *db, const struct retention_cfg *cfg, int64_t *cut)
{
	struct db_stmt *st;
	int rc;

	*cut = 0;
	if (cfg->runs_keep <= 0)
		return 0;
	st = store_q(db, "SELECT id FROM runs ORDER BY id DESC LIMIT 1 OFFSET ?");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, cfg->runs_keep);
	rc = db_step(st);
	if (rc == 1)
		*cut = db_column_int64(st, 0);
	db_reset(st);
	return rc < 0 ? rc : 0;
}

/* Delete one run's rows; its jobs' ids go to out (logs, after commit) and
 * artifact objects no other row names to out->dead_objects. */
static int delete_run(struct store *db, int64_t run, struct retention_out *out)
{
	static const char *const deletes[] = {
		"DELETE FROM reports WHERE run_id = ?",
		"DELETE FROM run_metrics WHERE run_id = ?",
		"DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM jobs WHERE run_id = ?)",
		"DELETE FROM jobs WHERE run_id = ?",
		"DELETE FROM stages WHERE run_id = ?",
		"DELETE FROM events WHERE run_id = ?",
		"DELETE FROM runs WHERE id = ?",
	};
	struct strvec shas = STRVEC_INIT;
	struct db_stmt *st;
	int rc = 0;

	st = store_q(db, "SELECT id FROM jobs WHERE run_id = ?");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	while ((rc = db_step(st)) == 1)
		out_add_job(out, db_column_int64(st, 0));
	db_reset(st);
	if (rc < 0)
		return rc;
	st = store_q(db, "DELETE FROM artifacts WHERE run_id = ? RETURNING sha256");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	while ((rc = db_step(st)) == 1)
		strvec_push(&shas, db_column_text(st, 0));
	db_reset(st);
	for (size_t i = 0; rc == 0 && i < shas.n; i++) {
		st = store_q(db, "SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1");
		if (!st) {
			rc = OTA_ERROR;
			break;
		}
		db_bind_text(st, 1, shas.v[i]);
		rc = db_step(st);
		db_reset(st);
		if (rc == 0 && !strvec_contains(&out->dead_objects, shas.v[i]))
			strvec_push(&out->dead_objects, shas.v[i]);
		rc = rc < 0 ? rc : 0;
	}
	strvec_clear(&shas);
	for (size_t i = 0; rc == 0 && i < OTA_ARRAY_SIZE(deletes); i++) {
		st = store_q(db, deletes[i]);
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, run);
		rc = db_run(st);
	}
	if (rc < 0)
		return ota_error_set(rc, "retention: deleting run %" PRId64 ": %s", run, ota_error_last());
	out->runs_deleted++;
	return 0;
}

/*
 * The runs a batch may delete: finished, past a bound, and not kept.  The
 * newest run and the run of the newest job stay so that SQLite never hands
 * out a deleted id again (rowids are max + 1).  ?2 is cast: PostgreSQL
 * would type a parameter first met in `?2 > 0` as a 32-bit integer, too
 * small for a time in ms.
 */
static const char *const RUN_CANDIDATES =
	"SELECT r.id FROM runs r WHERE r.id > ?1 AND r.id <= ?5"
	" AND r.state IN ('passed','failed','canceled','skipped')"
	" AND ((CAST(?2 AS BIGINT) > 0 AND r.finished_at < ?2) OR r.id <= ?3)"
	" AND r.id < (SELECT MAX(id) FROM runs)"
	" AND NOT EXISTS (SELECT 1 FROM releases WHERE run_id = r.id)"
	" AND NOT EXISTS (SELECT 1 FROM rollouts WHERE job_id IN (SELECT id FROM jobs WHERE run_id = r.id))"
	" AND NOT EXISTS (SELECT 1 FROM artifacts WHERE run_id = r.id AND released <> 0)"
	" AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id AND id = (SELECT MAX(id) FROM jobs))"
	" ORDER BY r.id LIMIT ?4";

static int batch_runs(struct store *db, const struct retention_cfg *cfg, struct retention_pass *p,
		      struct retention_out *out)
{
	int64_t cut = 0, ids[1024];
	size_t n = 0, want = cfg->batch < 1 ? 1 : cfg->batch > 1024 ? 1024 : (size_t)cfg->batch;
	struct db_stmt *st;
	int rc;

	if (cfg->runs_max_age_ms <= 0 && cfg->runs_keep <= 0)
		return 0;
	if ((rc = keep_cut(db, cfg, &cut)) < 0)
		return rc;
	if (cfg->runs_max_age_ms <= 0 && cut == 0)
		return 0; /* fewer runs than runs_keep: nothing to read */
	if (!(st = store_q(db, RUN_CANDIDATES)))
		return OTA_ERROR;
	db_bind_int64(st, 1, p->cursor);
	db_bind_int64(st, 2, cfg->runs_max_age_ms > 0 ? p->now - cfg->runs_max_age_ms : 0);
	db_bind_int64(st, 3, cut);
	db_bind_int64(st, 4, (int64_t)want);
	/* with a count bound only, the candidates are a rowid range */
	db_bind_int64(st, 5, cfg->runs_max_age_ms > 0 ? INT64_MAX : cut);
	while (n < want && (rc = db_step(st)) == 1)
		ids[n++] = db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		if ((rc = delete_run(db, ids[i], out)) < 0)
			return rc;
	p->runs_deleted += (int64_t)n;
	if (n)
		p->cursor = ids[n - 1];
	return n == want;
}

static int logs_cursor(struct store *db, int64_t *through)
{
	char *v = NULL;
	int rc = store_meta_get(db, "retention.logs_through", &v);
	*through = rc == 0 ? strtoll(v, NULL, 10) : 0;
	free(v);
	return rc == OTA_ENOTFOUND ? 0 : rc;
}

/* Remove the logs of one run's jobs now (before the cursor commits). */
static int remove_run_logs(struct store *db, int64_t run)
{
	struct db_stmt *st = store_q(db, "SELECT id FROM jobs WHERE run_id = ?");
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run);
	while ((rc = db_step(st)) == 1)
		/* a file that cannot be removed (permissions) is reported and
		 * left: the cursor moves on rather than stopping every pass */
		if (logstore_remove_job(db_column_int64(st, 0)) < 0)
			ota_log(OTA_LOG_WARN, "retention: %s", ota_error_last());
	db_reset(st);
	return rc < 0 ? rc : 0;
}

/*
 * Logs past logs_max_age, walking runs by id from the cursor.  A run
 * created before the bound but unfinished is passed over (its logs then
 * stay until the run itself goes); one finished but not yet past the
 * bound stops the walk until it is.  Runs that produced a release keep
 * their logs, as they keep their rows.
 */
static int batch_logs(struct store *db, const struct retention_cfg *cfg, struct retention_pass *p)
{
	int64_t through, cutoff = p->now - cfg->logs_max_age_ms, last;
	struct db_stmt *st;
	int64_t ids[1024], finished[1024], created[1024], released[1024];
	char final[1024];
	size_t n = 0, want = cfg->batch < 1 ? 1 : cfg->batch > 1024 ? 1024 : (size_t)cfg->batch;
	int rc, stop = 0;
	char num[32];

	if (cfg->logs_max_age_ms <= 0)
		return 0;
	if ((rc = logs_cursor(db, &through)) < 0)
		return rc;
	/* the IN and EXISTS columns read as 1/0 on both backends
	 * (db_column_int64 reads PostgreSQL's booleans) */
	st = store_q(db, "SELECT r.id, r.state IN ('passed','failed','canceled','skipped'),"
			 " COALESCE(r.finished_at, 0), r.created_at,"
			 " EXISTS (SELECT 1 FROM releases WHERE run_id = r.id)"
			 " FROM runs r WHERE r.id > ? ORDER BY r.id LIMIT ?");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, through);
	db_bind_int64(st, 2, (int64_t)want);
	while (n < want && (rc = db_step(st)) == 1) {
		ids[n] = db_column_int64(st, 0);
		final[n] = (char)db_column_int64(st, 1);
		finished[n] = db_column_int64(st, 2);
		created[n] = db_column_int64(st, 3);
		released[n] = db_column_int64(st, 4);
		n++;
	}
	db_reset(st);
	if (rc < 0)
		return rc;
	last = through;
	for (size_t i = 0; i < n; i++) {
		if (created[i] >= cutoff || (final[i] && finished[i] >= cutoff)) {
			stop = 1;
			break;
		}
		if (final[i] && !released[i]) {
			if ((rc = remove_run_logs(db, ids[i])) < 0)
				return rc;
			p->logs_pruned++;
		}
		last = ids[i];
	}
	if (last == through)
		return 0;
	snprintf(num, sizeof(num), "%" PRId64, last);
	if ((rc = store_meta_set(db, "retention.logs_through", num)) < 0)
		return rc;
	return !stop && n == want;
}

/* Rows that outlive their runs, past runs_max_age: events of no run and
 * answered webhook deliveries whose run is gone. */
static int batch_extras(struct store *db, const struct retention_cfg *cfg, struct retention_pass *p)
{
	static const char *const deletes[] = {
		"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE run_id IS NULL AND at < ?1"
		" ORDER BY id LIMIT ?2)",
		"DELETE FROM deliveries WHERE id IN (SELECT d.id FROM deliveries d WHERE d.state <> 'pending'"
		" AND d.received_at < ?1 AND (d.run_id IS NULL OR NOT EXISTS (SELECT 1 FROM runs WHERE id = d.run_id))"
		" ORDER BY d.id LIMIT ?2)",
	};
	int more = 0;

	if (cfg->runs_max_age_ms <= 0)
		return 0;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(deletes); i++) {
		struct db_stmt *st = store_q(db, deletes[i]);
		int64_t changed;
		int rc;
		if (!st)
			return OTA_ERROR;
		db_bind_int64(st, 1, p->now - cfg->runs_max_age_ms);
		db_bind_int64(st, 2, cfg->batch * 20);
		if ((rc = db_run(st)) < 0)
			return rc;
		changed = db_changes(st);
		p->extras_deleted += changed;
		more |= changed == cfg->batch * 20;
	}
	return more;
}

/* The id at or below which finished outbox rows fall outside outbox_keep
 * (0: none do). */
static int outbox_keep_cut(struct store *db, const struct retention_cfg *cfg, int64_t *cut)
{
	struct db_stmt *st;
	int rc;

	*cut = 0;
	if (cfg->outbox_keep <= 0)
		return 0;
	if (!(st = store_q(db, "SELECT id FROM outbox WHERE state <> 'pending' ORDER BY id DESC LIMIT 1 OFFSET ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, cfg->outbox_keep);
	if ((rc = db_step(st)) == 1)
		*cut = db_column_int64(st, 0);
	db_reset(st);
	return rc < 0 ? rc : 0;
}

/*
 * The outbox's finished rows (sent, refused, expired) past outbox_max_age
 * by done_at (real time, as the outbox writes it) or beyond the newest
 * outbox_keep, oldest first, batch x 20 rows per transaction.  Pending
 * rows are never touched: the sender owns them and expires them itself.
 */
static int batch_outbox(struct store *db, const struct retention_cfg *cfg, struct retention_pass *p)
{
	struct db_stmt *st;
	int64_t cut, limit = cfg->batch * 20, changed;
	int rc;

	if (cfg->outbox_max_age_ms <= 0 && cfg->outbox_keep <= 0)
		return 0;
	if ((rc = outbox_keep_cut(db, cfg, &cut)) < 0)
		return rc;
	st = store_q(db, "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state <> 'pending'"
			 " AND (id <= ?1 OR done_at < ?2) ORDER BY id LIMIT ?3)");
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, cut);
	/* 0: no age bound (every finished row has a done_at after 1970) */
	db_bind_int64(st, 2, cfg->outbox_max_age_ms > 0 ? p->now_real - cfg->outbox_max_age_ms : 0);
	db_bind_int64(st, 3, limit);
	if ((rc = db_run(st)) < 0)
		return rc;
	changed = db_changes(st);
	p->outbox_deleted += changed;
	return changed == limit;
}

int retention_batch(struct store *db, const struct retention_cfg *cfg, struct retention_pass *p,
		    struct retention_out *out)
{
	int rc = 0;

	switch (p->phase) {
	case RET_RUNS:
		rc = batch_runs(db, cfg, p, out);
		break;
	case RET_LOGS:
		rc = batch_logs(db, cfg, p);
		break;
	case RET_EXTRAS:
		rc = batch_extras(db, cfg, p);
		break;
	case RET_OUTBOX:
		rc = batch_outbox(db, cfg, p);
		break;
	case RET_DONE:
		return 0;
	}
	if (rc < 0)
		return rc;
	if (rc == 0)
		p->phase++;
	return p->phase != RET_DONE;
}

void retention_after_commit(struct retention_out *out)
{
	for (size_t i = 0; i < out->ndead_jobs; i++)
		if (logstore_remove_job(out->dead_jobs[i]) < 0)
			ota_log(OTA_LOG_WARN, "retention: %s", ota_error_last());
	out->ndead_jobs = 0;
	out->runs_deleted = 0;
	strvec_clear(&out->dead_objects);
}

void retention_out_release(struct retention_out *out)
{
	free(out->dead_jobs);
	strvec_clear(&out->dead_objects);
	memset(out, 0, sizeof(*out));
}

struct sweep {
	struct store *db;
	int removed;
};

static int sweep_one(int64_t job, void *arg)
{
	struct sweep *s = arg;
	struct db_stmt *st = store_q(s->db, "SELECT 1 FROM jobs WHERE id = ?");
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, job);
	rc = db_step(st);
	db_reset(st);
	if (rc == 0 && logstore_remove_job(job) == 0)
		s->removed++;
	return rc < 0 ? rc : 0;
}

int retention_sweep_orphans(struct store *db)
{
	struct sweep s = { db, 0 };
	int rc = logstore_each_job(sweep_one, &s);
	return rc < 0 ? rc : s.removed;
}

int retention_maintain(struct store *db, int max_pages, int *freed)
{
	if (db_maintain(store_conn(db), max_pages, freed) < 0)
		return ota_error_set(OTA_ERROR, "retention: %s", ota_error_last());
	return 0;
}
