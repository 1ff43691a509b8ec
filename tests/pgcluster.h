/*
 * pgcluster.h - a throwaway PostgreSQL cluster for tests.
 *
 * pgcluster_start() runs Debian's initdb and pg_ctl (/usr/lib/postgresql/
 * N/bin, or $OTACD_PG_BIN) in a fresh temporary directory: the cluster
 * listens on a unix socket in that directory only (no TCP port, so two
 * tests never collide), with fsync off unless durable (benchmarks).  PostgreSQL refuses to run as
 * root, and CI runs the tests as root: then the cluster runs as the
 * "postgres" user (or "nobody").
 *
 * A watchdog process holds the other end of a pipe from the test: when the
 * test calls pgcluster_stop(), exits, or is killed, the pipe closes and the
 * watchdog stops the cluster and removes the directory, so no test leaves
 * a postmaster behind.
 */
#ifndef OTA_PGCLUSTER_H
#define OTA_PGCLUSTER_H

#include <sys/types.h>

struct pgcluster {
	char dir[128];   /* data/, the socket, logs */
	char bindir[256];
	char url[512];   /* postgresql://otacd@/postgres?host=DIR&port=N */
	pid_t watchdog;
	int watch_fd;    /* closing it stops the cluster */
	int durable;     /* fsync on */
};

/*
 * Start a cluster.  0 on success; 1 when PostgreSQL's binaries are absent
 * (the caller skips, saying why); negative on failure, with the message in
 * the error slot and the logs' tail on stderr.
 */
int pgcluster_start(struct pgcluster *pg, int durable);
/* Stop the cluster and remove its directory (waits); safe to repeat. */
void pgcluster_stop(struct pgcluster *pg);
/* Run "pg_ctl restart" (the server drops every connection). */
int pgcluster_restart(struct pgcluster *pg);

#endif
