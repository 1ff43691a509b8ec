/*
 * db_leader.h - which of several otacd instances on one database leads
 * (issue 16; docs/scale.md says how a handover goes and why it cannot
 * split the brain).
 *
 * Exactly one instance at a time is the leader: it runs the engine (the
 * single writer), expires leases and runs the rollout controller.  On
 * PostgreSQL, leadership is a session-level advisory lock held by a
 * connection of its own (not the engine's), so it lasts exactly as long as
 * that session:
 *
 *   key = (0x6f74614c << 32) | FNV-1a-32(current_database() "/" current_schema())
 *
 * 0x6f74614c is "otaL" in ASCII; it keeps the key apart from the writers'
 * transaction lock (db_pg.c, "otacd").  PostgreSQL already scopes advisory
 * locks to one database; the schema in the hash keeps two installations
 * sharing one database in different schemas apart as well.
 *
 * Each acquisition bumps leader_epoch in the table otacd_leader, in one
 * writer transaction; the leader passes its epoch to db_leader_fence() in
 * each transaction it commits, which refuses once another instance took
 * over (the fencing token).
 *
 * On SQLite there is one instance per state directory (main.c's flock on
 * STATE/otacd.lock): db_leader_poll() always says LEADER, with epoch 1, and
 * db_leader_fence() accepts everything.
 *
 * A struct db_leader belongs to one thread.
 */
#ifndef OTA_DB_LEADER_H
#define OTA_DB_LEADER_H

#include <stdint.h>

struct db;
struct db_leader;

enum db_leader_state {
	/* another instance leads (or nobody yet): serve reads, the API and the
	 * device API; do not schedule, expire or roll out */
	DB_LEADER_FOLLOWER = 0,
	/* this instance holds the lock; db_leader_epoch() is its fencing token */
	DB_LEADER_LEADER = 1,
	/* this instance led until this poll and can no longer prove it: its
	 * session broke or the lock is gone.  Stop acting as leader at once
	 * (otacd exits with 75 and restarts as a follower: main.c); the session
	 * has been closed, so the lock is free for others.  Reported once;
	 * later polls try again. */
	DB_LEADER_LOST = 2,
};

/*
 * Open the leadership connection on url (db.h's URLs).  holder names this
 * instance to the others (docs/scale.md: the address followers forward
 * state-changing calls to); it is stored with each epoch.  On PostgreSQL
 * this creates otacd_leader if it is missing.  Nobody leads until
 * db_leader_poll().
 */
int db_leader_open(struct db_leader **out, const char *url, const char *holder);

/*
 * One turn of the leadership loop, every poll interval (docs/scale.md):
 *   follower: try the lock; on success bump the epoch -> LEADER;
 *   leader:   check the session still holds the lock -> LEADER, or LOST;
 *   after LOST or a broken connection: reconnect first.
 * *out is always set.  LOST comes with 0 and the reason in the error slot
 * (ota_error_last()), to log; a negative return (the connection is down,
 * say) comes with FOLLOWER, never with LEADER.
 */
int db_leader_poll(struct db_leader *l, enum db_leader_state *out);

/* Give the lock up (a clean stop): the state is FOLLOWER afterwards. */
void db_leader_release(struct db_leader *l);
/* Release and close. */
void db_leader_close(struct db_leader *l);

/* The epoch this instance leads under; 0 when it does not lead. */
int64_t db_leader_epoch(const struct db_leader *l);
/* The advisory lock key (0 on SQLite), to find the holder in pg_locks. */
int64_t db_leader_key(const struct db_leader *l);
const char *db_leader_state_name(enum db_leader_state s);

/*
 * The fencing check: inside a write transaction on db (after db_begin(),
 * before db_commit()), 0 when epoch is still the database's leader_epoch;
 * OTA_ECONFLICT when another instance has taken over since, and then the
 * transaction is spoiled, so db_commit() refuses it even if the caller
 * ignores this answer.  On PostgreSQL db_begin() holds the writers' lock
 * and every epoch bump takes it too, so a transaction that passed the
 * check commits before any later bump or not at all.  SQLite: always 0.
 */
int db_leader_fence(struct db *db, int64_t epoch);

/*
 * The current leader as the database records it: its epoch and holder
 * (caller frees *holder).  0 epoch and a NULL holder when nobody has led
 * yet.  SQLite: epoch 1, holder NULL (this instance).
 */
int db_leader_current(struct db *db, int64_t *epoch, char **holder);

#endif
