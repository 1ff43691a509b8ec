/*
 * sha256.h - SHA-256 of short inputs without waking OpenSSL's providers.
 *
 * The first EVP digest in a process (EVP_Digest, EVP_MD_fetch, RAND_bytes…)
 * loads OpenSSL's configuration and initialises its default provider, which
 * executes code all over libcrypto: ~1.7 MB more of otacd's resident set,
 * for the life of the process (issue 18).  An idle otacd hashes only agent
 * and API tokens, the device secret and device certificates for the verify
 * cache; those go through ota_sha256(), which uses nettle (GnuTLS's crypto
 * library, mapped anyway because libmicrohttpd links GnuTLS), so libcrypto's
 * providers start with the first request that really needs OpenSSL
 * (a signature, a TLS handshake, a certificate check).
 *
 * Bulk data (artifacts, files) keeps going through OpenSSL (hashpipe.c,
 * ota_sha256_hex): this is for a few hundred bytes at a time.
 */
#ifndef OTA_SHA256_H
#define OTA_SHA256_H

#include <stddef.h>

/* out = SHA-256(data[0..len)) */
void ota_sha256(const void *data, size_t len, unsigned char out[32]);

#endif
