/*
 * api_notify.c - GET /api/v1/notifications: the outbox (issue 17,
 * orchestrator/notify/notify.h), newest first, so an operator sees what
 * is still owed to a forge or a webhook and what was given up and why
 * without opening the database.  Payloads stay out: the list is about
 * delivery, and a target's URL or secret is never in a row.
 */
#include "api_int.h"

#include <string.h>

static json_t *text_or_null(sqlite3_stmt *st, int col)
{
	const char *s = store_col_text(st, col);
	return s ? json_string(s) : json_null();
}

static json_t *int_or_null(sqlite3_stmt *st, int col)
{
	return sqlite3_column_type(st, col) == SQLITE_NULL ? json_null() : json_integer(store_col_int(st, col));
}

enum MHD_Result api_get_notifications(struct api *a, struct api_req *r)
{
	static const char *const states[] = { "pending", "sent", "refused", "expired" };
	struct store *db = store_reader();
	const char *state = api_query(r, "state");
	int64_t limit = 0;
	sqlite3_stmt *st;
	json_t *arr;
	size_t i;

	(void)a;
	if (api_list_limit(r, 100, &limit) < 0)
		return MHD_YES;
	for (i = 0; state && i < OTA_ARRAY_SIZE(states) && strcmp(state, states[i]); i++)
		;
	if (state && i == OTA_ARRAY_SIZE(states))
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "'state' must be pending, sent, refused or expired");
	if (!db || !(st = store_stmt(db, "SELECT id, delivery, target, event, state, attempts, created_at, next_at,"
					 " done_at, last_error FROM outbox WHERE ?1 IS NULL OR state = ?1"
					 " ORDER BY id DESC LIMIT ?2")))
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	if (state)
		sqlite3_bind_text(st, 1, state, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, limit);
	arr = json_array();
	while (store_step_row(db, st) == 1) {
		json_t *o = json_pack("{sI ss ss ss ss sI sI}", "id", (json_int_t)store_col_int(st, 0),
				      "delivery", store_col_text(st, 1), "target", store_col_text(st, 2),
				      "event", store_col_text(st, 3), "state", store_col_text(st, 4),
				      "attempts", (json_int_t)store_col_int(st, 5), "created_at",
				      (json_int_t)store_col_int(st, 6));
		json_object_set_new(o, "next_at", strcmp(store_col_text(st, 4), "pending") ? json_null()
											   : int_or_null(st, 7));
		json_object_set_new(o, "done_at", int_or_null(st, 8));
		json_object_set_new(o, "last_error", text_or_null(st, 9));
		json_array_append_new(arr, o);
	}
	sqlite3_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}
