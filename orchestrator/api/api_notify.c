/*
 * api_notify.c - GET /api/v1/notifications: the outbox (issue 17,
 * orchestrator/notify/notify.h), newest first, so an operator sees what
 * is still owed to a forge or a webhook and what was given up and why
 * without opening the database.  Payloads stay out: the list is about
 * delivery, and a target's URL or secret is never in a row.
 */
#include "api_int.h"

#include <string.h>

#include "../db/db.h"
#include "../store.h"

/* the CAST gives PostgreSQL the parameter's type, which IS NULL does not */
static const char outbox_sql[] =
	"SELECT id, delivery, target, event, state, attempts, created_at, next_at, done_at, last_error FROM outbox"
	" WHERE CAST(?1 AS TEXT) IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2";

static json_t *text_or_null(struct db_stmt *st, int col)
{
	const char *s = db_column_text(st, col);
	return s ? json_string(s) : json_null();
}

static json_t *int_or_null(struct db_stmt *st, int col)
{
	return db_column_type(st, col) == DB_NULL ? json_null() : json_integer(db_column_int64(st, col));
}

enum MHD_Result api_get_notifications(struct api *a, struct api_req *r)
{
	static const char *const states[] = { "pending", "sent", "refused", "expired" };
	struct store *db = store_reader();
	const char *state = api_query(r, "state");
	int64_t limit = 0;
	struct db_stmt *st;
	json_t *arr;
	size_t i;

	(void)a;
	if (api_list_limit(r, 100, &limit) < 0)
		return MHD_YES;
	for (i = 0; state && i < OTA_ARRAY_SIZE(states) && strcmp(state, states[i]); i++)
		;
	if (state && i == OTA_ARRAY_SIZE(states))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'state' must be pending, sent, refused or expired");
	if (!db || !(st = store_q(db, outbox_sql)))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	if (state)
		db_bind_text(st, 1, state);
	db_bind_int64(st, 2, limit);
	arr = json_array();
	while (db_step(st) == 1) {
		json_t *o = json_pack("{sI ss ss ss ss sI sI}", "id", (json_int_t)db_column_int64(st, 0),
				      "delivery", db_column_text(st, 1), "target", db_column_text(st, 2),
				      "event", db_column_text(st, 3), "state", db_column_text(st, 4),
				      "attempts", (json_int_t)db_column_int64(st, 5), "created_at",
				      (json_int_t)db_column_int64(st, 6));
		json_object_set_new(o, "next_at", strcmp(db_column_text(st, 4), "pending") ? json_null()
											   : int_or_null(st, 7));
		json_object_set_new(o, "done_at", int_or_null(st, 8));
		json_object_set_new(o, "last_error", text_or_null(st, 9));
		json_array_append_new(arr, o);
	}
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

/* The statement this file prepares, for tests/test_dbconv_read.c. */
void api_notify_sql_each(void (*fn)(const char *sql, void *arg), void *arg)
{
	fn(outbox_sql, arg);
}
