/*
 * fleet_ca_seal.c - the device CA's private key sealed for the database
 * (fleet_ca.h: fleet_ca_seal, fleet_ca_unseal).
 *
 * Why: an installed CA lives in otacd's database so that whichever
 * instance leads next can issue with it (issue 16, docs/scale.md); the
 * database is shared and backed up, so the key is kept there only sealed,
 * under a key no database reader has: HKDF-SHA256 of the device secret
 * (which every instance on one fleet database holds, fleet_keys.c) with
 * the label "otacd device CA key".  AES-256-GCM with a random 96-bit nonce
 * per seal; the certificate's PEM is the associated data, so a sealed key
 * moved under another certificate, or either one edited, does not open.
 *
 * The text form: "v1:" then hex of nonce (12) | ciphertext | tag (16).
 */
#include "fleet_ca.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "../../common/util.h"

#define SEAL_LABEL "otacd device CA key"
#define NONCE_LEN 12
#define TAG_LEN 16

static int derive(const char *secret, unsigned char key[32])
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM p[4];
	int ok;

	p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, strlen(secret));
	p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)SEAL_LABEL, strlen(SEAL_LABEL));
	p[3] = OSSL_PARAM_construct_end();
	ok = kc && EVP_KDF_derive(kc, key, 32, p) == 1;
	EVP_KDF_CTX_free(kc);
	EVP_KDF_free(kdf);
	return ok ? 0 : ota_error_set(OTA_ERROR, "device CA: cannot derive the sealing key");
}

static int unhex(const char *s, size_t n, unsigned char *out)
{
	for (size_t i = 0; i < n; i++) {
		int v = 0;
		for (int j = 0; j < 2; j++) {
			char c = s[2 * i + (size_t)j];
			int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
			if (d < 0)
				return -1;
			v = v * 16 + d;
		}
		out[i] = (unsigned char)v;
	}
	return 0;
}

char *fleet_ca_seal(const char *secret, const char *aad, const unsigned char *plain, size_t n)
{
	unsigned char key[32], *raw = xmalloc(NONCE_LEN + n + TAG_LEN);
	EVP_CIPHER_CTX *c = NULL;
	char *out = NULL;
	int len = 0, fin = 0;

	if (!secret || !*secret) {
		ota_error_set(OTA_ERROR, "device CA: no device secret to seal the key with");
		goto done;
	}
	if (derive(secret, key) < 0)
		goto done;
	if (RAND_bytes(raw, NONCE_LEN) != 1 || !(c = EVP_CIPHER_CTX_new()) ||
	    EVP_EncryptInit_ex2(c, EVP_aes_256_gcm(), key, raw, NULL) != 1 ||
	    EVP_EncryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
	    EVP_EncryptUpdate(c, raw + NONCE_LEN, &len, plain, (int)n) != 1 ||
	    EVP_EncryptFinal_ex(c, raw + NONCE_LEN + len, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, raw + NONCE_LEN + n) != 1) {
		ota_error_set(OTA_ERROR, "device CA: cannot seal the key");
		goto done;
	}
	out = xmalloc(3 + 2 * (NONCE_LEN + n + TAG_LEN) + 1);
	memcpy(out, "v1:", 3);
	ota_hex(out + 3, raw, NONCE_LEN + n + TAG_LEN);
done:
	EVP_CIPHER_CTX_free(c);
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(raw, NONCE_LEN + n + TAG_LEN);
	free(raw);
	return out;
}

int fleet_ca_unseal(const char *secret, const char *aad, const char *sealed, unsigned char **out, size_t *outlen)
{
	size_t hl = sealed ? strlen(sealed) : 0, rawlen, n;
	unsigned char key[32], *raw = NULL, *plain = NULL;
	EVP_CIPHER_CTX *c = NULL;
	int len = 0, fin = 0, rc = 0;

	*out = NULL;
	*outlen = 0;
	if (!secret || !*secret)
		return ota_error_set(OTA_ERROR, "device CA: no device secret to open the sealed key with");
	if (hl < 3 || memcmp(sealed, "v1:", 3) || (hl - 3) % 2 || (hl - 3) / 2 <= NONCE_LEN + TAG_LEN)
		return ota_error_set(OTA_EINVAL, "device CA: the sealed key in the database is malformed");
	rawlen = (hl - 3) / 2;
	n = rawlen - NONCE_LEN - TAG_LEN;
	raw = xmalloc(rawlen);
	plain = xmalloc(n + 1);
	if (unhex(sealed + 3, rawlen, raw) < 0) {
		rc = ota_error_set(OTA_EINVAL, "device CA: the sealed key in the database is malformed");
		goto done;
	}
	if ((rc = derive(secret, key)) < 0)
		goto done;
	if (!(c = EVP_CIPHER_CTX_new()) || EVP_DecryptInit_ex2(c, EVP_aes_256_gcm(), key, raw, NULL) != 1 ||
	    EVP_DecryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
	    EVP_DecryptUpdate(c, plain, &len, raw + NONCE_LEN, (int)n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, raw + NONCE_LEN + n) != 1 ||
	    EVP_DecryptFinal_ex(c, plain + len, &fin) != 1) {
		rc = ota_error_set(OTA_EINVAL, "device CA: the sealed key in the database does not open with this"
				   " instance's device secret, or it or the certificate was altered");
		goto done;
	}
	plain[n] = 0;
	*out = plain;
	*outlen = n;
	plain = NULL;
done:
	EVP_CIPHER_CTX_free(c);
	OPENSSL_cleanse(key, sizeof(key));
	if (plain) {
		OPENSSL_cleanse(plain, n + 1);
		free(plain);
	}
	free(raw);
	return rc;
}
