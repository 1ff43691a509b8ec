/*
 * step.c - one step of a job: its environment, the contained shell that
 * runs it, and its output on the way to the job's log.
 *
 * Why: a step is the user's code.  It gets an environment built from
 * scratch (the job's variables, secrets and matrix values, never the
 * agent's token), runs as `/bin/sh -e -c RUN` where it can be killed as a
 * whole (contain.c), and must not outlive its attempt: a cancel gets
 * SIGTERM then SIGKILL after KILL_GRACE_MS, a lost lease or a stopping
 * agent SIGKILL at once, and whatever it left in the background is killed
 * when the shell ends.
 *
 * How: stdout and stderr share one pipe, read with poll() alongside a
 * pidfd, into logsend_write; the runner (main thread) checks j->cancel and
 * j->lost between reads.
 */
#include "../common/util.h"
#include "agent.h"
#include "contain.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define KILL_GRACE_MS 5000

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
	agent_running_pgid = pid;
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
	agent_running_pgid = 0;
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

static void step_log_header(struct job *j, const char *run)
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

enum outcome step_run_all(struct job *j, json_t *steps, char **envp, int *exit_code, char **msg)
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
		step_log_header(j, run);
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

/* ---- environment ---------------------------------------------------- */

void step_env_set(struct strvec *env, const char *name, const char *value)
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
		char *name = xasprintf("%s%s", prefix, k), *val = agent_scalar_text(v);
		if (upper)
			for (char *p = name; *p; p++)
				*p = (*p >= 'a' && *p <= 'z') ? (char)(*p - 32)
				   : ((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')) ? *p : '_';
		step_env_set(env, name, val);
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
		step_env_set(env, "OTACD_REF", ref);
	if (!json_is_object(src))
		return;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(vars); i++) {
		const char *v = json_string_value(json_object_get(src, vars[i][0]));
		if (v)
			step_env_set(env, vars[i][1], v);
	}
}

void step_env(struct strvec *env, struct job *j)
{
	static const char *const keep[] = { "PATH", "HOME", "LANG" };
	char *run_id = agent_scalar_text(json_object_get(j->spec, "run_id"));
	char *attempt = xasprintf("%" JSON_INTEGER_FORMAT, j->attempt);

	for (size_t i = 0; i < OTA_ARRAY_SIZE(keep); i++)
		if (getenv(keep[i]))
			step_env_set(env, keep[i], getenv(keep[i]));
	if (!getenv("PATH"))
		step_env_set(env, "PATH", "/usr/local/bin:/usr/bin:/bin");
	step_env_set(env, "OTACD_JOB_ID", j->id);
	step_env_set(env, "OTACD_RUN_ID", run_id);
	step_env_set(env, "OTACD_ATTEMPT", attempt);
	step_env_set(env, "OTACD_WORKSPACE", j->ws);
	step_env_set(env, "CI", "true");
	job_env_source(env, j);
	env_set_object(env, "", json_object_get(j->spec, "env"), 0);
	env_set_object(env, "", json_object_get(j->spec, "secrets"), 0);
	env_set_object(env, "MATRIX_", json_object_get(j->spec, "matrix"), 1);
	free(run_id);
	free(attempt);
}
