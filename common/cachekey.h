/*
 * cachekey.h - the rules for a stage's `cache:` (docs/pipeline.md, "Caches"),
 * shared by the daemon (which checks a pushed pipeline) and the agent
 * (which renders the key in the job's workspace).
 *
 * A key template is literal text of the characters [A-Za-z0-9._-] and
 * expressions `{{ hashFiles('GLOB'[, 'GLOB' ...]) }}` (single or double
 * quotes, spaces optional).  Each GLOB is a relative path pattern of the
 * workspace, of printable characters without quotes or backslash, no
 * leading '/' and no ".." component.  hashFiles() renders as the lowercase
 * hex SHA-256 over, for every regular file the patterns match (sorted by
 * path, each file once, symbolic links and anything resolving outside the
 * workspace skipped), its relative path, a NUL and its content's SHA-256;
 * matching nothing gives the hash of nothing.  A template is at most
 * CACHEKEY_MAX_TEMPLATE bytes, has at most CACHEKEY_MAX_CALLS calls of at
 * most CACHEKEY_MAX_GLOBS patterns; a rendered key is 1..CACHEKEY_MAX
 * bytes, so it is a safe file name.
 */
#ifndef OTA_CACHEKEY_H
#define OTA_CACHEKEY_H

#include <stddef.h>

#define CACHEKEY_MAX 200
#define CACHEKEY_MAX_TEMPLATE 512
#define CACHEKEY_MAX_CALLS 4
#define CACHEKEY_MAX_GLOBS 16
#define CACHEKEY_MAX_PATHS 32      /* entries of `paths:` / `restore_keys:` */

/*
 * Render template (len bytes, NULs refused) into out[CACHEKEY_MAX + 1].
 * ws: the workspace (absolute, a realpath) whose files hashFiles() reads;
 * NULL only checks the template (each hashFiles() then counts as 64
 * characters).  0, or OTA_EINVAL with the reason in err[n] (and the error
 * slot); OTA_ERROR when a matched file cannot be read.
 */
int cachekey_render(char out[CACHEKEY_MAX + 1], const char *tmpl, size_t len, const char *ws, char *err,
		    size_t n);

/*
 * A cache path (an entry of `paths:`): a relative path of 1-255 printable
 * bytes, no backslash, no leading '/', no empty-after-'/', "." or ".."
 * component (a trailing '/' is allowed).  0, or OTA_EINVAL with why[n].
 */
int cachekey_path_check(const char *path, size_t len, char *why, size_t n);

#endif
