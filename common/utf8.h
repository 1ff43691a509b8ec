/*
 * utf8.h - the one check of a UTF-8 sequence, shared by the log writer
 * (common/log.c) and the check-in body's fast read
 * (orchestrator/fleet/fleet_ckbody.c).  The rules are jansson's
 * (utf8_check_first / utf8_check_full): no overlong forms, no surrogates,
 * nothing above U+10FFFF.  Inline: the check-in path calls it per byte.
 */
#ifndef OTACD_UTF8_H
#define OTACD_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The length of the valid UTF-8 sequence at s (n > 0 bytes left): 1 for
 * ASCII, 2..4 for a multi-byte sequence, 0 when the bytes there are not
 * valid UTF-8. */
static inline size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
		return 0; /* overlong, out of range, or a surrogate */
	return len;
}

#endif
