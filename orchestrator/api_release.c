/*
 * api_release.c - releases and the public keys that verify them.
 *
 *   GET /api/v1/releases            newest first
 *   GET /api/v1/releases/ID         the release, its manifest and artifacts
 *   GET /api/v1/keys                configured signing keys' public halves
 *
 * Everything needed to verify a release offline (otactl verify) is
 * reachable from here: the manifest's DSSE envelope, the provenance
 * envelope, the signed images, and the public keys by key id.
 */
#include "api_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "keys.h"

#define RELEASE_COLS "id, run_id, product, version, branch, security_counter, key_id, manifest_artifact," \
		     " envelope_artifact, provenance_artifact, created_at, state, COALESCE(rollback_to, 0), reissue_of"

static json_t *release_json(sqlite3_stmt *st)
{
	json_t *j = json_pack("{sI sI ss ss ss sI ss sI sI sI sI}", "id", (json_int_t)store_col_int(st, 0),
			 "run_id", (json_int_t)store_col_int(st, 1), "product", store_col_text(st, 2),
			 "version", store_col_text(st, 3), "branch", store_col_text(st, 4),
			 "security_counter", (json_int_t)store_col_int(st, 5), "key_id", store_col_text(st, 6),
			 "manifest_artifact", (json_int_t)store_col_int(st, 7),
			 "envelope_artifact", (json_int_t)store_col_int(st, 8),
			 "provenance_artifact", (json_int_t)store_col_int(st, 9),
			 "created_at", (json_int_t)store_col_int(st, 10));
	json_object_set_new(j, "state", json_string(store_col_text(st, 11)));
	json_object_set_new(j, "rollback_to", json_integer(store_col_int(st, 12)));
	if (sqlite3_column_type(st, 13) != SQLITE_NULL)
		json_object_set_new(j, "reissue_of", json_integer(store_col_int(st, 13)));
	return j;
}

enum MHD_Result api_get_releases(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	json_t *arr = json_array();
	sqlite3_stmt *st;

	(void)a;
	if (!db || !(st = store_stmt(db, "SELECT " RELEASE_COLS " FROM releases ORDER BY id DESC LIMIT 200"))) {
		json_decref(arr);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	while (store_step_row(db, st) == 1)
		json_array_append_new(arr, release_json(st));
	sqlite3_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

enum MHD_Result api_get_release(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	json_t *rel = NULL, *arts = json_array();
	sqlite3_stmt *st;

	(void)a;
	if (!db || !(st = store_stmt(db, "SELECT " RELEASE_COLS " FROM releases WHERE id = ?"))) {
		json_decref(arts);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	sqlite3_bind_int64(st, 1, r->id);
	if (store_step_row(db, st) == 1)
		rel = release_json(st);
	sqlite3_reset(st);
	if (!rel) {
		json_decref(arts);
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "release %" PRId64 " not found", r->id);
	}
	st = store_stmt(db, "SELECT a.id, a.name, a.sha256, a.size, a.type, a.hardware FROM artifacts a"
			    " JOIN jobs j ON j.id = a.job_id JOIN stages s ON s.id = j.stage_id"
			    " WHERE a.run_id = ? AND s.kind = 'release' ORDER BY a.id");
	sqlite3_bind_int64(st, 1, json_integer_value(json_object_get(rel, "run_id")));
	while (store_step_row(db, st) == 1)
		json_array_append_new(arts, json_pack("{sI ss ss sI ss? ss?}", "id", (json_int_t)store_col_int(st, 0),
						      "name", store_col_text(st, 1), "sha256", store_col_text(st, 2),
						      "size", (json_int_t)store_col_int(st, 3), "type", store_col_text(st, 4),
						      "hardware", store_col_text(st, 5)));
	sqlite3_reset(st);
	json_object_set_new(rel, "artifacts", arts);
	return api_reply_json(r, MHD_HTTP_OK, rel);
}

enum MHD_Result api_get_keys(struct api *a, struct api_req *r)
{
	const struct otacd_config *cfg = a->cfg.config;
	json_t *arr = json_array(), *k;
	const char *name;

	json_object_foreach(cfg->keys, name, k) {
		struct sign_key *key = NULL;
		struct buf pem = BUF_INIT;
		if (sign_key_load(&key, json_string_value(json_object_get(k, "spec")),
				  json_string_value(json_object_get(k, "pin"))) < 0) {
			json_array_append_new(arr, json_pack("{ss ss}", "name", name, "error", ota_error_last()));
			continue;
		}
		sign_key_public_pem(key, &pem);
		json_array_append_new(arr, json_pack("{ss ss ss ss}", "name", name, "id", sign_key_id(key), "alg",
						     sign_alg_name(sign_key_alg(key)), "public_pem", buf_cstr(&pem)));
		buf_release(&pem);
		sign_key_free(key);
	}
	return api_reply_json(r, MHD_HTTP_OK, arr);
}
