/*
 * trust.c - the device side of the signing PKI; see trust.h.  All X.509
 * and CRL checks are orchestrator/pki.c's (the same code as otacd's
 * verifier), DSSE is provenance.c's, MCUboot mcuboot.c's.
 */
#include "trust.h"

#include <stdlib.h>
#include <string.h>

#include "../orchestrator/keys.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/pki.h"
#include "../orchestrator/provenance.h"

int sim_trust_init(struct sim_trust *t, const char *root_path)
{
	memset(t, 0, sizeof(*t));
	return root_path ? pki_root_load_file(&t->root, root_path) : 0;
}

void sim_trust_release(struct sim_trust *t)
{
	X509_free(t->root);
	X509_CRL_free(t->crl);
	memset(t, 0, sizeof(*t));
}

static int refuse(struct sim_trust *t, struct sim_image *img, const char *why)
{
	t->chain_refused++;
	sim_image_refuse(img, why);
	return ota_error_set(OTA_EINVAL, "image %.12s: %s", img->sha256, why);
}

int sim_trust_verify_image(struct sim_trust *t, struct sim_imgcache *c, struct sim_image *img, const void *data,
			   size_t len, const void *env, size_t envlen, EVP_PKEY **boot_keys, size_t nboot)
{
	json_t *e = env ? json_loadb(env, envlen, 0, NULL) : NULL, *m = NULL, *chain, *im;
	struct buf payload = BUF_INIT;
	EVP_PKEY *leaf = NULL;
	char keyid[65] = "", why[512];
	time_t at = 0;
	size_t i;
	int rc, listed = 0;

	if (img->state == SIM_IMG_OK || img->state == SIM_IMG_BAD)
		return img->state == SIM_IMG_OK ? 0 : OTA_EINVAL;
	if (!e) {
		rc = refuse(t, img, "no signed manifest for its release");
		goto out;
	}
	/* 1. the chain, read from the (not yet verified) payload */
	{
		struct buf raw = BUF_INIT;
		const char *b64 = json_string_value(json_object_get(e, "payload"));
		if (!b64 || dsse_base64_decode(&raw, b64, strlen(b64)) < 0 ||
		    !(m = json_loadb(raw.ptr ? raw.ptr : "", raw.len, 0, NULL))) {
			buf_release(&raw);
			rc = refuse(t, img, "the release's manifest envelope is malformed");
			goto out;
		}
		buf_release(&raw);
	}
	chain = json_object_get(m, "signing_chain");
	if (!chain) {
		rc = refuse(t, img, "the release's manifest has no signing chain");
		goto out;
	}
	if (pki_parse_time(json_string_value(json_object_get(m, "built_at")), &at) < 0 ||
	    pki_chain_verify(&leaf, keyid, t->root, chain, at, t->crl) < 0) {
		snprintf(why, sizeof(why), "%s", ota_error_last());
		rc = refuse(t, img, why);
		goto out;
	}
	/* 2. the envelope by that key */
	if (dsse_verify(e, &leaf, 1, &payload, NULL) < 0) {
		snprintf(why, sizeof(why), "manifest signature: %s", ota_error_last());
		rc = refuse(t, img, why);
		goto out;
	}
	/* 3. the image is the manifest's */
	json_array_foreach(json_object_get(m, "images"), i, im)
		if (!strcmp(json_string_value(json_object_get(im, "sha256")) ?: "", img->sha256))
			listed = 1;
	if (!listed) {
		rc = refuse(t, img, "the image is not one of its release's manifest");
		goto out;
	}
	/* 4. the bootloader's view: one of its key slots must be the leaf */
	if (nboot) {
		char bid[65];
		int held = 0;
		for (size_t k = 0; k < nboot && !held; k++)
			held = pubkey_id(boot_keys[k], bid) == 0 && !strcmp(bid, keyid);
		if (!held) {
			snprintf(why, sizeof(why), "the bootloader holds no slot for signing key %.16s: installing would brick",
				 keyid);
			rc = refuse(t, img, why);
			goto out;
		}
	}
	rc = sim_imgcache_verify_with(c, img, data, len, &leaf, 1);
	if (rc == 0) {
		json_decref(img->chain);
		img->chain = json_incref(chain);
		img->signed_at = (int64_t)at;
	}
out:
	EVP_PKEY_free(leaf);
	json_decref(e);
	json_decref(m);
	buf_release(&payload);
	return rc;
}

int sim_trust_accept_crl(struct sim_trust *t, struct sim_imgcache *c, const void *data, size_t len)
{
	X509_CRL *crl = NULL;
	int64_t number = 0;
	int rc;

	if ((rc = pki_crl_load(&crl, &number, data, len, t->root)) < 0) {
		t->crl_refused++;
		return rc;
	}
	if (number <= t->number) {
		X509_CRL_free(crl);
		t->crl_refused++;
		return ota_error_set(OTA_ECONFLICT, "revocation list %lld is not newer than the held %lld",
				     (long long)number, (long long)t->number);
	}
	X509_CRL_free(t->crl);
	t->crl = crl;
	t->number = number;
	t->crl_accepted++;
	/* judge again every image taken on trust: even one offered before */
	for (size_t i = 0; i < c->n; i++) {
		struct sim_image *img = c->v[i];
		if (img->state != SIM_IMG_OK || !img->chain)
			continue;
		if (pki_chain_verify(NULL, NULL, t->root, img->chain, (time_t)img->signed_at, t->crl) < 0) {
			sim_image_refuse(img, ota_error_last());
			t->images_revoked++;
		}
	}
	return 0;
}
