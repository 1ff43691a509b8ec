/*
 * pki.c - the signing PKI: root, signing certificates, chains, revocation
 * lists; see pki.h and docs/security.md ("The update channel's signing PKI").
 *
 * Why: one flat signing key means every verifier must be told about every
 * key, a key that leaves the config makes old releases unverifiable, and a
 * leaked key stays good forever.  With an offline root, verifiers hold one
 * certificate; a release brings the certificate of the key that signed it,
 * and a root-signed CRL takes a leaked key out of service everywhere.
 *
 * How: certificates and lists are built and checked with OpenSSL's X509
 * API only (X509V3_EXT_conf_nid for extensions, X509_verify_cert for the
 * chain with the check time set to the signing time, X509_CRL_verify for
 * lists).  The root may be any sign_key (a file or a PKCS#11 token): its
 * EVP_PKEY signs the certificate or list.  The daemon's trust state (root +
 * held list) is one process-wide struct behind a mutex.
 */
#include "pki.h"

#include <errno.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers -------------------------------------------------------------- */

static const EVP_MD *md_for(EVP_PKEY *k)
{
	enum sign_alg alg;
	if (pubkey_alg(k, &alg) == 0 && alg == SIGN_ED25519)
		return NULL;
	return EVP_sha256();
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	ok = ext && X509_add_ext(cert, ext, -1) == 1;
	X509_EXTENSION_free(ext);
	return ok ? 0 : ota_error_set(OTA_ERROR, "cannot add the %s extension", OBJ_nid2sn(nid));
}

static int set_serial(X509 *cert)
{
	BIGNUM *bn = BN_new();
	int ok = bn && BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
		 BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
	BN_free(bn);
	return ok ? 0 : ota_error_set(OTA_ERROR, "cannot draw a serial number");
}

static X509_NAME *name_cn(const char *cn)
{
	X509_NAME *n = X509_NAME_new();
	if (n && X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) != 1) {
		X509_NAME_free(n);
		n = NULL;
	}
	return n;
}

int pki_cert_pem(X509 *cert, struct buf *out)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL;
	long n;
	int rc = 0;

	if (!bio || PEM_write_bio_X509(bio, cert) != 1 || (n = BIO_get_mem_data(bio, &data)) <= 0)
		rc = ota_error_set(OTA_ERROR, "cannot write the certificate as PEM");
	else if (buf_put(out, data, (size_t)n) < 0)
		rc = ota_error_set(OTA_ETOOBIG, "certificate does not fit its buffer");
	BIO_free(bio);
	ERR_clear_error();
	return rc;
}

int pki_crl_pem(const X509_CRL *crl, struct buf *out)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL;
	long n;
	int rc = 0;

	if (!bio || PEM_write_bio_X509_CRL(bio, (X509_CRL *)crl) != 1 || (n = BIO_get_mem_data(bio, &data)) <= 0)
		rc = ota_error_set(OTA_ERROR, "cannot write the revocation list as PEM");
	else if (buf_put(out, data, (size_t)n) < 0)
		rc = ota_error_set(OTA_ETOOBIG, "revocation list does not fit its buffer");
	BIO_free(bio);
	ERR_clear_error();
	return rc;
}

int pki_cert_load(X509 **out, const void *pem, size_t len)
{
	BIO *bio;

	*out = NULL;
	if (!pem || !len || len > PKI_CERT_MAX)
		return ota_error_set(OTA_EINVAL, "certificate: empty or larger than %d bytes", PKI_CERT_MAX);
	bio = BIO_new_mem_buf(pem, (int)len);
	*out = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	ERR_clear_error();
	return *out ? 0 : ota_error_set(OTA_EINVAL, "certificate: not a PEM \"CERTIFICATE\"");
}

int pki_cert_keyid(X509 *cert, char out[65])
{
	EVP_PKEY *k = X509_get0_pubkey(cert);
	return k ? pubkey_id(k, out) : ota_error_set(OTA_EINVAL, "certificate without a usable public key");
}

int pki_parse_time(const char *s, time_t *out)
{
	struct tm tm;
	const char *end;

	memset(&tm, 0, sizeof(tm));
	if (!s || !(end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)))
		return ota_error_set(OTA_EINVAL, "time '%s' is not RFC 3339 UTC", s ? s : "");
	if (*end == '.')
		for (end++; *end >= '0' && *end <= '9'; end++)
			;
	if (strcmp(end, "Z") != 0)
		return ota_error_set(OTA_EINVAL, "time '%s' is not RFC 3339 UTC (want ...Z)", s);
	*out = timegm(&tm);
	return 0;
}

/* ---- root ------------------------------------------------------------------ */

int pki_root_load(X509 **out, const void *pem, size_t len)
{
	X509 *x = NULL;
	int rc;

	if ((rc = pki_cert_load(&x, pem, len)) < 0) {
		ota_error_prefix("trust root");
		return rc;
	}
	if (!(X509_get_extension_flags(x) & EXFLAG_SS) || X509_check_ca(x) < 1 ||
	    !(X509_get_key_usage(x) & KU_KEY_CERT_SIGN)) {
		X509_free(x);
		return ota_error_set(OTA_EINVAL, "trust root: not a self-signed CA certificate with keyCertSign");
	}
	*out = x;
	return 0;
}

int pki_root_load_file(X509 **out, const char *path)
{
	struct buf b = BUF_INIT;
	int rc = ota_read_file(&b, path, PKI_CERT_MAX);

	*out = NULL;
	if (rc == 0 && (rc = pki_root_load(out, b.ptr, b.len)) < 0)
		ota_error_prefix("%s", path);
	buf_release(&b);
	return rc;
}

static int make_cert(X509 **out, EVP_PKEY *signer, X509 *issuer, EVP_PKEY *subject, const char *cn, time_t nb,
		     time_t na, int ca)
{
	X509 *x = X509_new();
	X509_NAME *name = name_cn(cn);
	int rc = 0;

	*out = NULL;
	if (!x || !name || X509_set_version(x, X509_VERSION_3) != 1 || set_serial(x) < 0 ||
	    X509_set_subject_name(x, name) != 1 ||
	    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) != 1 ||
	    !ASN1_TIME_set(X509_getm_notBefore(x), nb) || !ASN1_TIME_set(X509_getm_notAfter(x), na) ||
	    X509_set_pubkey(x, subject) != 1) {
		rc = ota_error_set(OTA_ERROR, "cannot build the certificate");
		goto out;
	}
	if ((rc = add_ext(x, issuer ? issuer : x, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE")) < 0 ||
	    (rc = add_ext(x, issuer ? issuer : x, NID_key_usage,
			  ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature")) < 0 ||
	    (!ca && (rc = add_ext(x, issuer, NID_ext_key_usage, "critical,codeSigning")) < 0) ||
	    (rc = add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash")) < 0)
		goto out;
	if (issuer && (rc = add_ext(x, issuer, NID_authority_key_identifier, "keyid:always")) < 0)
		goto out;
	if (X509_sign(x, signer, md_for(signer)) <= 0) {
		rc = ota_error_set(OTA_ERROR, "signing the certificate failed");
		goto out;
	}
	*out = x;
	x = NULL;
out:
	ERR_clear_error();
	X509_NAME_free(name);
	X509_free(x);
	return rc;
}

int pki_root_init(const char *dir, const char *cn, int days, const struct sign_key *key)
{
	char *kpath = xasprintf("%s/root.key.pem", dir), *cpath = xasprintf("%s/root.crt.pem", dir);
	EVP_PKEY *gen = NULL, *signer, *pub;
	X509 *cert = NULL;
	struct buf pem = BUF_INIT;
	struct stat st;
	time_t now = time(NULL);
	int rc;

	if ((rc = ota_mkdir_p(dir, 0700)) < 0)
		goto out;
	if (stat(cpath, &st) == 0 || (!key && stat(kpath, &st) == 0)) {
		rc = ota_error_set(OTA_ECONFLICT, "%s already holds a root; refusing to overwrite it", dir);
		goto out;
	}
	if (key) {
		signer = sign_key_pkey(key);
		pub = sign_key_public(key);
	} else {
		BIO *bio = BIO_new(BIO_s_mem());
		char *data = NULL;
		long n;
		gen = EVP_EC_gen("P-256");
		if (!gen || !bio || PEM_write_bio_PrivateKey(bio, gen, NULL, NULL, 0, NULL, NULL) != 1 ||
		    (n = BIO_get_mem_data(bio, &data)) <= 0) {
			BIO_free(bio);
			rc = ota_error_set(OTA_ERROR, "cannot generate the root key");
			goto out;
		}
		rc = ota_write_file_atomic(kpath, data, (size_t)n, 0600);
		OPENSSL_cleanse(data, (size_t)n);
		BIO_free(bio);
		if (rc < 0)
			goto out;
		signer = pub = gen;
	}
	if ((rc = make_cert(&cert, signer, NULL, pub, cn, now - 60, now + (time_t)days * 86400, 1)) < 0 ||
	    (rc = pki_cert_pem(cert, &pem)) < 0)
		goto out;
	rc = ota_write_file_atomic(cpath, pem.ptr, pem.len, 0644);
out:
	ERR_clear_error();
	EVP_PKEY_free(gen);
	X509_free(cert);
	buf_release(&pem);
	free(kpath);
	free(cpath);
	return rc;
}

int pki_certify(struct buf *out, const struct sign_key *root, X509 *root_cert, EVP_PKEY *subject, const char *cn,
		time_t not_before, time_t not_after)
{
	X509 *x = NULL;
	enum sign_alg alg;
	char rid[65];
	int rc;

	if ((rc = pubkey_alg(subject, &alg)) < 0)
		return rc;
	if (not_after <= not_before)
		return ota_error_set(OTA_EINVAL, "the validity period is empty (not after <= not before)");
	if (pki_cert_keyid(root_cert, rid) < 0 || strcmp(rid, sign_key_id(root)) != 0)
		return ota_error_set(OTA_EINVAL, "the root key is not the key of the root certificate");
	if (X509_cmp_time(X509_get0_notAfter(root_cert), &not_after) < 0)
		return ota_error_set(OTA_EINVAL, "the certificate would outlive the root (shorten --days or --not-after)");
	if ((rc = make_cert(&x, sign_key_pkey(root), root_cert, subject, cn, not_before, not_after, 0)) == 0)
		rc = pki_cert_pem(x, out);
	X509_free(x);
	return rc;
}

/* ---- chains ---------------------------------------------------------------- */

int pki_chain_from_pem(json_t **out, const void *text, size_t len)
{
	static const char begin[] = "-----BEGIN CERTIFICATE-----", end[] = "-----END CERTIFICATE-----";
	const char *p = text, *stop = (const char *)text + len;
	json_t *arr = json_array();

	*out = NULL;
	while (p < stop) {
		const char *b = memmem(p, (size_t)(stop - p), begin, sizeof(begin) - 1), *e;
		X509 *x = NULL;
		if (!b)
			break;
		e = memmem(b, (size_t)(stop - b), end, sizeof(end) - 1);
		if (!e)
			break;
		e += sizeof(end) - 1;
		if (json_array_size(arr) == PKI_CHAIN_MAX) {
			json_decref(arr);
			return ota_error_set(OTA_EINVAL, "more than %d certificates", PKI_CHAIN_MAX);
		}
		if (pki_cert_load(&x, b, (size_t)(e - b)) < 0) {
			json_decref(arr);
			return OTA_EINVAL;
		}
		X509_free(x);
		json_array_append_new(arr, json_sprintf("%.*s\n", (int)(e - b), b));
		p = e;
	}
	if (!json_array_size(arr)) {
		json_decref(arr);
		return ota_error_set(OTA_EINVAL, "no PEM certificate in it");
	}
	*out = arr;
	return 0;
}

static const char *verify_reason(int err)
{
	switch (err) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return "a certificate of the chain had expired at the signing time";
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "a certificate of the chain was not yet valid at the signing time";
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		return "the chain does not end at the trusted root";
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
		return "a certificate's signature does not verify";
	case X509_V_ERR_INVALID_CA:
	case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
		return "an issuer of the chain is not a CA allowed to sign certificates";
	case X509_V_ERR_CERT_CHAIN_TOO_LONG:
	case X509_V_ERR_PATH_LENGTH_EXCEEDED:
		return "the chain is too long";
	default:
		return NULL;
	}
}

int pki_chain_verify(EVP_PKEY **leaf_out, char keyid[65], X509 *root, const json_t *chain, time_t at,
		     const X509_CRL *crl)
{
	STACK_OF(X509) *untrusted = sk_X509_new_null();
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	X509 *leaf = NULL;
	uint32_t flags;
	enum sign_alg alg;
	size_t i;
	json_t *v;
	int rc = 0, reason;

	if (leaf_out)
		*leaf_out = NULL;
	if (!untrusted || !store || !ctx) {
		rc = ota_error_set(OTA_ENOMEM, "out of memory");
		goto out;
	}
	if (!root) {
		rc = ota_error_set(OTA_EAUTH, "signing chain: no trust root configured");
		goto out;
	}
	if (!json_is_array(chain) || !json_array_size(chain) || json_array_size(chain) > PKI_CHAIN_MAX) {
		rc = ota_error_set(OTA_EINVAL, "signing chain: must be a list of 1 to %d PEM certificates", PKI_CHAIN_MAX);
		goto out;
	}
	json_array_foreach(chain, i, v) {
		X509 *x = NULL;
		const char *s = json_string_value(v);
		if (!s || pki_cert_load(&x, s, strlen(s)) < 0) {
			rc = ota_error_set(OTA_EINVAL, "signing chain[%zu]: not a PEM certificate", i);
			goto out;
		}
		if (i == 0)
			leaf = x;
		else if (!sk_X509_push(untrusted, x)) {
			X509_free(x);
			rc = ota_error_set(OTA_ENOMEM, "out of memory");
			goto out;
		}
	}
	flags = X509_get_extension_flags(leaf);
	if (flags & EXFLAG_SS) {
		rc = ota_error_set(OTA_EAUTH, "signing certificate is self-signed: a release must be signed by a key the root certified");
		goto out;
	}
	if (flags & EXFLAG_CA) {
		rc = ota_error_set(OTA_EAUTH, "signing certificate is a CA certificate, not a signing certificate");
		goto out;
	}
	if (!(flags & EXFLAG_KUSAGE) || !(X509_get_key_usage(leaf) & KU_DIGITAL_SIGNATURE) ||
	    (X509_get_key_usage(leaf) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN))) {
		rc = ota_error_set(OTA_EAUTH, "signing certificate: wrong key usage (want digitalSignature only)");
		goto out;
	}
	if (!(flags & EXFLAG_XKUSAGE) || !(X509_get_extended_key_usage(leaf) & XKU_CODE_SIGN)) {
		rc = ota_error_set(OTA_EAUTH, "signing certificate: wrong key usage (no extended key usage codeSigning)");
		goto out;
	}
	if (pubkey_alg(X509_get0_pubkey(leaf), &alg) < 0) {
		rc = ota_error_set(OTA_EAUTH, "signing certificate: %s", ota_error_last());
		goto out;
	}
	if (X509_STORE_add_cert(store, root) != 1 || X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1) {
		rc = ota_error_set(OTA_ERROR, "cannot set up the chain check");
		goto out;
	}
	X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), at);
	X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(ctx), PKI_CHAIN_MAX);
	X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(ctx), X509_V_FLAG_X509_STRICT);
	if (X509_verify_cert(ctx) != 1) {
		int err = X509_STORE_CTX_get_error(ctx);
		const char *why = verify_reason(err);
		rc = ota_error_set(OTA_EAUTH, "signing chain: %s (%s)", why ? why : "does not verify",
				   X509_verify_cert_error_string(err));
		goto out;
	}
	if (crl) {
		STACK_OF(X509) *built = X509_STORE_CTX_get0_chain(ctx);
		for (int k = 0; k < sk_X509_num(built); k++) {
			X509 *x = sk_X509_value(built, k);
			if (X509_cmp(x, root) == 0)
				continue;
			if (pki_crl_lists(crl, x, &reason)) {
				char id[65] = "";
				pki_cert_keyid(x, id);
				rc = ota_error_set(OTA_EAUTH, "signing certificate of key %.16s is revoked (%s, revocation list %lld)",
						   id, pki_reason_name(reason), (long long)pki_crl_number(crl));
				goto out;
			}
		}
	}
	if (keyid)
		pki_cert_keyid(leaf, keyid);
	if (leaf_out) {
		*leaf_out = X509_get_pubkey(leaf);
		if (!*leaf_out)
			rc = ota_error_set(OTA_ERROR, "cannot read the signing key");
	}
out:
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	sk_X509_pop_free(untrusted, X509_free);
	X509_free(leaf);
	return rc;
}

/* ---- revocation lists -------------------------------------------------------- */

static const struct {
	const char *name;
	int code;
} reasons[] = {
	{ "unspecified", CRL_REASON_UNSPECIFIED },
	{ "keyCompromise", CRL_REASON_KEY_COMPROMISE },
	{ "affiliationChanged", CRL_REASON_AFFILIATION_CHANGED },
	{ "superseded", CRL_REASON_SUPERSEDED },
	{ "cessationOfOperation", CRL_REASON_CESSATION_OF_OPERATION },
};

int pki_reason_code(const char *name)
{
	for (size_t i = 0; name && i < OTA_ARRAY_SIZE(reasons); i++)
		if (!strcasecmp(name, reasons[i].name))
			return reasons[i].code;
	return -1;
}

const char *pki_reason_name(int code)
{
	for (size_t i = 0; i < OTA_ARRAY_SIZE(reasons); i++)
		if (reasons[i].code == code)
			return reasons[i].name;
	return "unspecified";
}

int64_t pki_crl_number(const X509_CRL *crl)
{
	ASN1_INTEGER *n = crl ? X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL) : NULL;
	int64_t v = -1;

	if (!n || ASN1_INTEGER_get_int64(&v, n) != 1 || v < 0)
		v = -1;
	ASN1_INTEGER_free(n);
	ERR_clear_error();
	return v;
}

int pki_crl_load(X509_CRL **out, int64_t *number, const void *data, size_t len, X509 *root)
{
	X509_CRL *crl = NULL;
	const unsigned char *p = data;
	EVP_PKEY *rk;
	int rc = 0;

	*out = NULL;
	if (!data || !len || len > PKI_CRL_MAX)
		return ota_error_set(OTA_EINVAL, "revocation list: empty or larger than %d bytes", PKI_CRL_MAX);
	if (!root)
		return ota_error_set(OTA_EINVAL, "revocation list: no trust root configured to check it");
	if (memmem(data, len, "-----BEGIN X509 CRL-----", 24)) {
		BIO *bio = BIO_new_mem_buf(data, (int)len);
		crl = bio ? PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL) : NULL;
		BIO_free(bio);
	} else {
		crl = d2i_X509_CRL(NULL, &p, (long)len);
	}
	if (!crl) {
		rc = ota_error_set(OTA_EINVAL, "revocation list: not an X.509 CRL (PEM or DER)");
		goto out;
	}
	rk = X509_get0_pubkey(root);
	if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(root)) != 0 || !rk ||
	    X509_CRL_verify(crl, rk) != 1) {
		rc = ota_error_set(OTA_EAUTH, "revocation list: not signed by the trust root");
		goto out;
	}
	if ((*number = pki_crl_number(crl)) < 1) {
		rc = ota_error_set(OTA_EINVAL, "revocation list: no CRL number");
		goto out;
	}
	*out = crl;
	crl = NULL;
out:
	ERR_clear_error();
	X509_CRL_free(crl);
	return rc;
}

int pki_crl_lists(const X509_CRL *crl, X509 *cert, int *reason)
{
	X509_REVOKED *rev = NULL;
	ASN1_ENUMERATED *r;

	*reason = CRL_REASON_UNSPECIFIED;
	if (!crl || X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_issuer_name(cert)) != 0)
		return 0;
	if (X509_CRL_get0_by_serial((X509_CRL *)crl, &rev, X509_get0_serialNumber(cert)) != 1 || !rev)
		return 0;
	r = X509_REVOKED_get_ext_d2i(rev, NID_crl_reason, NULL, NULL);
	if (r)
		*reason = (int)ASN1_ENUMERATED_get(r);
	ASN1_ENUMERATED_free(r);
	ERR_clear_error();
	return 1;
}

static int add_revoked(X509_CRL *crl, const ASN1_INTEGER *serial, const ASN1_TIME *when, int reason)
{
	X509_REVOKED *rev = X509_REVOKED_new();
	ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();
	int ok = rev && e && X509_REVOKED_set_serialNumber(rev, (ASN1_INTEGER *)serial) == 1 &&
		 X509_REVOKED_set_revocationDate(rev, (ASN1_TIME *)when) == 1 && ASN1_ENUMERATED_set(e, reason) == 1 &&
		 X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, e, 0, 0) == 1 && X509_CRL_add0_revoked(crl, rev) == 1;
	ASN1_ENUMERATED_free(e);
	if (!ok)
		X509_REVOKED_free(rev);
	return ok ? 0 : ota_error_set(OTA_ERROR, "cannot add a revocation entry");
}

int pki_crl_issue(struct buf *out, const struct sign_key *root, X509 *root_cert, const X509_CRL *prev,
		  X509 *const *certs, size_t n, int reason)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *now = ASN1_TIME_set(NULL, time(NULL));
	ASN1_INTEGER *num = ASN1_INTEGER_new();
	STACK_OF(X509_REVOKED) *old = prev ? X509_CRL_get_REVOKED((X509_CRL *)prev) : NULL;
	int64_t next = prev ? pki_crl_number(prev) + 1 : 1;
	char rid[65];
	int rc = 0, dummy;

	if (pki_cert_keyid(root_cert, rid) < 0 || strcmp(rid, sign_key_id(root)) != 0) {
		rc = ota_error_set(OTA_EINVAL, "the root key is not the key of the root certificate");
		goto out;
	}
	if (!crl || !now || !num || X509_CRL_set_version(crl, X509_CRL_VERSION_2) != 1 ||
	    X509_CRL_set_issuer_name(crl, X509_get_subject_name(root_cert)) != 1 || X509_CRL_set1_lastUpdate(crl, now) != 1 ||
	    ASN1_INTEGER_set_int64(num, next) != 1 || X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1) {
		rc = ota_error_set(OTA_ERROR, "cannot build the revocation list");
		goto out;
	}
	for (int i = 0; i < sk_X509_REVOKED_num(old); i++) {
		X509_REVOKED *r = sk_X509_REVOKED_value(old, i);
		ASN1_ENUMERATED *e = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
		rc = add_revoked(crl, X509_REVOKED_get0_serialNumber(r), X509_REVOKED_get0_revocationDate(r),
				 e ? (int)ASN1_ENUMERATED_get(e) : CRL_REASON_UNSPECIFIED);
		ASN1_ENUMERATED_free(e);
		if (rc < 0)
			goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (prev && pki_crl_lists(prev, certs[i], &dummy))
			continue; /* already listed */
		if ((rc = add_revoked(crl, X509_get0_serialNumber(certs[i]), now, reason)) < 0)
			goto out;
	}
	X509_CRL_sort(crl);
	if (X509_CRL_sign(crl, sign_key_pkey(root), md_for(sign_key_pkey(root))) <= 0) {
		rc = ota_error_set(OTA_ERROR, "signing the revocation list failed");
		goto out;
	}
	rc = pki_crl_pem(crl, out);
out:
	ERR_clear_error();
	X509_CRL_free(crl);
	ASN1_TIME_free(now);
	ASN1_INTEGER_free(num);
	return rc;
}

/* ---- the daemon's trust state ------------------------------------------------ */

static struct {
	pthread_mutex_t lock;
	X509 *root;
	X509_CRL *crl;
	int64_t number;          /* read without the lock by check-ins */
} trust = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL, 0 };

int pki_trust_open(const char *root_path, const char *state_dir)
{
	struct buf b = BUF_INIT;
	X509_CRL *crl = NULL;
	int64_t number = 0;
	char *path;
	int rc;

	pki_trust_close();
	if (!root_path || !*root_path)
		return 0;
	if ((rc = pki_root_load_file(&trust.root, root_path)) < 0)
		return rc;
	/* before issue 16 the held list lived here; now the database holds it
	 * (trustdb.h) and this file is only read, for trustdb_import() */
	path = xasprintf("%s/revocations.crl.pem", state_dir ? state_dir : ".");
	if (access(path, F_OK) != 0)
		goto out;
	if ((rc = ota_read_file(&b, path, PKI_CRL_MAX)) == 0 &&
	    (rc = pki_crl_load(&crl, &number, b.ptr, b.len, trust.root)) == 0)
		pki_trust_install(crl, number);
	else
		ota_error_prefix("%s", path);
out:
	buf_release(&b);
	free(path);
	return rc;
}

void pki_trust_close(void)
{
	pthread_mutex_lock(&trust.lock);
	X509_free(trust.root);
	X509_CRL_free(trust.crl);
	trust.root = NULL;
	trust.crl = NULL;
	__atomic_store_n(&trust.number, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&trust.lock);
}

X509 *pki_trust_root(void)
{
	return trust.root;
}

X509_CRL *pki_trust_crl(void)
{
	X509_CRL *c;
	pthread_mutex_lock(&trust.lock);
	c = trust.crl;
	if (c)
		X509_CRL_up_ref(c);
	pthread_mutex_unlock(&trust.lock);
	return c;
}

int64_t pki_trust_crl_number(void)
{
	return __atomic_load_n(&trust.number, __ATOMIC_ACQUIRE);
}

int pki_trust_parse(X509_CRL **out, int64_t *number, const void *data, size_t len)
{
	if (!trust.root)
		return ota_error_set(OTA_EINVAL, "no trust_root is configured: revocation lists cannot be checked");
	return pki_crl_load(out, number, data, len, trust.root);
}

int pki_trust_install(X509_CRL *crl, int64_t number)
{
	int installed = 0;

	pthread_mutex_lock(&trust.lock);
	if (number > trust.number) {
		X509_CRL_free(trust.crl);
		trust.crl = crl;
		crl = NULL;
		__atomic_store_n(&trust.number, number, __ATOMIC_RELEASE);
		installed = 1;
	}
	pthread_mutex_unlock(&trust.lock);
	X509_CRL_free(crl);
	return installed;
}
