/*
 * util.c - error slot, buffers, string vectors and small helpers.
 *
 * Nothing here knows about otacd's domain; see util.h for the contracts.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static __thread char error_msg[1024];

int ota_error_set(int code, const char *fmt, ...)
{
	char msg[sizeof(error_msg)]; /* an argument may be ota_error_last() itself */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	memcpy(error_msg, msg, sizeof(msg));
	return code;
}

void ota_error_prefix(const char *fmt, ...)
{
	char prefix[512], old[sizeof(error_msg)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, error_msg, sizeof(old));
	{
		struct buf b = BUF_INIT;
		buf_printf(&b, "%s: %s", prefix, old);
		if (b.len >= sizeof(error_msg))
			b.len = sizeof(error_msg) - 1;
		memcpy(error_msg, buf_cstr(&b), b.len);
		error_msg[b.len] = '\0';
		buf_release(&b);
	}
}

const char *ota_error_last(void)
{
	return error_msg[0] ? error_msg : "unknown error";
}

void ota_error_clear(void)
{
	error_msg[0] = '\0';
}

static void oom(void)
{
	fputs("fatal: out of memory\n", stderr);
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s ? s : "");
	if (!p)
		oom();
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (!p)
		oom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	return buf_detach(&b);
}

/* ---- buf ----------------------------------------------------------- */

void buf_init(struct buf *b, size_t max)
{
	b->ptr = NULL;
	b->len = b->cap = 0;
	b->max = max;
}

static int buf_grow(struct buf *b, size_t extra)
{
	size_t need;
	if (extra > b->max || b->len > b->max - extra)
		return ota_error_set(OTA_ETOOBIG, "buffer limit of %zu bytes exceeded", b->max);
	need = b->len + extra + 1;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < need)
			cap *= 2;
		b->ptr = xrealloc(b->ptr, cap);
		b->cap = cap;
	}
	return 0;
}

int buf_put(struct buf *b, const void *data, size_t len)
{
	int rc = buf_grow(b, len);
	if (rc < 0)
		return rc;
	if (len)
		memcpy(b->ptr + b->len, data, len);
	b->len += len;
	b->ptr[b->len] = '\0';
	return 0;
}

int buf_puts(struct buf *b, const char *s)
{
	return buf_put(b, s, strlen(s));
}

int buf_putc(struct buf *b, char c)
{
	return buf_put(b, &c, 1);
}

int buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
	va_list cp;
	int n, rc;

	va_copy(cp, ap);
	n = vsnprintf(NULL, 0, fmt, cp);
	va_end(cp);
	if (n < 0)
		return ota_error_set(OTA_ERROR, "bad format");
	if ((rc = buf_grow(b, (size_t)n)) < 0)
		return rc;
	vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
	return 0;
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int rc;
	va_start(ap, fmt);
	rc = buf_vprintf(b, fmt, ap);
	va_end(ap);
	return rc;
}

void buf_clear(struct buf *b)
{
	b->len = 0;
	if (b->ptr)
		b->ptr[0] = '\0';
}

const char *buf_cstr(const struct buf *b)
{
	return b->ptr ? b->ptr : "";
}

char *buf_detach(struct buf *b)
{
	char *p = b->ptr ? b->ptr : xstrdup("");
	b->ptr = NULL;
	b->len = b->cap = 0;
	return p;
}

void buf_release(struct buf *b)
{
	free(b->ptr);
	b->ptr = NULL;
	b->len = b->cap = 0;
}

/* ---- strvec -------------------------------------------------------- */

void strvec_push(struct strvec *sv, const char *s)
{
	if (sv->n + 2 > sv->cap) {
		sv->cap = sv->cap ? sv->cap * 2 : 8;
		sv->v = xrealloc(sv->v, sv->cap * sizeof(char *));
	}
	sv->v[sv->n++] = xstrdup(s);
	sv->v[sv->n] = NULL;
}

void strvec_pushf(struct strvec *sv, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	strvec_push(sv, buf_cstr(&b));
	buf_release(&b);
}

int strvec_contains(const struct strvec *sv, const char *s)
{
	for (size_t i = 0; i < sv->n; i++)
		if (!strcmp(sv->v[i], s))
			return 1;
	return 0;
}

void strvec_clear(struct strvec *sv)
{
	for (size_t i = 0; i < sv->n; i++)
		free(sv->v[i]);
	free(sv->v);
	sv->v = NULL;
	sv->n = sv->cap = 0;
}

/* ---- misc ---------------------------------------------------------- */

size_t ota_edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t *row = xcalloc(lb + 1, sizeof(size_t));
	size_t result;

	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
			size_t best = diag + cost;
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	result = row[lb];
	free(row);
	return result;
}

const char *ota_did_you_mean(const char *word, const char *const *candidates, size_t n)
{
	const char *best = NULL;
	size_t best_d = (size_t)-1;
	size_t limit = strlen(word) / 3 + 1;

	if (limit > 3)
		limit = 3;
	for (size_t i = 0; i < n; i++) {
		size_t d = ota_edit_distance(word, candidates[i]);
		if (d < best_d) {
			best_d = d;
			best = candidates[i];
		}
	}
	return best_d <= limit ? best : NULL;
}

int ota_parse_duration_ms(const char *s, int64_t *out)
{
	const char *p = s;
	int64_t total = 0;
	int any = 0;

	if (!s || !*s)
		return ota_error_set(OTA_EINVAL, "empty duration");
	while (*p) {
		int64_t n = 0, unit;
		int digits = 0;
		while (*p >= '0' && *p <= '9') {
			if (n > (INT64_MAX / 10) - 10)
				return ota_error_set(OTA_EINVAL, "duration '%s' is too large", s);
			n = n * 10 + (*p++ - '0');
			digits++;
		}
		if (!digits)
			return ota_error_set(OTA_EINVAL, "invalid duration '%s' (expected e.g. 30s, 10m, 1h30m, 7d)", s);
		if (!strncmp(p, "ms", 2)) {
			unit = 1;
			p += 2;
		} else if (*p == 's') {
			unit = 1000;
			p++;
		} else if (*p == 'm') {
			unit = 60 * 1000;
			p++;
		} else if (*p == 'h') {
			unit = 3600 * 1000;
			p++;
		} else if (*p == 'd') {
			unit = 86400 * 1000;
			p++;
		} else if (*p == '\0' && !any) {
			unit = 1000; /* bare number: seconds */
		} else {
			return ota_error_set(OTA_EINVAL, "invalid duration '%s' (expected e.g. 30s, 10m, 1h30m, 7d)", s);
		}
		if (n > INT64_MAX / unit || total > INT64_MAX - n * unit)
			return ota_error_set(OTA_EINVAL, "duration '%s' is too large", s);
		total += n * unit;
		any = 1;
	}
	*out = total;
	return 0;
}

int ota_read_file(struct buf *out, const char *path, size_t max)
{
	char chunk[65536];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return ota_error_set(errno == ENOENT ? OTA_ENOTFOUND : OTA_ERROR,
				     "cannot open %s: %s", path, strerror(errno));
	buf_init(out, max);
	while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			buf_release(out);
			return ota_error_set(OTA_ERROR, "cannot read %s: %s", path, strerror(errno));
		}
		if (buf_put(out, chunk, (size_t)n) < 0) {
			close(fd);
			buf_release(out);
			return ota_error_set(OTA_ETOOBIG, "%s is larger than %zu bytes", path, max);
		}
	}
	close(fd);
	if (!out->ptr)
		buf_put(out, "", 0);
	return 0;
}

int ota_write_file_atomic(const char *path, const void *data, size_t len, int mode)
{
	char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
	const char *p = data;
	int fd, rc = OTA_ERROR;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0) {
		ota_error_set(OTA_ERROR, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ota_error_set(OTA_ERROR, "cannot write %s: %s", tmp, strerror(errno));
			close(fd);
			unlink(tmp);
			goto out;
		}
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		ota_error_set(OTA_ERROR, "cannot sync %s: %s", tmp, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if (rename(tmp, path) < 0) {
		ota_error_set(OTA_ERROR, "cannot rename %s: %s", tmp, strerror(errno));
		unlink(tmp);
		goto out;
	}
	rc = 0;
out:
	free(tmp);
	return rc;
}

char *ota_sibling_path(const char *name)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		return xstrdup(name);
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return xstrdup(name);
	*slash = '\0';
	return xasprintf("%s/%s", self, name);
}

int ota_mkdir_p(const char *path, int mode)
{
	char *p = xstrdup(path);
	int rc = 0;

	for (char *s = p + 1; ; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, (mode_t)mode) < 0 && errno != EEXIST) {
				rc = ota_error_set(OTA_ERROR, "cannot create directory %s: %s", p, strerror(errno));
				break;
			}
			*s = c;
			if (!c)
				break;
		}
	}
	free(p);
	return rc;
}

void ota_hex(char *out, const unsigned char *in, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

int ota_random_hex(char *out, size_t nbytes)
{
	unsigned char raw[64];
	if (nbytes > sizeof(raw))
		return ota_error_set(OTA_EINVAL, "too many random bytes requested");
	if (getrandom(raw, nbytes, 0) != (ssize_t)nbytes)
		return ota_error_set(OTA_ERROR, "getrandom failed: %s", strerror(errno));
	ota_hex(out, raw, nbytes);
	return 0;
}

int ota_artifact_name_check(const char *name, size_t len, char *why, size_t n)
{
	const char *reason = NULL;
	size_t i, start = 0;

	if (!name || len == 0 || len > 255)
		reason = "it must be 1 to 255 bytes long";
	else if (memchr(name, '\0', len))
		reason = "it contains a NUL byte";
	else if (name[0] == '/')
		reason = "it must be a relative path";
	for (i = 0; !reason && i < len; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			reason = "it contains a control character";
		else if (name[i] == '\\')
			reason = "it contains a backslash";
	for (i = 0; !reason && i <= len; i++) {
		if (i < len && name[i] != '/')
			continue;
		if (i == start)
			reason = "it has an empty path component";
		else if ((i - start == 1 && name[start] == '.') || (i - start == 2 && !memcmp(name + start, "..", 2)))
			reason = "it has a '.' or '..' component";
		start = i + 1;
	}
	if (!reason)
		return 0;
	if (why && n)
		snprintf(why, n, "%s", reason);
	return OTA_EINVAL;
}
