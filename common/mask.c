/*
 * mask.c - secret masking; see mask.h for the rule.
 *
 * Why: a secret must not reach a log however a step prints it: cut across
 * two writes, held in a partial line, split across lines, or encoded.  The
 * agent masks so secrets never leave the host in clear; the daemon masks
 * again because it cannot trust the agent.
 *
 * How: patterns are kept sorted by first byte (and longest first), so each
 * position of the input is compared only with the patterns that start with
 * its byte.  A pass over the pending bytes marks every byte inside a
 * complete match and stops at the first position whose rest is a proper
 * prefix of a pattern: that tail is held back.  Matches that started before
 * the tail and reach into it are remembered as `covered`.
 */
#include "mask.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

struct mask_pat {
	char *s;
	size_t len;
};

struct mask_set {
	struct mask_pat *v;
	size_t n, cap;
	size_t longest;
	size_t first[257]; /* v[first[c] .. first[c + 1]) start with byte c */
};

static void add(struct mask_set *set, const char *s, size_t len)
{
	if (!len)
		return;
	for (size_t i = 0; i < set->n; i++)
		if (set->v[i].len == len && !memcmp(set->v[i].s, s, len))
			return;
	if (set->n == set->cap) {
		set->cap = set->cap ? 2 * set->cap : 16;
		set->v = xrealloc(set->v, set->cap * sizeof(*set->v));
	}
	set->v[set->n].s = xstrndup(s, len);
	set->v[set->n].len = len;
	set->n++;
	if (len > set->longest)
		set->longest = len;
}

static void add_derived(struct mask_set *set, const char *s, size_t len)
{
	if (len >= MASK_MIN_LEN)
		add(set, s, len);
}

/* The characters of base64(pad zero bytes + value) that depend on the value alone. */
static void add_base64(struct mask_set *set, const char *v, size_t n)
{
	for (size_t pad = 0; pad < 3; pad++) {
		size_t in_len = pad + n, from = (8 * pad + 5) / 6, to = 8 * in_len / 6;
		unsigned char *in = xcalloc(in_len, 1);
		char *out = xmalloc(4 * ((in_len + 2) / 3) + 1);

		memcpy(in + pad, v, n);
		EVP_EncodeBlock((unsigned char *)out, in, (int)in_len);
		if (to > from) {
			add_derived(set, out + from, to - from);
			for (size_t i = from; i < to; i++)
				out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
			add_derived(set, out + from, to - from);
		}
		free(in);
		free(out);
	}
}

static void add_urlencoded(struct mask_set *set, const char *v, size_t n)
{
	static const char *const digits[2] = { "0123456789ABCDEF", "0123456789abcdef" };
	for (int k = 0; k < 2; k++) {
		struct buf b = BUF_INIT;
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)v[i];
			if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("-._~", c))
				buf_putc(&b, (char)c);
			else {
				char e[3] = { '%', digits[k][c >> 4], digits[k][c & 15] };
				buf_put(&b, e, 3);
			}
		}
		if (b.len != n)
			add_derived(set, b.ptr, b.len);
		buf_release(&b);
	}
}

static int by_first_then_longest(const void *a, const void *b)
{
	const struct mask_pat *x = a, *y = b;
	unsigned char cx = (unsigned char)x->s[0], cy = (unsigned char)y->s[0];
	if (cx != cy)
		return cx < cy ? -1 : 1;
	return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

struct mask_set *mask_set_new(const char *const *secrets, size_t n)
{
	struct mask_set *set = xcalloc(1, sizeof(*set));

	for (size_t i = 0; i < n; i++) {
		const char *v = secrets[i], *line = v;
		size_t len = v ? strlen(v) : 0;
		if (!len)
			continue;
		add(set, v, len);
		for (const char *p = v;; p++) {
			if (*p == '\n' || !*p) {
				size_t l = (size_t)(p - line);
				if (l && line[l - 1] == '\r')
					l--;
				if (l != len)
					add_derived(set, line, l);
				line = p + 1;
			}
			if (!*p)
				break;
		}
		add_base64(set, v, len);
		add_urlencoded(set, v, len);
	}
	if (set->n)
		qsort(set->v, set->n, sizeof(*set->v), by_first_then_longest);
	for (size_t c = 0, i = 0; c <= 256; c++) {
		while (i < set->n && (unsigned char)set->v[i].s[0] < c)
			i++;
		set->first[c] = i;
	}
	return set;
}

void mask_set_free(struct mask_set *set)
{
	if (!set)
		return;
	for (size_t i = 0; i < set->n; i++) {
		memset(set->v[i].s, 0, set->v[i].len);
		free(set->v[i].s);
	}
	free(set->v);
	free(set);
}

size_t mask_set_count(const struct mask_set *set)
{
	return set ? set->n : 0;
}

size_t mask_set_longest(const struct mask_set *set)
{
	return set ? set->longest : 0;
}

/* ---- streams ----------------------------------------------------------- */

void mask_stream_init(struct mask_stream *s, const struct mask_set *set, int resumed)
{
	s->set = set;
	buf_init(&s->pend, BUF_NOLIMIT);
	s->covered = 0;
	s->resumed = resumed && set && set->n;
}

void mask_stream_release(struct mask_stream *s)
{
	if (s->pend.ptr)
		memset(s->pend.ptr, 0, s->pend.cap);
	buf_release(&s->pend);
	s->covered = 0;
}

size_t mask_stream_held(const struct mask_stream *s)
{
	return s->pend.len;
}

/* The longest leading piece of p[0..n) that is the end of a pattern. */
static size_t leading_end(const struct mask_set *set, const char *p, size_t n)
{
	size_t best = 0;
	for (size_t i = 0; i < set->n; i++) {
		const struct mask_pat *pt = &set->v[i];
		for (size_t k = pt->len - 1 < n ? pt->len - 1 : n; k > best && k >= MASK_MIN_LEN - 2; k--)
			if (!memcmp(p, pt->s + pt->len - k, k)) {
				best = k;
				break;
			}
	}
	return best;
}

/* Decide and emit what the pending bytes allow (all of them when final). */
static int process(struct mask_stream *s, int final, struct buf *out)
{
	const struct mask_set *set = s->set;
	char *p = s->pend.ptr;
	size_t n = s->pend.len, hold = n, reach = s->covered, i;
	unsigned char *hit;
	int rc = 0;

	if (!n)
		return 0;
	if (s->resumed) {
		if (!final && n < set->longest)
			return 0; /* not enough to tell yet */
		size_t k = leading_end(set, p, n);
		if (k > reach)
			reach = k;
		s->resumed = 0;
	}
	hit = xcalloc(n, 1);
	for (i = 0; i < reach && i < n; i++)
		hit[i] = 1;
	for (i = 0; i < hold; i++) {
		unsigned char c = (unsigned char)p[i];
		for (size_t k = set->first[c]; k < set->first[c + 1]; k++) {
			const struct mask_pat *pt = &set->v[k];
			if (pt->len <= n - i) {
				if (!memcmp(p + i, pt->s, pt->len)) {
					memset(hit + i, 1, pt->len);
					if (i + pt->len > reach)
						reach = i + pt->len;
				}
			} else if (!final && !memcmp(p + i, pt->s, n - i)) {
				hold = i; /* might still become a match */
				break;
			}
		}
	}
	for (i = 0; i < hold; i++)
		if (hit[i] && p[i] != '\n')
			p[i] = '*';
	rc = buf_put(out, p, hold);
	s->covered = reach > hold ? reach - hold : 0;
	memset(p, 0, hold);
	memmove(p, p + hold, n - hold);
	s->pend.len = n - hold;
	p[s->pend.len] = '\0';
	free(hit);
	return rc;
}

int mask_stream_feed(struct mask_stream *s, const void *data, size_t len, struct buf *out)
{
	int rc;
	if (!s->set || !s->set->n)
		return buf_put(out, data, len);
	if ((rc = buf_put(&s->pend, data, len)) < 0)
		return rc;
	return process(s, 0, out);
}

int mask_stream_flush(struct mask_stream *s, struct buf *out)
{
	if (!s->set || !s->set->n)
		return 0;
	return process(s, 1, out);
}

int mask_buffer(const struct mask_set *set, const void *data, size_t len, struct buf *out)
{
	struct mask_stream s;
	int rc;
	mask_stream_init(&s, set, 0);
	if ((rc = mask_stream_feed(&s, data, len, out)) == 0)
		rc = mask_stream_flush(&s, out);
	mask_stream_release(&s);
	return rc;
}

size_t mask_string(const struct mask_set *set, char *str)
{
	struct buf b = BUF_INIT;
	size_t len = strlen(str), changed = 0;

	if (!set || !set->n || !len)
		return 0;
	if (mask_buffer(set, str, len, &b) == 0 && b.len == len) {
		for (size_t i = 0; i < len; i++)
			changed += str[i] != b.ptr[i];
		memcpy(str, b.ptr, len);
	}
	memset(b.ptr, 0, b.len);
	buf_release(&b);
	return changed;
}
