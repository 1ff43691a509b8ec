/*
 * port_linux_enc.h - libotadev's enc hooks on Linux (OpenSSL): MCUboot
 * encrypted images (otadev.h enc_key, enc_ctr; docs/device.md "Encrypted
 * images").  Shared by otacd-device and otacd-fleetsim's core engine.
 */
#ifndef OTADEV_PORT_LINUX_ENC_H
#define OTADEV_PORT_LINUX_ENC_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

/* The image key while one image is verified; wiped by _forget. */
struct port_enc {
	uint8_t aes[32];
	size_t keylen;           /* 0: no key held */
};

/* Unwrap the image key from a key TLV (0x32 ECIES-P256, 0x33 ECIES-X25519;
 * keylen 16 or 32) with the device's private key (NULL: none): the MAC is
 * checked in constant time before anything is decrypted.  0, or -1 with *why. */
int port_linux_enc_unwrap(struct port_enc *e, EVP_PKEY *dev_priv, int tlv_type, const uint8_t *tlv, size_t len,
			  size_t keylen, const char **why);
void port_linux_enc_forget(struct port_enc *e);
/* AES-CTR in place over len bytes at body offset off (MCUboot's counter:
 * the block index off / 16, big-endian, in the counter block). */
int port_linux_enc_ctr(const struct port_enc *e, uint32_t off, uint8_t *buf, size_t len);

#endif
