/*
 * artifact.c - content-addressed local artifact store; see artifact.h.
 */
#include "artifact.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"

static char *g_root;
static int64_t g_max = 256 << 20;

struct artifact_upload {
	char *tmp_path;
	int fd;
	int64_t size;
	EVP_MD_CTX *md;
};

int artifact_store_init(const char *state_dir, int64_t max_size)
{
	char *tmp;
	int rc;

	free(g_root);
	g_root = xasprintf("%s/artifacts", state_dir);
	if (max_size > 0)
		g_max = max_size;
	tmp = xasprintf("%s/tmp", g_root);
	rc = ota_mkdir_p(tmp, 0700);
	free(tmp);
	return rc;
}

int64_t artifact_max_size(void)
{
	return g_max;
}

int artifact_upload_begin(struct artifact_upload **out)
{
	struct artifact_upload *u = xcalloc(1, sizeof(*u));

	u->tmp_path = xasprintf("%s/tmp/upload-XXXXXX", g_root);
	u->fd = mkostemp(u->tmp_path, O_CLOEXEC);
	if (u->fd < 0) {
		int rc = ota_error_set(OTA_ERROR, "cannot create temporary file: %s", strerror(errno));
		free(u->tmp_path);
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
	const char *p = data;
	if (u->size + (int64_t)len > g_max)
		return ota_error_set(OTA_ETOOBIG, "artifact larger than the limit of %lld bytes", (long long)g_max);
	EVP_DigestUpdate(u->md, data, len);
	while (len) {
		ssize_t n = write(u->fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ota_error_set(OTA_ERROR, "artifact write failed: %s", strerror(errno));
		}
		p += n;
		len -= (size_t)n;
		u->size += n;
	}
	return 0;
}

void artifact_upload_abort(struct artifact_upload *u)
{
	if (!u)
		return;
	if (u->fd >= 0)
		close(u->fd);
	unlink(u->tmp_path);
	free(u->tmp_path);
	EVP_MD_CTX_free(u->md);
	free(u);
}

char *artifact_object_path(const char *sha256)
{
	if (!sha256 || strlen(sha256) != 64 || strspn(sha256, "0123456789abcdef") != 64)
		return NULL;
	return xasprintf("%s/sha256/%.2s/%s", g_root, sha256, sha256);
}

int artifact_upload_commit(struct artifact_upload *u, const char *expect_sha256,
			   char sha256[65], int64_t *size)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *path = NULL, *dir = NULL;
	int rc = 0;

	EVP_DigestFinal_ex(u->md, md, &mdlen);
	ota_hex(sha256, md, mdlen);
	*size = u->size;
	if (expect_sha256 && strcmp(expect_sha256, sha256) != 0) {
		rc = ota_error_set(OTA_EINVAL, "digest mismatch: declared sha256 %s, received %s",
				   expect_sha256, sha256);
		goto out;
	}
	if (fsync(u->fd) < 0) {
		rc = ota_error_set(OTA_ERROR, "fsync failed: %s", strerror(errno));
		goto out;
	}
	path = artifact_object_path(sha256);
	dir = xasprintf("%s/sha256/%.2s", g_root, sha256);
	if ((rc = ota_mkdir_p(dir, 0700)) < 0)
		goto out;
	if (access(path, F_OK) == 0)
		goto out; /* already stored: deduplicated */
	if (rename(u->tmp_path, path) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot store artifact: %s", strerror(errno));
		goto out;
	}
	/* make the rename itself durable */
	{
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
out:
	free(path);
	free(dir);
	artifact_upload_abort(u); /* unlinks the temp file if it was not renamed */
	return rc;
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
