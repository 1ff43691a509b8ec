/*
 * reaper.c - PID 1 of a job step's namespace (contain.h).
 *
 * Linked into otacd-agent (`otacd-agent --reaper -- PROGRAM ARGS...`) and
 * on its own into otacd-reaper (agents/reaper/main.c), which the agent
 * execs for every step: it needs libc alone, so starting it costs a
 * fraction of re-executing the agent.  Only libc here.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "contain.h"

static void forward(int sig)
{
	kill(-1, sig); /* from a namespace's init: everyone else in it */
}

int contain_reaper_main(char **argv)
{
	struct sigaction sa;
	pid_t child, w;
	int status = 0;

	if (!argv[0])
		return 127;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_DFL);
	child = fork();
	if (child < 0)
		return 127;
	if (child == 0) {
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		execv(argv[0], argv);
		_exit(127);
	}
	for (;;) {
		w = waitpid(-1, &status, 0);
		if (w == child)
			break;
		if (w < 0 && errno != EINTR)
			return 127;
	}
	/* returning ends the namespace: the kernel kills what is left */
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
