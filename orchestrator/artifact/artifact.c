/*
 * artifact.c - hashing, size caps and digest checks in front of a storage
 * backend; see artifact.h.
 *
 * An upload's bytes are gathered into the blocks of a hashpipe: each full
 * block is written to the backend on the receiving thread and hashed on
 * the pipe's worker, so that receiving, writing and hashing overlap (on
 * one thread, hashing was half of an upload's time: docs/benchmarks.md).
 */
#include "../artifact.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/hashpipe.h"
#include "../../common/util.h"

static struct artifact_backend *g_backend;
static int64_t g_max = 256 << 20;

struct artifact_upload {
	struct artifact_writer *w;
	int64_t size;
	struct hashpipe *hash;
	char *block;      /* the hashpipe block being filled, NULL if none */
	size_t fill;      /* bytes in it */
};

int artifact_store_init(const char *state_dir, int64_t max_size)
{
	artifact_store_shutdown();
	if (max_size > 0)
		g_max = max_size;
	return artifact_local_backend(&g_backend, state_dir);
}

int artifact_store_open(const char *state_dir, int64_t max_size, const json_t *cfg)
{
	json_t *bv = cfg ? json_object_get(cfg, "backend") : NULL;
	const char *backend = json_string_value(bv);
	struct artifact_s3_config s3 = { 0 };
	const char *k;
	json_t *v;

	if (bv && !backend)
		return ota_error_set(OTA_EINVAL, "artifact_store: backend is a name (local, s3)");
	if (!cfg || !backend || !strcmp(backend, "local")) {
		if (cfg && json_object_size(cfg) > (backend ? 1u : 0u))
			return ota_error_set(OTA_EINVAL, "artifact_store: backend local takes no other keys");
		return artifact_store_init(state_dir, max_size);
	}
	if (strcmp(backend, "s3"))
		return ota_error_set(OTA_EINVAL, "artifact_store: unknown backend '%s' (local, s3)", backend);
	json_object_foreach((json_t *)cfg, k, v) {
		const char **slot = !strcmp(k, "endpoint") ? &s3.endpoint : !strcmp(k, "bucket") ? &s3.bucket
				  : !strcmp(k, "region") ? &s3.region : !strcmp(k, "credentials_file") ? &s3.credentials_file
				  : !strcmp(k, "backend") ? &backend : NULL;
		if (!slot || !json_is_string(v))
			return ota_error_set(OTA_EINVAL, "artifact_store: %s '%s' (endpoint, bucket, region, credentials_file: strings)",
					     slot ? "bad value for" : "unknown key", k);
		*slot = json_string_value(v);
	}
	artifact_store_shutdown();
	if (max_size > 0)
		g_max = max_size;
	return artifact_s3_backend(&g_backend, state_dir, &s3);
}

void artifact_store_shutdown(void)
{
	if (g_backend)
		g_backend->free(g_backend);
	g_backend = NULL;
}

struct artifact_backend *artifact_backend(void)
{
	return g_backend;
}

int64_t artifact_max_size(void)
{
	return g_max;
}

int artifact_upload_begin(struct artifact_upload **out)
{
	struct artifact_upload *u = xcalloc(1, sizeof(*u));
	int rc;

	if ((rc = g_backend->put_begin(g_backend, &u->w)) < 0) {
		free(u);
		return rc;
	}
	if ((rc = hashpipe_new(&u->hash)) < 0) {
		artifact_upload_abort(u);
		return rc;
	}
	*out = u;
	return 0;
}

/* Write the block being filled and hand it to the hasher. */
static int flush_block(struct artifact_upload *u, int last)
{
	int rc = 0;
	if (!u->block)
		u->block = hashpipe_block(u->hash); /* an empty upload: an empty last block */
	if (u->fill && (rc = g_backend->put_write(u->w, u->block, u->fill)) < 0)
		return rc;
	hashpipe_submit(u->hash, u->fill, last);
	u->block = NULL;
	u->fill = 0;
	return 0;
}

int artifact_upload_write(struct artifact_upload *u, const void *data, size_t len)
{
	const char *p = data;
	int rc;

	if (u->size + (int64_t)len > g_max)
		return ota_error_set(OTA_ETOOBIG, "artifact larger than the limit of %lld bytes", (long long)g_max);
	while (len) {
		size_t n;
		if (!u->block)
			u->block = hashpipe_block(u->hash);
		n = HASHPIPE_BLOCK - u->fill < len ? HASHPIPE_BLOCK - u->fill : len;
		memcpy(u->block + u->fill, p, n);
		u->fill += n;
		u->size += (int64_t)n;
		p += n;
		len -= n;
		if (u->fill == HASHPIPE_BLOCK && (rc = flush_block(u, 0)) < 0)
			return rc;
	}
	return 0;
}

void artifact_upload_abort(struct artifact_upload *u)
{
	if (!u)
		return;
	if (u->w)
		g_backend->put_abort(u->w);
	hashpipe_free(u->hash);
	free(u);
}

int artifact_upload_commit(struct artifact_upload *u, const char *expect_sha256,
			   char sha256[65], int64_t *size)
{
	unsigned char md[32];
	int rc;

	if ((rc = flush_block(u, 1)) < 0) {
		artifact_upload_abort(u);
		return rc;
	}
	hashpipe_final(u->hash, md);
	ota_hex(sha256, md, sizeof(md));
	*size = u->size;
	if (expect_sha256 && strcmp(expect_sha256, sha256) != 0) {
		rc = ota_error_set(OTA_EINVAL, "digest mismatch: declared sha256 %s, received %s (%lld bytes)",
				   expect_sha256, sha256, (long long)u->size);
		artifact_upload_abort(u);
		return rc;
	}
	rc = g_backend->put_commit(u->w, sha256);
	u->w = NULL;
	artifact_upload_abort(u);
	return rc;
}

int artifact_digest_valid(const char *s)
{
	return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

int artifact_name_valid(const char *name)
{
	return name && ota_artifact_name_check(name, strlen(name), NULL, 0) == 0;
}

/* ---- the file readers both backends hand out ---------------------------- */

struct artifact_reader {
	int fd;
};

struct artifact_reader *artifact_fd_reader(int fd)
{
	struct artifact_reader *r = xcalloc(1, sizeof(*r));
	r->fd = fd;
	return r;
}

ssize_t artifact_fd_read(struct artifact_reader *r, void *buf, size_t len)
{
	ssize_t n;
	do
		n = read(r->fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

void artifact_fd_close(struct artifact_reader *r)
{
	if (!r)
		return;
	close(r->fd);
	free(r);
}
