/*
 * relverify.c - a release checked from commit to images; see relverify.h.
 *
 * Every check appends one entry to the answer and goes on: a reader wants
 * every problem, not the first.  Only a release that cannot be read at all
 * stops the walk.
 */
#include "relverify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "manifest.h"
#include "mcuboot.h"
#include "pki.h"
#include "provenance.h"

int relverify_keys_add_pem(struct relverify_keys *k, const char *pem, size_t len)
{
	if (k->n == RELVERIFY_MAX_KEYS)
		return ota_error_set(OTA_EINVAL, "too many keys (at most %d)", RELVERIFY_MAX_KEYS);
	if (pubkey_load_pem(&k->key[k->n], pem, len) < 0)
		return OTA_EINVAL;
	pubkey_id(k->key[k->n], k->id[k->n]);
	k->n++;
	return 0;
}

void relverify_keys_release(struct relverify_keys *k)
{
	for (size_t i = 0; i < k->n; i++)
		EVP_PKEY_free(k->key[i]);
	k->n = 0;
}

static EVP_PKEY *key_by_id(const struct relverify_keys *k, const char *id)
{
	for (size_t i = 0; i < k->n; i++)
		if (id && !strcmp(k->id[i], id))
			return k->key[i];
	return NULL;
}

struct walk {
	json_t *checks;
	int failed;
};

static void check(struct walk *w, const char *step, const char *name, int ok, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void check(struct walk *w, const char *step, const char *name, int ok, const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	json_array_append_new(w->checks, json_pack("{ss ss? sb ss}", "step", step, "name", name, "ok", ok, "text", text));
	if (!ok)
		w->failed = 1;
}

static const char *str(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static void check_commit(struct walk *w, const struct relverify_src *src, const json_t *m)
{
	const json_t *g = json_object_get(m, "git");
	const char *commit = json_string_value(json_object_get(g, "commit"));
	const char *repo = json_string_value(json_object_get(g, "repo"));
	const char *tree = json_string_value(json_object_get(g, "tree"));
	json_t *cj = NULL;

	if (!commit || !repo)
		return; /* a release from a pipeline run without a repository */
	if (src->commit(src->arg, repo, commit, &cj) < 0)
		check(w, "commit", NULL, 0, "commit %.12s: not found in the mirror of %s (%s)", commit, repo,
		      ota_error_last());
	else if (tree && strcmp(str(cj, "tree"), tree))
		check(w, "commit", NULL, 0, "commit %.12s: its tree differs from the manifest's", commit);
	else
		check(w, "commit", NULL, 1, "commit %.12s exists in the mirror of %s, tree matches", commit, repo);
	json_decref(cj);
}

static void check_image(struct walk *w, const struct relverify_src *src, const struct relverify_keys *keys,
			const json_t *m, const json_t *arts, const json_t *img)
{
	const char *name = str(img, "name"), *mkey = json_string_value(json_object_get(m, "key_id"));
	EVP_PKEY *key = key_by_id(keys, mkey);
	const json_t *found = NULL, *art;
	struct buf bytes = BUF_INIT;
	struct mcuboot_info info;
	char sha[65];
	size_t k;

	json_array_foreach(arts, k, art)
		if (!strcmp(str(art, "name"), name))
			found = art;
	if (!found) {
		check(w, "image", name, 0, "%s: listed in the manifest but not in the release", name);
		return;
	}
	if (src->artifact(src->arg, json_integer_value(json_object_get(found, "id")), &bytes) < 0) {
		check(w, "image", name, 0, "%s: %s", name, ota_error_last());
		goto out;
	}
	ota_sha256_hex(bytes.ptr, bytes.len, sha);
	if (strcmp(sha, str(img, "sha256")) != 0 || (json_int_t)bytes.len != json_integer_value(json_object_get(img, "size")))
		check(w, "image", name, 0, "%s: sha256 %s does not match the manifest", name, sha);
	else if (!key || mcuboot_verify_sealed(&info, bytes.ptr, bytes.len, key) < 0)
		check(w, "image", name, 0, "%s: %s", name, key ? ota_error_last() : "no trusted key to check it");
	else if (!info.has_security_counter ||
		 (json_int_t)info.security_counter != json_integer_value(json_object_get(m, "security_counter")))
		check(w, "image", name, 0, "%s: security counter %u differs from the manifest's", name, info.security_counter);
	else
		check(w, "image", name, 1, "%s: digest, MCUboot signature, version %u.%u.%u+%u, counter %u%s", name, info.major,
		      info.minor, info.revision, info.build, info.security_counter,
		      info.enc_type ? " (encrypted: the device checks the body's hash after decrypting)" : "");
out:
	buf_release(&bytes);
}

static void check_provenance(struct walk *w, const struct relverify_src *src, const struct relverify_keys *keys,
			     const json_t *r, const json_t *m, const struct buf *manifest)
{
	struct buf prov = BUF_INIT, payload = BUF_INIT;
	json_t *p = NULL, *stmt = NULL;
	char keyid[65] = "";

	if (src->artifact(src->arg, json_integer_value(json_object_get(r, "provenance_artifact")), &prov) < 0 ||
	    !(p = json_loadb(prov.ptr, prov.len, 0, NULL))) {
		check(w, "provenance", NULL, 0, "provenance: cannot read it");
	} else if (dsse_verify(p, keys->key, keys->n, &payload, keyid) < 0) {
		check(w, "provenance", NULL, 0, "provenance signature: %s", ota_error_last());
	} else if (!(stmt = json_loadb(payload.ptr, payload.len, 0, NULL)) || slsa_statement_check(stmt) < 0) {
		check(w, "provenance", NULL, 0, "provenance: %s", stmt ? ota_error_last() : "payload is not JSON");
	} else {
		json_t *subjects = json_object_get(stmt, "subject"), *s, *img;
		size_t nimg = json_array_size(json_object_get(m, "images")), matched = 0, k, i;
		size_t ndelta = json_array_size(json_object_get(m, "deltas"));
		char msha[65];

		check(w, "provenance", NULL, 1, "provenance signature (key %.16s), SLSA v1 statement", keyid);
		ota_sha256_hex(manifest->ptr ? manifest->ptr : "", manifest->len, msha);
		json_array_foreach(subjects, k, s) {
			const char *sn = json_string_value(json_object_get(s, "name"));
			const char *sd = json_string_value(json_object_get(json_object_get(s, "digest"), "sha256"));
			json_array_foreach(json_object_get(m, "images"), i, img)
				if (sn && sd && !strcmp(sn, str(img, "name")) && !strcmp(sd, str(img, "sha256")))
					matched++;
			if (sn && sd && !strcmp(sn, "release/manifest.json") && !strcmp(sd, msha))
				matched++;
			/* issue 15: and the delta patches the manifest names */
			json_array_foreach(json_object_get(m, "deltas"), i, img)
				if (sn && sd && !strcmp(sn, str(img, "name")) && !strcmp(sd, str(img, "sha256")))
					matched++;
		}
		if (ndelta)
			check(w, "provenance", NULL,
			      json_array_size(subjects) == nimg + 1 + ndelta && matched == nimg + 1 + ndelta,
			      "provenance subjects are the %zu image(s), the manifest and the %zu delta patch(es)", nimg,
			      ndelta);
		else
			check(w, "provenance", NULL, json_array_size(subjects) == nimg + 1 && matched == nimg + 1,
			      "provenance subjects are the %zu image(s) and the manifest", nimg);
	}
	json_decref(p);
	json_decref(stmt);
	buf_release(&prov);
	buf_release(&payload);
}

/*
 * The trusted keys for this release: the given ones, plus the leaf of the
 * manifest's signing chain when it ends at the root.  The manifest is read
 * unverified here; the envelope's signature by that leaf is what makes it
 * the signed one (checked next, against the stored bytes).
 */
static void release_keys(struct walk *w, const struct relverify_keys *keys, const struct buf *manifest,
			 struct relverify_keys *eff)
{
	json_t *m = keys->root ? json_loadb(manifest->ptr ? manifest->ptr : "", manifest->len, 0, NULL) : NULL;
	json_t *chain = json_object_get(m, "signing_chain");
	EVP_PKEY *leaf = NULL;
	char keyid[65] = "";
	time_t at = 0;

	for (size_t i = 0; i < keys->n; i++) {
		EVP_PKEY_up_ref(keys->key[i]);
		eff->key[i] = keys->key[i];
		memcpy(eff->id[i], keys->id[i], sizeof(eff->id[i]));
	}
	eff->n = keys->n;
	if (!chain)
		goto out;
	if (pki_parse_time(json_string_value(json_object_get(m, "built_at")), &at) < 0 ||
	    pki_chain_verify(&leaf, keyid, keys->root, chain, at, keys->crl) < 0) {
		check(w, "manifest", NULL, 0, "%s", ota_error_last());
		goto out;
	}
	check(w, "manifest", NULL, 1, "signing certificate of key %.16s chains to the trust root (valid at %s, codeSigning%s)",
	      keyid, json_string_value(json_object_get(m, "built_at")), keys->crl ? ", not revoked" : "");
	if (eff->n == RELVERIFY_MAX_KEYS)
		EVP_PKEY_free(eff->key[--eff->n]);
	eff->key[eff->n] = leaf;
	memcpy(eff->id[eff->n++], keyid, sizeof(keyid));
	leaf = NULL;
out:
	EVP_PKEY_free(leaf);
	json_decref(m);
}

int relverify_release(json_t **out, const struct relverify_src *src, const struct relverify_keys *given,
		      const char *id)
{
	struct relverify_keys eff = { { 0 }, { { 0 } }, 0, NULL, NULL };
	const struct relverify_keys *keys = &eff;
	struct buf manifest = BUF_INIT, env = BUF_INIT, payload = BUF_INIT;
	struct walk w = { json_array(), 0 };
	json_t *r = NULL, *m = NULL, *e = NULL, *img;
	char keyid[65] = "";
	const char *mkey;
	size_t i;

	if (src->release(src->arg, id, &r) < 0) {
		int rc = ota_error_set(OTA_ENOTFOUND, "cannot read release %s: %s", id, ota_error_last());
		json_decref(w.checks);
		return rc;
	}

	/* the manifest and its envelope */
	if (src->artifact(src->arg, json_integer_value(json_object_get(r, "manifest_artifact")), &manifest) < 0)
		check(&w, "manifest", NULL, 0, "manifest: %s", ota_error_last());
	release_keys(&w, given, &manifest, &eff);
	if (src->artifact(src->arg, json_integer_value(json_object_get(r, "envelope_artifact")), &env) < 0 ||
	    !(e = json_loadb(env.ptr, env.len, 0, NULL)))
		check(&w, "manifest", NULL, 0, "manifest envelope: cannot read it");
	if (e) {
		if (dsse_verify(e, keys->key, keys->n, &payload, keyid) < 0)
			check(&w, "manifest", NULL, 0, "manifest signature: %s", ota_error_last());
		else if (payload.len != manifest.len || memcmp(payload.ptr, manifest.ptr, manifest.len) != 0)
			check(&w, "manifest", NULL, 0, "manifest signature: the signed manifest differs from the stored manifest");
		else
			check(&w, "manifest", NULL, 1, "manifest signature (key %.16s)", keyid);
	}
	m = json_loadb(manifest.ptr ? manifest.ptr : "", manifest.len, 0, NULL);
	if (!m) {
		check(&w, "manifest", NULL, 0, "manifest: not valid JSON");
		goto done;
	}
	if (manifest_check(m) < 0)
		check(&w, "manifest", NULL, 0, "%s", ota_error_last());
	else
		check(&w, "manifest", NULL, 1, "manifest fields (schema)");
	check_commit(&w, src, m);
	mkey = json_string_value(json_object_get(m, "key_id"));
	if (!key_by_id(keys, mkey))
		check(&w, "manifest", NULL, 0, "manifest key %s is not a trusted key", mkey ? mkey : "(none)");
	json_array_foreach(json_object_get(m, "images"), i, img)
		check_image(&w, src, keys, m, json_object_get(r, "artifacts"), img);
	check_provenance(&w, src, keys, r, m, &manifest);
done:
	*out = json_pack("{s{sO? sO? sO? sO?} sb so}", "release", "id", json_object_get(r, "id"), "product",
			 json_object_get(r, "product"), "version", json_object_get(r, "version"), "security_counter",
			 json_object_get(r, "security_counter"), "ok", !w.failed, "checks", w.checks);
	json_decref(r);
	json_decref(m);
	json_decref(e);
	buf_release(&manifest);
	buf_release(&env);
	buf_release(&payload);
	relverify_keys_release(&eff);
	return w.failed;
}
