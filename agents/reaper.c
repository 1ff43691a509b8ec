/*
 * reaper.c - PID 1 of a job step's namespace (contain.h).
 *
 * Linked into otacd-agent (`otacd-agent --reaper -- PROGRAM ARGS...`) and
 * on its own into otacd-reaper (agents/reaper/main.c), which the agent
 * execs for every step: it needs libc, jansson and the log code alone
 * (common/log.c, for its few lines in the agent's log format), so starting
 * it costs a fraction of re-executing the agent.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "../common/log.h"
#include "contain.h"

static void forward(int sig)
{
	kill(-1, sig); /* from a namespace's init: everyone else in it */
}

int contain_reaper_main(char **argv)
{
	struct sigaction sa;
	pid_t child, w;
	int status = 0, i = 0;
	const char *why = NULL;

	if (ota_log_args(argv, &i, "otacd-reaper", &why) < 0 || !argv[i] || strcmp(argv[i], "--") || !argv[i + 1]) {
		ota_log(OTA_LOG_ERROR, "%s (usage: otacd-reaper [--log-format F] [--log-level L] -- PROGRAM ARGS..., "
				       "started by otacd-agent)", why ? why : "no program to run");
		return 127;
	}
	argv += i + 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_DFL);
	child = fork();
	if (child < 0) {
		ota_log(OTA_LOG_ERROR, "cannot start %s: fork: %s", argv[0], strerror(errno));
		return 127;
	}
	if (child == 0) {
		/* this process has one thread: the log code is safe after fork */
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		execv(argv[0], argv);
		ota_log(OTA_LOG_ERROR, "cannot run %s: %s", argv[0], strerror(errno));
		_exit(127);
	}
	for (;;) {
		w = waitpid(-1, &status, 0);
		if (w == child)
			break;
		if (w < 0 && errno != EINTR) {
			ota_log(OTA_LOG_ERROR, "waiting for %s: %s", argv[0], strerror(errno));
			return 127;
		}
	}
	/* returning ends the namespace: the kernel kills what is left */
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
