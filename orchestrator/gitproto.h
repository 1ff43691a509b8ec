/*
 * gitproto.h - the pipe between otacd and its git helper (otacd-git).
 *
 * The daemon does not link libgit2 or libarchive: orchestrator/gitsrc.c
 * forwards every git call to a helper process over a socketpair that is the
 * helper's fd 0.  One request, one reply, in frames: a 4-byte big-endian
 * length, then that many bytes.
 *
 *   request  {"op": "fetch" | "resolve" | "read" | "archive",
 *             "repo": {"name", "url", "username", "token", "ssh_key"},
 *             "what": ref or commit, "path": file path, "max": byte cap,
 *             fetch: "request_ref" refs/pull/N/head or refs/merge-requests/N/head
 *             (issue 17; the helper checks its form again)}
 *   reply    {"rc": 0 or an OTA_* code, "error": message when rc < 0,
 *             resolve: "id", "tree", "author", "committer", "message", "time_ms";
 *             read: "len" (then one more frame of exactly len bytes);
 *             archive: "path"}
 *
 * The helper reads git data from forges, so the daemon treats its replies as
 * hostile: gitproto_reply_parse() checks every field (docs/security.md).
 */
#ifndef OTA_GITPROTO_H
#define OTA_GITPROTO_H

#include <stddef.h>

#include "../common/util.h"
#include "gitsrc.h"

#define GITPROTO_FRAME_MAX (1u << 20)   /* a request or a reply's JSON */
#define GITPROTO_ERROR_MAX 2048         /* an error message kept from the helper */

enum gitproto_op { GITPROTO_FETCH, GITPROTO_RESOLVE, GITPROTO_READ, GITPROTO_ARCHIVE };

/* Write one frame; 0 or OTA_ERROR (errno kept). */
int gitproto_write(int fd, const void *data, size_t len);

/* Read one frame of at most max bytes into out (replacing its content).
 * 1 at a clean end of file before the frame, 0 on success, OTA_ETOOBIG or
 * OTA_ERROR (a short frame, a read error). */
int gitproto_read(int fd, struct buf *out, size_t max);

/* A parsed reply.  rc is the helper's verdict, error its message (empty on
 * success); commit is filled for resolve (release with
 * gitsrc_commit_release), len for read, path for archive (caller frees). */
struct gitproto_reply {
	int rc;
	char error[GITPROTO_ERROR_MAX];
	struct gitsrc_commit commit;
	size_t len;
	char *path;
};

/*
 * Parse a reply to op.  max is the byte cap the read asked for; archive_dir
 * is where an archive's path must lie (DIR/<40 hex>.tar).  OTA_EINVAL with
 * a message naming the field when the reply breaks any rule; out then holds
 * nothing to free.
 */
int gitproto_reply_parse(struct gitproto_reply *out, enum gitproto_op op, const char *json, size_t n,
			 size_t max, const char *archive_dir);
void gitproto_reply_release(struct gitproto_reply *r);

#endif
