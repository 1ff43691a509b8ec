/*
 * localagents.h - the agents otacd starts for itself.
 *
 * So that one machine works out of the box, otacd runs N otacd-agent
 * processes (found next to its own binary) that connect back over loopback,
 * each as agent local-N with its own token, which exists only in memory
 * and reaches the agent through a pipe (never its environment or argv);
 * local agents may claim only the local labels.  They use the same HTTP
 * protocol as remote agents.  Each is started with PR_SET_PDEATHSIG so it
 * dies with the daemon (and takes its job's process group with it); a
 * supervisor thread restarts any that exit, after a short back-off.
 */
#ifndef OTA_LOCALAGENTS_H
#define OTA_LOCALAGENTS_H

#include "../common/util.h"

struct localagents;

int localagents_start(struct localagents **out, int n, const char *url, const struct strvec *labels,
		      const char *workdir);
void localagents_stop(struct localagents *la);

#endif
