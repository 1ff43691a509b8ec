/*
 * pgcluster.c - a throwaway PostgreSQL cluster for tests (pgcluster.h).
 */
#include "pgcluster.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/util.h"

#define PG_PORT 5432 /* only names the socket file in our own directory */

static int find_bindir(struct pgcluster *pg)
{
	const char *env = getenv("OTACD_PG_BIN");
	glob_t g;
	int found = 0;

	if (env && *env) {
		snprintf(pg->bindir, sizeof(pg->bindir), "%s", env);
		return 1;
	}
	if (glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, NULL, &g) == 0 && g.gl_pathc > 0) {
		/* the last match: the newest version installed */
		snprintf(pg->bindir, sizeof(pg->bindir), "%.*s",
			 (int)(strlen(g.gl_pathv[g.gl_pathc - 1]) - strlen("/pg_ctl")), g.gl_pathv[g.gl_pathc - 1]);
		found = 1;
	}
	globfree(&g);
	return found;
}

/* The unprivileged account to run the cluster as when we are root. */
static int cluster_user(uid_t *uid, gid_t *gid)
{
	struct passwd *pw;

	if (geteuid() != 0) {
		*uid = geteuid();
		*gid = getegid();
		return 0;
	}
	pw = getpwnam("postgres");
	if (!pw)
		pw = getpwnam("nobody");
	if (!pw)
		return ota_error_set(OTA_ERROR, "running as root and there is no postgres or nobody user");
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 0;
}

/* Run bindir/argv[0] as the cluster's user, output appended to DIR/log. */
static int run(struct pgcluster *pg, char *const argv[])
{
	char prog[400], log[200];
	uid_t uid;
	gid_t gid;
	int status;
	pid_t pid;

	if (cluster_user(&uid, &gid) < 0)
		return OTA_ERROR;
	snprintf(prog, sizeof(prog), "%s/%s", pg->bindir, argv[0]);
	snprintf(log, sizeof(log), "%s/commands.log", pg->dir);
	pid = fork();
	if (pid < 0)
		return ota_error_set(OTA_ERROR, "fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (geteuid() == 0 && (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0))
			_exit(126);
		execv(prog, argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return ota_error_set(OTA_ERROR, "%s failed (status %d); see %s", prog, status, log);
	return 0;
}

static void stop_and_remove(struct pgcluster *pg)
{
	char data[200];
	char *const argv[] = { "pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "60", "stop", NULL };
	char *const rm[] = { "rm", "-rf", pg->dir, NULL };
	pid_t pid;

	snprintf(data, sizeof(data), "%s/data", pg->dir);
	if (access(data, F_OK) == 0)
		run(pg, argv);
	pid = fork();
	if (pid == 0) {
		execvp("rm", rm);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

/*
 * The watchdog: waits for EOF on the pipe (the test stopped it, exited or
 * died), then stops the cluster.  It ignores the signals a terminal or
 * test runner sends the whole process group, so it outlives the test.
 */
static int start_watchdog(struct pgcluster *pg)
{
	int fds[2];
	char c;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return ota_error_set(OTA_ERROR, "pipe: %s", strerror(errno));
	pg->watchdog = fork();
	if (pg->watchdog < 0)
		return ota_error_set(OTA_ERROR, "fork: %s", strerror(errno));
	if (pg->watchdog == 0) {
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		close(fds[1]);
		while (read(fds[0], &c, 1) < 0 && errno == EINTR)
			;
		stop_and_remove(pg);
		_exit(0);
	}
	close(fds[0]);
	pg->watch_fd = fds[1];
	return 0;
}

static void print_log_tail(const struct pgcluster *pg, const char *name)
{
	char path[200], line[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", pg->dir, name);
	if (!(f = fopen(path, "r")))
		return;
	fprintf(stderr, "---- %s\n", path);
	while (fgets(line, sizeof(line), f))
		fputs(line, stderr);
	fclose(f);
}

static void server_options(const struct pgcluster *pg, char *opts, size_t cap)
{
	snprintf(opts, cap, "-k %s -p %d -c listen_addresses= -c max_connections=50%s", pg->dir, PG_PORT,
		 pg->durable ? "" : " -c fsync=off -c full_page_writes=off");
}

int pgcluster_start(struct pgcluster *pg, int durable)
{
	const char *tmp = getenv("TMPDIR");
	char data[200], opts[400], log[200];
	uid_t uid;
	gid_t gid;
	int rc;

	memset(pg, 0, sizeof(*pg));
	pg->watch_fd = -1;
	pg->durable = durable;
	if (!find_bindir(pg))
		return 1;
	if (cluster_user(&uid, &gid) < 0)
		return OTA_ERROR;
	snprintf(pg->dir, sizeof(pg->dir), "%s/otacd-pg-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(pg->dir))
		return ota_error_set(OTA_ERROR, "mkdtemp %s: %s", pg->dir, strerror(errno));
	if (chown(pg->dir, uid, gid) < 0)
		return ota_error_set(OTA_ERROR, "chown %s: %s", pg->dir, strerror(errno));
	if ((rc = start_watchdog(pg)) < 0)
		return rc;

	snprintf(data, sizeof(data), "%s/data", pg->dir);
	snprintf(log, sizeof(log), "%s/postgres.log", pg->dir);
	server_options(pg, opts, sizeof(opts));
	{
		char *const initdb[] = { "initdb", "-D", data, "-U", "otacd", "-A", "trust", "-E", "UTF8",
					 "--locale=C", "--no-sync", NULL };
		char *const start[] = { "pg_ctl", "-D", data, "-l", log, "-o", opts, "-w", "-t", "120", "start", NULL };
		if ((rc = run(pg, initdb)) < 0 || (rc = run(pg, start)) < 0) {
			print_log_tail(pg, "commands.log");
			print_log_tail(pg, "postgres.log");
			pgcluster_stop(pg);
			return rc;
		}
	}
	snprintf(pg->url, sizeof(pg->url), "postgresql://otacd@/postgres?host=%s&port=%d", pg->dir, PG_PORT);
	return 0;
}

int pgcluster_restart(struct pgcluster *pg)
{
	char data[200], opts[400], log[200];

	snprintf(data, sizeof(data), "%s/data", pg->dir);
	snprintf(log, sizeof(log), "%s/postgres.log", pg->dir);
	server_options(pg, opts, sizeof(opts));
	{
		char *const restart[] = { "pg_ctl", "-D", data, "-l", log, "-o", opts, "-m", "fast",
					  "-w", "-t", "120", "restart", NULL };
		return run(pg, restart);
	}
}

void pgcluster_stop(struct pgcluster *pg)
{
	if (pg->watch_fd < 0)
		return;
	close(pg->watch_fd);
	pg->watch_fd = -1;
	while (waitpid(pg->watchdog, NULL, 0) < 0 && errno == EINTR)
		;
}
