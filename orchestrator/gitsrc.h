/*
 * gitsrc.h - firmware sources from git, through libgit2 in a helper process.
 *
 * otacd keeps one bare mirror per configured repository under
 * STATE/git/NAME.git (NAME sanitised).  gitsrc_fetch() brings it up to date
 * from the repository's URL (a local path, https:// with a token, or ssh://
 * with a key; credentials come from struct gitsrc_repo and are never
 * logged).  Fetches into one mirror are serialised; different mirrors fetch
 * in parallel.  Any thread may call any function: each call runs in an
 * otacd-git helper process (githelper/, protocol in gitproto.h) started on
 * demand and kept for a few seconds, so the daemon links neither libgit2
 * nor libarchive (docs/git.md, "The helper").
 *
 * Jobs receive a commit's tree as a tar archive made by gitsrc_archive()
 * (libarchive), cached by tree id, so agents never need the repository's
 * credentials and a matrix of jobs shares one archive.
 */
#ifndef OTA_GITSRC_H
#define OTA_GITSRC_H

#include <stdint.h>

#include "../common/util.h"

struct gitsrc_repo {
	const char *name;        /* "acme/sensor-node": the webhook's full name */
	const char *url;         /* clone URL: /path, file://, https://, ssh:// */
	const char *username;    /* https user (default "x-access-token"), ssh user (default "git") */
	const char *token;       /* https password/token; NULL for none */
	const char *ssh_key;     /* private key file for ssh; NULL for agent/none */
};

struct gitsrc_commit {
	char id[41];             /* commit id, lowercase hex */
	char tree[41];           /* its tree id */
	char *author;            /* "Name <email>" */
	char *committer;         /* "Name <email>" */
	char *message;           /* full message */
	int64_t time_ms;         /* committer time */
};

#define GITSRC_READ_MAX (64u << 20)   /* the largest file gitsrc_read_file() returns */

/* Set the state directory (sweeping temporary archives an interrupted build
 * left); the helper is otacd-git next to this program's executable. */
int gitsrc_init(const char *state_dir);
/* Stop the idle helpers.  Call when no other thread is in a gitsrc call. */
void gitsrc_shutdown(void);
/* Use another helper program (tests; NULL: the default).  Before calls run. */
void gitsrc_set_helper(const char *path);

/*
 * Cancel a fetch still transferring after ms (default 10 minutes; <= 0
 * restores the default).  libgit2 1.5 has no connect or read timeout, so
 * this cannot interrupt a server that accepts and then stays silent; see
 * docs/git.md.  Call at start-up, before fetches run.
 */
void gitsrc_set_fetch_timeout(int64_t ms);

/*
 * Fetch every branch and tag of repo into its mirror (creating it on first
 * use).  Force-updated refs and deleted refs are followed.  On failure the
 * message says what failed without any credential.
 */
int gitsrc_fetch(const struct gitsrc_repo *repo);
/*
 * The same, plus one pull/merge request's head ref (issue 17): `ref` must
 * be refs/pull/N/head or refs/merge-requests/N/head (OTA_EINVAL
 * otherwise); it is fetched to the same name in the mirror.
 */
int gitsrc_fetch_request(const struct gitsrc_repo *repo, const char *ref);
/* Is ref such a head ref?  (The git helper checks it again.) */
int gitsrc_request_ref_ok(const char *ref);

/*
 * Resolve what (a full ref "refs/heads/main", a short branch or tag name, or
 * a commit id, full or abbreviated) in the mirror to a commit.
 * OTA_ENOTFOUND when it does not exist there.
 */
int gitsrc_resolve(const struct gitsrc_repo *repo, const char *what, struct gitsrc_commit *out);
void gitsrc_commit_release(struct gitsrc_commit *c);

/* Read a file (path inside the tree) at commit into out (capped at max
 * bytes).  OTA_ENOTFOUND when the commit has no such file. */
int gitsrc_read_file(const struct gitsrc_repo *repo, const char *commit, const char *path,
		     struct buf *out, size_t max);

/*
 * A tar archive of commit's tree (regular files with their executable bit,
 * symlinks, directories; submodules are left out), as a file path the
 * caller may open and read (caller frees the string).  Built once per tree
 * id under STATE/git/archives, written to a temporary file and renamed, so a
 * concurrent or interrupted build never exposes a partial archive.
 */
int gitsrc_archive(const struct gitsrc_repo *repo, const char *commit, char **tar_path);

/* The mirror's directory for repo (caller frees); _at: under git_dir
 * (STATE/git) rather than gitsrc_init()'s. */
char *gitsrc_mirror_path(const struct gitsrc_repo *repo);
char *gitsrc_mirror_path_at(const char *git_dir, const struct gitsrc_repo *repo);

#endif
