/*
 * origin.c - the image URL an offer carries; see origin.h.
 *
 * The configuration is set once at start, before the device API runs, and
 * only read afterwards (any thread).
 */
#include "origin.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/util.h"
#include "../artifact.h"

enum origin_kind { ORIGIN_OTACD, ORIGIN_CDN, ORIGIN_S3 };

static struct {
	enum origin_kind kind;
	char *url;        /* cdn: base URL, no trailing '/' */
	int64_t ttl;      /* s3: presigned URL lifetime, seconds */
	char *token;      /* the CDN's pull token, NULL: pull endpoint off */
} g = { ORIGIN_OTACD, NULL, 3600, NULL };

void origin_shutdown(void)
{
	free(g.url);
	if (g.token)
		OPENSSL_cleanse(g.token, strlen(g.token));
	free(g.token);
	memset(&g, 0, sizeof(g));
	g.ttl = 3600;
}

static int read_token(const char *file)
{
	struct buf b;
	int rc;
	buf_init(&b, 4096);
	if ((rc = ota_read_file(&b, file, 4096)) < 0) {
		buf_release(&b);
		return ota_error_set(rc, "image_origin: cannot read token_file %s", file);
	}
	while (b.len && (b.ptr[b.len - 1] == '\n' || b.ptr[b.len - 1] == '\r' || b.ptr[b.len - 1] == ' '))
		b.len--;
	if (b.len < 16 || memchr(b.ptr, '\n', b.len)) {
		buf_release(&b);
		return ota_error_set(OTA_EINVAL, "image_origin: token_file %s: want one line of at least 16 characters", file);
	}
	g.token = xasprintf("%.*s", (int)b.len, b.ptr);
	OPENSSL_cleanse(b.ptr, b.len);
	buf_release(&b);
	return 0;
}

int origin_configure(const json_t *cfg)
{
	const char *kind, *url, *tf, *k;
	json_t *v, *ttl;
	size_t n;

	origin_shutdown();
	if (!cfg)
		return 0;
	json_object_foreach((json_t *)cfg, k, v)
		if (strcmp(k, "kind") && strcmp(k, "url") && strcmp(k, "ttl") && strcmp(k, "token_file"))
			return ota_error_set(OTA_EINVAL, "image_origin: unknown key '%s' (kind, url, ttl, token_file)", k);
	kind = json_string_value(json_object_get(cfg, "kind"));
	url = json_string_value(json_object_get(cfg, "url"));
	tf = json_string_value(json_object_get(cfg, "token_file"));
	ttl = json_object_get(cfg, "ttl");
	if (!kind || !strcmp(kind, "otacd"))
		g.kind = ORIGIN_OTACD;
	else if (!strcmp(kind, "cdn"))
		g.kind = ORIGIN_CDN;
	else if (!strcmp(kind, "s3"))
		g.kind = ORIGIN_S3;
	else
		return ota_error_set(OTA_EINVAL, "image_origin: unknown kind '%s' (otacd, cdn, s3)", kind);
	if (g.kind == ORIGIN_CDN) {
		if (!url || (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) || strpbrk(url, "\"\\ ?#") ||
		    strlen(url) > 300)
			return ota_error_set(OTA_EINVAL, "image_origin: kind cdn needs url: an http(s) base URL "
							 "(no quotes, spaces, '?' or '#'; at most 300 characters)");
		g.url = xstrdup(url);
		n = strlen(g.url);
		while (n && g.url[n - 1] == '/')
			g.url[--n] = 0;
	}
	if (ttl) {
		if (!json_is_integer(ttl) || json_integer_value(ttl) < 60 || json_integer_value(ttl) > 604800)
			return ota_error_set(OTA_EINVAL, "image_origin: ttl is seconds, 60 to 604800");
		g.ttl = json_integer_value(ttl);
	}
	if (g.kind == ORIGIN_S3 && (!artifact_backend() || strcmp(artifact_backend()->name, "s3")))
		return ota_error_set(OTA_EINVAL, "image_origin: kind s3 needs artifact_store backend s3");
	if (tf)
		return read_token(tf);
	return 0;
}

char *origin_image_url(const char *sha256)
{
	if (g.kind == ORIGIN_CDN)
		return xasprintf("%s/%s", g.url, sha256);
	return xasprintf("/device/v1/images/%s", sha256);
}

/* The offer text is ours (offer_compile, delta_compile: json_dumps), so a
 * `"url":"` here is a key, never inside a string (where a quote is
 * escaped); each such URL on the device API names an object by its
 * digest, which is also its name in the bucket. */
const char *origin_offer_text(char *out, size_t cap, const char *offer)
{
	static const char pat[] = "\"url\":\"/device/v1/images/";
	const size_t plen = sizeof(pat) - 1;
	const char *from = offer, *at;
	time_t now = time(NULL);
	size_t len = 0;
	int n;

	if (g.kind != ORIGIN_S3 || !offer || !cap)
		return offer;
	while ((at = strstr(from, pat))) {
		char sha[65], *url = NULL;
		snprintf(sha, sizeof(sha), "%.64s", at + plen);
		if (!artifact_digest_valid(sha) || at[plen + 64] != '"' ||
		    artifact_s3_presign(&url, artifact_backend(), sha, g.ttl, now) < 0)
			return offer; /* all or nothing: the device-API paths stay */
		n = snprintf(out + len, cap - len, "%.*s\"url\":\"%s\"", (int)(at - from), from, url);
		free(url);
		if (n < 0 || (size_t)n >= cap - len)
			return offer;
		len += (size_t)n;
		from = at + plen + 65;
	}
	if (from == offer)
		return offer;
	n = snprintf(out + len, cap - len, "%s", from);
	return n >= 0 && (size_t)n < cap - len ? out : offer;
}

int origin_pull_allowed(const char *token)
{
	size_t n;
	if (!g.token || !token)
		return 0;
	n = strlen(g.token);
	return strlen(token) == n && CRYPTO_memcmp(token, g.token, n) == 0;
}
