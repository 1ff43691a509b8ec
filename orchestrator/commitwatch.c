/*
 * commitwatch.c - the leader's commits announced, and heard by the other
 * instances (commitwatch.h).
 *
 * The payload is a small JSON object:
 *
 *   {"v":1,"from":"<this process's random id>","gen":N,"what":["state","work"]}
 *
 * `gen` is the sender's store_generation() after the commit, for logs and
 * debugging only (generations are per process); `what` is the engine's
 * hint of what changed.  The listener thread polls two descriptors, the
 * listening connection's socket and an eventfd that commitwatch_stop()
 * writes, so it sleeps until either speaks and stops at once.
 */
#include "commitwatch.h"

#include "../common/log.h"
#include "../common/util.h"
#include "db/db.h"
#include "db/db_notify.h"
#include "logstore.h"
#include "store.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

/* CW_* bits, and one of our own: "a commit happened" (every commit
 * invalidates the answer cache, whatever else it changed) */
#define CW_COMMIT 0x100u
#define CW_ALL (CW_COMMIT | CW_STATE | CW_WORK | CW_ROLLOUT | CW_LOG | CW_AUTH)

/* log bytes are announced at most this often (the appends in between are
 * read by the woken tails all at once) */
#define LOG_ANNOUNCE_MS 20

static const struct {
	unsigned bit;
	const char *name;
} kinds[] = { { CW_STATE, "state" }, { CW_WORK, "work" }, { CW_ROLLOUT, "rollout" }, { CW_LOG, "log" },
		{ CW_AUTH, "auth" } };

struct commitwatch {
	pthread_t thread;
	int efd;
	atomic_int quit;
	struct db_listener *l;
	char *url;
	/* the log announcer (this thread): a sending connection of its own,
	 * opened on the first append */
	struct db *sender;
	atomic_int log_pending; /* set by logstore_append()'s threads */
	int64_t log_next_ms;
	/* the auth hook (commitwatch_on_auth), under hook_lock */
	pthread_mutex_t hook_lock;
	int (*auth_fn)(void *);
	void *auth_arg;
	int64_t auth_next_ms; /* the periodic reload (this thread) */
	/* counters: written by the thread, read by commitwatch_stats() */
	atomic_uint_fast64_t heard, own, foreign, applied, reconnects, auth_reloads;
};

/* ---- the sender's id --------------------------------------------------------- */

static char g_self[33];
static pthread_once_t g_self_once = PTHREAD_ONCE_INIT;

static void make_self(void)
{
	if (ota_random_hex(g_self, 16) < 0)
		snprintf(g_self, sizeof(g_self), "pid%ld", (long)getpid()); /* still unique per host */
}

static const char *self_id(void)
{
	pthread_once(&g_self_once, make_self);
	return g_self;
}

/* ---- the leader's side --------------------------------------------------------- */

int commitwatch_announce_from(struct db *db, const char *from, unsigned what)
{
	char payload[256];
	size_t n;

	if (db_backend(db) != DB_POSTGRES)
		return 0; /* one instance: nobody else to tell */
	n = (size_t)snprintf(payload, sizeof(payload), "{\"v\":1,\"from\":\"%.64s\",\"gen\":%llu,\"what\":[", from,
			     (unsigned long long)store_generation() + 1);
	for (size_t i = 0, first = 1; i < OTA_ARRAY_SIZE(kinds); i++)
		if (what & kinds[i].bit) {
			n += (size_t)snprintf(payload + n, sizeof(payload) - n, "%s\"%s\"", first ? "" : ",", kinds[i].name);
			first = 0;
		}
	snprintf(payload + n, sizeof(payload) - n, "]}");
	return db_notify(db, COMMITWATCH_CHANNEL, payload);
}

int commitwatch_announce(struct db *db, unsigned what)
{
	return commitwatch_announce_from(db, self_id(), what);
}

/* ---- log bytes ----------------------------------------------------------------------- */

/* The commitwatch whose thread announces appends; the lock makes
 * commitwatch_stop() wait for an append thread inside note_append(). */
static pthread_mutex_t g_appends_lock = PTHREAD_MUTEX_INITIALIZER;
static struct commitwatch *g_appends;

/* logstore_on_append()'s hook, on an appending thread: note and wake. */
static void note_append(void *arg)
{
	uint64_t one = 1;

	(void)arg;
	pthread_mutex_lock(&g_appends_lock);
	if (g_appends && !atomic_exchange(&g_appends->log_pending, 1)) {
		ssize_t n = write(g_appends->efd, &one, sizeof(one));
		(void)n; /* EAGAIN: the counter is non-zero, the thread wakes anyway */
	}
	pthread_mutex_unlock(&g_appends_lock);
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Announce that logs grew (autocommit: delivered at once).  A hint: when
 * the database is away it is dropped, and the next one tries again. */
static void announce_logs(struct commitwatch *cw)
{
	if (!cw->sender && db_open(&cw->sender, cw->url, 0) < 0) {
		cw->sender = NULL;
		return;
	}
	if (commitwatch_announce(cw->sender, CW_LOG) < 0) {
		db_close(cw->sender);
		cw->sender = NULL;
	}
}

/* Poll timeout until the next log announcement is due (-1: none). */
static int logs_due(struct commitwatch *cw)
{
	int64_t now;

	if (!atomic_load(&cw->log_pending))
		return -1;
	now = mono_ms();
	if (now < cw->log_next_ms)
		return (int)(cw->log_next_ms - now);
	atomic_store(&cw->log_pending, 0);
	announce_logs(cw);
	cw->log_next_ms = now + LOG_ANNOUNCE_MS;
	return -1;
}

/* ---- the listener's side --------------------------------------------------------- */

/*
 * What one payload asks to wake: its `what` bits, 0 for our own (already
 * applied by the local commit), CW_ALL for anything that is not a payload
 * of ours.  Reads nothing but the payload's own fields.
 */
static unsigned classify(struct commitwatch *cw, const char *payload)
{
	json_t *o = json_loads(payload, JSON_REJECT_DUPLICATES, NULL), *what;
	const char *from;
	unsigned bits = 0;
	size_t i;
	json_t *v;

	atomic_fetch_add(&cw->heard, 1);
	if (!json_is_object(o) || json_integer_value(json_object_get(o, "v")) != 1 ||
	    !(from = json_string_value(json_object_get(o, "from"))) || !json_is_array(what = json_object_get(o, "what")))
		goto foreign;
	if (!strcmp(from, self_id())) {
		atomic_fetch_add(&cw->own, 1);
		json_decref(o);
		return 0;
	}
	json_array_foreach(what, i, v) {
		const char *name = json_string_value(v);
		size_t k;

		for (k = 0; name && k < OTA_ARRAY_SIZE(kinds) && strcmp(name, kinds[k].name); k++)
			;
		if (!name || k == OTA_ARRAY_SIZE(kinds))
			goto foreign; /* a kind we do not know: reload all */
		bits |= kinds[k].bit;
	}
	json_decref(o);
	return bits == CW_LOG ? bits : bits | CW_COMMIT; /* log bytes alone change no row */
foreign:
	json_decref(o);
	atomic_fetch_add(&cw->foreign, 1);
	return CW_ALL;
}

/* this process's auth reloads by cause, for /metrics */
static atomic_uint_fast64_t g_auth_heard, g_auth_periodic;

void commitwatch_auth_reloads(uint64_t *heard, uint64_t *periodic)
{
	*heard = atomic_load(&g_auth_heard);
	*periodic = atomic_load(&g_auth_periodic);
}

/* Reload tokens and agents through the hook (periodic: the backstop, not a
 * notification); the next periodic reload is COMMITWATCH_AUTH_RELOAD_MS
 * from now. */
static void reload_auth(struct commitwatch *cw, int periodic)
{
	int rc = 0, ran = 0;

	pthread_mutex_lock(&cw->hook_lock);
	if (cw->auth_fn) {
		ran = 1;
		rc = cw->auth_fn(cw->auth_arg);
	}
	pthread_mutex_unlock(&cw->hook_lock);
	if (ran && rc < 0)
		ota_log(OTA_LOG_WARN, "commit notifications: reloading tokens: %s", ota_error_last());
	else if (ran) {
		atomic_fetch_add(&cw->auth_reloads, 1);
		atomic_fetch_add(periodic ? &g_auth_periodic : &g_auth_heard, 1);
	}
	cw->auth_next_ms = mono_ms() + COMMITWATCH_AUTH_RELOAD_MS;
}

/* Poll timeout until the periodic auth reload (run when due). */
static int auth_due(struct commitwatch *cw)
{
	int64_t now = mono_ms();

	if (now >= cw->auth_next_ms)
		reload_auth(cw, 1);
	return (int)(cw->auth_next_ms - now > 0 ? cw->auth_next_ms - now : COMMITWATCH_AUTH_RELOAD_MS);
}

/* What a local commit does (engine.c's run_call() and store.c's hook). */
static void apply(struct commitwatch *cw, unsigned bits)
{
	if (!bits)
		return;
	if (bits & CW_AUTH)
		reload_auth(cw, 0); /* before the cache moves: a reader sees the new set */
	if (bits & CW_COMMIT)
		store_generation_bump();
	if (bits & (CW_STATE | CW_LOG))
		notifier_bump(logstore_changes());
	atomic_fetch_add(&cw->applied, 1);
}

/* Read every notification waiting; the bits they ask for, or -1 when the
 * connection broke. */
static int drain(struct commitwatch *cw, unsigned *bits)
{
	struct db_notification n;
	int rc;

	while ((rc = db_listener_wait(cw->l, 0, &n)) == 1) {
		if (!strcmp(n.channel, COMMITWATCH_CHANNEL))
			*bits |= classify(cw, n.payload);
		db_notification_release(&n);
	}
	return rc < 0 ? -1 : 0;
}

/* Sleep ms or until stopped; 1 when stopped.  A log append's wake ends
 * the pause early once (the flag stays set until it is announced). */
static int pause_or_quit(struct commitwatch *cw, int ms)
{
	struct pollfd pfd = { .fd = cw->efd, .events = POLLIN };
	uint64_t v;

	if (poll(&pfd, 1, ms) > 0 && read(cw->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		ota_log(OTA_LOG_WARN, "commit notifications: eventfd: %s", strerror(errno));
	return atomic_load(&cw->quit);
}

static void *watch_main(void *arg)
{
	struct commitwatch *cw = arg;
	int connected = 1, backoff = BACKOFF_MIN_MS;

	while (!atomic_load(&cw->quit)) {
		struct pollfd pfd[2] = { { .fd = cw->efd, .events = POLLIN }, { .fd = -1, .events = POLLIN } };
		unsigned bits = 0;
		uint64_t v;
		int timeout;

		if (!connected) {
			if (db_listener_reconnect(cw->l) < 0) {
				if (pause_or_quit(cw, backoff))
					break;
				backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
				continue;
			}
			connected = 1;
			backoff = BACKOFF_MIN_MS;
			atomic_fetch_add(&cw->reconnects, 1);
			ota_log(OTA_LOG_INFO, "commit notifications: listening again; reloading everything");
			apply(cw, CW_ALL); /* what was missed while down is visible now */
		}
		if ((pfd[1].fd = db_listener_fd(cw->l)) < 0) {
			connected = 0;
			continue;
		}
		timeout = logs_due(cw);
		{
			int a = auth_due(cw);
			if (timeout < 0 || a < timeout)
				timeout = a;
		}
		if (poll(pfd, 2, timeout) < 0 && errno != EINTR)
			break;
		if (pfd[0].revents && read(cw->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			break;
		if (!pfd[1].revents)
			continue; /* stopping, or logs grew: the loop's head sees to it */
		if (drain(cw, &bits) < 0) {
			ota_log(OTA_LOG_WARN, "commit notifications: %s; reconnecting", ota_error_last());
			connected = 0;
			bits = CW_ALL;
		}
		apply(cw, bits);
	}
	return NULL;
}

int commitwatch_start(struct commitwatch **out, const char *url)
{
	struct commitwatch *cw = xcalloc(1, sizeof(*cw));
	int rc;

	*out = NULL;
	pthread_mutex_init(&cw->hook_lock, NULL);
	cw->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (cw->efd < 0) {
		rc = ota_error_set(OTA_ERROR, "commit notifications: eventfd: %s", strerror(errno));
		goto fail;
	}
	if ((rc = db_listener_open(&cw->l, url)) < 0 || (rc = db_listen(cw->l, COMMITWATCH_CHANNEL)) < 0)
		goto fail;
	cw->url = xstrdup(url);
	cw->auth_next_ms = mono_ms() + COMMITWATCH_AUTH_RELOAD_MS;
	if (pthread_create(&cw->thread, NULL, watch_main, cw) != 0) {
		rc = ota_error_set(OTA_ERROR, "commit notifications: cannot start the thread");
		goto fail;
	}
	pthread_mutex_lock(&g_appends_lock);
	if (!g_appends) {
		g_appends = cw; /* the first one announces this process's appends */
		logstore_on_append(note_append, NULL);
	}
	pthread_mutex_unlock(&g_appends_lock);
	*out = cw;
	return 0;
fail:
	free(cw->url);
	db_listener_close(cw->l);
	if (cw->efd >= 0)
		close(cw->efd);
	pthread_mutex_destroy(&cw->hook_lock);
	free(cw);
	return rc;
}

void commitwatch_stop(struct commitwatch *cw)
{
	uint64_t one = 1;

	if (!cw)
		return;
	pthread_mutex_lock(&g_appends_lock);
	if (g_appends == cw) {
		logstore_on_append(NULL, NULL);
		g_appends = NULL;
	}
	pthread_mutex_unlock(&g_appends_lock);
	atomic_store(&cw->quit, 1);
	if (write(cw->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		ota_log(OTA_LOG_WARN, "commit notifications: cannot wake the thread: %s", strerror(errno));
	pthread_join(cw->thread, NULL);
	db_close(cw->sender);
	free(cw->url);
	db_listener_close(cw->l);
	close(cw->efd);
	pthread_mutex_destroy(&cw->hook_lock);
	free(cw);
}

void commitwatch_on_auth(struct commitwatch *cw, int (*fn)(void *), void *arg)
{
	if (!cw)
		return;
	pthread_mutex_lock(&cw->hook_lock);
	cw->auth_fn = fn;
	cw->auth_arg = arg;
	pthread_mutex_unlock(&cw->hook_lock);
}

void commitwatch_stats(struct commitwatch *cw, struct commitwatch_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!cw)
		return;
	out->heard = atomic_load(&cw->heard);
	out->own = atomic_load(&cw->own);
	out->foreign = atomic_load(&cw->foreign);
	out->applied = atomic_load(&cw->applied);
	out->reconnects = atomic_load(&cw->reconnects);
	out->auth_reloads = atomic_load(&cw->auth_reloads);
}
