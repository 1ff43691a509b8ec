/*
 * fuzz_cachekey.c - libFuzzer target for the cache key template and cache
 * path rules (common/cachekey.c), which read `cache:` of a pushed pipeline.
 *
 * The first byte picks the rule (even: a key template, odd: a path); the
 * rest is the input, of any bytes.  Besides crashes and UB, the target
 * aborts when an accepted key renders empty, longer than CACHEKEY_MAX,
 * starting with '.', or with a byte outside [A-Za-z0-9._-] (it names a
 * file in the agent's cache directory as it is); when an accepted path is
 * absolute or has a ".." component; and when a refusal gives no reason.
 *
 *   make fuzz   or   build/fuzz/fuzz_cachekey fuzz/corpus/fuzz_cachekey
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cachekey.h"
#include "../common/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int key_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
	       c == '_' || c == '-';
}

static void check_path(const char *p, size_t n)
{
	if (n == 0 || p[0] == '/')
		abort();
	for (size_t i = 0; i + 1 < n; i++)
		if (p[i] == '.' && p[i + 1] == '.' && (i == 0 || p[i - 1] == '/') && (i + 2 == n || p[i + 2] == '/'))
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char out[CACHEKEY_MAX + 1], why[256] = "";
	const char *in;
	size_t n;

	if (size < 1)
		return 0;
	in = (const char *)data + 1;
	n = size - 1;
	if (data[0] & 1) {
		if (cachekey_path_check(in, n, why, sizeof(why)) < 0) {
			if (!why[0])
				abort();
			return 0;
		}
		check_path(in, n);
		return 0;
	}
	if (cachekey_render(out, in, n, NULL, why, sizeof(why)) < 0) {
		if (!why[0])
			abort();
		return 0;
	}
	n = strlen(out);
	if (n == 0 || n > CACHEKEY_MAX || out[0] == '.')
		abort();
	for (size_t i = 0; i < n; i++)
		if (!key_byte((unsigned char)out[i]))
			abort();
	return 0;
}
