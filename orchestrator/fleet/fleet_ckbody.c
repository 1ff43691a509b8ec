/*
 * fleet_ckbody.c - a check-in body read without a heap (see fleet_ckbody.h).
 *
 * Check-ins are the fleet's most frequent request and their bodies are a
 * dozen small members; building a jansson tree for them was a sixth of a
 * device-API thread's time.  This file reads a body in one pass, left to
 * right, with no token array: each member's key is decoded and matched as
 * it is met, each value the check-in reads is decoded straight into the
 * struct, and the grammar is checked on the way.  (It used jsmn before:
 * jsmn is lenient, so its tokens had to be walked a second time to check
 * what lay between them, what a literal spelled and what a string held;
 * the two passes were the largest item of a check-in's own cost,
 * docs/benchmarks.md.)  What it accepts is a subset of what jansson
 * accepts, read to the same values:
 *
 *   - between tokens only JSON whitespace and the one separator the
 *     grammar puts there (':' after a key, ',' between members), nothing
 *     but whitespace after the object;
 *   - literals are exactly true, false, null, or an integer without
 *     leading zeros that fits int64 (jansson's json_int_t); a real or an
 *     exponent is left to jansson;
 *   - strings: no raw control character, escapes as JSON defines them,
 *     \u0000 and unpaired surrogates refused (jansson without
 *     JSON_ALLOW_NUL), raw bytes valid UTF-8 (no overlong forms, no
 *     surrogates, nothing past U+10FFFF);
 *   - no key twice in an object (jansson's JSON_REJECT_DUPLICATES);
 *   - objects only as "tags" with string values, no arrays.
 *
 * Anything it does not accept goes back to the caller (1), which parses
 * with jansson: the fast path never refuses a body by itself, so a
 * refusal's message is jansson's, as before, and a body it is unsure of
 * costs one extra read.
 */
#include "fleet_ckbody.h"
#include "../../common/utf8.h"

#include <string.h>

#define CK_KEY_MAX 128      /* a longer key goes to jansson */
#define CK_UNKNOWN_MAX 16   /* members of no meaning to a check-in */

static const char *const str_names[FCK_NSTR] = { "device", "product", "hardware", "bootloader", "version", "slot" };

/* The members checkin() reads: the string fields, then these. */
enum { KEY_COUNTER = FCK_NSTR, KEY_TAGS, KEY_UNKNOWN };

static inline int is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The body being read and where: every read below checks pos < len. */
struct scan {
	const char *js;
	size_t len, pos;
};

static inline void skip_ws(struct scan *sc)
{
	while (sc->pos < sc->len && is_ws(sc->js[sc->pos]))
		sc->pos++;
}

/* 1 (and past it) when the next byte is c. */
static inline int eat(struct scan *sc, char c)
{
	if (sc->pos < sc->len && sc->js[sc->pos] == c) {
		sc->pos++;
		return 1;
	}
	return 0;
}

/* After a value: whitespace, then 1 for ',' (another member follows), 0
 * for '}' (the object ends), -1 for anything else. */
static int next_member(struct scan *sc)
{
	skip_ws(sc);
	if (eat(sc, ','))
		return 1;
	return eat(sc, '}') ? 0 : -1;
}

static int hex4(const char *s, uint32_t *out)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static size_t utf8_put(uint32_t cp, char *u)
{
	if (cp < 0x80) {
		u[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	u[0] = (char)(0xf0 | (cp >> 18));
	u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	u[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* 1 for a byte a JSON string holds as itself: printable ASCII but the
 * quote (which ends the string) and the backslash (which starts an
 * escape).  A table: one load per byte of the scan's inner loop instead
 * of four compares. */
#define X16(x) x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x
static const unsigned char plain_byte[256] = {
	X16(0), X16(0),                                        /* 0x00-0x1f: control characters */
	1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,        /* 0x20-0x2f: '"' at 0x22 */
	X16(1), X16(1),                                        /* 0x30-0x4f */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,        /* 0x50-0x5f: '\\' at 0x5c */
	X16(1), X16(1),                                        /* 0x60-0x7f (DEL too, as jansson) */
	X16(0), X16(0), X16(0), X16(0), X16(0), X16(0), X16(0), X16(0), /* 0x80-0xff: UTF-8, checked apart */
};
#undef X16

static inline int plain(unsigned char c)
{
	return plain_byte[c];
}

/* The escape at s[*i] ('\\' included, n bytes in all) decoded into *cp,
 * *i past it; -1 when jansson would refuse it. */
static int escape(const char *s, size_t n, size_t *i, uint32_t *cp)
{
	size_t at = *i;

	if (at + 1 >= n)
		return -1;
	switch (s[at + 1]) {
	case '"': *cp = '"'; break;
	case '\\': *cp = '\\'; break;
	case '/': *cp = '/'; break;
	case 'b': *cp = '\b'; break;
	case 'f': *cp = '\f'; break;
	case 'n': *cp = '\n'; break;
	case 'r': *cp = '\r'; break;
	case 't': *cp = '\t'; break;
	case 'u':
		if (at + 6 > n || hex4(s + at + 2, cp) < 0)
			return -1;
		at += 4;
		if (*cp >= 0xd800 && *cp <= 0xdbff) { /* a high surrogate: its low one follows */
			uint32_t lo;
			if (at + 8 > n || s[at + 2] != '\\' || s[at + 3] != 'u' || hex4(s + at + 4, &lo) < 0 ||
			    lo < 0xdc00 || lo > 0xdfff)
				return -1;
			*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
			at += 6;
		} else if ((*cp >= 0xdc00 && *cp <= 0xdfff) || *cp == 0) {
			return -1; /* a lone low surrogate; \u0000 */
		}
		break;
	default: return -1;
	}
	*i = at + 2;
	return 0;
}

/* Appends b[0, n) to dst (cap bytes, room kept for the NUL) at *o; dst
 * NULL: only counts.  -1 when it does not fit. */
static int put(char *dst, size_t cap, size_t *o, const char *b, size_t n)
{
	if (dst) {
		if (*o + n >= cap)
			return -1;
		memcpy(dst + *o, b, n);
	}
	*o += n;
	return 0;
}

/*
 * The string whose opening quote is just behind sc->pos, decoded into dst
 * (NUL terminated, within cap bytes; dst NULL: only checked), sc->pos
 * moved past its closing quote.  The decoded length, or -1 when jansson
 * would refuse the string, it is not closed, or it does not fit.
 */
static long str_read(struct scan *sc, char *dst, size_t cap)
{
	const char *s = sc->js;
	size_t i = sc->pos, n = sc->len, o = 0;

	for (;;) {
		size_t ul;
		unsigned char c;
		char u[4];
		uint32_t cp;
		/* the common case: printable ASCII, copied as it is scanned (a
		 * memcpy per run was a call per run of a few bytes) */
		if (dst) {
			/* o < cap here: at most cap - 1 - o more bytes fit */
			size_t lim = n - i < cap - 1 - o ? n : i + (cap - 1 - o);
			while (i < lim && plain((unsigned char)s[i]))
				dst[o++] = s[i++];
		} else {
			size_t run = i;
			while (run < n && plain((unsigned char)s[run]))
				run++;
			o += run - i;
			i = run;
		}
		if (i >= n)
			return -1; /* not closed */
		c = (unsigned char)s[i];
		if (c == '"')
			break;
		if (plain(c))
			return -1; /* dst is full */
		if (c < 0x20)
			return -1; /* jansson: "control character" */
		if (c == '\\') {
			if (escape(s, n, &i, &cp) < 0)
				return -1;
			ul = utf8_put(cp, u);
			if (put(dst, cap, &o, u, ul) < 0)
				return -1;
			continue;
		}
		if (!(ul = utf8_seq((const unsigned char *)s + i, n - i)) || put(dst, cap, &o, s + i, ul) < 0)
			return -1;
		i += ul;
	}
	if (dst) {
		if (o >= cap)
			return -1;
		dst[o] = 0;
	}
	sc->pos = i + 1;
	return (long)o;
}

/* An integer literal as jansson reads one: -?(0|[1-9][0-9]*) within
 * int64.  -1: anything else (a real, an exponent, garbage, too large). */
static int int_parse(const char *s, size_t n, int64_t *out)
{
	size_t i = 0;
	uint64_t v = 0, limit;
	int neg = 0;

	if (n && s[0] == '-') {
		neg = 1;
		i = 1;
	}
	if (i >= n || (s[i] == '0' && n - i > 1))
		return -1;
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; i < n; i++) {
		unsigned d = (unsigned)(unsigned char)s[i] - '0';
		if (d > 9 || v > (limit - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = !neg ? (int64_t)v : v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	return 0;
}

/* A primitive's kind (FCK_NULL, FCK_INTEGER, FCK_OTHER for a boolean),
 * -1 for what jansson reads otherwise or refuses. */
static int primitive(const char *s, size_t n, int64_t *num)
{
	if (n == 4 && !memcmp(s, "null", 4))
		return FCK_NULL;
	if ((n == 4 && !memcmp(s, "true", 4)) || (n == 5 && !memcmp(s, "false", 5)))
		return FCK_OTHER;
	return int_parse(s, n, num) < 0 ? -1 : FCK_INTEGER;
}

/* A string value (its opening quote just read) decoded into out->text;
 * NULL if refused. */
static const char *text_read(struct fleet_ckbody *out, struct scan *sc)
{
	char *dst = out->text + out->text_used;
	long n = str_read(sc, dst, sizeof(out->text) - out->text_used);
	if (n < 0)
		return NULL;
	out->text_used += (size_t)n + 1;
	return dst;
}

/* A byte a JSON literal (true, false, null, a number) can hold; the
 * literal's spelling is checked by primitive(). */
static int literal_byte(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' ||
	       c == '.';
}

/* The literal at sc->pos: its kind (primitive()), sc->pos past it; -1. */
static int literal_read(struct scan *sc, int64_t *num)
{
	size_t start = sc->pos;
	while (sc->pos < sc->len && literal_byte(sc->js[sc->pos]))
		sc->pos++;
	return primitive(sc->js + start, sc->pos - start, num);
}

static void init(struct fleet_ckbody *out)
{
	out->is_object = 1;
	for (int i = 0; i < FCK_NSTR; i++) {
		out->kind[i] = FCK_ABSENT;
		out->str[i] = NULL;
	}
	out->counter_kind = FCK_ABSENT;
	out->counter = 0;
	out->tags_kind = FCK_ABSENT;
	out->ntags = 0;
	out->text_used = 0;
}

/* The "tags" object, its '{' just read: string keys to string values
 * (anything else goes to jansson); 0, or -1. */
static int tags_read(struct fleet_ckbody *out, struct scan *sc)
{
	int more;

	skip_ws(sc);
	if (eat(sc, '}')) {
		out->tags_kind = FCK_OBJECT;
		return 0;
	}
	do {
		const char *ks, *vs;
		skip_ws(sc);
		if (out->ntags >= FLEET_CKBODY_TAGS || !eat(sc, '"') || !(ks = text_read(out, sc)))
			return -1;
		skip_ws(sc);
		if (!eat(sc, ':'))
			return -1;
		skip_ws(sc);
		if (!eat(sc, '"') || !(vs = text_read(out, sc)))
			return -1;
		for (size_t m = 0; m < out->ntags; m++)
			if (!strcmp(out->tag_key[m], ks))
				return -1; /* a duplicate key */
		out->tag_key[out->ntags] = ks;
		out->tag_val[out->ntags++] = vs;
	} while ((more = next_member(sc)) > 0);
	if (more < 0)
		return -1;
	out->tags_kind = FCK_OBJECT;
	return 0;
}

/* Which member a key (kl bytes, no NUL inside when it matches) names:
 * by length, then a memcmp of constant length the compiler inlines (a
 * strcmp against every name was a tenth of the parse, a memcmp call per
 * name of the same length most of the rest). */
static int key_which(const char *key, size_t kl)
{
	switch (kl) {
	case 4:
		if (!memcmp(key, "slot", 4))
			return FCK_SLOT;
		return !memcmp(key, "tags", 4) ? KEY_TAGS : KEY_UNKNOWN;
	case 6: return !memcmp(key, "device", 6) ? FCK_DEVICE : KEY_UNKNOWN;
	case 7:
		if (!memcmp(key, "product", 7))
			return FCK_PRODUCT;
		return !memcmp(key, "version", 7) ? FCK_VERSION : KEY_UNKNOWN;
	case 8: return !memcmp(key, "hardware", 8) ? FCK_HARDWARE : KEY_UNKNOWN;
	case 10: return !memcmp(key, "bootloader", 10) ? FCK_BOOTLOADER : KEY_UNKNOWN;
	case 16: return !memcmp(key, "security_counter", 16) ? KEY_COUNTER : KEY_UNKNOWN;
	default: return KEY_UNKNOWN;
	}
}

/* What the members seen so far were, for the duplicate check. */
struct seen {
	unsigned known;                     /* bit `which` per member read */
	size_t nunknown;
	const char *unknown[CK_UNKNOWN_MAX];   /* keys no check-in reads */
};

/* A key (its opening quote just read) decoded and matched; 1 if seen
 * before: -1 (to jansson, which words the refusal).  Its member, or -1. */
static int key_read(struct fleet_ckbody *out, struct scan *sc, struct seen *seen)
{
	char buf[CK_KEY_MAX];
	const char *key = sc->js + sc->pos;
	size_t kl = 0;
	int which;
	char *copy;

	/* a key of printable ASCII without escapes (all a device sends) is
	 * matched where it lies; any other is decoded first */
	while (sc->pos + kl < sc->len && plain((unsigned char)key[kl]))
		kl++;
	if (sc->pos + kl < sc->len && key[kl] == '"') {
		sc->pos += kl + 1;
	} else {
		long dl = str_read(sc, buf, sizeof(buf));
		if (dl < 0)
			return -1;
		key = buf;
		kl = (size_t)dl;
	}
	which = key_which(key, kl);
	if (which != KEY_UNKNOWN) {
		if (seen->known & (1u << which))
			return -1; /* a duplicate key */
		seen->known |= 1u << which;
		return which;
	}
	/* a member no check-in reads: checked (jansson would), kept for the
	 * duplicate check only */
	copy = out->text + out->text_used;
	if (seen->nunknown >= CK_UNKNOWN_MAX || kl + 1 > sizeof(out->text) - out->text_used)
		return -1;
	memcpy(copy, key, kl);
	copy[kl] = 0;
	out->text_used += kl + 1;
	for (size_t m = 0; m < seen->nunknown; m++)
		if (!strcmp(seen->unknown[m], copy))
			return -1;
	seen->unknown[seen->nunknown++] = copy;
	return KEY_UNKNOWN;
}

/* Member `which`'s value, at sc->pos, read into *out; 0, or -1. */
static int value_read(struct fleet_ckbody *out, struct scan *sc, int which)
{
	int64_t num = 0;
	int kind;

	if (eat(sc, '{'))
		return which == KEY_TAGS ? tags_read(out, sc) : -1; /* other objects: to jansson */
	if (eat(sc, '"')) {
		if (which < FCK_NSTR) {
			if (!(out->str[which] = text_read(out, sc)))
				return -1;
		} else if (str_read(sc, NULL, 0) < 0) {
			return -1;
		}
		kind = FCK_STRING;
	} else if ((kind = literal_read(sc, &num)) < 0) {
		return -1; /* arrays, reals, anything else: to jansson */
	}
	if (which < FCK_NSTR) {
		out->kind[which] = kind;
	} else if (which == KEY_COUNTER) {
		out->counter_kind = kind;
		out->counter = kind == FCK_INTEGER ? num : 0;
	} else if (which == KEY_TAGS) {
		out->tags_kind = kind;
	}
	return 0;
}

int fleet_ckbody_parse(struct fleet_ckbody *out, const char *js, size_t len)
{
	struct scan sc = { js, len, 0 };
	struct seen seen;
	int more;

	seen.known = 0;
	seen.nunknown = 0;
	init(out);
	if (len > (size_t)1 << 30)
		return 1;
	skip_ws(&sc);
	if (!eat(&sc, '{'))
		return 1;
	skip_ws(&sc);
	if (!eat(&sc, '}')) {
		do {
			int which;
			skip_ws(&sc);
			if (!eat(&sc, '"') || (which = key_read(out, &sc, &seen)) < 0)
				return 1;
			skip_ws(&sc);
			if (!eat(&sc, ':'))
				return 1;
			skip_ws(&sc);
			if (value_read(out, &sc, which) < 0)
				return 1;
		} while ((more = next_member(&sc)) > 0);
		if (more < 0)
			return 1;
	}
	skip_ws(&sc); /* then nothing: a NUL byte or anything else goes to jansson */
	return sc.pos == len ? 0 : 1;
}

/* ---- from a jansson tree ------------------------------------------------ */

static int kind_of(const json_t *v)
{
	if (!v)
		return FCK_ABSENT;
	if (json_is_string(v))
		return FCK_STRING;
	if (json_is_integer(v))
		return FCK_INTEGER;
	if (json_is_null(v))
		return FCK_NULL;
	if (json_is_object(v))
		return FCK_OBJECT;
	return FCK_OTHER;
}

void fleet_ckbody_from_json(struct fleet_ckbody *out, const json_t *body)
{
	const json_t *v;
	const char *k;

	init(out);
	if (!(out->is_object = json_is_object(body)))
		return;
	for (int i = 0; i < FCK_NSTR; i++) {
		v = json_object_get(body, str_names[i]);
		out->kind[i] = kind_of(v);
		out->str[i] = json_is_string(v) ? json_string_value(v) : NULL;
	}
	v = json_object_get(body, "security_counter");
	out->counter_kind = kind_of(v);
	out->counter = json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
	v = json_object_get(body, "tags");
	out->tags_kind = kind_of(v);
	if (out->tags_kind != FCK_OBJECT)
		return;
	out->ntags = json_object_size(v);
	{
		size_t m = 0;
		json_t *tv;
		/* insertion order: the order of the body, as the fast path reads it */
		json_object_foreach((json_t *)v, k, tv) {
			if (m >= FLEET_CKBODY_TAGS)
				break;
			out->tag_key[m] = k;
			out->tag_val[m++] = json_is_string(tv) ? json_string_value(tv) : NULL;
		}
	}
}

static int str_eq(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

int fleet_ckbody_equal(const struct fleet_ckbody *a, const struct fleet_ckbody *b)
{
	if (a->is_object != b->is_object)
		return 0;
	if (!a->is_object)
		return 1;
	for (int i = 0; i < FCK_NSTR; i++)
		if (a->kind[i] != b->kind[i] || !str_eq(a->str[i], b->str[i]))
			return 0;
	if (a->counter_kind != b->counter_kind || a->counter != b->counter || a->tags_kind != b->tags_kind ||
	    a->ntags != b->ntags)
		return 0;
	for (size_t i = 0; i < a->ntags && i < FLEET_CKBODY_TAGS; i++)
		if (!str_eq(a->tag_key[i], b->tag_key[i]) || !str_eq(a->tag_val[i], b->tag_val[i]))
			return 0;
	return 1;
}
