/*
 * sha256.c - ota_sha256 (sha256.h) with nettle: no global state, no
 * provider, nothing to initialise.
 */
#include "sha256.h"

#include <nettle/sha2.h>

void ota_sha256(const void *data, size_t len, unsigned char out[32])
{
	struct sha256_ctx ctx;

	sha256_init(&ctx);
	sha256_update(&ctx, len, data);
	sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}
