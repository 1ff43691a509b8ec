/*
 * keys.c - signing keys behind one interface, the file backend, and public
 * keys for verification; see keys.h.
 *
 * Why: a release is signed twice over (the MCUboot image, the DSSE
 * provenance), by a key that is either a PEM file on a developer's machine
 * or a handle into an HSM in production.  Callers should not care which, and
 * verifiers (otactl, devices' tooling, `openssl` on an auditor's laptop) must
 * compute the same key id from the public half alone.
 *
 * How: sign_key_load() dispatches on the spec: "pkcs11:..." goes to
 * keys_pkcs11.c, anything else is a file path read here.  Every backend ends
 * with the same two EVP_PKEYs: the signing key (a file key, or an engine key
 * whose private half stays in the token) and its public half re-decoded from
 * DER SubjectPublicKeyInfo, so that the id, the PEM export and verification
 * never touch the engine.  Signing is EVP_DigestSign with SHA-256 for ECDSA
 * P-256 and no digest (pure) for Ed25519; all cryptography is OpenSSL's.
 * Private key files are read with a passphrase callback that never prompts,
 * and the bytes read are cleansed before they are freed.
 */
#include "keys.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define KEY_FILE_MAX (1024 * 1024)

const char *sign_alg_name(enum sign_alg alg)
{
	return alg == SIGN_ED25519 ? "ed25519" : "ecdsa-p256";
}

/* ---- public keys --------------------------------------------------- */

int pubkey_alg(EVP_PKEY *pkey, enum sign_alg *alg)
{
	char group[64];
	size_t glen = 0;
	const char *type;

	if (!pkey)
		return ota_error_set(OTA_EINVAL, "no key");
	switch (EVP_PKEY_get_base_id(pkey)) {
	case EVP_PKEY_ED25519:
		*alg = SIGN_ED25519;
		return 0;
	case EVP_PKEY_EC:
		if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) != 1) {
			ERR_clear_error();
			return ota_error_set(OTA_EINVAL, "EC key without a named curve is not supported (want P-256)");
		}
		if (strcmp(group, "prime256v1") != 0 && strcasecmp(group, "P-256") != 0)
			return ota_error_set(OTA_EINVAL, "EC curve %s is not supported (want P-256)", group);
		*alg = SIGN_ECDSA_P256;
		return 0;
	default:
		type = EVP_PKEY_get0_type_name(pkey);
		if (!type)
			type = OBJ_nid2sn(EVP_PKEY_get_base_id(pkey));
		return ota_error_set(OTA_EINVAL, "%s keys are not supported (want ECDSA P-256 or Ed25519)",
				     type ? type : "this kind of");
	}
}

int pubkey_id(EVP_PKEY *pub, char out[65])
{
	unsigned char *der = NULL, md[32];
	int len;

	len = pub ? i2d_PUBKEY(pub, &der) : -1;
	if (len <= 0) {
		ERR_clear_error();
		return ota_error_set(OTA_EINVAL, "cannot encode the public key");
	}
	SHA256(der, (size_t)len, md);
	OPENSSL_free(der);
	ota_hex(out, md, sizeof(md));
	return 0;
}

int pubkey_load_pem(EVP_PKEY **out, const void *pem, size_t len)
{
	EVP_PKEY *pkey = NULL;
	enum sign_alg alg;
	BIO *bio;
	int rc;

	*out = NULL;
	if (!pem || len == 0 || len > KEY_FILE_MAX)
		return ota_error_set(OTA_EINVAL, "public key: empty or too large");
	if (memmem(pem, len, "PRIVATE KEY-----", 16))
		return ota_error_set(OTA_EINVAL, "public key: got a PEM private key, expected a PUBLIC KEY");
	bio = BIO_new_mem_buf(pem, (int)len);
	if (!bio)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!pkey) {
		ERR_clear_error();
		return ota_error_set(OTA_EINVAL, "public key: not a PEM \"PUBLIC KEY\"");
	}
	if ((rc = pubkey_alg(pkey, &alg)) < 0) {
		EVP_PKEY_free(pkey);
		ota_error_prefix("public key");
		return rc;
	}
	*out = pkey;
	return 0;
}

int pubkey_verify(EVP_PKEY *pub, const void *msg, size_t len, const void *sig, size_t siglen)
{
	EVP_MD_CTX *ctx = NULL;
	enum sign_alg alg;
	int rc, ok;

	if ((rc = pubkey_alg(pub, &alg)) < 0)
		return rc;
	if (!sig || siglen == 0)
		return ota_error_set(OTA_EINVAL, "signature does not verify (empty signature)");
	ctx = EVP_MD_CTX_new();
	if (!ctx)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	ok = EVP_DigestVerifyInit(ctx, NULL, alg == SIGN_ECDSA_P256 ? EVP_sha256() : NULL, NULL, pub) == 1 &&
	     EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return ok ? 0 : ota_error_set(OTA_EINVAL, "signature does not verify");
}

/* ---- signing keys -------------------------------------------------- */

int sign_key_evp_sign(const struct sign_key *k, const void *msg, size_t len, struct buf *sig)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char *raw = NULL;
	size_t rawlen = 0;
	int rc = 0;

	if (!ctx)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	if (EVP_DigestSignInit(ctx, NULL, k->alg == SIGN_ECDSA_P256 ? EVP_sha256() : NULL, NULL, k->pkey) != 1 ||
	    EVP_DigestSign(ctx, NULL, &rawlen, msg, len) != 1) {
		rc = ota_error_set(OTA_ERROR, "%s: cannot start signing", k->spec);
		goto out;
	}
	raw = xmalloc(rawlen);
	if (EVP_DigestSign(ctx, raw, &rawlen, msg, len) != 1) {
		unsigned long e = ERR_peek_last_error();
		rc = ota_error_set(OTA_ERROR, "%s: signing failed%s%s", k->spec, e ? ": " : "",
				   e && ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "");
		goto out;
	}
	rc = buf_put(sig, raw, rawlen);
	if (rc < 0)
		ota_error_set(rc, "signature does not fit its buffer");
out:
	ERR_clear_error();
	free(raw);
	EVP_MD_CTX_free(ctx);
	return rc;
}

int sign_key_finish(struct sign_key *k)
{
	int rc;

	if ((rc = pubkey_alg(k->pub, &k->alg)) < 0)
		return rc;
	return pubkey_id(k->pub, k->id);
}

char *sign_key_redact_spec(const char *spec)
{
	struct buf b = BUF_INIT;
	const char *p = spec;
	int emitted = 0;   /* an attribute was copied since the last '?' */

	if (strncasecmp(p, "pkcs11:", 7) == 0) {
		buf_put(&b, p, 7);
		p += 7;
	}
	/* Copy every ';' or '?' separated attribute but pin-value. */
	while (*p) {
		char sep = 0;
		size_t n;

		if (*p == ';' || *p == '?')
			sep = *p++;
		if (sep == '?')
			emitted = 0;
		n = strcspn(p, ";?");
		if (strncasecmp(p, "pin-value=", 10) != 0) {
			if (sep == '?' || (sep && emitted))
				buf_putc(&b, sep);
			buf_put(&b, p, n);
			emitted = 1;
		} else if (sep == '?') {
			buf_putc(&b, sep);
		}
		p += n;
	}
	buf_puts(&b, "");
	return buf_detach(&b);
}

struct pass {
	const char *pin;
	int asked;
};

/* Never prompt: a PEM passphrase comes from the pin argument or not at all. */
static int pem_pass(char *out, int size, int rwflag, void *u)
{
	struct pass *p = u;
	size_t n;

	(void)rwflag;
	p->asked = 1;
	if (!p->pin)
		return -1;
	n = strlen(p->pin);
	if (n > (size_t)size)
		return -1;
	memcpy(out, p->pin, n);
	return (int)n;
}

static const struct sign_key_backend file_backend = { "file", NULL, NULL };

static int read_key_file(const char *path, unsigned char **data, size_t *len)
{
	struct stat st;
	FILE *f = fopen(path, "rb");
	size_t n;

	if (!f)
		return ota_error_set(errno == ENOENT ? OTA_ENOTFOUND : OTA_ERROR, "key file %s: %s", path,
				     strerror(errno));
	if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > KEY_FILE_MAX) {
		fclose(f);
		return ota_error_set(OTA_EINVAL, "key file %s: not a regular file of 1 byte to 1 MiB", path);
	}
	/* One allocation of the final size: no copies of key bytes left behind by realloc. */
	*data = xmalloc((size_t)st.st_size + 1);
	n = fread(*data, 1, (size_t)st.st_size, f);
	fclose(f);
	if (n != (size_t)st.st_size) {
		OPENSSL_cleanse(*data, (size_t)st.st_size);
		free(*data);
		*data = NULL;
		return ota_error_set(OTA_ERROR, "key file %s: short read", path);
	}
	(*data)[n] = '\0';
	*len = n;
	return 0;
}

static int file_key_load(struct sign_key **out, const char *path, const char *pin)
{
	struct sign_key *k = NULL;
	struct pass pass = { pin, 0 };
	unsigned char *data = NULL, *der = NULL;
	const unsigned char *p;
	size_t len = 0;
	BIO *bio = NULL;
	int rc, derlen;

	if ((rc = read_key_file(path, &data, &len)) < 0)
		return rc;
	k = xcalloc(1, sizeof(*k));
	k->backend = &file_backend;
	k->spec = xstrdup(path);
	bio = BIO_new_mem_buf(data, (int)len);
	if (!bio) {
		rc = ota_error_set(OTA_ENOMEM, "out of memory");
		goto out;
	}
	k->pkey = PEM_read_bio_PrivateKey(bio, NULL, pem_pass, &pass);
	if (!k->pkey) {
		ERR_clear_error();
		if (memmem(data, len, "-----BEGIN PUBLIC KEY-----", 26) && !memmem(data, len, "PRIVATE KEY-----", 16))
			rc = ota_error_set(OTA_EINVAL, "key file %s holds a public key; signing needs the private key", path);
		else if (pass.asked && !pin)
			rc = ota_error_set(OTA_EAUTH, "key file %s is encrypted and no passphrase was given", path);
		else if (pass.asked)
			rc = ota_error_set(OTA_EAUTH, "key file %s: wrong passphrase", path);
		else
			rc = ota_error_set(OTA_EINVAL, "key file %s: no PEM private key in it", path);
		goto out;
	}
	/* The public half, as a plain key of its own. */
	derlen = i2d_PUBKEY(k->pkey, &der);
	p = der;
	if (derlen <= 0 || !(k->pub = d2i_PUBKEY(NULL, &p, derlen))) {
		rc = ota_error_set(OTA_EINVAL, "key file %s: cannot derive the public key", path);
		goto out;
	}
	if ((rc = sign_key_finish(k)) < 0) {
		ota_error_prefix("key file %s", path);
		goto out;
	}
	*out = k;
	k = NULL;
out:
	ERR_clear_error();
	OPENSSL_free(der);
	BIO_free(bio);
	OPENSSL_cleanse(data, len);
	free(data);
	sign_key_free(k);
	return rc;
}

int sign_key_load(struct sign_key **out, const char *spec, const char *pin)
{
	*out = NULL;
	if (!spec || !*spec)
		return ota_error_set(OTA_EINVAL, "no signing key given");
	if (strncasecmp(spec, "pkcs11:", 7) == 0)
		return sign_key_pkcs11_load(out, spec, pin);
	return file_key_load(out, spec, pin);
}

void sign_key_free(struct sign_key *k)
{
	if (!k)
		return;
	/* The backend first: it may need to free an engine key itself. */
	if (k->backend && k->backend->free)
		k->backend->free(k);
	EVP_PKEY_free(k->pkey);
	EVP_PKEY_free(k->pub);
	free(k->spec);
	free(k);
}

enum sign_alg sign_key_alg(const struct sign_key *k)
{
	return k->alg;
}

const char *sign_key_id(const struct sign_key *k)
{
	return k->id;
}

const char *sign_key_spec(const struct sign_key *k)
{
	return k->spec;
}

EVP_PKEY *sign_key_pkey(const struct sign_key *k)
{
	return k->pkey;
}

EVP_PKEY *sign_key_public(const struct sign_key *k)
{
	return k->pub;
}

int sign_key_public_pem(const struct sign_key *k, struct buf *out)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL;
	long n;
	int rc;

	if (!bio)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	if (PEM_write_bio_PUBKEY(bio, k->pub) != 1 || (n = BIO_get_mem_data(bio, &data)) <= 0) {
		BIO_free(bio);
		ERR_clear_error();
		return ota_error_set(OTA_ERROR, "%s: cannot write the public key", k->spec);
	}
	rc = buf_put(out, data, (size_t)n);
	BIO_free(bio);
	return rc < 0 ? ota_error_set(rc, "public key does not fit its buffer") : 0;
}

int sign_key_sign(const struct sign_key *k, const void *msg, size_t len, struct buf *sig)
{
	if (!k || (!msg && len))
		return ota_error_set(OTA_EINVAL, "sign: no key or message");
	if (k->backend->sign)
		return k->backend->sign(k, msg, len, sig);
	return sign_key_evp_sign(k, msg, len, sig);
}
