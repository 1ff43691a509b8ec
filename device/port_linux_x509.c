/*
 * port_linux_x509.c - libotadev's X.509 hooks on Linux (OpenSSL): the
 * signing chain of a release and the root's revocation list, with the
 * policy of orchestrator/pki.c (pki_chain_verify, pki_crl_load) so that a
 * device refuses what otacd's own verifier refuses.  The anchor is the
 * root certificate from the config's `anchor` (PEM file, kept as DER).
 */
#include "port_linux_x509.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int port_linux_x509_load_anchor(const char *path, unsigned char **der, size_t *len)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	int n = -1;

	if (f)
		fclose(f);
	*der = NULL;
	if (x && (X509_get_extension_flags(x) & EXFLAG_CA) && (X509_get_extension_flags(x) & EXFLAG_SS))
		n = i2d_X509(x, der);
	X509_free(x);
	if (n <= 0) {
		fprintf(stderr, "otacd-device: anchor %s: not a PEM self-signed CA certificate\n", path);
		return -1;
	}
	*len = (size_t)n;
	return 0;
}

/* The refusal of a revoked certificate with the list's reason (the reasons
 * otacd's `keys revoke --reason` writes, orchestrator/pki.c), so a device's
 * log says why as otacd's verifier does; *why must be a static string. */
static const char *revoked_why(X509_REVOKED *r)
{
	ASN1_ENUMERATED *e = r ? X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL) : NULL;
	long code = e ? ASN1_ENUMERATED_get(e) : CRL_REASON_UNSPECIFIED;

	ASN1_ENUMERATED_free(e);
	switch (code) {
	case CRL_REASON_KEY_COMPROMISE: return "signing certificate is revoked (keyCompromise)";
	case CRL_REASON_AFFILIATION_CHANGED: return "signing certificate is revoked (affiliationChanged)";
	case CRL_REASON_SUPERSEDED: return "signing certificate is revoked (superseded)";
	case CRL_REASON_CESSATION_OF_OPERATION: return "signing certificate is revoked (cessationOfOperation)";
	default: return "signing certificate is revoked (unspecified)";
	}
}

static X509 *cert_of(const uint8_t *p, size_t n)
{
	const unsigned char *q = p;
	X509 *x = d2i_X509(NULL, &q, (long)n);
	if (x && q != p + n) {
		X509_free(x);
		x = NULL;
	}
	return x;
}

static X509_CRL *crl_of(const uint8_t *p, size_t n)
{
	const unsigned char *q = p;
	X509_CRL *c = d2i_X509_CRL(NULL, &q, (long)n);
	if (c && q != p + n) {
		X509_CRL_free(c);
		c = NULL;
	}
	return c;
}

int port_linux_x509_crl(void *ctx, const uint8_t *anchor, size_t anchor_len, const uint8_t *crl, size_t len,
			uint64_t *number, const char **why)
{
	X509 *root = cert_of(anchor, anchor_len);
	X509_CRL *c = crl_of(crl, len);
	EVP_PKEY *k = root ? X509_get0_pubkey(root) : NULL;
	ASN1_INTEGER *num = NULL;
	int64_t v = -1;
	int rc = -1;

	(void)ctx;
	*why = "the revocation list is malformed";
	if (!root || !c)
		goto out;
	*why = "the revocation list is not signed by the trust root";
	if (!k || X509_NAME_cmp(X509_CRL_get_issuer(c), X509_get_subject_name(root)) != 0 || X509_CRL_verify(c, k) != 1)
		goto out;
	*why = "the revocation list has no CRL number";
	if (!(num = X509_CRL_get_ext_d2i(c, NID_crl_number, NULL, NULL)) || ASN1_INTEGER_get_int64(&v, num) != 1 || v < 0)
		goto out;
	*number = (uint64_t)v;
	*why = "";
	rc = 0;
out:
	ASN1_INTEGER_free(num);
	X509_CRL_free(c);
	X509_free(root);
	ERR_clear_error();
	return rc;
}

int port_linux_x509_chain(void *ctx, const struct otadev_x509_req *req, uint8_t *key, size_t cap, size_t *key_len,
			  const char **why)
{
	STACK_OF(X509) *untrusted = sk_X509_new_null();
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *sc = X509_STORE_CTX_new();
	X509 *root = cert_of(req->anchor, req->anchor_len), *leaf = NULL;
	X509_CRL *crl = req->crl ? crl_of(req->crl, req->crl_len) : NULL;
	unsigned char *der = NULL;
	uint32_t flags;
	int i, n, rc = -1;

	(void)ctx;
	*why = "signing chain: not DER certificates";
	if (!untrusted || !store || !sc || !root || req->ncerts < 1 || (req->crl && !crl))
		goto out;
	for (i = 0; i < req->ncerts; i++) {
		X509 *x = cert_of(req->cert[i], req->cert_len[i]);
		if (!x)
			goto out;
		if (i == 0)
			leaf = x;
		else if (!sk_X509_push(untrusted, x)) {
			X509_free(x);
			goto out;
		}
	}
	flags = X509_get_extension_flags(leaf);
	*why = "signing certificate is self-signed";
	if (flags & EXFLAG_SS)
		goto out;
	*why = "signing certificate is a CA certificate";
	if (flags & EXFLAG_CA)
		goto out;
	*why = "signing certificate: wrong key usage (want digitalSignature only)";
	if (!(flags & EXFLAG_KUSAGE) || !(X509_get_key_usage(leaf) & KU_DIGITAL_SIGNATURE) ||
	    (X509_get_key_usage(leaf) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)))
		goto out;
	*why = "signing certificate: no extended key usage codeSigning";
	if (!(flags & EXFLAG_XKUSAGE) || !(X509_get_extended_key_usage(leaf) & XKU_CODE_SIGN))
		goto out;
	*why = "signing chain: cannot set up the check";
	if (X509_STORE_add_cert(store, root) != 1 || X509_STORE_CTX_init(sc, store, leaf, untrusted) != 1)
		goto out;
	X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(sc), (time_t)req->at);
	X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(sc), OTADEV_CHAIN_CERTS);
	X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(sc), X509_V_FLAG_X509_STRICT);
	if (X509_verify_cert(sc) != 1) {
		int err = X509_STORE_CTX_get_error(sc);
		*why = err == X509_V_ERR_CERT_HAS_EXPIRED ? "signing certificate expired at the signing time"
		       : err == X509_V_ERR_CERT_NOT_YET_VALID ? "signing certificate not yet valid at the signing time"
		       : err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
				 err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
			       ? "signing chain does not end at the trusted root"
			       : "signing chain does not verify";
		goto out;
	}
	if (crl) {
		/* every certificate of the built chain but the root (pki.c's rule) */
		STACK_OF(X509) *built = X509_STORE_CTX_get0_chain(sc);
		for (int k = 0; k < sk_X509_num(built); k++) {
			X509_REVOKED *r = NULL;
			X509 *x = sk_X509_value(built, k);
			if (X509_cmp(x, root) == 0)
				continue;
			if (X509_CRL_get0_by_cert(crl, &r, x) == 1) {
				*why = revoked_why(r);
				goto out;
			}
		}
	}
	*why = "signing key does not fit the device's buffer";
	if ((n = i2d_PUBKEY(X509_get0_pubkey(leaf), &der)) <= 0 || (size_t)n > cap)
		goto out;
	memcpy(key, der, (size_t)n);
	*key_len = (size_t)n;
	*why = "";
	rc = 0;
out:
	OPENSSL_free(der);
	ERR_clear_error();
	X509_STORE_CTX_free(sc);
	X509_STORE_free(store);
	sk_X509_pop_free(untrusted, X509_free);
	X509_free(leaf);
	X509_free(root);
	X509_CRL_free(crl);
	return rc;
}
