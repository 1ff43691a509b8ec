/*
 * artifact.c - hashing, size caps and digest checks in front of a storage
 * backend; see artifact.h.
 */
#include "artifact.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"

static struct artifact_backend *g_backend;
static int64_t g_max = 256 << 20;

struct artifact_upload {
	struct artifact_writer *w;
	int64_t size;
	EVP_MD_CTX *md;
};

int artifact_store_init(const char *state_dir, int64_t max_size)
{
	artifact_store_shutdown();
	if (max_size > 0)
		g_max = max_size;
	return artifact_local_backend(&g_backend, state_dir);
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
	u->md = EVP_MD_CTX_new();
	if (!u->md || EVP_DigestInit_ex(u->md, EVP_sha256(), NULL) != 1) {
		artifact_upload_abort(u);
		return ota_error_set(OTA_ERROR, "SHA-256 unavailable");
	}
	*out = u;
	return 0;
}

int artifact_upload_write(struct artifact_upload *u, const void *data, size_t len)
{
	int rc;
	if (u->size + (int64_t)len > g_max)
		return ota_error_set(OTA_ETOOBIG, "artifact larger than the limit of %lld bytes", (long long)g_max);
	EVP_DigestUpdate(u->md, data, len);
	if ((rc = g_backend->put_write(u->w, data, len)) < 0)
		return rc;
	u->size += (int64_t)len;
	return 0;
}

void artifact_upload_abort(struct artifact_upload *u)
{
	if (!u)
		return;
	if (u->w)
		g_backend->put_abort(u->w);
	EVP_MD_CTX_free(u->md);
	free(u);
}

int artifact_upload_commit(struct artifact_upload *u, const char *expect_sha256,
			   char sha256[65], int64_t *size)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int rc;

	EVP_DigestFinal_ex(u->md, md, &mdlen);
	ota_hex(sha256, md, mdlen);
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
	size_t len = strlen(name);
	const char *p;

	if (len == 0 || len > 255 || name[0] == '/')
		return 0;
	for (p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '\\')
			return 0;
	for (p = name; p; p = strchr(p, '/')) {
		if (*p == '/')
			p++;
		if (!strncmp(p, "..", 2) && (p[2] == '/' || p[2] == '\0'))
			return 0;
		if (*p == '/' || *p == '\0')
			return 0; /* empty component */
	}
	return 1;
}
