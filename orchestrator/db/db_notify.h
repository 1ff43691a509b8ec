/*
 * db_notify.h - notifications between otacd instances sharing a database
 * (issue 16; docs/scale.md, "Notifications").
 *
 * PostgreSQL's LISTEN/NOTIFY: db_notify() on any connection queues a
 * notification that is delivered when its transaction commits (at once
 * outside a transaction) and never if it rolls back, so "something
 * changed" is announced exactly with the change.  A listener is a
 * connection of its own: db_listener_wait() waits on its socket (poll)
 * for the next notification, up to a timeout, and can be woken by the
 * caller's own loop through db_listener_fd().
 *
 * A notification is a hint, never data: whoever can connect to the
 * database can send one, and one may be missed when the listener's
 * connection breaks.  After DB_ECONN, db_listener_reconnect() listens on
 * every channel again and the caller reloads what it caches from the
 * database, as if everything had changed.
 *
 * SQLite has one instance, so there is nobody to tell: db_notify() checks
 * its arguments and does nothing, a listener hears nothing, and
 * db_listener_wait() sleeps its timeout and returns 0.
 */
#ifndef OTA_DB_NOTIFY_H
#define OTA_DB_NOTIFY_H

struct db;
struct db_listener;

/* PostgreSQL's limits: a channel is an identifier (63 bytes), a payload
 * shorter than 8000 bytes.  Longer ones are OTA_EINVAL on both backends. */
#define DB_CHANNEL_MAX 63
#define DB_PAYLOAD_MAX 7999

struct db_notification {
	char channel[DB_CHANNEL_MAX + 1];
	char *payload; /* owned: db_notification_release() */
	int sender;    /* the sending session's server process id */
};

/*
 * Send payload (may be "") on channel through db, with db's transaction
 * when one is open (delivered at its commit, never after a rollback).
 */
int db_notify(struct db *db, const char *channel, const char *payload);

/* A listening connection of its own on url (db.h's URLs). */
int db_listener_open(struct db_listener **out, const char *url);
void db_listener_close(struct db_listener *l);

/* Start and stop hearing channel (matched exactly, case included). */
int db_listen(struct db_listener *l, const char *channel);
int db_unlisten(struct db_listener *l, const char *channel);

/*
 * Wait up to timeout_ms for the next notification: 1 and *out filled (the
 * caller releases it), 0 when the timeout passed, DB_ECONN when the
 * connection broke (then db_listener_reconnect()).
 */
int db_listener_wait(struct db_listener *l, int timeout_ms, struct db_notification *out);
void db_notification_release(struct db_notification *n);

/* The socket to poll for readability in the caller's own loop (then call
 * db_listener_wait() with timeout 0); -1 on SQLite. */
int db_listener_fd(const struct db_listener *l);

/* Open a new connection and listen on every channel again.  Notifications
 * sent while the old one was down are lost: reload from the database. */
int db_listener_reconnect(struct db_listener *l);

#endif
