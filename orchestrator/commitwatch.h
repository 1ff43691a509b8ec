/*
 * commitwatch.h - the leader's commits seen by every instance (issue 16;
 * docs/scale.md, "Notifications between instances").
 *
 * Readers learn that the database changed from store_generation() (the
 * API's answer cache) and from logstore_changes() (parked live logs and
 * event streams).  In one process a commit bumps them itself; an instance
 * that shares a PostgreSQL database with the leader sees none of the
 * leader's commits that way.  So the leader announces each engine commit
 * on the channel "otacd_commit" inside the commit's own transaction
 * (commitwatch_announce(): delivered at the commit, never after a
 * rollback), and every other instance runs a commitwatch: one thread with
 * a listening connection of its own that, for each notification, does
 * what a local commit does — bumps store_generation(), and
 * logstore_changes() when the commit changed run or job state.
 *
 * The payload is a hint, never data: any database user can send one.
 * A payload that is not ours (not JSON, wrong fields, too long) counts as
 * "everything changed": a reload, nothing else.  After the listening
 * connection breaks, notifications may have been missed, so the thread
 * reconnects (with backoff) and treats everything as changed.  A burst of
 * notifications is read whole and applied as one bump.  Tokens and
 * registered agents (CW_AUTH) are read again through a hook the daemon
 * sets (commitwatch_on_auth), also periodically: a lost notification
 * leaves a revoked token usable for COMMITWATCH_AUTH_RELOAD_MS at most.
 *
 * Thread ownership: the commitwatch thread owns the listening connection
 * and its own counters; it touches the rest of the daemon only through
 * store_generation_bump() and notifier_bump(logstore_changes()), both
 * safe from any thread.  logstore_init() must have run before
 * commitwatch_start().
 *
 * SQLite has one instance: commitwatch_announce() does nothing, and main.c
 * starts no commitwatch.
 */
#ifndef OTA_COMMITWATCH_H
#define OTA_COMMITWATCH_H

#include <stdint.h>

struct db;
struct commitwatch;

#define COMMITWATCH_CHANNEL "otacd_commit"

/* What a commit changed (the engine's flags; a hint for listeners). */
#define CW_STATE 1u   /* run, stage or job state: wakes live logs and event streams */
#define CW_WORK 2u    /* the dispatch queue: jobs for agents */
#define CW_ROLLOUT 4u /* rollout rows */
#define CW_LOG 8u     /* job logs grew (no commit): wakes live logs only */
#define CW_AUTH 16u   /* tokens, registered agents or the release revocation list: the auth hook reloads them */

/*
 * The auth hook (main.c: auth_reload() and trustdb_reload() on this
 * thread's store_reader()),
 * run on the commitwatch thread: for a notification with CW_AUTH, for
 * anything that is not a payload of ours, after a reconnect, and every
 * COMMITWATCH_AUTH_RELOAD_MS whatever was heard — the bound on how long a
 * token revoked on another instance stays usable here when a notification
 * is lost (docs/scale.md, "Tokens and agents").  NULL: none.
 */
#define COMMITWATCH_AUTH_RELOAD_MS 5000
void commitwatch_on_auth(struct commitwatch *cw, int (*fn)(void *), void *arg);
/* This process's successful auth reloads: after a notification (or a
 * reconnect), and periodic ones (/metrics: otacd_auth_reloads_total). */
void commitwatch_auth_reloads(uint64_t *heard, uint64_t *periodic);

/*
 * Announce a commit of db's open transaction (PostgreSQL: pg_notify on
 * COMMITWATCH_CHANNEL, delivered when it commits).  The payload names this
 * process, so its own commitwatch ignores it.  0 on SQLite.
 */
int commitwatch_announce(struct db *db, unsigned what);
/* The same with another sender name (tests play a second instance). */
int commitwatch_announce_from(struct db *db, const char *from, unsigned what);

/* Listen on url (postgres://...) and start the thread; the listening
 * connection is open and LISTENing when this returns 0. */
int commitwatch_start(struct commitwatch **out, const char *url);
/* Stop the thread and close its connection (NULL: nothing). */
void commitwatch_stop(struct commitwatch *cw);

/* Counters, for tests and /metrics (read from any thread). */
struct commitwatch_stats {
	uint64_t heard;      /* notifications read, ours included */
	uint64_t own;        /* ... of which this process sent (ignored) */
	uint64_t foreign;    /* ... of which were not a payload of ours (a full reload) */
	uint64_t applied;    /* bumps made (one per burst) */
	uint64_t reconnects; /* listening connection re-established */
	uint64_t auth_reloads; /* auth hook runs that succeeded */
};
void commitwatch_stats(struct commitwatch *cw, struct commitwatch_stats *out);

#endif
