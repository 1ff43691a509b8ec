/*
 * localagents.h - the agents otacd starts for itself.
 *
 * So that one machine works out of the box, otacd runs N otacd-agent
 * processes (found next to its own binary) that connect back over loopback,
 * each as agent local-N with its own token, which exists only in memory
 * and reaches the agent through a pipe (never its environment or argv);
 * local agents may claim only the local labels.  They use the same HTTP
 * protocol as remote agents; a supervisor thread restarts any that exit,
 * after a short back-off.
 *
 * Local agents outlive their daemon, as remote agents do, so a job whose
 * step ended just as otacd died is reported to the restarted daemon
 * instead of run again.  Each start records "PID SHA256(token)" in
 * STATE/local-agents/local-N (0600; the token itself stays in memory); the
 * next daemon adopts a recorded agent still running (its command line
 * names it), accepts its token by that hash, and starts no second agent
 * for that slot; when an adopted agent exits, its slot gets a new token.
 * An agent whose daemon stays away stops by itself (agent.c,
 * agent_orphaned); an orderly stop (SIGTERM) stops them all.
 */
#ifndef OTA_LOCALAGENTS_H
#define OTA_LOCALAGENTS_H

#include "../common/util.h"

struct localagents;

/* Before the API listens: accept the tokens of recorded local agents that
 * still run (localagents_start then adopts them, or forgets the token), so
 * that an agent's first call to the restarted daemon is not refused. */
void localagents_preload(int n, const struct strvec *labels, const char *state_dir);
int localagents_start(struct localagents **out, int n, const char *url, const struct strvec *labels,
		      const char *workdir, const char *state_dir);
void localagents_stop(struct localagents *la);

#endif
