/*
 * mcuboot_enc.c - MCUboot encrypted images; see mcuboot_enc.h.
 *
 * Device makers ship images through networks and external flash they do
 * not control, so MCUboot can keep the body encrypted until the bootloader
 * copies it into the primary slot.  otacd writes such images in the release
 * stage (mcuboot_sign with opts.enc_key calls mcuboot_enc_wrap and
 * mcuboot_enc_ctr) and otacd-fleetsim, standing in for the bootloader,
 * reads them back with mcuboot_decrypt before it verifies the signature.
 *
 * The ECIES construction is MCUboot's (docs/encrypted_images.md there):
 * ephemeral key, ECDH, HKDF-SHA256 without salt and with the info string
 * "MCUBoot_ECIES_v1" into keylen + 32 bytes, AES-CTR (counter zero) of the
 * image key under the first keylen bytes, HMAC-SHA256 of that ciphertext
 * under the last 32.  Every step is an OpenSSL 3 EVP call; secrets live on
 * the stack and are wiped with OPENSSL_cleanse on every path.  Untrusted
 * bytes (the TLV from an image) are only read after mcuboot_parse checked
 * their bounds and here against the exact length the scheme needs.
 */
#include "mcuboot_enc.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <string.h>

#include "mcuboot.h"

#define HKDF_INFO "MCUBoot_ECIES_v1"
#define MAC_LEN 32u
#define P256_PUB_LEN 65u
#define X25519_PUB_LEN 32u

const char *mcuboot_enc_name(enum mcuboot_enc e)
{
	switch (e) {
	case MCUBOOT_ENC_EC256:
		return "ecies-p256";
	case MCUBOOT_ENC_X25519:
		return "ecies-x25519";
	default:
		return "none";
	}
}

static int ssl_fail(const char *what)
{
	char msg[256] = "";
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, msg, sizeof(msg));
	ERR_clear_error();
	return ota_error_set(OTA_ERROR, "%s failed%s%s", what, *msg ? ": " : "", msg);
}

int mcuboot_enc_scheme(EVP_PKEY *key, enum mcuboot_enc *out)
{
	char group[64] = "";

	*out = MCUBOOT_ENC_NONE;
	if (!key)
		return ota_error_set(OTA_EINVAL, "no encryption key");
	if (EVP_PKEY_is_a(key, "X25519")) {
		*out = MCUBOOT_ENC_X25519;
		return 0;
	}
	if (EVP_PKEY_is_a(key, "EC") &&
	    EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) &&
	    (!strcmp(group, "prime256v1") || !strcmp(group, "P-256"))) {
		*out = MCUBOOT_ENC_EC256;
		return 0;
	}
	return ota_error_set(OTA_EINVAL, "encryption key is %s%s%s; MCUboot encryption here needs an EC P-256 "
			     "(ECIES-P256) or X25519 (ECIES-X25519) key", EVP_PKEY_get0_type_name(key)
			     ? EVP_PKEY_get0_type_name(key) : "unknown", *group ? " " : "", group);
}

int mcuboot_enc_pubkey_load(EVP_PKEY **out, const char *path)
{
	struct buf pem = BUF_INIT;
	enum mcuboot_enc e;
	BIO *bio = NULL;
	int rc;

	*out = NULL;
	if ((rc = ota_read_file(&pem, path, 64 << 10)) < 0)
		goto out;
	if (memmem(pem.ptr, pem.len, "PRIVATE KEY-----", 16)) {
		rc = ota_error_set(OTA_EINVAL, "%s holds a private key; only the device's public key belongs "
				   "on the server", path);
		goto out;
	}
	bio = BIO_new_mem_buf(pem.ptr, (int)pem.len);
	*out = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
	ERR_clear_error();
	if (!*out) {
		rc = ota_error_set(OTA_EINVAL, "%s: not a PEM \"PUBLIC KEY\"", path);
		goto out;
	}
	if ((rc = mcuboot_enc_scheme(*out, &e)) < 0)
		ota_error_prefix("%s: ", path);
out:
	if (rc < 0) {
		EVP_PKEY_free(*out);
		*out = NULL;
	}
	BIO_free(bio);
	buf_release(&pem);
	return rc;
}

int mcuboot_enc_key_id(EVP_PKEY *key, char hex[65])
{
	unsigned char *der = NULL, md[32];
	int n = i2d_PUBKEY(key, &der);

	hex[0] = 0;
	if (n <= 0)
		return ssl_fail("encoding the encryption public key");
	EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL);
	OPENSSL_free(der);
	ota_hex(hex, md, 32);
	return 0;
}

int mcuboot_enc_ctr(const unsigned char *key, size_t keylen, unsigned char *data, size_t n)
{
	static const unsigned char iv[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	const EVP_CIPHER *cipher = keylen == 32 ? EVP_aes_256_ctr() : EVP_aes_128_ctr();
	int rc = 0, outl = 0;

	if (keylen != 16 && keylen != 32) {
		rc = ota_error_set(OTA_EINVAL, "AES key of %zu bytes; 16 or 32 expected", keylen);
		goto out;
	}
	if (!ctx || !EVP_EncryptInit_ex(ctx, cipher, NULL, key, iv)) {
		rc = ssl_fail("AES-CTR setup");
		goto out;
	}
	/* EVP_EncryptUpdate takes an int length: go in chunks. */
	while (n > 0) {
		int k = n > (1u << 30) ? (1 << 30) : (int)n;
		if (!EVP_EncryptUpdate(ctx, data, &outl, data, k) || outl != k) {
			rc = ssl_fail("AES-CTR");
			goto out;
		}
		data += k;
		n -= (size_t)k;
	}
out:
	EVP_CIPHER_CTX_free(ctx);
	return rc;
}

static int ecdh(EVP_PKEY *mine, EVP_PKEY *peer, unsigned char *secret, size_t *slen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, mine, NULL);
	int rc = 0;

	if (!ctx || EVP_PKEY_derive_init(ctx) <= 0 || EVP_PKEY_derive_set_peer(ctx, peer) <= 0 ||
	    EVP_PKEY_derive(ctx, secret, slen) <= 0)
		rc = ssl_fail("ECDH key agreement");
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* HKDF-SHA256(secret, no salt, info) -> out (keylen + 32 bytes) */
static int hkdf(const unsigned char *secret, size_t slen, unsigned char *out, size_t outlen)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[4];
	int rc = 0;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, slen);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)HKDF_INFO, strlen(HKDF_INFO));
	params[3] = OSSL_PARAM_construct_end();
	if (!ctx || EVP_KDF_derive(ctx, out, outlen, params) <= 0)
		rc = ssl_fail("HKDF-SHA256");
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
	return rc;
}

static int hmac256(const unsigned char *key, const unsigned char *data, size_t n, unsigned char mac[32])
{
	size_t maclen = 0;

	if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, MAC_LEN, data, n, mac, MAC_LEN, &maclen) ||
	    maclen != MAC_LEN)
		return ssl_fail("HMAC-SHA256");
	return 0;
}

/* The ephemeral (or, on the device, the image's) public key as raw bytes
 * and back: X9.62 uncompressed point for P-256, 32 raw bytes for X25519. */
static int pub_raw(EVP_PKEY *k, enum mcuboot_enc e, unsigned char *out, size_t *n)
{
	size_t want = e == MCUBOOT_ENC_EC256 ? P256_PUB_LEN : X25519_PUB_LEN;
	int ok;

	*n = want; /* in: room, out: length (EVP_PKEY_get_raw_public_key) */
	ok = e == MCUBOOT_ENC_EC256 ? EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, want, n)
				    : EVP_PKEY_get_raw_public_key(k, out, n);

	if (!ok || *n != want)
		return ssl_fail("encoding the ephemeral public key");
	return 0;
}

static int pub_from_raw(EVP_PKEY **out, enum mcuboot_enc e, const unsigned char *raw)
{
	EVP_PKEY_CTX *ctx = NULL;
	OSSL_PARAM params[3];
	int rc = 0;

	*out = NULL;
	if (e == MCUBOOT_ENC_X25519) {
		*out = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, raw, X25519_PUB_LEN);
	} else {
		params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0);
		params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)raw, P256_PUB_LEN);
		params[2] = OSSL_PARAM_construct_end();
		ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
		if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
		    EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) <= 0)
			*out = NULL;
	}
	if (!*out) {
		ERR_clear_error();
		rc = ota_error_set(OTA_EINVAL, "the ephemeral public key in the encryption TLV is not a valid %s "
				   "point", e == MCUBOOT_ENC_EC256 ? "P-256" : "X25519");
	}
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

int mcuboot_enc_wrap(EVP_PKEY *dev_pub, size_t keylen, unsigned char aeskey[32],
		     unsigned char *tlv, size_t *tlv_len, unsigned *tlv_type)
{
	unsigned char secret[64], okm[64];
	size_t slen = sizeof(secret), plen = 0;
	enum mcuboot_enc e;
	EVP_PKEY *eph = NULL;
	int rc;

	*tlv_len = 0;
	if ((rc = mcuboot_enc_scheme(dev_pub, &e)) < 0)
		goto out;
	if (keylen != 16 && keylen != 32) {
		rc = ota_error_set(OTA_EINVAL, "AES key of %zu bytes; 16 or 32 expected", keylen);
		goto out;
	}
	eph = e == MCUBOOT_ENC_X25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "X25519")
				      : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (!eph) {
		rc = ssl_fail("generating the ephemeral key");
		goto out;
	}
	if (RAND_priv_bytes(aeskey, (int)keylen) != 1) {
		rc = ssl_fail("generating the image key");
		goto out;
	}
	if ((rc = ecdh(eph, dev_pub, secret, &slen)) < 0 || (rc = hkdf(secret, slen, okm, keylen + MAC_LEN)) < 0 ||
	    (rc = pub_raw(eph, e, tlv, &plen)) < 0)
		goto out;
	/* pub || mac || wrapped key */
	memcpy(tlv + plen + MAC_LEN, aeskey, keylen);
	if ((rc = mcuboot_enc_ctr(okm, keylen, tlv + plen + MAC_LEN, keylen)) < 0 ||
	    (rc = hmac256(okm + keylen, tlv + plen + MAC_LEN, keylen, tlv + plen)) < 0)
		goto out;
	*tlv_len = plen + MAC_LEN + keylen;
	*tlv_type = e == MCUBOOT_ENC_X25519 ? MCUBOOT_TLV_ENC_X25519 : MCUBOOT_TLV_ENC_EC256;
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	OPENSSL_cleanse(okm, sizeof(okm));
	if (rc < 0)
		OPENSSL_cleanse(aeskey, 32);
	EVP_PKEY_free(eph);
	return rc;
}

int mcuboot_decrypt(struct buf *out, const void *img, size_t len, EVP_PKEY *dev_priv)
{
	const unsigned char *p = img, *tlv;
	unsigned char secret[64], okm[64], mac[MAC_LEN], aeskey[32];
	size_t slen = sizeof(secret), keylen, plen;
	struct mcuboot_info in;
	enum mcuboot_enc want, have;
	uint32_t encf;
	EVP_PKEY *eph = NULL;
	int rc;

	buf_clear(out);
	if ((rc = mcuboot_parse(&in, img, len)) < 0)
		goto out;
	encf = in.flags & (MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256);
	if (!encf) {
		rc = ota_error_set(OTA_EINVAL, "image is not encrypted (no ENCRYPTED flag in the header)");
		goto out;
	}
	if (encf == (MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256)) {
		rc = ota_error_set(OTA_EINVAL, "header flags 0x%x say both AES-128 and AES-256", (unsigned)in.flags);
		goto out;
	}
	keylen = encf == MCUBOOT_F_ENC_AES256 ? 32 : 16;
	switch (in.enc_type) {
	case MCUBOOT_TLV_ENC_EC256:
		want = MCUBOOT_ENC_EC256;
		plen = P256_PUB_LEN;
		break;
	case MCUBOOT_TLV_ENC_X25519:
		want = MCUBOOT_ENC_X25519;
		plen = X25519_PUB_LEN;
		break;
	case 0:
		rc = ota_error_set(OTA_EINVAL, "encrypted image has no key TLV (ENC_EC256 0x32 or ENC_X25519 0x33)");
		goto out;
	default:
		rc = ota_error_set(OTA_EINVAL, "encrypted image wraps its key with TLV 0x%02x (RSA-OAEP, AES-KW or "
				   "X25519-SHA512), which otacd does not handle", in.enc_type);
		goto out;
	}
	if (in.enc_len != plen + MAC_LEN + keylen) {
		rc = ota_error_set(OTA_EINVAL, "encryption TLV 0x%02x has length %zu; %s with AES-%zu needs %zu",
				   in.enc_type, in.enc_len, mcuboot_enc_name(want), keylen * 8, plen + MAC_LEN + keylen);
		goto out;
	}
	if ((rc = mcuboot_enc_scheme(dev_priv, &have)) < 0)
		goto out;
	if (have != want) {
		rc = ota_error_set(OTA_EINVAL, "image key is wrapped for %s, the device key is for %s",
				   mcuboot_enc_name(want), mcuboot_enc_name(have));
		goto out;
	}
	tlv = p + in.enc_off;
	if ((rc = pub_from_raw(&eph, want, tlv)) < 0)
		goto out;
	if ((rc = ecdh(dev_priv, eph, secret, &slen)) < 0) {
		rc = ota_error_set(OTA_EINVAL, "encryption TLV: %s", ota_error_last());
		goto out;
	}
	if ((rc = hkdf(secret, slen, okm, keylen + MAC_LEN)) < 0 ||
	    (rc = hmac256(okm + keylen, tlv + plen + MAC_LEN, keylen, mac)) < 0)
		goto out;
	if (CRYPTO_memcmp(mac, tlv + plen, MAC_LEN) != 0) {
		rc = ota_error_set(OTA_EINVAL, "the MAC of the wrapped image key does not verify: the image was "
				   "encrypted for another device key, or its encryption TLV was changed");
		goto out;
	}
	memcpy(aeskey, tlv + plen + MAC_LEN, keylen);
	if ((rc = mcuboot_enc_ctr(okm, keylen, aeskey, keylen)) < 0)
		goto out;
	if (buf_put(out, img, len) < 0) {
		rc = ota_error_set(OTA_ETOOBIG, "decrypted image would exceed the output limit of %zu bytes", out->max);
		goto out;
	}
	rc = mcuboot_enc_ctr(aeskey, keylen, (unsigned char *)out->ptr + in.header_size, in.image_size);
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	OPENSSL_cleanse(okm, sizeof(okm));
	OPENSSL_cleanse(aeskey, sizeof(aeskey));
	if (rc < 0)
		buf_clear(out);
	EVP_PKEY_free(eph);
	return rc;
}
