/*
 * util_sha.c - ota_sha256_hex (util.h), apart from util.c so that a program
 * linking util.c alone (otacd-reaper, for the log code) does not load
 * OpenSSL: loading libcrypto would cost every job step milliseconds.
 */
#include "util.h"

#include <openssl/evp.h>

void ota_sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[32];
	unsigned int n = 32;
	EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
	ota_hex(out, md, 32);
}
