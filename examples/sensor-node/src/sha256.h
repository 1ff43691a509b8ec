/*
 * sha256.h - SHA-256 (FIPS 180-4) for libotadev's crypto hooks on a
 * Cortex-M without a hash accelerator or a crypto library in the image.
 * A board with a hash engine (or mbedTLS, TF-M's crypto service) calls that
 * instead; docs/device-porting.md.  Known-answer tested in tests/unit.c.
 */
#ifndef SENSOR_SHA256_H
#define SENSOR_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
	uint32_t h[8];
	uint64_t len;            /* bytes hashed so far */
	uint8_t block[64];
	size_t fill;             /* bytes in block */
};

void sha256_begin(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
void sha256_end(struct sha256 *s, uint8_t out[32]);

#endif
