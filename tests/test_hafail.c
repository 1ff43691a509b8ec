/*
 * test_hafail.c - failover behind a load balancer (issue 16, docs/scale.md,
 * "Failover test"): three real otacd on one real PostgreSQL cluster behind a
 * real haproxy, two remote otacd-agent processes and a simulated fleet
 * (otacd-fleetsim) that reach otacd only through haproxy, a pipeline that
 * builds a 4 MB image, releases it and rolls it out in steps with holds.
 * The leader is SIGKILLed ten times at chosen moments (during a build,
 * during an artifact upload, in a hold, right at a promotion, right after a
 * trigger), a follower once, and the PostgreSQL server is restarted once;
 * every killed or exited instance is started again as a follower, as
 * systemd would.  Then:
 *
 *   - each takeover (SIGKILL to another instance's /readyz 200) is within
 *     the documented bound, 10 s (figures printed);
 *   - every run finished once: every job final once, one release per run;
 *   - the rollout promoted each step once, in order (the audit trail);
 *   - a hold's deadline read before a kill is the same after it;
 *   - every artifact's bytes, read through the API, match its sha256;
 *   - every report the simulator had acknowledged is counted once.
 *
 * How precise the moments are: "mid-upload" waits for the leader's
 * temporary upload file (STATE/artifacts/tmp/upload-*) to appear and kills
 * then, so when the test says the kill landed mid-upload, the leader was
 * writing the body; on a fast machine the 4 MB upload can finish between
 * two looks (every 2 ms), and the test then says "after the upload" (it
 * prints which).  "At a promotion" kills about 50 ms of real time before
 * the hold's deadline (otacd time runs 600 times faster here), so the
 * promotion lands before, during or after the takeover.
 *
 * Artifact objects are shared the way several instances share an artifact
 * store (S3 in production): STATE/artifacts/sha256 of each instance is a
 * symlink to one directory.  haproxy sends the API, the agents' protocol
 * (uploads included) and the devices' check-ins, reports and registrations
 * round robin to all three: a follower forwards them to the leader
 * (docs/scale.md, "Forwarding"), and so the devices' image downloads,
 * release manifests and the fleet's /metrics (a download's bytes come
 * from the shared store once the leader vouched for it).
 *
 * The fleet goes through the rollout: every device ends installed and
 * confirmed on the release; the fleet's counters (offered, downloads,
 * installs, confirmed), read from the leader before each kill and from the
 * next one after it, never go down; every install and boot the simulator
 * had acknowledged is counted once; and haproxy's own counts show the
 * followers answering devices and agents (forwarded) while one leader led.
 *
 * agent_upload_outlasts_seconds_of_503: the agent's side of a takeover on
 * its own, every answer 503 for 7 s over a job's artifact upload (the
 * upload is sent again until the daemon answers; it used to fail the
 * attempt at the first 503).
 *
 * haproxy: $OTACD_HAPROXY or /usr/sbin/haproxy; missing, the test skips
 * saying so, except in CI (OTACD_CI=1, .ci/run installs it).  Without
 * PostgreSQL's binaries it skips too.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "devharness.h"
#include "harness.h"
#include "pgcluster.h"

#define N 3
#define DEVICES 12
#define TAKEOVER_BOUND_MS 10000 /* the target (docs/scale.md) */
#define CAP_MS 60000            /* any other wait */
#define SCALE 600               /* otacd time: a 1h hold is 6 s */
#define FLEET_KEY "hafail-fleet-key-0123456789abcdef"

/* The fleet's counters for the release that never go down (distinct
 * devices; docs/update-server.md), as the device API's /metrics names them. */
static const char *const COUNTERS[] = { "otacd_fleet_offered", "otacd_fleet_downloads", "otacd_fleet_installs",
					"otacd_fleet_boot_ok" };
#define NC 4

static const char *const args[] = { "--local-agents", "0", "--time-scale", "600", NULL };

struct world {
	struct pgcluster pg;
	char *otacd_db, *fleet_db;
	char *objects; /* the shared artifact objects (STATE/artifacts/sha256) */
	struct daemon d[N];
	struct daemon lb; /* haproxy's addresses with the admin token: calls through the load balancer */
	pid_t haproxy;
	pid_t agent[2];
	struct h_fleetsim sim;
	int64_t took[16];
	int kills, exits75, exits_other;
	int last; /* the leader after the last kill */
	char *stats_url;   /* haproxy's statistics, CSV */
	int64_t seen[NC];  /* the fleet's counters for the release, as last read */
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *haproxy_bin(void)
{
	const char *p = getenv("OTACD_HAPROXY") ? getenv("OTACD_HAPROXY") : "/usr/sbin/haproxy";
	return access(p, X_OK) == 0 ? xstrdup(p) : NULL;
}

/* "127.0.0.1:PORT" -> PORT */
static const char *port_of(const char *listen)
{
	return strrchr(listen, ':') + 1;
}

/*
 * haproxy on three free ports: api (the API, the agents' protocol, the
 * status page), dev (the device API) and its statistics (CSV).  Which
 * instances a backend uses is the line marked "choice" in it: /healthz is
 * 200 on every live instance, /readyz on the leader only.
 */
static void haproxy_start(struct world *w, const char *bin)
{
	struct buf cfg = BUF_INIT;
	char *api = h_free_listen(), *dev = h_free_listen(), *stats = h_free_listen();
	char *path = xasprintf("%s/haproxy.cfg", w->lb.dir), *log = xasprintf("%s/haproxy.log", w->lb.dir);

	buf_printf(&cfg, "global\n  maxconn 512\n"
			 "defaults\n  mode http\n  timeout connect 1s\n  timeout client 150s\n  timeout server 150s\n"
			 "  timeout http-request 30s\n  timeout check 5s\n  retries 2\n  option redispatch\n"
			 "  default-server inter 200ms fall 2 rise 1\n"
			 "listen stats\n  bind %s\n  stats enable\n  stats uri /stats\n"
			 "frontend api\n  bind %s\n  use_backend agents if { path_beg /api/v1/agent/ }\n"
			 "  default_backend any_api\n"
			 "frontend dev\n  bind %s\n  default_backend devices\n",
		   stats, api, dev);
	/* the admin API and reads: any instance (a follower forwards writes) */
	buf_puts(&cfg, "backend any_api\n  balance roundrobin\n  option httpchk GET /healthz # choice: every live instance\n");
	for (int i = 0; i < N; i++)
		buf_printf(&cfg, "  server o%d %s check\n", i, w->d[i].listen);
	/* agents: any instance (a follower forwards calls and spools uploads) */
	buf_puts(&cfg, "backend agents\n  balance roundrobin\n  option httpchk GET /healthz # choice: every live instance\n");
	for (int i = 0; i < N; i++)
		buf_printf(&cfg, "  server o%d %s check\n", i, w->d[i].listen);
	/* the device API, every route: any (a follower forwards) */
	buf_puts(&cfg, "backend devices\n  balance roundrobin\n  option httpchk GET /healthz # choice: every live instance\n");
	for (int i = 0; i < N; i++)
		buf_printf(&cfg, "  server o%d %s check port %s\n", i, w->d[i].device_listen, port_of(w->d[i].listen));
	assert_int_equal(ota_write_file_atomic(path, cfg.ptr, cfg.len, 0600), 0);
	{
		char *argv[] = { (char *)bin, "-db", "-f", path, NULL };
		w->haproxy = dh_spawn(log, argv);
	}
	w->lb.url = xasprintf("http://%s", api);
	w->lb.device_url = xasprintf("http://%s", dev);
	w->stats_url = xasprintf("http://%s/stats;csv", stats);
	for (int i = 0; i < 500 && h_get(&w->lb, "/api/v1/health", NULL) != 200; i++)
		h_msleep(20);
	assert_int_equal(h_get(&w->lb, "/api/v1/health", NULL), 200);
	/* the device API answers once a leader has the fleet (a follower forwards) */
	for (int i = 0; i < 500 && h_sh(&cfg, "curl -sf -o /dev/null %s/metrics", w->lb.device_url) != 0; i++)
		h_msleep(20);
	buf_release(&cfg);
	free(api);
	free(dev);
	free(stats);
	free(path);
	free(log);
}

/* 0, or 1 to skip (said why). */
static int world_start(struct world *w)
{
	char *bin = haproxy_bin(), *cfg, *tokens[2], *secret_file, secret[65];

	memset(w, 0, sizeof(*w));
	if (!bin) {
		if (getenv("OTACD_CI"))
			fail_msg("haproxy is missing in CI (.ci/run installs it)");
		print_message("SKIP: haproxy is not installed (apt-get install haproxy, as .ci/run does;"
			      " or set OTACD_HAPROXY)\n");
		return 1;
	}
	if (h_pg_start_dbs(&w->pg, &w->otacd_db, &w->fleet_db) > 0) {
		free(bin);
		return 1;
	}
	h_init(&w->lb, NULL);
	free(h_ec_keypair(w->lb.dir)); /* the release key; fleetsim gets its public half */
	w->objects = xasprintf("%s/objects", w->lb.dir);
	assert_int_equal(ota_mkdir_p(w->objects, 0700), 0);
	/* one fleet key and one device secret for all (fleet_keys.c refuses an
	 * instance whose secrets differ; docs/scale.md) */
	secret_file = xasprintf("%s/device-shared.secret", w->lb.dir);
	assert_int_equal(ota_random_hex(secret, 32), 0);
	assert_int_equal(ota_write_file_atomic(secret_file, secret, 64, 0600), 0);
	/* devices poll every 10 otacd minutes, a real second */
	cfg = xasprintf("lease: 3s\nleader_poll: 1s\nheartbeat: 300ms\npoll_interval: 10m\nfleet_key: \"" FLEET_KEY "\"\n"
			"device_secret_file: \"%s\"\nkeys:\n  test: { spec: %s/k.pem }\n",
			secret_file, w->lb.dir);
	free(secret_file);
	for (int i = 0; i < N; i++) {
		h_init(&w->d[i], cfg);
		h_use_database(&w->d[i], w->otacd_db, w->fleet_db);
		/* restarts keep their addresses: haproxy's servers */
		w->d[i].listen = h_free_listen();
		w->d[i].device_listen = h_free_listen();
		h_share_objects(&w->d[i], w->objects);
	}
	/* the first leads; the agents are registered before the others start,
	 * so every instance knows their tokens (docs/scale.md, "What remains") */
	assert_int_equal(h_start(&w->d[0], args), 0);
	w->lb.token = xstrdup(w->d[0].token);
	w->lb.fleet_key = xstrdup(FLEET_KEY);
	w->lb.database = xstrdup(w->otacd_db);
	for (int i = 0; i < 2; i++) {
		char name[32];
		snprintf(name, sizeof(name), "remote-%d", i);
		tokens[i] = h_agent_add(&w->d[0], name, "test");
		assert_non_null(tokens[i]);
	}
	haproxy_start(w, bin);
	/* the fleet registers before the others start, too: a follower that
	 * takes over knows only the devices registered before its own start
	 * (docs/scale.md, "What remains") */
	{
		const char *const sim_args[] = { "--devices", "12", "--seed", "16", "--duration", "600", NULL };
		static const char profile[] = "{ \"silent\": 0, \"flaky\": 0, \"hardware\": {\"mps2-an385\": 1} }";
		h_fleetsim_start(&w->sim, &w->lb, profile, sim_args);
		for (int64_t end = now_ms() + CAP_MS; h_fleet_devices(&w->lb, "1.0.0") < DEVICES && now_ms() < end;)
			h_msleep(50);
		assert_int_equal(h_fleet_devices(&w->lb, "1.0.0"), DEVICES);
	}
	for (int i = 1; i < N; i++) {
		w->d[i].follower_ok = 1;
		w->d[i].token = xstrdup(w->d[0].token);
		assert_int_equal(h_start(&w->d[i], args), 0);
	}
	for (int i = 0; i < 2; i++) {
		char name[32];
		snprintf(name, sizeof(name), "remote-%d", i);
		w->agent[i] = h_agent_with(&w->lb, name, "test", tokens[i]);
		free(tokens[i]);
	}
	free(cfg);
	free(bin);
	return 0;
}

static void world_stop(struct world *w)
{
	for (int i = 0; i < 2; i++)
		if (w->agent[i] > 0) {
			kill(w->agent[i], SIGTERM);
			waitpid(w->agent[i], NULL, 0);
		}
	if (w->haproxy > 0) {
		kill(w->haproxy, SIGTERM);
		waitpid(w->haproxy, NULL, 0);
	}
	for (int i = 0; i < N; i++)
		h_cleanup(&w->d[i]);
	pgcluster_stop(&w->pg);
	h_cleanup(&w->lb);
	free(w->otacd_db);
	free(w->fleet_db);
	free(w->objects);
	free(w->stats_url);
}

/* Start again, as a follower, every instance that exited on its own (75:
 * it lost the lead; anything else is counted as a failure). */
static void revive(struct world *w)
{
	int status = 0;
	for (int i = 0; i < N; i++) {
		if (w->d[i].pid <= 0 || waitpid(w->d[i].pid, &status, WNOHANG) != w->d[i].pid)
			continue;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 75) {
			w->exits75++;
		} else {
			print_message("instance %d exited with %d (see %s/otacd.log)\n", i,
				      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), w->d[i].dir);
			w->exits_other++;
		}
		w->d[i].pid = 0;
		w->d[i].follower_ok = 1;
		assert_int_equal(h_start(&w->d[i], args), 0);
	}
}

/* The instance whose /readyz is 200 (not skip), within cap_ms; -1: none. */
static int wait_ready(struct world *w, int skip, int cap_ms)
{
	int64_t end = now_ms() + cap_ms;
	do {
		for (int i = 0; i < N; i++)
			if (i != skip && w->d[i].pid > 0 && h_get(&w->d[i], "/readyz", NULL) == 200)
				return i;
		revive(w);
		h_msleep(10);
	} while (now_ms() < end);
	return -1;
}

/* d's device API /metrics, asked again while it is not 200 (a follower,
 * or a new leader still loading its fleet and rollouts) for up to CAP_MS. */
static char *fleet_metrics(struct daemon *d)
{
	char *url = xasprintf("%s/metrics", d->device_url), *text = NULL;
	for (int64_t end = now_ms() + CAP_MS; !text;) {
		struct httpc_response r = HTTPC_RESPONSE_INIT;
		if (httpc_request(&r, "GET", url, NULL, NULL, NULL, 0, 30000) == 0 && r.status == 200)
			text = xstrdup(buf_cstr(&r.body));
		else if (now_ms() > end)
			fail_msg("GET %s: %ld", url, r.status);
		else
			h_msleep(50);
		httpc_response_release(&r);
	}
	free(url);
	return text;
}

/* name{product="fw",version=v,cohort="*"} in a /metrics text (0: absent,
 * as before the first offer). */
static int64_t series(const char *text, const char *name, const char *v)
{
	char *key = xasprintf("%s{product=\"fw\",version=\"%s\",cohort=\"*\"} ", name, v);
	const char *p = strstr(text, key);
	int64_t n = p ? strtoll(p + strlen(key), NULL, 10) : 0;
	free(key);
	return n;
}

static int64_t fleet_series(struct daemon *d, const char *name, const char *v)
{
	char *text = fleet_metrics(d);
	int64_t n = series(text, name, v);
	free(text);
	return n;
}

/* Read the release's counters on d (the leader) and check that none went
 * down since the last reading, whichever instance served it (docs/
 * architecture.md: the device API acknowledges after the fleet's commit
 * and /metrics shows committed counts only). */
static void fleet_counts_check(struct world *w, struct daemon *d, const char *when)
{
	char *text = fleet_metrics(d);
	for (int k = 0; k < NC; k++) {
		int64_t n = series(text, COUNTERS[k], "1.1.0");
		if (n < w->seen[k])
			fail_msg("%s went from %lld to %lld %s", COUNTERS[k], (long long)w->seen[k], (long long)n, when);
		w->seen[k] = n;
	}
	free(text);
}

/* SIGKILL the leader, time the takeover, start it again as a follower;
 * the new leader. */
static int kill_leader(struct world *w, const char *moment)
{
	int old = wait_ready(w, -1, CAP_MS), next;
	int64_t t0, took;

	assert_true(old >= 0);
	if (w->kills && old != w->last) { /* the lead moved without a kill: say how */
		for (int i = 0; i < N; i++) {
			struct buf b = BUF_INIT;
			long st = w->d[i].pid > 0 ? h_raw(&w->d[i], "GET", "/readyz", NULL, NULL, NULL, 0, &b) : 0;
			print_message("  the lead moved from %d: instance %d /readyz %ld %s (%s)\n", w->last, i, st, buf_cstr(&b),
				      w->d[i].dir);
			buf_release(&b);
		}
	}
	fleet_counts_check(w, &w->d[old], "before a kill");
	t0 = now_ms();
	h_kill(&w->d[old], SIGKILL);
	next = wait_ready(w, old, CAP_MS);
	took = now_ms() - t0;
	print_message("kill %d, %s: instance %d -> %d, ready after %lld ms\n", w->kills + 1, moment, old, next,
		      (long long)took);
	assert_true(next >= 0);
	w->took[w->kills++] = took;
	w->last = next;
	/* the bound, 10 s against a 1 s poll (docs/scale.md) */
	assert_true(took <= TAKEOVER_BOUND_MS);
	fleet_counts_check(w, &w->d[next], "across a takeover");
	w->d[old].follower_ok = 1;
	assert_int_equal(h_start(&w->d[old], args), 0);
	return next;
}

/* How many lines of d's log contain what. */
static int64_t log_count(struct daemon *d, const char *what)
{
	struct buf out = BUF_INIT;
	int64_t n;
	h_sh(&out, "grep -c '%s' %s/otacd.log", what, d->dir);
	n = strtoll(buf_cstr(&out), NULL, 10);
	buf_release(&out);
	return n;
}

/* SQL count, polled every 2 ms until nonzero (cap_ms); the count. */
static int64_t wait_sql(struct world *w, const char *sql, int cap_ms)
{
	int64_t n = 0;
	for (int64_t end = now_ms() + cap_ms; !(n = h_sql_int(&w->lb, sql)) && now_ms() < end;)
		h_msleep(2);
	return n;
}

/* 1 when the leader has an artifact upload on its way (a temporary file). */
static int uploading(struct world *w)
{
	for (int i = 0; i < N; i++) {
		char *tmp = xasprintf("%s/state/artifacts/tmp", w->d[i].dir);
		DIR *d = opendir(tmp);
		struct dirent *e;
		int found = 0;
		while (d && (e = readdir(d)))
			found |= !strncmp(e->d_name, "upload-", 7);
		if (d)
			closedir(d);
		free(tmp);
		if (found)
			return 1;
	}
	return 0;
}

/* Kill the leader while the job of run is uploading (or right after). */
static void kill_mid_upload(struct world *w, int64_t run)
{
	char *done = xasprintf("SELECT COUNT(*) FROM artifacts WHERE run_id = %lld", (long long)run);
	int mid = 0;

	for (int64_t end = now_ms() + CAP_MS; !(mid = uploading(w)) && now_ms() < end && !h_sql_int(&w->lb, done);)
		h_msleep(2);
	kill_leader(w, mid ? "mid-upload (the leader's upload file was there)" : "after the upload (missed it)");
	free(done);
}

static void kill_in_build(struct world *w, int64_t run)
{
	char *sql = xasprintf("SELECT COUNT(*) FROM jobs WHERE run_id = %lld AND state = 'running'", (long long)run);
	assert_true(wait_sql(w, sql, CAP_MS) > 0);
	kill_leader(w, "during a build");
	free(sql);
}

/* The rollout of release rel (the API's, through the load balancer). */
static json_t *rollout(struct world *w, int64_t rel)
{
	char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)rel);
	json_t *r = NULL, *ro;
	assert_int_equal(h_get(&w->lb, path, &r), 200);
	ro = json_incref(json_array_get(json_object_get(r, "rollouts"), 0));
	json_decref(r);
	free(path);
	assert_non_null(ro);
	return ro;
}

static int64_t ro_int(json_t *ro, const char *k)
{
	return json_integer_value(json_object_get(ro, k));
}

/* Wait until the rollout holds at step; its hold_until. */
static int64_t wait_hold(struct world *w, int64_t rel, int step)
{
	char *sql = xasprintf("SELECT COUNT(*) FROM rollouts WHERE release_id = %lld AND state = 'holding' AND step = %d"
			      " AND hold_until IS NOT NULL",
			      (long long)rel, step);
	json_t *ro;
	int64_t until;
	assert_true(wait_sql(w, sql, CAP_MS) > 0);
	ro = rollout(w, rel);
	until = ro_int(ro, "hold_until");
	assert_int_equal(ro_int(ro, "step"), step);
	json_decref(ro);
	free(sql);
	return until;
}

/* Kill the leader in step's hold: the deadline is the same afterwards. */
static void kill_in_hold(struct world *w, int64_t rel, int step)
{
	int64_t until = wait_hold(w, rel, step);
	json_t *ro;
	kill_leader(w, "in a hold");
	ro = rollout(w, rel);
	if (ro_int(ro, "step") == step) /* not promoted meanwhile */
		assert_int_equal(ro_int(ro, "hold_until"), until);
	json_decref(ro);
}

/* Kill the leader about 50 ms (real) before step's hold ends. */
static void kill_at_promotion(struct world *w, int64_t rel, int step)
{
	int64_t until = wait_hold(w, rel, step), now;
	json_t *h = NULL;
	assert_int_equal(h_get(&w->lb, "/api/v1/health", &h), 200);
	now = json_integer_value(json_object_get(h, "time"));
	json_decref(h);
	if ((until - now) / SCALE > 50)
		h_msleep((int)((until - now) / SCALE - 50));
	kill_leader(w, "at a promotion");
}

/* security_counter: 1, the devices' own (fleetsim's --start-counter): a
 * release below a device's counter is never offered to it (anti-rollback) */
static const char *const fw_yaml =
	"name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"sleep 2 && printf 'fw 1.1.0' > app.bin && head -c 4000000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 30, hold: 1h}, {percent: 60, hold: 1h}, {percent: 100, hold: 10m} ]\n";

static const char *const blob_yaml =
	"name: blob\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"sleep 3 && head -c 4000000 /dev/urandom > blob.bin\" } ]\n"
	"    artifacts: [ { path: blob.bin, name: blob.bin } ]\n";

/* Trigger yaml through the load balancer (a follower forwards it), with
 * an Idempotency-Key, retried while the answer is 503 (no leader recorded
 * yet, or one that just died: docs/scale.md, "Forwarding"); the run id. */
static int64_t trigger(struct world *w, const char *yaml)
{
	static int n;
	json_t *body = json_pack("{ss}", "pipeline", yaml);
	char *text = json_dumps(body, JSON_COMPACT), *file = xasprintf("%s/trigger.json", w->lb.dir);
	struct buf out = BUF_INIT;
	int64_t id = 0;

	assert_int_equal(ota_write_file_atomic(file, text, strlen(text), 0600), 0);
	n++;
	for (int64_t end = now_ms() + CAP_MS; !id && now_ms() < end;) {
		const char *b;
		h_sh(&out, "curl -s -i -X POST -H 'Authorization: Bearer %s' -H 'Content-Type: application/json'"
			   " -H 'Idempotency-Key: hafail-%d' --data-binary @%s '%s/api/v1/runs'",
		     w->lb.token, n, file, w->lb.url);
		b = strstr(buf_cstr(&out), "\r\n\r\n");
		if (strstr(buf_cstr(&out), " 201") && b && strstr(b, "\"id\":"))
			id = strtoll(strstr(b, "\"id\":") + 5, NULL, 10);
		else if (strstr(buf_cstr(&out), " 503"))
			h_msleep(200);
		else
			fail_msg("a trigger through haproxy:\n%s", buf_cstr(&out));
	}
	assert_true(id > 0);
	buf_release(&out);
	json_decref(body);
	free(text);
	free(file);
	return id;
}

/* Field k (from 0) of a CSV line, copied into out (size n). */
static void csv_field(const char *line, int k, char *out, size_t n)
{
	size_t len;
	for (; k > 0 && *line && *line != '\n'; line++)
		if (*line == ',')
			k--;
	len = strcspn(line, ",\n");
	snprintf(out, n, "%.*s", (int)len, line);
}

/* haproxy's count of 2xx answers each instance gave through backend be. */
static void answered_2xx(struct world *w, const char *be, int64_t out[N])
{
	struct httpc_response r = HTTPC_RESPONSE_INIT;
	const char *text, *line;
	char f[64];
	int col = -1;

	assert_int_equal(httpc_request(&r, "GET", w->stats_url, NULL, NULL, NULL, 0, 30000), 0);
	assert_int_equal(r.status, 200);
	text = buf_cstr(&r.body);
	/* "# pxname,svname,...,hrsp_2xx,...", then a line per proxy and server */
	for (int k = 0; col < 0 && k < 200; k++) {
		csv_field(text + 2, k, f, sizeof(f));
		if (!strcmp(f, "hrsp_2xx"))
			col = k;
	}
	assert_true(col > 0);
	memset(out, 0, N * sizeof(*out));
	for (line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		csv_field(line, 0, f, sizeof(f));
		if (strcmp(f, be) != 0)
			continue;
		csv_field(line, 1, f, sizeof(f));
		if (f[0] == 'o' && f[1] >= '0' && f[1] < '0' + N && !f[2]) {
			int i = f[1] - '0';
			csv_field(line, col, f, sizeof(f));
			out[i] = strtoll(f, NULL, 10);
		}
	}
	httpc_response_release(&r);
}

/* Every artifact's bytes, read through the load balancer, hash to its
 * recorded sha256; the number checked. */
static int artifacts_whole(struct world *w)
{
	int64_t n = h_sql_int(&w->lb, "SELECT COUNT(*) FROM artifacts");
	struct buf out = BUF_INIT;
	for (int64_t k = 0; k < n; k++) {
		char *sql = xasprintf("SELECT id || ' ' || sha256 FROM artifacts ORDER BY id LIMIT 1 OFFSET %lld", (long long)k);
		char *row = h_sql_text(&w->lb, sql), *sp = strchr(row, ' ');
		*sp = '\0';
		assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' '%s/api/v1/artifacts/%s' | sha256sum",
				      w->lb.token, w->lb.url, row),
				 0);
		if (strncmp(buf_cstr(&out), sp + 1, 64) != 0)
			fail_msg("artifact %s: bytes hash to %.64s, recorded %s", row, buf_cstr(&out), sp + 1);
		free(row);
		free(sql);
	}
	buf_release(&out);
	return (int)n;
}

static void leader_killed_ten_times_behind_haproxy_loses_and_doubles_nothing(void **state)
{
	struct world w;
	int64_t fw, rel, blob[3], after, t0, agents0[N], agents1[N], devices0[N], devices1[N], forwarded = 0;
	json_t *st, *audit = NULL, *ro;
	char *path;
	size_t i;
	int promoted = 0, nart, lead, exits;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	t0 = now_ms();
	/* the rollout's run: killed during its build, its upload, each hold
	 * and each promotion */
	fw = trigger(&w, fw_yaml);
	kill_in_build(&w, fw);
	kill_mid_upload(&w, fw);
	rel = dh_release_of(&w.lb, fw);
	assert_true(rel > 0);
	kill_in_hold(&w, rel, 0);
	/* the first step's cohort, not the fleet (30 %: 12 devices all in it
	 * would be a chance of 0.3^12) */
	assert_true(w.seen[0] < DEVICES);
	kill_at_promotion(&w, rel, 0);
	kill_in_hold(&w, rel, 1);
	kill_at_promotion(&w, rel, 1);
	/* builds with an artifact each */
	blob[0] = trigger(&w, blob_yaml);
	kill_in_build(&w, blob[0]);
	kill_mid_upload(&w, blob[0]);
	blob[1] = trigger(&w, blob_yaml);
	kill_leader(&w, "right after a trigger");
	kill_mid_upload(&w, blob[1]);
	assert_int_equal(w.kills, 10);

	/* a follower, then the database server */
	{
		int f = (wait_ready(&w, -1, CAP_MS) + 1) % N;
		int64_t started = log_count(&w.d[f], "listening on");
		h_kill(&w.d[f], SIGKILL);
		w.d[f].follower_ok = 1;
		assert_int_equal(h_start(&w.d[f], args), 0);
		/* wholly started (a start during the server's restart exits 1) */
		for (int64_t end = now_ms() + CAP_MS; log_count(&w.d[f], "listening on") == started && now_ms() < end;)
			h_msleep(20);
		blob[2] = trigger(&w, blob_yaml);
		assert_int_equal(pgcluster_restart(&w.pg), 0);
		/* the leader's next poll says lost: it exits 75 and comes back */
		for (int64_t end = now_ms() + CAP_MS; !w.exits75 && now_ms() < end; revive(&w))
			h_msleep(20);
		assert_true(w.exits75 >= 1);
		lead = wait_ready(&w, -1, CAP_MS);
		assert_true(lead >= 0);
		fleet_counts_check(&w, &w.d[lead], "across the server's restart");
	}
	/* from here on one instance leads: what the others answer devices and
	 * agents, they forwarded */
	answered_2xx(&w, "agents", agents0);
	answered_2xx(&w, "devices", devices0);
	exits = w.exits75;
	after = trigger(&w, "name: after\nstages:\n  - { name: a, steps: [ { run: 'echo after' } ] }\n");

	/* everything ends, once */
	assert_string_equal(h_wait_run(&w.lb, fw, 180000), "passed");
	for (int k = 0; k < 3; k++)
		assert_string_equal(h_wait_run(&w.lb, blob[k], 180000), "passed");
	assert_string_equal(h_wait_run(&w.lb, after, 180000), "passed");
	revive(&w);
	assert_int_equal(w.exits_other, 0);
	assert_int_equal(h_sql_int(&w.lb, "SELECT COUNT(*) FROM runs"), 5);
	assert_int_equal(h_sql_int(&w.lb, "SELECT COUNT(*) FROM jobs WHERE state <> 'passed'"), 0);
	assert_int_equal(h_sql_int(&w.lb, "SELECT COUNT(*) FROM events WHERE kind = 'job.final'"),
			 h_sql_int(&w.lb, "SELECT COUNT(*) FROM jobs"));
	assert_int_equal(h_sql_int(&w.lb, "SELECT COUNT(*) FROM (SELECT job_id FROM events WHERE kind = 'job.final'"
					  " GROUP BY job_id HAVING COUNT(*) > 1) x"),
			 0);
	assert_int_equal(h_sql_int(&w.lb, "SELECT COUNT(*) FROM (SELECT run_id FROM releases GROUP BY run_id"
					  " HAVING COUNT(*) > 1) x"),
			 0);
	assert_int_equal(h_sql_int(&w.lb, "SELECT COUNT(*) FROM releases"), 1);
	/* promotions: step 1 then step 2, once each, then the stage passed */
	ro = rollout(&w, rel);
	assert_string_equal(json_string_value(json_object_get(ro, "state")), "passed");
	json_decref(ro);
	path = xasprintf("/api/v1/audit?release=%lld&limit=100", (long long)rel);
	assert_int_equal(h_get(&w.lb, path, &audit), 200);
	for (i = json_array_size(audit); i-- > 0;) { /* newest first */
		json_t *a = json_array_get(audit, i);
		if (strcmp(json_string_value(json_object_get(a, "action")), "promote") != 0)
			continue;
		promoted++;
		assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "detail"), "step")), promoted);
	}
	assert_int_equal(promoted, 2);
	/* no artifact partial: 1 image, 4 blobs, and the release's own files */
	nart = artifacts_whole(&w);
	assert_true(nart >= 4);
	/* the fleet went through the rollout: every device confirmed 1.1.0
	 * (the leader's counts, through haproxy), none of the counts went
	 * down since the last kill */
	for (int64_t end = now_ms() + CAP_MS;
	     fleet_series(&w.lb, "otacd_fleet_boot_ok", "1.1.0") < DEVICES && now_ms() < end;)
		h_msleep(100);
	fleet_counts_check(&w, &w.d[lead], "after the kills");
	/* each device counted once (offered was once 13 for 12: an offer
	 * committed in the aggregate without its device's row, counted again
	 * after a kill; test_fleetdur's offer_counted_in_the_commit_of_its_row) */
	for (int k = 0; k < NC; k++)
		if (w.seen[k] != DEVICES)
			fail_msg("%s{version=\"1.1.0\"} is %lld for %d devices", COUNTERS[k], (long long)w.seen[k], DEVICES);
	assert_int_equal(fleet_series(&w.lb, "otacd_fleet_devices", "1.1.0"), DEVICES);
	assert_int_equal(fleet_series(&w.lb, "otacd_fleet_reporting", "1.1.0"), DEVICES);
	{ /* the API says the same on the leader (a follower has no fleet to count) */
		static const char *const api_counts[] = { "devices", "offered", "downloads", "installs", "confirmed" };
		json_t *r = NULL, *fl;
		char *p = xasprintf("/api/v1/releases/%lld/rollout", (long long)rel);
		assert_int_equal(h_get(&w.d[lead], p, &r), 200);
		fl = json_object_get(r, "fleet");
		for (size_t k = 0; k < OTA_ARRAY_SIZE(api_counts); k++)
			assert_int_equal(json_integer_value(json_object_get(fl, api_counts[k])), DEVICES);
		json_decref(r);
		free(p);
	}
	/* the followers answered devices and agents, forwarded: each of them
	 * devices, and the two agents' calls somewhere, while lead led */
	revive(&w);
	assert_int_equal(w.exits75, exits);
	assert_int_equal(h_get(&w.d[lead], "/readyz", NULL), 200);
	answered_2xx(&w, "agents", agents1);
	answered_2xx(&w, "devices", devices1);
	for (int k = 0; k < N; k++) {
		print_message("instance %d%s: %lld device and %lld agent answers 2xx since the restart\n", k,
			      k == lead ? " (leader)" : "", (long long)(devices1[k] - devices0[k]),
			      (long long)(agents1[k] - agents0[k]));
		if (k == lead)
			continue;
		assert_true(devices1[k] > devices0[k]);
		forwarded += agents1[k] - agents0[k];
	}
	assert_true(forwarded > 0);
	/* the simulator's side: every device offered, installed, confirmed,
	 * nothing refused, reverted or failed; no report refused or given up
	 * (fleetsim resends what got no answer), and every install and boot it
	 * had acknowledged counted once by the fleet (w.seen) */
	st = h_fleetsim_stop(&w.sim);
	{
		char *a = json_dumps(st, JSON_COMPACT);
		print_message("fleet: %.600s\n", a);
		free(a);
	}
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "versions"), "1.1.0")), DEVICES);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "offered"), "1.1.0")), DEVICES);
	assert_int_equal(json_integer_value(json_object_get(st, "installed")), w.seen[2]);
	assert_int_equal(json_integer_value(json_object_get(st, "confirmed")), w.seen[3]);
	assert_int_equal(json_integer_value(json_object_get(st, "reverted")), 0);
	assert_int_equal(json_integer_value(json_object_get(st, "boot_failed")), 0);
	assert_int_equal(json_integer_value(json_object_get(st, "refused")), 0);
	assert_int_equal(json_integer_value(json_object_get(st, "reports_rejected")), 0);
	assert_int_equal(json_integer_value(json_object_get(st, "reports_dropped")), 0);
	assert_true(json_integer_value(json_object_get(st, "reports_sent")) > 0);

	{
		int64_t sorted[16], sum = 0;
		memcpy(sorted, w.took, sizeof(sorted));
		for (int a = 0; a < w.kills; a++)
			for (int b = a + 1; b < w.kills; b++)
				if (sorted[b] < sorted[a]) {
					int64_t t = sorted[a];
					sorted[a] = sorted[b];
					sorted[b] = t;
				}
		for (int a = 0; a < w.kills; a++)
			sum += sorted[a];
		print_message("takeovers: %d, median %lld ms, %lld..%lld ms (mean %lld); %d artifacts whole;"
			      " %d exits with 75; %lld s in all\n",
			      w.kills, (long long)(sorted[w.kills / 2 - 1] + sorted[w.kills / 2]) / 2, (long long)sorted[0],
			      (long long)sorted[w.kills - 1], (long long)(sum / w.kills), nart, w.exits75,
			      (long long)(now_ms() - t0) / 1000);
	}
	json_decref(st);
	json_decref(audit);
	free(path);
	world_stop(&w);
}

/* One command to haproxy's admin socket; its answer must be empty (done). */
static void haproxy_cmd(const char *sock, const char *cmd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char ans[512];
	ssize_t n, got = 0;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0 && strlen(sock) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(fd, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
	assert_int_equal(write(fd, "\n", 1), 1);
	while (got < (ssize_t)sizeof(ans) - 1 && (n = read(fd, ans + got, sizeof(ans) - 1 - (size_t)got)) > 0)
		got += n;
	ans[got] = '\0';
	close(fd);
	if (strspn(ans, "\n") != (size_t)got)
		fail_msg("haproxy: %s: %s", cmd, ans);
}

/*
 * The agent's side of a takeover, on its own: every answer is 503 for
 * longer than the agent's upload used to try (four tries, about 3 s), as
 * through any instance while the leader is replaced (within 10 s,
 * docs/scale.md).  haproxy stands between one otacd and a remote agent;
 * its one server is put in maintenance (haproxy answers 503) while the
 * job runs, over its upload, for 7 s.  The upload is sent again until the
 * daemon answers, and the job passes at its first attempt instead of
 * failing as "infra" and running again.
 */
static void agent_upload_outlasts_seconds_of_503(void **state)
{
	static const char *const yaml = "name: up\nstages:\n  - name: build\n"
					"    steps: [ { run: \"sleep 2 && head -c 100000 /dev/urandom > a.bin\" } ]\n"
					"    artifacts: [ { path: a.bin, name: a.bin } ]\n";
	const char *const a[] = { "--local-agents", "0", NULL };
	struct daemon d, lb;
	struct buf cfg = BUF_INIT;
	char *bin = haproxy_bin(), *listen, *sock, *path, *log, *token, *sql;
	pid_t hp, agent;
	int64_t run;

	(void)state;
	if (!bin) {
		if (getenv("OTACD_CI"))
			fail_msg("haproxy is missing in CI (.ci/run installs it)");
		print_message("SKIP: haproxy is not installed\n");
		skip();
	}
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, a), 0);
	h_init(&lb, NULL);
	listen = h_free_listen();
	sock = xasprintf("%s/haproxy.sock", lb.dir);
	path = xasprintf("%s/haproxy.cfg", lb.dir);
	log = xasprintf("%s/haproxy.log", lb.dir);
	buf_printf(&cfg, "global\n  stats socket %s level admin\n"
			 "defaults\n  mode http\n  timeout connect 1s\n  timeout client 150s\n  timeout server 150s\n"
			 "frontend api\n  bind %s\n  default_backend one\nbackend one\n  server o0 %s\n",
		   sock, listen, d.url + strlen("http://"));
	assert_int_equal(ota_write_file_atomic(path, cfg.ptr, cfg.len, 0600), 0);
	{
		char *argv[] = { bin, "-db", "-f", path, NULL };
		hp = dh_spawn(log, argv);
	}
	lb.url = xasprintf("http://%s", listen);
	lb.token = xstrdup(d.token);
	for (int i = 0; i < 500 && h_get(&lb, "/api/v1/health", NULL) != 200; i++)
		h_msleep(20);
	token = h_agent_add(&d, "remote", "test");
	assert_non_null(token);
	agent = h_agent_with(&lb, "remote", "test", token);

	run = h_trigger(&d, yaml);
	sql = xasprintf("SELECT COUNT(*) FROM jobs WHERE run_id = %lld AND state = 'running'", (long long)run);
	for (int64_t end = now_ms() + CAP_MS; !h_sql_int(&d, sql) && now_ms() < end;)
		h_msleep(20);
	assert_int_equal(h_sql_int(&d, sql), 1);
	haproxy_cmd(sock, "disable server one/o0");
	assert_int_equal(h_get(&lb, "/api/v1/health", NULL), 503);
	h_msleep(7000);
	/* the 2 s step and its upload are over: the upload still waits */
	assert_int_equal(h_sql_int(&d, sql), 1);
	haproxy_cmd(sock, "enable server one/o0");
	assert_string_equal(h_wait_run(&d, run, CAP_MS), "passed");
	free(sql);
	sql = xasprintf("SELECT attempt FROM jobs WHERE run_id = %lld", (long long)run);
	assert_int_equal(h_sql_int(&d, sql), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts WHERE name = 'a.bin'"), 1);

	kill(agent, SIGTERM);
	waitpid(agent, NULL, 0);
	kill(hp, SIGTERM);
	waitpid(hp, NULL, 0);
	buf_release(&cfg);
	free(sql);
	free(token);
	free(log);
	free(path);
	free(sock);
	free(listen);
	free(bin);
	h_cleanup(&lb);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(leader_killed_ten_times_behind_haproxy_loses_and_doubles_nothing),
		cmocka_unit_test(agent_upload_outlasts_seconds_of_503),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
