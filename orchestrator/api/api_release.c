/*
 * api_release.c - releases and the public keys that verify them.
 *
 *   GET /api/v1/releases            newest first
 *   GET /api/v1/releases/ID         the release, its manifest and artifacts
 *   GET /api/v1/releases/ID/verification
 *                                   relverify's checks, from the database, the
 *                                   artifact store and the mirrors, with the
 *                                   configured keys' public halves
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

#include "../../common/log.h"
#include "../artifact.h"
#include "../config.h"
#include "../db/db.h"
#include "../gitsrc.h"
#include "../keys.h"
#include "../engine_int.h"
#include "../pki.h"
#include "../relverify.h"
#include "../store.h"
#include "../trustdb.h"

#define RELEASE_COLS "id, run_id, product, version, branch, security_counter, key_id, manifest_artifact," \
		     " envelope_artifact, provenance_artifact, created_at, state, COALESCE(rollback_to, 0), reissue_of"

static const char releases_sql[] = "SELECT " RELEASE_COLS " FROM releases ORDER BY id DESC LIMIT ?";
static const char release_by_id_sql[] = "SELECT " RELEASE_COLS " FROM releases WHERE id = ?";
static const char release_artifacts_sql[] =
	"SELECT a.id, a.name, a.sha256, a.size, a.type, a.hardware FROM artifacts a JOIN jobs j ON j.id = a.job_id"
	" JOIN stages s ON s.id = j.stage_id WHERE a.run_id = ? AND s.kind = 'release' ORDER BY a.id";
static const char artifact_sha_sql[] = "SELECT sha256 FROM artifacts WHERE id = ?";

static json_t *release_json(struct db_stmt *st)
{
	json_t *j = json_pack("{sI sI ss ss ss sI ss sI sI sI sI}", "id", (json_int_t)db_column_int64(st, 0),
			 "run_id", (json_int_t)db_column_int64(st, 1), "product", db_column_text(st, 2),
			 "version", db_column_text(st, 3), "branch", db_column_text(st, 4),
			 "security_counter", (json_int_t)db_column_int64(st, 5), "key_id", db_column_text(st, 6),
			 "manifest_artifact", (json_int_t)db_column_int64(st, 7),
			 "envelope_artifact", (json_int_t)db_column_int64(st, 8),
			 "provenance_artifact", (json_int_t)db_column_int64(st, 9),
			 "created_at", (json_int_t)db_column_int64(st, 10));
	json_object_set_new(j, "state", json_string(db_column_text(st, 11)));
	json_object_set_new(j, "rollback_to", json_integer(db_column_int64(st, 12)));
	if (db_column_type(st, 13) != DB_NULL)
		json_object_set_new(j, "reissue_of", json_integer(db_column_int64(st, 13)));
	return j;
}

enum MHD_Result api_get_releases(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	json_t *arr;
	struct db_stmt *st;
	int64_t limit;

	(void)a;
	if (api_list_limit(r, 200, &limit) < 0)
		return MHD_YES;
	arr = json_array();
	if (!db || !(st = store_q(db, releases_sql))) {
		json_decref(arr);
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	}
	db_bind_int64(st, 1, limit);
	while (db_step(st) == 1)
		json_array_append_new(arr, release_json(st));
	db_reset(st);
	return api_reply_json(r, MHD_HTTP_OK, arr);
}

/* The release as GET /api/v1/releases/ID shows it, NULL if there is none
 * (or it cannot be read).  Callers hold a snapshot: the release and its
 * artifacts are read in it. */
static json_t *release_load(struct store *db, int64_t id)
{
	json_t *rel = NULL, *arts;
	struct db_stmt *st = store_q(db, release_by_id_sql);

	if (!st)
		return NULL;
	db_bind_int64(st, 1, id);
	if (db_step(st) == 1)
		rel = release_json(st);
	db_reset(st);
	if (!rel)
		return NULL;
	if (!(st = store_q(db, release_artifacts_sql))) {
		json_decref(rel);
		return NULL;
	}
	arts = json_array();
	db_bind_int64(st, 1, json_integer_value(json_object_get(rel, "run_id")));
	while (db_step(st) == 1)
		json_array_append_new(arts, json_pack("{sI ss ss sI ss? ss?}", "id", (json_int_t)db_column_int64(st, 0),
						      "name", db_column_text(st, 1), "sha256", db_column_text(st, 2),
						      "size", (json_int_t)db_column_int64(st, 3), "type", db_column_text(st, 4),
						      "hardware", db_column_text(st, 5)));
	db_reset(st);
	json_object_set_new(rel, "artifacts", arts);
	return rel;
}

enum MHD_Result api_get_release(struct api *a, struct api_req *r)
{
	struct store *db = store_reader();
	json_t *rel;

	(void)a;
	if (!db || api_snapshot_begin(db) < 0)
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	rel = release_load(db, r->id);
	api_snapshot_end(db);
	if (!rel)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "release %" PRId64 " not found", r->id);
	return api_reply_json(r, MHD_HTTP_OK, rel);
}

/* The configured signing keys' public halves: [{name, id, alg, public_pem}],
 * or {name, error} for a key that does not load. */
static json_t *public_keys(const struct otacd_config *cfg)
{
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
	return arr;
}

enum MHD_Result api_get_keys(struct api *a, struct api_req *r)
{
	return api_reply_json(r, MHD_HTTP_OK, public_keys(a->cfg.config));
}

/* ---- issue 13: the trust root and its revocation list ------------------------ */

/* GET /api/v1/trust: the root certificate and the held revocation list, for
 * `otactl verify` (a list is checked against the root the caller holds). */
enum MHD_Result api_get_trust(struct api *a, struct api_req *r)
{
	struct buf root = BUF_INIT, crl = BUF_INIT;
	X509_CRL *c = pki_trust_crl();
	json_t *ans;

	(void)a;
	if (pki_trust_root())
		pki_cert_pem(pki_trust_root(), &root);
	if (c)
		pki_crl_pem(c, &crl);
	ans = json_pack("{s:s? s:s? s:I}", "root_pem", root.len ? buf_cstr(&root) : NULL, "revocations_pem",
			crl.len ? buf_cstr(&crl) : NULL, "revocations_number", (json_int_t)pki_trust_crl_number());
	X509_CRL_free(c);
	buf_release(&root);
	buf_release(&crl);
	return api_reply_json(r, MHD_HTTP_OK, ans);
}

struct revocation_audit {
	const char *actor, *action;
	char why[512];
	int64_t number;
};

/* Engine thread: the audit row of a refused list (a published one is
 * audited in its own transaction: trustdb.c). */
static int audit_revocations(struct engine *e, void *arg)
{
	struct revocation_audit *x = arg;
	return engine_audit(e, x->actor, x->action, 0, 0, x->why, json_pack("{sI}", "number", (json_int_t)x->number));
}

/* POST /api/v1/revocations {"crl_pem"}: publish a root-signed list (admin)
 * to the database, where every instance reads it (trustdb.h); published
 * and refused lists are audited. */
enum MHD_Result api_post_revocations(struct api *a, struct api_req *r)
{
	const char *pem = json_string_value(json_object_get(r->json, "crl_pem"));
	struct revocation_audit x = { r->actor, "revocations_published", "", 0 };
	int rc;

	if (!pem)
		return api_reply_error(r, MHD_HTTP_BAD_REQUEST, "crl_pem: missing or not a string");
	rc = trustdb_publish(a->cfg.engine, pem, strlen(pem), r->actor, &x.number);
	if (rc < 0) {
		x.action = "revocations_refused";
		snprintf(x.why, sizeof(x.why), "%s", ota_error_last());
		if (engine_exec(a->cfg.engine, audit_revocations, &x) < 0)
			ota_log(OTA_LOG_WARN, "audit: %s", ota_error_last());
	}
	if (rc < 0)
		return api_reply_error(r, rc == OTA_ECONFLICT ? MHD_HTTP_CONFLICT
					  : rc == OTA_EAUTH ? MHD_HTTP_UNPROCESSABLE_CONTENT : MHD_HTTP_BAD_REQUEST,
				       "%s", x.why);
	return api_reply_json(r, MHD_HTTP_OK, json_pack("{sI}", "number", (json_int_t)x.number));
}

/* ---- verification: relverify's sources, read in-process ---------------------- */

struct local_src {
	struct api *api;
	struct store *db;
};

static int src_release(void *arg, const char *id, json_t **out)
{
	struct local_src *ls = arg;
	if (!(*out = release_load(ls->db, strtoll(id, NULL, 10))))
		return ota_error_set(OTA_ENOTFOUND, "release %s not found", id);
	return 0;
}

/* An artifact's bytes by row id: its digest from the database, its bytes
 * from the store (capped at the store's own size limit). */
static int src_artifact(void *arg, int64_t id, struct buf *out)
{
	struct local_src *ls = arg;
	struct artifact_backend *b = artifact_backend();
	struct artifact_reader *rd = NULL;
	struct db_stmt *st = store_q(ls->db, artifact_sha_sql);
	char sha[65] = "", chunk[65536];
	int64_t size = 0;
	ssize_t n;
	int rc;

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	if (db_step(st) == 1)
		snprintf(sha, sizeof(sha), "%s", db_column_text(st, 0));
	db_reset(st);
	if (!sha[0])
		return ota_error_set(OTA_ENOTFOUND, "artifact %lld not found", (long long)id);
	if ((rc = b->get(b, sha, &rd, &size)) < 0)
		return rc;
	buf_release(out);
	buf_init(out, (size_t)artifact_max_size());
	while ((n = b->read(rd, chunk, sizeof(chunk))) > 0)
		if (buf_put(out, chunk, (size_t)n) < 0)
			break;
	b->close(rd);
	if (n < 0 || (int64_t)out->len != size)
		return ota_error_set(OTA_ERROR, "artifact %lld: cannot read %s from the store", (long long)id, sha);
	return 0;
}

static int src_commit(void *arg, const char *name, const char *commit, json_t **out)
{
	struct local_src *ls = arg;
	const struct repo_cfg *repo = config_repo_find(ls->api->cfg.config, name);
	struct gitsrc_commit c;

	if (!repo)
		return ota_error_set(OTA_ENOTFOUND, "repository '%s' is not configured in otacd", name);
	if (gitsrc_resolve(&repo->git, commit, &c) < 0)
		return ota_error_set(OTA_ENOTFOUND, "commit %s is not in the mirror of %s", commit, name);
	*out = json_pack("{ss ss}", "commit", c.id, "tree", c.tree);
	gitsrc_commit_release(&c);
	return 0;
}

/* Trust what GET /api/v1/keys publishes, as `otactl verify` does. */
static void trusted_keys(const struct otacd_config *cfg, struct relverify_keys *keys)
{
	json_t *arr = public_keys(cfg), *k;
	size_t i;

	json_array_foreach(arr, i, k) {
		const char *pem = json_string_value(json_object_get(k, "public_pem"));
		if (pem)
			relverify_keys_add_pem(keys, pem, strlen(pem));
	}
	json_decref(arr);
}

enum MHD_Result api_get_release_verification(struct api *a, struct api_req *r)
{
	struct local_src ls = { a, store_reader() };
	const struct relverify_src src = { src_release, src_artifact, src_commit, &ls };
	struct relverify_keys keys = { { 0 }, { { 0 } }, 0, NULL, NULL };
	X509_CRL *crl;
	json_t *ans = NULL;
	char id[24];
	int rc;

	if (!ls.db || api_snapshot_begin(ls.db) < 0)
		return api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "database unavailable");
	snprintf(id, sizeof(id), "%" PRId64, r->id);
	trusted_keys(a->cfg.config, &keys);
	keys.root = pki_trust_root();
	keys.crl = crl = pki_trust_crl();
	/* every row relverify reads comes from one snapshot */
	rc = relverify_release(&ans, &src, &keys, id);
	api_snapshot_end(ls.db);
	relverify_keys_release(&keys);
	X509_CRL_free(crl);
	if (rc < 0)
		return api_reply_error(r, MHD_HTTP_NOT_FOUND, "release %" PRId64 " not found", r->id);
	return api_reply_json(r, MHD_HTTP_OK, ans);
}


/* Every statement this file prepares (tests/test_dbconv_read.c prepares
 * each on PostgreSQL too): a statement added above goes here. */
void api_release_sql_each(void (*fn)(const char *sql, void *arg), void *arg)
{
	fn(releases_sql, arg);
	fn(release_by_id_sql, arg);
	fn(release_artifacts_sql, arg);
	fn(artifact_sha_sql, arg);
}
