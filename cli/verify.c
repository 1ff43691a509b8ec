/*
 * verify.c - `otactl verify RELEASE [--key PUB.pem]...` and
 * `otactl verify IMAGE --key PUB.pem`.
 *
 * For a release it downloads the manifest, its DSSE envelope, the
 * provenance envelope and every signed image, then checks, printing one
 * line per check:
 *   - the manifest envelope is signed by a trusted key and carries exactly
 *     the stored manifest;
 *   - each image's bytes match the manifest's sha256 and size, and the image
 *     is a valid MCUboot image signed by the manifest's key, with the
 *     manifest's security counter;
 *   - the provenance envelope is signed by a trusted key, is a well-formed
 *     SLSA v1 statement, and its subjects are exactly the images and the
 *     manifest with the same digests.
 * Trusted keys are the --key files, else the daemon's published keys
 * (GET /api/v1/keys).  Nothing is trusted from the release itself.
 */
#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/keys.h"
#include "../orchestrator/manifest.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/provenance.h"

struct ctx {
	const char *url, *token;
	EVP_PKEY *keys[16];
	char ids[16][65];
	size_t nkeys;
	int failed;
};

static void report(struct ctx *c, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(struct ctx *c, int ok, const char *fmt, ...)
{
	va_list ap;
	printf("%s  ", ok ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	if (!ok)
		c->failed = 1;
}

static int get(struct ctx *c, const char *path, struct buf *out)
{
	struct httpc_response resp;
	char *url = xasprintf("%s%s", c->url, path);
	int rc = httpc_request(&resp, "GET", url, c->token, NULL, NULL, 0, 120000);
	free(url);
	if (rc < 0) {
		httpc_response_release(&resp);
		return rc;
	}
	if (resp.status != 200) {
		rc = ota_error_set(resp.status == 404 ? OTA_ENOTFOUND : OTA_ERROR, "GET %s: HTTP %ld", path, resp.status);
		httpc_response_release(&resp);
		return rc;
	}
	buf_release(out);
	*out = resp.body;
	buf_init(&resp.body, 0);
	httpc_response_release(&resp);
	return 0;
}

static int add_key(struct ctx *c, const char *pem, size_t len)
{
	if (c->nkeys == 16)
		return ota_error_set(OTA_EINVAL, "too many keys");
	if (pubkey_load_pem(&c->keys[c->nkeys], pem, len) < 0)
		return OTA_EINVAL;
	pubkey_id(c->keys[c->nkeys], c->ids[c->nkeys]);
	c->nkeys++;
	return 0;
}

static EVP_PKEY *key_by_id(struct ctx *c, const char *id)
{
	for (size_t i = 0; i < c->nkeys; i++)
		if (id && !strcmp(c->ids[i], id))
			return c->keys[i];
	return NULL;
}

static void sha256_hex(const void *p, size_t n, char out[65])
{
	unsigned char md[32];
	unsigned int len = 32;
	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
	ota_hex(out, md, 32);
}

static int verify_image_file(struct ctx *c, const char *path)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	int ok = 0;

	if (ota_read_file(&img, path, (size_t)1 << 30) < 0) {
		report(c, 0, "%s: %s", path, ota_error_last());
		return 1;
	}
	for (size_t i = 0; i < c->nkeys && !ok; i++)
		ok = mcuboot_verify(&info, img.ptr, img.len, c->keys[i]) == 0;
	if (ok)
		report(c, 1, "%s: MCUboot image %u.%u.%u+%u, security counter %u, signature valid", path, info.major,
		       info.minor, info.revision, info.build, info.security_counter);
	else
		report(c, 0, "%s: %s", path, ota_error_last());
	buf_release(&img);
	return c->failed;
}

static int verify_release(struct ctx *c, const char *id)
{
	struct buf rel = BUF_INIT, manifest = BUF_INIT, env = BUF_INIT, prov = BUF_INIT, payload = BUF_INIT;
	json_t *r = NULL, *m = NULL, *e = NULL, *p = NULL, *stmt = NULL, *arts, *art, *img;
	char *path, keyid[65] = "", sha[65];
	const char *mkey;
	size_t i;

	path = xasprintf("/api/v1/releases/%s", id);
	if (get(c, path, &rel) < 0 || !(r = json_loadb(rel.ptr, rel.len, 0, NULL))) {
		fprintf(stderr, "otactl: cannot read release %s: %s\n", id, ota_error_last());
		free(path);
		buf_release(&rel);
		return 5;
	}
	free(path);
	printf("release %s: %s %s (security counter %lld)\n", id, json_string_value(json_object_get(r, "product")),
	       json_string_value(json_object_get(r, "version")),
	       (long long)json_integer_value(json_object_get(r, "security_counter")));

	/* the manifest and its envelope */
	path = xasprintf("/api/v1/artifacts/%lld", (long long)json_integer_value(json_object_get(r, "manifest_artifact")));
	if (get(c, path, &manifest) < 0)
		report(c, 0, "manifest: %s", ota_error_last());
	free(path);
	path = xasprintf("/api/v1/artifacts/%lld", (long long)json_integer_value(json_object_get(r, "envelope_artifact")));
	if (get(c, path, &env) < 0 || !(e = json_loadb(env.ptr, env.len, 0, NULL)))
		report(c, 0, "manifest envelope: cannot read it");
	free(path);
	if (e) {
		if (dsse_verify(e, c->keys, c->nkeys, &payload, keyid) < 0)
			report(c, 0, "manifest signature: %s", ota_error_last());
		else if (payload.len != manifest.len || memcmp(payload.ptr, manifest.ptr, manifest.len) != 0)
			report(c, 0, "manifest signature: the signed manifest differs from the stored manifest");
		else
			report(c, 1, "manifest signature (key %.16s)", keyid);
	}
	m = json_loadb(manifest.ptr ? manifest.ptr : "", manifest.len, 0, NULL);
	if (!m) {
		report(c, 0, "manifest: not valid JSON");
		goto out;
	}
	if (manifest_check(m) < 0)
		report(c, 0, "%s", ota_error_last());
	else
		report(c, 1, "manifest fields (schema)");
	/* the commit it names exists in the daemon's mirror, with that tree */
	{
		json_t *g = json_object_get(m, "git");
		const char *commit = json_string_value(json_object_get(g, "commit"));
		const char *repo = json_string_value(json_object_get(g, "repo"));
		if (commit && repo) {
			struct buf ans = BUF_INIT;
			char *erepo = httpc_escape(repo);
			char *cpath = xasprintf("/api/v1/commits/%s?repo=%s", commit, erepo);
			json_t *cj = NULL;
			if (get(c, cpath, &ans) < 0 || !(cj = json_loadb(ans.ptr, ans.len, 0, NULL)))
				report(c, 0, "commit %.12s: not found in the mirror of %s (%s)", commit, repo, ota_error_last());
			else if (json_string_value(json_object_get(g, "tree")) &&
				 strcmp(json_string_value(json_object_get(cj, "tree")), json_string_value(json_object_get(g, "tree"))))
				report(c, 0, "commit %.12s: its tree differs from the manifest's", commit);
			else
				report(c, 1, "commit %.12s exists in the mirror of %s, tree matches", commit, repo);
			json_decref(cj);
			free(cpath);
			free(erepo);
			buf_release(&ans);
		}
	}
	mkey = json_string_value(json_object_get(m, "key_id"));
	if (!key_by_id(c, mkey))
		report(c, 0, "manifest key %s is not a trusted key", mkey ? mkey : "(none)");

	/* every image */
	arts = json_object_get(r, "artifacts");
	json_array_foreach(json_object_get(m, "images"), i, img) {
		const char *name = json_string_value(json_object_get(img, "name"));
		struct buf bytes = BUF_INIT;
		struct mcuboot_info info;
		json_t *found = NULL;
		size_t k;
		json_array_foreach(arts, k, art)
			if (!strcmp(json_string_value(json_object_get(art, "name")), name))
				found = art;
		if (!found) {
			report(c, 0, "%s: listed in the manifest but not in the release", name);
			continue;
		}
		path = xasprintf("/api/v1/artifacts/%lld", (long long)json_integer_value(json_object_get(found, "id")));
		if (get(c, path, &bytes) < 0) {
			report(c, 0, "%s: %s", name, ota_error_last());
		} else {
			sha256_hex(bytes.ptr, bytes.len, sha);
			if (strcmp(sha, json_string_value(json_object_get(img, "sha256"))) != 0 ||
			    (json_int_t)bytes.len != json_integer_value(json_object_get(img, "size")))
				report(c, 0, "%s: sha256 %s does not match the manifest", name, sha);
			else if (!key_by_id(c, mkey) || mcuboot_verify(&info, bytes.ptr, bytes.len, key_by_id(c, mkey)) < 0)
				report(c, 0, "%s: %s", name, key_by_id(c, mkey) ? ota_error_last() : "no trusted key to check it");
			else if (!info.has_security_counter ||
				 (json_int_t)info.security_counter != json_integer_value(json_object_get(m, "security_counter")))
				report(c, 0, "%s: security counter %u differs from the manifest's", name, info.security_counter);
			else
				report(c, 1, "%s: digest, MCUboot signature, version %u.%u.%u+%u, counter %u", name, info.major,
				       info.minor, info.revision, info.build, info.security_counter);
		}
		free(path);
		buf_release(&bytes);
	}

	/* provenance */
	path = xasprintf("/api/v1/artifacts/%lld", (long long)json_integer_value(json_object_get(r, "provenance_artifact")));
	buf_clear(&payload);
	if (get(c, path, &prov) < 0 || !(p = json_loadb(prov.ptr, prov.len, 0, NULL))) {
		report(c, 0, "provenance: cannot read it");
	} else if (dsse_verify(p, c->keys, c->nkeys, &payload, keyid) < 0) {
		report(c, 0, "provenance signature: %s", ota_error_last());
	} else if (!(stmt = json_loadb(payload.ptr, payload.len, 0, NULL)) || slsa_statement_check(stmt) < 0) {
		report(c, 0, "provenance: %s", stmt ? ota_error_last() : "payload is not JSON");
	} else {
		json_t *subjects = json_object_get(stmt, "subject"), *s;
		size_t nimg = json_array_size(json_object_get(m, "images")), matched = 0, k;
		char msha[65];
		int ok = json_array_size(subjects) == nimg + 1;
		report(c, 1, "provenance signature (key %.16s), SLSA v1 statement", keyid);
		sha256_hex(manifest.ptr ? manifest.ptr : "", manifest.len, msha);
		json_array_foreach(subjects, k, s) {
			const char *sn = json_string_value(json_object_get(s, "name"));
			const char *sd = json_string_value(json_object_get(json_object_get(s, "digest"), "sha256"));
			json_array_foreach(json_object_get(m, "images"), i, img)
				if (sn && sd && !strcmp(sn, json_string_value(json_object_get(img, "name"))) &&
				    !strcmp(sd, json_string_value(json_object_get(img, "sha256"))))
					matched++;
			if (sn && sd && !strcmp(sn, "release/manifest.json") && !strcmp(sd, msha))
				matched++;
		}
		report(c, ok && matched == nimg + 1, "provenance subjects are the %zu image(s) and the manifest", nimg);
	}
	free(path);
out:
	json_decref(r);
	json_decref(m);
	json_decref(e);
	json_decref(p);
	json_decref(stmt);
	buf_release(&rel);
	buf_release(&manifest);
	buf_release(&env);
	buf_release(&prov);
	buf_release(&payload);
	printf("%s\n", c->failed ? "release does NOT verify" : "release verifies");
	return c->failed ? 1 : 0;
}

int otactl_verify(const char *url, const char *token, int argc, char **argv)
{
	struct ctx c = { url, token, { 0 }, { { 0 } }, 0, 0 };
	const char *what = NULL;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--key") && i + 1 < argc) {
			struct buf pem = BUF_INIT;
			if (ota_read_file(&pem, argv[++i], 1 << 20) < 0 || add_key(&c, pem.ptr, pem.len) < 0) {
				fprintf(stderr, "otactl: cannot load public key %s: %s\n", argv[i], ota_error_last());
				buf_release(&pem);
				return 2;
			}
			buf_release(&pem);
		} else if (!what) {
			what = argv[i];
		} else {
			fprintf(stderr, "otactl: verify: unexpected argument '%s'\n", argv[i]);
			return 2;
		}
	}
	if (!what) {
		fprintf(stderr, "usage: otactl verify RELEASE [--key PUB.pem]... | otactl verify IMAGE --key PUB.pem\n");
		return 2;
	}
	if (!c.nkeys && strspn(what, "0123456789") == strlen(what)) {
		/* trust what the daemon publishes */
		struct buf keys = BUF_INIT;
		json_t *arr, *k;
		size_t i;
		if (get(&c, "/api/v1/keys", &keys) < 0 || !(arr = json_loadb(keys.ptr, keys.len, 0, NULL))) {
			fprintf(stderr, "otactl: cannot fetch the daemon's public keys: %s\n", ota_error_last());
			buf_release(&keys);
			return 3;
		}
		json_array_foreach(arr, i, k)
			if (json_is_string(json_object_get(k, "public_pem")))
				add_key(&c, json_string_value(json_object_get(k, "public_pem")),
					strlen(json_string_value(json_object_get(k, "public_pem"))));
		json_decref(arr);
		buf_release(&keys);
	}
	if (!c.nkeys) {
		fprintf(stderr, "otactl: no public key to verify with: give --key PUB.pem\n");
		return 2;
	}
	rc = strspn(what, "0123456789") == strlen(what) ? verify_release(&c, what) : verify_image_file(&c, what);
	for (size_t i = 0; i < c.nkeys; i++)
		EVP_PKEY_free(c.keys[i]);
	return rc;
}
