/*
 * outbox.c - the outbox rows: written by the engine thread with the state
 * change they report, delivered by the sender thread (notify.h).
 *
 * The sender never writes the database itself: the engine thread owns the
 * only writer connection, so each result (sent, retry at, refused,
 * expired) goes back as an engine command.  It reads due rows through its
 * own reader connection (store_reader(), a DB_READONLY connection of the
 * storage layer) and holds no read transaction while a request is in
 * flight.
 *
 * The table work itself (outbox_store_*, notify.h) takes a store, not the
 * engine, so tests run it on SQLite and on PostgreSQL.
 */
#include "notify_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/log.h"
#include "../../common/util.h"
#include "../clock.h"
#include "../engine_core.h"
#include "../db/db.h"
#include "../engine_int.h"
#include "../store.h"

/* ---- the table (any thread's store; see notify.h) ---------------------- */

int outbox_store_add(struct store *s, const char *delivery, const char *target, const char *event,
		     const char *payload, int64_t now)
{
	struct db_stmt *st = store_q(s, "INSERT INTO outbox(delivery, target, event, payload, created_at, next_at)"
				       " VALUES (?,?,?,?,?,?)");

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, delivery);
	db_bind_text(st, 2, target);
	db_bind_text(st, 3, event);
	db_bind_text(st, 4, payload);
	db_bind_int64(st, 5, now);
	db_bind_int64(st, 6, now);
	return db_run(st);
}

void outbox_due_release(struct outbox_due *d)
{
	free(d->delivery);
	free(d->target);
	free(d->event);
	free(d->payload);
	memset(d, 0, sizeof(*d));
}

int outbox_store_due(struct store *s, int64_t now, struct outbox_due *out, size_t max, size_t *n)
{
	struct db_stmt *st = store_q(s, "SELECT id, delivery, target, event, payload, attempts, created_at"
				       " FROM outbox WHERE state = 'pending' AND next_at <= ?"
				       " ORDER BY next_at, id LIMIT ?");
	int rc = 0;

	*n = 0;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, now);
	db_bind_int64(st, 2, (int64_t)max);
	while (*n < max && (rc = db_step(st)) == 1) {
		struct outbox_due *d = &out[(*n)++];
		d->id = db_column_int64(st, 0);
		d->delivery = xstrdup(db_column_text(st, 1));
		d->target = xstrdup(db_column_text(st, 2));
		d->event = xstrdup(db_column_text(st, 3));
		d->payload = xstrdup(db_column_text(st, 4));
		d->attempts = (int)db_column_int64(st, 5);
		d->created_at = db_column_int64(st, 6);
	}
	db_reset(st);
	return rc < 0 ? rc : 0;
}

int outbox_store_finish(struct store *s, const struct outbox_result *r, int64_t now)
{
	struct db_stmt *st = store_q(s, "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ?,"
				       " done_at = ? WHERE id = ? AND state = 'pending'");

	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, r->state);
	db_bind_int64(st, 2, r->attempts);
	db_bind_int64(st, 3, r->next_at);
	/* unbound parameters are NULL: no error, and no done_at while pending */
	if (r->error && *r->error)
		db_bind_text(st, 4, r->error);
	if (strcmp(r->state, "pending"))
		db_bind_int64(st, 5, now);
	db_bind_int64(st, 6, r->id);
	return db_run(st);
}

/* ---- enqueue (engine thread, inside the caller's transaction) ----------- */

static int insert_row(struct engine *e, const char *target, const char *event, json_t *payload)
{
	char delivery[33];
	char *text;
	int rc;

	if (ota_random_hex(delivery, 16) < 0)
		return OTA_ERROR;
	json_object_set_new(payload, "id", json_string(delivery));
	text = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
	rc = outbox_store_add(engine_store(e), delivery, target, event, text, clock_real_ms());
	free(text);
	return rc;
}

/* One row per target that wants event (a fresh copy of payload each, for its own id). */
static int to_targets(struct engine *e, const struct notify *n, const char *event, const json_t *payload)
{
	int rc = 0;
	for (size_t i = 0; i < n->ntargets && rc == 0; i++) {
		if (notify_target_wants(&n->targets[i], event)) {
			json_t *copy = json_deep_copy(payload);
			char *target = xasprintf("hook:%s", n->targets[i].name);
			rc = insert_row(e, target, event, copy);
			free(target);
			json_decref(copy);
		}
	}
	return rc;
}

static void set_text(json_t *o, const char *key, struct db_stmt *st, int col)
{
	const char *s = db_column_text(st, col);
	json_object_set_new(o, key, s ? json_string(s) : json_null());
}

int outbox_run_event(struct engine *e, int64_t run_id, const char *state)
{
	const struct notify *n = notify_current();
	struct db_stmt *st;
	const char *what = !strcmp(state, "running") ? "started" : state;
	const struct forge_status *f;
	json_t *run, *payload;
	char event[32];
	int rc;

	if (!n || (strcmp(what, "started") && strcmp(what, "passed") && strcmp(what, "failed") && strcmp(what, "canceled")))
		return 0;
	if (!(st = store_q(engine_store(e), "SELECT pipeline, ref, commit_id, repo, error FROM runs WHERE id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, run_id);
	if ((rc = db_step(st)) != 1) {
		db_reset(st);
		return rc < 0 ? rc : 0;
	}
	run = json_pack("{sI ss}", "id", (json_int_t)run_id, "state", state);
	set_text(run, "pipeline", st, 0);
	set_text(run, "ref", st, 1);
	set_text(run, "commit", st, 2);
	set_text(run, "repo", st, 3);
	set_text(run, "error", st, 4);
	db_reset(st);
	if (n->public_url)
		json_object_set_new(run, "url", json_sprintf("%s/#/runs/%lld", n->public_url, (long long)run_id));
	snprintf(event, sizeof(event), "run.%s", what);
	payload = json_pack("{ss sI so}", "event", event, "at", (json_int_t)clock_real_ms(), "run", run);
	rc = to_targets(e, n, event, payload);
	f = notify_forge_find(n, json_string_value(json_object_get(run, "repo")));
	if (rc == 0 && f && json_string_value(json_object_get(run, "commit"))) {
		char *target = xasprintf("status:%s", f->repo);
		json_t *copy = json_deep_copy(payload);
		rc = insert_row(e, target, event, copy);
		json_decref(copy);
		free(target);
	}
	json_decref(payload);
	return rc;
}

int outbox_rollout_event(struct engine *e, const char *actor, const char *action, int64_t release_id,
			 int64_t rollout_id, const char *reason)
{
	const struct notify *n = notify_current();
	const char *what = !strcmp(action, "promote")                                      ? "promoted"
			   : !strcmp(action, "pause")                                      ? "halted"
			   : !strcmp(action, "rollback") || !strcmp(action, "auto_rollback") ? "rolled_back"
			   : !strcmp(action, "stage_passed")                               ? "completed"
											   : NULL;
	struct db_stmt *st;
	json_t *ro, *payload;
	char event[32];
	int rc;

	if (!n || !what || !rollout_id)
		return 0;
	if (!(st = store_q(engine_store(e), "SELECT r.run_id, r.stage, r.step, r.percent_bp, r.state, rel.product,"
					    " rel.version FROM rollouts r JOIN releases rel ON rel.id = r.release_id"
					    " WHERE r.id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, rollout_id);
	if ((rc = db_step(st)) != 1) {
		db_reset(st);
		return rc < 0 ? rc : 0;
	}
	ro = json_pack("{sI sI sI sI sI ss ss}", "id", (json_int_t)rollout_id, "release_id", (json_int_t)release_id,
		       "run_id", (json_int_t)db_column_int64(st, 0), "step", (json_int_t)db_column_int64(st, 2),
		       "percent_bp", (json_int_t)db_column_int64(st, 3), "actor", actor ? actor : "", "reason",
		       reason ? reason : "");
	set_text(ro, "stage", st, 1);
	set_text(ro, "state", st, 4);
	set_text(ro, "product", st, 5);
	set_text(ro, "version", st, 6);
	db_reset(st);
	snprintf(event, sizeof(event), "rollout.%s", what);
	payload = json_pack("{ss sI so}", "event", event, "at", (json_int_t)clock_real_ms(), "rollout", ro);
	rc = to_targets(e, n, event, payload);
	json_decref(payload);
	return rc;
}

/* ---- results (posted to the engine thread) ---------------------------- */

static int record_result(struct engine *e, void *arg)
{
	return outbox_store_finish(engine_store(e), arg, clock_real_ms());
}

/* ---- the sender thread -------------------------------------------------- */

struct notify_sender {
	struct notify *n;
	struct engine *e;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop;
};

#define BATCH 16

/*
 * Copy up to BATCH due rows out of the database on this thread's reader
 * (one statement, autocommit: no transaction stays open).  A read that
 * fails part way keeps the rows read so far; the rest wait for the next
 * poll.
 */
static size_t load_due(struct outbox_due *out, int64_t now)
{
	struct store *db = store_reader();
	size_t n = 0;

	if (!db || outbox_store_due(db, now, out, BATCH, &n) < 0)
		ota_log(OTA_LOG_WARN, "notify: cannot read due deliveries: %s", ota_error_last());
	return n;
}

static void send_one(struct notify_sender *s, const struct outbox_due *d)
{
	struct outbox_row row = { d->id, d->delivery, d->target, d->event, d->payload, d->attempts };
	struct outbox_result r = { d->id, "pending", d->attempts, 0, NULL };
	char why[512];
	int64_t now = clock_real_ms();

	if (now - d->created_at > s->n->max_age_ms) {
		r.state = "expired";
		r.error = "older than notifications.max_age: given up";
		ota_log(OTA_LOG_WARN, "notify: %s %s (delivery %s) given up after %d attempts: older than max_age",
			d->target, d->event, d->delivery, d->attempts);
	} else {
		enum notify_outcome o = notify_deliver(s->n, &row, why, sizeof(why));
		r.attempts = d->attempts + 1;
		r.error = why;
		if (o == NOTIFY_SENT) {
			r.state = "sent";
		} else if (o == NOTIFY_REFUSED) {
			r.state = "refused";
			ota_log(OTA_LOG_WARN, "notify: %s %s (delivery %s) refused for good: %s", d->target, d->event,
				d->delivery, why);
		} else {
			int64_t delay = notify_backoff_ms(s->n, d->attempts);
			r.next_at = clock_real_ms() + delay;
			ota_log(OTA_LOG_WARN, "notify: %s %s (delivery %s) attempt %d failed: %s; next in %lld ms",
				d->target, d->event, d->delivery, r.attempts, why, (long long)delay);
		}
	}
	if (engine_call(s->e, record_result, &r) < 0)
		ota_log(OTA_LOG_WARN, "notify: cannot record delivery %s: %s", d->delivery, ota_error_last());
}

static void *sender_main(void *arg)
{
	struct notify_sender *s = arg;
	struct outbox_due due[BATCH];

	for (;;) {
		size_t n;
		pthread_mutex_lock(&s->lock);
		if (s->stop) {
			pthread_mutex_unlock(&s->lock);
			break;
		}
		pthread_mutex_unlock(&s->lock);
		n = load_due(due, clock_real_ms());
		for (size_t i = 0; i < n; i++) {
			pthread_mutex_lock(&s->lock);
			int stop = s->stop;
			pthread_mutex_unlock(&s->lock);
			if (!stop) /* a row not tried stays pending for the next start */
				send_one(s, &due[i]);
			outbox_due_release(&due[i]);
		}
		if (n == BATCH)
			continue;
		pthread_mutex_lock(&s->lock);
		if (!s->stop) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += s->n->poll_ms / 1000;
			ts.tv_nsec += (s->n->poll_ms % 1000) * 1000000L;
			if (ts.tv_nsec >= 1000000000L)
				ts.tv_sec++, ts.tv_nsec -= 1000000000L;
			pthread_cond_timedwait(&s->cond, &s->lock, &ts);
		}
		pthread_mutex_unlock(&s->lock);
	}
	return NULL;
}

int notify_sender_start(struct notify_sender **out, struct notify *n, struct engine *e)
{
	struct notify_sender *s;
	pthread_condattr_t attr;

	*out = NULL;
	if (!n)
		return 0;
	s = xcalloc(1, sizeof(*s));
	s->n = n;
	s->e = e;
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &attr);
	pthread_condattr_destroy(&attr);
	if (pthread_create(&s->thread, NULL, sender_main, s) != 0) {
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return ota_error_set(OTA_ERROR, "notify: cannot start the sender thread");
	}
	*out = s;
	return 0;
}

void notify_sender_stop(struct notify_sender *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
