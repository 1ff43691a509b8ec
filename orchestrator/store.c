/*
 * store.c - otacd.db's connections, the schema and its migrations.
 *
 * A store is a storage-layer connection (db/db.h): SQLite by default, or
 * PostgreSQL (config key database:).  Every module prepares its statements
 * with store_q(); nothing outside orchestrator/db/ sees a sqlite3 handle
 * (docs/storage.md).
 *
 * Migrations are append-only: never edit one that has shipped, add the next
 * number.  Each runs in a transaction together with its schema_migrations
 * row, so a crash mid-migration leaves the database at the previous version.
 *
 * Durability: WAL with synchronous=FULL.  Every COMMIT fsyncs the WAL
 * before it returns, so whatever an answer reports as done survives a
 * killed process and an OS crash or power cut alike (docs/architecture.md,
 * crash safety).  store_set_synchronous() lowers it to NORMAL for the
 * benchmark that measures what FULL costs (bench/sync_bench.c).
 *
 * Size: a new database is created with auto_vacuum=INCREMENTAL, so the
 * pages the retention pruner frees can be given back to the file system
 * a few thousand at a time (retention.h); older databases reuse freed
 * pages but do not shrink without an offline VACUUM (docs/operations.md).
 */
#include "store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "db/db.h"

struct store {
	struct db *conn; /* the storage layer's connection (db/db.h) */
	char *path;
};

static const char *const migrations[] = {
	/* 1: runs, stages, jobs, agents, tokens, artifacts, events */
	"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE tokens ("
	"  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,"
	"  hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);"
	"CREATE TABLE runs ("
	"  id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, file TEXT NOT NULL,"
	"  yaml TEXT NOT NULL, ref TEXT NOT NULL, commit_id TEXT,"
	"  state TEXT NOT NULL, concurrency TEXT, trigger TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,"
	"  error TEXT);"
	"CREATE INDEX runs_by_state ON runs(state, id);"
	"CREATE INDEX runs_by_pipeline ON runs(pipeline, id);"
	"CREATE TABLE stages ("
	"  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),"
	"  idx INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,"
	"  state TEXT NOT NULL, needs TEXT NOT NULL, when_filter TEXT,"
	"  started_at INTEGER, finished_at INTEGER, UNIQUE(run_id, name));"
	"CREATE TABLE jobs ("
	"  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),"
	"  stage_id INTEGER NOT NULL REFERENCES stages(id), idx INTEGER NOT NULL,"
	"  name TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,"
	"  attempt INTEGER NOT NULL DEFAULT 0,"
	"  retries_left INTEGER NOT NULL, infra_retries_left INTEGER NOT NULL,"
	"  agent_id INTEGER, lease_expires INTEGER, deadline INTEGER,"
	"  started_at INTEGER, finished_at INTEGER, exit_code INTEGER,"
	"  failure TEXT, message TEXT);"
	"CREATE INDEX jobs_by_run ON jobs(run_id, idx);"
	"CREATE INDEX jobs_by_state ON jobs(state);"
	"CREATE INDEX jobs_by_stage ON jobs(stage_id, state);"
	"CREATE TABLE job_attempts ("
	"  job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,"
	"  agent_id INTEGER, started_at INTEGER NOT NULL, finished_at INTEGER,"
	"  exit_code INTEGER, failure TEXT, message TEXT,"
	"  PRIMARY KEY(job_id, attempt));"
	"CREATE TABLE agents ("
	"  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, labels TEXT NOT NULL,"
	"  local INTEGER NOT NULL DEFAULT 0, registered_at INTEGER NOT NULL,"
	"  last_seen INTEGER NOT NULL, current_job INTEGER);"
	"CREATE TABLE artifacts ("
	"  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, job_id INTEGER NOT NULL,"
	"  attempt INTEGER NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,"
	"  size INTEGER NOT NULL, type TEXT, hardware TEXT, created_at INTEGER NOT NULL,"
	"  UNIQUE(job_id, attempt, name));"
	"CREATE INDEX artifacts_by_run ON artifacts(run_id);"
	"CREATE TABLE events ("
	"  id INTEGER PRIMARY KEY, at INTEGER NOT NULL, run_id INTEGER,"
	"  job_id INTEGER, kind TEXT NOT NULL, detail TEXT);"
	"CREATE INDEX events_by_run ON events(run_id, id);",

	/* 2: git sources: where a run's code came from; webhook deliveries */
	"ALTER TABLE runs ADD COLUMN repo TEXT;"
	"ALTER TABLE runs ADD COLUMN tree_id TEXT;"
	"ALTER TABLE runs ADD COLUMN author TEXT;"
	"ALTER TABLE runs ADD COLUMN committer TEXT;"
	"ALTER TABLE runs ADD COLUMN message TEXT;"
	"ALTER TABLE runs ADD COLUMN pusher TEXT;"
	"ALTER TABLE runs ADD COLUMN delivery_id INTEGER;"
	"CREATE TABLE deliveries ("
	"  id INTEGER PRIMARY KEY, provider TEXT NOT NULL, delivery TEXT NOT NULL,"
	"  repo TEXT NOT NULL, ref TEXT NOT NULL, before_sha TEXT, after_sha TEXT,"
	"  forced INTEGER NOT NULL DEFAULT 0, pusher TEXT, received_at INTEGER NOT NULL,"
	"  state TEXT NOT NULL, run_id INTEGER, reason TEXT,"
	"  UNIQUE(provider, delivery));"
	"CREATE INDEX deliveries_pending ON deliveries(state, id);",

	/* 3: artifacts a release keeps forever; retention of the others */
	"ALTER TABLE artifacts ADD COLUMN released INTEGER NOT NULL DEFAULT 0;"
	"CREATE INDEX artifacts_by_sha ON artifacts(sha256);"
	"CREATE INDEX artifacts_by_age ON artifacts(released, created_at);",

	/* 4: releases */
	"CREATE TABLE releases ("
	"  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL UNIQUE REFERENCES runs(id),"
	"  product TEXT NOT NULL, version TEXT NOT NULL, branch TEXT NOT NULL,"
	"  security_counter INTEGER NOT NULL, key_id TEXT NOT NULL,"
	"  manifest_artifact INTEGER, envelope_artifact INTEGER, provenance_artifact INTEGER,"
	"  created_at INTEGER NOT NULL, UNIQUE(product, version));",
	/* 5: rollouts (soak and rollout stages), their gate evaluations, the
	 * audit log; a release's fleet state.  Times are otacd ms. */
	"ALTER TABLE releases ADD COLUMN state TEXT NOT NULL DEFAULT 'created';"
	"ALTER TABLE releases ADD COLUMN rollback_to INTEGER;"
	"ALTER TABLE releases ADD COLUMN reissue_of INTEGER;"
	"CREATE TABLE rollouts ("
	"  id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL UNIQUE REFERENCES jobs(id),"
	"  run_id INTEGER NOT NULL, release_id INTEGER NOT NULL REFERENCES releases(id),"
	"  stage TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT NOT NULL,"
	"  state TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, percent_bp INTEGER NOT NULL DEFAULT 0,"
	"  step_started_at INTEGER, hold_until INTEGER, extend_until INTEGER,"
	"  errors INTEGER NOT NULL DEFAULT 0, breaches TEXT, reason TEXT, seq INTEGER NOT NULL DEFAULT 0,"
	"  created_at INTEGER NOT NULL, finished_at INTEGER);"
	"CREATE INDEX rollouts_release ON rollouts(release_id);"
	"CREATE TABLE gate_evals ("
	"  id INTEGER PRIMARY KEY, rollout_id INTEGER NOT NULL REFERENCES rollouts(id),"
	"  step INTEGER NOT NULL, gate TEXT NOT NULL, at INTEGER NOT NULL, verdict TEXT NOT NULL,"
	"  estimate REAL, lo REAL, hi REAL, n INTEGER, detail TEXT);"
	"CREATE INDEX gate_evals_rollout ON gate_evals(rollout_id, id);"
	"CREATE TABLE audit ("
	"  id INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,"
	"  release_id INTEGER, rollout_id INTEGER, reason TEXT, detail TEXT);",
	/* 6: test and analysis reports (JUnit, cppcheck, SARIF, toolchain), one
	 * row per uploaded file of a job attempt; summary and body are JSON
	 * (orchestrator/reports.h) */
	"CREATE TABLE reports ("
	"  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),"
	"  job_id INTEGER NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,"
	"  format TEXT NOT NULL, name TEXT NOT NULL, summary TEXT NOT NULL, body TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL, UNIQUE(job_id, attempt, format, name));"
	"CREATE INDEX reports_by_run ON reports(run_id, job_id);",
	/* 7: the status page's filtered run lists (pipeline + state, branch)
	 * walk an index instead of the whole table */
	"CREATE INDEX IF NOT EXISTS runs_pipeline_state ON runs(pipeline, state, id);"
	"CREATE INDEX IF NOT EXISTS runs_ref ON runs(ref, id);",
	/* 8 (issue 12, part 2: agent and job identities): agents registered by
	 * `otactl agents add` keep their token's SHA-256 and the labels they
	 * may claim; each claimed attempt keeps its job token's SHA-256, so a
	 * restarted daemon still knows which attempt a job token belongs to */
	"ALTER TABLE agents ADD COLUMN token_hash TEXT;"
	"ALTER TABLE agents ADD COLUMN allowed_labels TEXT;"
	"ALTER TABLE agents ADD COLUMN revoked_at INTEGER;"
	"ALTER TABLE job_attempts ADD COLUMN token_hash TEXT;"
	"CREATE UNIQUE INDEX job_attempts_token ON job_attempts(token_hash);",
	/* 9 (issue 12 part 1, protected refs and release policy): a run's
	 * trust, decided by the server when the run is created
	 * (orchestrator/policy.h); who approved a rollout waiting for approval */
	"ALTER TABLE runs ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE runs ADD COLUMN trust_reason TEXT;"
	"ALTER TABLE rollouts ADD COLUMN approved_by TEXT;",
	/* 10 (issue 19 part 4, retrying a request after a lost answer): the
	 * first answer to each Idempotency-Key of a token (orchestrator/idem.h);
	 * status 0 while its request runs */
	"CREATE TABLE idempotency ("
	"  actor TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,"
	"  status INTEGER NOT NULL, body TEXT, instance TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL, PRIMARY KEY(actor, key));"
	"CREATE INDEX idempotency_by_age ON idempotency(created_at);",
	/* 11 (issue 13, device identity by certificate): provisioning
	 * credentials (token SHA-256, scope, count), the device certificates
	 * otacd issued, and revoked devices (orchestrator/fleet/fleet_ca.h) */
	"CREATE TABLE device_provisioners ("
	"  name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,"
	"  products TEXT, max_devices INTEGER NOT NULL, issued INTEGER NOT NULL DEFAULT 0,"
	"  rate_per_min INTEGER NOT NULL, created_at INTEGER NOT NULL, created_by TEXT NOT NULL,"
	"  revoked_at INTEGER);"
	"CREATE TABLE device_certs ("
	"  serial TEXT PRIMARY KEY, device TEXT NOT NULL, product TEXT, provisioner TEXT,"
	"  not_before INTEGER NOT NULL, not_after INTEGER NOT NULL, issued_at INTEGER NOT NULL,"
	"  revoked_at INTEGER, pem TEXT NOT NULL);"
	"CREATE INDEX device_certs_by_device ON device_certs(device);"
	"CREATE TABLE device_revocations ("
	"  device TEXT PRIMARY KEY, cutoff INTEGER NOT NULL, at INTEGER NOT NULL,"
	"  actor TEXT NOT NULL, reason TEXT);",
	/* 12 (issue 18): a job's last attempt in wall-clock time, so agents'
	 * jobs show real durations at any --time-scale */
	"ALTER TABLE jobs ADD COLUMN real_started_at INTEGER;"
	"ALTER TABLE jobs ADD COLUMN real_finished_at INTEGER;",
	/* 13 (issue 17): code-quality metrics per run (pmccabe, jscpd reports' "metrics"),
	 * one row per job attempt and name, for the API's trends and baselines */
	"CREATE TABLE run_metrics ("
	"  run_id INTEGER NOT NULL, job_id INTEGER NOT NULL, attempt INTEGER NOT NULL,"
	"  stage TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, created_at INTEGER NOT NULL,"
	"  PRIMARY KEY(job_id, attempt, name));"
	"CREATE INDEX run_metrics_by_run ON run_metrics(run_id);",
	/* 14 (issue 18): when a job last entered the dispatch queue (its stage
	 * started, or it was queued for a retry; real ms) and how long each
	 * attempt waited there for an agent, for /metrics' queue-wait histogram */
	"ALTER TABLE jobs ADD COLUMN queued_at INTEGER;"
	"ALTER TABLE job_attempts ADD COLUMN queue_wait_ms INTEGER;",
	/* 15 (issue 17): the notification outbox (orchestrator/notify/notify.h):
	 * one row per event and destination, written in the transaction of the
	 * state change; state pending -> sent | refused | expired */
	"CREATE TABLE outbox ("
	"  id INTEGER PRIMARY KEY, delivery TEXT NOT NULL UNIQUE, target TEXT NOT NULL,"
	"  event TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL,"
	"  state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,"
	"  next_at INTEGER NOT NULL, last_error TEXT, done_at INTEGER);"
	"CREATE INDEX outbox_due ON outbox(state, next_at);",
	/* 16 (issue 17): scheduled pipelines (orchestrator/sched/sched.h): the
	 * last slot each schedule fired, written in the transaction of the
	 * delivery it queued, so a slot never fires twice */
	"CREATE TABLE schedule_fires ("
	"  repo TEXT NOT NULL, name TEXT NOT NULL, last_slot INTEGER NOT NULL,"
	"  delivery_id INTEGER, PRIMARY KEY (repo, name));"
	/* and pull/merge-request pipelines: the request's number and base
	 * branch on its delivery and run (NULL for pushes) */
	"ALTER TABLE deliveries ADD COLUMN pr_number INTEGER;"
	"ALTER TABLE deliveries ADD COLUMN pr_base TEXT;"
	"ALTER TABLE runs ADD COLUMN pr_number INTEGER;"
	"ALTER TABLE runs ADD COLUMN pr_base TEXT;",
	/* 17 (issue 17): feature flags (orchestrator/flags/flags.h): one row
	 * per product and flag; bp is what check-ins deliver, spec the
	 * rollout's plan (NULL: none), seq guards the controller's decisions */
	"CREATE TABLE flags ("
	"  id INTEGER PRIMARY KEY, product TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,"
	"  cohort TEXT NOT NULL, state TEXT NOT NULL, bp INTEGER NOT NULL, spec TEXT,"
	"  step INTEGER NOT NULL DEFAULT 0, hold_until INTEGER, extend_until INTEGER,"
	"  seq INTEGER NOT NULL DEFAULT 0, reason TEXT, evals TEXT, updated_at INTEGER NOT NULL,"
	"  UNIQUE (product, name));",
	/* 18 (issue 16): the release-signing revocation lists (trustdb.h), one
	 * row per accepted list; every instance holds the highest number */
	"CREATE TABLE release_crls ("
	"  number INTEGER PRIMARY KEY, pem TEXT NOT NULL, published_at INTEGER NOT NULL,"
	"  actor TEXT NOT NULL);",
	/* 19 (issue 16): the device CA installed by `otactl fleet ca init|import`,
	 * here so that every instance that leads has it: the certificate, the
	 * private key sealed (orchestrator/fleet/fleet_ca_seal.c); one row */
	"CREATE TABLE device_ca ("
	"  k TEXT PRIMARY KEY CHECK (k = 'ca'), cert_pem TEXT NOT NULL, key_sealed TEXT,"
	"  created_at INTEGER NOT NULL);",
};

const char *const *store_migrations(size_t *n)
{
	*n = OTA_ARRAY_SIZE(migrations);
	return migrations;
}

static pthread_mutex_t g_path_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t g_generation = 1;
static char *g_db_path;
static pthread_key_t g_reader_key;
static pthread_once_t g_reader_once = PTHREAD_ONCE_INIT;

static _Atomic int g_sync_normal;

void store_set_synchronous(int full)
{
	atomic_store(&g_sync_normal, !full);
}

const char *store_sync_pragma(void)
{
	return atomic_load(&g_sync_normal) ? "PRAGMA synchronous=NORMAL;" : "PRAGMA synchronous=FULL;";
}

/* Bump store_generation(): db_on_commit()'s hook on writer connections. */
static void bump_generation(void *arg)
{
	(void)arg;
	atomic_fetch_add(&g_generation, 1);
}

void store_generation_bump(void)
{
	atomic_fetch_add(&g_generation, 1);
}

uint64_t store_generation(void)
{
	return atomic_load(&g_generation);
}

/* "sqlite:PATH" for a bare path; a URL (sqlite:, postgres://) as it is. */
static char *database_url(const char *path)
{
	if (!strncmp(path, "sqlite:", 7) || !strncmp(path, "postgres://", 11) || !strncmp(path, "postgresql://", 13))
		return xstrdup(path);
	return xasprintf("sqlite:%s", path);
}

static int open_conn(struct store **out, const char *path, int readonly)
{
	struct store *s = xcalloc(1, sizeof(*s));
	char *url = database_url(path);
	unsigned flags = readonly ? DB_READONLY : DB_INCREMENTAL_VACUUM;
	int rc;

	if (!readonly && atomic_load(&g_sync_normal))
		flags |= DB_SYNC_NORMAL;
	rc = db_open(&s->conn, url, flags);
	free(url);
	if (rc < 0) {
		free(s);
		return rc;
	}
	/* SQLite's WAL hook fires it once the commit is visible to readers */
	if (!readonly)
		db_on_commit(s->conn, bump_generation, NULL);
	s->path = db_url_redacted(path); /* for messages: no password (docs/security.md) */
	*out = s;
	return 0;
}

static int migrate(struct store *s)
{
	int version = 0;

	/* refuse a downgrade with the operator's explanation before
	 * db_migrate() would with its own (no schema_migrations yet: 0) */
	if (db_schema_version(s->conn, &version) == 0 && version > (int)OTA_ARRAY_SIZE(migrations))
		return ota_error_set(OTA_ERROR,
				     "%s: database schema version %d is newer than this otacd's (%zu): a downgrade is refused"
				     " and the database is left as it is; run the otacd that wrote it, or restore a backup"
				     " made with this version (docs/operations.md, \"Upgrade\")",
				     s->path, version, OTA_ARRAY_SIZE(migrations));
	return db_migrate(s->conn, migrations, OTA_ARRAY_SIZE(migrations));
}

int store_schema_latest(void)
{
	return (int)OTA_ARRAY_SIZE(migrations);
}

int store_open(struct store **out, const char *path)
{
	struct store *s;
	int rc = open_conn(&s, path, 0);
	if (rc < 0)
		return rc;
	if ((rc = migrate(s)) < 0) {
		store_close(s);
		return rc;
	}
	pthread_mutex_lock(&g_path_lock);
	free(g_db_path);
	g_db_path = xstrdup(path);
	pthread_mutex_unlock(&g_path_lock);
	*out = s;
	return 0;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	db_close(s->conn);
	free(s->path);
	free(s);
}

struct db *store_conn(struct store *s)
{
	return s->conn;
}

struct db_stmt *store_q(struct store *s, const char *sql)
{
	return db_stmt(s->conn, sql);
}

/* BEGIN IMMEDIATE on a writer (a read snapshot on a reader): db_begin() */
int store_begin(struct store *s)
{
	return db_begin(s->conn);
}

int store_commit(struct store *s)
{
	return db_commit(s->conn);
}

void store_rollback(struct store *s)
{
	db_rollback(s->conn);
}

int store_snapshot_begin(struct store *s)
{
	/* a reader's connection is its thread's own: after the server
	 * restarted it is broken, so open a new one and begin again
	 * (test_hafail.c, test_cfgdrift.c) */
	if (db_begin(s->conn) == 0)
		return 0;
	return db_reconnect(s->conn) < 0 ? -1 : db_begin(s->conn);
}

void store_snapshot_end(struct store *s)
{
	db_rollback(s->conn); /* nothing was written: ending it is enough */
}

int store_meta_get(struct store *s, const char *key, char **out)
{
	struct db_stmt *st = store_q(s, "SELECT value FROM meta WHERE key = ?");
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, key);
	rc = db_step(st);
	if (rc == 1)
		*out = xstrdup(db_column_text(st, 0));
	db_reset(st);
	if (rc == 0)
		return OTA_ENOTFOUND;
	return rc < 0 ? rc : 0;
}

int store_meta_set(struct store *s, const char *key, const char *value)
{
	struct db_stmt *st = store_q(s, "INSERT INTO meta(key, value) VALUES (?, ?) "
				     "ON CONFLICT(key) DO UPDATE SET value = excluded.value");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, key);
	db_bind_text(st, 2, value);
	return db_run(st);
}

static void reader_free(void *p)
{
	store_close(p);
}

static void reader_key_init(void)
{
	pthread_key_create(&g_reader_key, reader_free);
}

struct store *store_reader(void)
{
	struct store *s;
	char *path;

	pthread_once(&g_reader_once, reader_key_init);
	s = pthread_getspecific(g_reader_key);
	if (s)
		return s;
	pthread_mutex_lock(&g_path_lock);
	path = g_db_path ? xstrdup(g_db_path) : NULL;
	pthread_mutex_unlock(&g_path_lock);
	if (!path)
		return NULL;
	if (open_conn(&s, path, 1) < 0)
		s = NULL;
	free(path);
	if (s)
		pthread_setspecific(g_reader_key, s);
	return s;
}
