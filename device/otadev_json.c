/*
 * otadev_json.c - the two JSON answers a device reads (check-in, report
 * batch), parsed without a heap with jsmn (Debian's libjsmn-dev, a
 * header-only tokenizer, MIT) into tokens the caller provides.
 *
 * Only the members the protocol defines are read (docs/update-server.md);
 * unknown members are skipped, every string is copied with its length
 * checked against the destination, and numbers are parsed here (no strtod:
 * a Cortex-M build should not pull in the float formatter) with overflow
 * checks.  A string containing an escape is refused where the protocol's
 * character sets cannot contain one (versions, URLs, hardware names).
 * fuzz/fuzz_otadev.c runs otadev_checkin_parse on arbitrary bytes.
 */
#include "otadev.h"

#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS
#include <jsmn.h>

/* The caller's token storage holds OTADEV_TOKENS jsmntok_t (5 ints each). */
typedef char otadev_tok_size_check[sizeof(jsmntok_t) <= 5 * sizeof(uint32_t) ? 1 : -1];

static int eq(const char *js, const jsmntok_t *t, const char *s)
{
	size_t n = strlen(s);
	return t->type == JSMN_STRING && (size_t)(t->end - t->start) == n && !memcmp(js + t->start, s, n);
}

/* Index of the token after the value at i (its whole subtree). */
static int skip(const jsmntok_t *t, int i, int n)
{
	int end = i + 1, pending = t[i].size;
	while (pending > 0 && end < n) {
		pending += t[end].size - 1;
		end++;
	}
	return end;
}

static int get_u64(const char *js, const jsmntok_t *t, uint64_t *out)
{
	uint64_t v = 0;
	int i;
	if (t->type != JSMN_PRIMITIVE || t->end <= t->start || t->end - t->start > 20)
		return OTADEV_EINVAL;
	for (i = t->start; i < t->end; i++) {
		unsigned d;
		if (js[i] < '0' || js[i] > '9')
			return OTADEV_EINVAL;
		d = (unsigned)(js[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return OTADEV_EINVAL;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static int get_u32(const char *js, const jsmntok_t *t, uint32_t *out)
{
	uint64_t v;
	if (get_u64(js, t, &v) < 0 || v > 0xffffffffu)
		return OTADEV_EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* A non-negative decimal number: digits [. digits] [e[+-]digits]. */
static int get_double(const char *js, const jsmntok_t *t, double *out)
{
	double v = 0, scale = 1;
	int i = t->start, e = 0, eneg = 0, digits = 0;
	if (t->type != JSMN_PRIMITIVE || t->end - t->start > 40)
		return OTADEV_EINVAL;
	for (; i < t->end && js[i] >= '0' && js[i] <= '9'; i++, digits++)
		v = v * 10 + (js[i] - '0');
	if (i < t->end && js[i] == '.')
		for (i++; i < t->end && js[i] >= '0' && js[i] <= '9'; i++, digits++) {
			scale /= 10;
			v += (js[i] - '0') * scale;
		}
	if (!digits)
		return OTADEV_EINVAL;
	if (i < t->end && (js[i] == 'e' || js[i] == 'E')) {
		i++;
		if (i < t->end && (js[i] == '+' || js[i] == '-'))
			eneg = js[i++] == '-';
		if (i >= t->end)
			return OTADEV_EINVAL;
		for (; i < t->end && js[i] >= '0' && js[i] <= '9'; i++)
			if ((e = e * 10 + (js[i] - '0')) > 300)
				return OTADEV_EINVAL;
		while (e-- > 0)
			v = eneg ? v / 10 : v * 10;
	}
	if (i != t->end)
		return OTADEV_EINVAL;
	*out = v;
	return 0;
}

static int get_str(const char *js, const jsmntok_t *t, char *dst, size_t cap)
{
	size_t n = (size_t)(t->end - t->start);
	size_t i;
	if (t->type != JSMN_STRING || n == 0 || n >= cap)
		return OTADEV_EINVAL;
	for (i = 0; i < n; i++)
		if (js[t->start + (int)i] == '\\' || (unsigned char)js[t->start + (int)i] < 0x20)
			return OTADEV_EINVAL;
	memcpy(dst, js + t->start, n);
	dst[n] = 0;
	return 0;
}

static int get_sha(const char *js, const jsmntok_t *t, uint8_t out[32])
{
	if (t->type != JSMN_STRING)
		return OTADEV_EINVAL;
	return otadev_sha256_from_hex(out, js + t->start, (size_t)(t->end - t->start));
}

static int parse_image(struct otadev_offer *o, const char *js, const jsmntok_t *t, int i, int n, int *seen)
{
	int end = skip(t, i, n), k;
	if (t[i].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	for (k = i + 1; k < end; k = skip(t, k + 1, n)) {
		const jsmntok_t *v = &t[k + 1];
		int rc = 0;
		if (k + 1 >= n)
			return OTADEV_EINVAL;
		if (eq(js, &t[k], "url") && v->type == JSMN_STRING && v->end - v->start >= (int)sizeof(o->url))
			o->url[0] = 0, *seen |= 1 | 64; /* too long for this build: the offer is refused */
		else if (eq(js, &t[k], "url"))
			rc = get_str(js, v, o->url, sizeof(o->url)), *seen |= 1;
		else if (eq(js, &t[k], "sha256"))
			rc = get_sha(js, v, o->sha256), *seen |= 2;
		else if (eq(js, &t[k], "size"))
			rc = get_u32(js, v, &o->size), *seen |= 4;
		else if (eq(js, &t[k], "hardware"))
			rc = get_str(js, v, o->hardware, sizeof(o->hardware)), *seen |= 8;
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* issue 15: "delta": {url, size, sha256, base}, all required */
static int parse_delta(struct otadev_delta *dl, const char *js, const jsmntok_t *t, int i, int n)
{
	int end = skip(t, i, n), k, seen = 0;
	memset(dl, 0, sizeof(*dl));
	if (t[i].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	for (k = i + 1; k < end; k = skip(t, k + 1, n)) {
		const jsmntok_t *v = &t[k + 1];
		int rc = 0;
		if (k + 1 >= n)
			return OTADEV_EINVAL;
		if (eq(js, &t[k], "url"))
			rc = get_str(js, v, dl->url, sizeof(dl->url)), seen |= 1;
		else if (eq(js, &t[k], "size"))
			rc = get_u32(js, v, &dl->size), seen |= 2;
		else if (eq(js, &t[k], "sha256"))
			rc = get_sha(js, v, dl->sha256), seen |= 4;
		else if (eq(js, &t[k], "base"))
			rc = get_sha(js, v, dl->base), seen |= 8;
		if (rc < 0)
			return rc;
	}
	return seen == 15 && dl->size > 0 ? 0 : OTADEV_EINVAL;
}

static int parse_offer(struct otadev_checkin *c, const char *js, const jsmntok_t *t, int i, int n)
{
	struct otadev_offer *o = &c->offer;
	int end = skip(t, i, n), k, seen = 0;
	memset(o, 0, sizeof(*o));
	if (t[i].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	for (k = i + 1; k < end; k = skip(t, k + 1, n)) {
		const jsmntok_t *v = &t[k + 1];
		int rc = 0;
		if (k + 1 >= n)
			return OTADEV_EINVAL;
		if (eq(js, &t[k], "release"))
			rc = get_u32(js, v, &o->release);
		else if (eq(js, &t[k], "version"))
			rc = get_str(js, v, o->version, sizeof(o->version)), seen |= 16;
		else if (eq(js, &t[k], "security_counter"))
			rc = get_u32(js, v, &o->security_counter), seen |= 32;
		else if (eq(js, &t[k], "min_bootloader") && v->type == JSMN_STRING)
			rc = get_str(js, v, o->min_bootloader, sizeof(o->min_bootloader));
		else if (eq(js, &t[k], "image"))
			rc = parse_image(o, js, t, k + 1, n, &seen);
		else if (eq(js, &t[k], "delta") && v->type == JSMN_OBJECT) {
			/* a malformed delta only loses the delta, never the offer */
			c->has_delta = parse_delta(&c->delta, js, t, k + 1, n) == 0;
		}
		if (rc < 0)
			return rc;
	}
	/* url, sha256, size, hardware, version and counter are all required;
	 * a URL past OTADEV_URL_MAX still makes an offer, which the state
	 * machine refuses (reported), rather than a check-in error */
	c->url_too_long = (seen & 64) != 0;
	return (seen & 63) == 63 ? 0 : OTADEV_EINVAL;
}

int otadev_checkin_parse(struct otadev_checkin *out, const char *js, size_t len, void *tokens, size_t ntokens)
{
	jsmntok_t *t = tokens;
	jsmn_parser p;
	int n, k, rc;

	memset(out, 0, sizeof(*out));
	out->time_scale = 1.0;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, t, (unsigned)ntokens);
	if (n < 1 || t[0].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	for (k = 1; k < n; k = skip(t, k + 1, n)) {
		const jsmntok_t *v = &t[k + 1];
		rc = 0;
		if (k + 1 >= n || t[k].type != JSMN_STRING)
			return OTADEV_EINVAL;
		if (eq(js, &t[k], "now"))
			rc = get_u64(js, v, &out->now);
		else if (eq(js, &t[k], "time_scale"))
			rc = get_double(js, v, &out->time_scale);
		else if (eq(js, &t[k], "next_poll_ms"))
			rc = get_u64(js, v, &out->next_poll_ms);
		else if (eq(js, &t[k], "revocations"))
			rc = get_u64(js, v, &out->revocations);
		else if (eq(js, &t[k], "flags") && v->type == JSMN_OBJECT) {
			out->flags_off = (uint32_t)v->start;   /* issue 17: left to the application */
			out->flags_len = (uint32_t)(v->end - v->start);
		} else if (eq(js, &t[k], "offer") && v->type == JSMN_OBJECT) {
			rc = parse_offer(out, js, t, k + 1, n);
			out->has_offer = rc == 0;
		} else if (eq(js, &t[k], "offer") && !(v->type == JSMN_PRIMITIVE && js[v->start] == 'n'))
			rc = OTADEV_EINVAL;
		if (rc < 0)
			return rc;
	}
	if (!(out->time_scale > 0) || out->time_scale > 1e6)
		return OTADEV_EINVAL;
	return 0;
}

int otadev_defer_parse(struct otadev_defer *out, const char *js, size_t len, void *tokens, size_t ntokens)
{
	jsmntok_t *t = tokens;
	jsmn_parser p;
	int n, k, rc, seen = 0;

	memset(out, 0, sizeof(*out));
	out->time_scale = 1.0;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, t, (unsigned)ntokens);
	if (n < 1 || t[0].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	for (k = 1; k < n; k = skip(t, k + 1, n)) {
		const jsmntok_t *v = &t[k + 1];
		rc = 0;
		if (k + 1 >= n || t[k].type != JSMN_STRING)
			return OTADEV_EINVAL;
		if (eq(js, &t[k], "retry_after_ms"))
			rc = get_u64(js, v, &out->retry_after_ms), seen = 1;
		else if (eq(js, &t[k], "turn"))
			rc = get_u64(js, v, &out->turn);
		else if (eq(js, &t[k], "retry_window_ms"))
			rc = get_u64(js, v, &out->window_ms);
		else if (eq(js, &t[k], "time_scale"))
			rc = get_double(js, v, &out->time_scale);
		if (rc < 0)
			return rc;
	}
	if (!seen || !(out->time_scale > 0) || out->time_scale > 1e6)
		return OTADEV_EINVAL;
	return 0;
}

int otadev_reports_parse(uint32_t *accepted, uint32_t *retry_mask, uint32_t *drop_mask, const char *js,
			 size_t len, void *tokens, size_t ntokens)
{
	jsmntok_t *t = tokens;
	jsmn_parser p;
	int n, k;

	*accepted = 0;
	*retry_mask = *drop_mask = 0;
	jsmn_init(&p);
	n = jsmn_parse(&p, js, len, t, (unsigned)ntokens);
	if (n < 1 || t[0].type != JSMN_OBJECT)
		return OTADEV_EINVAL;
	for (k = 1; k < n; k = skip(t, k + 1, n)) {
		int e, j;
		if (k + 1 >= n)
			return OTADEV_EINVAL;
		if (eq(js, &t[k], "accepted")) {
			if (get_u32(js, &t[k + 1], accepted) < 0)
				return OTADEV_EINVAL;
		} else if (eq(js, &t[k], "refused") && t[k + 1].type == JSMN_ARRAY) {
			e = skip(t, k + 1, n);
			for (j = k + 2; j < e; j = skip(t, j, n)) {
				uint32_t index = 32;
				int retry = 0, m, me = skip(t, j, n);
				if (t[j].type != JSMN_OBJECT)
					return OTADEV_EINVAL;
				for (m = j + 1; m + 1 < me; m = skip(t, m + 1, n)) {
					if (eq(js, &t[m], "index") && get_u32(js, &t[m + 1], &index) < 0)
						return OTADEV_EINVAL;
					if (eq(js, &t[m], "retry"))
						retry = t[m + 1].type == JSMN_PRIMITIVE && js[t[m + 1].start] == 't';
				}
				if (index < 32) {
					if (retry)
						*retry_mask |= 1u << index;
					else
						*drop_mask |= 1u << index;
				}
			}
		}
	}
	return 0;
}

const char *otadev_event_name(int ev)
{
	static const char *const names[] = { "?", "download", "install", "boot_ok", "boot_fail",
					     "revert", "heartbeat", "refused" };
	return ev >= 1 && ev <= OTADEV_EV_REFUSED ? names[ev] : "?";
}
