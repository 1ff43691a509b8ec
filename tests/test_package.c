/*
 * test_package.c - otacd as an operator runs it: under systemd's readiness
 * protocol, under its unit's system-call filter, and as the installed
 * Debian package (docs/operations.md).
 *
 * systemd is not PID 1 where the suite runs, so nothing here starts a unit.
 * Instead each test reproduces one promise of otacd.service with the real
 * parts: a NOTIFY_SOCKET datagram socket as systemd binds one; the unit
 * file's own SystemCallFilter= groups, expanded by `systemd-analyze
 * syscall-filter` and loaded with libseccomp before exec'ing otacd; and
 * `systemd-analyze verify` on the unit files.  The installed package
 * (.ci/run builds it with `make deb` and installs it before `make check`)
 * is started as the otacd user and must answer; without it that test says
 * how to install it and skips.
 *
 * PACKAGE_ONLY=name runs one test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <grp.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "../orchestrator/sdnotify.h"
#include "harness.h"

/* ---- starting otacd the way a service manager does --------------------- */

struct start {
	const char *otacd;        /* the program (default $OTACD_BIN/otacd) */
	const char *config;       /* --config FILE or NULL */
	const char *notify;       /* NOTIFY_SOCKET for the child, or NULL */
	scmp_filter_ctx filter;   /* loaded in the child before exec, or NULL */
	uid_t uid;                /* run as this user (0: as we are) */
	gid_t gid;
};

/* Every process group spawn() made: a failed assertion leaves its test at
 * once, so what it started is killed when the binary exits. */
static pid_t spawned[16];
static size_t nspawned;

static void kill_spawned(void)
{
	for (size_t i = 0; i < nspawned; i++)
		if (waitpid(spawned[i], NULL, WNOHANG) == 0) /* still ours, still running */
			kill(-spawned[i], SIGKILL);
}

/* Fork argv as a service manager would start it by st (its own process
 * group, output to log); the child's pid. */
static pid_t spawn(const char *const *argv, const struct start *st, const char *log)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid > 0 && nspawned < OTA_ARRAY_SIZE(spawned)) {
		if (!nspawned)
			atexit(kill_spawned);
		spawned[nspawned++] = pid;
	}
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		setpgid(0, 0);
		if (st->notify)
			setenv("NOTIFY_SOCKET", st->notify, 1);
		else
			unsetenv("NOTIFY_SOCKET");
		if (st->uid && (setgroups(0, NULL) < 0 || setgid(st->gid) < 0 || setuid(st->uid) < 0))
			_exit(126);
		/* the filter outlives exec (libseccomp sets no_new_privs first,
		 * as NoNewPrivileges=yes does) */
		if (st->filter && seccomp_load(st->filter) < 0)
			_exit(125);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

/*
 * Fork otacd with st's environment on d->dir/state, and wait (up to 60 s)
 * for the URL it writes once its API listener is bound.  Nothing here polls
 * the API: callers decide what "ready" must mean.
 */
static void start_otacd(struct daemon *d, const struct start *st)
{
	char *state = xasprintf("%s/state", d->dir);
	char *urlfile = xasprintf("%s/otacd.url", state);
	char *log = xasprintf("%s/otacd.log", d->dir);
	char *own = h_bin("otacd");
	const char *otacd = st->otacd ? st->otacd : own;
	const char *argv[12];
	struct buf b = BUF_INIT;
	int n = 0;

	assert_int_equal(mkdir(state, 0700), 0);
	if (st->uid)
		assert_int_equal(chown(state, st->uid, st->gid), 0);
	argv[n++] = otacd;
	argv[n++] = "--state-dir";
	argv[n++] = state;
	if (st->config) {
		argv[n++] = "--config";
		argv[n++] = st->config;
	}
	argv[n++] = "--listen";
	argv[n++] = "127.0.0.1:0";
	argv[n++] = "--device-listen";
	argv[n++] = "127.0.0.1:0";
	argv[n] = NULL;

	d->pid = spawn(argv, st, log);
	for (int i = 0; i < 6000 && !d->url; i++) {
		int status;
		if (ota_read_file(&b, urlfile, 4096) == 0 && strchr(buf_cstr(&b), '\n')) {
			*strchr(b.ptr, '\n') = '\0';
			d->url = buf_detach(&b);
			break;
		}
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			d->pid = 0;
			if (WIFSIGNALED(status))
				fail_msg("otacd was killed at start by signal %d (%s); see %s", WTERMSIG(status),
					 WTERMSIG(status) == SIGSYS ? "a call outside the filter" : "?", log);
			fail_msg("otacd exited at start with status %d; see %s", WEXITSTATUS(status), log);
		}
		h_msleep(10);
	}
	if (!d->url)
		fail_msg("otacd wrote no URL in 60 s; see %s", log);
	{
		/* the token, and what h_register_devices needs: the device
		 * API's URL (written before the API's) and the fleet key */
		char *tok = xasprintf("%s/admin.token", state);
		char *dev = xasprintf("%s/otacd-device.url", state);
		char *key = xasprintf("%s/fleet.key", state);
		assert_int_equal(ota_read_file(&b, tok, 4096), 0);
		*strchr(b.ptr, '\n') = '\0';
		d->token = buf_detach(&b);
		assert_int_equal(ota_read_file(&b, dev, 4096), 0);
		*strchr(b.ptr, '\n') = '\0';
		d->device_url = buf_detach(&b);
		assert_int_equal(ota_read_file(&b, key, 4096), 0);
		d->fleet_key = buf_detach(&b);
		free(key);
		free(dev);
		free(tok);
	}
	buf_release(&b);
	free(own);
	free(log);
	free(urlfile);
	free(state);
}

/* Stop what start_otacd started: SIGTERM to otacd, then SIGKILL to what is
 * left of its process group (local agents), then the state directory. */
static void stop_otacd(struct daemon *d)
{
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		waitpid(d->pid, NULL, 0);
		kill(-d->pid, SIGKILL);
		d->pid = 0;
	}
	h_cleanup(d);
}

/* ---- readiness ---------------------------------------------------------- */

/* A datagram socket bound where NOTIFY_SOCKET will point, as systemd's. */
static int notify_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* The next notification, waiting up to ms; NULL when none came (free it). */
static char *notify_next(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char msg[4096];
	ssize_t n;

	if (poll(&p, 1, ms) != 1)
		return NULL;
	n = recv(fd, msg, sizeof(msg) - 1, 0);
	if (n < 0)
		return NULL;
	msg[n] = '\0';
	return xstrdup(msg);
}

/* Does the notification carry the line "KEY=..." (key with its '=')? */
static int notify_has(const char *msg, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (!strncmp(p, line, n))
			return 1;
	return 0;
}

/*
 * READY=1 is what lets systemd start the units ordered after otacd: when
 * it arrives, the API and the device API must already answer (no retry
 * here), and the URL it names must be the API's.  Before it, none was
 * sent.  On SIGTERM otacd says STOPPING=1.
 */
static void ready_is_sent_once_the_api_and_device_api_answer(void **state)
{
	struct daemon d;
	struct start st = { 0 };
	char *sock, *msg;
	int fd;
	json_t *h = NULL;

	h_init(&d, NULL);
	sock = xasprintf("%s/notify", d.dir);
	fd = notify_socket(sock);
	st.notify = sock;
	start_otacd(&d, &st);

	msg = notify_next(fd, 60000);
	assert_non_null(msg);
	/* the first message is READY: otacd sends nothing earlier */
	assert_true(notify_has(msg, "READY=1"));
	assert_int_equal(h_get(&d, "/api/v1/health", &h), 200);
	json_decref(h);
	{
		char *status = xasprintf("STATUS=listening on %s", d.url);
		assert_true(notify_has(msg, status));
		free(status);
	}
	{
		/* the device listener is up as well */
		struct httpc_response r;
		char *url = xasprintf("%s/metrics", d.device_url);
		assert_int_equal(httpc_request(&r, "GET", url, NULL, NULL, NULL, 0, 10000), 0);
		assert_int_equal(r.status, 200);
		httpc_response_release(&r);
		free(url);
	}
	free(msg);

	kill(d.pid, SIGTERM);
	msg = notify_next(fd, 60000);
	assert_non_null(msg);
	assert_true(notify_has(msg, "STOPPING=1"));
	free(msg);
	waitpid(d.pid, NULL, 0);
	d.pid = 0;
	close(fd);
	free(sock);
	stop_otacd(&d);
}

/*
 * The sender itself: to a socket path and to an abstract name ("@..."),
 * nothing (and no error) without NOTIFY_SOCKET, an error naming the value
 * for one that is neither, and for a socket nobody listens on.
 */
static void sdnotify_reaches_path_and_abstract_sockets_and_says_why_not(void **state)
{
	char *dir = h_tmpdir(), *path = xasprintf("%s/notify", dir), *abstract, *msg;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct buf out = BUF_INIT;
	int fd = notify_socket(path), afd;

	setenv("NOTIFY_SOCKET", path, 1);
	assert_int_equal(sdnotify_send("READY=1\nSTATUS=one"), 0);
	msg = notify_next(fd, 10000);
	assert_non_null(msg);
	assert_string_equal(msg, "READY=1\nSTATUS=one");
	free(msg);

	abstract = xasprintf("@otacd-test-%ld", (long)getpid());
	afd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memcpy(sa.sun_path + 1, abstract + 1, strlen(abstract) - 1);
	assert_int_equal(bind(afd, (struct sockaddr *)&sa,
			      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(abstract))), 0);
	setenv("NOTIFY_SOCKET", abstract, 1);
	assert_int_equal(sdnotify_send("STOPPING=1"), 0);
	msg = notify_next(afd, 10000);
	assert_non_null(msg);
	assert_string_equal(msg, "STOPPING=1");
	free(msg);

	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(sdnotify_send("READY=1"), 0);
	assert_null(notify_next(fd, 100)); /* nothing was sent anywhere */
	setenv("NOTIFY_SOCKET", "relative/sock", 1);
	assert_true(sdnotify_send("READY=1") < 0);
	assert_non_null(strstr(ota_error_last(), "NOTIFY_SOCKET=relative/sock"));
	close(fd);
	unlink(path);
	setenv("NOTIFY_SOCKET", path, 1); /* nobody listens there now */
	assert_true(sdnotify_send("READY=1") < 0);
	unsetenv("NOTIFY_SOCKET");

	close(afd);
	h_sh(&out, "rm -rf '%s'", dir);
	buf_release(&out);
	free(abstract);
	free(path);
	free(dir);
}

/* ---- the unit's system-call filter -------------------------------------- */

/* Add the system calls of one systemd-analyze name (a call or @group,
 * nested groups followed) to allow; seen guards against cycles. */
static void filter_expand(const char *name, struct strvec *allow, struct strvec *seen)
{
	struct buf out = BUF_INIT;
	char *line, *save = NULL;

	if (name[0] != '@') {
		strvec_push(allow, name);
		return;
	}
	for (size_t i = 0; i < seen->n; i++)
		if (!strcmp(seen->v[i], name))
			return;
	strvec_push(seen, name);
	if (h_sh(&out, "systemd-analyze syscall-filter '%s'", name) != 0)
		fail_msg("systemd-analyze syscall-filter %s: %s", name, buf_cstr(&out));
	for (line = strtok_r(out.ptr, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		line += strspn(line, " \t");
		if (!*line || *line == '#' || !strcmp(line, name))
			continue;
		filter_expand(line, allow, seen);
	}
	buf_release(&out);
}

/*
 * The filter otacd.service puts otacd under, read from the unit file
 * itself: its SystemCallFilter= lines (allow lists; a "~" deny list is
 * refused here, the unit has none), plus what systemd.exec(5) says systemd
 * always permits (@default, execve, exit, exit_group, getrlimit,
 * rt_sigreturn, sigreturn).  A refused call kills the process instead of
 * the unit's EPERM: any call outside the list shows, not only those whose
 * failure otacd would notice.
 */
static scmp_filter_ctx unit_filter(const char *unit_path, size_t *ncalls)
{
	struct buf text = BUF_INIT;
	struct strvec allow = STRVEC_INIT, seen = STRVEC_INIT;
	static const char *const always[] = { "@default", "execve", "exit", "exit_group", "getrlimit",
					      "rt_sigreturn", "sigreturn" };
	char *line, *save = NULL;
	scmp_filter_ctx ctx;
	int lines = 0;

	assert_int_equal(ota_read_file(&text, unit_path, 1 << 20), 0);
	for (line = strtok_r(text.ptr, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *word, *wsave = NULL;
		if (strncmp(line, "SystemCallFilter=", 17))
			continue;
		lines++;
		for (word = strtok_r(line + 17, " \t", &wsave); word; word = strtok_r(NULL, " \t", &wsave)) {
			if (word[0] == '~')
				fail_msg("%s: a deny list (%s): extend unit_filter", unit_path, word);
			filter_expand(word, &allow, &seen);
		}
	}
	assert_true(lines > 0);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(always); i++)
		filter_expand(always[i], &allow, &seen);
#ifdef __SANITIZE_ADDRESS__
	/* make asan: LeakSanitizer stops the world with ptrace when a
	 * process exits; that call is the sanitizer's, not otacd's */
	filter_expand("ptrace", &allow, &seen);
#endif

	ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	assert_non_null(ctx);
	*ncalls = 0;
	for (size_t i = 0; i < allow.n; i++) {
		int nr = seccomp_syscall_resolve_name(allow.v[i]);
		if (nr == __NR_SCMP_ERROR || nr < 0)
			continue; /* not a call of this architecture (e.g. arm_fadvise64_64) */
		assert_int_equal(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), 0);
		(*ncalls)++;
	}
	strvec_clear(&allow);
	strvec_clear(&seen);
	buf_release(&text);
	return ctx;
}

/*
 * otacd under exactly the system calls its unit allows: it starts, takes a
 * pipeline, its local agents (children, under the same filter) check the
 * tree out, run the steps in their PID namespaces and upload an artifact,
 * the run passes, a run of a repository's pipeline passes (its git helper
 * is a child under the same filter), devices register on the device API, and a SIGTERM stops
 * it cleanly (status 0).  Any call outside the list would have killed the
 * process that made it.
 */
static void otacd_runs_a_pipeline_under_the_units_syscall_filter(void **state)
{
	struct daemon d;
	struct start st = { 0 };
	char *unit = xasprintf("%s/dist/systemd/otacd.service.in", getenv("OTACD_SRC") ? getenv("OTACD_SRC") : ".");
	size_t ncalls = 0;
	int64_t run;
	const char *final;
	char **creds, *cfg = NULL;
	int status = -1;

	st.filter = unit_filter(unit, &ncalls);
	/* @system-service is a few hundred calls; far fewer means the
	 * expansion went wrong and the test would prove little */
	assert_true(ncalls > 250);
	h_init(&d, NULL);
	/* a repository too, so the git helper (otacd-git, a child of otacd)
	 * fetches, reads and archives under the same filter */
	{
		struct buf out = BUF_INIT;
		char *text = xasprintf("repositories:\n  - { name: acme/fw, url: \"%s/src\", secret: s3cret-0123456789 }\n", d.dir);
		cfg = xasprintf("%s/config.yml", d.dir);
		st.config = cfg;
		assert_int_equal(ota_write_file_atomic(cfg, text, strlen(text), 0600), 0);
		free(text);
		assert_int_equal(h_sh(&out, "git init -q -b main '%s/src' && cd '%s/src' && mkdir .otacd && "
				      "printf 'name: fw\\nstages:\\n  - { name: s, steps: [ \"test -s fw.c\" ] }\\n' > .otacd/pipeline.yml && "
				      "echo 'int main(void) { return 0; }' > fw.c && git add -A && "
				      "git -c user.name=t -c user.email=t@t commit -qm fw", d.dir, d.dir), 0);
		buf_release(&out);
	}
	start_otacd(&d, &st);
	for (int i = 0; i < 500; i++) {
		json_t *h = NULL;
		long code = h_get(&d, "/api/v1/health", &h);
		json_decref(h);
		if (code == 200)
			break;
		h_msleep(10);
	}
	run = h_trigger(&d, "name: sandboxed\n"
			    "stages:\n"
			    "  - { name: build, steps: [ 'echo firmware > app.bin', 'sh -c \"id; ls /proc/self\" > /dev/null' ],"
			    " artifacts: [app.bin] }\n"
			    "  - { name: test, needs: [build], steps: [ 'test -s /etc/hostname || true', 'sleep 0.1' ] }\n");
	final = h_wait_run(&d, run, 120000);
	if (strcmp(final, "passed")) {
		struct buf log = BUF_INIT;
		h_sh(&log, "cat '%s/otacd.log'", d.dir);
		fail_msg("run %lld: %s under the filter; otacd's log:\n%s", (long long)run, final, buf_cstr(&log));
	}
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 1);
	{
		json_t *req = json_pack("{ss ss}", "repo", "acme/fw", "ref", "main"), *ans = NULL;
		assert_int_equal(h_post(&d, "/api/v1/triggers", req, &ans), 201);
		run = json_integer_value(json_object_get(ans, "id"));
		final = h_wait_run(&d, run, 120000);
		if (strcmp(final, "passed")) {
			struct buf log = BUF_INIT;
			h_sh(&log, "cat '%s/otacd.log'", d.dir);
			fail_msg("run %lld from the repository: %s under the filter; otacd's log:\n%s", (long long)run, final,
				 buf_cstr(&log));
		}
		json_decref(req);
		json_decref(ans);
	}
	creds = h_register_devices(&d, "sandboxed", 3);
	for (int i = 0; i < 3; i++)
		free(creds[i]);
	free(creds);

	kill(d.pid, SIGTERM);
	assert_int_equal(waitpid(d.pid, &status, 0), d.pid);
	d.pid = 0;
	if (WIFSIGNALED(status))
		fail_msg("otacd was killed by signal %d (SIGSYS: a call outside the unit's filter)", WTERMSIG(status));
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	seccomp_release(st.filter);
	free(unit);
	free(cfg);
	stop_otacd(&d);
}

/* ---- unit files and completion ------------------------------------------ */

/* The units as `make install` writes them, for SBINDIR=$OTACD_BIN: both
 * pass `systemd-analyze verify` (which also checks the programs exist and
 * are executable) and `systemd-analyze security` rates their sandboxes
 * "OK".  Their man pages are checked on the installed package. */
static void units_pass_systemd_analyze_verify(void **state)
{
	char *dir = h_tmpdir(), *bin = h_bin("otacd");
	const char *src = getenv("OTACD_SRC") ? getenv("OTACD_SRC") : ".";
	struct buf out = BUF_INIT;
	int rc;

	*strrchr(bin, '/') = '\0';
	rc = h_sh(&out,
		  "set -e; for u in otacd.service otacd-agent@.service; do"
		  " sed -e 's|@SBINDIR@|%s|g' -e 's|@SYSCONFDIR@|/etc|g' '%s/dist/systemd/'$u.in > '%s/'$u; done;"
		  " cd '%s' && systemd-analyze verify --man=no otacd.service otacd-agent@rig-1.service 2>&1",
		  bin, src, dir, dir);
	if (rc != 0 || out.len)
		fail_msg("systemd-analyze verify (exit %d):\n%s", rc, buf_cstr(&out));
	/* and their sandboxes rate "OK" (exposure <= 3.0 of 10) */
	for (int i = 0; i < 2; i++) {
		const char *unit = i ? "otacd-agent@rig-1.service" : "otacd.service";
		const char *at;
		double exposure = 10;
		rc = h_sh(&out, "systemd-analyze security --offline=true '%s/%s'", dir,
			  i ? "otacd-agent@.service" : unit);
		at = strstr(buf_cstr(&out), "Overall exposure level for ");
		if (rc != 0 || !at || sscanf(strchr(at, ':') + 1, "%lf", &exposure) != 1 || exposure > 3.0)
			fail_msg("%s: exposure %.1f (exit %d):\n%s", unit, exposure, rc, buf_cstr(&out));
	}
	h_sh(&out, "rm -rf '%s'", dir);
	buf_release(&out);
	free(bin);
	free(dir);
}

/* Bash completion offers otactl's commands and each command's words. */
static void otactl_completion_offers_commands_and_subcommands(void **state)
{
	const char *src = getenv("OTACD_SRC") ? getenv("OTACD_SRC") : ".";
	struct buf out = BUF_INIT;

	if (access("/usr/share/bash-completion/bash_completion", R_OK)) {
		skip(); /* bash-completion (Debian) is not installed: .ci/run installs it */
		return;
	}
#define COMPLETE(line, cword)                                                                                    \
	h_sh(&out,                                                                                               \
	     "bash -c '. /usr/share/bash-completion/bash_completion; . %s/dist/completion/otactl;"              \
	     " COMP_WORDS=(" line "); COMP_CWORD=" cword "; COMP_LINE=\"" line "\"; COMP_POINT=${#COMP_LINE};" \
	     " _otactl; echo \"${COMPREPLY[*]}\"'",                                                              \
	     src)
	assert_int_equal(COMPLETE("otactl ro", "1"), 0);
	assert_string_equal(buf_cstr(&out), "rollout rollback\n");
	assert_int_equal(COMPLETE("otactl --json agents a", "3"), 0);
	assert_string_equal(buf_cstr(&out), "add\n");
	assert_int_equal(COMPLETE("otactl fleet ca i", "3"), 0);
	assert_string_equal(buf_cstr(&out), "init import\n");
	assert_int_equal(COMPLETE("otactl runs --state p", "3"), 0);
	assert_string_equal(buf_cstr(&out), "passed\n");
#undef COMPLETE
	buf_release(&out);
}

/* ---- the installed package ---------------------------------------------- */

static const char *const installed_files[] = {
	"/usr/sbin/otacd", "/usr/sbin/otacd-agent", "/usr/sbin/otacd-git", "/usr/sbin/otacd-reaper",
	"/usr/bin/otactl", "/usr/bin/otacd-fleetsim",
	"/usr/bin/otacd-device", "/lib/systemd/system/otacd.service", "/lib/systemd/system/otacd-agent@.service",
	"/usr/share/man/man8/otacd.8.gz", "/usr/share/man/man8/otacd-agent.8.gz",
	"/usr/share/man/man8/otacd-device.8.gz", "/usr/share/man/man1/otactl.1.gz",
	"/usr/share/man/man1/otacd-fleetsim.1.gz", "/usr/share/man/man5/otacd.yml.5.gz",
	"/usr/share/bash-completion/completions/otactl", "/usr/share/doc/otacd/operations.md.gz",
};

/*
 * The way docs/operations.md adds an agent: `otactl agents add` (the
 * installed otactl) prints a token; /usr/sbin/otacd-agent runs with it from
 * a file, as a user other than otacd (nobody, standing in for
 * otacd-agent@'s DynamicUser), under otacd-agent@.service's own filter; a
 * pipeline for its labels passes.
 */
static void run_a_pipeline_on_a_packaged_agent(struct daemon *d)
{
	struct passwd *nobody = getpwnam("nobody");
	struct start st = { 0 };
	struct buf out = BUF_INIT;
	char *dir = xasprintf("%s/agent", d->dir), *tokfile = xasprintf("%s/token", dir);
	char *work = xasprintf("%s/work", dir), *log = xasprintf("%s/agent.log", d->dir), *token;
	const char *argv[] = { "/usr/sbin/otacd-agent", "--url", d->url, "--name", "pkg-1", "--labels", "pkg",
			       "--token-file", tokfile, "--workdir", work, NULL };
	size_t ncalls = 0;
	pid_t agent;
	int64_t run;
	const char *final;

	assert_non_null(nobody);
	if (h_sh(&out, "/usr/bin/otactl --url '%s' --token '%s' agents add pkg-1 --labels pkg", d->url, d->token))
		fail_msg("otactl agents add: %s", buf_cstr(&out));
	token = h_token_line(&out);
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_int_equal(ota_write_file_atomic(tokfile, token, strlen(token), 0600), 0);
	if (getuid() == 0) {
		assert_int_equal(chown(dir, nobody->pw_uid, nobody->pw_gid), 0);
		assert_int_equal(chown(tokfile, nobody->pw_uid, nobody->pw_gid), 0);
		st.uid = nobody->pw_uid;
		st.gid = nobody->pw_gid;
	}
	st.filter = unit_filter("/lib/systemd/system/otacd-agent@.service", &ncalls);
	agent = spawn(argv, &st, log);
	run = h_trigger(d, "name: packaged\nstages:\n  - { name: build, agent: { labels: [pkg] },"
			   " steps: [ 'echo ok > out.bin', 'id -u' ], artifacts: [out.bin] }\n");
	final = h_wait_run(d, run, 120000);
	if (strcmp(final, "passed")) {
		h_sh(&out, "cat '%s' '%s/otacd.log'", log, d->dir);
		fail_msg("run %lld: %s; the agent's and otacd's logs:\n%s", (long long)run, final, buf_cstr(&out));
	}
	{
		int status = 0;
		kill(agent, SIGTERM);
		assert_int_equal(waitpid(agent, &status, 0), agent);
		if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS)
			fail_msg("otacd-agent made a call outside otacd-agent@.service's filter");
		kill(-agent, SIGKILL);
	}
	seccomp_release(st.filter);
	free(token);
	free(log);
	free(work);
	free(tokfile);
	free(dir);
	buf_release(&out);
}

/*
 * The package as installed: its files, the otacd system user, the
 * configuration readable by root and that user only, units that verify
 * with their man pages, and /usr/sbin/otacd started as the unit starts it
 * (as otacd, with the packaged configuration, under the installed unit's
 * system-call filter, with a NOTIFY_SOCKET): READY=1 comes, the API
 * answers, the installed otactl reads from it, the version is the tree's;
 * and an agent added the documented way runs a pipeline to the end.
 */
static void installed_package_starts_as_its_user_and_answers(void **state)
{
	struct buf out = BUF_INIT;
	struct passwd *pw;
	struct stat sb;
	struct daemon d;
	struct start st = { 0 };
	char *sock, *msg;
	size_t ncalls = 0;
	int fd;

	if (h_sh(&out, "dpkg-query -W -f '${Status} ${Version}' otacd 2>/dev/null") != 0 ||
	    strncmp(buf_cstr(&out), "install ok installed ", 21)) {
		fprintf(stderr, "otacd's package is not installed: `make deb && apt-get install "
				"./build/deb/otacd_*.deb` (.ci/run does); skipped\n");
		buf_release(&out);
		skip();
		return;
	}
	assert_string_equal(buf_cstr(&out) + 21, OTACD_VERSION);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(installed_files); i++)
		if (access(installed_files[i], R_OK))
			fail_msg("%s: %s", installed_files[i], strerror(errno));
	pw = getpwnam("otacd");
	assert_non_null(pw);
	assert_true(pw->pw_uid > 0 && pw->pw_uid < 1000); /* a system user */
	assert_string_equal(pw->pw_dir, "/var/lib/otacd");
	assert_int_equal(stat("/etc/otacd/config.yml", &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0640);
	assert_int_equal(sb.st_uid, 0);
	assert_int_equal(sb.st_gid, pw->pw_gid);
	if (h_sh(&out, "systemd-analyze verify /lib/systemd/system/otacd.service"
		       " /lib/systemd/system/otacd-agent@rig-1.service 2>&1") != 0 || out.len)
		fail_msg("systemd-analyze verify on the installed units:\n%s", buf_cstr(&out));
	assert_int_equal(h_sh(&out, "/usr/sbin/otacd --version"), 0);
	assert_string_equal(buf_cstr(&out), "otacd " OTACD_VERSION "\n");

	h_init(&d, NULL);
	assert_int_equal(chmod(d.dir, 0755), 0); /* the otacd user walks into it */
	sock = xasprintf("%s/notify", d.dir);
	fd = notify_socket(sock);
	assert_int_equal(chown(sock, pw->pw_uid, pw->pw_gid), 0);
	st.otacd = "/usr/sbin/otacd";
	st.config = "/etc/otacd/config.yml";
	st.notify = sock;
	st.filter = unit_filter("/lib/systemd/system/otacd.service", &ncalls);
	if (getuid() == 0) {
		st.uid = pw->pw_uid;
		st.gid = pw->pw_gid;
	}
	start_otacd(&d, &st);
	msg = notify_next(fd, 60000);
	assert_non_null(msg);
	assert_true(notify_has(msg, "READY=1"));
	free(msg);
	{
		json_t *h = NULL;
		assert_int_equal(h_get(&d, "/api/v1/health", &h), 200);
		json_decref(h);
	}
	if (h_sh(&out, "/usr/bin/otactl --url '%s' --token '%s' runs", d.url, d.token) != 0)
		fail_msg("the installed otactl: %s", buf_cstr(&out));
	if (h_sh(&out, "/usr/bin/otactl --url '%s' --token '%s' version", d.url, d.token) != 0 ||
	    !strstr(buf_cstr(&out), OTACD_VERSION))
		fail_msg("otactl version: %s", buf_cstr(&out));
	run_a_pipeline_on_a_packaged_agent(&d);
	close(fd);
	free(sock);
	seccomp_release(st.filter);
	stop_otacd(&d);
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ready_is_sent_once_the_api_and_device_api_answer),
		cmocka_unit_test(sdnotify_reaches_path_and_abstract_sockets_and_says_why_not),
		cmocka_unit_test(otacd_runs_a_pipeline_under_the_units_syscall_filter),
		cmocka_unit_test(units_pass_systemd_analyze_verify),
		cmocka_unit_test(otactl_completion_offers_commands_and_subcommands),
		cmocka_unit_test(installed_package_starts_as_its_user_and_answers),
	};
	cmocka_set_test_filter(getenv("PACKAGE_ONLY"));
	return cmocka_run_group_tests_name("package", tests, NULL, NULL);
}
