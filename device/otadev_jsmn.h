/*
 * otadev_jsmn.h - the two token walkers libotadev's JSON readers share
 * (otadev_json.c: check-in and report answers; otadev_chain.c: the DSSE
 * envelope and the signed manifest).  Private to the core: include it
 * after <jsmn.h>, which each reader configures for itself (JSMN_STATIC,
 * so every file has its own jsmntok_t).
 */
#ifndef OTADEV_JSMN_H
#define OTADEV_JSMN_H

#include <string.h>

/* The token is the string s, byte for byte. */
static inline int eq(const char *js, const jsmntok_t *t, const char *s)
{
	size_t n = strlen(s);
	return t->type == JSMN_STRING && (size_t)(t->end - t->start) == n && !memcmp(js + t->start, s, n);
}

/* Index of the token after the value at i (its whole subtree); never
 * past n. */
static inline int skip(const jsmntok_t *t, int i, int n)
{
	int end = i + 1, pending = t[i].size;
	while (pending > 0 && end < n) {
		pending += t[end].size - 1;
		end++;
	}
	return end;
}

#endif
