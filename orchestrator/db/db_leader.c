/*
 * db_leader.c - leadership among otacd instances sharing one PostgreSQL
 * database (db_leader.h; docs/scale.md).
 *
 * Why an advisory lock on a connection of its own: a session-level lock
 * lives exactly as long as the server's session, and PostgreSQL ends the
 * session when the client goes (process killed, connection cut, host gone
 * once TCP keepalive notices).  So a dead leader's lock frees itself, and
 * no lease has to be renewed against a clock.  The engine's connection
 * cannot carry it: db_reconnect() after a hiccup there must not silently
 * drop leadership.
 *
 * Why an epoch as well: the lock says who leads now, but a leader whose
 * session broke learns it only at its next poll, and its engine connection
 * may still be alive.  The epoch is bumped under the writers' transaction
 * lock (db_pg.c) in the same transaction that records the new holder, and
 * db_leader_fence() reads it under that lock in each of the old leader's
 * transactions, so the database orders every one of them before or after
 * the takeover, never across it.
 */
#include "db_leader.h"

#include "db_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "otaL": the high half of the key; db_leader.h documents the whole. */
#define LEADER_KEY_HIGH 0x6f74614cULL

struct db_leader {
	enum db_backend backend;
	struct db *db; /* PostgreSQL: the leadership session; NULL on SQLite */
	char *holder;
	int64_t key;
	int64_t epoch; /* 0 unless leading */
	enum db_leader_state state;
	int reconnect; /* the session must be replaced before the next try */
};

const char *db_leader_state_name(enum db_leader_state s)
{
	switch (s) {
	case DB_LEADER_LEADER:
		return "leader";
	case DB_LEADER_LOST:
		return "lost";
	default:
		return "follower";
	}
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* FNV-1a, 32 bits: small, stable across versions and platforms. */
static uint32_t fnv1a32(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static int ensure_table(struct db *db, void *arg)
{
	struct db_stmt *st;

	(void)arg;
	if (db_exec(db, "CREATE TABLE IF NOT EXISTS otacd_leader ("
			" id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),"
			" epoch INTEGER NOT NULL,"
			" holder TEXT NOT NULL,"
			" since INTEGER NOT NULL)") < 0)
		return ota_error_set(OTA_ERROR, "leader: cannot create otacd_leader: %s", db_errmsg(db));
	st = db_stmt(db, "INSERT OR IGNORE INTO otacd_leader (id, epoch, holder, since) VALUES (1, 0, '', 0)");
	return st ? db_run(st) : OTA_ERROR; /* a connection lost here fails the prepare */
}

static int compute_key(struct db_leader *l)
{
	struct db_stmt *st = db_stmt(l->db, "SELECT current_database(), COALESCE(current_schema(), '')");
	char *where;
	int rc;

	if (!st || (rc = db_step(st)) < 0)
		return ota_error_set(OTA_ERROR, "leader: cannot read the database's name: %s", db_errmsg(l->db));
	if (rc == 0)
		return ota_error_set(OTA_ERROR, "leader: current_database() returned no row");
	where = xasprintf("%s/%s", db_column_text(st, 0), db_column_text(st, 1));
	l->key = (int64_t)((LEADER_KEY_HIGH << 32) | fnv1a32(where));
	free(where);
	db_reset(st);
	return 0;
}

int db_leader_open(struct db_leader **out, const char *url, const char *holder)
{
	struct db_leader *l = xcalloc(1, sizeof(*l));
	int rc = 0;

	l->holder = xstrdup(holder ? holder : "");
	l->backend = strncmp(url, "sqlite:", 7) == 0 ? DB_SQLITE : DB_POSTGRES;
	if (l->backend == DB_SQLITE) {
		/* one instance per state directory: it leads, always */
		l->state = DB_LEADER_LEADER;
		l->epoch = 1;
		goto out;
	}
	if ((rc = db_open(&l->db, url, 0)) < 0) {
		ota_error_prefix("leader");
		goto out;
	}
	if ((rc = db_transact(l->db, ensure_table, NULL)) < 0 || (rc = compute_key(l)) < 0)
		goto out;
out:
	if (rc < 0) {
		db_leader_close(l);
		return rc;
	}
	*out = l;
	return 0;
}

/* ---- the lock ------------------------------------------------------------- */

struct bump {
	const char *holder;
	int64_t epoch;
};

/* Under the writers' lock (db_begin), so a fenced transaction of the old
 * leader commits wholly before this or sees its result. */
static int bump_epoch(struct db *db, void *arg)
{
	struct bump *b = arg;
	struct db_stmt *st = db_stmt(db, "UPDATE otacd_leader SET epoch = epoch + 1, holder = ?, since = ?"
					 " WHERE id = 1 RETURNING epoch");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, b->holder);
	db_bind_int64(st, 2, wall_ms());
	if ((rc = db_step(st)) < 0)
		return rc;
	if (rc == 0)
		return db_fail(db, OTA_ERROR, "leader: otacd_leader has no row to bump");
	b->epoch = db_column_int64(st, 0);
	db_reset(st);
	return 0;
}

/* 1 if our session took the lock, 0 if someone holds it, negative on error. */
static int try_lock(struct db_leader *l)
{
	struct db_stmt *st = db_stmt(l->db, "SELECT pg_try_advisory_lock(?)");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, l->key);
	if ((rc = db_step(st)) <= 0)
		return rc < 0 ? rc : db_fail(l->db, OTA_ERROR, "leader: pg_try_advisory_lock returned no row");
	rc = db_column_int64(st, 0) ? 1 : 0;
	db_reset(st);
	return rc;
}

static void unlock(struct db_leader *l)
{
	struct db_stmt *st = db_stmt(l->db, "SELECT pg_advisory_unlock(?)");

	if (!st)
		return;
	db_bind_int64(st, 1, l->key);
	if (db_step(st) < 0)
		l->reconnect = 1; /* closing the session frees the lock instead */
	db_reset(st);
}

/* 1 if this session still holds the lock (the session is the same one that
 * took it: libpq never reconnects by itself), 0 if not, negative if the
 * session cannot answer. */
static int holds_lock(struct db_leader *l)
{
	struct db_stmt *st = db_stmt(l->db, "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'"
					    " AND pid = pg_backend_pid() AND granted AND classid = ? AND objid = ?"
					    " AND objsubid = 1");
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, (int64_t)((uint64_t)l->key >> 32));
	db_bind_int64(st, 2, (int64_t)((uint64_t)l->key & 0xffffffffu));
	if ((rc = db_step(st)) <= 0)
		return rc < 0 ? rc : db_fail(l->db, OTA_ERROR, "leader: pg_locks returned no row");
	rc = db_column_int64(st, 0) == 1;
	db_reset(st);
	return rc;
}

static int become_leader(struct db_leader *l)
{
	struct bump b = { l->holder, 0 };
	int rc = db_transact(l->db, bump_epoch, &b);

	if (rc < 0) {
		/* leading without an epoch would let nothing be fenced: give up */
		ota_error_prefix("leader: took the lock but could not record the epoch");
		unlock(l);
		l->reconnect = 1; /* and if the unlock did not reach the server,
				   * closing the session frees the lock */
		return rc;
	}
	l->epoch = b.epoch;
	l->state = DB_LEADER_LEADER;
	return 0;
}

/* The step down: drop the session, so a lock it may still hold goes with it. */
static void step_down(struct db_leader *l, int rc, const char *why)
{
	char *msg = xstrdup(rc < 0 ? ota_error_last() : "the lock is no longer held by this session");

	l->state = DB_LEADER_LOST;
	l->epoch = 0;
	l->reconnect = 1;
	if (db_reconnect(l->db) == 0)
		l->reconnect = 0;
	ota_error_set(rc < 0 ? rc : OTA_ECONFLICT, "leader: %s, stepping down at once: %s", why, msg);
	free(msg);
}

int db_leader_poll(struct db_leader *l, enum db_leader_state *out)
{
	int rc;

	if (l->backend == DB_SQLITE) {
		*out = DB_LEADER_LEADER;
		return 0;
	}
	if (l->state == DB_LEADER_LEADER) {
		rc = holds_lock(l);
		if (rc == 1) {
			*out = DB_LEADER_LEADER;
			return 0;
		}
		step_down(l, rc, rc == 0 ? "the advisory lock is gone" : "the leadership session broke");
		/* the state is the news; why is in the error slot, to log */
		*out = DB_LEADER_LOST;
		return 0;
	}
	l->state = DB_LEADER_FOLLOWER;
	*out = DB_LEADER_FOLLOWER;
	if (l->reconnect) {
		if ((rc = db_reconnect(l->db)) < 0)
			return rc;
		l->reconnect = 0;
	}
	if ((rc = try_lock(l)) <= 0) {
		if (rc < 0)
			l->reconnect = 1; /* we hold nothing: a fresh session is cheap */
		return rc;
	}
	if ((rc = become_leader(l)) < 0)
		return rc;
	*out = DB_LEADER_LEADER;
	return 0;
}

void db_leader_release(struct db_leader *l)
{
	if (!l || l->backend == DB_SQLITE || l->state != DB_LEADER_LEADER)
		return;
	unlock(l);
	l->state = DB_LEADER_FOLLOWER;
	l->epoch = 0;
}

void db_leader_close(struct db_leader *l)
{
	if (!l)
		return;
	if (l->db) {
		db_leader_release(l);
		db_close(l->db); /* ends the session: the lock goes with it anyway */
	}
	free(l->holder);
	free(l);
}

int64_t db_leader_epoch(const struct db_leader *l)
{
	return l->state == DB_LEADER_LEADER ? l->epoch : 0;
}

int64_t db_leader_key(const struct db_leader *l)
{
	return l->key;
}

/* ---- fencing --------------------------------------------------------------- */

int db_leader_fence(struct db *db, int64_t epoch)
{
	struct db_stmt *st;
	int64_t now;
	char *holder;
	int rc;

	if (db->backend == DB_SQLITE)
		return 0;
	if ((db->flags & DB_READONLY) || !db_in_transaction(db))
		return db_fail(db, OTA_ERROR, "leader: the epoch check must run inside the write transaction it guards");
	st = db_stmt(db, "SELECT epoch, holder FROM otacd_leader WHERE id = 1");
	if (!st)
		return OTA_ERROR;
	if ((rc = db_step(st)) < 0)
		return rc;
	if (rc == 0)
		return db_fail(db, OTA_ECONFLICT, "leader: epoch %lld is not the leader's: nobody has led yet",
			       (long long)epoch);
	now = db_column_int64(st, 0);
	if (now == epoch && epoch > 0) {
		db_reset(st);
		return 0;
	}
	holder = xstrdup(db_column_text(st, 1) ? db_column_text(st, 1) : "");
	db_reset(st);
	/* db_fail spoils the transaction: commit refuses it even if ignored */
	rc = db_fail(db, OTA_ECONFLICT,
		     "leader: epoch %lld is stale, the database is at epoch %lld (holder '%s'): this instance no "
		     "longer leads and must not write",
		     (long long)epoch, (long long)now, holder);
	free(holder);
	return rc;
}

int db_leader_current(struct db *db, int64_t *epoch, char **holder)
{
	struct db_stmt *st;
	int rc;

	*epoch = 0;
	*holder = NULL;
	if (db->backend == DB_SQLITE) {
		*epoch = 1;
		return 0;
	}
	st = db_stmt(db, "SELECT to_regclass('otacd_leader') IS NOT NULL");
	if (!st || (rc = db_step(st)) < 0)
		return st ? rc : OTA_ERROR;
	rc = rc == 1 && db_column_int64(st, 0);
	db_reset(st);
	if (!rc)
		return 0; /* no instance has opened leadership yet */
	st = db_stmt(db, "SELECT epoch, holder FROM otacd_leader WHERE id = 1");
	if (!st || (rc = db_step(st)) < 0)
		return st ? rc : OTA_ERROR;
	if (rc == 1 && db_column_int64(st, 0) > 0) {
		*epoch = db_column_int64(st, 0);
		*holder = xstrdup(db_column_text(st, 1) ? db_column_text(st, 1) : "");
	}
	db_reset(st);
	return 0;
}
