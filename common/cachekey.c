/*
 * cachekey.c - checking and rendering cache key templates (see cachekey.h).
 *
 * Why here: the same parser must refuse a bad template when a pipeline is
 * pushed (the daemon) and render it on the agent; one implementation keeps
 * the two from disagreeing.  The template comes from a pushed pipeline and
 * so is hostile: the parser is a single bounded pass over the bytes with no
 * recursion, and the rendered key is held to a file-name alphabet so it can
 * name a file in the agent's cache directory as it is.
 */
#include "cachekey.h"

#include "util.h"

#include <glob.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#define HASH_HEX 64

static int key_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
	       c == '_' || c == '-';
}

static int fail(char *err, size_t n, const char *fmt, ...) OTA_PRINTF(3, 4);
static int fail(char *err, size_t n, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n)
		snprintf(err, n, "%s", msg);
	return ota_error_set(OTA_EINVAL, "%s", msg);
}

int cachekey_path_check(const char *path, size_t len, char *why, size_t n)
{
	while (len > 1 && path[len - 1] == '/')
		len--;
	for (size_t i = 0; i < len; i++)
		if (path[i] == '*' || path[i] == '?' || path[i] == '[')
			return fail(why, n, "cache path '%.*s' is a pattern: name directories or files", (int)len, path);
	return ota_artifact_name_check(path, len, why, n);
}

/* A pattern of hashFiles(): the artifact-name rule, wildcards allowed. */
static int glob_check(const char *g, size_t len, char *err, size_t n)
{
	char why[128];
	for (size_t i = 0; i < len; i++)
		if (g[i] == '\'' || g[i] == '"')
			return fail(err, n, "hashFiles: pattern '%.*s' holds a quote", (int)len, g);
	if (ota_artifact_name_check(g, len, why, sizeof(why)) < 0)
		return fail(err, n, "hashFiles: pattern %s", why);
	return 0;
}

static void skip_spaces(const char **p, const char *end)
{
	while (*p < end && **p == ' ')
		(*p)++;
}

/* Copy s into b with glob's special characters escaped. */
static void glob_escape(struct buf *b, const char *s)
{
	for (; *s; s++) {
		if (strchr("*?[]\\", *s))
			buf_putc(b, '\\');
		buf_putc(b, *s);
	}
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int file_sha256(const char *path, unsigned char md[32])
{
	FILE *f = fopen(path, "rb");
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char chunk[65536];
	size_t k;
	int rc = 0;
	if (!f || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		rc = ota_error_set(OTA_ERROR, "hashFiles: cannot read %s", path);
		goto out;
	}
	while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0)
		EVP_DigestUpdate(ctx, chunk, k);
	if (ferror(f))
		rc = ota_error_set(OTA_ERROR, "hashFiles: cannot read %s", path);
	EVP_DigestFinal_ex(ctx, md, NULL);
out:
	if (f)
		fclose(f);
	EVP_MD_CTX_free(ctx);
	return rc;
}

/* hashFiles() over the patterns in ws (see cachekey.h) into hex[65]. */
static int hash_files(char hex[HASH_HEX + 1], const struct strvec *globs, const char *ws)
{
	struct strvec files = STRVEC_INIT;
	struct buf pat = BUF_INIT;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[32];
	size_t wslen = strlen(ws);
	int rc = 0;

	for (size_t i = 0; i < globs->n; i++) {
		glob_t g;
		buf_clear(&pat);
		glob_escape(&pat, ws);
		buf_printf(&pat, "/%s", globs->v[i]);
		if (glob(buf_cstr(&pat), 0, NULL, &g) != 0)
			continue;
		for (size_t k = 0; k < g.gl_pathc; k++) {
			struct stat st;
			char *real = realpath(g.gl_pathv[k], NULL);
			/* regular files inside the workspace only: a symbolic link
			 * could make the key depend on files of the agent */
			if (real && !lstat(g.gl_pathv[k], &st) && S_ISREG(st.st_mode) && !strncmp(real, ws, wslen) &&
			    real[wslen] == '/' && !strvec_contains(&files, real + wslen + 1))
				strvec_push(&files, real + wslen + 1);
			free(real);
		}
		globfree(&g);
	}
	qsort(files.v, files.n, sizeof(*files.v), cmp_str);
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < files.n && !rc; i++) {
		unsigned char fmd[32];
		char *path = xasprintf("%s/%s", ws, files.v[i]);
		if (!(rc = file_sha256(path, fmd))) {
			EVP_DigestUpdate(ctx, files.v[i], strlen(files.v[i]) + 1);
			EVP_DigestUpdate(ctx, fmd, sizeof(fmd));
		}
		free(path);
	}
	EVP_DigestFinal_ex(ctx, md, NULL);
	ota_hex(hex, md, sizeof(md));
	EVP_MD_CTX_free(ctx);
	strvec_clear(&files);
	buf_release(&pat);
	return rc;
}

/* Parse "hashFiles('a', 'b') }}" at *p (after "{{ "); patterns into globs. */
static int parse_call(const char **p, const char *end, struct strvec *globs, char *err, size_t n)
{
	static const char fn[] = "hashFiles";
	skip_spaces(p, end);
	if ((size_t)(end - *p) < sizeof(fn) - 1 || memcmp(*p, fn, sizeof(fn) - 1) != 0)
		return fail(err, n, "cache key: only {{ hashFiles('PATTERN', ...) }} is known inside {{ }}");
	*p += sizeof(fn) - 1;
	skip_spaces(p, end);
	if (*p == end || **p != '(')
		return fail(err, n, "cache key: hashFiles needs '(' after its name");
	(*p)++;
	for (;;) {
		const char *s;
		char q;
		skip_spaces(p, end);
		if (*p == end || (**p != '\'' && **p != '"'))
			return fail(err, n, "cache key: hashFiles takes quoted patterns");
		q = *(*p)++;
		s = *p;
		while (*p < end && **p != q)
			(*p)++;
		if (*p == end)
			return fail(err, n, "cache key: unterminated pattern in hashFiles");
		if (glob_check(s, (size_t)(*p - s), err, n) < 0)
			return OTA_EINVAL;
		if (globs->n >= CACHEKEY_MAX_GLOBS)
			return fail(err, n, "cache key: hashFiles takes at most %d patterns", CACHEKEY_MAX_GLOBS);
		{
			char *one = xstrndup(s, (size_t)(*p - s));
			strvec_push(globs, one);
			free(one);
		}
		(*p)++;
		skip_spaces(p, end);
		if (*p < end && **p == ',') {
			(*p)++;
			continue;
		}
		if (*p < end && **p == ')')
			break;
		return fail(err, n, "cache key: expected ',' or ')' in hashFiles");
	}
	(*p)++;
	skip_spaces(p, end);
	if ((size_t)(end - *p) < 2 || (*p)[0] != '}' || (*p)[1] != '}')
		return fail(err, n, "cache key: expected '}}' after hashFiles(...)");
	*p += 2;
	return 0;
}

int cachekey_render(char out[CACHEKEY_MAX + 1], const char *tmpl, size_t len, const char *ws, char *err,
		    size_t n)
{
	const char *p = tmpl, *end = tmpl + len;
	size_t olen = 0;
	int calls = 0, rc = 0;

	out[0] = '\0';
	if (len == 0)
		return fail(err, n, "cache key: empty");
	if (len > CACHEKEY_MAX_TEMPLATE)
		return fail(err, n, "cache key: longer than %d bytes", CACHEKEY_MAX_TEMPLATE);
	while (p < end && !rc) {
		if ((size_t)(end - p) >= 2 && p[0] == '{' && p[1] == '{') {
			struct strvec globs = STRVEC_INIT;
			char hex[HASH_HEX + 1];
			p += 2;
			if (++calls > CACHEKEY_MAX_CALLS)
				rc = fail(err, n, "cache key: at most %d hashFiles() calls", CACHEKEY_MAX_CALLS);
			else if (!(rc = parse_call(&p, end, &globs, err, n))) {
				if (ws) {
					rc = hash_files(hex, &globs, ws);
				} else {  /* checking only: as long as a hash */
					memset(hex, '0', HASH_HEX);
					hex[HASH_HEX] = '\0';
				}
				if (!rc && olen + HASH_HEX > CACHEKEY_MAX)
					rc = fail(err, n, "cache key: longer than %d characters once rendered", CACHEKEY_MAX);
				else if (!rc) {
					memcpy(out + olen, hex, HASH_HEX);
					olen += HASH_HEX;
				}
			}
			strvec_clear(&globs);
		} else if (key_char((unsigned char)*p)) {
			if (olen + 1 > CACHEKEY_MAX)
				rc = fail(err, n, "cache key: longer than %d characters once rendered", CACHEKEY_MAX);
			else
				out[olen++] = *p++;
		} else {
			rc = fail(err, n, "cache key: character '%c' (0x%02x) at byte %zu: keys use A-Z a-z 0-9 . _ - and "
				  "{{ hashFiles(...) }}", (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f ? *p : '?',
				  (unsigned char)*p, (size_t)(p - tmpl) + 1);
		}
	}
	if (rc < 0 && rc != OTA_EINVAL && n && !err[0])
		snprintf(err, n, "%s", ota_error_last());
	if (rc < 0) {
		out[0] = '\0';
		return rc;
	}
	out[olen] = '\0';
	if (olen == 0 || out[0] == '.')
		return fail(err, n, "cache key: renders to '%s': a key must not be empty or start with '.'", out);
	return 0;
}
