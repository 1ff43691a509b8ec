/*
 * devapi_pki.c - the device routes of the signing PKI (issue 13):
 *
 *   GET /device/v1/revocations            the held root-signed revocation
 *                                         list (PEM), 404 when none;
 *   GET /device/v1/releases/ID/manifest   the release's signed manifest
 *                                         (its DSSE envelope, which carries
 *                                         the signing chain), only to a
 *                                         device offered one of its images.
 *
 * devapi.c authenticates the device and replies; this file only reads.
 * Both bodies are signed (by the root, by the release key): a device
 * trusts them because they verify, not because of where they came from.
 * Threads: any HTTP thread; reads go through store_reader() and the
 * artifact backend, the list through pki_trust_crl() (a reference).
 */
#include "devapi_pki.h"

#include <stdlib.h>
#include <string.h>

#include "../artifact.h"
#include "../db/db.h"
#include "../pki.h"
#include "../provenance.h"
#include "../store.h"

int devapi_pki_revocations(struct buf *out)
{
	X509_CRL *crl = pki_trust_crl();
	int rc;

	if (!crl)
		return ota_error_set(OTA_ENOTFOUND, "no revocation list has been published");
	rc = pki_crl_pem(crl, out);
	X509_CRL_free(crl);
	return rc;
}

int devapi_pki_manifest(int64_t release, struct buf *out)
{
	struct store *db = store_reader();
	struct artifact_backend *be = artifact_backend();
	struct artifact_reader *rd = NULL;
	struct db_stmt *st = db ? store_q(db, "SELECT a.sha256 FROM releases r JOIN artifacts a ON a.id = r.envelope_artifact"
					       " WHERE r.id = ?") : NULL;
	char sha[65] = "", chunk[16384];
	int64_t size = 0;
	ssize_t n;

	if (!st || !be)
		return ota_error_set(OTA_ERROR, "database unavailable");
	db_bind_int64(st, 1, release);
	if (db_step(st) == 1)
		snprintf(sha, sizeof(sha), "%s", db_column_text(st, 0));
	db_reset(st);
	if (!sha[0] || be->get(be, sha, &rd, &size) < 0)
		return ota_error_set(OTA_ENOTFOUND, "no signed manifest for release %lld", (long long)release);
	buf_init(out, DEVAPI_PKI_MANIFEST_MAX);
	while ((n = be->read(rd, chunk, sizeof(chunk))) > 0)
		if (buf_put(out, chunk, (size_t)n) < 0)
			break;
	be->close(rd);
	if (n < 0 || (int64_t)out->len != size)
		return ota_error_set(OTA_ERROR, "release %lld: cannot read its manifest", (long long)release);
	return 0;
}

int devapi_pki_offered(const struct buf *env, int (*allowed)(void *arg, const char *sha256), void *arg)
{
	json_t *e = json_loadb(env->ptr ? env->ptr : "", env->len, 0, NULL), *m = NULL, *img;
	const char *b64 = json_string_value(json_object_get(e, "payload"));
	struct buf raw = BUF_INIT;
	size_t i;
	int ok = 0;

	if (b64 && dsse_base64_decode(&raw, b64, strlen(b64)) == 0 &&
	    (m = json_loadb(raw.ptr ? raw.ptr : "", raw.len, 0, NULL)) != NULL)
		json_array_foreach(json_object_get(m, "images"), i, img) {
			const char *sha = json_string_value(json_object_get(img, "sha256"));
			if (!ok && sha && allowed(arg, sha))
				ok = 1;
		}
	json_decref(e);
	json_decref(m);
	buf_release(&raw);
	return ok;
}
