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

#include "clock.h"

struct slot {
	pid_t pid;
	int64_t started;      /* mono ms */
};

struct localagents {
	int n;
	struct slot *slots;
	char *agent_path;
	char *url;
	char *token;
	char *labels;
	char *workdir;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stopping;
};

static char *sibling_binary(const char *name)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;
	if (n <= 0)
		return xstrdup(name);
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return xstrdup(name);
	*slash = '\0';
	return xasprintf("%s/%s", self, name);
}

/*
 * Start one agent.  otacd has many threads, so between fork() and exec the
 * child may only make async-signal-safe calls: another thread may have
 * held the allocator's lock (or stdio's) at the instant of the fork, and
 * the child would wait on it forever, holding copies of otacd's lock file
 * and sockets.  So argv and the environment are built here, before the
 * fork, and the child only resets its signal mask and calls execve.
 */
static pid_t spawn(struct localagents *la, int idx)
{
	extern char **environ;
	char name[32], *dir;
	struct strvec env = STRVEC_INIT;
	pid_t pid;

	snprintf(name, sizeof(name), "local-%d", idx + 1);
	dir = xasprintf("%s/%s", la->workdir, name);
	ota_mkdir_p(dir, 0700);
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "OTACD_AGENT_", 12) != 0)
			strvec_push(&env, *e);
	strvec_pushf(&env, "OTACD_AGENT_TOKEN=%s", la->token);
	strvec_push(&env, "OTACD_AGENT_PARENT_DEATH=1");
	strvec_pushf(&env, "OTACD_AGENT_PARENT_PID=%ld", (long)getpid());
	{
		char *argv[] = { la->agent_path, "--url", la->url, "--name", name, "--labels", la->labels,
				 "--workdir", dir, NULL };
		static const char failed[] = "otacd: cannot start the local agent (otacd-agent)\n";
		pid = fork();
		if (pid == 0) {
			sigset_t none;
			sigemptyset(&none);
			sigprocmask(SIG_SETMASK, &none, NULL);
			execve(la->agent_path, argv, env.v);
			if (write(2, failed, sizeof(failed) - 1) < 0) {
				/* nothing more to do */
			}
			_exit(127);
		}
	}
	/* the token's copy in env */
	for (size_t i = 0; i < env.n; i++)
		if (!strncmp(env.v[i], "OTACD_AGENT_TOKEN=", 18))
			memset(env.v[i], 0, strlen(env.v[i]));
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
			if (s->pid > 0 && waitpid(s->pid, &status, WNOHANG) == s->pid) {
				fprintf(stderr, "otacd: local agent %d (pid %ld) exited (%s %d); restarting\n", i + 1,
					(long)s->pid, WIFSIGNALED(status) ? "signal" : "status",
					WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
				s->pid = 0;
			}
			/* restart, but not more than once a second per slot */
			if (s->pid == 0 && clock_mono_ms() - s->started >= 1000) {
				s->pid = spawn(la, i);
				s->started = clock_mono_ms();
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

int localagents_start(struct localagents **out, int n, const char *url, const char *token,
		      const struct strvec *labels, const char *workdir)
{
	struct localagents *la = xcalloc(1, sizeof(*la));
	struct buf l = BUF_INIT;

	for (size_t i = 0; i < labels->n; i++) {
		if (i)
			buf_putc(&l, ',');
		buf_puts(&l, labels->v[i]);
	}
	la->n = n;
	la->slots = xcalloc((size_t)(n ? n : 1), sizeof(*la->slots));
	for (int i = 0; i < n; i++)
		la->slots[i].started = clock_mono_ms() - 1000;
	la->agent_path = sibling_binary("otacd-agent");
	la->url = xstrdup(url);
	la->token = xstrdup(token);
	la->labels = buf_detach(&l);
	la->workdir = xstrdup(workdir);
	pthread_mutex_init(&la->lock, NULL);
	pthread_cond_init(&la->cond, NULL);
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
	for (int i = 0; i < la->n; i++)
		if (la->slots[i].pid > 0)
			waitpid(la->slots[i].pid, NULL, 0);
	free(la->slots);
	free(la->agent_path);
	free(la->url);
	if (la->token)
		memset(la->token, 0, strlen(la->token));
	free(la->token);
	free(la->labels);
	free(la->workdir);
	pthread_mutex_destroy(&la->lock);
	pthread_cond_destroy(&la->cond);
	free(la);
}
