/*
 * verify.c - `otactl verify RELEASE [--key PUB.pem]...` and
 * `otactl verify IMAGE --key PUB.pem`.
 *
 * A release is checked by orchestrator/relverify.c (the same walk the
 * status page shows: commit, manifest and its signature, every image,
 * provenance), reading the release, its artifacts and the commit over the
 * daemon's HTTP API; one line per check.  Trusted keys are the --key
 * files, else the daemon's published keys (GET /api/v1/keys); with --root
 * ROOT.crt.pem (or, with neither, the daemon's GET /api/v1/trust) a release's
 * own signing chain is checked up to that root (orchestrator/pki.h), and
 * the daemon's revocation list is applied when the root signed it.  Nothing
 * is trusted from the release itself but what the root certified.
 */
#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/pki.h"
#include "../orchestrator/relverify.h"

struct ctx {
	const char *url, *token;
	struct relverify_keys keys;
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

static int verify_image_file(struct ctx *c, const char *path)
{
	struct buf img = BUF_INIT;
	struct mcuboot_info info;
	int ok = 0;

	if (ota_read_file(&img, path, (size_t)1 << 30) < 0) {
		report(c, 0, "%s: %s", path, ota_error_last());
		return 1;
	}
	for (size_t i = 0; i < c->keys.n && !ok; i++)
		ok = mcuboot_verify_sealed(&info, img.ptr, img.len, c->keys.key[i]) == 0;
	if (ok)
		report(c, 1, "%s: MCUboot image %u.%u.%u+%u, security counter %u, signature valid", path, info.major,
		       info.minor, info.revision, info.build, info.security_counter);
	else
		report(c, 0, "%s: %s", path, ota_error_last());
	buf_release(&img);
	return c->failed;
}

/* relverify's sources, over the daemon's API */
static int get_json(struct ctx *c, const char *path, json_t **out)
{
	struct buf body = BUF_INIT;
	json_error_t err;
	int rc = get(c, path, &body);

	if (rc == 0 && !(*out = json_loadb(body.ptr, body.len, 0, &err)))
		rc = ota_error_set(OTA_ERROR, "GET %s: not JSON: %s", path, err.text);
	buf_release(&body);
	return rc;
}

static int src_release(void *arg, const char *id, json_t **out)
{
	char *path = xasprintf("/api/v1/releases/%s", id);
	int rc = get_json(arg, path, out);
	free(path);
	return rc;
}

static int src_artifact(void *arg, int64_t id, struct buf *out)
{
	char *path = xasprintf("/api/v1/artifacts/%lld", (long long)id);
	int rc = get(arg, path, out);
	free(path);
	return rc;
}

static int src_commit(void *arg, const char *repo, const char *commit, json_t **out)
{
	char *erepo = httpc_escape(repo), *ecommit = httpc_escape(commit);
	char *path = xasprintf("/api/v1/commits/%s?repo=%s", ecommit, erepo);
	int rc = get_json(arg, path, out);
	free(path);
	free(erepo);
	free(ecommit);
	return rc;
}

/*
 * issue 13: without --root (and without --key), the daemon's trust root;
 * the daemon's revocation list in any case, accepted only when it is signed
 * by the root in use.
 */
static int trust_from_daemon(struct ctx *c, X509 **root, X509_CRL **crl)
{
	json_t *t = NULL;
	const char *rp, *cp;
	int64_t number = 0;
	int rc = 0;

	if (get_json(c, "/api/v1/trust", &t) < 0)
		return 0; /* an older daemon: keys only */
	rp = json_string_value(json_object_get(t, "root_pem"));
	cp = json_string_value(json_object_get(t, "revocations_pem"));
	if (!*root && !c->keys.n && rp && (rc = pki_root_load(root, rp, strlen(rp))) < 0)
		ota_error_prefix("the daemon's trust root");
	if (rc == 0 && *root && cp && (rc = pki_crl_load(crl, &number, cp, strlen(cp), *root)) < 0)
		ota_error_prefix("the daemon's revocation list");
	json_decref(t);
	return rc;
}

static int verify_release(struct ctx *c, const char *id)
{
	const struct relverify_src src = { src_release, src_artifact, src_commit, c };
	json_t *ans = NULL, *rel, *chk;
	size_t i;
	int rc = relverify_release(&ans, &src, &c->keys, id);

	if (rc < 0) {
		fprintf(stderr, "otactl: %s\n", ota_error_last());
		return 5;
	}
	rel = json_object_get(ans, "release");
	printf("release %s: %s %s (security counter %lld)\n", id, json_string_value(json_object_get(rel, "product")),
	       json_string_value(json_object_get(rel, "version")),
	       (long long)json_integer_value(json_object_get(rel, "security_counter")));
	json_array_foreach(json_object_get(ans, "checks"), i, chk)
		report(c, json_is_true(json_object_get(chk, "ok")), "%s", json_string_value(json_object_get(chk, "text")));
	printf("%s\n", rc ? "release does NOT verify" : "release verifies");
	json_decref(ans);
	return rc ? 1 : 0;
}

int otactl_verify(const char *url, const char *token, int argc, char **argv)
{
	struct ctx c = { url, token, { { 0 }, { { 0 } }, 0, NULL, NULL }, 0 };
	const char *what = NULL, *root_file = NULL;
	X509 *root = NULL;
	X509_CRL *crl = NULL;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--root") && i + 1 < argc) {
			root_file = argv[++i];
		} else if (!strcmp(argv[i], "--key") && i + 1 < argc) {
			struct buf pem = BUF_INIT;
			if (ota_read_file(&pem, argv[++i], 1 << 20) < 0 || relverify_keys_add_pem(&c.keys, pem.ptr, pem.len) < 0) {
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
	if (root_file && pki_root_load_file(&root, root_file) < 0) {
		fprintf(stderr, "otactl: cannot load the trust root: %s\n", ota_error_last());
		return 2;
	}
	if (strspn(what, "0123456789") == strlen(what) && trust_from_daemon(&c, &root, &crl) < 0) {
		fprintf(stderr, "otactl: %s\n", ota_error_last());
		X509_free(root);
		return 3;
	}
	c.keys.root = root;
	c.keys.crl = crl;
	if (!c.keys.n && !root && strspn(what, "0123456789") == strlen(what)) {
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
				relverify_keys_add_pem(&c.keys, json_string_value(json_object_get(k, "public_pem")),
					strlen(json_string_value(json_object_get(k, "public_pem"))));
		json_decref(arr);
		buf_release(&keys);
	}
	if (!c.keys.n && !root) {
		fprintf(stderr, "otactl: no public key to verify with: give --key PUB.pem or --root ROOT.crt.pem\n");
		return 2;
	}
	rc = strspn(what, "0123456789") == strlen(what) ? verify_release(&c, what) : verify_image_file(&c, what);
	relverify_keys_release(&c.keys);
	X509_free(root);
	X509_CRL_free(crl);
	return rc;
}
