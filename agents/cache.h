/*
 * cache.h - caches between runs on the agent (docs/pipeline.md, "Caches").
 *
 * A job whose spec has `cache` ({key, paths, restore_keys}, from the
 * pipeline) also has `cache_scope` ({write: NS, read: [NS...]}, from the
 * daemon, decided by the run's trust: docs/security.md).  Before the steps
 * the agent renders the key in the checked-out workspace and restores the
 * first of: an entry KEY in a read namespace, then for each restore_keys
 * prefix the newest entry starting with it.  After the job passed it saves
 * the paths as KEY in the write namespace, unless KEY itself was restored.
 *
 * On disk: WORKDIR/cache/NSDIR/KEY.tar, NSDIR the first 32 hex digits of
 * the SHA-256 of the namespace.  An entry is a tar written to
 * WORKDIR/cache/.tmp-* and renamed into place once complete and synced,
 * so a killed agent leaves at most a temporary file, which the next start
 * removes; only *.tar files are ever restored, through source_extract()
 * (no absolute names, no "..", nothing written through a symbolic link).
 * An entry's mtime is its last use: past the agent's size limit the least
 * recently used entries are removed after each save.
 */
#ifndef OTA_AGENT_CACHE_H
#define OTA_AGENT_CACHE_H

#include <jansson.h>
#include <stdint.h>

#include "../common/cachekey.h"

struct cache_limits {
	int64_t max_total;   /* all entries of the agent (--cache-max) */
	int64_t max_entry;   /* one entry (--cache-entry-max) */
};

#define CACHE_DEFAULT_MAX ((int64_t)5 << 30)
#define CACHE_DEFAULT_ENTRY_MAX ((int64_t)1 << 30)

/* What a restore found, for the save after the job. */
struct cache_state {
	char key[CACHEKEY_MAX + 1];       /* the rendered key */
	char restored[CACHEKEY_MAX + 1];  /* the key restored, "" on a miss */
	int exact;                        /* restored == key */
};

typedef void cache_log_fn(void *arg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "12345", "64K", "10M", "5G" into *out; OTA_EINVAL otherwise. */
int cache_parse_size(const char *s, int64_t *out);

/* Remove what a killed agent left in dir (WORKDIR/cache): temp files. */
void cache_sweep(const char *dir);

/*
 * Restore into ws (a realpath).  0 (hit or miss, in *st); OTA_EINVAL when
 * the key cannot be rendered or an entry is refused (the entry is then
 * removed; *msg says why); OTA_ERROR on a disk error (*msg).
 */
int cache_restore(struct cache_state *st, const char *dir, const json_t *cache, const json_t *scope,
		  const char *ws, cache_log_fn *log, void *arg, char **msg);

/* Save after a passed job; failures are logged, never fail the job. */
void cache_save(const struct cache_state *st, const char *dir, const struct cache_limits *lim,
		const json_t *cache, const json_t *scope, const char *ws, cache_log_fn *log, void *arg);

#endif
