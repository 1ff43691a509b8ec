/*
 * fleet_ckbody.c - a check-in body read without a heap (see fleet_ckbody.h).
 *
 * Check-ins are the fleet's most frequent request and their bodies are a
 * dozen small members; building a jansson tree for them was a sixth of a
 * device-API thread's time.  jsmn tokenizes the body into a token array on
 * the stack.  jsmn is lenient (it does not check what lies between tokens,
 * what a primitive spells or what a string holds), so this file checks
 * all of that itself, against the grammar jansson accepts:
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
 *   - no key twice in an object (jansson's JSON_REJECT_DUPLICATES).
 *
 * Anything it does not accept goes back to the caller (1), which parses
 * with jansson: the fast path never refuses a body by itself, so a
 * refusal's message is jansson's, as before, and a body it is unsure of
 * costs one extra tokenization.
 */
#include "fleet_ckbody.h"

#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#define CK_TOKENS 96        /* a check-in has ~25; more goes to jansson */
#define CK_KEY_MAX 128      /* a longer key goes to jansson */
#define CK_UNKNOWN_MAX 16   /* members of no meaning to a check-in */

static const char *const str_names[FCK_NSTR] = { "device", "product", "hardware", "bootloader", "version", "slot" };

/* The members checkin() reads: the string fields, then these. */
enum { KEY_COUNTER = FCK_NSTR, KEY_TAGS, KEY_UNKNOWN };

static int is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* From *pos: whitespace, the separator sep (0: none), whitespace; 1 when
 * that ends exactly at `at` (where the next token's first byte is). */
static int gap(const char *js, size_t *pos, size_t at, char sep)
{
	size_t p = *pos;
	while (p < at && is_ws(js[p]))
		p++;
	if (sep) {
		if (p >= at || js[p] != sep)
			return 0;
		p++;
		while (p < at && is_ws(js[p]))
			p++;
	}
	*pos = p;
	return p == at;
}

/* A token's first byte and the byte after it, quotes included. */
static size_t tok_begin(const jsmntok_t *t)
{
	return (size_t)(t->type == JSMN_STRING ? t->start - 1 : t->start);
}

static size_t tok_end(const jsmntok_t *t)
{
	return (size_t)(t->type == JSMN_STRING ? t->end + 1 : t->end);
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

/* The length of the valid UTF-8 sequence at s (n bytes left), 0 if none
 * (the same rules as jansson's utf8_check_first/utf8_check_full). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len;
	uint32_t v;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
		v = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		v = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		v = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && v < 0x800) || (len == 4 && v < 0x10000) || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	return len;
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

/* A byte a JSON string holds as itself: printable ASCII but the backslash
 * (the quote ends the token before it reaches here). */
static int plain(unsigned char c)
{
	return c >= 0x20 && c < 0x80 && c != '\\';
}

/*
 * Decodes the JSON string s[0, n) (between its quotes) into dst, NUL
 * terminated, within cap bytes; dst NULL: only checks.  The decoded
 * length, or -1 when jansson would refuse the string or it does not fit.
 */
static long str_decode(const char *s, size_t n, char *dst, size_t cap)
{
	size_t i = 0, o = 0;

	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		char u[4];
		size_t ul, run;
		/* the common case: a run of printable ASCII, copied at once */
		for (run = 0; i + run < n && plain((unsigned char)s[i + run]); run++)
			;
		if (run) {
			if (dst) {
				if (o + run >= cap)
					return -1;
				memcpy(dst + o, s + i, run);
			}
			o += run;
			i += run;
			continue;
		}
		if (c < 0x20)
			return -1; /* jansson: "control character" */
		if (c == '\\') {
			uint32_t cp;
			if (i + 1 >= n)
				return -1;
			switch (s[i + 1]) {
			case '"': cp = '"'; break;
			case '\\': cp = '\\'; break;
			case '/': cp = '/'; break;
			case 'b': cp = '\b'; break;
			case 'f': cp = '\f'; break;
			case 'n': cp = '\n'; break;
			case 'r': cp = '\r'; break;
			case 't': cp = '\t'; break;
			case 'u':
				if (i + 6 > n || hex4(s + i + 2, &cp) < 0)
					return -1;
				i += 4;
				if (cp >= 0xd800 && cp <= 0xdbff) { /* a high surrogate: its low one follows */
					uint32_t lo;
					if (i + 8 > n || s[i + 2] != '\\' || s[i + 3] != 'u' || hex4(s + i + 4, &lo) < 0 ||
					    lo < 0xdc00 || lo > 0xdfff)
						return -1;
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					i += 6;
				} else if ((cp >= 0xdc00 && cp <= 0xdfff) || cp == 0) {
					return -1; /* a lone low surrogate; \u0000 */
				}
				break;
			default: return -1;
			}
			i += 2;
			ul = utf8_put(cp, u);
			if (dst) {
				if (o + ul >= cap)
					return -1;
				memcpy(dst + o, u, ul);
			}
			o += ul;
			continue;
		}
		if (!(ul = utf8_seq((const unsigned char *)s + i, n - i)))
			return -1;
		if (dst) {
			if (o + ul >= cap)
				return -1;
			memcpy(dst + o, s + i, ul);
		}
		o += ul;
		i += ul;
	}
	if (dst) {
		if (o >= cap)
			return -1;
		dst[o] = 0;
	}
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

/* A string token's text decoded into out->text; NULL if refused. */
static const char *text_put(struct fleet_ckbody *out, const char *js, const jsmntok_t *t)
{
	char *dst = out->text + out->text_used;
	long n = str_decode(js + t->start, (size_t)(t->end - t->start), dst, sizeof(out->text) - out->text_used);
	if (n < 0)
		return NULL;
	out->text_used += (size_t)n + 1;
	return dst;
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

/* The "tags" object at token *i; 0, or -1 (to jansson). */
static int tags_parse(struct fleet_ckbody *out, const char *js, const jsmntok_t *t, int n, int *i)
{
	const jsmntok_t *obj = &t[*i];
	size_t pos = (size_t)obj->start + 1;
	int j = *i + 1;

	if (obj->size > FLEET_CKBODY_TAGS)
		return -1;
	for (int k = 0; k < obj->size; k++, j += 2) {
		const jsmntok_t *key, *val;
		const char *ks, *vs;
		if (j + 1 >= n)
			return -1;
		key = &t[j];
		val = &t[j + 1];
		if (key->type != JSMN_STRING || val->type != JSMN_STRING || !gap(js, &pos, tok_begin(key), k ? ',' : 0))
			return -1;
		pos = tok_end(key);
		if (!gap(js, &pos, tok_begin(val), ':') || !(ks = text_put(out, js, key)) || !(vs = text_put(out, js, val)))
			return -1;
		pos = tok_end(val);
		for (size_t m = 0; m < out->ntags; m++)
			if (!strcmp(out->tag_key[m], ks))
				return -1; /* a duplicate key */
		out->tag_key[out->ntags] = ks;
		out->tag_val[out->ntags++] = vs;
	}
	if (!gap(js, &pos, (size_t)obj->end - 1, 0))
		return -1;
	out->tags_kind = FCK_OBJECT;
	*i = j;
	return 0;
}

/* Which member a decoded key (kl bytes, no NUL inside when it matches)
 * names: by length first, one memcmp (a strcmp against every name was a
 * tenth of the parse). */
static int key_which(const char *key, size_t kl)
{
	static const struct {
		const char *name;
		size_t len;
		int which;
	} keys[] = {
		{ "device", 6, FCK_DEVICE },         { "product", 7, FCK_PRODUCT }, { "hardware", 8, FCK_HARDWARE },
		{ "bootloader", 10, FCK_BOOTLOADER }, { "version", 7, FCK_VERSION }, { "slot", 4, FCK_SLOT },
		{ "security_counter", 16, KEY_COUNTER }, { "tags", 4, KEY_TAGS },
	};
	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		if (keys[k].len == kl && !memcmp(key, keys[k].name, kl))
			return keys[k].which;
	return KEY_UNKNOWN;
}

int fleet_ckbody_parse(struct fleet_ckbody *out, const char *js, size_t len)
{
	jsmn_parser p;
	jsmntok_t t[CK_TOKENS];
	char key[CK_KEY_MAX];
	const char *unknown[CK_UNKNOWN_MAX];
	unsigned seen = 0;
	size_t pos = 0, nunknown = 0;
	int n, i = 1;

	init(out);
	if (len > (size_t)1 << 30)
		return 1;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, t, CK_TOKENS);
	if (n < 1 || t[0].type != JSMN_OBJECT || !gap(js, &pos, (size_t)t[0].start, 0))
		return 1;
	for (pos = (size_t)t[0].end; pos < len; pos++) /* jsmn stops at a NUL byte: check to the end */
		if (!is_ws(js[pos]))
			return 1;
	pos = (size_t)t[0].start + 1;
	for (int k = 0; k < t[0].size; k++) {
		const jsmntok_t *kt, *vt;
		long kl;
		int which = KEY_UNKNOWN, vk;
		int64_t num = 0;

		if (i + 1 >= n)
			return 1;
		kt = &t[i];
		vt = &t[i + 1];
		if (kt->type != JSMN_STRING || !gap(js, &pos, tok_begin(kt), k ? ',' : 0))
			return 1;
		pos = tok_end(kt);
		if (!gap(js, &pos, tok_begin(vt), ':') ||
		    (kl = str_decode(js + kt->start, (size_t)(kt->end - kt->start), key, sizeof(key))) < 0)
			return 1;
		which = key_which(key, (size_t)kl);
		if (which != KEY_UNKNOWN) {
			if (seen & (1u << which))
				return 1; /* a duplicate key */
			seen |= 1u << which;
		} else {
			/* a member no check-in reads: checked (jansson would), kept for
			 * the duplicate check only */
			char *copy = out->text + out->text_used;
			if (nunknown >= CK_UNKNOWN_MAX || (size_t)kl + 1 > sizeof(out->text) - out->text_used)
				return 1;
			memcpy(copy, key, (size_t)kl + 1);
			out->text_used += (size_t)kl + 1;
			for (size_t m = 0; m < nunknown; m++)
				if (!strcmp(unknown[m], copy))
					return 1;
			unknown[nunknown++] = copy;
		}
		pos = tok_end(vt);
		if (vt->type == JSMN_OBJECT) {
			i++;
			if (which != KEY_TAGS || tags_parse(out, js, t, n, &i) < 0)
				return 1;
			continue;
		}
		if (vt->type == JSMN_STRING) {
			if (which < FCK_NSTR) {
				if (!(out->str[which] = text_put(out, js, vt)))
					return 1;
				out->kind[which] = FCK_STRING;
			} else {
				if (str_decode(js + vt->start, (size_t)(vt->end - vt->start), NULL, 0) < 0)
					return 1;
				if (which == KEY_COUNTER)
					out->counter_kind = FCK_STRING;
				else if (which == KEY_TAGS)
					out->tags_kind = FCK_STRING;
			}
		} else if (vt->type == JSMN_PRIMITIVE) {
			if ((vk = primitive(js + vt->start, (size_t)(vt->end - vt->start), &num)) < 0)
				return 1;
			if (which < FCK_NSTR) {
				out->kind[which] = vk;
			} else if (which == KEY_COUNTER) {
				out->counter_kind = vk;
				out->counter = vk == FCK_INTEGER ? num : 0;
			} else if (which == KEY_TAGS) {
				out->tags_kind = vk;
			}
		} else {
			return 1; /* an array: to jansson */
		}
		i += 2;
	}
	if (!gap(js, &pos, (size_t)t[0].end - 1, 0) || i != n)
		return 1;
	return 0;
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
