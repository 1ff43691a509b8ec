/*
 * db_notify.c - LISTEN/NOTIFY between otacd instances (db_notify.h).
 *
 * Sending needs nothing but SQL (pg_notify()), so it goes through the
 * caller's connection and its transaction.  Listening needs the socket,
 * which db.h does not show: a listener is a bare libpq connection, waited
 * on with poll() and drained with PQconsumeInput() and PQnotifies(), the
 * way libpq's documentation shows (Asynchronous Notification).  It runs no
 * statements of the engine's, so it needs nothing else of db_pg.c.
 */
#include "db_notify.h"

#include "db_int.h"
#include "pgload.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct db_listener {
	enum db_backend backend;
	char *url;
	PGconn *conn; /* NULL on SQLite */
	struct strvec channels; /* listened to: again after a reconnect */
};

static int check_channel(const char *channel)
{
	size_t n = channel ? strlen(channel) : 0;

	if (n == 0)
		return ota_error_set(OTA_EINVAL, "notify: empty channel name");
	if (n > DB_CHANNEL_MAX)
		return ota_error_set(OTA_EINVAL, "notify: channel name of %zu bytes, at most %d", n, DB_CHANNEL_MAX);
	return 0;
}

int db_notify(struct db *db, const char *channel, const char *payload)
{
	struct db_stmt *st;
	size_t n = payload ? strlen(payload) : 0;
	int rc;

	if ((rc = check_channel(channel)) < 0)
		return rc;
	if (n > DB_PAYLOAD_MAX)
		return ota_error_set(OTA_EINVAL, "notify %s: payload of %zu bytes, at most %d", channel, n,
				     DB_PAYLOAD_MAX);
	if (db->backend == DB_SQLITE)
		return 0; /* one instance: nobody else to tell */
	if (!(st = db_stmt(db, "SELECT pg_notify(?, ?)")))
		return OTA_ERROR;
	db_bind_text(st, 1, channel);
	db_bind_text(st, 2, payload ? payload : "");
	rc = db_run(st);
	return rc < 0 ? rc : 0;
}

/* ---- the listener ------------------------------------------------------------ */

/* libpq through the loader (pgload.h): an otacd on SQLite never maps it.
 * Only reached for a PostgreSQL listener, which connect_listener() opened
 * after checking the library loads. */
static const struct pgload *pq(void)
{
	return pgload_get();
}

static int listener_fail(struct db_listener *l, const char *what)
{
	const char *msg = pq()->error_message(l->conn);
	size_t n = strlen(msg);

	while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		n--;
	return ota_error_set(pq()->status(l->conn) == CONNECTION_BAD ? DB_ECONN : OTA_ERROR, "listener: %s: %.*s", what,
			     (int)n, msg);
}

static int run(struct db_listener *l, const char *verb, const char *channel)
{
	char *ident = pq()->escape_identifier(l->conn, channel, strlen(channel));
	PGresult *res;
	char *sql;
	int rc = 0;

	if (!ident)
		return listener_fail(l, verb);
	sql = xasprintf("%s %s", verb, ident);
	pq()->freemem(ident);
	res = pq()->exec(l->conn, sql);
	if (pq()->result_status(res) != PGRES_COMMAND_OK)
		rc = ota_error_set(pq()->status(l->conn) == CONNECTION_BAD ? DB_ECONN : OTA_ERROR, "listener: %s: %s",
				   sql, pq()->result_error_message(res));
	pq()->clear(res);
	free(sql);
	return rc;
}

/* The server's "terminating connection" arrives as a notice before the
 * connection closes; db_listener_wait() reports it as DB_ECONN instead. */
static void quiet(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

static int connect_listener(struct db_listener *l)
{
	if (!pgload_get())
		return ota_error_set(OTA_ERROR, "listener: %s", pgload_error());
	if (l->conn)
		pq()->finish(l->conn);
	l->conn = pq()->connectdb(l->url);
	if (pq()->status(l->conn) != CONNECTION_OK)
		return listener_fail(l, "connect");
	pq()->set_notice_processor(l->conn, quiet, NULL);
	return 0;
}

int db_listener_open(struct db_listener **out, const char *url)
{
	struct db_listener *l = xcalloc(1, sizeof(*l));
	int rc;

	l->url = xstrdup(url);
	if (strncmp(url, "sqlite:", 7) == 0) {
		l->backend = DB_SQLITE;
	} else if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0) {
		l->backend = DB_POSTGRES;
		if ((rc = connect_listener(l)) < 0) {
			db_listener_close(l);
			return rc;
		}
	} else {
		db_listener_close(l);
		return ota_error_set(OTA_EINVAL, "listener: database URL '%s': expected sqlite:PATH or postgres://...",
				     url);
	}
	*out = l;
	return 0;
}

void db_listener_close(struct db_listener *l)
{
	if (!l)
		return;
	if (l->conn)
		pq()->finish(l->conn);
	strvec_clear(&l->channels);
	free(l->url);
	free(l);
}

int db_listen(struct db_listener *l, const char *channel)
{
	int rc;

	if ((rc = check_channel(channel)) < 0)
		return rc;
	if (l->backend == DB_POSTGRES && (rc = run(l, "LISTEN", channel)) < 0)
		return rc;
	if (!strvec_contains(&l->channels, channel))
		strvec_push(&l->channels, channel);
	return 0;
}

/* strvec has no removal: rebuild it without channel. */
static void forget_channel(struct db_listener *l, const char *channel)
{
	struct strvec keep = STRVEC_INIT;

	for (size_t i = 0; i < l->channels.n; i++)
		if (strcmp(l->channels.v[i], channel) != 0)
			strvec_push(&keep, l->channels.v[i]);
	strvec_clear(&l->channels);
	l->channels = keep;
}

int db_unlisten(struct db_listener *l, const char *channel)
{
	int rc;

	if ((rc = check_channel(channel)) < 0)
		return rc;
	if (l->backend == DB_POSTGRES && (rc = run(l, "UNLISTEN", channel)) < 0)
		return rc;
	forget_channel(l, channel);
	return 0;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 1 and *out if libpq has a notification parsed already, else 0. */
static int take_one(struct db_listener *l, struct db_notification *out)
{
	PGnotify *n = pq()->notifies(l->conn);

	if (!n)
		return 0;
	memset(out, 0, sizeof(*out));
	/* the server refuses channels past DB_CHANNEL_MAX: it always fits */
	snprintf(out->channel, sizeof(out->channel), "%s", n->relname);
	out->payload = xstrdup(n->extra ? n->extra : "");
	out->sender = n->be_pid;
	pq()->freemem(n);
	return 1;
}

int db_listener_wait(struct db_listener *l, int timeout_ms, struct db_notification *out)
{
	int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	int64_t left;

	if (l->backend == DB_SQLITE) {
		if (timeout_ms > 0)
			poll(NULL, 0, timeout_ms); /* nothing will come: wait as asked */
		return 0;
	}
	for (;;) {
		struct pollfd pfd = { .fd = pq()->socket(l->conn), .events = POLLIN };
		int ready;

		if (take_one(l, out))
			return 1;
		if (pq()->status(l->conn) == CONNECTION_BAD || pfd.fd < 0)
			return ota_error_set(DB_ECONN, "listener: the connection is closed");
		left = deadline - mono_ms();
		ready = poll(&pfd, 1, left > 0 ? (int)left : 0);
		if (ready < 0 && errno != EINTR)
			return ota_error_set(OTA_ERROR, "listener: poll: %s", strerror(errno));
		if (ready > 0 && !pq()->consume_input(l->conn))
			return listener_fail(l, "reading notifications");
		if (ready > 0 && pq()->status(l->conn) == CONNECTION_BAD)
			return listener_fail(l, "reading notifications");
		if (ready == 0 && left <= 0)
			return take_one(l, out);
	}
}

void db_notification_release(struct db_notification *n)
{
	if (!n)
		return;
	free(n->payload);
	n->payload = NULL;
}

int db_listener_fd(const struct db_listener *l)
{
	return l->conn ? pq()->socket(l->conn) : -1;
}

int db_listener_reconnect(struct db_listener *l)
{
	int rc;

	if (l->backend == DB_SQLITE)
		return 0;
	if ((rc = connect_listener(l)) < 0)
		return rc;
	for (size_t i = 0; i < l->channels.n; i++)
		if ((rc = run(l, "LISTEN", l->channels.v[i])) < 0)
			return rc;
	return 0;
}
