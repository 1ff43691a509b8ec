/*
 * fuzz_s3err.c - libFuzzer target for the S3 backend's error-body reader
 * (orchestrator/artifact/s3.c, issue 15): whatever body an S3 server sends,
 * the code it yields is letters only, NUL-terminated within its buffer.
 * The first byte picks the buffer's size (0 to 63, as small as one byte);
 * the rest is the body, cut at 511 bytes as s3.c keeps it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/artifact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char body[512], *out;
	size_t cap, n, i;

	if (size < 1)
		return 0;
	cap = data[0] % 64;
	n = size - 1 < sizeof(body) - 1 ? size - 1 : sizeof(body) - 1;
	memcpy(body, data + 1, n);
	body[n] = 0;
	out = malloc(cap ? cap : 1); /* exactly cap bytes: ASan sees any overrun */
	artifact_s3_error_code(out, cap, body);
	if (cap) {
		n = strlen(out);
		if (n >= cap)
			abort();
		for (i = 0; i < n; i++)
			if (!((out[i] >= 'A' && out[i] <= 'Z') || (out[i] >= 'a' && out[i] <= 'z')))
				abort();
	}
	free(out);
	return 0;
}
