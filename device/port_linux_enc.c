/*
 * port_linux_enc.c - MCUboot encrypted images on the device (OpenSSL 3).
 *
 * An encrypted image travels and sits in the secondary slot as AES-CTR
 * ciphertext; its SHA256 TLV and signature are over the plaintext, so a
 * device that verifies before marking the image bootable decrypts it on the
 * way, as MCUboot's own validation of the secondary slot does.  The image
 * key is wrapped for the device (ECIES, mcuboot docs/encrypted_images.md):
 * ECDH of the device's private key with the TLV's ephemeral public key,
 * HKDF-SHA256 (no salt, info "MCUBoot_ECIES_v1") into keylen + 32 bytes,
 * HMAC-SHA256 of the wrapped key under the last 32 (checked first, in
 * constant time), the image key = AES-CTR (counter 0) of the wrapped key
 * under the first keylen bytes.  The writer is orchestrator/mcuboot_enc.c;
 * this is a second, independent reading of the format (the device port
 * links no otacd code), which test_encrypt's fleet checks against it.
 * Secrets are wiped with OPENSSL_cleanse on every path.
 */
#include "port_linux_enc.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <string.h>

#define TLV_ENC_EC256 0x32
#define TLV_ENC_X25519 0x33
#define MAC_LEN 32u

static int is_p256(EVP_PKEY *k)
{
	char group[64] = "";
	return EVP_PKEY_is_a(k, "EC") &&
	       EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) &&
	       (!strcmp(group, "prime256v1") || !strcmp(group, "P-256"));
}

static EVP_PKEY *ephemeral(int x25519, const uint8_t *raw)
{
	EVP_PKEY_CTX *ctx;
	EVP_PKEY *k = NULL;
	OSSL_PARAM p[3];

	if (x25519)
		return EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, raw, 32);
	p[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0);
	p[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)raw, 65);
	p[2] = OSSL_PARAM_construct_end();
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 || EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, p) <= 0)
		k = NULL;
	EVP_PKEY_CTX_free(ctx);
	return k;
}

/* ECDH, then HKDF-SHA256 into okm (outlen bytes).  0 or -1. */
static int derive(EVP_PKEY *mine, EVP_PKEY *peer, uint8_t *okm, size_t outlen)
{
	static const char info[] = "MCUBoot_ECIES_v1";
	uint8_t secret[64];
	size_t slen = sizeof(secret);
	EVP_PKEY_CTX *dh = EVP_PKEY_CTX_new_from_pkey(NULL, mine, NULL);
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM p[4];
	int ok = dh && EVP_PKEY_derive_init(dh) > 0 && EVP_PKEY_derive_set_peer(dh, peer) > 0 &&
		 EVP_PKEY_derive(dh, secret, &slen) > 0;

	if (ok) {
		p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
		p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, secret, slen);
		p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info));
		p[3] = OSSL_PARAM_construct_end();
		ok = kc && EVP_KDF_derive(kc, okm, outlen, p) > 0;
	}
	OPENSSL_cleanse(secret, sizeof(secret));
	EVP_KDF_CTX_free(kc);
	EVP_KDF_free(kdf);
	EVP_PKEY_CTX_free(dh);
	ERR_clear_error();
	return ok ? 0 : -1;
}

/* AES-CTR in place from a 16-byte counter block, skipping `skip` bytes of
 * key stream first.  0 or -1. */
static int ctr(const uint8_t *key, size_t keylen, const uint8_t iv[16], size_t skip, uint8_t *buf, size_t len)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	uint8_t pad[16] = { 0 };
	int outl = 0, ok = c && (keylen == 16 || keylen == 32) && skip < 16 && len <= 0x7fffffffu &&
			   EVP_EncryptInit_ex(c, keylen == 32 ? EVP_aes_256_ctr() : EVP_aes_128_ctr(), NULL, key, iv) == 1;

	if (ok && skip)
		ok = EVP_EncryptUpdate(c, pad, &outl, pad, (int)skip) == 1;
	if (ok && len)
		ok = EVP_EncryptUpdate(c, buf, &outl, buf, (int)len) == 1 && outl == (int)len;
	EVP_CIPHER_CTX_free(c);
	ERR_clear_error();
	return ok ? 0 : -1;
}

int port_linux_enc_unwrap(struct port_enc *e, EVP_PKEY *dev_priv, int tlv_type, const uint8_t *tlv, size_t len,
			  size_t keylen, const char **why)
{
	static const uint8_t zero_iv[16];
	int x25519 = tlv_type == TLV_ENC_X25519;
	size_t plen = x25519 ? 32 : 65;
	uint8_t okm[64], mac[MAC_LEN];
	size_t maclen = 0;
	EVP_PKEY *eph = NULL;
	int rc = -1;

	port_linux_enc_forget(e);
	*why = "the image is encrypted and this device has no decryption key";
	if (!dev_priv)
		return -1;
	*why = "image key wrapped with RSA-OAEP, AES-KW or X25519-SHA512: not handled";
	if (tlv_type != TLV_ENC_EC256 && !x25519)
		return -1;
	*why = x25519 ? "image key is wrapped for ecies-x25519, the device key is for ecies-p256"
		      : "image key is wrapped for ecies-p256, the device key is for ecies-x25519";
	if (x25519 ? !EVP_PKEY_is_a(dev_priv, "X25519") : !is_p256(dev_priv))
		return -1;
	*why = "encryption TLV length does not fit its scheme and AES size";
	if ((keylen != 16 && keylen != 32) || len != plen + MAC_LEN + keylen)
		return -1;
	*why = "the ephemeral public key in the encryption TLV is not a valid point";
	if (!(eph = ephemeral(x25519, tlv)))
		goto out;
	*why = "the image key does not unwrap (key agreement failed)";
	if (derive(dev_priv, eph, okm, keylen + MAC_LEN) < 0)
		goto out;
	/* (a refusal's reason fits the core's 128-byte message) */
	*why = "the MAC of the wrapped image key does not verify (another device's key, or a changed TLV)";
	if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, okm + keylen, MAC_LEN, tlv + plen + MAC_LEN, keylen, mac,
		       MAC_LEN, &maclen) ||
	    maclen != MAC_LEN || CRYPTO_memcmp(mac, tlv + plen, MAC_LEN) != 0)
		goto out;
	memcpy(e->aes, tlv + plen + MAC_LEN, keylen);
	*why = "the image key does not unwrap (AES)";
	if (ctr(okm, keylen, zero_iv, 0, e->aes, keylen) < 0)
		goto out;
	e->keylen = keylen;
	*why = "";
	rc = 0;
out:
	OPENSSL_cleanse(okm, sizeof(okm));
	if (rc < 0)
		port_linux_enc_forget(e);
	EVP_PKEY_free(eph);
	ERR_clear_error();
	return rc;
}

void port_linux_enc_forget(struct port_enc *e)
{
	OPENSSL_cleanse(e->aes, sizeof(e->aes));
	e->keylen = 0;
}

int port_linux_enc_ctr(const struct port_enc *e, uint32_t off, uint8_t *buf, size_t len)
{
	uint8_t iv[16] = { 0 };
	uint32_t block = off / 16;

	if (!e->keylen)
		return -1;
	iv[12] = (uint8_t)(block >> 24);
	iv[13] = (uint8_t)(block >> 16);
	iv[14] = (uint8_t)(block >> 8);
	iv[15] = (uint8_t)block;
	return ctr(e->aes, e->keylen, iv, off % 16, buf, len);
}
