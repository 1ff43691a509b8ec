/*
 * idem.c - Idempotency-Key records (idem.h) in otacd.db's idempotency
 * table, written on the engine thread.
 *
 * A key is reserved (status 0, this process's instance id) before its
 * request runs and gets the answer (status, body) before that answer is
 * sent, so an answer a client received is always on the disk.  A reserved
 * row of another instance means the daemon stopped while the request ran:
 * whether it changed anything is unknown, so the key is refused
 * (IDEM_INTERRUPTED) rather than run a second time.  So is a reserved row
 * whose request ran and then lost its client while it waited (instance
 * cleared by idem_abandon).
 */
#include "idem.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "db/db.h"
#include "engine_int.h"
#include "store.h"

static char g_instance[64];
static pthread_once_t g_instance_once = PTHREAD_ONCE_INIT;

static void make_instance(void)
{
	if (ota_random_hex(g_instance, 16) < 0)
		snprintf(g_instance, sizeof(g_instance), "pid-%ld-%lld", (long)getpid(), (long long)clock_real_ms());
}

static const char *instance(void)
{
	pthread_once(&g_instance_once, make_instance);
	return g_instance;
}

int idem_key_valid(const char *key)
{
	size_t n = strlen(key);
	if (n == 0 || n > IDEM_MAX_KEY)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (key[i] < 0x21 || key[i] > 0x7e)
			return 0;
	return 1;
}

void idem_fingerprint(const char *method, const char *path, const void *body, size_t len, char out[65])
{
	size_t nm = strlen(method) + 1, np = strlen(path) + 1;
	char *all = xmalloc(nm + np + len + 1);
	memcpy(all, method, nm);
	memcpy(all + nm, path, np);
	if (len)
		memcpy(all + nm + np, body, len);
	ota_sha256_hex(all, nm + np + len, out);
	free(all);
}

int idem_store_begin(struct store *s, const char *actor, const char *key, const char *fingerprint, int64_t now,
		     enum idem_state *state, int *status, char **body)
{
	struct db_stmt *st = store_q(s, "DELETE FROM idempotency WHERE created_at < ?");
	int rc;

	*status = 0;
	*body = NULL;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now - IDEM_WINDOW_MS);
	if ((rc = db_run(st)) < 0)
		return rc;
	if (!(st = store_q(s, "SELECT fingerprint, status, body, instance FROM idempotency WHERE actor = ? AND key = ?")))
		return OTA_ERROR;
	db_bind_text(st, 1, actor);
	db_bind_text(st, 2, key);
	rc = db_step(st);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		const char *fp = db_column_text(st, 0);
		const char *inst = db_column_text(st, 3);
		*status = (int)db_column_int64(st, 1);
		if (strcmp(fp ? fp : "", fingerprint))
			*state = IDEM_MISMATCH;
		else if (*status == 0)
			*state = inst && !strcmp(inst, instance()) ? IDEM_IN_PROGRESS : IDEM_INTERRUPTED;
		else {
			const char *b = db_column_text(st, 2);
			*state = IDEM_REPLAY;
			*body = xstrdup(b ? b : "");
		}
		db_reset(st);
		return 0;
	}
	if (!(st = store_q(s, "INSERT INTO idempotency(actor, key, fingerprint, status, instance, created_at)"
			      " VALUES (?, ?, ?, 0, ?, ?)")))
		return OTA_ERROR;
	db_bind_text(st, 1, actor);
	db_bind_text(st, 2, key);
	db_bind_text(st, 3, fingerprint);
	db_bind_text(st, 4, instance());
	db_bind_int64(st, 5, now);
	*state = IDEM_NEW;
	return db_run(st);
}

struct begin_args {
	const char *actor, *key, *fingerprint;
	enum idem_state state;
	int status;
	char *body;
};

static int do_begin(struct engine *e, void *arg)
{
	struct begin_args *a = arg;

	free(a->body); /* a retried transaction starts again */
	return idem_store_begin(engine_store(e), a->actor, a->key, a->fingerprint, clock_real_ms(), &a->state,
				&a->status, &a->body);
}

int idem_begin(struct engine *e, const char *actor, const char *key, const char *fingerprint,
	       enum idem_state *state, int *status, char **body)
{
	struct begin_args a = { actor, key, fingerprint, IDEM_NEW, 0, NULL };
	int rc = engine_exec(e, do_begin, &a);
	if (rc < 0) {
		free(a.body);
		return rc;
	}
	*state = a.state;
	*status = a.status;
	*body = a.body;
	return 0;
}

int idem_store_finish(struct store *s, const char *actor, const char *key, int status, const char *body, size_t len)
{
	struct db_stmt *st;

	if (status < 0)
		st = store_q(s, "UPDATE idempotency SET instance = '' WHERE actor = ? AND key = ? AND status = 0");
	else if (status == 0)
		st = store_q(s, "DELETE FROM idempotency WHERE actor = ? AND key = ? AND status = 0");
	else
		st = store_q(s, "UPDATE idempotency SET status = ?3, body = ?4 WHERE actor = ?1 AND key = ?2 AND status = 0");
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, actor);
	db_bind_text(st, 2, key);
	if (status > 0) {
		db_bind_int64(st, 3, status);
		db_bind_text_n(st, 4, body, len);
	}
	return db_run(st);
}

struct finish_args {
	const char *actor, *key;
	int status;
	const char *body;
	size_t len;
};

static int do_finish(struct engine *e, void *arg)
{
	struct finish_args *a = arg;

	return idem_store_finish(engine_store(e), a->actor, a->key, a->status, a->body, a->len);
}

int idem_finish(struct engine *e, const char *actor, const char *key, int status, const char *body, size_t len)
{
	struct finish_args a = { actor, key, status > 0 ? status : 1, body, len };
	return engine_exec(e, do_finish, &a);
}

int idem_forget(struct engine *e, const char *actor, const char *key)
{
	struct finish_args a = { actor, key, 0, NULL, 0 };
	return engine_exec(e, do_finish, &a);
}

int idem_abandon(struct engine *e, const char *actor, const char *key)
{
	struct finish_args a = { actor, key, -1, NULL, 0 };
	return engine_exec(e, do_finish, &a);
}
