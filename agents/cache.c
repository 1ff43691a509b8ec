/*
 * cache.c - keyed directories kept between jobs on the agent (see cache.h).
 *
 * Why on the agent: toolchains and dependency downloads are large and
 * local; shipping them through the daemon would cost more than fetching
 * them again.  The daemon only decides who may read and write what
 * (cache_scope in the job); this file keeps to it and to the size limits.
 *
 * How: an entry is a pax tar written by libarchive from the job's `paths`
 * (symbolic links stored as links, never followed), to a temp file that is
 * fsync'd and renamed into its namespace's directory (then the directory
 * is fsync'd): the rename is the commit.  Restore goes through
 * source_extract(), the same hostile-archive rules as a job's source.
 */
#include "cache.h"

#include "source.h"

#include "../common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>

#define NSDIR_HEX 32

static char *ns_dir(const char *dir, const char *ns)
{
	char hex[65];
	ota_sha256_hex(ns, strlen(ns), hex);
	hex[NSDIR_HEX] = '\0';
	return xasprintf("%s/%s", dir, hex);
}

int cache_parse_size(const char *s, int64_t *out)
{
	char *end;
	long long v;
	int shift = 0;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (end == s)
		return ota_error_set(OTA_EINVAL, "size '%s': expected a number with an optional K, M or G", s);
	if (*end && strchr("kK", *end))
		shift = 10;
	else if (*end && strchr("mM", *end))
		shift = 20;
	else if (*end && strchr("gG", *end))
		shift = 30;
	if (shift)
		end++;
	/* a size past 2^53 bytes is a typo, and would overflow once shifted */
	if (errno || *end || v < 0 || v > (1LL << (53 - shift)))
		return ota_error_set(OTA_EINVAL, "size '%s': expected a number with an optional K, M or G", s);
	*out = (int64_t)v << shift;
	return 0;
}

void cache_sweep(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (!strncmp(de->d_name, ".tmp-", 5)) {
			char *p = xasprintf("%s/%s", dir, de->d_name);
			unlink(p);
			free(p);
		}
	}
	if (d)
		closedir(d);
}

/* ---- restore -------------------------------------------------------- */

/* The newest entry of nsdir whose key starts with prefix, into key. */
static int newest_with_prefix(char key[CACHEKEY_MAX + 1], const char *nsdir, const char *prefix)
{
	DIR *d = opendir(nsdir);
	struct dirent *de;
	struct timespec best = { 0, 0 };
	size_t plen = strlen(prefix);
	int found = 0;

	while (d && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		struct stat sb;
		char *p;
		if (n < 5 || n - 4 > CACHEKEY_MAX || strcmp(de->d_name + n - 4, ".tar") || de->d_name[0] == '.' ||
		    strncmp(de->d_name, prefix, plen) || n - 4 < plen)
			continue;
		p = xasprintf("%s/%s", nsdir, de->d_name);
		if (!stat(p, &sb) && S_ISREG(sb.st_mode) &&
		    (!found || sb.st_mtim.tv_sec > best.tv_sec ||
		     (sb.st_mtim.tv_sec == best.tv_sec && sb.st_mtim.tv_nsec > best.tv_nsec))) {
			best = sb.st_mtim;
			memcpy(key, de->d_name, n - 4);
			key[n - 4] = '\0';
			found = 1;
		}
		free(p);
	}
	if (d)
		closedir(d);
	return found;
}

/* Find what to restore: *nsdir_out (owned) and st->restored. */
static int cache_lookup(struct cache_state *st, char **nsdir_out, const char *dir, const json_t *cache,
			const json_t *read, const char *ws, char **msg)
{
	const json_t *ns, *pre;
	char why[256] = "";
	size_t i, k;

	json_array_foreach(read, i, ns) {
		char *nsdir = ns_dir(dir, json_string_value(ns)), *p = xasprintf("%s/%s.tar", nsdir, st->key);
		int there = access(p, F_OK) == 0;
		free(p);
		if (there) {
			snprintf(st->restored, sizeof(st->restored), "%s", st->key);
			st->exact = 1;
			*nsdir_out = nsdir;
			return 1;
		}
		free(nsdir);
	}
	json_array_foreach(json_object_get(cache, "restore_keys"), k, pre) {
		char prefix[CACHEKEY_MAX + 1];
		const char *t = json_string_value(pre);
		if (!t || cachekey_render(prefix, t, strlen(t), ws, why, sizeof(why)) < 0) {
			*msg = xasprintf("cache: restore_keys[%zu]: %s", k, t ? why : "not a string");
			return OTA_EINVAL;
		}
		json_array_foreach(read, i, ns) {
			char *nsdir = ns_dir(dir, json_string_value(ns));
			if (newest_with_prefix(st->restored, nsdir, prefix)) {
				*nsdir_out = nsdir;
				return 1;
			}
			free(nsdir);
		}
	}
	return 0;
}

int cache_restore(struct cache_state *st, const char *dir, const json_t *cache, const json_t *scope,
		  const char *ws, cache_log_fn *log, void *arg, char **msg)
{
	const json_t *read = json_object_get(scope, "read"), *ns;
	const char *tmpl = json_string_value(json_object_get(cache, "key"));
	char why[256] = "", *nsdir = NULL, *path = NULL;
	size_t entries = 0, i;
	int rc, fd = -1;

	memset(st, 0, sizeof(*st));
	json_array_foreach(read, i, ns)
		if (!json_is_string(ns)) {
			*msg = xstrdup("cache: the job's cache_scope is malformed");
			return OTA_EINVAL;
		}
	if (!tmpl || cachekey_render(st->key, tmpl, strlen(tmpl), ws, why, sizeof(why)) < 0) {
		*msg = xasprintf("cache: %s", tmpl ? why : "no key");
		return OTA_EINVAL;
	}
	if ((rc = cache_lookup(st, &nsdir, dir, cache, read, ws, msg)) <= 0) {
		if (rc == 0)
			log(arg, "cache: no entry for key %s", st->key);
		return rc;
	}
	path = xasprintf("%s/%s.tar", nsdir, st->restored);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
		*msg = xasprintf("cache: cannot open %s: %s", path, strerror(errno));
		rc = OTA_ERROR;
	} else if ((rc = source_extract(&entries, fd, ws)) < 0) {
		/* a refused entry is never tried again */
		*msg = xasprintf("cache: entry %s refused and removed: %s", st->restored, ota_error_last());
		unlink(path);
		rc = OTA_EINVAL;
	} else {
		utimensat(AT_FDCWD, path, NULL, 0); /* last use, for eviction */
		log(arg, "cache: restored %s (%s, %zu entries)", st->restored, st->exact ? "exact key" : "restore_keys prefix",
		    entries);
	}
	if (fd >= 0)
		close(fd);
	if (rc < 0) {
		memset(st->restored, 0, sizeof(st->restored));
		st->exact = 0;
	}
	free(path);
	free(nsdir);
	return rc;
}

/* ---- save ----------------------------------------------------------- */

/* Is ws/rel's parent directory inside ws (no symbolic link leads out)? */
static int parent_inside(const char *ws, const char *rel)
{
	char *p = xasprintf("%s/%s", ws, rel), *slash, *real;
	size_t n = strlen(ws);
	int ok;
	while (strlen(p) > n + 1 && p[strlen(p) - 1] == '/')
		p[strlen(p) - 1] = '\0';
	slash = strrchr(p, '/');
	*slash = '\0';
	real = realpath(p, NULL);
	ok = real && !strncmp(real, ws, n) && (real[n] == '\0' || real[n] == '/');
	free(real);
	free(p);
	return ok;
}

/* Append path (under ws) and what is below it to the archive; *total grows. */
static int tar_add(struct archive *out, const char *ws, const char *rel, int64_t cap, int64_t *total)
{
	struct archive *disk = archive_read_disk_new();
	struct archive_entry *e;
	char *abs = xasprintf("%s/%s", ws, rel);
	size_t n = strlen(ws);
	int rc = 0, r;

	archive_read_disk_set_symlink_physical(disk);
	archive_read_disk_set_standard_lookup(disk);
	if (archive_read_disk_open(disk, abs) != ARCHIVE_OK) {
		rc = ota_error_set(OTA_ERROR, "%s: %s", rel, archive_error_string(disk));
		goto out;
	}
	while (!rc && (r = archive_read_next_header2(disk, e = archive_entry_new())) != ARCHIVE_EOF) {
		const char *name = archive_entry_pathname(e);
		if (r < ARCHIVE_WARN || !name || strncmp(name, ws, n) || name[n] != '/') {
			rc = ota_error_set(OTA_ERROR, "%s: %s", rel, r < ARCHIVE_WARN ? archive_error_string(disk) : "outside the workspace");
		} else if ((*total += archive_entry_size(e) + 512) > cap) {
			rc = ota_error_set(OTA_ETOOBIG, "over the per-cache limit of %lld bytes", (long long)cap);
		} else {
			archive_entry_copy_pathname(e, name + n + 1);
			archive_entry_set_uid(e, 0);
			archive_entry_set_gid(e, 0);
			archive_entry_set_uname(e, NULL);
			archive_entry_set_gname(e, NULL);
			archive_read_disk_descend(disk);
			if (archive_write_header(out, e) < ARCHIVE_WARN)
				rc = ota_error_set(OTA_ERROR, "%s", archive_error_string(out));
			else if (archive_entry_filetype(e) == AE_IFREG && archive_entry_size(e) > 0) {
				char block[65536];
				la_ssize_t k;
				while ((k = archive_read_data(disk, block, sizeof(block))) > 0)
					if (archive_write_data(out, block, (size_t)k) < 0) {
						rc = ota_error_set(OTA_ERROR, "%s", archive_error_string(out));
						break;
					}
				if (k < 0 && !rc)
					rc = ota_error_set(OTA_ERROR, "%s", archive_error_string(disk));
			}
		}
		archive_entry_free(e);
	}
	if (r == ARCHIVE_EOF)
		archive_entry_free(e);
out:
	archive_read_free(disk);
	free(abs);
	return rc;
}

/* Write the paths into a new temp file of dir; *tmp_out names it. */
static int tar_write(char **tmp_out, const char *dir, const json_t *paths, const char *ws, int64_t cap,
		     cache_log_fn *log, void *arg)
{
	char *tmp = xasprintf("%s/.tmp-XXXXXX", dir);
	struct archive *out = archive_write_new();
	const json_t *p;
	int64_t total = 0;
	size_t i;
	int fd = mkstemp(tmp), rc = 0;

	if (fd < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot create a file in %s: %s", dir, strerror(errno));
		goto out;
	}
	archive_write_set_format_pax_restricted(out);
	archive_write_set_bytes_in_last_block(out, 1);
	if (archive_write_open_fd(out, fd) != ARCHIVE_OK) {
		rc = ota_error_set(OTA_ERROR, "%s", archive_error_string(out));
		goto out;
	}
	json_array_foreach(paths, i, p) {
		const char *rel = json_string_value(p);
		char *abs = xasprintf("%s/%s", ws, rel);
		struct stat sb;
		int there = lstat(abs, &sb) == 0;
		free(abs);
		if (!there) {
			log(arg, "cache: path %s does not exist, not saved", rel);
			continue;
		}
		if (!parent_inside(ws, rel)) {
			rc = ota_error_set(OTA_EINVAL, "path %s leads out of the workspace through a symbolic link", rel);
			break;
		}
		if ((rc = tar_add(out, ws, rel, cap, &total)) < 0)
			break;
	}
	if (!rc && archive_write_close(out) != ARCHIVE_OK)
		rc = ota_error_set(OTA_ERROR, "%s", archive_error_string(out));
	if (!rc && fsync(fd) < 0)
		rc = ota_error_set(OTA_ERROR, "fsync %s: %s", tmp, strerror(errno));
out:
	archive_write_free(out);
	if (fd >= 0)
		close(fd);
	if (rc < 0) {
		if (fd >= 0)
			unlink(tmp);
		free(tmp);
		tmp = NULL;
	}
	*tmp_out = tmp;
	return rc;
}

static void fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

struct entry {
	char *path;
	int64_t size;
	struct timespec used;
};

static int entry_older(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	if (x->used.tv_sec != y->used.tv_sec)
		return x->used.tv_sec < y->used.tv_sec ? -1 : 1;
	if (x->used.tv_nsec != y->used.tv_nsec)
		return x->used.tv_nsec < y->used.tv_nsec ? -1 : 1;
	return strcmp(x->path, y->path);
}

/* Remove least recently used entries until all of dir fits max_total. */
static void cache_evict(const char *dir, int64_t max_total, cache_log_fn *log, void *arg)
{
	struct entry *v = NULL;
	size_t n = 0, cap = 0;
	int64_t total = 0;
	DIR *d = opendir(dir), *sub;
	struct dirent *de, *se;

	while (d && (de = readdir(d))) {
		char *nsdir;
		if (de->d_name[0] == '.')
			continue;
		nsdir = xasprintf("%s/%s", dir, de->d_name);
		sub = opendir(nsdir);
		while (sub && (se = readdir(sub))) {
			size_t len = strlen(se->d_name);
			struct stat sb;
			char *p;
			if (len < 5 || strcmp(se->d_name + len - 4, ".tar"))
				continue;
			p = xasprintf("%s/%s", nsdir, se->d_name);
			if (stat(p, &sb) || !S_ISREG(sb.st_mode)) {
				free(p);
				continue;
			}
			if (n == cap)
				v = xrealloc(v, (cap = cap ? 2 * cap : 16) * sizeof(*v));
			v[n++] = (struct entry){ p, (int64_t)sb.st_size, sb.st_mtim };
			total += sb.st_size;
		}
		if (sub)
			closedir(sub);
		free(nsdir);
	}
	if (d)
		closedir(d);
	qsort(v, n, sizeof(*v), entry_older);
	for (size_t i = 0; i < n; i++) {
		if (total > max_total && unlink(v[i].path) == 0) {
			total -= v[i].size;
			log(arg, "cache: evicted %s (%lld bytes, least recently used; limit %lld)",
			    strrchr(v[i].path, '/') + 1, (long long)v[i].size, (long long)max_total);
		}
		free(v[i].path);
	}
	free(v);
}

void cache_save(const struct cache_state *st, const char *dir, const struct cache_limits *lim,
		const json_t *cache, const json_t *scope, const char *ws, cache_log_fn *log, void *arg)
{
	const char *ns = json_string_value(json_object_get(scope, "write")), *stall;
	char *nsdir = NULL, *tmp = NULL, *final = NULL;

	if (st->exact) {
		log(arg, "cache: %s was restored as is, not saved again", st->key);
		return;
	}
	if (!ns || !st->key[0]) {
		log(arg, "cache: the job has no namespace to write to, not saved");
		return;
	}
	nsdir = ns_dir(dir, ns);
	if (ota_mkdir_p(nsdir, 0700) < 0 ||
	    tar_write(&tmp, dir, json_object_get(cache, "paths"), ws, lim->max_entry, log, arg) < 0) {
		log(arg, "cache: %s not saved: %s", st->key, ota_error_last());
		goto out;
	}
	/* tests only (test_cache): hold a complete temp file until killed */
	if ((stall = getenv("OTACD_TEST_CACHE_STALL_FILE")) && *stall) {
		ota_write_file_atomic(stall, "", 0, 0644);
		for (;;)
			pause();
	}
	final = xasprintf("%s/%s.tar", nsdir, st->key);
	if (rename(tmp, final) < 0) {
		log(arg, "cache: %s not saved: rename: %s", st->key, strerror(errno));
		unlink(tmp);
		goto out;
	}
	fsync_dir(nsdir);
	{
		struct stat sb;
		log(arg, "cache: saved %s (%lld bytes)", st->key, stat(final, &sb) ? -1LL : (long long)sb.st_size);
	}
	cache_evict(dir, lim->max_total, log, arg);
out:
	free(nsdir);
	free(tmp);
	free(final);
}
