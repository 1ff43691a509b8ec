/*
 * logstore.c - append-only per-attempt log files; see logstore.h.
 *
 * Appends are serialised by one mutex: they are short writes to page cache,
 * and one lock keeps the offset check and the write atomic with respect to a
 * resent chunk arriving on another connection.
 *
 * Masking: with a mask set (every secret of the configuration), each
 * running attempt has a mask stream (common/mask.h) in memory.  Bytes go
 * through it before the file; the few bytes it holds back (a possible
 * start of a secret) count as received, so the agent's offsets are
 * file size + held bytes.  logstore_end() writes the held bytes when the
 * attempt ends.  After a daemon restart the held bytes are gone (the agent
 * resends from the file's size after a 416); the new stream is opened
 * `resumed`, so a log that goes on mid-secret is masked from its start.
 */
#include "logstore.h"

#include "../common/mask.h"
#include "diskguard.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *g_dir;
static int64_t g_max = 4 << 20;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct notifier g_changes;
static struct mask_set *g_mask;
/* called after each append that wrote bytes (logstore_on_append) */
static void (*_Atomic g_on_append)(void *arg);
static void *_Atomic g_on_append_arg;

/* The mask stream of one attempt whose log is being written (under g_lock). */
struct lstream {
	int64_t job;
	int attempt;
	struct mask_stream ms;
	struct lstream *next;
};
static struct lstream *g_streams;

/* Attempts whose log was cut because the disk was full (under g_lock):
 * their later chunks are acknowledged and dropped, as past the cap, so the
 * agent can finish the job while the disk is full (diskguard.h). */
struct lcut {
	int64_t job;
	int attempt;
	struct lcut *next;
};
static struct lcut *g_cuts;

static int cut_find(int64_t job, int attempt, int drop)
{
	for (struct lcut **pp = &g_cuts; *pp; pp = &(*pp)->next)
		if ((*pp)->job == job && (*pp)->attempt == attempt) {
			if (drop) {
				struct lcut *c = *pp;
				*pp = c->next;
				free(c);
			}
			return 1;
		}
	return 0;
}

static void cut_log(int64_t job, int attempt, int64_t cur);

void logstore_set_mask(struct mask_set *set)
{
	pthread_mutex_lock(&g_lock);
	mask_set_free(g_mask);
	g_mask = set;
	pthread_mutex_unlock(&g_lock);
}

const struct mask_set *logstore_mask(void)
{
	return g_mask;
}

int logstore_init(const char *state_dir, int64_t max_bytes)
{
	char *dir = xasprintf("%s/logs", state_dir);
	int rc = logstore_open(dir, max_bytes);

	free(dir);
	return rc;
}

int logstore_open(const char *dir, int64_t max_bytes)
{
	free(g_dir);
	g_dir = xstrdup(dir);
	if (max_bytes > 0)
		g_max = max_bytes;
	notifier_init(&g_changes);
	return ota_mkdir_p(g_dir, 0700);
}

int64_t logstore_max_bytes(void)
{
	return g_max;
}

struct notifier *logstore_changes(void)
{
	return &g_changes;
}

void logstore_on_append(void (*fn)(void *arg), void *arg)
{
	atomic_store(&g_on_append_arg, arg);
	atomic_store(&g_on_append, fn);
}

static char *log_path(int64_t job, int attempt)
{
	return xasprintf("%s/%" PRId64 "/%d.log", g_dir, job, attempt);
}

int64_t logstore_size(int64_t job, int attempt)
{
	struct stat sb;
	char *path = log_path(job, attempt);
	int64_t size = stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
	free(path);
	return size;
}

/* The last failed write was for want of space (under g_lock). */
static int errno_was_full;

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			errno_was_full = errno == ENOSPC || errno == EDQUOT;
			return ota_error_set(OTA_ERROR, "log write failed: %s", strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static struct lstream *stream_get(int64_t job, int attempt, int64_t cur, int create)
{
	struct lstream *ls;
	for (ls = g_streams; ls; ls = ls->next)
		if (ls->job == job && ls->attempt == attempt)
			return ls;
	if (!create || !g_mask || !mask_set_count(g_mask))
		return NULL;
	ls = xcalloc(1, sizeof(*ls));
	ls->job = job;
	ls->attempt = attempt;
	mask_stream_init(&ls->ms, g_mask, cur > 0);
	ls->next = g_streams;
	g_streams = ls;
	return ls;
}

static void stream_drop(struct lstream *ls)
{
	for (struct lstream **pp = &g_streams; *pp; pp = &(*pp)->next)
		if (*pp == ls) {
			*pp = ls->next;
			break;
		}
	mask_stream_release(&ls->ms);
	free(ls);
}

/* Append masked bytes at the end of the file (size cur), honouring the cap. */
static int write_capped(int64_t job, int attempt, int64_t cur, const char *p, size_t len)
{
	char *path = log_path(job, attempt), *dir = NULL;
	int fd = -1, rc = 0;

	if (!len || cur >= g_max)
		goto out;
	dir = xasprintf("%s/%" PRId64, g_dir, job);
	if ((rc = ota_mkdir_p(dir, 0700)) < 0)
		goto out;
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0) {
		errno_was_full = errno == ENOSPC || errno == EDQUOT;
		rc = ota_error_set(OTA_ERROR, "cannot open log %s: %s", path, strerror(errno));
		goto out;
	}
	if (cur + (int64_t)len > g_max) {
		size_t keep = (size_t)(g_max - cur);
		char notice[128];
		int n = snprintf(notice, sizeof(notice),
				 "\n[otacd: log truncated at %" PRId64 " bytes]\n", g_max);
		if ((rc = write_all(fd, p, keep)) == 0)
			rc = write_all(fd, notice, (size_t)n);
	} else {
		rc = write_all(fd, p, len);
	}
out:
	if (fd >= 0)
		close(fd);
	free(dir);
	free(path);
	return rc;
}

/* Cut the log of one attempt (under g_lock): a notice if it still fits,
 * then nothing more until the attempt ends. */
static void cut_log(int64_t job, int attempt, int64_t cur)
{
	static const char notice[] = "\n[otacd: log cut here: the state directory's disk is full; later output"
				     " of this attempt was dropped]\n";
	struct lcut *c = xcalloc(1, sizeof(*c));
	char *path = log_path(job, attempt);
	int fd;

	c->job = job;
	c->attempt = attempt;
	c->next = g_cuts;
	g_cuts = c;
	if (cur < g_max && (fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) >= 0) {
		if (write_all(fd, notice, sizeof(notice) - 1) < 0)
			if (ftruncate(fd, (off_t)cur) < 0) /* no half notice */
				errno_was_full = 1;
		close(fd);
	}
	free(path);
}

int logstore_append(int64_t job, int attempt, int64_t offset, const void *data,
		    size_t len, int64_t *size)
{
	struct buf masked = BUF_INIT;
	struct lstream *ls;
	const char *p = data;
	int64_t cur, received, skip;
	int rc = 0;

	pthread_mutex_lock(&g_lock);
	cur = logstore_size(job, attempt);
	if (!cut_find(job, attempt, 0) && diskguard_low())
		cut_log(job, attempt, cur);
	if (cur >= g_max || cut_find(job, attempt, 0)) {
		/* Truncated, or cut for a full disk: accept and drop, so the
		 * agent moves on. */
		*size = offset + (int64_t)len;
		goto out;
	}
	ls = stream_get(job, attempt, cur, 1);
	received = cur + (ls ? (int64_t)mask_stream_held(&ls->ms) : 0);
	if (offset > received) {
		*size = received;
		rc = ota_error_set(OTA_ECONFLICT, "chunk starts at %" PRId64 " but the log has %" PRId64 " bytes",
				   offset, received);
		goto out;
	}
	skip = received - offset;
	if (skip >= (int64_t)len) {
		*size = received; /* a resend of bytes we already have */
		goto out;
	}
	p += skip;
	len -= (size_t)skip;
	errno_was_full = 0;
	if (ls) {
		if ((rc = mask_stream_feed(&ls->ms, p, len, &masked)) < 0)
			goto out;
		rc = write_capped(job, attempt, cur, masked.ptr, masked.len);
	} else {
		rc = write_capped(job, attempt, cur, p, len);
	}
	if (rc < 0 && errno_was_full) {
		/* the disk filled under this write: cut here and take the
		 * chunk, so the job can still finish */
		diskguard_note_failure("log write: disk full");
		cut_log(job, attempt, logstore_size(job, attempt));
		rc = 0;
	}
	if (rc < 0)
		goto out;
	*size = received + (int64_t)len;
out:
	pthread_mutex_unlock(&g_lock);
	if (rc == 0) {
		void (*fn)(void *arg) = atomic_load(&g_on_append);
		notifier_bump(&g_changes);
		if (fn)
			fn(atomic_load(&g_on_append_arg));
	}
	if (masked.ptr)
		memset(masked.ptr, 0, masked.len);
	buf_release(&masked);
	return rc;
}

int logstore_end(int64_t job, int attempt)
{
	struct buf masked = BUF_INIT;
	struct lstream *ls;
	int rc = 0;

	pthread_mutex_lock(&g_lock);
	cut_find(job, attempt, 1);
	ls = stream_get(job, attempt, 0, 0);
	if (ls) {
		if ((rc = mask_stream_flush(&ls->ms, &masked)) == 0)
			rc = write_capped(job, attempt, logstore_size(job, attempt), masked.ptr, masked.len);
		stream_drop(ls);
	}
	pthread_mutex_unlock(&g_lock);
	if (ls)
		notifier_bump(&g_changes);
	buf_release(&masked);
	return rc;
}

int logstore_read(int64_t job, int attempt, int64_t offset, size_t max, struct buf *out)
{
	char *path = log_path(job, attempt);
	char chunk[65536];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc = 0;

	free(path);
	if (fd < 0)
		return errno == ENOENT ? 0 : ota_error_set(OTA_ERROR, "cannot open log: %s", strerror(errno));
	while (max > 0) {
		ssize_t n = pread(fd, chunk, max < sizeof(chunk) ? max : sizeof(chunk), (off_t)offset);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = ota_error_set(OTA_ERROR, "log read failed: %s", strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if ((rc = buf_put(out, chunk, (size_t)n)) < 0)
			break;
		offset += n;
		max -= (size_t)n;
	}
	close(fd);
	return rc;
}

int logstore_remove_job(int64_t job)
{
	char *dir = xasprintf("%s/%" PRId64, g_dir, job);
	DIR *d = opendir(dir);
	struct dirent *de;
	int rc = 0;

	if (!d) {
		rc = errno == ENOENT ? 0 : ota_error_set(OTA_ERROR, "cannot open %s: %s", dir, strerror(errno));
		free(dir);
		return rc;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT && rc == 0)
			rc = ota_error_set(OTA_ERROR, "cannot remove %s/%s: %s", dir, de->d_name, strerror(errno));
	}
	closedir(d);
	if (rc == 0 && rmdir(dir) < 0 && errno != ENOENT)
		rc = ota_error_set(OTA_ERROR, "cannot remove %s: %s", dir, strerror(errno));
	free(dir);
	return rc;
}

int logstore_each_job(int (*fn)(int64_t job, void *arg), void *arg)
{
	DIR *d = opendir(g_dir);
	struct dirent *de;
	int rc = 0;

	if (!d)
		return errno == ENOENT ? 0 : ota_error_set(OTA_ERROR, "cannot open %s: %s", g_dir, strerror(errno));
	while (rc == 0 && (de = readdir(d)) != NULL) {
		char *end;
		long long job = strtoll(de->d_name, &end, 10);
		/* only the directories this module names: a positive job id */
		if (de->d_name[0] < '1' || de->d_name[0] > '9' || *end || job <= 0)
			continue;
		rc = fn((int64_t)job, arg);
	}
	closedir(d);
	return rc;
}
