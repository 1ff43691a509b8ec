/*
 * mcuboot_enc.h - MCUboot encrypted images: key wrapping and the device side.
 *
 * MCUboot encrypts the image body (never the header or the TLVs) with
 * AES-CTR under a fresh random key, counter starting at zero.  That key
 * reaches the device wrapped for the device's key pair (ECIES): an
 * ephemeral key pair (P-256 or X25519), ECDH with the device's public key,
 * HKDF-SHA256 (no salt, info "MCUBoot_ECIES_v1") giving an AES key (16 or
 * 32 bytes) and a 32-byte HMAC key; the AES key is encrypted with AES-CTR
 * (counter zero) and HMAC-SHA256'd.  The unprotected TLV ENC_EC256 (0x32)
 * or ENC_X25519 (0x33) holds ephemeral public key || MAC || wrapped key.
 * The SHA256 TLV and the signature cover the plaintext image, so a device
 * decrypts first and then verifies as usual.  docs/mcuboot.md has the
 * layout and how it was checked against imgtool.
 *
 * Signing with encryption is mcuboot_sign() with opts.enc_key set; this
 * module holds the crypto both sides share and the device side.  Every
 * primitive is OpenSSL 3's (EVP_PKEY_derive, EVP_KDF HKDF, EVP_MAC HMAC,
 * EVP_CIPHER AES-CTR).  Functions return 0 or a negative OTA_E* code with
 * the reason in ota_error_last().
 */
#ifndef OTA_MCUBOOT_ENC_H
#define OTA_MCUBOOT_ENC_H

#include <openssl/evp.h>
#include <stddef.h>

#include "../common/util.h"

#define MCUBOOT_TLV_ENC_RSA 0x30u
#define MCUBOOT_TLV_ENC_KW 0x31u
#define MCUBOOT_TLV_ENC_EC256 0x32u
#define MCUBOOT_TLV_ENC_X25519 0x33u
#define MCUBOOT_TLV_ENC_X25519_SHA512 0x34u
#define MCUBOOT_ENC_TLV_MAX (65u + 32u + 32u)
/* Extra trailer bytes an encrypted image needs in its slot (imgtool: two
 * key slots of align_up(16, max_align 8)). */
#define MCUBOOT_ENC_TRAILER_EXTRA 32u

enum mcuboot_enc {
	MCUBOOT_ENC_NONE,
	MCUBOOT_ENC_EC256,   /* ECIES-P256, TLV 0x32 */
	MCUBOOT_ENC_X25519,  /* ECIES-X25519 with HKDF/HMAC-SHA256, TLV 0x33 */
};

/* "ecies-p256", "ecies-x25519" or "none". */
const char *mcuboot_enc_name(enum mcuboot_enc e);

/* Which scheme a device key (public or private) is for: EC P-256 or
 * X25519; OTA_EINVAL for any other key. */
int mcuboot_enc_scheme(EVP_PKEY *key, enum mcuboot_enc *out);

/* Read a device PUBLIC key (PEM file, at most 64 KiB) for encrypting
 * images: EC P-256 or X25519.  A private key is refused: on the server
 * side only the public half may exist. */
int mcuboot_enc_pubkey_load(EVP_PKEY **out, const char *path);

/* Hex SHA-256 of the key's DER SubjectPublicKeyInfo: the id the manifest
 * names the device key class by. */
int mcuboot_enc_key_id(EVP_PKEY *key, char hex[65]);

/*
 * Wrap a fresh random AES key of keylen bytes (16 or 32) for the device
 * public key dev_pub: aeskey receives the plain key, tlv (at least
 * MCUBOOT_ENC_TLV_MAX bytes) the TLV value, *tlv_len its length and
 * *tlv_type 0x32 or 0x33.
 */
int mcuboot_enc_wrap(EVP_PKEY *dev_pub, size_t keylen, unsigned char aeskey[32],
		     unsigned char *tlv, size_t *tlv_len, unsigned *tlv_type);

/* AES-CTR (128 or 256 by keylen), counter block starting at zero, over
 * data in place: encrypts and decrypts. */
int mcuboot_enc_ctr(const unsigned char *key, size_t keylen, unsigned char *data, size_t n);

/*
 * The device side: img must be an encrypted image (an ENCRYPTED_AES128 or
 * _AES256 flag and one ENC_EC256 / ENC_X25519 TLV of the length that flag
 * implies).  Unwrap its key with the device's private key dev_priv (ECDH,
 * HKDF, the MAC checked in constant time before anything is decrypted),
 * then write the image with its body decrypted into out (cleared first,
 * empty on failure).  The result still has to pass mcuboot_verify(): a
 * tampered body only shows there.  A wrong device key, a key of the other
 * scheme or a changed TLV fail here with a message saying which.
 */
int mcuboot_decrypt(struct buf *out, const void *img, size_t len, EVP_PKEY *dev_priv);

#endif
