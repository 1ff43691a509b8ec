/*
 * relverify.h - check a release end to end: the one verification behind
 * `otactl verify RELEASE` and the status page's "Verification" section
 * (GET /api/v1/releases/ID/verification).
 *
 * The checks, in the order of the chain from commit to images:
 *   commit      the manifest's commit exists in the repository's mirror,
 *               with the manifest's tree;
 *   manifest    the manifest's signing chain, when there is one and a root
 *               is given, ends at the root (else the key must be given);
 *               the manifest's DSSE envelope is signed by a trusted key and
 *               carries exactly the stored manifest; its fields are the
 *               documented ones; the key it names is trusted;
 *   image       each image's bytes have the manifest's sha256 and size, and
 *               are a valid MCUboot image signed by the manifest's key with
 *               the manifest's security counter;
 *   provenance  the provenance envelope is signed by a trusted key, is a
 *               well-formed SLSA v1 statement, and its subjects are exactly
 *               the images and the manifest with the same digests.
 *
 * Nothing is trusted from the release itself: the trusted keys are given.
 * Where the bytes come from is the caller's (struct relverify_src): otactl
 * reads them over HTTP, the daemon from its own database and store.
 */
#ifndef OTA_RELVERIFY_H
#define OTA_RELVERIFY_H

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdint.h>

#include "../common/util.h"

#define RELVERIFY_MAX_KEYS 16

struct relverify_keys {
	EVP_PKEY *key[RELVERIFY_MAX_KEYS];
	char id[RELVERIFY_MAX_KEYS][65];
	size_t n;
	/* issue 13 (pki.h), both borrowed and optional: with a root, a
	 * manifest's "signing_chain" that ends at it (valid at the manifest's
	 * built_at, right key usage, not listed in crl) makes its leaf key
	 * trusted for that release, configured or not. */
	X509 *root;
	const X509_CRL *crl;
};

/* Trust a public key (PEM); OTA_EINVAL if it does not load. */
int relverify_keys_add_pem(struct relverify_keys *k, const char *pem, size_t len);
void relverify_keys_release(struct relverify_keys *k);

struct relverify_src {
	/* The release as GET /api/v1/releases/ID answers it (new reference). */
	int (*release)(void *arg, const char *id, json_t **out);
	/* An artifact's bytes by its id; OTA_ENOTFOUND if absent. */
	int (*artifact)(void *arg, int64_t id, struct buf *out);
	/* The commit in repo's mirror as GET /api/v1/commits/ID answers it
	 * (new reference, with "tree"); OTA_ENOTFOUND if it is not there. */
	int (*commit)(void *arg, const char *repo, const char *commit, json_t **out);
	void *arg;
};

/*
 * Verify release id.  *out (new reference) is
 *   {"release": {"id", "product", "version", "security_counter"},
 *    "ok": bool,
 *    "checks": [{"step": "commit"|"manifest"|"image"|"provenance",
 *                "name": the image's name (step image only),
 *                "ok": bool, "text": what was checked or what failed}]}
 * Returns 0 when every check passed, 1 when one failed, negative (no
 * *out) when the release itself cannot be read.
 */
int relverify_release(json_t **out, const struct relverify_src *src, const struct relverify_keys *keys,
		      const char *id);

#endif
