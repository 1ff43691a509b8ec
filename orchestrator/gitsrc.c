/*
 * gitsrc.c - the daemon's side of git: every call runs in an otacd-git
 * helper process (githelper/), so otacd itself maps neither libgit2 nor
 * libarchive.
 *
 * Why: those two libraries and what they pull in (mbedTLS, libssh2, PCRE2,
 * compressors) were a large part of the idle daemon's private memory, and
 * they parse what forges send.  In a child process they cost nothing while
 * no git work is running, and a crash or a hostile pack can take down a
 * helper but not the daemon (docs/security.md).
 *
 * How: a small pool of helpers, started on demand.  A call takes an idle
 * helper (or starts one: posix_spawn of otacd-git next to this executable,
 * a socketpair as its fd 0, no other descriptor), sends one request frame
 * and reads the reply (gitproto.h), then puts the helper back.  A helper
 * exits by itself after HELPER_IDLE_MS without a request, but before that
 * the pool's janitor thread ends every helper idle for REUSE_MS (closing
 * its socket, which it takes as the signal to exit, and reaping it), so an
 * idle daemon has no helper and no zombie, and a call never writes to a
 * helper that is about to go.  If a
 * reused helper still vanishes before answering, the call is made once more
 * on a new one: every operation is idempotent (a fetch brings the mirror to
 * the remote's state, an archive is renamed into place whole).  Helpers
 * serve one request at a time, so calls from different threads run in
 * different helpers, in parallel; the locks that serialise fetches into one
 * mirror and archive builds of one tree are lock files the helpers take.
 */
#include "gitsrc.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "gitproto.h"

#define MIRROR_HASH_HEX 12        /* hex digits of SHA-256(name) in the mirror's name */
#define MIRROR_NAME_MAX 100       /* sanitised name length kept before the hash */
#define HELPER_IDLE_MS 10000      /* a helper exits after this long without a request */
#define REUSE_MS 8000             /* the pool reuses a helper idle for less than this */

extern char **environ;

struct helper {
	struct helper *next;
	pid_t pid;
	int fd;                   /* our end of its socketpair */
	int64_t idle_since;       /* when it last answered (monotonic ms) */
};

/* Set by gitsrc_init() before any other thread calls in; read-only after. */
static char *state_git;          /* STATE/git */
static char *archive_dir;        /* STATE/git/archives */
static char *helper_prog;        /* otacd-git */
static int64_t fetch_timeout_ms = 10 * 60 * 1000;

/* Idle helpers; any thread, under pool_mu.  pool_cv wakes the janitor. */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv;
static struct helper *pool;
static pthread_t janitor;
static int janitor_on, janitor_stop;   /* janitor_on: gitsrc_init/shutdown only */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- helper processes ---------------------------------------------------- */

static int helper_start(struct helper **out)
{
	posix_spawn_file_actions_t fa;
	char timeout[32], idle[32], *state = NULL;
	/* its lines in the daemon's own log format and level (issue 18) */
	char *argv[] = { helper_prog, "--state-dir", NULL, "--fetch-timeout-ms", timeout, "--idle-ms", idle,
			 "--log-format", (char *)ota_log_format_name(ota_log_current_format()),
			 "--log-level", (char *)ota_log_level_name(ota_log_current_level()), NULL };
	int sv[2], rc;
	pid_t pid;

	*out = NULL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return ota_error_set(OTA_ERROR, "cannot start the git helper: socketpair: %s", strerror(errno));
	snprintf(timeout, sizeof(timeout), "%lld", (long long)fetch_timeout_ms);
	snprintf(idle, sizeof(idle), "%d", HELPER_IDLE_MS);
	state = xstrndup(state_git, strlen(state_git) - strlen("/git"));
	argv[2] = state;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);  /* no database, no listener */
	rc = posix_spawn(&pid, helper_prog, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(sv[1]);
	free(state);
	if (rc != 0) {
		close(sv[0]);
		return ota_error_set(OTA_ERROR, "cannot start the git helper %s: %s", helper_prog, strerror(rc));
	}
	*out = xcalloc(1, sizeof(**out));
	(*out)->pid = pid;
	(*out)->fd = sv[0];
	return 0;
}

/* Close h, reap it, and say how it ended ("exited with status 1"). */
static void helper_end(struct helper *h, int kill_it, char *how, size_t n)
{
	int status = 0;

	if (kill_it)
		kill(h->pid, SIGKILL);
	close(h->fd);
	while (waitpid(h->pid, &status, 0) < 0 && errno == EINTR)
		;
	if (how && WIFSIGNALED(status))
		snprintf(how, n, "killed by signal %d", WTERMSIG(status));
	else if (how)
		snprintf(how, n, "exited with status %d", WEXITSTATUS(status));
	free(h);
}

/* Unlink the helpers idle for REUSE_MS or more from the pool into a list
 * (the caller ends them outside the lock).  Under pool_mu. */
static struct helper *pool_unlink_old(int64_t now)
{
	struct helper *h, **pp, *old = NULL;

	for (pp = &pool; (h = *pp);) {
		if (now - h->idle_since >= REUSE_MS) {
			*pp = h->next;
			h->next = old;
			old = h;
		} else {
			pp = &h->next;
		}
	}
	return old;
}

static void end_all(struct helper *h)
{
	while (h) {
		struct helper *next = h->next;
		helper_end(h, 0, NULL, 0);   /* at end of file it exits, if it has not */
		h = next;
	}
}

/* An idle helper young enough to reuse, or NULL. */
static struct helper *pool_take(void)
{
	struct helper *got, *old;

	pthread_mutex_lock(&pool_mu);
	old = pool_unlink_old(now_ms());
	if ((got = pool) != NULL)
		pool = got->next;
	pthread_mutex_unlock(&pool_mu);
	end_all(old);
	return got;
}

static void pool_put(struct helper *h)
{
	h->idle_since = now_ms();
	pthread_mutex_lock(&pool_mu);
	h->next = pool;
	pool = h;
	pthread_cond_signal(&pool_cv);
	pthread_mutex_unlock(&pool_mu);
}

/*
 * The janitor thread: ends each pooled helper once it has been idle for
 * REUSE_MS, so an idle daemon has no helper and no zombie (the helper's own
 * idle exit is the backstop for a daemon that died).  Sleeps until the
 * oldest helper is due, or until one is put back.
 */
static void *janitor_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pool_mu);
	while (!janitor_stop) {
		struct helper *h, *old;
		int64_t due = INT64_MAX, now = now_ms();

		if ((old = pool_unlink_old(now)) != NULL) {
			pthread_mutex_unlock(&pool_mu);
			end_all(old);
			pthread_mutex_lock(&pool_mu);
			continue;
		}
		for (h = pool; h; h = h->next)
			if (h->idle_since + REUSE_MS < due)
				due = h->idle_since + REUSE_MS;
		if (due == INT64_MAX) {
			pthread_cond_wait(&pool_cv, &pool_mu);
		} else {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += (time_t)((due - now) / 1000);
			ts.tv_nsec += (long)((due - now) % 1000) * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&pool_cv, &pool_mu, &ts);
		}
	}
	pthread_mutex_unlock(&pool_mu);
	return NULL;
}

static void janitor_start(void)
{
	pthread_condattr_t ca;

	if (janitor_on)
		return;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&pool_cv, &ca);
	pthread_condattr_destroy(&ca);
	janitor_stop = 0;
	if (pthread_create(&janitor, NULL, janitor_main, NULL) == 0)
		janitor_on = 1;
}

static void janitor_join(void)
{
	if (!janitor_on)
		return;
	pthread_mutex_lock(&pool_mu);
	janitor_stop = 1;
	pthread_cond_signal(&pool_cv);
	pthread_mutex_unlock(&pool_mu);
	pthread_join(janitor, NULL);
	pthread_cond_destroy(&pool_cv);
	janitor_on = 0;
}

/* ---- one call ------------------------------------------------------------ */

static const char *op_name(enum gitproto_op op)
{
	static const char *const names[] = { "fetch", "resolve", "read", "archive" };
	return names[op];
}

static json_t *request_new(enum gitproto_op op, const struct gitsrc_repo *repo)
{
	json_t *r = json_object();

	json_object_set_new(r, "op", json_string(op_name(op)));
	json_object_set_new(r, "repo", json_pack("{s:s?, s:s?, s:s?, s:s?, s:s?}", "name", repo->name,
						 "url", repo->url, "username", repo->username,
						 "token", repo->token, "ssh_key", repo->ssh_key));
	return r;
}

/*
 * Send req on h and read the reply (and a read's data into data).  1 when h
 * vanished before answering anything (the caller may retry on a new one);
 * else 0 with *rep filled, or negative (protocol broken: h is then ended).
 */
static int exchange(struct helper *h, const char *req, size_t len, enum gitproto_op op, size_t max,
		    struct gitproto_reply *rep, struct buf *data)
{
	struct buf frame = BUF_INIT;
	int rc;

	if (gitproto_write(h->fd, req, len) < 0) {
		rc = 1;
		goto out;
	}
	if ((rc = gitproto_read(h->fd, &frame, GITPROTO_FRAME_MAX)) != 0)
		goto out;
	if ((rc = gitproto_reply_parse(rep, op, frame.ptr, frame.len, max, archive_dir)) < 0)
		goto out;
	if (op == GITPROTO_READ && rep->rc == 0) {
		rc = gitproto_read(h->fd, &frame, rep->len);
		if (rc == 0 && frame.len != rep->len)
			rc = ota_error_set(OTA_EINVAL, "git helper: malformed reply (data length)");
		if (rc == 1)
			rc = ota_error_set(OTA_ERROR, "git helper: the file's data never came");
		if (rc == 0) {
			buf_clear(data);
			rc = buf_put(data, frame.ptr, frame.len);
		}
		if (rc < 0)
			gitproto_reply_release(rep);
	}
out:
	buf_release(&frame);
	return rc;
}

static int call(enum gitproto_op op, json_t *req, size_t max, struct gitproto_reply *rep, struct buf *data)
{
	char *text = json_dumps(req, JSON_COMPACT);
	struct helper *h = NULL;
	char how[64];
	int attempt, reused, rc = OTA_ERROR;

	if (!text)
		return ota_error_set(OTA_EINVAL, "git %s: a request that is not valid UTF-8", op_name(op));
	for (attempt = 0; attempt < 2; attempt++) {
		h = attempt == 0 ? pool_take() : NULL;   /* a retry always gets a new one */
		reused = h != NULL;
		if (!h && (rc = helper_start(&h)) < 0)
			break;
		rc = exchange(h, text, strlen(text), op, max, rep, data);
		if (rc == 0) {
			pool_put(h);
			break;
		}
		helper_end(h, 1, how, sizeof(how));
		if (rc < 0)
			break;
		/* vanished before answering */
		if (!reused) {
			rc = ota_error_set(OTA_ERROR, "git %s: the git helper %s before answering", op_name(op), how);
			break;
		}
	}
	free(text);
	if (rc < 0 && rc != OTA_ERROR && rc != OTA_EINVAL && rc != OTA_ETOOBIG && rc != OTA_ENOMEM)
		rc = OTA_ERROR;
	if (rc == 0 && rep->rc < 0) {
		rc = ota_error_set(rep->rc, "%s", rep->error);
		gitproto_reply_release(rep);
	}
	return rc;
}

/* ---- gitsrc.h ------------------------------------------------------------ */

/* Remove temporary archives left by an interrupted build. */
static void archive_dir_sweep(void)
{
	DIR *d = opendir(archive_dir);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		if (strstr(de->d_name, ".tar.tmp.")) {
			char *p = xasprintf("%s/%s", archive_dir, de->d_name);
			unlink(p);
			free(p);
		}
	}
	closedir(d);
}

int gitsrc_init(const char *state_dir)
{
	int rc;

	free(state_git);
	free(archive_dir);
	state_git = xasprintf("%s/git", state_dir);
	archive_dir = xasprintf("%s/archives", state_git);
	if (!helper_prog)
		helper_prog = ota_sibling_path("otacd-git");
	if ((rc = ota_mkdir_p(archive_dir, 0755)) < 0)
		return rc;
	archive_dir_sweep();
	janitor_start();
	return 0;
}

void gitsrc_set_helper(const char *path)
{
	free(helper_prog);
	helper_prog = path ? xstrdup(path) : NULL;
}

void gitsrc_shutdown(void)
{
	struct helper *h;

	janitor_join();
	pthread_mutex_lock(&pool_mu);
	h = pool;
	pool = NULL;
	pthread_mutex_unlock(&pool_mu);
	end_all(h);
	free(state_git);
	free(archive_dir);
	free(helper_prog);
	state_git = archive_dir = helper_prog = NULL;
}

void gitsrc_set_fetch_timeout(int64_t ms)
{
	fetch_timeout_ms = ms > 0 ? ms : 10 * 60 * 1000;
}

char *gitsrc_mirror_path_at(const char *git_dir, const struct gitsrc_repo *repo)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	struct buf b = BUF_INIT;
	const char *name = repo && repo->name ? repo->name : "";
	size_t i;

	EVP_Digest(name, strlen(name), md, &mdlen, EVP_sha256(), NULL);
	ota_hex(hex, md, mdlen);
	buf_printf(&b, "%s/", git_dir);
	for (i = 0; i < MIRROR_NAME_MAX && name[i]; i++) {
		char c = name[i];
		int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			 (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
		buf_putc(&b, ok ? c : '_');
	}
	buf_printf(&b, "-%.*s.git", MIRROR_HASH_HEX, hex);
	return buf_detach(&b);
}

char *gitsrc_mirror_path(const struct gitsrc_repo *repo)
{
	if (!state_git)
		abort();     /* gitsrc_init() was not called: a programmer error */
	return gitsrc_mirror_path_at(state_git, repo);
}

static int check_repo(const struct gitsrc_repo *repo)
{
	if (!repo || !repo->name || !repo->name[0])
		return ota_error_set(OTA_EINVAL, "repository without a name");
	if (!state_git)
		return ota_error_set(OTA_ERROR, "gitsrc_init() was not called");
	return 0;
}

/* refs/pull/N/head or refs/merge-requests/N/head, N of 1-9 digits */
int gitsrc_request_ref_ok(const char *ref)
{
	const char *n = !ref ? NULL
		      : !strncmp(ref, "refs/pull/", 10) ? ref + 10
		      : !strncmp(ref, "refs/merge-requests/", 20) ? ref + 20 : NULL;
	size_t digits = n ? strspn(n, "0123456789") : 0;
	return n && digits >= 1 && digits <= 9 && n[0] != '0' && !strcmp(n + digits, "/head");
}

static int fetch(const struct gitsrc_repo *repo, const char *request_ref)
{
	struct gitproto_reply rep;
	json_t *req;
	int rc;

	if ((rc = check_repo(repo)) < 0)
		return rc;
	req = request_new(GITPROTO_FETCH, repo);
	if (request_ref)
		json_object_set_new(req, "request_ref", json_string(request_ref));
	rc = call(GITPROTO_FETCH, req, 0, &rep, NULL);
	if (rc == 0)
		gitproto_reply_release(&rep);
	json_decref(req);
	return rc;
}

int gitsrc_fetch(const struct gitsrc_repo *repo)
{
	return fetch(repo, NULL);
}

int gitsrc_fetch_request(const struct gitsrc_repo *repo, const char *ref)
{
	if (!gitsrc_request_ref_ok(ref))
		return ota_error_set(OTA_EINVAL, "'%.100s' is not a pull or merge request's head ref", ref ? ref : "");
	return fetch(repo, ref);
}

int gitsrc_resolve(const struct gitsrc_repo *repo, const char *what, struct gitsrc_commit *out)
{
	struct gitproto_reply rep;
	json_t *req;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = check_repo(repo)) < 0)
		return rc;
	req = request_new(GITPROTO_RESOLVE, repo);
	json_object_set_new(req, "what", json_string(what ? what : ""));
	if ((rc = call(GITPROTO_RESOLVE, req, 0, &rep, NULL)) == 0)
		*out = rep.commit;    /* ownership moves to out */
	json_decref(req);
	return rc;
}

void gitsrc_commit_release(struct gitsrc_commit *c)
{
	if (!c)
		return;
	free(c->author);
	free(c->committer);
	free(c->message);
	memset(c, 0, sizeof(*c));
}

int gitsrc_read_file(const struct gitsrc_repo *repo, const char *commit, const char *path,
		     struct buf *out, size_t max)
{
	struct gitproto_reply rep;
	json_t *req;
	int rc;

	if ((rc = check_repo(repo)) < 0)
		return rc;
	req = request_new(GITPROTO_READ, repo);
	json_object_set_new(req, "what", json_string(commit ? commit : ""));
	json_object_set_new(req, "path", json_string(path ? path : ""));
	json_object_set_new(req, "max", json_integer((json_int_t)(max > GITSRC_READ_MAX ? GITSRC_READ_MAX : max)));
	rc = call(GITPROTO_READ, req, max > GITSRC_READ_MAX ? GITSRC_READ_MAX : max, &rep, out);
	if (rc == 0)
		gitproto_reply_release(&rep);
	json_decref(req);
	return rc;
}

int gitsrc_archive(const struct gitsrc_repo *repo, const char *commit, char **tar_path)
{
	struct gitproto_reply rep;
	json_t *req;
	int rc;

	*tar_path = NULL;
	if ((rc = check_repo(repo)) < 0)
		return rc;
	req = request_new(GITPROTO_ARCHIVE, repo);
	json_object_set_new(req, "what", json_string(commit ? commit : ""));
	if ((rc = call(GITPROTO_ARCHIVE, req, 0, &rep, NULL)) == 0) {
		*tar_path = rep.path;
		rep.path = NULL;
		gitproto_reply_release(&rep);
	}
	json_decref(req);
	return rc;
}
