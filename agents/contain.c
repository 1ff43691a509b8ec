/*
 * contain.c - a step that cannot outlive its agent or attempt; see contain.h.
 *
 * The agent is multithreaded (heartbeat, log sender, libcurl), so between
 * clone() and execve() the child makes only async-signal-safe calls: it
 * sets its parent-death signal, waits on a pipe for the go-ahead (the
 * parent writes the user namespace's id maps first; end-of-file means the
 * agent died before, so the child exits), joins its own process group,
 * moves its descriptors, changes directory and execs the reaper
 * (otacd-reaper, agents/reaper.c; or the agent itself with --reaper when
 * that program is not installed next to it).
 */
#include "contain.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "../common/log.h"
#include "../common/util.h"

#define CHILD_STACK (64 * 1024)

enum mode { MODE_PGROUP, MODE_PIDNS, MODE_PIDNS_USER };

static enum mode g_mode = MODE_PGROUP;
static char *g_state;          /* WORKDIR/.otacd-agent-step (pgroup mode) */
static char *g_reaper;         /* otacd-reaper next to the agent, or NULL: the agent's --reaper */

struct child_args {
	int go;                    /* read end of the go-ahead pipe */
	int go_w;                  /* write end: the child closes its copy */
	int in_fd, out_fd;
	const char *cwd;
	const char *exe;           /* the reaper program */
	char *const *argv;
	char *const *envp;
	int probe;                 /* only see whether the namespaces work */
};

static int child_main(void *arg)
{
	struct child_args *c = arg;
	sigset_t none;
	char b;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	close(c->go_w);
	if (read(c->go, &b, 1) != 1)
		_exit(127); /* the agent died, or gave up on us */
	close(c->go);
	if (c->probe)
		_exit(0);
	setpgid(0, 0);
	if (dup2(c->in_fd, 0) < 0 || dup2(c->out_fd, 1) < 0 || dup2(c->out_fd, 2) < 0)
		_exit(127);
	if (chdir(c->cwd) < 0) {
		static const char m[] = "otacd-agent: cannot enter the workspace\n";
		if (write(2, m, sizeof(m) - 1) < 0)
			_exit(127);
		_exit(127);
	}
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(c->exe, c->argv, c->envp);
	_exit(127);
}

static int write_proc(pid_t pid, const char *file, const char *text)
{
	char path[64];
	int fd, ok;
	snprintf(path, sizeof(path), "/proc/%ld/%s", (long)pid, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok ? 0 : -1;
}

/* Same ids inside as outside: all of them when the agent is root (it may
 * map them), else only its own. */
static int write_maps(pid_t pid)
{
	char map[64];
	if (geteuid() == 0)
		return write_proc(pid, "uid_map", "0 0 4294967295\n") < 0 ||
		       write_proc(pid, "gid_map", "0 0 4294967295\n") < 0 ? -1 : 0;
	if (write_proc(pid, "setgroups", "deny") < 0)
		return -1;
	snprintf(map, sizeof(map), "%lu %lu 1\n", (unsigned long)geteuid(), (unsigned long)geteuid());
	if (write_proc(pid, "uid_map", map) < 0)
		return -1;
	snprintf(map, sizeof(map), "%lu %lu 1\n", (unsigned long)getegid(), (unsigned long)getegid());
	return write_proc(pid, "gid_map", map);
}

/* clone() the child in new namespaces (mode), let it go; 0 or errno. */
static int clone_start(pid_t *out, enum mode mode, struct child_args *c)
{
	int flags = SIGCHLD | CLONE_NEWPID | (mode == MODE_PIDNS_USER ? CLONE_NEWUSER : 0);
	int go[2], err = 0;
	char *stack;
	pid_t pid;

	if (pipe2(go, O_CLOEXEC) < 0)
		return errno;
	c->go = go[0];
	c->go_w = go[1];
	stack = xmalloc(CHILD_STACK);
	pid = clone(child_main, stack + CHILD_STACK, flags, c);
	err = pid < 0 ? errno : 0;
	free(stack); /* the child has its own copy: no CLONE_VM */
	close(go[0]);
	if (pid > 0 && mode == MODE_PIDNS_USER && write_maps(pid) < 0)
		err = errno ? errno : EPERM;
	if (pid > 0 && err) {
		close(go[1]);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return err;
	}
	if (pid > 0) {
		setpgid(pid, pid); /* also in the parent: no window before kill(-pid) works */
		if (write(go[1], "g", 1) != 1)
			err = errno;
	}
	close(go[1]);
	if (!err)
		*out = pid;
	return err;
}

static int probe(enum mode mode)
{
	struct child_args c = { .probe = 1 };
	pid_t pid = -1;
	int status = 0;
	if (clone_start(&pid, mode, &c) != 0)
		return 0;
	return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Field 5 (process group) and 22 (start time) of /proc/PID/stat. */
static int proc_stat(const char *pid, long *pgrp, unsigned long long *start)
{
	char path[64], buf[1024], *p;
	int fd, n, field;
	snprintf(path, sizeof(path), "/proc/%s/stat", pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	n = (int)read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	if (!(p = strrchr(buf, ')')))
		return -1;
	/* after ") " comes field 3 */
	for (field = 3, p += 2; *p && field < 22; field++) {
		if (field == 5)
			*pgrp = strtol(p, NULL, 10);
		p = strchr(p, ' ');
		if (!p)
			return -1;
		p++;
	}
	*start = strtoull(p, NULL, 10);
	return 0;
}

/* A previous agent of this work directory died with a step running in
 * pgroup mode: kill every process of that group started since. */
static void kill_leftovers(void)
{
	struct buf b = BUF_INIT;
	long pgid = 0, pg;
	unsigned long long since = 0, st;
	int killed = 0;
	DIR *d;
	struct dirent *e;

	if (ota_read_file(&b, g_state, 256) < 0) {
		buf_release(&b);
		return;
	}
	if (sscanf(buf_cstr(&b), "%ld %llu", &pgid, &since) == 2 && pgid > 1 && (d = opendir("/proc"))) {
		while ((e = readdir(d))) {
			if (e->d_name[0] < '1' || e->d_name[0] > '9')
				continue;
			if (proc_stat(e->d_name, &pg, &st) == 0 && pg == pgid && st >= since &&
			    kill((pid_t)atol(e->d_name), SIGKILL) == 0)
				killed++;
		}
		closedir(d);
		if (killed)
			ota_log(OTA_LOG_WARN, "killed %d process%s left by a step of the previous agent (group %ld)",
				killed, killed == 1 ? "" : "es", pgid);
	}
	unlink(g_state);
	buf_release(&b);
}

/* otacd-reaper next to this executable when it is there, else NULL. */
static char *reaper_path(void)
{
	char *path = ota_sibling_path("otacd-reaper");

	if (path[0] == '/' && access(path, X_OK) == 0)
		return path;
	free(path);
	return NULL;
}

const char *contain_init(const char *workdir)
{
	const char *force = getenv("OTACD_AGENT_CONTAIN");

	free(g_state);
	g_state = xasprintf("%s/.otacd-agent-step", workdir);
	free(g_reaper);
	g_reaper = reaper_path();
	kill_leftovers();
	if (force && !strcmp(force, "pgroup"))
		g_mode = MODE_PGROUP;
	else if (probe(MODE_PIDNS_USER))
		g_mode = MODE_PIDNS_USER;
	else if (probe(MODE_PIDNS))
		g_mode = MODE_PIDNS;
	else
		g_mode = MODE_PGROUP;
	switch (g_mode) {
	case MODE_PIDNS_USER:
		return "steps run in their own PID and user namespaces (killed as a whole with the agent or attempt)";
	case MODE_PIDNS:
		return "steps run in their own PID namespace (killed as a whole with the agent or attempt;"
		       " no user namespace: a root step can read the agent's memory)";
	default:
		return force && !strcmp(force, "pgroup")
			       ? "steps run in a process group (OTACD_AGENT_CONTAIN=pgroup); a restarted agent kills leftovers"
			       : "no PID namespaces here: steps run in a process group; a restarted agent kills leftovers";
	}
}

static int pgroup_spawn(pid_t *out, char *const argv[], char *const envp[], int in_fd, int out_fd, const char *cwd)
{
	posix_spawnattr_t attr;
	posix_spawn_file_actions_t fa;
	sigset_t none, defaults;
	long pg = 0;
	unsigned long long start = 0;
	char pid_s[32], *line;
	pid_t pid;
	int err;

	sigemptyset(&none);
	sigemptyset(&defaults);
	sigaddset(&defaults, SIGPIPE);
	sigaddset(&defaults, SIGTERM);
	sigaddset(&defaults, SIGINT);
	sigaddset(&defaults, SIGCHLD);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &defaults);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
	posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
	posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
	posix_spawn_file_actions_addchdir_np(&fa, cwd);
	err = posix_spawn(&pid, argv[0], &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (err)
		return err;
	setpgid(pid, pid);
	/* the state file a restarted agent reads to kill what is left */
	snprintf(pid_s, sizeof(pid_s), "%ld", (long)pid);
	proc_stat(pid_s, &pg, &start);
	line = xasprintf("%ld %llu\n", (long)pid, start);
	ota_write_file_atomic(g_state, line, strlen(line), 0600);
	free(line);
	*out = pid;
	return 0;
}

int contain_spawn(pid_t *pid, char *const argv[], char *const envp[], int in_fd, int out_fd, const char *cwd)
{
	struct strvec rargv = STRVEC_INIT;
	struct child_args c;
	int err;

	if (g_mode == MODE_PGROUP)
		return pgroup_spawn(pid, argv, envp, in_fd, out_fd, cwd);
	/* otacd-reaper links libc, jansson and the log code: exec'ing it
	 * costs a fraction of exec'ing the agent again (which loads libcurl,
	 * OpenSSL, ...), the largest cost of a trivial job after its own
	 * process (docs/benchmarks.md) */
	if (g_reaper) {
		strvec_push(&rargv, "otacd-reaper");
	} else {
		strvec_push(&rargv, "otacd-agent");
		strvec_push(&rargv, "--reaper");
	}
	/* its lines (it cannot run the step, say) in the agent's own format */
	strvec_push(&rargv, "--log-format");
	strvec_push(&rargv, ota_log_format_name(ota_log_current_format()));
	strvec_push(&rargv, "--log-level");
	strvec_push(&rargv, ota_log_level_name(ota_log_current_level()));
	strvec_push(&rargv, "--");
	for (size_t i = 0; argv[i]; i++)
		strvec_push(&rargv, argv[i]);
	memset(&c, 0, sizeof(c));
	c.in_fd = in_fd;
	c.out_fd = out_fd;
	c.cwd = cwd;
	c.exe = g_reaper ? g_reaper : "/proc/self/exe";
	c.argv = rargv.v;
	c.envp = envp;
	err = clone_start(pid, g_mode, &c);
	strvec_clear(&rargv);
	return err;
}

void contain_done(void)
{
	if (g_mode == MODE_PGROUP && g_state)
		unlink(g_state);
}
