/*
 * contain.h - how otacd-agent runs a job step so that nothing of it
 * outlives the agent or the attempt (docs/security.md, "Job containment").
 *
 * Preferred: each step runs in a new PID namespace (and, when the kernel
 * allows it, a new user namespace) whose init is a small reaper: an exec
 * of otacd-reaper (libc, jansson and the log code; the agent itself with `--reaper` when that
 * program is not next to the agent), started with PR_SET_PDEATHSIG so it
 * dies with the agent.  When a namespace's init dies the kernel kills every
 * process in it, so a SIGKILLed agent, a lost lease or a step that ends
 * with `sleep 1000 &` leaves nothing running, whatever the step did with
 * setsid or double forks.  The user namespace also keeps the step out of
 * the agent's memory and /proc/PID/environ even when both run as root (the
 * step has no CAP_SYS_PTRACE over the non-dumpable agent).
 *
 * Fallback (no namespaces: an old kernel, a container without them, or
 * OTACD_AGENT_CONTAIN=pgroup): the step is a process group; its id and
 * start time are written to WORKDIR/.otacd-agent-step, and an agent
 * starting in that work directory kills whatever is left of that group.  A
 * step that leaves its process group escapes this mode.
 */
#ifndef OTA_CONTAIN_H
#define OTA_CONTAIN_H

#include <stddef.h>
#include <sys/types.h>

/* Decide how steps are contained and kill what a previous agent of this
 * work directory left running; returns a sentence for the start log. */
const char *contain_init(const char *workdir);

/* Start argv (argv[0] an absolute path) with envp, stdin from in_fd,
 * stdout+stderr to out_fd, in cwd.  *pid leads a process group:
 * kill(-*pid, sig) reaches all of the step, waitpid(*pid) gives its status
 * (128+N when a signal N ended the step).  0, or an errno value. */
int contain_spawn(pid_t *pid, char *const argv[], char *const envp[], int in_fd, int out_fd, const char *cwd);

/* The step ended (its process group is gone): forget it. */
void contain_done(void);

/* `otacd-reaper [--log-format F] [--log-level L] -- PROGRAM ARGS...` (or
 * `otacd-agent --reaper …`; argv is what follows the program name or
 * --reaper): the namespace's init (agents/reaper.c).  Runs the program,
 * reaps every orphan, forwards SIGTERM/SIGINT/SIGHUP to all of the
 * namespace and exits with the program's status (127 when it cannot run
 * it, saying why on stderr, the step's output, in the agent's log format). */
int contain_reaper_main(char **argv);

#endif
