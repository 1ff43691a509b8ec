/*
 * gitwork.h - what the otacd-git helper does for the daemon: the libgit2 and
 * libarchive side of orchestrator/gitsrc.h.
 *
 * Each function does what its gitsrc_* namesake in orchestrator/gitsrc.h
 * documents (the daemon's gitsrc.c forwards each call to a helper process,
 * which calls these).  Only otacd-git links this file, so the daemon maps
 * neither library.  Locks are lock files (flock), so any number of helper
 * processes may work on one state directory at once.
 */
#ifndef OTA_GITWORK_H
#define OTA_GITWORK_H

#include "../orchestrator/gitsrc.h"

int gitwork_init(const char *state_dir);
void gitwork_shutdown(void);
void gitwork_set_fetch_timeout(int64_t ms);

/* request_ref: NULL, or a pull/merge request's head ref fetched as well
 * (gitsrc_fetch_request) */
int gitwork_fetch(const struct gitsrc_repo *repo, const char *request_ref);
int gitwork_resolve(const struct gitsrc_repo *repo, const char *what, struct gitsrc_commit *out);
int gitwork_read_file(const struct gitsrc_repo *repo, const char *commit, const char *path,
		      struct buf *out, size_t max);
int gitwork_archive(const struct gitsrc_repo *repo, const char *commit, char **tar_path);

#endif
