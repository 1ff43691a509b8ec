/*
 * bench.c - otacd's benchmarks (make bench).  Figures are printed, never
 * asserted: machines here are noisy, so every figure comes with a baseline
 * measured in the same invocation on the same machine.
 *
 *   pickup     trigger -> first step running, p50/p99 over N runs, against
 *              the raw cost of starting the same step with fork/exec.
 *              The step creates a file; the bench sees it with inotify.
 *   throughput runs of 3 trivial jobs through 2 local agents, jobs/s,
 *              against the raw rate of fork/exec of `sh -c true` and of
 *              posix_spawn of /bin/true (no shell), one after another.
 *   webhook    push webhook received -> run created -> first step running,
 *              for pushes to a local repository (fetch, read the pipeline at
 *              the commit, check the tree out on the agent), against the
 *              same pipeline triggered through the API (no git at all).
 *   artifacts  ingesting a 64 MB artifact (hash + store) in MB/s, against
 *              `openssl dgst -sha256` of the same file in the same run.
 *   release    signing a release of 4 images (MCUboot images, manifest,
 *              provenance) with a file key and with a SoftHSM2 token.
 *   memory     otacd's resident set idle (split into private and shared
 *              pages, and Pss) and after many finished runs.
 *
 * Usage: otacd-bench BINDIR [pickup_runs throughput_runs memory_runs webhook_pushes]
 *
 * otacd-bench BINDIR --backends [RUNS [SECONDS]] instead compares otacd's
 * database backends in one invocation: otacd on SQLite (its state
 * directory's otacd.db and fleet.db), then on PostgreSQL (database: and
 * fleet_database: naming two databases of a durable cluster started with
 * tests/pgcluster.c, unix socket).  For each: pickup over RUNS (200) runs
 * as above, then wrk on GET /api/v1/runs (the newest page of RUNS runs,
 * read from the database) under 64 connections for SECONDS (3): p50, p99,
 * requests/s; and the ratios PostgreSQL / SQLite.  Needs wrk.
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/webhook.h"
#include "../tests/pgcluster.h"

extern char **environ;

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

static void start_daemon_cfg(struct daemon *d, const char *bindir, const char *config);

static void start_daemon(struct daemon *d, const char *bindir)
{
	start_daemon_cfg(d, bindir, NULL);
}

static void start_daemon_cfg(struct daemon *d, const char *bindir, const char *config)
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
		if (config)
			execl(otacd, otacd, "--state-dir", state, "--listen", "127.0.0.1:0", "--device-listen", "127.0.0.1:0", "--local-agents", "2",
			      "--config", config, (char *)NULL);
		else
			execl(otacd, otacd, "--state-dir", state, "--listen", "127.0.0.1:0", "--device-listen", "127.0.0.1:0", "--local-agents", "2",
			      (char *)NULL);
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

/* Resident memory of pid from /proc/PID/smaps_rollup, in kB. */
struct mem {
	long rss, pss, shared, private_;
};

static struct mem mem_of(pid_t pid)
{
	char *path = xasprintf("/proc/%d/smaps_rollup", (int)pid);
	struct buf b = BUF_INIT;
	struct mem m = { -1, -1, -1, -1 };
	static const char *const keys[] = { "Rss:", "Pss:", "Shared_Clean:", "Shared_Dirty:",
					    "Private_Clean:", "Private_Dirty:" };
	long v[6] = { 0 };

	if (ota_read_file(&b, path, 1 << 16) == 0) {
		for (int i = 0; i < 6; i++) {
			const char *p = strstr(b.ptr, keys[i]);
			v[i] = p ? strtol(p + strlen(keys[i]), NULL, 10) : -1;
		}
		m.rss = v[0];
		m.pss = v[1];
		m.shared = v[2] + v[3];
		m.private_ = v[4] + v[5];
	}
	buf_release(&b);
	free(path);
	return m;
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

/* posix_spawn of a program, no shell: the cheapest way to start a step */
static void spawn_true(void)
{
	char *argv[] = { (char *)"true", NULL };
	pid_t pid;

	if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) == 0)
		waitpid(pid, NULL, 0);
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

static int sh(const char *fmt, ...) OTA_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
	struct buf cmd = BUF_INIT;
	va_list ap;
	int rc;
	va_start(ap, fmt);
	buf_vprintf(&cmd, fmt, ap);
	va_end(ap);
	rc = system(buf_cstr(&cmd));
	buf_release(&cmd);
	return rc;
}

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
	(void)p;
	(void)ctx;
	return size * n;
}

/* POST a GitHub push webhook (libcurl directly: the bench needs its own headers). */
static void post_hook(const char *url, const char *body, const char *delivery, const char *sig)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	char *d = xasprintf("X-GitHub-Delivery: %s", delivery), *s = xasprintf("X-Hub-Signature-256: %s", sig);
	h = curl_slist_append(h, "X-GitHub-Event: push");
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, d);
	h = curl_slist_append(h, s);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_perform(c);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	free(d);
	free(s);
}

static void webhook_bench(const char *bindir, int n)
{
	struct daemon d = { 0 };
	char tmpl[] = "/tmp/otacd-bench-XXXXXX";
	char *marks, *config, *yaml, *work;
	double *hook = xcalloc((size_t)n, sizeof(double)), *api = xcalloc((size_t)n, sizeof(double)), t0;
	int ifd;

	d.dir = xstrdup(mkdtemp(tmpl));
	marks = xasprintf("%s/marks", d.dir);
	work = xasprintf("%s/work", d.dir);
	ota_mkdir_p(marks, 0700);
	yaml = xasprintf("name: fw\nstages:\n  - { name: s, steps: [ { run: ': > %s/$OTACD_COMMIT' } ] }\n", marks);
	config = xasprintf("%s/config.yml", d.dir);
	{
		char *text = xasprintf("repositories:\n  - { name: acme/fw, url: \"%s/origin.git\", secret: bench-secret-0123456789 }\n", d.dir);
		ota_write_file_atomic(config, text, strlen(text), 0600);
		free(text);
	}
	sh("git init -q --bare -b main %s/origin.git && git init -q -b main %s && mkdir -p %s/.otacd && "
	   "printf '%%s' \"$(cat <<'EOT'\n%s\nEOT\n)\" > %s/.otacd/pipeline.yml && cd %s && git add -A && "
	   "git -c user.name=b -c user.email=b@b commit -qm init && git remote add origin %s/origin.git && git push -q origin main",
	   d.dir, work, work, yaml, work, work, d.dir);
	start_daemon_cfg(&d, bindir, config);
	ifd = inotify_init1(IN_CLOEXEC);
	inotify_add_watch(ifd, marks, IN_CREATE);

	for (int i = 0; i < n; i++) {
		struct buf sha = BUF_INIT;
		char *body, *url, sig[65], *sighdr, delivery[40];
		FILE *p;
		char line[64] = "";

		sh("cd %s && git -c user.name=b -c user.email=b@b commit -q --allow-empty -m 'push %d' && git push -q origin main", work, i);
		p = popen(xasprintf("git -C %s rev-parse HEAD", work), "r");
		if (!p || !fgets(line, sizeof(line), p))
			break;
		pclose(p);
		line[strcspn(line, "\n")] = '\0';
		buf_puts(&sha, line);
		body = xasprintf("{\"ref\":\"refs/heads/main\",\"before\":\"0000000000000000000000000000000000000001\","
				 "\"after\":\"%s\",\"repository\":{\"full_name\":\"acme/fw\"},\"pusher\":{\"name\":\"b\"}}", line);
		webhook_hmac_hex("bench-secret-0123456789", body, strlen(body), sig);
		sighdr = xasprintf("sha256=%s", sig);
		snprintf(delivery, sizeof(delivery), "bench-%d", i);
		url = xasprintf("%s/hooks/github", d.url);
		t0 = now_ms();
		post_hook(url, body, delivery, sighdr);
		wait_created(ifd, line);
		hook[i] = now_ms() - t0;
		free(url);
		free(sighdr);
		free(body);
		buf_release(&sha);
	}
	for (int i = 0; i < n; i++) {
		char *name = xasprintf("api-%d", i);
		char *y = xasprintf("name: fw\nstages:\n  - { name: s, steps: [ { run: ': > %s/%s' } ] }\n", marks, name);
		t0 = now_ms();
		trigger(&d, y);
		wait_created(ifd, name);
		api[i] = now_ms() - t0;
		free(y);
		free(name);
	}
	qsort(hook, (size_t)n, sizeof(double), cmp_double);
	qsort(api, (size_t)n, sizeof(double), cmp_double);
	printf("webhook: push webhook -> run -> first step running, %d pushes to a local repository\n", n);
	printf("  webhook    p50 %7.2f ms   p99 %7.2f ms   (fetch, read pipeline at the commit, agent checks the tree out)\n",
	       pct(hook, (size_t)n, 0.5), pct(hook, (size_t)n, 0.99));
	printf("  API        p50 %7.2f ms   p99 %7.2f ms   (baseline: the same pipeline, no git)\n",
	       pct(api, (size_t)n, 0.5), pct(api, (size_t)n, 0.99));
	printf("  git costs  p50 %7.2f ms   (target: webhook p50 under 20 ms)\n\n",
	       pct(hook, (size_t)n, 0.5) - pct(api, (size_t)n, 0.5));
	kill(d.pid, SIGTERM);
	waitpid(d.pid, NULL, 0);
	if (!getenv("OTACD_KEEP"))
		sh("rm -rf %s", d.dir);
	free(hook);
	free(api);
	free(marks);
	free(config);
	free(yaml);
	free(work);
}

static size_t read_file_cb(char *buf, size_t size, size_t n, void *f)
{
	return fread(buf, size, n, f);
}

/* Upload blob (64 MB) as artifact name of job with its digest; ms, or -1. */
static double upload_ms(struct daemon *d, int64_t job, const char *job_token, const char *blob, const char *name,
			const char *sha, long *status)
{
	char *url = xasprintf("%s/api/v1/agent/jobs/%lld/artifacts?name=%s&sha256=%s", d->url, (long long)job,
			      name, sha);
	char *auth = xasprintf("Authorization: Bearer %s", job_token);
	FILE *f = fopen(blob, "rb");
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	double t0 = now_ms(), t;

	h = curl_slist_append(h, auth);
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(c, CURLOPT_READFUNCTION, read_file_cb);
	curl_easy_setopt(c, CURLOPT_READDATA, f);
	curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)67108864);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_perform(c);
	t = now_ms() - t0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	fclose(f);
	free(auth);
	free(url);
	return *status == 201 ? t : -1;
}

/*
 * Ingest against two floors measured on the same file in the same round:
 * `openssl dgst -sha256` (the baseline: hashing alone) and
 * `dd conv=fsync` into the state directory (writing it durably alone, which
 * ingest must also do before it answers).  Three rounds, each with fresh
 * random content (so nothing is deduplicated); medians.
 */
#define INGEST_ROUNDS 3
static void artifact_bench(struct daemon *d)
{
	char *blob = xasprintf("%s/blob64", d->dir), *url = NULL, sha[65] = "", *agent_token = NULL, *job_token = NULL;
	double t_store[INGEST_ROUNDS], t_openssl[INGEST_ROUNDS], t_dd[INGEST_ROUNDS];
	json_t *ans = NULL, *req;
	long status = 0;
	int64_t job = 0;
	double t0;

	/* a job to own the uploads, taken by the bench itself as an agent */
	trigger(d, "name: ingest\nstages:\n  - { name: s, agent: { labels: [bench-only] }, steps: [ { run: 'true' } ] }\n");
	/* registered as agent "bench" (admin), then as that agent */
	url = xasprintf("%s/api/v1/agents", d->url);
	req = json_pack("{ss s[s]}", "name", "bench", "labels", "bench-only");
	if (httpc_json(&ans, &status, "POST", url, d->token, req, 30000) == 0 && status == 201)
		agent_token = xstrdup(json_string_value(json_object_get(ans, "token")));
	json_decref(ans);
	ans = NULL;
	free(url);
	url = xasprintf("%s/api/v1/agent/register", d->url);
	if (agent_token)
		httpc_json(&ans, &status, "POST", url, agent_token, req, 30000);
	json_decref(req);
	json_decref(ans);
	free(url);
	url = xasprintf("%s/api/v1/agent/jobs/request", d->url);
	req = json_pack("{si}", "wait_ms", 5000);
	ans = NULL;
	if (agent_token && httpc_json(&ans, &status, "POST", url, agent_token, req, 30000) == 0 && status == 200) {
		job = json_integer_value(json_object_get(ans, "job_id"));
		job_token = xstrdup(json_string_value(json_object_get(ans, "job_token")));
	}
	json_decref(req);
	json_decref(ans);
	free(url);
	free(agent_token);
	if (!job_token) {
		printf("artifacts: could not take the job as an agent: no figures\n\n");
		free(blob);
		return;
	}

	for (int round = 0; round < INGEST_ROUNDS; round++) {
		char name[32];
		sh("head -c 67108864 /dev/urandom > %s", blob);
		/* every tool reads the file from the page cache: read once first */
		sh("cat %s > /dev/null", blob);
		t0 = now_ms();
		{
			char *cmd = xasprintf("openssl dgst -sha256 -r %s", blob);
			FILE *p = popen(cmd, "r");
			if (p && fgets(sha, sizeof(sha), p))
				sha[64] = '\0';
			if (p)
				pclose(p);
			free(cmd);
		}
		t_openssl[round] = now_ms() - t0;
		t0 = now_ms();
		sh("dd if=%s of=%s/state/dd.out bs=1M conv=fsync status=none && rm -f %s/state/dd.out", blob, d->dir,
		   d->dir);
		t_dd[round] = now_ms() - t0;
		snprintf(name, sizeof(name), "blob64-%d", round);
		if ((t_store[round] = upload_ms(d, job, job_token, blob, name, sha, &status)) < 0) {
			printf("artifacts: the upload failed with HTTP %ld: no figures\n\n", status);
			sh("rm -f %s", blob);
			free(blob);
			free(job_token);
			return;
		}
	}
	qsort(t_store, INGEST_ROUNDS, sizeof(double), cmp_double);
	qsort(t_openssl, INGEST_ROUNDS, sizeof(double), cmp_double);
	qsort(t_dd, INGEST_ROUNDS, sizeof(double), cmp_double);
	printf("artifacts: ingest a 64 MB artifact over HTTP (hash, check, fsync, store); medians of %d\n",
	       INGEST_ROUNDS);
	printf("  otacd      %7.1f MB/s  (%.0f ms)\n", 64.0 / (t_store[1] / 1e3), t_store[1]);
	printf("  openssl    %7.1f MB/s  (%.0f ms, dgst -sha256 of the same file)\n", 64.0 / (t_openssl[1] / 1e3),
	       t_openssl[1]);
	printf("  dd         %7.1f MB/s  (%.0f ms, the same file written with conv=fsync: the disk's floor)\n",
	       64.0 / (t_dd[1] / 1e3), t_dd[1]);
	printf("  ratio      %7.2f  to openssl (target: at least 0.80); %.2f to the slower of openssl and dd\n\n",
	       t_openssl[1] / t_store[1], (t_openssl[1] > t_dd[1] ? t_openssl[1] : t_dd[1]) / t_store[1]);
	sh("rm -f %s", blob);
	free(blob);
	free(job_token);
}

/* Time the release job of a 4-image release signed with key spec. */
static double release_ms(const char *bindir, const char *spec, const char *pin, const char *env)
{
	struct daemon d = { 0 };
	char tmpl[] = "/tmp/otacd-bench-XXXXXX", *config, *text;
	double ms = -1;
	int64_t run;

	d.dir = xstrdup(mkdtemp(tmpl));
	config = xasprintf("%s/config.yml", d.dir);
	text = pin ? xasprintf("keys:\n  k: { spec: \"%s\", pin: \"%s\" }\n", spec, pin)
		   : xasprintf("keys:\n  k: { spec: \"%s\" }\n", spec);
	ota_write_file_atomic(config, text, strlen(text), 0600);
	if (env)
		putenv((char *)env);
	start_daemon_cfg(&d, bindir, config);
	run = trigger(&d, "name: fw\nstages:\n  - name: build\n    matrix: { board: [a, b, c, d] }\n"
			  "    steps: [ { run: 'head -c 262144 /dev/urandom > app.bin' } ]\n"
			  "    artifacts: [ { path: app.bin, name: 'app-${{ matrix.board }}.bin', type: application, hardware: '${{ matrix.board }}' } ]\n"
			  "  - { name: release, kind: release, needs: [build], version: '1.0.0', security_counter: 1, key: k }\n");
	wait_all(&d, run);
	{
		char *url = xasprintf("%s/api/v1/runs/%lld", d.url, (long long)run);
		json_t *ans = NULL, *stage;
		long status;
		size_t i;
		if (httpc_json(&ans, &status, "GET", url, d.token, NULL, 30000) == 0) {
			json_array_foreach(json_object_get(ans, "stages"), i, stage) {
				json_t *job = json_array_get(json_object_get(stage, "jobs"), 0);
				if (!strcmp(json_string_value(json_object_get(stage, "name")), "release") &&
				    !strcmp(json_string_value(json_object_get(job, "state")), "passed"))
					ms = (double)(json_integer_value(json_object_get(job, "finished_at")) -
						      json_integer_value(json_object_get(job, "started_at")));
			}
		}
		json_decref(ans);
		free(url);
	}
	kill(d.pid, SIGTERM);
	waitpid(d.pid, NULL, 0);
	if (!getenv("OTACD_KEEP"))
		sh("rm -rf %s", d.dir);
	free(config);
	free(text);
	return ms;
}

static void release_bench(const char *bindir)
{
	char tmpl[] = "/tmp/otacd-bench-XXXXXX", *dir = xstrdup(mkdtemp(tmpl)), *key = xasprintf("%s/k.pem", dir);
	static char env[512];
	double file_ms, hsm_ms = -1;

	sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s 2>/dev/null", key);
	file_ms = release_ms(bindir, key, NULL, NULL);
	if (sh("command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null") == 0 &&
	    sh("mkdir -p %s/tokens && printf 'directories.tokendir = %s/tokens\n' > %s/softhsm2.conf && "
	       "SOFTHSM2_CONF=%s/softhsm2.conf softhsm2-util --init-token --free --label fw --pin 1234 --so-pin 5678 >/dev/null && "
	       "SOFTHSM2_CONF=%s/softhsm2.conf pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label fw --login "
	       "--pin 1234 --keypairgen --key-type EC:prime256v1 --label release --id 01 >/dev/null 2>&1",
	       dir, dir, dir, dir, dir) == 0) {
		snprintf(env, sizeof(env), "SOFTHSM2_CONF=%s/softhsm2.conf", dir);
		hsm_ms = release_ms(bindir, "pkcs11:token=fw;object=release", "1234", env);
	}
	printf("release: sign 4 images of 256 KB (MCUboot) + manifest + provenance, the release job's duration\n");
	printf("  file key   %7.1f ms\n", file_ms);
	if (hsm_ms >= 0)
		printf("  SoftHSM2   %7.1f ms  (key inside the token, through PKCS#11)\n\n", hsm_ms);
	else
		printf("  SoftHSM2   not measured (softhsm2 or opensc missing)\n\n");
	sh("rm -rf %s", dir);
	free(key);
	free(dir);
}


/* ---- --backends: pickup and API latency on SQLite against PostgreSQL ---- */

struct api_figures {
	double p50, p99, rps;
};

struct backend_figures {
	double pickup_p50, pickup_p99;
	struct api_figures list, one; /* GET /api/v1/runs (cached), /api/v1/runs/ID (not) */
};

/* wrk's "1.23ms" / "850.00us" / "1.20s" in ms */
static double wrk_ms(const char *v)
{
	char *end;
	double x = strtod(v, &end);
	if (!strncmp(end, "us", 2))
		return x / 1e3;
	if (!strncmp(end, "ms", 2))
		return x;
	if (*end == 's')
		return x * 1e3;
	if (!strncmp(end, "m", 1))
		return x * 60e3;
	return x;
}

/* wrk on url + path; -1 when it failed or saw an answer other than 2xx */
static int wrk_run(const char *url, const char *path, const char *token, int secs, struct api_figures *f)
{
	char *cmd = xasprintf("wrk -t2 -c64 -d%ds --latency -H 'Authorization: Bearer %s' '%s%s' 2>&1", secs, token,
			      url, path);
	char line[256];
	FILE *p = popen(cmd, "r");
	int got = 0;

	free(cmd);
	if (!p)
		return -1;
	while (fgets(line, sizeof(line), p)) {
		char v[64];
		if (sscanf(line, " 50%% %63s", v) == 1) {
			f->p50 = wrk_ms(v);
			got++;
		} else if (sscanf(line, " 99%% %63s", v) == 1) {
			f->p99 = wrk_ms(v);
			got++;
		} else if (sscanf(line, "Requests/sec: %63s", v) == 1) {
			f->rps = atof(v);
			got++;
		} else if (strstr(line, "Non-2xx")) {
			got = -100;
		}
	}
	return pclose(p) == 0 && got == 3 ? 0 : -1;
}

static int measure_backend(const char *bindir, const char *config_text, int n, int secs, struct backend_figures *f)
{
	struct daemon d = { 0 };
	char tmpl[] = "/tmp/otacd-bench-XXXXXX", *marks, *config = NULL, *one;
	double *lat = xcalloc((size_t)n, sizeof(double));
	int64_t last = 0;
	int ifd, rc;

	d.dir = xstrdup(mkdtemp(tmpl));
	marks = xasprintf("%s/marks", d.dir);
	ota_mkdir_p(marks, 0700);
	if (config_text) {
		config = xasprintf("%s/config.yml", d.dir);
		ota_write_file_atomic(config, config_text, strlen(config_text), 0600);
	}
	start_daemon_cfg(&d, bindir, config);
	ifd = inotify_init1(IN_CLOEXEC);
	inotify_add_watch(ifd, marks, IN_CREATE);
	for (int i = 0; i < n; i++) {
		char *name = xasprintf("run-%d", i);
		char *yaml = xasprintf("name: pickup\nstages:\n  - { name: s, steps: [ { run: ': > %s/%s' } ] }\n", marks, name);
		double t0 = now_ms();
		last = trigger(&d, yaml);
		wait_created(ifd, name);
		lat[i] = now_ms() - t0;
		free(yaml);
		free(name);
	}
	wait_all(&d, last);
	close(ifd);
	qsort(lat, (size_t)n, sizeof(double), cmp_double);
	f->pickup_p50 = pct(lat, (size_t)n, 0.5);
	f->pickup_p99 = pct(lat, (size_t)n, 0.99);
	one = xasprintf("/api/v1/runs/%" PRId64, last);
	rc = wrk_run(d.url, "/api/v1/runs", d.token, secs, &f->list);
	if (rc == 0)
		rc = wrk_run(d.url, one, d.token, secs, &f->one);
	free(one);
	kill(d.pid, SIGTERM);
	waitpid(d.pid, NULL, 0);
	sh("rm -rf %s", d.dir);
	free(lat);
	free(marks);
	free(config);
	free(d.dir);
	free(d.url);
	free(d.token);
	return rc;
}

/* CREATE DATABASE name on the cluster; its URL (caller frees), or NULL. */
static char *pg_createdb(const struct pgcluster *pg, const char *name)
{
	const char *q = strstr(pg->url, "/postgres?");
	char *sql = xasprintf("CREATE DATABASE %s", name), *url = NULL;
	struct db *db;

	if (q && db_open(&db, pg->url, 0) == 0) {
		if (db_exec(db, sql) == 0)
			url = xasprintf("%.*s/%s?%s", (int)(q - pg->url), pg->url, name, q + 10);
		db_close(db);
	}
	free(sql);
	return url;
}

static void api_rows(const char *what, const struct api_figures *a, const struct api_figures *b)
{
	printf("  %-22s p50 (ms)  %10.2f %10.2f %8.2f\n", what, a->p50, b->p50, b->p50 / a->p50);
	printf("  %-22s p99 (ms)  %10.2f %10.2f %8.2f\n", what, a->p99, b->p99, b->p99 / a->p99);
	printf("  %-22s req/s     %10.0f %10.0f %8.2f\n", what, a->rps, b->rps, b->rps / a->rps);
}

static int backends_bench(const char *bindir, int n, int secs)
{
	struct backend_figures lite = { 0 }, pg = { 0 };
	struct pgcluster cluster;
	char *a, *b, *config;
	int rc;

	if (measure_backend(bindir, NULL, n, secs, &lite) < 0) {
		fprintf(stderr, "otacd-bench --backends: SQLite: wrk failed (is it installed?)\n");
		return 1;
	}
	rc = pgcluster_start(&cluster, 1);
	if (rc == 1) {
		printf("PostgreSQL is not installed: SQLite only\n");
		return 0;
	}
	if (rc < 0) {
		fprintf(stderr, "otacd-bench --backends: %s\n", ota_error_last());
		return 1;
	}
	a = pg_createdb(&cluster, "otacd");
	b = pg_createdb(&cluster, "fleet");
	if (!a || !b) {
		fprintf(stderr, "otacd-bench --backends: CREATE DATABASE failed\n");
		rc = -1;
	} else {
		config = xasprintf("database: \"%s\"\nfleet_database: \"%s\"\n", a, b);
		rc = measure_backend(bindir, config, n, secs, &pg);
		free(config);
	}
	pgcluster_stop(&cluster);
	free(a);
	free(b);
	if (rc < 0) {
		fprintf(stderr, "otacd-bench --backends: PostgreSQL: failed\n");
		return 1;
	}
	printf("otacd on SQLite against PostgreSQL (fsync on, unix socket), same run: pickup over %d runs,"
	       " the API under 64 connections (wrk, %d s a path; /runs is kept between commits, /runs/ID read per request)\n",
	       n, secs);
	printf("  %-32s %10s %10s %8s\n", "", "SQLite", "PostgreSQL", "PG/SQL");
	printf("  %-32s %10.2f %10.2f %8.2f\n", "pickup p50 (ms)", lite.pickup_p50, pg.pickup_p50,
	       pg.pickup_p50 / lite.pickup_p50);
	printf("  %-32s %10.2f %10.2f %8.2f\n", "pickup p99 (ms)", lite.pickup_p99, pg.pickup_p99,
	       pg.pickup_p99 / lite.pickup_p99);
	api_rows("GET /api/v1/runs", &lite.list, &pg.list);
	api_rows("GET /api/v1/runs/ID", &lite.one, &pg.one);
	return 0;
}

int main(int argc, char **argv)
{
	const char *bindir = argc > 1 ? argv[1] : "build/bin";
	int n_pickup = argc > 2 ? atoi(argv[2]) : 200;
	int n_tput = argc > 3 ? atoi(argv[3]) : 1000;
	int n_mem = argc > 4 ? atoi(argv[4]) : 10000;
	int n_hook = argc > 5 ? atoi(argv[5]) : 200;
	struct daemon d = { 0 };
	char tmpl[] = "/tmp/otacd-bench-XXXXXX", *marks;
	double *lat = xcalloc((size_t)n_pickup, sizeof(double)), *raw = xcalloc((size_t)n_pickup, sizeof(double));
	double t0, t_raw, t_spawn, t_otacd;
	int ifd;
	int64_t last = 0;
	long after_kb;
	struct mem idle;

	httpc_global_init();
	if (argc > 2 && !strcmp(argv[2], "--backends")) {
		free(lat);
		free(raw);
		return backends_bench(bindir, argc > 3 ? atoi(argv[3]) : 200, argc > 4 ? atoi(argv[4]) : 3);
	}
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
	for (int i = 0; i < n_tput * 3; i++)
		spawn_true();
	t_spawn = now_ms() - t0;
	t0 = now_ms();
	for (int i = 0; i < n_tput; i++)
		last = trigger(&d, "name: tput\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n"
				   "  - { name: b, steps: [ { run: 'true' } ] }\n  - { name: c, steps: [ { run: 'true' } ] }\n");
	wait_all(&d, last);
	t_otacd = now_ms() - t0;
	printf("throughput: %d runs x 3 jobs, 2 local agents\n", n_tput);
	printf("  otacd      %8.1f jobs/s  (%.1f s)\n", n_tput * 3 / (t_otacd / 1e3), t_otacd / 1e3);
	printf("  fork/exec  %8.1f /s      (sh -c true, one after another)\n", n_tput * 3 / (t_raw / 1e3));
	printf("  spawn      %8.1f /s      (posix_spawn /bin/true, one after another)\n", n_tput * 3 / (t_spawn / 1e3));
	printf("  ratio      %8.2f of sh -c true, %.2f of posix_spawn /bin/true\n\n", t_raw / t_otacd, t_spawn / t_otacd);

	/* ---- webhook ---- */
	webhook_bench(bindir, n_hook);

	/* ---- artifacts, release ---- */
	artifact_bench(&d);
	release_bench(bindir);

	/* ---- memory ---- */
	{
		/* a fresh daemon for the idle figure */
		struct daemon fresh = { 0 };
		char tmpl2[] = "/tmp/otacd-bench-XXXXXX";
		fresh.dir = xstrdup(mkdtemp(tmpl2));
		start_daemon(&fresh, bindir);
		usleep(500000);
		idle = mem_of(fresh.pid);
		kill(fresh.pid, SIGTERM);
		waitpid(fresh.pid, NULL, 0);
		spawn_wait(xasprintf("rm -rf %s", fresh.dir));
	}
	for (int i = 0; i < n_mem; i++)
		last = trigger(&d, "name: mem\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n");
	wait_all(&d, last);
	after_kb = rss_kb(d.pid);
	printf("memory: otacd resident set\n");
	printf("  idle       Rss %5.1f MB = private %.1f MB + shared %.1f MB; Pss %.1f MB  (target under 10 MB; bench/memory.sh: Buildbot)\n",
	       idle.rss / 1024.0, idle.private_ / 1024.0, idle.shared / 1024.0, idle.pss / 1024.0);
	printf("  after %d+ finished runs  %6.1f MB\n", n_pickup + n_tput + n_mem, after_kb / 1024.0);

	kill(d.pid, SIGTERM);
	waitpid(d.pid, NULL, 0);
	if (!getenv("OTACD_KEEP"))
		spawn_wait(xasprintf("rm -rf %s", d.dir));
	return 0;
}
