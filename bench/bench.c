/*
 * bench.c - otacd's benchmarks (make bench).  Figures are printed, never
 * asserted: machines here are noisy, so every figure comes with a baseline
 * measured in the same invocation on the same machine.
 *
 *   pickup     trigger -> first step running, p50/p99 over N runs, against
 *              the raw cost of starting the same step with fork/exec.
 *              The step creates a file; the bench sees it with inotify.
 *   throughput runs of 3 trivial jobs through 2 local agents, jobs/s,
 *              against the raw fork/exec rate of `sh -c true`.
 *   memory     otacd's resident set idle and after many finished runs.
 *
 * Usage: otacd-bench BINDIR [pickup_runs throughput_runs memory_runs]
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "../common/util.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return v[i];
}

struct daemon {
	pid_t pid;
	char *dir, *url, *token;
};

static void start_daemon(struct daemon *d, const char *bindir)
{
	char *otacd = xasprintf("%s/otacd", bindir);
	char *state = xasprintf("%s/state", d->dir);
	char *urlfile = xasprintf("%s/otacd.url", state);
	char *tokfile = xasprintf("%s/admin.token", state);
	struct buf b = BUF_INIT;

	d->pid = fork();
	if (d->pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		dup2(fd, 2);
		execl(otacd, otacd, "--state-dir", state, "--listen", "127.0.0.1:0", "--local-agents", "2", (char *)NULL);
		_exit(127);
	}
	while (ota_read_file(&b, urlfile, 4096) < 0)
		usleep(10000);
	*strchr(b.ptr, '\n') = '\0';
	d->url = buf_detach(&b);
	while (ota_read_file(&b, tokfile, 4096) < 0)
		usleep(10000);
	*strchr(b.ptr, '\n') = '\0';
	d->token = buf_detach(&b);
	usleep(300000); /* let the local agents register */
	free(otacd);
	free(state);
	free(urlfile);
	free(tokfile);
}

static int64_t trigger(struct daemon *d, const char *yaml)
{
	char *url = xasprintf("%s/api/v1/runs", d->url);
	json_t *req = json_pack("{ss}", "pipeline", yaml), *ans = NULL;
	long status = 0;
	int64_t id = -1;
	if (httpc_json(&ans, &status, "POST", url, d->token, req, 30000) == 0 && status == 201)
		id = json_integer_value(json_object_get(ans, "id"));
	json_decref(req);
	json_decref(ans);
	free(url);
	return id;
}

static const char *run_state(struct daemon *d, int64_t id)
{
	static char state[16];
	char *url = xasprintf("%s/api/v1/runs/%" PRId64, d->url, id);
	json_t *ans = NULL;
	long status = 0;
	state[0] = '\0';
	if (httpc_json(&ans, &status, "GET", url, d->token, NULL, 30000) == 0 && status == 200)
		snprintf(state, sizeof(state), "%s", json_string_value(json_object_get(ans, "state")));
	json_decref(ans);
	free(url);
	return state;
}

static void wait_all(struct daemon *d, int64_t last)
{
	for (;;) {
		const char *s = run_state(d, last);
		if (!strcmp(s, "passed") || !strcmp(s, "failed") || !strcmp(s, "canceled"))
			return;
		usleep(20000);
	}
}

static long rss_kb(pid_t pid)
{
	char *path = xasprintf("/proc/%d/status", (int)pid);
	struct buf b = BUF_INIT;
	long kb = -1;
	if (ota_read_file(&b, path, 1 << 16) == 0) {
		const char *p = strstr(b.ptr, "VmRSS:");
		if (p)
			kb = strtol(p + 6, NULL, 10);
	}
	buf_release(&b);
	free(path);
	return kb;
}

/* Wait for `name` to be created in the watched directory. */
static int wait_created(int ifd, const char *name)
{
	char evbuf[4096] __attribute__((aligned(8)));
	for (;;) {
		ssize_t n = read(ifd, evbuf, sizeof(evbuf));
		if (n <= 0)
			return -1;
		for (char *p = evbuf; p < evbuf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			if (ev->len && !strcmp(ev->name, name))
				return 0;
			p += sizeof(*ev) + ev->len;
		}
	}
}

static void spawn_wait(const char *cmd)
{
	pid_t pid = fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	waitpid(pid, NULL, 0);
}

int main(int argc, char **argv)
{
	const char *bindir = argc > 1 ? argv[1] : "build/bin";
	int n_pickup = argc > 2 ? atoi(argv[2]) : 200;
	int n_tput = argc > 3 ? atoi(argv[3]) : 1000;
	int n_mem = argc > 4 ? atoi(argv[4]) : 10000;
	struct daemon d = { 0 };
	char tmpl[] = "/tmp/otacd-bench-XXXXXX", *marks;
	double *lat = xcalloc((size_t)n_pickup, sizeof(double)), *raw = xcalloc((size_t)n_pickup, sizeof(double));
	double t0, t_raw, t_otacd;
	int ifd;
	int64_t last = 0;
	long idle_kb, after_kb;

	httpc_global_init();
	d.dir = xstrdup(mkdtemp(tmpl));
	marks = xasprintf("%s/marks", d.dir);
	ota_mkdir_p(marks, 0700);
	start_daemon(&d, bindir);
	printf("otacd bench: %s (2 local agents)\n\n", d.url);

	/* ---- pickup latency ---- */
	ifd = inotify_init1(IN_CLOEXEC);
	inotify_add_watch(ifd, marks, IN_CREATE);
	for (int i = 0; i < n_pickup; i++) {
		char *name = xasprintf("raw-%d", i);
		char *cmd = xasprintf(": > %s/%s", marks, name);
		t0 = now_ms();
		spawn_wait(cmd);
		wait_created(ifd, name);
		raw[i] = now_ms() - t0;
		free(cmd);
		free(name);
	}
	for (int i = 0; i < n_pickup; i++) {
		char *name = xasprintf("run-%d", i);
		char *yaml = xasprintf("name: pickup\nstages:\n  - { name: s, steps: [ { run: ': > %s/%s' } ] }\n", marks, name);
		t0 = now_ms();
		last = trigger(&d, yaml);
		wait_created(ifd, name);
		lat[i] = now_ms() - t0;
		free(yaml);
		free(name);
	}
	wait_all(&d, last);
	qsort(lat, (size_t)n_pickup, sizeof(double), cmp_double);
	qsort(raw, (size_t)n_pickup, sizeof(double), cmp_double);
	printf("pickup: trigger -> first step running, %d runs\n", n_pickup);
	printf("  otacd      p50 %7.2f ms   p99 %7.2f ms\n", pct(lat, (size_t)n_pickup, 0.5), pct(lat, (size_t)n_pickup, 0.99));
	printf("  fork/exec  p50 %7.2f ms   p99 %7.2f ms   (baseline: the same step started directly)\n",
	       pct(raw, (size_t)n_pickup, 0.5), pct(raw, (size_t)n_pickup, 0.99));
	printf("  ratio      p50 %7.1fx   (target: p50 under 10 ms; Buildbot 3.7 here: ~200 ms)\n\n",
	       pct(lat, (size_t)n_pickup, 0.5) / pct(raw, (size_t)n_pickup, 0.5));

	/* ---- throughput ---- */
	t0 = now_ms();
	for (int i = 0; i < n_tput * 3; i++)
		spawn_wait("true");
	t_raw = now_ms() - t0;
	t0 = now_ms();
	for (int i = 0; i < n_tput; i++)
		last = trigger(&d, "name: tput\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n"
				   "  - { name: b, steps: [ { run: 'true' } ] }\n  - { name: c, steps: [ { run: 'true' } ] }\n");
	wait_all(&d, last);
	t_otacd = now_ms() - t0;
	printf("throughput: %d runs x 3 jobs, 2 local agents\n", n_tput);
	printf("  otacd      %8.1f jobs/s  (%.1f s)\n", n_tput * 3 / (t_otacd / 1e3), t_otacd / 1e3);
	printf("  fork/exec  %8.1f /s      (sh -c true, one after another)\n", n_tput * 3 / (t_raw / 1e3));
	printf("  ratio      %8.2f of the raw spawn rate\n\n", (n_tput * 3 / (t_otacd / 1e3)) / (n_tput * 3 / (t_raw / 1e3)));

	/* ---- memory ---- */
	{
		/* a fresh daemon for the idle figure */
		struct daemon idle = { 0 };
		char tmpl2[] = "/tmp/otacd-bench-XXXXXX";
		idle.dir = xstrdup(mkdtemp(tmpl2));
		start_daemon(&idle, bindir);
		usleep(500000);
		idle_kb = rss_kb(idle.pid);
		kill(idle.pid, SIGTERM);
		waitpid(idle.pid, NULL, 0);
		spawn_wait(xasprintf("rm -rf %s", idle.dir));
	}
	for (int i = 0; i < n_mem; i++)
		last = trigger(&d, "name: mem\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n");
	wait_all(&d, last);
	after_kb = rss_kb(d.pid);
	printf("memory: otacd resident set\n");
	printf("  idle                         %6.1f MB  (target under 10 MB; Buildbot master here: ~88 MB)\n", idle_kb / 1024.0);
	printf("  after %d+ finished runs  %6.1f MB\n", n_pickup + n_tput + n_mem, after_kb / 1024.0);

	kill(d.pid, SIGTERM);
	waitpid(d.pid, NULL, 0);
	if (!getenv("OTACD_KEEP"))
		spawn_wait(xasprintf("rm -rf %s", d.dir));
	return 0;
}
