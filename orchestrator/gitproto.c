/*
 * gitproto.c - frames and reply checks for the daemon <-> otacd-git pipe.
 *
 * Why a parser here at all: the helper is where hostile git data is
 * handled, so a helper that was made to misbehave must not be able to make
 * the daemon read out of bounds, accept a path outside the archive
 * directory, or take a made-up commit id.  Every reply field is checked for
 * type, length and shape before the daemon uses it (gitproto.h).
 */
#include "gitproto.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SIGNATURE_MAX 4096       /* "Name <email>" */
#define MESSAGE_MAX (256u << 10) /* a commit message */

static int write_full(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return OTA_ERROR;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* 1 at end of file before any byte (or a reset: the peer went away with
 * our request unread), 0 when all len bytes came. */
static int read_full(int fd, void *data, size_t len)
{
	char *p = data;
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ECONNRESET && got == 0)
			return 1;
		if (n < 0)
			return ota_error_set(OTA_ERROR, "git helper: read: %s", strerror(errno));
		if (n == 0)
			return got == 0 ? 1 : OTA_ERROR;
		got += (size_t)n;
	}
	return 0;
}

int gitproto_write(int fd, const void *data, size_t len)
{
	unsigned char hdr[4] = { (unsigned char)(len >> 24), (unsigned char)(len >> 16),
				 (unsigned char)(len >> 8), (unsigned char)len };

	if (len > 0xffffffffu || write_full(fd, hdr, 4) < 0)
		return OTA_ERROR;
	return write_full(fd, data, len);
}

int gitproto_read(int fd, struct buf *out, size_t max)
{
	unsigned char hdr[4];
	char *tmp;
	size_t len;
	int rc;

	buf_clear(out);
	if ((rc = read_full(fd, hdr, 4)) != 0)
		return rc > 0 ? rc : ota_error_set(OTA_ERROR, "git helper: a frame header cut short");
	len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
	if (len > max)
		return ota_error_set(OTA_ETOOBIG, "git helper: a frame of %zu bytes (at most %zu)", len, max);
	tmp = xmalloc(len + 1);
	rc = read_full(fd, tmp, len);
	if (rc == 0)
		rc = buf_put(out, tmp, len);
	else
		rc = ota_error_set(OTA_ERROR, "git helper: a frame cut short");
	free(tmp);
	return rc;
}

static int is_hex40(const char *s)
{
	size_t i;

	for (i = 0; i < 40; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[40] == '\0';
}

/* A string member of at most max bytes, or NULL. */
static const char *str_field(json_t *o, const char *key, size_t max)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_string(v) || json_string_length(v) > max || strlen(json_string_value(v)) != json_string_length(v))
		return NULL;
	return json_string_value(v);
}

static int bad(const char *field)
{
	return ota_error_set(OTA_EINVAL, "git helper: malformed reply (%s)", field);
}

static int parse_commit(struct gitsrc_commit *c, json_t *o)
{
	const char *id = str_field(o, "id", 40), *tree = str_field(o, "tree", 40);
	const char *author = str_field(o, "author", SIGNATURE_MAX);
	const char *committer = str_field(o, "committer", SIGNATURE_MAX);
	const char *message = str_field(o, "message", MESSAGE_MAX);
	json_t *t = json_object_get(o, "time_ms");

	if (!id || !is_hex40(id))
		return bad("id");
	if (!tree || !is_hex40(tree))
		return bad("tree");
	if (!author || !committer || !message)
		return bad("author, committer or message");
	if (!json_is_integer(t))
		return bad("time_ms");
	memcpy(c->id, id, 41);
	memcpy(c->tree, tree, 41);
	c->author = xstrdup(author);
	c->committer = xstrdup(committer);
	c->message = xstrdup(message);
	c->time_ms = json_integer_value(t);
	return 0;
}

/* DIR/<40 hex>.tar and nothing else. */
static int archive_path_ok(const char *p, const char *dir)
{
	size_t n = strlen(dir);
	char hex[41];

	if (strncmp(p, dir, n) || p[n] != '/' || strlen(p + n + 1) != 44 || strcmp(p + n + 41, ".tar"))
		return 0;
	memcpy(hex, p + n + 1, 40);
	hex[40] = '\0';
	return is_hex40(hex);
}

int gitproto_reply_parse(struct gitproto_reply *out, enum gitproto_op op, const char *json, size_t n,
			 size_t max, const char *archive_dir)
{
	json_t *o = json_loadb(json, n, JSON_REJECT_DUPLICATES, NULL), *v;
	const char *s;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	if (!json_is_object(o)) {
		rc = bad("not a JSON object");
		goto out;
	}
	v = json_object_get(o, "rc");
	if (!json_is_integer(v) || json_integer_value(v) > 0 || json_integer_value(v) < OTA_EPERM) {
		rc = bad("rc");
		goto out;
	}
	out->rc = (int)json_integer_value(v);
	if (out->rc < 0) {
		s = str_field(o, "error", 1u << 16);
		snprintf(out->error, sizeof(out->error), "%s", s && s[0] ? s : "git helper: failed without a message");
		goto out;
	}
	switch (op) {
	case GITPROTO_FETCH:
		break;
	case GITPROTO_RESOLVE:
		rc = parse_commit(&out->commit, o);
		break;
	case GITPROTO_READ:
		v = json_object_get(o, "len");
		if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
			rc = bad("len");
		else
			out->len = (size_t)json_integer_value(v);
		break;
	case GITPROTO_ARCHIVE:
		s = str_field(o, "path", 4096);
		if (!s || !archive_path_ok(s, archive_dir))
			rc = bad("path");
		else
			out->path = xstrdup(s);
		break;
	}
out:
	json_decref(o);
	return rc;
}

void gitproto_reply_release(struct gitproto_reply *r)
{
	gitsrc_commit_release(&r->commit);
	free(r->path);
	r->path = NULL;
}
