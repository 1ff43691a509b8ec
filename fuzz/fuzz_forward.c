/*
 * fuzz_forward.c - libFuzzer target for what a follower reads when it
 * forwards a write to the leader (orchestrator/api/api_forward.c): the
 * leader's address from otacd_leader.holder and the header lines of the
 * leader's answer.
 *
 * The input's first line is a holder (any bytes but '\n'); the rest are
 * header lines, split at '\n' (each passed with its '\n').  Besides crashes
 * and UB, the target aborts when an accepted holder's base is not exactly
 * "http://" or "https://" followed by printable bytes without '@', '/',
 * '?' or '#' after the scheme, when a kept header value is empty, longer
 * than 1,024 bytes or holds a byte outside ' '..'~'.
 *
 *   make fuzz   or   build/fuzz/fuzz_forward fuzz/corpus/fuzz_forward
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/api/api_forward.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_base(const char *base)
{
	const char *p = !strncmp(base, "http://", 7) ? base + 7 : !strncmp(base, "https://", 8) ? base + 8 : NULL;
	if (!p || !*p)
		abort();
	for (; *p; p++)
		if (*p < '!' || *p > '~' || *p == '@' || *p == '/' || *p == '?' || *p == '#')
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data, *end = s + size, *nl = memchr(s, '\n', size);
	size_t hlen = nl ? (size_t)(nl - s) : size;
	char *holder = malloc(hlen + 1), base[300];
	struct api_fwd_headers h = { { 0 } };

	memcpy(holder, s, hlen);
	holder[hlen] = '\0';
	if (api_forward_leader_check(holder, base, sizeof(base)) == 0)
		check_base(base);
	free(holder);
	for (const char *p = nl ? nl + 1 : end; p < end;) {
		const char *e = memchr(p, '\n', (size_t)(end - p));
		size_t n = e ? (size_t)(e - p) + 1 : (size_t)(end - p);
		api_forward_header_line(&h, p, n);
		p += n;
	}
	for (int i = 0; i < API_FWD_RELAYED; i++) {
		size_t n = h.value[i] ? strlen(h.value[i]) : 1;
		if (!n || n > 1024)
			abort();
		for (const char *v = h.value[i]; v && *v; v++)
			if (*v < ' ' || *v > '~')
				abort();
	}
	api_forward_headers_release(&h);
	return 0;
}
