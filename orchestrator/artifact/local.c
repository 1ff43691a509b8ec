/*
 * artifact_local.c - the local-disk artifact backend.
 *
 * Objects: STATE/artifacts/sha256/AB/ABCDEF… (AB = first two hex digits).
 * Writes go to STATE/artifacts/tmp/upload-XXXXXX, are fsynced, renamed into
 * place and the directory fsynced, so an object is either whole or absent.
 * Temporary files left by a crash are removed when the backend opens.
 */
#include "../artifact.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/util.h"

struct local {
	struct artifact_backend base;
	char *root;
};

struct artifact_writer {
	char *tmp;
	int fd;
	struct local *l;
	off_t written, flushed;   /* bytes written; bytes handed to writeback */
};

/* Start writeback every WRITEBACK_STEP bytes, so the fsync at the end has
 * little left to do (the upload's bytes reach the disk while it arrives). */
#define WRITEBACK_STEP ((off_t)8 << 20)

static char *object_path(struct local *l, const char *sha256)
{
	return xasprintf("%s/sha256/%.2s/%s", l->root, sha256, sha256);
}

static int put_begin(struct artifact_backend *b, struct artifact_writer **out)
{
	struct local *l = (struct local *)b;
	struct artifact_writer *w = xcalloc(1, sizeof(*w));

	w->l = l;
	w->tmp = xasprintf("%s/tmp/upload-XXXXXX", l->root);
	w->fd = mkostemp(w->tmp, O_CLOEXEC);
	if (w->fd < 0) {
		int rc = ota_error_set(OTA_ERROR, "cannot create a temporary file: %s", strerror(errno));
		free(w->tmp);
		free(w);
		return rc;
	}
	*out = w;
	return 0;
}

static int put_write(struct artifact_writer *w, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t n = write(w->fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ota_error_set(OTA_ERROR, "artifact write failed: %s", strerror(errno));
		}
		p += n;
		len -= (size_t)n;
		w->written += n;
	}
	if (w->written - w->flushed >= WRITEBACK_STEP) {
		sync_file_range(w->fd, w->flushed, w->written - w->flushed, SYNC_FILE_RANGE_WRITE);
		w->flushed = w->written;
	}
	return 0;
}

static void put_abort(struct artifact_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	unlink(w->tmp);
	free(w->tmp);
	free(w);
}

static int put_commit(struct artifact_writer *w, const char *sha256)
{
	char *path = object_path(w->l, sha256);
	char *dir = xasprintf("%s/sha256/%.2s", w->l->root, sha256);
	int rc = 0, dfd;

	if (fsync(w->fd) < 0) {
		rc = ota_error_set(OTA_ERROR, "fsync failed: %s", strerror(errno));
		goto out;
	}
	if ((rc = ota_mkdir_p(dir, 0700)) < 0)
		goto out;
	if (access(path, F_OK) == 0)
		goto out; /* already stored: deduplicated */
	if (rename(w->tmp, path) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot store artifact: %s", strerror(errno));
		goto out;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd); /* make the rename itself durable */
		close(dfd);
	}
out:
	free(path);
	free(dir);
	put_abort(w); /* unlinks the temporary file if it was not renamed */
	return rc;
}

static int get(struct artifact_backend *b, const char *sha256, struct artifact_reader **out, int64_t *size)
{
	struct local *l = (struct local *)b;
	char *path;
	struct stat sb;
	int fd;

	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	path = object_path(l, sha256);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	free(path);
	if (fd < 0 || fstat(fd, &sb) < 0) {
		if (fd >= 0)
			close(fd);
		return ota_error_set(OTA_ENOTFOUND, "no object %s in the artifact store", sha256);
	}
	*out = artifact_fd_reader(fd);
	*size = (int64_t)sb.st_size;
	return 0;
}

static int st(struct artifact_backend *b, const char *sha256, int64_t *size)
{
	struct local *l = (struct local *)b;
	struct stat sb;
	char *path;
	int rc;

	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	path = object_path(l, sha256);
	rc = stat(path, &sb);
	free(path);
	if (rc < 0)
		return ota_error_set(OTA_ENOTFOUND, "no object %s in the artifact store", sha256);
	*size = (int64_t)sb.st_size;
	return 0;
}

static int rm(struct artifact_backend *b, const char *sha256)
{
	struct local *l = (struct local *)b;
	char *path;
	int rc = 0;

	if (!artifact_digest_valid(sha256))
		return ota_error_set(OTA_EINVAL, "not a SHA-256 digest");
	path = object_path(l, sha256);
	if (unlink(path) < 0 && errno != ENOENT)
		rc = ota_error_set(OTA_ERROR, "cannot delete %s: %s", sha256, strerror(errno));
	free(path);
	return rc;
}

static void lfree(struct artifact_backend *b)
{
	struct local *l = (struct local *)b;
	free(l->root);
	free(l);
}

/* Remove temporary files a crash left behind. */
static void sweep_tmp(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (!strncmp(e->d_name, "upload-", 7)) {
			char *p = xasprintf("%s/%s", dir, e->d_name);
			unlink(p);
			free(p);
		}
	}
	closedir(d);
}

int artifact_local_backend(struct artifact_backend **out, const char *state_dir)
{
	struct local *l = xcalloc(1, sizeof(*l));
	char *tmp;
	int rc;

	l->base.name = "local";
	l->base.put_begin = put_begin;
	l->base.put_write = put_write;
	l->base.put_commit = put_commit;
	l->base.put_abort = put_abort;
	l->base.get = get;
	l->base.read = artifact_fd_read;
	l->base.close = artifact_fd_close;
	l->base.stat = st;
	l->base.remove = rm;
	l->base.free = lfree;
	l->root = xasprintf("%s/artifacts", state_dir);
	tmp = xasprintf("%s/tmp", l->root);
	rc = ota_mkdir_p(tmp, 0700);
	if (rc == 0)
		sweep_tmp(tmp);
	free(tmp);
	if (rc < 0) {
		lfree(&l->base);
		return rc;
	}
	*out = &l->base;
	return 0;
}
