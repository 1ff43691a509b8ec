/*
 * db_pg.c - the PostgreSQL backend, through libpq.
 *
 * Statements are server-side prepared statements (PQprepare) named per
 * connection; parameters go as text, blobs in binary; results come back
 * as text (a bytea column is decoded from its hex form), so integers,
 * SUM()'s numerics and booleans all read through one strtoll.  A step runs
 * the whole statement on its first call and walks the result's rows after.
 *
 * Transactions take turns, as SQLite's BEGIN IMMEDIATE makes them: a
 * writer's db_begin() is BEGIN (READ COMMITTED) plus a transaction-scoped
 * advisory lock every writer of the database takes, so writers run one
 * after the other and each statement sees what the previous writers
 * committed.  The engine was written for exactly that (one writer); the
 * alternative, SERIALIZABLE, gives the same outcome but makes writers that
 * met lose and run again, which under load can mean many times.  Readers
 * (DB_READONLY) have default_transaction_read_only set, so a write through
 * one fails, and their transactions are REPEATABLE READ: one snapshot, as a
 * SQLite read transaction has.
 *
 * A connection the server dropped (restart, pg_terminate_backend, network)
 * reports DB_ECONN; db_reconnect() opens a new one and every statement
 * prepares again on its next step (conn_gen tells it that it must).
 *
 * libpq is loaded when the first PostgreSQL database is opened (pgload.h):
 * an otacd on SQLite never maps it.
 */
#include "db_int.h"
#include "pgload.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* type OIDs (catalog/pg_type.h is server-side only) */
#define BOOLOID 16
#define BYTEAOID 17
#define INT8OID 20
#define INT2OID 21
#define INT4OID 23
#define FLOAT4OID 700
#define FLOAT8OID 701
#define NUMERICOID 1700

struct pg_conn {
	PGconn *conn;
	unsigned conn_gen; /* bumped by each reconnect */
	unsigned next_name;
};

struct pg_stmt {
	char name[24];
	unsigned conn_gen; /* the connection it was prepared on; 0 = not yet */
	PGresult *res;     /* of the last execution, until reset */
	int row;           /* the current row; -1 before the first */
	int64_t changes;
	unsigned char **blobs; /* decoded bytea per column of the current row */
	size_t *blob_len;
};

/* libpq (pgload.h), set once by pg_open: every other function here runs
 * on a database pg_open opened, so it finds pq set. */
static const struct pgload *pq;
static pthread_once_t pq_once = PTHREAD_ONCE_INIT;

static void pq_load(void)
{
	pq = pgload_get();
}

static struct pg_conn *pc(const struct db *db)
{
	return db->impl;
}

/* The db.h code of a failure, from its SQLSTATE and the connection. */
static int classify(const struct db *db, const char *state)
{
	static const char *const busy[] = { "40001", "40P01", "55P03" }; /* serialization, deadlock, lock timeout */

	if (pq->status(pc(db)->conn) == CONNECTION_BAD)
		return DB_ECONN;
	if (!state)
		return OTA_ERROR;
	if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0) /* connection, shutdown */
		return DB_ECONN;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(busy); i++)
		if (strcmp(state, busy[i]) == 0)
			return DB_EBUSY;
	if (strcmp(state, "53100") == 0) /* disk_full */
		return DB_ENOSPACE;
	if (strcmp(state, "58030") == 0) /* io_error */
		return DB_EIO;
	return strncmp(state, "23", 2) == 0 ? DB_ECONSTRAINT : OTA_ERROR; /* integrity violations */
}

/* Map a failed result (or a dead connection) to a db.h code and message. */
static int fail_res(struct db *db, const PGresult *res, const char *what)
{
	const char *state = res ? pq->result_error_field(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? pq->result_error_message(res) : "";
	size_t n;

	if (!msg || !*msg)
		msg = pq->error_message(pc(db)->conn);
	n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		n--;
	if (!state)
		return db_fail(db, classify(db, NULL), "postgres: %s: %.*s", what, (int)n, msg);
	return db_fail(db, classify(db, state), "postgres: %s: %.*s (SQLSTATE %s)", what, (int)n, msg, state);
}

static int connect_now(struct db *db)
{
	struct pg_conn *c = pc(db);
	PGresult *res;
	int rc = 0;

	c->conn = pq->connectdb(db->url);
	if (pq->status(c->conn) != CONNECTION_OK)
		return fail_res(db, NULL, "connect");
	c->conn_gen++;
	/* Our own messages carry the context; the server's notices are noise.
	 * A lock not had in 10 s is DB_EBUSY, as SQLite's busy timeout. */
	res = pq->exec(c->conn, (db->flags & DB_READONLY)
				      ? "SET client_min_messages = warning; SET default_transaction_read_only = on"
				      : "SET client_min_messages = warning; SET lock_timeout = '10s'");
	if (pq->result_status(res) != PGRES_COMMAND_OK)
		rc = fail_res(db, res, "session settings");
	pq->clear(res);
	return rc;
}

static int pg_open(struct db *db, const char *url, unsigned flags)
{
	/* a password in the URL is never shown (docs/security.md) */
	char *shown = db_url_redacted(url);
	int rc = 0;

	pthread_once(&pq_once, pq_load);
	if (!pq) {
		rc = ota_error_set(OTA_ERROR, "cannot open database %s: %s", shown, pgload_error());
		goto out;
	}
	db->impl = xcalloc(1, sizeof(struct pg_conn));
	if ((rc = connect_now(db)) < 0) {
		pq->finish(pc(db)->conn);
		free(db->impl);
		/* the caller frees db; keep the message in the error slot */
		rc = ota_error_set(rc, "cannot open database %s: %s", shown, db->errmsg);
	}
out:
	free(shown);
	return rc;
}

static void pg_close(struct db *db)
{
	pq->finish(pc(db)->conn);
	free(db->impl);
}

static int pg_exec(struct db *db, const char *sql)
{
	PGresult *res = pq->exec(pc(db)->conn, sql);
	ExecStatusType status = pq->result_status(res);
	int rc = 0;

	if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK && status != PGRES_EMPTY_QUERY)
		rc = fail_res(db, res, "exec");
	else if (strcmp(pq->cmd_status(res), "ROLLBACK") == 0 && strncmp(sql, "ROLLBACK", 8) != 0)
		/* COMMIT of a transaction an error had aborted: it rolled back */
		rc = db_fail(db, OTA_ERROR, "postgres: commit: the transaction had failed and was rolled back");
	pq->clear(res);
	return rc;
}

static int prepare_on_server(struct db_stmt *st)
{
	struct pg_conn *c = pc(st->db);
	struct pg_stmt *q = st->impl;
	PGresult *res;
	int rc = 0;

	snprintf(q->name, sizeof(q->name), "otacd_%u", ++c->next_name);
	res = pq->prepare(c->conn, q->name, st->sql, st->nparams, NULL);
	if (pq->result_status(res) != PGRES_COMMAND_OK)
		rc = fail_res(st->db, res, st->sql);
	else
		q->conn_gen = c->conn_gen;
	pq->clear(res);
	return rc;
}

static int pg_prepare(struct db_stmt *st)
{
	struct pg_stmt *q = xcalloc(1, sizeof(*q));
	int rc;

	q->row = -1;
	st->impl = q;
	if ((rc = prepare_on_server(st)) < 0) {
		free(q);
		st->impl = NULL;
	}
	return rc;
}

static void drop_result(struct db_stmt *st)
{
	struct pg_stmt *q = st->impl;

	if (q->blobs) {
		int n = pq->nfields(q->res);
		for (int i = 0; i < n; i++)
			pq->freemem(q->blobs[i]);
		free(q->blobs);
		free(q->blob_len);
		q->blobs = NULL;
		q->blob_len = NULL;
	}
	pq->clear(q->res);
	q->res = NULL;
	q->row = -1;
}

static void pg_finalize(struct db_stmt *st)
{
	struct pg_stmt *q = st->impl;
	struct pg_conn *c = pc(st->db);
	char sql[48];

	drop_result(st);
	/* Free the server's copy while the connection lives on; in an
	 * aborted transaction this fails and the copy goes with the session. */
	if (!st->db->closing && q->conn_gen == c->conn_gen && pq->status(c->conn) == CONNECTION_OK &&
	    pq->transaction_status(c->conn) == PQTRANS_IDLE) {
		snprintf(sql, sizeof(sql), "DEALLOCATE %s", q->name);
		pq->clear(pq->exec(c->conn, sql));
	}
	free(q);
}

static void pg_reset(struct db_stmt *st)
{
	drop_result(st);
}

static int execute(struct db_stmt *st)
{
	struct pg_conn *c = pc(st->db);
	struct pg_stmt *q = st->impl;
	const char **values = xcalloc((size_t)st->nparams + 1, sizeof(*values));
	int *lengths = xcalloc((size_t)st->nparams + 1, sizeof(*lengths));
	int *formats = xcalloc((size_t)st->nparams + 1, sizeof(*formats));
	char (*nums)[32] = xcalloc((size_t)st->nparams + 1, sizeof(*nums));
	ExecStatusType status;
	int rc = 0;

	for (int i = 0; i < st->nparams; i++) {
		const struct db_param *p = &st->params[i];
		switch (p->type) {
		case DB_NULL:
			break;
		case DB_INTEGER:
			snprintf(nums[i], sizeof(nums[i]), "%lld", (long long)p->i);
			values[i] = nums[i];
			break;
		case DB_FLOAT:
			snprintf(nums[i], sizeof(nums[i]), "%.17g", p->f);
			values[i] = nums[i];
			break;
		case DB_TEXT:
			values[i] = p->data;
			break;
		case DB_BLOB:
			values[i] = p->data;
			lengths[i] = (int)p->len;
			formats[i] = 1;
			break;
		}
	}
	q->res = pq->exec_prepared(c->conn, q->name, st->nparams, values, lengths, formats, 0);
	status = pq->result_status(q->res);
	if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) {
		const char *tuples = pq->cmd_tuples(q->res);
		q->changes = *tuples ? strtoll(tuples, NULL, 10) : 0;
		if (status == PGRES_COMMAND_OK && pq->transaction_status(c->conn) == PQTRANS_IDLE)
			db_fire_commit(st->db); /* an autocommitted change */
	} else {
		rc = fail_res(st->db, q->res, st->sql);
		drop_result(st);
	}
	free(values);
	free(lengths);
	free(formats);
	free(nums);
	return rc;
}

static void free_blobs(struct db_stmt *st)
{
	struct pg_stmt *q = st->impl;
	int n = pq->nfields(q->res);

	if (!q->blobs)
		return;
	for (int i = 0; i < n; i++) {
		pq->freemem(q->blobs[i]);
		q->blobs[i] = NULL;
	}
}

static int pg_step(struct db_stmt *st)
{
	struct pg_stmt *q = st->impl;
	int rc;

	if (!q->res) {
		if (q->conn_gen != pc(st->db)->conn_gen && (rc = prepare_on_server(st)) < 0)
			return rc;
		if ((rc = execute(st)) < 0)
			return rc;
	}
	free_blobs(st);
	if (q->row + 1 >= pq->ntuples(q->res)) {
		q->row = pq->ntuples(q->res);
		return 0;
	}
	q->row++;
	return 1;
}

static int64_t pg_changes(struct db_stmt *st)
{
	return ((struct pg_stmt *)st->impl)->changes;
}

static int pg_in_transaction(const struct db *db)
{
	PGTransactionStatusType t = pq->transaction_status(pc(db)->conn);
	return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

/* The advisory lock key of "the database's writer" ("otacd" in ASCII). */
#define WRITER_LOCK "478560101220"

static int pg_begin(struct db *db)
{
	if (db->flags & DB_READONLY)
		return pg_exec(db, "BEGIN ISOLATION LEVEL REPEATABLE READ");
	return pg_exec(db, "BEGIN; SELECT pg_advisory_xact_lock(" WRITER_LOCK ")");
}

static int pg_commit(struct db *db)
{
	int rc = pg_exec(db, "COMMIT");

	if (rc == 0)
		db_fire_commit(db);
	return rc;
}

static int pg_reconnect(struct db *db)
{
	struct pg_conn *c = pc(db);

	pq->finish(c->conn);
	return connect_now(db);
}

static int pg_column_count(struct db_stmt *st)
{
	struct pg_stmt *q = st->impl;
	return q->res ? pq->nfields(q->res) : 0;
}

/* The current row's value of col, or NULL when it is NULL or absent. */
static const char *value(struct db_stmt *st, int col)
{
	struct pg_stmt *q = st->impl;

	if (!q->res || q->row < 0 || q->row >= pq->ntuples(q->res) || col < 0 || col >= pq->nfields(q->res) ||
	    pq->getisnull(q->res, q->row, col))
		return NULL;
	return pq->getvalue(q->res, q->row, col);
}

static enum db_type pg_column_type(struct db_stmt *st, int col)
{
	if (!value(st, col))
		return DB_NULL;
	switch (pq->ftype(((struct pg_stmt *)st->impl)->res, col)) {
	case BOOLOID:
	case INT2OID:
	case INT4OID:
	case INT8OID:
		return DB_INTEGER;
	case FLOAT4OID:
	case FLOAT8OID:
	case NUMERICOID:
		return DB_FLOAT;
	case BYTEAOID:
		return DB_BLOB;
	default:
		return DB_TEXT;
	}
}

static int64_t pg_column_int64(struct db_stmt *st, int col)
{
	const char *v = value(st, col);

	if (!v)
		return 0;
	if (*v == 't' || *v == 'f')
		return *v == 't';
	if (strpbrk(v, ".eE"))
		return (int64_t)strtod(v, NULL);
	return strtoll(v, NULL, 10);
}

static double pg_column_double(struct db_stmt *st, int col)
{
	const char *v = value(st, col);
	return v ? strtod(v, NULL) : 0.0;
}

static const char *pg_column_text(struct db_stmt *st, int col)
{
	return value(st, col);
}

static const void *pg_column_blob(struct db_stmt *st, int col, size_t *size)
{
	struct pg_stmt *q = st->impl;
	const char *v = value(st, col);

	*size = 0;
	if (!v)
		return NULL;
	if (pq->ftype(q->res, col) != BYTEAOID) {
		*size = (size_t)pq->getlength(q->res, q->row, col);
		return v;
	}
	if (!q->blobs) {
		q->blobs = xcalloc((size_t)pq->nfields(q->res), sizeof(*q->blobs));
		q->blob_len = xcalloc((size_t)pq->nfields(q->res), sizeof(*q->blob_len));
	}
	if (!q->blobs[col]) {
		q->blobs[col] = pq->unescape_bytea((const unsigned char *)v, &q->blob_len[col]);
		if (!q->blobs[col]) {
			db_fail(st->db, OTA_ENOMEM, "postgres: cannot decode bytea column %d", col);
			return NULL;
		}
	}
	*size = q->blob_len[col];
	return q->blobs[col];
}

/* ---- upkeep (db_maintain) ------------------------------------------------- */

/*
 * Nothing to do: VACUUM is autovacuum's job on PostgreSQL (and cannot run
 * inside the engine's transaction block anyway), and the server's
 * checkpointer bounds the WAL.  A manual CHECKPOINT would need superuser
 * or pg_checkpoint, which otacd's role should not hold.
 */
static int pg_maintain(struct db *db, int max_pages, int *freed)
{
	(void)db;
	(void)max_pages;
	*freed = 0;
	return 0;
}

const struct db_ops db_pg_ops = {
	.name = "postgres",
	.open = pg_open,
	.close = pg_close,
	.exec = pg_exec,
	.prepare = pg_prepare,
	.finalize = pg_finalize,
	.reset = pg_reset,
	.step = pg_step,
	.changes = pg_changes,
	.in_transaction = pg_in_transaction,
	.begin = pg_begin,
	.commit = pg_commit,
	.reconnect = pg_reconnect,
	.column_count = pg_column_count,
	.column_type = pg_column_type,
	.column_int64 = pg_column_int64,
	.column_double = pg_column_double,
	.column_text = pg_column_text,
	.column_blob = pg_column_blob,
	.maintain = pg_maintain,
};
