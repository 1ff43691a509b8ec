/*
 * notify.h - run and rollout events told to the outside world: commit
 * statuses on the forge and outbound notifications (docs/notifications.md).
 *
 * The outbox pattern.  The engine thread, inside the same transaction as
 * the state change, writes one `outbox` row per destination
 * (outbox_run_event, outbox_rollout_event).  A sender thread
 * (notify_sender_start) reads the due rows, delivers each by HTTP and
 * reports the result back to the engine thread, which marks the row sent,
 * schedules a retry with exponential backoff and jitter, or gives it up
 * (too old, or refused for good) with the reason kept in the row.
 *
 * Delivery is at least once: a process killed after the receiver answered
 * but before "sent" was committed sends the row again after the restart,
 * with the same delivery id (X-Otacd-Delivery, and "id" in the body) so the
 * receiver can drop the copy.  A row is never lost: it is committed with
 * the event or not at all.
 *
 * Every destination comes from the server's configuration (the
 * `notifications:` block and a repository's `status:`), never from a
 * pipeline, so a pushed pipeline cannot make otacd send requests anywhere
 * (docs/security.md).  Tokens and signing secrets are read from files at
 * start, sent only in request headers and never logged.
 *
 * Threads: notify_open/notify_set_current at start, before the engine runs
 * commands; the enqueue functions on the engine thread; the sender on its
 * own thread.
 */
#ifndef OTA_NOTIFY_NOTIFY_H
#define OTA_NOTIFY_NOTIFY_H

#include <jansson.h>
#include <stdint.h>

#include "../config.h"

struct engine;
struct notify;

/*
 * Check and load the `notifications:` block and every repository's
 * `status:` (reading token and secret files) from c.  *out is NULL when
 * neither is configured.  OTA_EINVAL with "notifications.targets[1].url: ..."
 * style messages.
 */
int notify_open(struct notify **out, const struct otacd_config *c);
void notify_free(struct notify *n);

/* The configuration the engine thread's enqueue functions use (NULL: none). */
void notify_set_current(struct notify *n);

/*
 * On the engine thread, inside the transaction that changed the run:
 * queue "run.<state>" (state: started, passed, failed, canceled) for every
 * target that wants it, and the commit status of a run built from a
 * configured repository with a `status:` block.
 */
int outbox_run_event(struct engine *e, int64_t run_id, const char *state);
/*
 * The same for a rollout's audit action: promote, pause (halted),
 * rollback / auto_rollback (rolled back), stage_passed (completed).  Other
 * actions queue nothing.
 */
int outbox_rollout_event(struct engine *e, const char *actor, const char *action, int64_t release_id,
			 int64_t rollout_id, const char *reason);

/*
 * Per-stage commit statuses (outbox_stage.c), for repositories whose
 * `status:` has `per_stage: true`; engine thread, inside the transaction
 * that changed the stage.  A stage's state (running, passed, failed,
 * canceled; others queue nothing); before a cancel marks its stages, the
 * running ones' "canceled"; a rollout or soak stage's step promoted or
 * paused, or its rollout started (audit action "promote", "pause" or
 * "start"): "holding, step 2/4 (5%)".
 */
int outbox_stage_event(struct engine *e, int64_t run_id, const char *stage, const char *state);
int outbox_stage_cancel(struct engine *e, int64_t run_id);
int outbox_stage_rollout(struct engine *e, const char *action, int64_t rollout_id);

/* One outbox row as the sender delivers it. */
struct outbox_row {
	int64_t id;
	const char *delivery;  /* the delivery id receivers de-duplicate on */
	const char *target;    /* "hook:NAME" or "status:REPO" */
	const char *event;     /* "run.failed", "rollout.promoted", ... */
	const char *payload;   /* the event as JSON text (docs/notifications.md) */
	int attempts;          /* attempts made before this one */
};

enum notify_outcome {
	NOTIFY_SENT,           /* the receiver answered 2xx */
	NOTIFY_RETRY,          /* no answer, 408, 429 or 5xx: try again later */
	NOTIFY_REFUSED,        /* another 4xx, or the target is gone from the config: give up */
};

/*
 * Deliver row once, now (the sender calls this; tests call it directly).
 * why (n bytes) gets a short reason for anything but NOTIFY_SENT, naming
 * the target but never its URL, token or secret.
 */
enum notify_outcome notify_deliver(const struct notify *n, const struct outbox_row *row, char *why, size_t len);

/* The delay before attempt `attempts` + 1: base * 2^attempts, capped, with
 * jitter (a uniform value in the upper half). */
int64_t notify_backoff_ms(const struct notify *n, int attempts);

/* ---- the outbox table on a store ----------------------------------------
 * What the enqueue functions, the sender and the engine's result command
 * run, on any store (the engine's writer, the sender's reader), so tests
 * run it on SQLite and on PostgreSQL (docs/storage.md).  Times are real
 * ms (clock_real_ms()). */
struct store;

/* Insert one pending row, due now; inside the caller's transaction. */
int outbox_store_add(struct store *s, const char *delivery, const char *target, const char *event,
		     const char *payload, int64_t now);

/* A due row, copied out of the database (outbox_due_release frees it). */
struct outbox_due {
	int64_t id, created_at;
	int attempts;
	char *delivery, *target, *event, *payload;
};
void outbox_due_release(struct outbox_due *d);

/* Up to max pending rows due at now (next_at <= now), by next_at then id,
 * into out[0..*n).  On an error *n rows were copied all the same. */
int outbox_store_due(struct store *s, int64_t now, struct outbox_due *out, size_t max, size_t *n);

/* An attempt's result for row id. */
struct outbox_result {
	int64_t id;
	const char *state;     /* pending (retry at next_at), sent, refused, expired */
	int attempts;          /* attempts made, this one included */
	int64_t next_at;
	const char *error;     /* kept as last_error; NULL or "": none */
};
/* Record r if the row is still pending (a row is finished once): done_at
 * is now unless it stays pending. */
int outbox_store_finish(struct store *s, const struct outbox_result *r, int64_t now);

/*
 * The sender thread: delivers due rows until notify_sender_stop.  Started
 * after the engine; stopped before it.  Results go through the engine.
 */
struct notify_sender;
int notify_sender_start(struct notify_sender **out, struct notify *n, struct engine *e);
void notify_sender_stop(struct notify_sender *s);

#endif
