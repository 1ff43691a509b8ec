/*
 * dup.c - a deliberately duplicated block, measured only with BREAK=dup.
 *
 * `make metrics BREAK=dup` adds this file to what jscpd reads: a copy of
 * sha256.c's compression function, pasted instead of shared, which is the
 * duplication the pipeline's code-quality stage exists to catch (its
 * metrics.duplicated_percent).  Never compiled into the firmware.
 */
#include <stdint.h>

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

extern const uint32_t K[64];

void sha256_compress_copy(uint32_t h[8], const uint8_t p[64]);

void sha256_compress_copy(uint32_t h[8], const uint8_t p[64])
{
	uint32_t w[16], v[8];
	int i;

	for (i = 0; i < 8; i++)
		v[i] = h[i];
	for (i = 0; i < 64; i++) {
		if (i < 16) {
			w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
			       p[4 * i + 3];
		} else {
			uint32_t a = w[(i - 15) & 15], b = w[(i - 2) & 15];
			uint32_t s0 = ROR(a, 7) ^ ROR(a, 18) ^ (a >> 3), s1 = ROR(b, 17) ^ ROR(b, 19) ^ (b >> 10);
			w[i & 15] += s0 + w[(i - 7) & 15] + s1;
		}
		uint32_t t1 = v[7] + (ROR(v[4], 6) ^ ROR(v[4], 11) ^ ROR(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) + K[i] +
		     w[i & 15];
		uint32_t t2 = (ROR(v[0], 2) ^ ROR(v[0], 13) ^ ROR(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
		v[7] = v[6];
		v[6] = v[5];
		v[5] = v[4];
		v[4] = v[3] + t1;
		v[3] = v[2];
		v[2] = v[1];
		v[1] = v[0];
		v[0] = t1 + t2;
	}
	for (i = 0; i < 8; i++)
		h[i] += v[i];
}
