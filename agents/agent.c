/*
 * agent.c - otacd-agent, the job runner.
 *
 * Why: every job of every pipeline, on the daemon's own machine or on a
 * build box or HIL rig elsewhere, runs through this one program and the
 * agent protocol of docs/api.md, so local and remote agents behave alike.
 *
 * How: main() registers (retrying while the daemon is away: forever, or for
 * a local agent OTACD_AGENT_ORPHAN_MS, see agent_orphaned), then
 * long-polls for a job.  A job runs on the main thread: a fresh workspace,
 * the commit's tree unpacked into it when the run comes from git (the
 * daemon serves a tar, streamed to an unlinked temporary file, retried on
 * 404/5xx/network errors, extracted by source.c), then each step as
 * `/bin/sh -e -c RUN`, contained so it cannot outlive the agent or the
 * attempt (contain.c: its own PID namespace, or a process group), its
 * stdout+stderr read from one pipe with poll().
 *
 * Credentials: the agent's token (from a pipe, a file, the environment or
 * argv; the last two are wiped from this process's memory at start) and
 * each attempt's job token (from the claim; every call about that job uses
 * it) never reach a step: steps get an environment built from scratch, and
 * the agent is not dumpable, so a step of the same uid cannot read its
 * memory or /proc/PID/environ.  Two helper threads live for
 * the length of a job:
 *   - the heartbeat thread extends the lease and learns about cancels (the
 *     runner then kills the process group) and lost leases (409: kill and
 *     drop the job without finishing it);
 *   - the log sender (logsend.c) ships output every 100 ms or 64 KiB.
 *     Output is masked for secrets (common/mask.h: the values, their lines,
 *     base64 and URL forms, across any cut) on its way into the send queue,
 *     and queued bytes are dropped only once the daemon acknowledges them,
 *     so a dropped connection or a daemon restart loses nothing (416 tells
 *     where to resume).
 * Thread ownership: struct job's fields under `mu` are shared (the runner
 * writes output and closes the log, the threads set cancel/lost); the rest
 * of struct job belongs to the main thread.  After the steps, artifacts are
 * hashed (SHA-256) and streamed up, and the result is reported by `finish`,
 * retried until the daemon acknowledges it.
 */
#include "../common/httpc.h"
#include "../common/log.h"
#include "../common/mask.h"
#include "../common/util.h"
#include "agent.h"
#include "contain.h"
#include "source.h"
#include "stagework.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <glob.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <openssl/evp.h>

#define DEFAULT_URL "http://127.0.0.1:8470"
#define LONGPOLL_WAIT_MS 25000
#define LONGPOLL_TIMEOUT_MS 35000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define KILL_GRACE_MS 5000
#define UPLOAD_TRIES 4
#define SOURCE_TRIES 4
#define SOURCE_BACKOFF_MS 1000
#define SOURCE_MAX_BYTES ((size_t)4 << 30)
#define SOURCE_TIMEOUT_MS (30L * 60 * 1000)

#define C_HEAD "\033[1;36m"
#define C_ERR "\033[1;31m"
#define C_OFF "\033[0m"

/* Why a job (or a step) ended. */
enum outcome { OUT_OK, OUT_SCRIPT, OUT_TIMEOUT, OUT_CANCELED, OUT_INFRA, OUT_LOST, OUT_STOPPED };

volatile sig_atomic_t agent_stop_flag;
static volatile sig_atomic_t running_pgid;

static void on_signal(int sig)
{
	agent_stop_flag = 1;
	if (running_pgid > 0)
		kill(-(pid_t)running_pgid, SIGKILL);
}

/* The agent's own lines go through ota_log (common/log.h), in the format
 * --log-format chose (otacd passes its own to its local agents): "text"
 * is the historic "otacd-agent: …" line, logfmt and JSON lines name the
 * program and the agent, and the run and job at hand (agent_log_job). */
void agent_say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ota_logv(OTA_LOG_INFO, fmt, ap);
	va_end(ap);
}

void agent_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ota_logv(OTA_LOG_WARN, fmt, ap);
	va_end(ap);
}

void agent_log_job(const struct job *j)
{
	const json_t *run = json_object_get(j->spec, "run_id");
	ota_log_ctx_work(json_is_integer(run) ? (int64_t)json_integer_value(run) : 0, strtoll(j->id, NULL, 10));
}

int64_t agent_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep, waking early when the agent is told to stop. */
static void sleep_ms(long ms)
{
	int64_t end = agent_now_ms() + ms;
	while (!agent_stop_flag) {
		int64_t left = end - agent_now_ms();
		struct timespec ts;
		if (left <= 0)
			break;
		if (left > 100)
			left = 100;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left * 1000000;
		nanosleep(&ts, NULL);
	}
}

/*
 * A local agent outlives a daemon restart (the new daemon adopts it), but
 * not its daemon for good: unheard from for agent_orphan_ms (otacd gone
 * for good, or restarted somewhere it cannot find), it stops.  Remote
 * agents (agent_orphan_ms 0) wait for their daemon forever.
 */
static int64_t agent_contact_ms;  /* agent_now_ms() of the daemon's last answer */
static long agent_orphan_ms;

static void agent_heard(void)
{
	__atomic_store_n(&agent_contact_ms, agent_now_ms(), __ATOMIC_RELAXED);
}

/* 1 (and stop the agent) when the daemon has been away too long. */
static int agent_orphaned(void)
{
	int64_t away = agent_now_ms() - __atomic_load_n(&agent_contact_ms, __ATOMIC_RELAXED);
	if (agent_orphan_ms <= 0 || away <= agent_orphan_ms)
		return 0;
	if (!agent_stop_flag)
		agent_warn("no answer from otacd for %lld ms: a local agent without its daemon stops", (long long)away);
	agent_stop_flag = 1;
	return 1;
}

static long backoff_next(long cur)
{
	return cur < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : cur * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : cur * 2;
}

/* Wait on j->cv for at most ms (caller holds j->mu). */
void agent_job_wait(struct job *j, long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

/* Text of a JSON scalar (env values, matrix values, ids). */
static char *scalar_text(const json_t *v)
{
	if (json_is_string(v))
		return xstrdup(json_string_value(v));
	if (json_is_integer(v))
		return xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
	if (json_is_real(v))
		return xasprintf("%g", json_real_value(v));
	if (json_is_boolean(v))
		return xstrdup(json_is_true(v) ? "true" : "false");
	return xstrdup("");
}

/* ---- registration and job requests --------------------------------- */

static int agent_register(struct agent *a)
{
	long backoff = 0;
	int warned = 0, rc = OTA_ERROR;

	while (!agent_stop_flag) {
		json_t *req = json_object(), *labels = json_array(), *ans = NULL, *id;
		char *url = xasprintf("%s/api/v1/agent/register", a->url);
		long status = 0;

		for (size_t i = 0; i < a->labels.n; i++)
			json_array_append_new(labels, json_string(a->labels.v[i]));
		if (a->name) /* checked by the daemon against the token's agent */
			json_object_set_new(req, "name", json_string(a->name));
		json_object_set_new(req, "labels", labels);
		if (a->local)
			json_object_set_new(req, "local", json_true());
		rc = httpc_json(&ans, &status, "POST", url, a->token, req, REQUEST_TIMEOUT_MS);
		json_decref(req);
		free(url);
		id = json_object_get(ans, "agent_id");
		if (!rc && status == 200 && (json_is_integer(id) || json_is_string(id))) {
			json_t *l = json_object_get(ans, "lease_ms"), *h = json_object_get(ans, "heartbeat_ms");
			free(a->id_str);
			a->id_str = scalar_text(id);
			a->lease_ms = json_is_integer(l) ? (long)json_integer_value(l) : 30000;
			a->heartbeat_ms = json_is_integer(h) && json_integer_value(h) > 0
				? (long)json_integer_value(h) : 5000;
			if (!a->name && json_is_string(json_object_get(ans, "name")))
				a->name = xstrdup(json_string_value(json_object_get(ans, "name")));
			agent_say("%s registered as agent %s with %s", a->name ? a->name : "?", a->id_str, a->url);
			agent_heard();
			json_decref(ans);
			return 0;
		}
		if (!rc && (status == 401 || status == 403 || status == 400)) {
			const char *e = httpc_json_error(ans);
			rc = ota_error_set(status == 400 ? OTA_EINVAL : OTA_EAUTH, "register refused (HTTP %ld)%s%s",
					   status, e ? ": " : "", e ? e : "");
			json_decref(ans);
			return rc;
		}
		if (!warned++)
			agent_warn("daemon not ready (%s), retrying", rc ? ota_error_last() : "unexpected answer");
		json_decref(ans);
		if (agent_orphaned())
			break;
		backoff = backoff_next(backoff);
		sleep_ms(backoff);
	}
	return ota_error_set(OTA_ERROR, "stopped");
}

/*
 * One long poll.  0 with *out = JOB_SPEC or NULL (nothing queued);
 * OTA_ENOTFOUND when the daemon does not know this agent (re-register);
 * OTA_ERROR when unreachable or odd.
 */
static int agent_request_job(json_t **out, struct agent *a)
{
	json_t *req = json_object(), *ans = NULL;
	char *url = xasprintf("%s/api/v1/agent/jobs/request", a->url);
	long status = 0;
	int rc;

	*out = NULL;
	json_object_set_new(req, "wait_ms", json_integer(LONGPOLL_WAIT_MS));
	rc = httpc_json(&ans, &status, "POST", url, a->token, req, LONGPOLL_TIMEOUT_MS);
	if (rc < 0)
		goto out;
	if (status < 500)
		agent_heard();
	if (status == 200 && json_is_object(ans)) {
		*out = ans;
		ans = NULL;
	} else if (status == 401 || status == 404) {
		rc = ota_error_set(OTA_ENOTFOUND, "agent %s unknown to the daemon", a->id_str);
	} else if (status != 204) {
		rc = ota_error_set(OTA_ERROR, "job request answered HTTP %ld", status);
	}
out:
	json_decref(req);
	json_decref(ans);
	free(url);
	return rc;
}

/* ---- heartbeat ------------------------------------------------------ */

static void *heartbeat(void *arg)
{
	struct job *j = arg;
	long wait = j->a->heartbeat_ms;

	agent_log_job(j);
	pthread_mutex_lock(&j->mu);
	for (;;) {
		int64_t next = agent_now_ms() + wait;
		json_t *req, *ans = NULL;
		long status = 0;
		char *url;
		int rc;

		/* The condition variable is shared with the log sender, so a
		 * wake-up is not yet the time to beat. */
		while (!j->hb_stop && !j->lost && !agent_stop_flag && agent_now_ms() < next)
			agent_job_wait(j, (long)(next - agent_now_ms()));
		if (j->hb_stop || j->lost || agent_stop_flag)
			break;
		pthread_mutex_unlock(&j->mu);
		req = json_object();
		json_object_set_new(req, "attempt", json_integer(j->attempt));
		url = xasprintf("%s/api/v1/agent/jobs/%s/heartbeat", j->a->url, j->id_url);
		rc = httpc_json(&ans, &status, "POST", url, j->token, req, REQUEST_TIMEOUT_MS);
		free(url);
		json_decref(req);
		pthread_mutex_lock(&j->mu);
		wait = j->a->heartbeat_ms;
		if (!rc && status < 500)
			agent_heard();
		if (rc < 0 || status >= 500) {
			wait = wait > 1000 ? 1000 : wait; /* the daemon may be restarting */
			if (agent_orphaned())
				pthread_cond_broadcast(&j->cv);
		} else if (status == 200) {
			if (json_is_true(json_object_get(ans, "cancel")) && !j->cancel) {
				j->cancel = 1;
				pthread_cond_broadcast(&j->cv);
			}
		} else if (status == 409 || status == 404 || status == 401 || status == 403) {
			/* the attempt is over, or the agent was revoked: stop the step */
			j->lost = 1;
			pthread_cond_broadcast(&j->cv);
		}
		json_decref(ans);
	}
	pthread_mutex_unlock(&j->mu);
	return NULL;
}

/* ---- workspace ------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	if (remove(path) < 0 && errno != ENOENT)
		return ota_error_set(OTA_ERROR, "cannot remove %s: %s", path, strerror(errno));
	return 0;
}

static int unlock_dir(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	if (flag == FTW_D && (st->st_mode & 0700) != 0700)
		chmod(path, (st->st_mode & 07777) | 0700);
	return 0;
}

/* rm -rf path (directories a job made read-only included). */
static int rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : ota_error_set(OTA_ERROR, "cannot stat %s: %s", path, strerror(errno));
	nftw(path, unlock_dir, 32, FTW_PHYS);
	return nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS) ? OTA_ERROR : 0;
}

/* ---- running one step ----------------------------------------------- */

static void killpg_quiet(pid_t pg, int sig)
{
	if (pg > 0)
		kill(-pg, sig);
}

/* Read what the pipe has now; 1 at end of file, 0 otherwise. */
static int drain(struct job *j, int fd, size_t max)
{
	char tmp[16384];
	size_t total = 0;
	for (;;) {
		ssize_t n = read(fd, tmp, sizeof(tmp));
		if (n > 0) {
			logsend_write(j, tmp, (size_t)n);
			total += (size_t)n;
			if (total >= max)
				return 0;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n == 0;
	}
}

/*
 * Run one command in the workspace; on return the process group is gone.
 * *exit_code gets the shell's status (128+signal when killed).
 */
static enum outcome step_run(struct job *j, const char *run, char **envp, int *exit_code)
{
	char *argv[] = { "/bin/sh", "-e", "-c", (char *)run, NULL };
	enum outcome why = OUT_OK;
	int pfd[2] = { -1, -1 }, devnull = -1, pidfd = -1, status = 0, exited = 0;
	int64_t term_at = 0;
	pid_t pid = -1;

	*exit_code = -1;
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (devnull < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
		logsend_printf(j, C_ERR "cannot set up the step: %s" C_OFF "\n", strerror(errno));
		why = OUT_INFRA;
		goto out;
	}
	/*
	 * contain.c starts the step where it can be killed as a whole: a PID
	 * namespace whose init dies with the agent, or a process group (either
	 * way pid leads a process group), with /dev/null as stdin, the pipe as
	 * stdout+stderr and the workspace as its directory.
	 */
	{
		int err = contain_spawn(&pid, argv, envp, devnull, pfd[1], j->ws);
		if (err) {
			logsend_printf(j, C_ERR "cannot start the step in %s: %s" C_OFF "\n", j->ws, strerror(err));
			why = OUT_INFRA;
			pid = -1;
			goto out;
		}
	}
	running_pgid = pid;
	close(pfd[1]);
	pfd[1] = -1;
	fcntl(pfd[0], F_SETFL, O_NONBLOCK);
#ifdef SYS_pidfd_open
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif

	while (!exited) {
		struct pollfd fds[2];
		int nfds = 0, cancel, lost;
		int64_t now;

		if (pfd[0] >= 0)
			fds[nfds++] = (struct pollfd){ .fd = pfd[0], .events = POLLIN };
		if (pidfd >= 0)
			fds[nfds++] = (struct pollfd){ .fd = pidfd, .events = POLLIN };
		poll(fds, (nfds_t)nfds, pidfd >= 0 ? 100 : 20);
		if (pfd[0] >= 0 && drain(j, pfd[0], 1 << 20)) {
			close(pfd[0]);
			pfd[0] = -1;
		}
		if (waitpid(pid, &status, WNOHANG) == pid) {
			/* Take what is already in the pipe, but do not wait for EOF:
			 * a background grandchild may hold it open forever. */
			exited = 1;
			if (pfd[0] >= 0)
				drain(j, pfd[0], 4 << 20);
			break;
		}
		pthread_mutex_lock(&j->mu);
		cancel = j->cancel;
		lost = j->lost;
		pthread_mutex_unlock(&j->mu);
		now = agent_now_ms();
		if ((lost || agent_stop_flag) && why != OUT_LOST && why != OUT_STOPPED) {
			why = lost ? OUT_LOST : OUT_STOPPED;
			killpg_quiet(pid, SIGKILL);
		} else if (!term_at && (cancel || (j->deadline && now >= j->deadline))) {
			why = cancel ? OUT_CANCELED : OUT_TIMEOUT;
			term_at = now;
			killpg_quiet(pid, SIGTERM);
		} else if (term_at && now - term_at >= KILL_GRACE_MS) {
			killpg_quiet(pid, SIGKILL);
		}
	}
	killpg_quiet(pid, SIGKILL); /* leftovers such as `sleep 1000 &` */
	running_pgid = 0;
	contain_done();
	if (WIFEXITED(status))
		*exit_code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		*exit_code = 128 + WTERMSIG(status);
	/* A step killed because the agent is stopping (SIGTERM, or the
	 * daemon that started us died) did not fail: the job is not done. */
	if (why == OUT_OK && agent_stop_flag)
		why = OUT_STOPPED;
	if (why == OUT_OK && *exit_code != 0)
		why = OUT_SCRIPT;
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	if (devnull >= 0)
		close(devnull);
	if (pidfd >= 0)
		close(pidfd);
	return why;
}

/* ---- environment ---------------------------------------------------- */

static void env_set(struct strvec *env, const char *name, const char *value)
{
	size_t nlen = strlen(name);
	if (!nlen || strchr(name, '='))
		return;
	for (size_t i = 0; i < env->n; i++) {
		if (!strncmp(env->v[i], name, nlen) && env->v[i][nlen] == '=') {
			free(env->v[i]);
			env->v[i] = xasprintf("%s=%s", name, value);
			return;
		}
	}
	strvec_pushf(env, "%s=%s", name, value);
}

static void env_set_object(struct strvec *env, const char *prefix, json_t *obj, int upper)
{
	const char *k;
	json_t *v;
	json_object_foreach(obj, k, v) {
		char *name = xasprintf("%s%s", prefix, k), *val = scalar_text(v);
		if (upper)
			for (char *p = name; *p; p++)
				*p = (*p >= 'a' && *p <= 'z') ? (char)(*p - 32)
				   : ((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')) ? *p : '_';
		env_set(env, name, val);
		free(name);
		free(val);
	}
}

/* OTACD_REF for every run; OTACD_REPO, OTACD_COMMIT, OTACD_TREE for runs
 * of a git source (the spec's "source" object). */
static void job_env_source(struct strvec *env, struct job *j)
{
	static const char *const vars[][2] = {
		{ "repo", "OTACD_REPO" }, { "commit", "OTACD_COMMIT" }, { "tree", "OTACD_TREE" }, { "ref", "OTACD_REF" },
	};
	json_t *src = json_object_get(j->spec, "source");
	const char *ref = json_string_value(json_object_get(j->spec, "ref"));

	if (ref)
		env_set(env, "OTACD_REF", ref);
	if (!json_is_object(src))
		return;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(vars); i++) {
		const char *v = json_string_value(json_object_get(src, vars[i][0]));
		if (v)
			env_set(env, vars[i][1], v);
	}
}

static void job_env(struct strvec *env, struct job *j)
{
	static const char *const keep[] = { "PATH", "HOME", "LANG" };
	char *run_id = scalar_text(json_object_get(j->spec, "run_id"));
	char *attempt = xasprintf("%" JSON_INTEGER_FORMAT, j->attempt);

	for (size_t i = 0; i < OTA_ARRAY_SIZE(keep); i++)
		if (getenv(keep[i]))
			env_set(env, keep[i], getenv(keep[i]));
	if (!getenv("PATH"))
		env_set(env, "PATH", "/usr/local/bin:/usr/bin:/bin");
	env_set(env, "OTACD_JOB_ID", j->id);
	env_set(env, "OTACD_RUN_ID", run_id);
	env_set(env, "OTACD_ATTEMPT", attempt);
	env_set(env, "OTACD_WORKSPACE", j->ws);
	env_set(env, "CI", "true");
	job_env_source(env, j);
	env_set_object(env, "", json_object_get(j->spec, "env"), 0);
	env_set_object(env, "", json_object_get(j->spec, "secrets"), 0);
	env_set_object(env, "MATRIX_", json_object_get(j->spec, "matrix"), 1);
	free(run_id);
	free(attempt);
}

/* ---- artifacts ------------------------------------------------------ */

/* Upload one file; OUT_OK, OUT_LOST, or OUT_INFRA with *msg set. */
static enum outcome artifact_upload(struct job *j, const char *path, const char *name,
				    json_t *art, char **msg)
{
	const char *type = json_string_value(json_object_get(art, "type"));
	const char *hw = json_string_value(json_object_get(art, "hardware"));
	char *ename = httpc_escape(name), *etype = type ? httpc_escape(type) : NULL;
	char *ehw = hw ? httpc_escape(hw) : NULL, *url = NULL, sha[65], why_name[128];
	enum outcome why = OUT_INFRA;
	FILE *f = fopen(path, "rb");
	struct stat st;
	long backoff = 0;

	/* the daemon's own rule (common/util.c): refused here, with the reason */
	if (ota_artifact_name_check(name, strlen(name), why_name, sizeof(why_name)) < 0) {
		*msg = xasprintf("artifact name '%s' refused: %s", name, why_name);
		why = OUT_SCRIPT;
		goto out;
	}
	if (!f || fstat(fileno(f), &st) < 0 || agent_sha256_file(sha, f) < 0) {
		*msg = xasprintf("cannot read artifact %s: %s", name, strerror(errno));
		goto out;
	}
	url = xasprintf("%s/api/v1/agent/jobs/%s/artifacts?attempt=%" JSON_INTEGER_FORMAT
			"&name=%s&sha256=%s%s%s%s%s", j->a->url, j->id_url, j->attempt, ename, sha,
			etype ? "&type=" : "", etype ? etype : "", ehw ? "&hardware=" : "", ehw ? ehw : "");
	for (int try = 1; try <= UPLOAD_TRIES && !agent_stop_flag; try++) {
		struct httpc_response r;
		int rc;
		rewind(f);
		rc = httpc_upload(&r, "PUT", url, j->token, NULL, f, (size_t)st.st_size,
				  300000 + (long)(st.st_size / 1000));
		if (!rc && (r.status == 200 || r.status == 201)) {
			logsend_printf(j, "uploaded %s (%lld bytes, sha256 %.12s)\n", name, (long long)st.st_size, sha);
			httpc_response_release(&r);
			why = OUT_OK;
			goto out;
		}
		if (!rc && r.status == 409) {
			httpc_response_release(&r);
			why = OUT_LOST;
			goto out;
		}
		free(*msg);
		if (rc < 0) {
			*msg = xasprintf("uploading artifact %s failed: %s", name, ota_error_last());
		} else {
			json_t *e = json_loadb(buf_cstr(&r.body), r.body.len, 0, NULL);
			const char *em = httpc_json_error(e);
			*msg = xasprintf("uploading artifact %s failed: HTTP %ld%s%s", name, r.status,
					 em ? ": " : "", em ? em : "");
			json_decref(e);
		}
		httpc_response_release(&r);
		if (!rc && r.status < 500 && r.status != 408 && r.status != 429)
			break; /* the daemon said no; asking again will not help */
		backoff = backoff_next(backoff * 4);
		sleep_ms(backoff);
	}
out:
	if (f)
		fclose(f);
	free(url);
	free(ename);
	free(etype);
	free(ehw);
	return why;
}

static char *glob_escape(const char *s)
{
	struct buf b = BUF_INIT;
	buf_put(&b, "", 0);
	for (; *s; s++) {
		if (strchr("*?[]\\", *s))
			buf_putc(&b, '\\');
		buf_putc(&b, *s);
	}
	return buf_detach(&b);
}

static enum outcome artifacts_collect(struct job *j, char **msg)
{
	json_t *arts = json_object_get(j->spec, "artifacts"), *art;
	char *wsq = glob_escape(j->ws), *wsreal = realpath(j->ws, NULL);
	enum outcome why = OUT_OK;
	size_t i, wl = wsreal ? strlen(wsreal) : 0;

	if (!wsreal) {
		*msg = xasprintf("cannot resolve the workspace: %s", strerror(errno));
		why = OUT_INFRA;
		goto out;
	}
	json_array_foreach(arts, i, art) {
		const char *path = json_string_value(json_object_get(art, "path"));
		const char *name = json_string_value(json_object_get(art, "name"));
		int optional = json_is_true(json_object_get(art, "optional")), found = 0;
		char *pattern;
		glob_t g;

		if (!path || !*path)
			continue;
		pattern = xasprintf("%s/%s", wsq, path);
		memset(&g, 0, sizeof(g));
		if (glob(pattern, 0, NULL, &g) == 0) {
			for (size_t k = 0; k < g.gl_pathc && why == OUT_OK; k++) {
				char *real = realpath(g.gl_pathv[k], NULL), *aname;
				const char *rel = g.gl_pathv[k] + strlen(j->ws);
				struct stat st;
				while (*rel == '/' || !strncmp(rel, "./", 2))
					rel += *rel == '/' ? 1 : 2;
				if (!real || strncmp(real, wsreal, wl) || real[wl] != '/' ||
				    stat(real, &st) < 0 || !S_ISREG(st.st_mode)) {
					if (real && (strncmp(real, wsreal, wl) || real[wl] != '/'))
						logsend_printf(j, "skipping %s: it points outside the workspace\n", rel);
					free(real);
					continue;
				}
				aname = name && *name ? (g.gl_pathc == 1 ? xstrdup(name) : xasprintf("%s/%s", name, rel))
						      : xstrdup(rel);
				why = artifact_upload(j, real, aname, art, msg);
				found++;
				free(aname);
				free(real);
			}
		}
		globfree(&g);
		free(pattern);
		if (why != OUT_OK)
			break;
		if (!found && !optional) {
			*msg = xasprintf("artifact '%s' matched no file", path);
			why = OUT_SCRIPT;
			break;
		}
	}
out:
	free(wsq);
	free(wsreal);
	return why;
}

/* ---- source checkout ------------------------------------------------ */

/* "HTTP 503: message" for an answer that is not the one we wanted. */
static char *http_error_text(const struct httpc_response *r)
{
	json_t *e = json_loadb(buf_cstr(&r->body), r->body.len, 0, NULL);
	const char *em = httpc_json_error(e);
	char *t = xasprintf("HTTP %ld%s%s", r->status, em ? ": " : "", em ? em : "");
	json_decref(e);
	return t;
}

/* Why the job must stop now, or OUT_OK. */
static enum outcome job_interrupted(struct job *j)
{
	enum outcome why = OUT_OK;
	pthread_mutex_lock(&j->mu);
	if (j->lost)
		why = OUT_LOST;
	else if (agent_stop_flag)
		why = OUT_STOPPED;
	else if (j->cancel)
		why = OUT_CANCELED;
	else if (j->deadline && agent_now_ms() >= j->deadline)
		why = OUT_TIMEOUT;
	pthread_mutex_unlock(&j->mu);
	return why;
}

/*
 * Download the spec's source archive (docs/api.md: GET source.url, a tar of
 * the commit's tree) into an unlinked temporary file in the work directory,
 * retrying network errors, 404, 408, 429 and 5xx, and extract it into the
 * workspace.  OUT_OK also when the job has no source; OUT_LOST on 409;
 * OUT_INFRA with *msg when it cannot be had.
 */
static enum outcome job_checkout(struct job *j, char **msg)
{
	json_t *src = json_object_get(j->spec, "source");
	const char *path = json_string_value(json_object_get(src, "url"));
	const char *repo = json_string_value(json_object_get(src, "repo"));
	const char *commit = json_string_value(json_object_get(src, "commit"));
	const char *ref = json_string_value(json_object_get(src, "ref"));
	char *url = NULL, *tmp = NULL, *err = NULL;
	enum outcome why = OUT_INFRA;
	long backoff = SOURCE_BACKOFF_MS;
	size_t entries = 0;
	FILE *f = NULL;
	int fd;

	if (!json_is_object(src))
		return OUT_OK;
	/* A path on the daemon: the job token is never sent anywhere else. */
	if (!path || path[0] != '/') {
		*msg = path ? xasprintf("cannot fetch the source: its url '%s' is not a path on the daemon", path)
			    : xstrdup("cannot fetch the source: the job spec has no source url");
		goto out;
	}
	url = xasprintf("%s%s", j->a->url, path);
	tmp = xasprintf("%s/.source-XXXXXX", j->a->workdir);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0 || !(f = fdopen(fd, "w+b"))) {
		*msg = xasprintf("cannot fetch the source: cannot create a file in %s: %s", j->a->workdir,
				 strerror(errno));
		if (fd >= 0)
			close(fd);
		goto out;
	}
	unlink(tmp); /* the data lives until fclose, whatever happens to us */
	for (int try = 1;; try++) {
		struct httpc_response r;
		long timeout = SOURCE_TIMEOUT_MS;
		int rc, retry;

		if (j->deadline) {
			int64_t left = j->deadline - agent_now_ms();
			if (left < timeout)
				timeout = left > 1 ? (long)left : 1;
		}
		rewind(f);
		if (ftruncate(fileno(f), 0) < 0) {
			*msg = xasprintf("cannot fetch the source: %s", strerror(errno));
			goto out;
		}
		rc = httpc_download(&r, url, j->token, f, SOURCE_MAX_BYTES, timeout);
		if (!rc && r.status == 200) {
			httpc_response_release(&r);
			break;
		}
		retry = rc == OTA_ERROR || (!rc && (r.status == 404 || r.status == 408 || r.status == 429 ||
						    r.status >= 500));
		free(err);
		err = rc < 0 ? xstrdup(ota_error_last()) : http_error_text(&r);
		if (!rc && r.status == 409)
			why = OUT_LOST;
		httpc_response_release(&r);
		if (why == OUT_LOST || (why = job_interrupted(j)) != OUT_OK)
			goto out;
		why = OUT_INFRA;
		if (!retry || try >= SOURCE_TRIES) {
			*msg = xasprintf("cannot fetch the source: %s", err);
			goto out;
		}
		logsend_printf(j, "cannot fetch the source (%s), retrying in %lds\n", err, backoff / 1000);
		sleep_ms(backoff);
		backoff *= 2;
	}
	rewind(f);
	if (source_extract(&entries, fileno(f), j->ws) < 0) {
		*msg = xasprintf("cannot extract the source: %s", ota_error_last());
		goto out;
	}
	logsend_printf(j, "checked out %s at %.12s (%s)\n", repo ? repo : "the source",
		   commit ? commit : "?", ref ? ref : "?");
	why = OUT_OK;
out:
	if (f)
		fclose(f);
	free(url);
	free(tmp);
	free(err);
	return why;
}

/* ---- what some stage kinds add (stagework.c) -------------------------- */

static void job_log_header(struct job *j, const char *run);

static void sw_log(void *arg, const char *line)
{
	logsend_printf(arg, "%s\n", line);
}

static struct sw_job sw_job_of(struct job *j, char **envp)
{
	return (struct sw_job){ j->a->url, j->token, j->id_url, j->attempt, j->ws, envp, sw_log, j };
}

static enum outcome sw_outcome(int rc)
{
	return rc == 0 ? OUT_OK : rc == SW_FAIL ? OUT_SCRIPT : rc == SW_LOST ? OUT_LOST : OUT_INFRA;
}

/* Run the steps in order until one fails. */
static enum outcome steps_run(struct job *j, json_t *steps, char **envp, int *exit_code, char **msg)
{
	enum outcome why = OUT_OK;
	json_t *step;
	size_t i;

	json_array_foreach(steps, i, step) {
		const char *run = json_string_value(json_object_get(step, "run"));
		const char *sname = json_string_value(json_object_get(step, "name"));
		if (!run)
			continue;
		if (j->deadline && agent_now_ms() >= j->deadline)
			return OUT_TIMEOUT;
		job_log_header(j, run);
		why = step_run(j, run, envp, exit_code);
		if (why == OUT_SCRIPT) {
			size_t n = strcspn(sname && *sname ? sname : run, "\n");
			*msg = xasprintf("step '%.*s' exited with code %d", (int)(n > 80 ? 80 : n),
					 sname && *sname ? sname : run, *exit_code);
		}
		if (why != OUT_OK)
			break;
	}
	return why;
}

/* A hil job's inputs (its board's build artifacts) into $OTACD_INPUTS. */
static enum outcome job_inputs(struct job *j, struct strvec *env, char **msg)
{
	const char *kind = json_string_value(json_object_get(j->spec, "kind"));
	char *dir;
	struct sw_job sw;
	int n = 0, rc;

	if (!kind || strcmp(kind, "hil") != 0)
		return OUT_OK;
	dir = xasprintf("%s/.otacd-inputs", j->ws);
	env_set(env, "OTACD_INPUTS", dir);
	sw = sw_job_of(j, env->v);
	rc = sw_inputs_fetch(&sw, dir, &n, msg);
	if (!rc)
		logsend_printf(j, "%d input%s in %s\n", n, n == 1 ? "" : "s", dir);
	free(dir);
	return sw_outcome(rc);
}

/* reproducible: true - build once, keep the digests, start over clean. */
static enum outcome job_cache_restore(struct job *j, struct cache_state *cs, struct strvec *env, char **msg);

static enum outcome job_first_build(struct job *j, json_t *steps, struct strvec *env, int *exit_code, char **msg,
				    json_t **digests, struct cache_state *cs)
{
	enum outcome why = steps_run(j, steps, env->v, exit_code, msg);

	if (why != OUT_OK)
		return why;
	sw_digests(digests, j->ws, json_object_get(j->spec, "artifacts"));
	logsend_printf(j, C_HEAD "reproducible: first build done (%zu artifacts), building again in a clean workspace"
		   C_OFF "\n", json_object_size(*digests));
	if (rm_rf(j->ws) < 0 || ota_mkdir_p(j->ws, 0755) < 0) {
		*msg = xasprintf("cannot clean the workspace: %s", ota_error_last());
		return OUT_INFRA;
	}
	if ((why = job_checkout(j, msg)) != OUT_OK)
		return why;
	/* the second build starts from the same cache as the first */
	if ((why = job_cache_restore(j, cs, env, msg)) != OUT_OK)
		return why;
	return job_inputs(j, env, msg);
}

static enum outcome job_compare_builds(struct job *j, json_t *first, char **msg)
{
	json_t *second = NULL;
	enum outcome why;

	sw_digests(&second, j->ws, json_object_get(j->spec, "artifacts"));
	why = sw_outcome(sw_digests_compare(first, second, msg));
	if (why == OUT_OK)
		logsend_printf(j, "reproducible: both builds gave identical artifacts (%zu)\n", json_object_size(second));
	json_decref(second);
	return why;
}

/* After the steps: toolchain versions (on success), then the reports
 * (also after a failed step: they say what failed). */
static enum outcome job_stage_after(struct job *j, enum outcome why, char **envp, char **msg)
{
	json_t *extra = json_object_get(j->spec, "extra");
	json_t *tc = json_object_get(extra, "toolchain"), *rep = json_object_get(extra, "reports");
	struct sw_job sw = sw_job_of(j, envp);
	char *m = NULL;
	int rc;

	if (why == OUT_OK && json_array_size(tc) && (rc = sw_toolchain_record(&sw, tc, &m)) != 0) {
		why = sw_outcome(rc);
		free(*msg);
		*msg = m;
		m = NULL;
	}
	if ((why == OUT_OK || why == OUT_SCRIPT) && json_object_size(rep) &&
	    (rc = sw_reports_upload(&sw, rep, &m)) != 0) {
		if (why == OUT_OK || rc == SW_LOST) {
			why = sw_outcome(rc);
			free(*msg);
			*msg = m;
			m = NULL;
		} else {
			logsend_printf(j, "%s\n", m);
		}
	}
	free(m);
	return why;
}

/* ---- caches (cache.c) ----------------------------------------------- */

static void cache_log(void *arg, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	logsend_printf(arg, "%s\n", buf_cstr(&b));
	buf_release(&b);
}

/* Restore the job's cache, if it has one and the daemon gave it a scope;
 * OTACD_CACHE_HIT tells the steps whether the exact key was found. */
static enum outcome job_cache_restore(struct job *j, struct cache_state *cs, struct strvec *env, char **msg)
{
	json_t *cache = json_object_get(j->spec, "cache"), *scope = json_object_get(j->spec, "cache_scope");
	int rc;
	if (!json_is_object(cache) || !json_is_object(scope))
		return OUT_OK;
	rc = cache_restore(cs, j->a->cache_dir, cache, scope, j->ws, cache_log, j, msg);
	env_set(env, "OTACD_CACHE_HIT", cs->exact ? "true" : "false");
	env_set(env, "OTACD_CACHE_KEY", cs->key);
	return rc == 0 ? OUT_OK : rc == OTA_EINVAL ? OUT_SCRIPT : OUT_INFRA;
}

static void job_cache_save(struct job *j, const struct cache_state *cs)
{
	json_t *cache = json_object_get(j->spec, "cache"), *scope = json_object_get(j->spec, "cache_scope");
	if (json_is_object(cache) && json_is_object(scope) && cs->key[0])
		cache_save(cs, j->a->cache_dir, &j->a->cache, cache, scope, j->ws, cache_log, j);
}

/* ---- one job -------------------------------------------------------- */

static int job_finish(struct job *j, int exit_code, const char *failure, const char *message,
		      int tries, long timeout_ms)
{
	char *url = xasprintf("%s/api/v1/agent/jobs/%s/finish", j->a->url, j->id_url);
	json_t *req = json_object();
	long backoff = 0;
	int rc = OTA_ERROR;

	json_object_set_new(req, "attempt", json_integer(j->attempt));
	json_object_set_new(req, "exit_code", json_integer(exit_code));
	json_object_set_new(req, "failure", failure ? json_string(failure) : json_null());
	json_object_set_new(req, "message", json_string(message ? message : ""));
	for (int t = 0; tries == 0 || t < tries; t++) {
		json_t *ans = NULL;
		long status = 0;
		int r = httpc_json(&ans, &status, "POST", url, j->token, req, timeout_ms);
		json_decref(ans);
		if (!r && status < 500)
			agent_heard();
		if (!r && ((status >= 200 && status < 300) || status == 409)) {
			rc = 0;
			break;
		}
		if (!r && status >= 400 && status < 500 && status != 408 && status != 429) {
			agent_warn("job %s: finish refused (HTTP %ld)", j->id, status);
			break;
		}
		if ((agent_stop_flag || agent_orphaned()) && tries == 0)
			break;
		backoff = backoff_next(backoff);
		sleep_ms(backoff);
	}
	json_decref(req);
	free(url);
	return rc;
}

static void job_log_header(struct job *j, const char *run)
{
	const char *p = run;
	struct buf b = BUF_INIT;
	buf_puts(&b, j->bol ? C_HEAD "$ " : "\n" C_HEAD "$ ");
	for (; *p; p++) {
		buf_putc(&b, *p);
		if (*p == '\n' && p[1])
			buf_puts(&b, "> ");
	}
	while (b.len && b.ptr[b.len - 1] == '\n')
		b.ptr[--b.len] = '\0';
	buf_puts(&b, C_OFF "\n");
	logsend_write(j, b.ptr, b.len);
	buf_release(&b);
}

/* Run one JOB_SPEC to the end; 0 when it passed. */
static int job_run(struct agent *a, json_t *spec)
{
	static const char *const failure_names[] = {
		[OUT_OK] = NULL, [OUT_SCRIPT] = "script", [OUT_TIMEOUT] = "timeout",
		[OUT_CANCELED] = "canceled", [OUT_INFRA] = "infra", [OUT_LOST] = NULL, [OUT_STOPPED] = "infra",
	};
	struct job j;
	struct strvec env = STRVEC_INIT;
	pthread_t hb_thread, log_thread;
	pthread_condattr_t ca;
	sigset_t block, old;
	json_t *steps = json_object_get(spec, "steps"), *v, *first_build = NULL;
	struct cache_state cs = { 0 };
	enum outcome why = OUT_OK;
	char *msg = NULL, *wsname;
	const char *k, *name = json_string_value(json_object_get(spec, "name"));
	int exit_code = -1, rc;

	memset(&j, 0, sizeof(j));
	j.a = a;
	j.spec = spec;
	j.bol = 1;
	v = json_object_get(spec, "job_id");
	{
		char *t = scalar_text(v);
		snprintf(j.id, sizeof(j.id), "%s", t);
		free(t);
	}
	j.id_url = httpc_escape(j.id);
	v = json_object_get(spec, "attempt");
	j.attempt = json_is_integer(v) ? json_integer_value(v) : 1;
	/* The attempt's credential: kept here only, out of the spec that the
	 * rest of the job (and its steps' environment) is built from. */
	v = json_object_get(spec, "job_token");
	j.token = xstrdup(json_is_string(v) ? json_string_value(v) : a->token);
	json_object_del(spec, "job_token");
	v = json_object_get(spec, "timeout_ms");
	j.timeout_ms = json_is_integer(v) ? json_integer_value(v) : 0;
	j.deadline = j.timeout_ms > 0 ? agent_now_ms() + j.timeout_ms : 0;
	v = json_object_get(spec, "max_log_bytes");
	j.max_log = json_is_integer(v) ? json_integer_value(v) : 0;
	{
		struct strvec sv = STRVEC_INIT;
		json_object_foreach(json_object_get(spec, "secrets"), k, v)
			if (json_is_string(v))
				strvec_push(&sv, json_string_value(v));
		j.mask = mask_set_new((const char *const *)sv.v, sv.n);
		for (size_t i = 0; i < sv.n; i++)
			memset(sv.v[i], 0, strlen(sv.v[i]));
		strvec_clear(&sv);
	}
	mask_stream_init(&j.ms, j.mask, 0);
	wsname = xasprintf("job-%s-%" JSON_INTEGER_FORMAT, j.id, j.attempt);
	for (char *p = wsname; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '-' || *p == '.'))
			*p = '_';
	j.ws = xasprintf("%s/%s", a->workdir, wsname);
	free(wsname);
	buf_init(&j.line, BUF_NOLIMIT);
	buf_init(&j.q, LOG_QUEUE_MAX);
	pthread_mutex_init(&j.mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j.cv, &ca);
	pthread_condattr_destroy(&ca);

	agent_log_job(&j);
	agent_say("job %s attempt %" JSON_INTEGER_FORMAT " (%s) started", j.id, j.attempt, name ? name : "?");
	/* Helper threads leave SIGTERM/SIGINT to the main thread, whose
	 * poll() they interrupt. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	pthread_create(&hb_thread, NULL, heartbeat, &j);
	pthread_create(&log_thread, NULL, logsend_thread, &j);
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	if (rm_rf(j.ws) < 0 || ota_mkdir_p(j.ws, 0755) < 0) {
		msg = xasprintf("cannot prepare workspace: %s", ota_error_last());
		why = OUT_INFRA;
	}
	if (why == OUT_OK)
		why = job_checkout(&j, &msg);
	job_env(&env, &j);
	if (why == OUT_OK)
		why = job_cache_restore(&j, &cs, &env, &msg);
	if (why == OUT_OK)
		why = job_inputs(&j, &env, &msg);
	if (why == OUT_OK && json_is_true(json_object_get(json_object_get(spec, "extra"), "reproducible")))
		why = job_first_build(&j, steps, &env, &exit_code, &msg, &first_build, &cs);
	if (why == OUT_OK)
		why = steps_run(&j, steps, env.v, &exit_code, &msg);
	if (why == OUT_OK && first_build)
		why = job_compare_builds(&j, first_build, &msg);
	why = job_stage_after(&j, why, env.v, &msg);
	if (why == OUT_OK)
		why = artifacts_collect(&j, &msg);
	if (why == OUT_OK)
		job_cache_save(&j, &cs);
	if (why == OUT_TIMEOUT && !msg)
		msg = j.timeout_ms % 1000 ? xasprintf("job timed out after %.1fs", (double)j.timeout_ms / 1000)
					  : xasprintf("job timed out after %llds", (long long)(j.timeout_ms / 1000));
	if (why == OUT_CANCELED && !msg)
		msg = xstrdup("job canceled");
	if (why == OUT_STOPPED && !msg)
		msg = xstrdup("the agent was stopped");
	if (msg)
		logsend_printf(&j, C_ERR "%s" C_OFF "\n", msg);

	pthread_mutex_lock(&j.mu);
	j.log_closed = 1;
	pthread_cond_broadcast(&j.cv);
	pthread_mutex_unlock(&j.mu);
	pthread_join(log_thread, NULL);
	if (why != OUT_LOST && j.lost)
		why = OUT_LOST;
	if (msg)
		mask_string(j.mask, msg); /* an artifact name or a step's text may hold a secret */
	if (why == OUT_STOPPED) {
		pthread_mutex_lock(&j.mu);
		j.hb_stop = 1;
		pthread_cond_broadcast(&j.cv);
		pthread_mutex_unlock(&j.mu);
		pthread_join(hb_thread, NULL);
		/* Let the daemon re-queue now rather than at lease expiry. */
		httpc_set_abort_flag(NULL);
		job_finish(&j, exit_code, "infra", msg, 1, 2000);
	} else {
		if (why != OUT_LOST)
			job_finish(&j, exit_code, failure_names[why], msg, 0, REQUEST_TIMEOUT_MS);
		pthread_mutex_lock(&j.mu);
		j.hb_stop = 1;
		pthread_cond_broadcast(&j.cv);
		pthread_mutex_unlock(&j.mu);
		pthread_join(hb_thread, NULL);
	}
	if (why == OUT_OK)
		agent_say("job %s attempt %" JSON_INTEGER_FORMAT " finished: passed", j.id, j.attempt);
	else if (why == OUT_LOST)
		agent_say("job %s attempt %" JSON_INTEGER_FORMAT " dropped: the daemon gave its lease away", j.id, j.attempt);
	else
		agent_say("job %s attempt %" JSON_INTEGER_FORMAT " finished: failed (%s)", j.id, j.attempt, failure_names[why]);
	rc = why == OUT_OK ? 0 : OTA_ERROR;
	ota_log_ctx_clear();

	if (!getenv("OTACD_AGENT_KEEP_WORKSPACE"))
		rm_rf(j.ws);
	strvec_clear(&env);
	mask_stream_release(&j.ms);
	mask_set_free(j.mask);
	buf_release(&j.line);
	buf_release(&j.q);
	pthread_cond_destroy(&j.cv);
	pthread_mutex_destroy(&j.mu);
	free(j.ws);
	free(j.id_url);
	memset(j.token, 0, strlen(j.token));
	free(j.token);
	free(msg);
	json_decref(first_build);
	return rc;
}

/* ---- main ----------------------------------------------------------- */

static void usage(FILE *f)
{
	fputs("usage: otacd-agent [--url URL] [--token-file FILE | --token-fd N | --token TOKEN]\n"
	      "                   [--labels a,b,key=value] [--workdir DIR] [--name NAME] [--once]\n"
	      "                   [--cacert FILE] [--log-format text|logfmt|json] [--log-level L]\n"
	      "\n"
	      "Runs otacd jobs.  Registers with the daemon at URL (default $OTACD_URL or\n"
	      DEFAULT_URL "), long-polls for jobs whose labels are all among\n"
	      "--labels, runs each in DIR/job-ID-ATTEMPT and reports back.\n"
	      "\n"
	      "  --token-file F  read the agent token (`otactl agents add`) from file F\n"
	      "  --token-fd N    read it from descriptor N (to its end) and close N\n"
	      "  --token TOKEN   the token itself (default $OTACD_AGENT_TOKEN); both are\n"
	      "                  wiped from this process's memory, but prefer a file\n"
	      "  --workdir DIR   where workspaces are made (default ./otacd-agent-work)\n"
	      "  --cache-max SIZE        all caches kept in WORKDIR/cache (default 5G; K, M, G)\n"
	      "  --cache-entry-max SIZE  one cache entry (default 1G)\n"
	      "  --name NAME     agent name (default: the one its token was registered as;\n"
	      "                  if given, it must be that name)\n"
	      "  --once          exit after one job: 0 if it passed, 1 otherwise\n"
	      "  --cacert FILE   verify an https:// daemon against the CA(s) in FILE\n"
	      "                  (default $OTACD_CACERT, else the system's CAs)\n"
	      "  --log-format F  text (default), logfmt or json: the agent's own lines on stderr\n"
	      "  --log-level L   error, warn, info (default) or debug\n", f);
}

/* The token in the environment variable name, then wiped where it was:
 * /proc/PID/environ shows the environment block exec gave us, so the
 * bytes themselves are overwritten, not just the variable unset. */
static char *token_from_env(const char *name)
{
	char *v = getenv(name), *tok;
	if (!v)
		return NULL;
	tok = xstrdup(v);
	memset(v, 'x', strlen(v));
	unsetenv(name);
	return tok;
}

/* The token from a file (e.g. 0600, written by the operator) or a
 * descriptor (local agents: a pipe from otacd); surrounding space trimmed. */
static char *token_read(const char *path, int fd)
{
	struct buf b = BUF_INIT;
	char *tok = NULL, *p, *e;
	int rc = 0;

	if (path) {
		rc = ota_read_file(&b, path, 4096);
	} else if (fd >= 0) {
		char tmp[256];
		ssize_t n;
		buf_init(&b, 4096);
		while ((n = read(fd, tmp, sizeof(tmp))) > 0 || (n < 0 && errno == EINTR))
			if (n > 0 && (rc = buf_put(&b, tmp, (size_t)n)) < 0)
				break;
		close(fd);
	} else {
		rc = ota_error_set(OTA_EINVAL, "no such descriptor");
	}
	if (rc == 0) {
		for (p = (char *)buf_cstr(&b); *p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'; p++)
			;
		for (e = p + strlen(p); e > p && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\r' || e[-1] == '\t'); e--)
			;
		if (e > p)
			tok = xstrndup(p, (size_t)(e - p));
		else
			ota_error_set(OTA_EINVAL, "it is empty");
	}
	if (b.ptr)
		memset(b.ptr, 0, b.len);
	buf_release(&b);
	return tok;
}

static void split_labels(struct strvec *out, const char *s)
{
	while (*s) {
		size_t n = strcspn(s, ",");
		const char *b = s, *e = s + n;
		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (e > b) {
			char *l = xstrndup(b, (size_t)(e - b));
			if (!strvec_contains(out, l))
				strvec_push(out, l);
			free(l);
		}
		s += n;
		if (*s == ',')
			s++;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "token", required_argument, NULL, 't' },
		{ "token-file", required_argument, NULL, 'T' },
		{ "token-fd", required_argument, NULL, 'F' },
		{ "labels", required_argument, NULL, 'l' },
		{ "workdir", required_argument, NULL, 'w' },
		{ "name", required_argument, NULL, 'n' },
		{ "once", no_argument, NULL, '1' },
		{ "cacert", required_argument, NULL, 'C' },
		{ "cache-max", required_argument, NULL, 'M' },
		{ "cache-entry-max", required_argument, NULL, 'E' },
		{ "log-format", required_argument, NULL, 'f' },
		{ "log-level", required_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct agent a;
	struct sigaction sa;
	const char *url = getenv("OTACD_URL"), *workdir = "otacd-agent-work", *e, *cacert = NULL;
	long backoff = 0;
	int c, rc = 0, log_format = OTA_LOG_TEXT, log_level = OTA_LOG_INFO;

	/* The namespace init of a step (contain.c): nothing else of the agent. */
	if (argc > 1 && !strcmp(argv[1], "--reaper"))
		return contain_reaper_main(argv + 2);
	/* Not dumpable: a step of the same uid cannot read this process's
	 * memory or /proc/PID/environ (steps are exec'd, and so dumpable). */
	prctl(PR_SET_DUMPABLE, 0);
	ota_log_set_origin("otacd-agent", NULL); /* its name once the options are read */
	memset(&a, 0, sizeof(a));
	a.token = token_from_env("OTACD_AGENT_TOKEN");
	a.cache.max_total = CACHE_DEFAULT_MAX;
	a.cache.max_entry = CACHE_DEFAULT_ENTRY_MAX;
	if (((e = getenv("OTACD_AGENT_CACHE_MAX")) && cache_parse_size(e, &a.cache.max_total) < 0) ||
	    ((e = getenv("OTACD_AGENT_CACHE_ENTRY_MAX")) && cache_parse_size(e, &a.cache.max_entry) < 0)) {
		agent_warn("%s", ota_error_last());
		return 2;
	}
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'u': url = optarg; break;
		case 't':
			free(a.token);
			a.token = xstrdup(optarg);
			memset(optarg, 'x', strlen(optarg)); /* out of /proc/PID/cmdline */
			break;
		case 'T':
		case 'F':
			free(a.token);
			if (!(a.token = token_read(c == 'T' ? optarg : NULL, c == 'F' ? atoi(optarg) : -1))) {
				agent_warn("cannot read the token from %s %s: %s", c == 'T' ? "file" : "descriptor", optarg,
				    ota_error_last());
				return 2;
			}
			break;
		case 'l': split_labels(&a.labels, optarg); break;
		case 'w': workdir = optarg; break;
		case 'n':
			free(a.name);
			a.name = xstrdup(optarg);
			break;
		case '1': a.once = 1; break;
		case 'C': cacert = optarg; break;
		case 'M':
		case 'E':
			if (cache_parse_size(optarg, c == 'M' ? &a.cache.max_total : &a.cache.max_entry) < 0) {
				agent_warn("--%s: %s", c == 'M' ? "cache-max" : "cache-entry-max", ota_error_last());
				return 2;
			}
			break;
		case 'f':
		case 'v':
			if ((c == 'f' ? ota_log_format_parse(optarg) : ota_log_level_parse(optarg)) < 0) {
				agent_warn("--%s: '%s' is not one of %s", c == 'f' ? "log-format" : "log-level", optarg,
					   c == 'f' ? "text, logfmt, json" : "error, warn, info, debug");
				return 2;
			}
			if (c == 'f')
				log_format = ota_log_format_parse(optarg);
			else
				log_level = ota_log_level_parse(optarg);
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	/* before any thread: every line from here on in the chosen format */
	ota_log_setup((enum ota_log_format)log_format, (enum ota_log_level)log_level, 2);
	ota_log_set_origin("otacd-agent", a.name);
	if (!a.token || !*a.token) {
		agent_warn("no token: pass --token-file, --token-fd or --token, or set OTACD_AGENT_TOKEN");
		return 2;
	}
	a.url = xstrdup(url && *url ? url : DEFAULT_URL);
	while (strlen(a.url) > 1 && a.url[strlen(a.url) - 1] == '/')
		a.url[strlen(a.url) - 1] = '\0';
	/* without --name the agent is whatever its token names (the daemon says) */

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A local agent is not tied to its daemon's life (a restarted daemon
	 * adopts it) but gives up on it after a while (agent_orphaned). */
	if ((e = getenv("OTACD_AGENT_LOCAL")) && !strcmp(e, "1")) {
		a.local = 1;
		agent_orphan_ms = 300000;
	}
	if ((e = getenv("OTACD_AGENT_ORPHAN_MS")) && atol(e) > 0)
		agent_orphan_ms = atol(e);
	agent_heard();

	if (ota_mkdir_p(workdir, 0755) < 0 || !(a.workdir = realpath(workdir, NULL))) {
		agent_warn("cannot use work directory %s: %s", workdir, a.workdir ? ota_error_last() : strerror(errno));
		return 1;
	}
	agent_say("%s", contain_init(a.workdir));
	/* a killed agent may have left a half-written cache entry: drop it */
	a.cache_dir = xasprintf("%s/cache", a.workdir);
	if (ota_mkdir_p(a.cache_dir, 0700) < 0) {
		agent_warn("cannot use cache directory %s: %s", a.cache_dir, ota_error_last());
		return 1;
	}
	cache_sweep(a.cache_dir);
	if (httpc_global_init() < 0) {
		agent_warn("%s", ota_error_last());
		return 1;
	}
	if (cacert)
		httpc_set_cacert(cacert);
	httpc_set_abort_flag(&agent_stop_flag);

	if (agent_register(&a) < 0) {
		if (!agent_stop_flag)
			agent_warn("%s", ota_error_last());
		rc = agent_stop_flag ? 0 : 1;
		goto out;
	}
	while (!agent_stop_flag) {
		json_t *spec = NULL;
		int r = agent_request_job(&spec, &a);
		if (!r && spec) {
			backoff = 0;
			rc = job_run(&a, spec) < 0 ? 1 : 0;
			json_decref(spec);
			if (a.once)
				break;
		} else if (!r) {
			backoff = 0;
		} else if (r == OTA_ENOTFOUND) {
			if (agent_register(&a) < 0) {
				if (!agent_stop_flag)
					agent_warn("%s", ota_error_last());
				rc = agent_stop_flag ? 0 : 1;
				break;
			}
		} else if (!agent_stop_flag && !agent_orphaned()) {
			backoff = backoff_next(backoff);
			sleep_ms(backoff);
		}
	}
	if (agent_stop_flag)
		rc = 0; /* asked to stop: a clean exit */
out:
	httpc_global_cleanup();
	strvec_clear(&a.labels);
	free(a.url);
	memset(a.token, 0, strlen(a.token));
	free(a.token);
	free(a.name);
	free(a.workdir);
	free(a.cache_dir);
	free(a.id_str);
	return rc;
}
