/*
 * outbox.c - the outbox rows: written by the engine thread with the state
 * change they report, delivered by the sender thread (notify.h).
 *
 * The sender never writes the database itself: the engine thread owns the
 * only writer connection, so each result (sent, retry at, refused,
 * expired) goes back as an engine command.  It reads due rows through its
 * own reader connection and holds no read transaction while a request is
 * in flight.
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
#include "../engine_int.h"
#include "../store.h"

/* ---- enqueue (engine thread, inside the caller's transaction) ----------- */

static int insert_row(struct engine *e, const char *target, const char *event, json_t *payload)
{
	sqlite3_stmt *st = STMT(e, "INSERT INTO outbox(delivery, target, event, payload, created_at, next_at)"
				   " VALUES (?,?,?,?,?,?)");
	char delivery[33];
	char *text;
	int64_t now = clock_real_ms();
	int rc;

	if (!st)
		return OTA_ERROR;
	if (ota_random_hex(delivery, 16) < 0)
		return OTA_ERROR;
	json_object_set_new(payload, "id", json_string(delivery));
	text = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
	sqlite3_bind_text(st, 1, delivery, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, target, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, event, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, text, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 5, now);
	sqlite3_bind_int64(st, 6, now);
	rc = store_step_done(engine_store(e), st);
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

static void set_text(json_t *o, const char *key, sqlite3_stmt *st, int col)
{
	const char *s = store_col_text(st, col);
	json_object_set_new(o, key, s ? json_string(s) : json_null());
}

int outbox_run_event(struct engine *e, int64_t run_id, const char *state)
{
	const struct notify *n = notify_current();
	sqlite3_stmt *st;
	const char *what = !strcmp(state, "running") ? "started" : state;
	const struct forge_status *f;
	json_t *run, *payload;
	char event[32];
	int rc;

	if (!n || (strcmp(what, "started") && strcmp(what, "passed") && strcmp(what, "failed") && strcmp(what, "canceled")))
		return 0;
	if (!(st = STMT(e, "SELECT pipeline, ref, commit_id, repo, error FROM runs WHERE id = ?")))
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, run_id);
	if ((rc = store_step_row(engine_store(e), st)) != 1) {
		sqlite3_reset(st);
		return rc < 0 ? rc : 0;
	}
	run = json_pack("{sI ss}", "id", (json_int_t)run_id, "state", state);
	set_text(run, "pipeline", st, 0);
	set_text(run, "ref", st, 1);
	set_text(run, "commit", st, 2);
	set_text(run, "repo", st, 3);
	set_text(run, "error", st, 4);
	sqlite3_reset(st);
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
	sqlite3_stmt *st;
	json_t *ro, *payload;
	char event[32];
	int rc;

	if (!n || !what || !rollout_id)
		return 0;
	if (!(st = STMT(e, "SELECT r.run_id, r.stage, r.step, r.percent_bp, r.state, rel.product, rel.version"
			   " FROM rollouts r JOIN releases rel ON rel.id = r.release_id WHERE r.id = ?")))
		return OTA_ERROR;
	sqlite3_bind_int64(st, 1, rollout_id);
	if ((rc = store_step_row(engine_store(e), st)) != 1) {
		sqlite3_reset(st);
		return rc < 0 ? rc : 0;
	}
	ro = json_pack("{sI sI sI sI sI ss ss}", "id", (json_int_t)rollout_id, "release_id", (json_int_t)release_id,
		       "run_id", (json_int_t)store_col_int(st, 0), "step", (json_int_t)store_col_int(st, 2),
		       "percent_bp", (json_int_t)store_col_int(st, 3), "actor", actor ? actor : "", "reason",
		       reason ? reason : "");
	set_text(ro, "stage", st, 1);
	set_text(ro, "state", st, 4);
	set_text(ro, "product", st, 5);
	set_text(ro, "version", st, 6);
	sqlite3_reset(st);
	snprintf(event, sizeof(event), "rollout.%s", what);
	payload = json_pack("{ss sI so}", "event", event, "at", (json_int_t)clock_real_ms(), "rollout", ro);
	rc = to_targets(e, n, event, payload);
	json_decref(payload);
	return rc;
}

/* ---- results (posted to the engine thread) ---------------------------- */

struct result {
	int64_t id;
	const char *state;     /* pending (retry), sent, refused, expired */
	int attempts;
	int64_t next_at;
	const char *error;
};

static int record_result(struct engine *e, void *arg)
{
	const struct result *r = arg;
	sqlite3_stmt *st = STMT(e, "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ?,"
				   " done_at = ? WHERE id = ? AND state = 'pending'");
	if (!st)
		return OTA_ERROR;
	sqlite3_bind_text(st, 1, r->state, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, r->attempts);
	sqlite3_bind_int64(st, 3, r->next_at);
	if (r->error && *r->error)
		sqlite3_bind_text(st, 4, r->error, -1, SQLITE_TRANSIENT);
	if (strcmp(r->state, "pending"))
		sqlite3_bind_int64(st, 5, clock_real_ms());
	sqlite3_bind_int64(st, 6, r->id);
	return store_step_done(engine_store(e), st);
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

struct due {
	int64_t id, created_at;
	int attempts;
	char *delivery, *target, *event, *payload;
};

#define BATCH 16

/* Copy up to BATCH due rows out of the database (no transaction stays open). */
static size_t load_due(struct due *out, int64_t now)
{
	struct store *db = store_reader();
	sqlite3_stmt *st = db ? store_stmt(db, "SELECT id, delivery, target, event, payload, attempts, created_at"
					       " FROM outbox WHERE state = 'pending' AND next_at <= ?"
					       " ORDER BY next_at, id LIMIT 16") : NULL;
	size_t n = 0;
	if (!st)
		return 0;
	sqlite3_bind_int64(st, 1, now);
	while (n < BATCH && store_step_row(db, st) == 1) {
		out[n].id = store_col_int(st, 0);
		out[n].delivery = xstrdup(store_col_text(st, 1));
		out[n].target = xstrdup(store_col_text(st, 2));
		out[n].event = xstrdup(store_col_text(st, 3));
		out[n].payload = xstrdup(store_col_text(st, 4));
		out[n].attempts = (int)store_col_int(st, 5);
		out[n].created_at = store_col_int(st, 6);
		n++;
	}
	sqlite3_reset(st);
	return n;
}

static void send_one(struct notify_sender *s, const struct due *d)
{
	struct outbox_row row = { d->id, d->delivery, d->target, d->event, d->payload, d->attempts };
	struct result r = { d->id, "pending", d->attempts, 0, NULL };
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
	struct due due[BATCH];

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
			free(due[i].delivery);
			free(due[i].target);
			free(due[i].event);
			free(due[i].payload);
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
