/*
 * fuzz_mask.c - libFuzzer target for the secret masker (common/mask.h):
 * the first byte picks the secrets' lengths, the next bytes are the
 * secrets, the rest is a log cut into pieces by its own bytes.  Checks the
 * masker's promises: the output has the input's length, a stream cut
 * anywhere masks exactly like the one-shot call, and no secret of
 * MASK_MIN_LEN bytes or more survives.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *secrets[2] = { NULL, NULL };
	struct buf whole = BUF_INIT, cut = BUF_INIT;
	struct mask_set *set;
	struct mask_stream s;
	size_t l1, l2, off;
	const char *log;
	size_t n;

	if (size < 1)
		return 0;
	l1 = 1 + data[0] % 16;
	l2 = 1 + (data[0] >> 4);
	if (size < 1 + l1 + l2)
		return 0;
	secrets[0] = strndup((const char *)data + 1, l1);
	secrets[1] = strndup((const char *)data + 1 + l1, l2);
	log = (const char *)data + 1 + l1 + l2;
	n = size - 1 - l1 - l2;
	set = mask_set_new((const char *const *)secrets, 2);

	if (mask_buffer(set, log, n, &whole) < 0 || whole.len != n)
		abort();
	mask_stream_init(&s, set, 0);
	for (off = 0; off < n;) {
		size_t len = 1 + (unsigned char)log[off] % 13;
		if (len > n - off)
			len = n - off;
		mask_stream_feed(&s, log + off, len, &cut);
		off += len;
	}
	mask_stream_flush(&s, &cut);
	if (cut.len != n || (n && memcmp(cut.ptr, whole.ptr, n)))
		abort();
	for (int i = 0; i < 2; i++) {
		size_t sl = strlen(secrets[i]);
		if (sl >= MASK_MIN_LEN && !strchr(secrets[i], '\n') && !strchr(secrets[i], '*') && n &&
		    memmem(whole.ptr, n, secrets[i], sl))
			abort();
	}
	mask_stream_release(&s);
	mask_set_free(set);
	buf_release(&whole);
	buf_release(&cut);
	free(secrets[0]);
	free(secrets[1]);
	return 0;
}
