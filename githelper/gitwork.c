/*
 * gitwork.c - bare git mirrors, commit lookup and tree archives (libgit2),
 * the work of the otacd-git helper (githelper/main.c).
 *
 * Why: a pipeline runs at one exact commit of a firmware repository.  otacd
 * must read .otacd/pipeline.yml at that commit and hand every job the tree
 * of that commit, without giving agents the repository's credentials and
 * without shelling out to git.  So the daemon keeps one bare mirror per
 * repository and serves everything from it.
 *
 * How: each repository has a mirror at STATE/git/NAME-HASH.git, where NAME is
 * the repository's name with anything outside [A-Za-z0-9._-] replaced by '_'
 * and HASH the first 12 hex digits of SHA-256(name), so "acme/x" and
 * "acme_x" never share a mirror.  gitwork_fetch() uses an anonymous remote
 * (the URL, which may embed credentials, is never written to the mirror's
 * config) with the refspecs "+refs/heads/<all>:refs/heads/<all>" and the
 * same for refs/tags, and pruning, so the mirror's refs are exactly the
 * remote's: force pushes and moved tags are followed, deleted branches
 * disappear.  Fetches into one mirror are serialised by a per-mirror lock
 * file (flock, so it holds across the helper processes and dies with its
 * holder); different mirrors fetch in parallel.  Readers (resolve, read_file, archive) take no lock:
 * libgit2 updates refs and packs by writing a new file and renaming it, so a
 * reader sees the old or the new state.  Every call opens its own
 * git_repository and frees it before returning.
 *
 * Archives are pax (restricted) tar files written with libarchive into
 * STATE/git/archives/TREE.tar: built into a temporary file in the same
 * directory, fsynced and renamed, under a per-archive lock file so a matrix of
 * jobs asking at once builds it once.  Entries: directories 0755, files 0644
 * or 0755, symlinks, in git's tree order (pre-order); submodules are left
 * out; owner root:root (uid/gid 0); every mtime is the committer time of
 * the commit that first asked for this tree.  docs/git.md has the details.
 *
 * Limits: libgit2 1.5 has no connect or read timeout.  A fetch that is
 * transferring data is cancelled after the fetch timeout (progress
 * callbacks check a deadline), and a local path that does not exist or a
 * refused connection fails at once, but a server that accepts the
 * connection and then sends nothing blocks the calling thread until the
 * kernel gives up on the TCP connection; the daemon's thread waiting on
 * the helper waits as long.
 */
#include "gitwork.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <git2.h>
#include <locale.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIRROR_HASH_HEX 12       /* hex digits of SHA-256(name) in the mirror's name */
#define MIRROR_NAME_MAX 100      /* sanitised name length kept before the hash */
#define CRED_ATTEMPTS_MAX 2      /* credential callbacks per fetch before giving up */

/* Set by gitwork_init() before any other thread calls in; read-only after. */
static char *state_git;          /* STATE/git */
static char *archive_dir;        /* STATE/git/archives */
static int initialised;
static int64_t fetch_timeout_ms = 10 * 60 * 1000;

/* ---- per-path locks ------------------------------------------------------
 *
 * Several helper processes may work on one state directory at once, so the
 * locks are flock()s on a file next to what they protect: PATH.lock.  The
 * kernel drops a lock when its holder dies, so a killed helper never leaves
 * one held.
 */
static int path_lock(const char *path, int *fd_out)
{
	char *name = xasprintf("%s.lock", path);
	int fd = open(name, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	int rc = 0;

	if (fd < 0 || flock(fd, LOCK_EX) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot lock %s: %s", name, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	*fd_out = fd;
	free(name);
	return rc;
}

static void path_unlock(int fd)
{
	if (fd >= 0)
		close(fd);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *git_msg(void)
{
	const git_error *e = git_error_last();
	return e && e->message && e->message[0] ? e->message : "unknown libgit2 error";
}

/* The URL with any password in its user-info replaced by "***". */
static char *url_redact(const char *url)
{
	const char *scheme = strstr(url, "://"), *auth, *at, *colon, *end;

	if (!scheme)
		return xstrdup(url);     /* a path or scp-like user@host:path: no password */
	auth = scheme + 3;
	end = auth + strcspn(auth, "/?#");
	at = memrchr(auth, '@', (size_t)(end - auth));
	if (!at)
		return xstrdup(url);
	colon = memchr(auth, ':', (size_t)(at - auth));
	if (!colon)
		return xstrdup(url);
	return xasprintf("%.*s:***%s", (int)(colon - url), url, at);
}

/* The password part of a URL's user-info, or NULL (caller frees). */
static char *url_password(const char *url)
{
	const char *scheme = strstr(url, "://"), *auth, *at, *colon, *end;

	if (!scheme)
		return NULL;
	auth = scheme + 3;
	end = auth + strcspn(auth, "/?#");
	at = memrchr(auth, '@', (size_t)(end - auth));
	if (!at)
		return NULL;
	colon = memchr(auth, ':', (size_t)(at - auth));
	if (!colon || colon + 1 == at)
		return NULL;
	return xstrndup(colon + 1, (size_t)(at - colon - 1));
}

/* Replace every occurrence of secret in b by with. */
static void scrub(struct buf *b, const char *secret, const char *with)
{
	struct buf out = BUF_INIT;
	const char *p, *hit;
	size_t n;

	if (!secret || strlen(secret) < 3 || !b->len)
		return;
	n = strlen(secret);
	for (p = buf_cstr(b); (hit = strstr(p, secret)); p = hit + n) {
		buf_put(&out, p, (size_t)(hit - p));
		buf_puts(&out, with);
	}
	if (p == buf_cstr(b)) {
		buf_release(&out);
		return;
	}
	buf_puts(&out, p);
	buf_release(b);
	*b = out;
}

/* Set the error slot to "PREFIX: libgit2 message" with every credential of
 * repo taken out, and return code. */
static int fail_git(int code, const struct gitsrc_repo *repo, const char *prefix)
{
	struct buf b = BUF_INIT;
	char *pw = repo && repo->url ? url_password(repo->url) : NULL;
	int rc;

	buf_printf(&b, "%s: %s", prefix, git_msg());
	if (repo && repo->url && pw) {
		char *red = url_redact(repo->url);
		scrub(&b, repo->url, red);    /* first whole URLs, then loose secrets */
		scrub(&b, pw, "***");
		free(red);
	}
	if (repo)
		scrub(&b, repo->token, "***");
	rc = ota_error_set(code, "%s", buf_cstr(&b));
	buf_release(&b);
	free(pw);
	git_error_clear();
	return rc;
}

/* ---- init, paths -------------------------------------------------------- */

int gitwork_init(const char *state_dir)
{
	int rc;

	if (!initialised) {
		if ((rc = git_libgit2_init()) < 0)
			return ota_error_set(OTA_ERROR, "cannot initialise libgit2: %s", git_msg());
		initialised = 1;
	}
	free(state_git);
	free(archive_dir);
	state_git = xasprintf("%s/git", state_dir);
	archive_dir = xasprintf("%s/archives", state_git);
	return ota_mkdir_p(archive_dir, 0755);
}

void gitwork_shutdown(void)
{
	if (!initialised)
		return;
	free(state_git);
	free(archive_dir);
	state_git = archive_dir = NULL;
	git_libgit2_shutdown();
	initialised = 0;
}

void gitwork_set_fetch_timeout(int64_t ms)
{
	fetch_timeout_ms = ms > 0 ? ms : 10 * 60 * 1000;
}

static int check_repo(const struct gitsrc_repo *repo)
{
	if (!repo || !repo->name || !repo->name[0])
		return ota_error_set(OTA_EINVAL, "repository without a name");
	if (!state_git)
		return ota_error_set(OTA_ERROR, "gitwork_init() was not called");
	return 0;
}

/* Open repo's mirror; OTA_ENOTFOUND when it was never fetched. */
static int mirror_open(git_repository **out, const struct gitsrc_repo *repo)
{
	char *path;
	int rc;

	*out = NULL;
	if ((rc = check_repo(repo)) < 0)
		return rc;
	path = gitsrc_mirror_path_at(state_git, repo);
	rc = git_repository_open_bare(out, path);
	if (rc == GIT_ENOTFOUND)
		rc = ota_error_set(OTA_ENOTFOUND, "%s has not been fetched yet (no mirror at %s)",
				   repo->name, path);
	else if (rc < 0) {
		char *m = xasprintf("cannot open the mirror of %s", repo->name);
		rc = fail_git(OTA_ERROR, repo, m);
		free(m);
	}
	free(path);
	git_error_clear();
	return rc;
}

/* ---- fetch -------------------------------------------------------------- */

struct fetch_ctx {
	const struct gitsrc_repo *repo;
	int attempts;
	int64_t deadline;
	int timed_out;
};

static int cred_cb(git_credential **out, const char *url, const char *user_from_url,
		   unsigned int allowed, void *payload)
{
	struct fetch_ctx *ctx = payload;
	const struct gitsrc_repo *repo = ctx->repo;
	const char *user;

	if (allowed & GIT_CREDENTIAL_USERNAME) {
		/* ssh asks for the user name alone first; not an attempt */
		user = user_from_url ? user_from_url : repo->username ? repo->username : "git";
		return git_credential_username_new(out, user);
	}
	if (++ctx->attempts > CRED_ATTEMPTS_MAX) {
		git_error_set_str(GIT_ERROR_NET, "the server rejected the credentials (gave up after 2 attempts)");
		return GIT_EAUTH;
	}
	if (allowed & GIT_CREDENTIAL_SSH_KEY) {
		user = user_from_url ? user_from_url : repo->username ? repo->username : "git";
		if (repo->ssh_key)
			return git_credential_ssh_key_new(out, user, NULL, repo->ssh_key, NULL);
		return git_credential_ssh_key_from_agent(out, user);
	}
	if (allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT) {
		if (!repo->token) {
			git_error_set_str(GIT_ERROR_NET, "the server asks for credentials and no token is configured");
			return GIT_EAUTH;
		}
		user = repo->username ? repo->username : user_from_url ? user_from_url : "x-access-token";
		return git_credential_userpass_plaintext_new(out, user, repo->token);
	}
	git_error_set_str(GIT_ERROR_NET, "the server asks for a kind of credentials otacd does not have");
	return GIT_EAUTH;
}

/* Accept exactly what libgit2 verified (CA chain and host name for TLS,
 * ~/.ssh/known_hosts for ssh); GIT_PASSTHROUGH keeps libgit2's own error. */
static int cert_cb(git_cert *cert, int valid, const char *host, void *payload)
{
	return valid ? 0 : GIT_PASSTHROUGH;
}

static int deadline_check(struct fetch_ctx *ctx)
{
	if (now_ms() <= ctx->deadline)
		return 0;
	ctx->timed_out = 1;
	git_error_set_str(GIT_ERROR_NET, "fetch timed out");
	return -1;
}

static int transfer_cb(const git_indexer_progress *stats, void *payload)
{
	return deadline_check(payload);
}

static int sideband_cb(const char *str, int len, void *payload)
{
	return deadline_check(payload);
}

/* Point the mirror's HEAD at the remote's default branch (best effort:
 * "HEAD" then resolves like a clone's). */
static void mirror_set_head(git_repository *r, git_remote *remote)
{
	git_buf def = GIT_BUF_INIT;
	git_reference *ref = NULL;

	if (git_remote_default_branch(&def, remote) == 0 &&
	    git_reference_lookup(&ref, r, def.ptr) == 0)
		git_repository_set_head(r, def.ptr);
	git_reference_free(ref);
	git_buf_dispose(&def);
	git_error_clear();
}

static int remove_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path) < 0 ? -1 : 0;
}

/* rm -rf path (does not follow symlinks). */
static void remove_tree(const char *path)
{
	nftw(path, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A local source (a path or file:// URL) must be an existing directory;
 * libgit2 would only say "unsupported URL protocol". */
static int local_source_check(const struct gitsrc_repo *repo, const char *what)
{
	const char *p = repo->url;
	struct stat st;

	if (!strncmp(p, "file://", 7))
		p += 7;
	else if (p[0] != '/' && p[0] != '.')
		return 0;
	if (stat(p, &st) < 0)
		return ota_error_set(OTA_ERROR, "%s: %s", what, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return ota_error_set(OTA_ERROR, "%s: not a directory", what);
	return 0;
}

int gitwork_fetch(const struct gitsrc_repo *repo, const char *request_ref)
{
	static char heads[] = "+refs/heads/*:refs/heads/*";
	static char tags[] = "+refs/tags/*:refs/tags/*";
	char request[64];
	char *specv[] = { heads, tags, request };
	git_strarray specs = { specv, request_ref ? 3 : 2 };
	git_fetch_options opts;
	git_repository_init_options iopts;
	git_remote_create_options ropts;
	struct fetch_ctx ctx = { 0 };
	git_repository *r = NULL;
	git_remote *remote = NULL;
	int lock = -1;
	char *path = NULL, *red = NULL, *what = NULL;
	int created = 0, rc;

	git_fetch_options_init(&opts, GIT_FETCH_OPTIONS_VERSION);
	git_repository_init_options_init(&iopts, GIT_REPOSITORY_INIT_OPTIONS_VERSION);
	if (request_ref) { /* issue 17: the request's head ref, to the same name */
		if (!gitsrc_request_ref_ok(request_ref))
			return ota_error_set(OTA_EINVAL, "'%.100s' is not a pull or merge request's head ref", request_ref);
		snprintf(request, sizeof(request), "+%s:%s", request_ref, request_ref);
	}
	if ((rc = check_repo(repo)) < 0)
		return rc;
	if (!repo->url || !repo->url[0])
		return ota_error_set(OTA_EINVAL, "repository %s has no URL", repo->name);
	path = gitsrc_mirror_path_at(state_git, repo);
	red = url_redact(repo->url);
	what = xasprintf("cannot fetch %s from %s", repo->name, red);
	if ((rc = path_lock(path, &lock)) < 0)
		goto out;
	if ((rc = local_source_check(repo, what)) < 0)
		goto out;
	if (git_repository_open_bare(&r, path) < 0) {
		created = 1;
		iopts.flags = GIT_REPOSITORY_INIT_BARE | GIT_REPOSITORY_INIT_MKPATH;
		if ((rc = git_repository_init_ext(&r, path, &iopts)) < 0) {
			char *m = xasprintf("cannot create the mirror of %s at %s", repo->name, path);
			rc = fail_git(OTA_ERROR, repo, m);
			free(m);
			goto out;
		}
	}
	/*
	 * Anonymous (nothing written to the mirror's config, so a URL with
	 * credentials never lands on disk), and without the daemon user's
	 * url.*.insteadOf rewrites: the configured URL is the one fetched.
	 * (Skipping insteadOf also avoids a leak in libgit2 1.5's regexp
	 * matching of those config keys.)
	 */
	git_remote_create_options_init(&ropts, GIT_REMOTE_CREATE_OPTIONS_VERSION);
	ropts.repository = r;
	ropts.flags = GIT_REMOTE_CREATE_SKIP_INSTEADOF;
	if ((rc = git_remote_create_with_opts(&remote, repo->url, &ropts)) < 0) {
		rc = fail_git(OTA_EINVAL, repo, what);
		goto out;
	}

	ctx.repo = repo;
	ctx.deadline = now_ms() + fetch_timeout_ms;
	opts.callbacks.credentials = cred_cb;
	opts.callbacks.certificate_check = cert_cb;
	opts.callbacks.transfer_progress = transfer_cb;
	opts.callbacks.sideband_progress = sideband_cb;
	opts.callbacks.payload = &ctx;
	opts.prune = GIT_FETCH_PRUNE;
	/* NONE: tags come through the explicit refspec, which force-updates
	 * them; "auto" would only add new tags and never move one. */
	opts.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
	opts.update_fetchhead = 0;

	if ((rc = git_remote_fetch(remote, &specs, &opts, "otacd: fetch")) < 0) {
		if (ctx.timed_out) {
			rc = ota_error_set(OTA_ERROR, "%s: timed out after %lld s", what,
					   (long long)(fetch_timeout_ms / 1000));
			git_error_clear();
		} else {
			rc = fail_git(rc == GIT_EAUTH ? OTA_EAUTH : OTA_ERROR, repo, what);
		}
		goto out;
	}
	mirror_set_head(r, remote);
	rc = 0;
out:
	git_remote_free(remote);
	git_repository_free(r);
	if (rc < 0 && created)
		remove_tree(path);     /* a first fetch that failed leaves nothing */
	path_unlock(lock);
	free(what);
	free(red);
	free(path);
	return rc;
}

/* ---- resolve ------------------------------------------------------------ */

static int is_hex(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
			return 0;
	return 1;
}

/* Peel obj to a commit.  0, or OTA_EINVAL when it is not one. */
static int peel_commit(git_commit **out, git_object *obj, const struct gitsrc_repo *repo,
		       const char *what)
{
	git_object *c = NULL;

	if (git_object_peel(&c, obj, GIT_OBJECT_COMMIT) < 0) {
		git_error_clear();
		return ota_error_set(OTA_EINVAL, "'%s' in %s is not a commit", what, repo->name);
	}
	*out = (git_commit *)c;
	return 0;
}

/* Look up ref name; 1 when found (and *out set), 0 when not, <0 on error. */
static int try_ref(git_commit **out, git_repository *r, const char *name,
		   const struct gitsrc_repo *repo, const char *what)
{
	git_reference *ref = NULL;
	git_object *obj = NULL;
	int rc = git_reference_lookup(&ref, r, name);

	if (rc == GIT_ENOTFOUND || rc == GIT_EINVALIDSPEC) {
		git_error_clear();
		return 0;
	}
	if (rc < 0)
		return fail_git(OTA_ERROR, repo, "cannot read a reference");
	rc = git_reference_peel(&obj, ref, GIT_OBJECT_COMMIT);
	git_reference_free(ref);
	if (rc == GIT_ENOTFOUND) {
		/* a symbolic ref (HEAD) to a branch that does not exist */
		git_error_clear();
		return 0;
	}
	if (rc < 0) {
		git_error_clear();
		return ota_error_set(OTA_EINVAL, "'%s' in %s is not a commit", what, repo->name);
	}
	*out = (git_commit *)obj;
	return 1;
}

/* Look up a commit id (or an annotated tag's id), full or abbreviated to at
 * least 4 hex digits; 1 when found, 0 when not, <0 on error. */
static int try_id(git_commit **out, git_repository *r, const char *what,
		  const struct gitsrc_repo *repo)
{
	size_t len = strlen(what);
	git_object *obj = NULL;
	git_oid oid;
	int rc;

	if (!is_hex(what) || len < GIT_OID_MINPREFIXLEN || len > GIT_OID_HEXSZ ||
	    git_oid_fromstrn(&oid, what, len) < 0) {
		git_error_clear();
		return 0;
	}
	rc = git_object_lookup_prefix(&obj, r, &oid, len, GIT_OBJECT_ANY);
	if (rc == GIT_ENOTFOUND) {
		git_error_clear();
		return 0;
	}
	if (rc == GIT_EAMBIGUOUS) {
		git_error_clear();
		return ota_error_set(OTA_EINVAL, "'%s' is ambiguous in %s: give more digits", what, repo->name);
	}
	if (rc < 0)
		return fail_git(OTA_ERROR, repo, "cannot read an object");
	rc = peel_commit(out, obj, repo, what);
	git_object_free(obj);
	return rc < 0 ? rc : 1;
}

/*
 * what -> commit: a full ref name ("refs/..." or "HEAD") exactly; else a
 * branch, then a tag, of that name; else a commit id.  Revision expressions
 * ("main~1") are not accepted.
 */
static int lookup_commit(git_commit **out, git_repository *r, const struct gitsrc_repo *repo,
			 const char *what)
{
	char *name;
	int rc;

	*out = NULL;
	if (!what || !what[0])
		return ota_error_set(OTA_EINVAL, "empty revision for %s", repo->name);
	if (!strncmp(what, "refs/", 5) || !strcmp(what, "HEAD")) {
		rc = try_ref(out, r, what, repo, what);
	} else {
		name = xasprintf("refs/heads/%s", what);
		rc = try_ref(out, r, name, repo, what);
		free(name);
		if (rc == 0) {
			name = xasprintf("refs/tags/%s", what);
			rc = try_ref(out, r, name, repo, what);
			free(name);
		}
		if (rc == 0)
			rc = try_id(out, r, what, repo);
	}
	if (rc == 0)
		return ota_error_set(OTA_ENOTFOUND, "%s has no branch, tag or commit '%s'", repo->name, what);
	return rc < 0 ? rc : 0;
}

static char *signature_str(const git_signature *s)
{
	return xasprintf("%s <%s>", s && s->name ? s->name : "", s && s->email ? s->email : "");
}

int gitwork_resolve(const struct gitsrc_repo *repo, const char *what, struct gitsrc_commit *out)
{
	git_repository *r = NULL;
	git_commit *c = NULL;
	const char *msg;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = mirror_open(&r, repo)) < 0)
		return rc;
	if ((rc = lookup_commit(&c, r, repo, what)) < 0)
		goto out;
	git_oid_tostr(out->id, sizeof(out->id), git_commit_id(c));
	git_oid_tostr(out->tree, sizeof(out->tree), git_commit_tree_id(c));
	out->author = signature_str(git_commit_author(c));
	out->committer = signature_str(git_commit_committer(c));
	msg = git_commit_message(c);
	out->message = xstrdup(msg ? msg : "");
	out->time_ms = (int64_t)git_commit_time(c) * 1000;
out:
	git_commit_free(c);
	git_repository_free(r);
	return rc;
}

/* ---- read_file ---------------------------------------------------------- */

int gitwork_read_file(const struct gitsrc_repo *repo, const char *commit, const char *path,
		     struct buf *out, size_t max)
{
	git_repository *r = NULL;
	git_commit *c = NULL;
	git_tree *tree = NULL;
	git_tree_entry *entry = NULL;
	git_odb *odb = NULL;
	git_blob *blob = NULL;
	git_object_t type;
	size_t size;
	int rc;

	while (path && *path == '/')
		path++;
	if (!path || !*path)
		return ota_error_set(OTA_EINVAL, "empty file path");
	if ((rc = mirror_open(&r, repo)) < 0)
		return rc;
	if ((rc = lookup_commit(&c, r, repo, commit)) < 0)
		goto out;
	if ((rc = git_commit_tree(&tree, c)) < 0) {
		rc = fail_git(OTA_ERROR, repo, "cannot read the commit's tree");
		goto out;
	}
	rc = git_tree_entry_bypath(&entry, tree, path);
	if (rc == GIT_ENOTFOUND || rc == GIT_EINVALIDSPEC) {
		git_error_clear();
		rc = ota_error_set(OTA_ENOTFOUND, "%s has no file %s at %.12s", repo->name, path,
				   git_oid_tostr_s(git_commit_id(c)));
		goto out;
	}
	if (rc < 0) {
		rc = fail_git(OTA_ERROR, repo, "cannot read the tree");
		goto out;
	}
	switch (git_tree_entry_filemode(entry)) {
	case GIT_FILEMODE_BLOB:
	case GIT_FILEMODE_BLOB_EXECUTABLE:
		break;
	case GIT_FILEMODE_TREE:
		rc = ota_error_set(OTA_EINVAL, "%s in %s is a directory", path, repo->name);
		goto out;
	case GIT_FILEMODE_LINK:
		rc = ota_error_set(OTA_EINVAL, "%s in %s is a symbolic link (not followed)", path, repo->name);
		goto out;
	default:
		rc = ota_error_set(OTA_EINVAL, "%s in %s is a submodule", path, repo->name);
		goto out;
	}
	/* size from the object header, so an oversized blob is never loaded */
	if ((rc = git_repository_odb(&odb, r)) < 0 ||
	    (rc = git_odb_read_header(&size, &type, odb, git_tree_entry_id(entry))) < 0) {
		rc = fail_git(OTA_ERROR, repo, "cannot read a blob");
		goto out;
	}
	if (size > max) {
		rc = ota_error_set(OTA_ETOOBIG, "%s in %s is %zu bytes, more than the limit of %zu",
				   path, repo->name, size, max);
		goto out;
	}
	if ((rc = git_blob_lookup(&blob, r, git_tree_entry_id(entry))) < 0) {
		rc = fail_git(OTA_ERROR, repo, "cannot read a blob");
		goto out;
	}
	buf_clear(out);
	rc = buf_put(out, git_blob_rawcontent(blob), (size_t)git_blob_rawsize(blob));
	if (rc == 0 && !out->ptr)
		rc = buf_puts(out, "");     /* an empty file: still a valid C string */
out:
	git_blob_free(blob);
	git_odb_free(odb);
	git_tree_entry_free(entry);
	git_tree_free(tree);
	git_commit_free(c);
	git_repository_free(r);
	return rc;
}

/* ---- archive ------------------------------------------------------------ */

struct walk_ctx {
	git_repository *r;
	const struct gitsrc_repo *repo;
	struct archive *a;
	struct archive_entry *e;
	time_t mtime;
	int rc;
};

static int walk_fail(struct walk_ctx *w, const char *path, const char *why)
{
	w->rc = ota_error_set(OTA_ERROR, "cannot archive %s of %s: %s", path, w->repo->name, why);
	return -1;
}

static int walk_cb(const char *root, const git_tree_entry *te, void *payload)
{
	struct walk_ctx *w = payload;
	git_filemode_t mode = git_tree_entry_filemode(te);
	git_blob *blob = NULL;
	char *path = xasprintf("%s%s", root, git_tree_entry_name(te));
	char *target = NULL;
	const void *data = NULL;
	size_t size = 0;
	int rc = 0;

	if (mode == GIT_FILEMODE_COMMIT || mode == GIT_FILEMODE_UNREADABLE)
		goto out;     /* submodule (or garbage): left out */

	archive_entry_clear(w->e);
	archive_entry_set_pathname(w->e, path);
	archive_entry_set_mtime(w->e, w->mtime, 0);
	archive_entry_set_uid(w->e, 0);
	archive_entry_set_gid(w->e, 0);
	archive_entry_set_uname(w->e, "root");
	archive_entry_set_gname(w->e, "root");

	if (mode == GIT_FILEMODE_TREE) {
		archive_entry_set_filetype(w->e, AE_IFDIR);
		archive_entry_set_perm(w->e, 0755);
		archive_entry_set_size(w->e, 0);
	} else {
		if (git_blob_lookup(&blob, w->r, git_tree_entry_id(te)) < 0) {
			rc = walk_fail(w, path, git_msg());
			git_error_clear();
			goto out;
		}
		data = git_blob_rawcontent(blob);
		size = (size_t)git_blob_rawsize(blob);
		if (mode == GIT_FILEMODE_LINK) {
			target = xstrndup(data, size);
			archive_entry_set_filetype(w->e, AE_IFLNK);
			archive_entry_set_perm(w->e, 0777);
			archive_entry_set_symlink(w->e, target);
			archive_entry_set_size(w->e, 0);
			size = 0;
		} else {
			archive_entry_set_filetype(w->e, AE_IFREG);
			archive_entry_set_perm(w->e, mode == GIT_FILEMODE_BLOB_EXECUTABLE ? 0755 : 0644);
			archive_entry_set_size(w->e, (la_int64_t)size);
		}
	}
	if (archive_write_header(w->a, w->e) < ARCHIVE_WARN) {
		rc = walk_fail(w, path, archive_error_string(w->a));
		goto out;
	}
	if (size && archive_write_data(w->a, data, size) != (la_ssize_t)size) {
		rc = walk_fail(w, path, archive_error_string(w->a) ? archive_error_string(w->a) : "short write");
		goto out;
	}
out:
	git_blob_free(blob);
	free(target);
	free(path);
	return rc;
}

/* Write the tree of c as a tar into the open file fd. */
static int archive_write_tree(int fd, git_repository *r, const struct gitsrc_repo *repo, git_commit *c)
{
	struct walk_ctx w = { r, repo, NULL, NULL, (time_t)git_commit_time(c), 0 };
	git_tree *tree = NULL;
	locale_t utf8, old = (locale_t)0;
	int rc;

	if ((rc = git_commit_tree(&tree, c)) < 0)
		return fail_git(OTA_ERROR, repo, "cannot read the commit's tree");
	/*
	 * Git names are bytes, in practice UTF-8.  libarchive converts names
	 * from the current locale's charset to UTF-8 for pax headers; under
	 * the "C" locale a non-ASCII name would get a "hdrcharset=BINARY"
	 * header that GNU tar warns about.  So this thread writes under
	 * C.UTF-8 (uselocale is per thread); a name that is not valid UTF-8
	 * still goes out as raw bytes, as git archive writes it.
	 */
	utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	if (utf8)
		old = uselocale(utf8);
	w.a = archive_write_new();
	w.e = archive_entry_new2(w.a);
	if (!w.a || !w.e)
		abort();
	if (archive_write_set_format_pax_restricted(w.a) != ARCHIVE_OK ||
	    archive_write_open_fd(w.a, fd) != ARCHIVE_OK) {
		rc = ota_error_set(OTA_ERROR, "cannot start a tar archive: %s", archive_error_string(w.a));
		goto out;
	}
	rc = git_tree_walk(tree, GIT_TREEWALK_PRE, walk_cb, &w);
	if (w.rc < 0) {
		rc = w.rc;
		goto out;
	}
	if (rc < 0) {
		rc = fail_git(OTA_ERROR, repo, "cannot walk the tree");
		goto out;
	}
	if (archive_write_close(w.a) != ARCHIVE_OK) {
		rc = ota_error_set(OTA_ERROR, "cannot finish a tar archive: %s", archive_error_string(w.a));
		goto out;
	}
	rc = 0;
out:
	archive_entry_free(w.e);
	archive_write_free(w.a);
	if (utf8) {
		uselocale(old);
		freelocale(utf8);
	}
	git_tree_free(tree);
	return rc;
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

int gitwork_archive(const struct gitsrc_repo *repo, const char *commit, char **tar_path)
{
	git_repository *r = NULL;
	git_commit *c = NULL;
	int lock = -1;
	char tree_hex[GIT_OID_HEXSZ + 1];
	char *path = NULL, *tmp = NULL;
	struct stat st;
	int fd = -1, rc;

	*tar_path = NULL;
	if ((rc = mirror_open(&r, repo)) < 0)
		return rc;
	if ((rc = lookup_commit(&c, r, repo, commit)) < 0)
		goto out;
	git_oid_tostr(tree_hex, sizeof(tree_hex), git_commit_tree_id(c));
	path = xasprintf("%s/%s.tar", archive_dir, tree_hex);
	if (stat(path, &st) == 0)
		goto done;

	/* one builder per archive; the others wait and find it built */
	if ((rc = path_lock(path, &lock)) < 0)
		goto out;
	if (stat(path, &st) == 0)
		goto done;
	if ((rc = ota_mkdir_p(archive_dir, 0755)) < 0)
		goto out;
	tmp = xasprintf("%s.tmp.XXXXXX", path);
	if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot create %s: %s", tmp, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if ((rc = archive_write_tree(fd, r, repo, c)) < 0)
		goto out;
	if (fchmod(fd, 0644) < 0 || fsync(fd) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot sync %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (close(fd) < 0) {
		fd = -1;
		rc = ota_error_set(OTA_ERROR, "cannot write %s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		rc = ota_error_set(OTA_ERROR, "cannot rename %s: %s", tmp, strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	fsync_dir(archive_dir);
done:
	*tar_path = path;
	path = NULL;
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	if (lock >= 0) {
		/* the archive's existence, checked under the lock, is what
		 * counts: a lock file removed while another builder waits on it
		 * at worst lets two builders rename identical archives */
		char *name = xasprintf("%s.lock", path ? path : *tar_path);
		unlink(name);
		free(name);
		path_unlock(lock);
	}
	free(path);
	git_commit_free(c);
	git_repository_free(r);
	return rc;
}
