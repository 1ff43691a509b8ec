/*
 * localagents.c - start and supervise otacd's own agents; see localagents.h.
 */
#include "localagents.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "../common/log.h"
#include "auth.h"
#include "clock.h"

struct slot {
	pid_t pid;
	int adopted;          /* pid is a previous daemon's agent, not our child */
	int64_t started;      /* mono ms */
	char token[65];       /* this agent's own token (memory only; "" when adopted) */
};

struct localagents {
	int n;
	struct slot *slots;
	char *agent_path;
	char *url;
	char *labels;
	char *workdir;
	char *iddir;          /* STATE/local-agents: "PID SHA256(token) URL" per agent */
	json_t *bound;        /* the local labels, which local agents may claim */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stopping;
};

static void slot_name(char *name, size_t n, int idx)
{
	snprintf(name, n, "local-%d", idx + 1);
}

/* Give slot idx a new token (and forget the one it had). */
static int mint(struct localagents *la, int idx)
{
	char name[32];
	slot_name(name, sizeof(name), idx);
	if (ota_random_hex(la->slots[idx].token, 32) < 0)
		return OTA_ERROR;
	auth_remove(name);
	auth_add_agent(name, la->slots[idx].token, NULL, la->bound, AUTH_AGENT_LOCAL);
	return 0;
}

/* Is pid in our own PID namespace?  A job step runs in a namespace of its
 * own (contain.c): whatever it starts has two pids in /proc/PID/status. */
static int same_pidns(pid_t pid)
{
	char *path = xasprintf("/proc/%ld/status", (long)pid);
	struct buf b = BUF_INIT;
	const char *ns;
	int ok = 0;

	if (ota_read_file(&b, path, 16384) == 0 && (ns = strstr(buf_cstr(&b), "\nNSpid:"))) {
		long a, c;
		ok = sscanf(ns + 8, "%ld %ld", &a, &c) == 1 && a == (long)pid;
	}
	buf_release(&b);
	free(path);
	return ok;
}

/* Is pid the otacd-agent of slot name?  (Its command line says so; a
 * zombie or a reused pid has another one.) */
static int is_our_agent(const struct localagents *la, pid_t pid, const char *name)
{
	char *path = xasprintf("/proc/%ld/cmdline", (long)pid);
	struct buf b = BUF_INIT;
	int ok = 0;

	if (pid > 0 && ota_read_file(&b, path, 8192) == 0 && b.len > 0) {
		const char *p = b.ptr, *end = b.ptr + b.len;
		ok = !strcmp(p, la->agent_path) ? 1 : 0;
		if (ok) {
			ok = 0;
			for (; p < end; p += strlen(p) + 1)
				if (!strcmp(p, "--name") && p + strlen(p) + 1 < end && !strcmp(p + strlen(p) + 1, name))
					ok = 1;
		}
	}
	buf_release(&b);
	free(path);
	return ok;
}

/* Note which process holds which token, for the next daemon. */
static void record(struct localagents *la, int idx)
{
	char name[32], hash[65], *path, *line, *tmp;
	int fd, ok;
	slot_name(name, sizeof(name), idx);
	auth_sha256_hex(la->slots[idx].token, hash);
	path = xasprintf("%s/%s", la->iddir, name);
	line = xasprintf("%ld %s %s\n", (long)la->slots[idx].pid, hash, la->url);
	tmp = xasprintf("%s.tmp", path);
	/* Written before the agent can have registered (an exec and an HTTP
	 * round trip away), so no fsync: the record matters only when the
	 * agent outlived the daemon, and then the machine did not go down. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ok = fd >= 0 && write(fd, line, strlen(line)) == (ssize_t)strlen(line);
	if (fd >= 0 && close(fd) < 0)
		ok = 0;
	if (!ok || rename(tmp, path) < 0) {
		ota_log(OTA_LOG_WARN, "cannot record local agent %d: %s", idx + 1, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	free(line);
	free(path);
}

/* Stop a previous daemon's agent we cannot adopt (it could not reach us),
 * before another starts on its work directory. */
static void retire(struct localagents *la, pid_t pid, const char *name)
{
	ota_log(OTA_LOG_INFO, "%s (pid %ld) of the previous daemon uses another address: stopping it", name,
		(long)pid);
	kill(pid, SIGTERM);
	for (int t = 0; t < 100 && is_our_agent(la, pid, name); t++)
		usleep(100000);
	if (is_our_agent(la, pid, name))
		kill(pid, SIGKILL);
}

/*
 * A local agent of a previous daemon still running (it outlives the daemon,
 * see localagents.h): adopt it, under the token hash it was recorded with,
 * rather than start a second agent on its work directory.  1 if adopted.
 * Only a process in our PID namespace whose command line is that agent's,
 * recorded with the address it has now, is adopted.
 */
static int adopt(struct localagents *la, int idx)
{
	char name[32], hash[65], url[512], *path;
	struct buf b = BUF_INIT;
	long pid = 0;
	int ok = 0;

	slot_name(name, sizeof(name), idx);
	path = xasprintf("%s/%s", la->iddir, name);
	if (ota_read_file(&b, path, 1024) == 0 && sscanf(buf_cstr(&b), "%ld %64s %511s", &pid, hash, url) == 3 &&
	    strlen(hash) == 64 && strspn(hash, "0123456789abcdef") == 64 && same_pidns((pid_t)pid) &&
	    is_our_agent(la, (pid_t)pid, name)) {
		if (!la->url) { /* localagents_preload: its token only, for now */
			auth_add_agent(name, NULL, hash, la->bound, AUTH_AGENT_LOCAL);
		} else if (strcmp(url, la->url) != 0) {
			retire(la, (pid_t)pid, name);
		} else {
			auth_remove(name); /* the preloaded entry */
			la->slots[idx].pid = (pid_t)pid;
			la->slots[idx].adopted = 1;
			la->slots[idx].token[0] = '\0';
			auth_add_agent(name, NULL, hash, la->bound, AUTH_AGENT_LOCAL);
			ota_log(OTA_LOG_INFO, "local agent %d (pid %ld) kept running: adopted", idx + 1, pid);
			ok = 1;
		}
	}
	buf_release(&b);
	free(path);
	return ok;
}

/*
 * Start one agent.  otacd has many threads, so between fork() and exec the
 * child may only make async-signal-safe calls: another thread may have
 * held the allocator's lock (or stdio's) at the instant of the fork, and
 * the child would wait on it forever, holding copies of otacd's lock file
 * and sockets.  So argv and the environment are built here, before the
 * fork, and the child only resets its signal mask, moves the token pipe to
 * fd 3 and calls execve.
 *
 * The agent's token never is in its environment or argv (a job step could
 * read /proc/PID/environ or cmdline): it is written into a pipe before the
 * fork, the agent reads it from fd 3 (--token-fd 3) and closes it.
 */
static const char *log_format_name(void)
{
	switch (ota_log_current_format()) {
	case OTA_LOG_LOGFMT: return "logfmt";
	case OTA_LOG_JSON: return "json";
	default: return "text";
	}
}

static pid_t spawn(struct localagents *la, int idx)
{
	extern char **environ;
	char name[32], *dir;
	struct strvec env = STRVEC_INIT;
	int tp[2] = { -1, -1 };
	size_t tlen = strlen(la->slots[idx].token);
	pid_t pid = -1;

	snprintf(name, sizeof(name), "local-%d", idx + 1);
	dir = xasprintf("%s/%s", la->workdir, name);
	ota_mkdir_p(dir, 0700);
	/* the token (64 bytes) fits a pipe's buffer: written before the fork */
	if (pipe2(tp, O_CLOEXEC) < 0 || write(tp[1], la->slots[idx].token, tlen) != (ssize_t)tlen) {
		ota_log(OTA_LOG_WARN, "cannot hand local agent %d its token", idx + 1);
		goto out;
	}
	close(tp[1]);
	tp[1] = -1;
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "OTACD_AGENT_", 12) != 0)
			strvec_push(&env, *e);
	strvec_push(&env, "OTACD_AGENT_LOCAL=1");
	{
		const char *orphan = getenv("OTACD_AGENT_ORPHAN_MS");
		if (orphan && *orphan)
			strvec_pushf(&env, "OTACD_AGENT_ORPHAN_MS=%s", orphan);
	}
	{
		/* its lines in otacd's own log format and level (issue 18) */
		char *argv[] = { la->agent_path, "--url", la->url, "--name", name, "--labels", la->labels,
				 "--workdir", dir, "--token-fd", "3", "--log-format", (char *)log_format_name(),
				 "--log-level", (char *)ota_log_level_name(ota_log_current_level()), NULL };
		/* the child may only write(2): its line is formatted before the fork */
		struct buf failed = BUF_INIT;
		ota_log_format_line(&failed, ota_log_current_format(), clock_real_ms(), OTA_LOG_ERROR,
				    "cannot start the local agent (otacd-agent)", NULL);
		pid = fork();
		if (pid == 0) {
			sigset_t none;
			sigemptyset(&none);
			sigprocmask(SIG_SETMASK, &none, NULL);
			/* dup2 clears close-on-exec on fd 3; if the pipe already is
			 * fd 3, clear it by hand */
			if (tp[0] == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(tp[0], 3) < 0)
				_exit(127);
			execve(la->agent_path, argv, env.v);
			if (write(2, failed.ptr, failed.len) < 0) {
				/* nothing more to do */
			}
			_exit(127);
		}
		buf_release(&failed);
	}
out:
	if (tp[0] >= 0)
		close(tp[0]);
	if (tp[1] >= 0)
		close(tp[1]);
	strvec_clear(&env);
	free(dir);
	return pid;
}

static void *supervise(void *arg)
{
	struct localagents *la = arg;

	pthread_mutex_lock(&la->lock);
	while (!la->stopping) {
		struct timespec ts;
		for (int i = 0; i < la->n; i++) {
			struct slot *s = &la->slots[i];
			int status;
			char name[32];
			slot_name(name, sizeof(name), i);
			if (s->pid > 0 && s->adopted && !is_our_agent(la, s->pid, name)) {
				ota_log(OTA_LOG_WARN, "adopted local agent %d (pid %ld) exited; restarting", i + 1,
					(long)s->pid);
				s->pid = 0;
				s->adopted = 0;
				/* its token was the previous daemon's: a new one */
				if (mint(la, i) < 0)
					continue;
			}
			if (s->pid > 0 && !s->adopted && waitpid(s->pid, &status, WNOHANG) == s->pid) {
				ota_log(OTA_LOG_WARN, "local agent %d (pid %ld) exited (%s %d); restarting", i + 1,
					(long)s->pid, WIFSIGNALED(status) ? "signal" : "status",
					WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
				s->pid = 0;
			}
			/* restart, but not more than once a second per slot */
			if (s->pid == 0 && clock_mono_ms() - s->started >= 1000) {
				s->pid = spawn(la, i);
				s->started = clock_mono_ms();
				if (s->pid > 0)
					record(la, i);
			}
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&la->cond, &la->lock, &ts);
	}
	pthread_mutex_unlock(&la->lock);
	return NULL;
}

static json_t *labels_json(const struct strvec *labels)
{
	json_t *bound = json_array();
	for (size_t i = 0; i < labels->n; i++)
		json_array_append_new(bound, json_string(labels->v[i]));
	return bound;
}

void localagents_preload(int n, const struct strvec *labels, const char *state_dir)
{
	struct localagents la;

	memset(&la, 0, sizeof(la));
	la.bound = labels_json(labels);
	la.agent_path = ota_sibling_path("otacd-agent");
	la.iddir = xasprintf("%s/local-agents", state_dir);
	la.n = n;
	la.slots = xcalloc((size_t)(n ? n : 1), sizeof(*la.slots));
	for (int i = 0; i < n; i++)
		adopt(&la, i);
	free(la.slots);
	free(la.iddir);
	free(la.agent_path);
	json_decref(la.bound);
}

int localagents_start(struct localagents **out, int n, const char *url, const struct strvec *labels,
		      const char *workdir, const char *state_dir)
{
	struct localagents *la = xcalloc(1, sizeof(*la));
	struct buf l = BUF_INIT;

	la->bound = labels_json(labels);
	for (size_t i = 0; i < labels->n; i++) {
		if (i)
			buf_putc(&l, ',');
		buf_puts(&l, labels->v[i]);
	}
	la->n = n;
	la->slots = xcalloc((size_t)(n ? n : 1), sizeof(*la->slots));
	la->agent_path = ota_sibling_path("otacd-agent");
	la->url = xstrdup(url);
	la->labels = buf_detach(&l);
	la->workdir = xstrdup(workdir);
	la->iddir = xasprintf("%s/local-agents", state_dir);
	pthread_mutex_init(&la->lock, NULL);
	pthread_cond_init(&la->cond, NULL);
	ota_mkdir_p(la->iddir, 0700);
	for (int i = 0; i < n; i++) {
		la->slots[i].started = clock_mono_ms() - 1000;
		if (adopt(la, i))
			continue;
		/* each local agent its own identity, bound to the local labels */
		if (mint(la, i) < 0) {
			localagents_stop(la);
			return OTA_ERROR;
		}
	}
	if (access(la->agent_path, X_OK) < 0) {
		int rc = ota_error_set(OTA_ERROR, "cannot find %s (it is built next to otacd)", la->agent_path);
		localagents_stop(la);
		return rc;
	}
	if (pthread_create(&la->thread, NULL, supervise, la) != 0) {
		localagents_stop(la);
		return ota_error_set(OTA_ERROR, "cannot start the agent supervisor");
	}
	*out = la;
	return 0;
}

void localagents_stop(struct localagents *la)
{
	if (!la)
		return;
	pthread_mutex_lock(&la->lock);
	la->stopping = 1;
	pthread_cond_broadcast(&la->cond);
	pthread_mutex_unlock(&la->lock);
	if (la->thread)
		pthread_join(la->thread, NULL);
	for (int i = 0; i < la->n; i++)
		if (la->slots[i].pid > 0)
			kill(la->slots[i].pid, SIGTERM);
	for (int i = 0; i < la->n; i++) {
		char name[32], *path;
		slot_name(name, sizeof(name), i);
		if (la->slots[i].pid > 0 && !la->slots[i].adopted)
			waitpid(la->slots[i].pid, NULL, 0);
		/* not our child: wait (10 s at most) for it to go */
		for (int t = 0; la->slots[i].pid > 0 && la->slots[i].adopted && t < 100 &&
				    is_our_agent(la, la->slots[i].pid, name); t++)
			usleep(100000);
		path = xasprintf("%s/%s", la->iddir, name);
		unlink(path);
		free(path);
	}
	for (int i = 0; i < la->n; i++)
		OPENSSL_cleanse(la->slots[i].token, sizeof(la->slots[i].token));
	free(la->slots);
	free(la->agent_path);
	free(la->url);
	free(la->labels);
	free(la->workdir);
	free(la->iddir);
	json_decref(la->bound);
	pthread_mutex_destroy(&la->lock);
	pthread_cond_destroy(&la->cond);
	free(la);
}
