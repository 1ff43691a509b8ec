/*
 * test_fleetha.c - the device fleet with several otacd instances on one
 * PostgreSQL fleet database (issue 16, docs/scale.md, "The fleet on
 * several instances").
 *
 * A real PostgreSQL cluster (tests/pgcluster.c) and real otacd processes
 * with state directories of their own on one otacd and one fleet
 * database, spoken to over HTTP on loopback.  Devices register, check in
 * and report through a follower, which forwards to the leader's device
 * API; a follower keeps out of the fleet database (it has not opened the
 * fleet); the instance that takes
 * the lead loads the fleet as the database has it then, so devices keep
 * their credentials and the counts go on from the old leader's; an
 * instance whose fleet key or device secret differs from the fleet
 * database's is refused at start with exit 2.  Every wait has a generous
 * cap that ends early on success; nothing is timed.
 *
 * Without PostgreSQL's binaries every case is skipped, saying so.
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
#include <sys/wait.h>
#include <unistd.h>

#include "../orchestrator/db/db.h"
#include "../orchestrator/fleet/fleet_ca.h"
#include "devharness.h"
#include "harness.h"
#include "pgcluster.h"

#define NDEV 20

static const char *const args[] = { "--local-agents", "0", NULL };
static const char *const release_args[] = { "--local-agents", "1", NULL };

#define ORIGIN_TOKEN "cdn-pull-token-0123456789abcdef"

struct world {
	struct pgcluster pg;
	char *otacd_db, *fleet_db, *secrets;
	struct daemon d[2];
};

/* 0, or 1 to skip.  d[0] leads, d[1] follows, both with one fleet key and
 * device secret (h_fleet_secrets_yaml).  releases: one artifact store for
 * both, the release key "test", a CDN's pull token, a local agent on the
 * leader, /metrics behind the fleet key. */
static int world_start_with(struct world *w, int releases)
{
	char *yaml, *objects = NULL;

	memset(w, 0, sizeof(*w));
	if (h_pg_start_dbs(&w->pg, &w->otacd_db, &w->fleet_db) > 0)
		return 1;
	w->secrets = h_fleet_secrets_yaml(w->pg.dir);
	if (releases) {
		char *tok = xasprintf("%s/origin.token", w->pg.dir);
		objects = xasprintf("%s/objects", w->pg.dir);
		assert_int_equal(ota_mkdir_p(objects, 0700), 0);
		free(h_ec_keypair(w->pg.dir));
		assert_int_equal(ota_write_file_atomic(tok, ORIGIN_TOKEN "\n", strlen(ORIGIN_TOKEN) + 1, 0600), 0);
		yaml = xasprintf("leader_poll: 1s\ndevice_metrics_public: false\n%skeys:\n  test: { spec: %s/k.pem }\n"
				 "image_origin: { kind: cdn, url: \"http://127.0.0.1:9/img/\", token_file: %s }\n",
				 w->secrets, w->pg.dir, tok);
		free(tok);
	} else {
		yaml = xasprintf("leader_poll: 1s\n%s", w->secrets);
	}
	h_pg_instances_objects(w->d, 2, w->otacd_db, w->fleet_db, yaml, releases ? release_args : args, objects);
	free(objects);
	free(yaml);
	/* the configured key (h_start reads STATE/fleet.key, not made here) */
	{
		const char *k = strstr(w->secrets, "fleet_key: \"") + 12;
		for (int i = 0; i < 2; i++)
			w->d[i].fleet_key = xstrndup(k, 64);
	}
	return 0;
}

static int world_start(struct world *w)
{
	return world_start_with(w, 0);
}

static void world_stop(struct world *w)
{
	for (int i = 0; i < 2; i++)
		h_cleanup(&w->d[i]);
	pgcluster_stop(&w->pg);
	free(w->otacd_db);
	free(w->fleet_db);
	free(w->secrets);
}

/* Everything the fleet stores, as one digest (the fleet database's
 * snapshot, log, meta and aggregates). */
static char *fleet_digest(struct world *w)
{
	struct db *db = NULL;
	struct db_stmt *st;
	char *out;

	assert_int_equal(db_open(&db, w->fleet_db, 0), 0);
	st = db_stmt(db, "SELECT md5("
			 " coalesce((SELECT string_agg(gen::text || md5(rows), ',' ORDER BY gen, md5(rows)) FROM dev_snap), '')"
			 " || '|' || coalesce((SELECT string_agg(seq::text || md5(rows), ',' ORDER BY seq) FROM dev_log), '')"
			 " || '|' || coalesce((SELECT string_agg(key || '=' || value, ',' ORDER BY key) FROM fleet_meta), '')"
			 " || '|' || coalesce((SELECT string_agg(product || version || cohort || reporting || offered, ','"
			 " ORDER BY product, version, cohort) FROM aggs), ''))");
	assert_non_null(st);
	assert_int_equal(db_step(st), 1);
	out = xstrdup(db_column_text(st, 0));
	db_reset(st);
	db_close(db);
	return out;
}

/* A check-in of device i (200 expected, 503 retried while the instance
 * starts leading); the final status. */
static long checkin(struct daemon *d, char **creds, int i)
{
	char id[32];
	long st = 0;
	snprintf(id, sizeof(id), "dev-%04d", i);
	for (int k = 0; k < 600; k++) {
		json_t *req = json_pack("{ss ss ss ss ss si}", "device", id, "product", "fw", "hardware", "mps2-an385",
					"bootloader", "1.0.0", "version", "1.0.0", "security_counter", 1);
		if ((st = h_dev_post(d, "/device/v1/checkin", creds[i], req, NULL)) != 503)
			break;
		h_msleep(50);
	}
	return st;
}

/* One heartbeat report of devices from .. to-1, each with its own
 * credential: the number accepted. */
static int64_t heartbeats(struct daemon *d, char **creds, int from, int to)
{
	json_t *reps = json_array(), *ans = NULL;
	int64_t n;
	long st;
	for (int i = from; i < to; i++) {
		char id[32];
		snprintf(id, sizeof(id), "dev-%04d", i);
		json_array_append_new(reps, json_pack("{ss ss ss ss}", "device", id, "credential", creds[i], "version",
						      "1.0.0", "event", "heartbeat"));
	}
	/* 503 + Retry-After: a device retries (an instance starting to lead) */
	for (int k = 0; k < 600; k++) {
		json_decref(ans);
		ans = NULL;
		if ((st = h_dev_post(d, "/device/v1/reports", NULL, json_pack("{sO}", "reports", reps), &ans)) != 503)
			break;
		h_msleep(50);
	}
	json_decref(reps);
	if (st != 200) {
		char *text = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("reports through %s: %ld %s", d->device_url, st, text ? text : "");
	}
	n = json_integer_value(json_object_get(ans, "accepted"));
	json_decref(ans);
	return n;
}

/* d's otacd_fleet_reporting for fw 1.0.0, cohort "*" (-1: absent). */
static int64_t reporting(struct daemon *d)
{
	static const char needle[] = "otacd_fleet_reporting{product=\"fw\",version=\"1.0.0\",cohort=\"*\"} ";
	char *text = h_device_metrics(d, NULL);
	const char *p = strstr(text, needle);
	int64_t n = p ? strtoll(p + strlen(needle), NULL, 10) : -1;
	free(text);
	return n;
}

/* Wait (up to 30 s) until d's reporting and device counts are these. */
static void wait_counts(struct daemon *d, int64_t devices, int64_t reports)
{
	int64_t on = -1, rep = -1;
	for (int k = 0; k < 300; k++) {
		if ((on = h_fleet_devices(d, "1.0.0")) == devices && (rep = reporting(d)) == reports)
			return;
		h_msleep(100);
	}
	fail_msg("%s: %lld devices on 1.0.0 and %lld reporting, not %lld and %lld", d->url, (long long)on,
		 (long long)rep, (long long)devices, (long long)reports);
}

/* 1 when d's /readyz says it follows. */
static int follows(struct daemon *d)
{
	json_t *r = NULL;
	long st = h_get(d, "/readyz", &r);
	char *text = r ? json_dumps(r, 0) : NULL;
	int following = st == 503 && text && strstr(text, "follower");
	free(text);
	json_decref(r);
	return following;
}

/* The digest stays the same for a while with the leader stopped: the
 * other instance, following, writes nothing to the fleet database. */
static void assert_follower_writes_nothing(struct world *w, struct daemon *leader)
{
	char *before, *after;
	kill(leader->pid, SIGSTOP);
	before = fleet_digest(w);
	h_msleep(2000); /* eight of a writer's rounds, had it one */
	after = fleet_digest(w);
	kill(leader->pid, SIGCONT);
	assert_string_equal(before, after);
	free(before);
	free(after);
}

/* The status of d's device GET /metrics with the fleet key. */
static long metrics_status(struct daemon *d)
{
	struct buf out = BUF_INIT;
	long st;
	h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s' '%s/metrics'", d->fleet_key,
	     d->device_url);
	st = strtol(buf_cstr(&out), NULL, 10);
	buf_release(&out);
	return st;
}

static void devices_through_a_follower_keep_credentials_and_counts_across_a_failover(void **state)
{
	struct world w;
	char **creds;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	assert_false(follows(&w.d[0]));
	assert_true(follows(&w.d[1]));
	/* registered, checked in and reporting through the follower, which
	 * forwards to the leader's device API; the leader counts them */
	creds = h_register_devices(&w.d[1], "dev", NDEV);
	for (int i = 0; i < NDEV / 2; i++)
		assert_int_equal(checkin(&w.d[1], creds, i), 200);
	assert_int_equal(heartbeats(&w.d[1], creds, 0, NDEV / 2), NDEV / 2);
	wait_counts(&w.d[0], NDEV / 2, NDEV / 2);
	/* a wrong credential is the leader's 401, relayed */
	assert_int_equal(checkin(&w.d[1], creds + 1, 0), 401);
	/* the follower has no fleet of its own: its reads are the leader's */
	assert_int_equal(metrics_status(&w.d[1]), 200);
	assert_int_equal(metrics_status(&w.d[0]), 200);
	{
		/* one hop at most: a request another instance forwarded already is 503 */
		struct buf out = BUF_INIT;
		h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -X POST -H '" "X-Otacd-Forwarded" ": 1'"
			   " -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' --data '{\"device\":"
			   " \"dev-0000\", \"product\": \"fw\", \"hardware\": \"mps2-an385\", \"bootloader\":"
			   " \"1.0.0\", \"version\": \"1.0.0\", \"security_counter\": 1}' '%s/device/v1/checkin'",
		     creds[0], w.d[1].device_url);
		assert_string_equal(buf_cstr(&out), "503");
		buf_release(&out);
	}
	assert_follower_writes_nothing(&w, &w.d[0]);

	/* the leader dies; the follower leads with the fleet the database has */
	h_kill(&w.d[0], SIGKILL);
	for (int k = 0; k < 600 && follows(&w.d[1]); k++)
		h_msleep(50);
	assert_false(follows(&w.d[1]));
	/* the same credentials, no registration: the old devices and new ones */
	for (int i = 0; i < NDEV; i++)
		assert_int_equal(checkin(&w.d[1], creds, i), 200);
	wait_counts(&w.d[1], NDEV, NDEV / 2);
	assert_int_equal(heartbeats(&w.d[1], creds, NDEV / 2, NDEV - 2), NDEV / 2 - 2);
	wait_counts(&w.d[1], NDEV, NDEV - 2);

	/* the old leader comes back and follows: it forwards, and writes nothing itself */
	w.d[0].follower_ok = 1;
	assert_int_equal(h_start(&w.d[0], args), 0);
	assert_true(follows(&w.d[0]));
	assert_int_equal(heartbeats(&w.d[0], creds, NDEV - 2, NDEV), 2);
	wait_counts(&w.d[1], NDEV, NDEV);
	assert_follower_writes_nothing(&w, &w.d[1]);
	wait_counts(&w.d[1], NDEV, NDEV);

	for (int i = 0; i < NDEV; i++)
		free(creds[i]);
	free(creds);
	world_stop(&w);
}

/* otacd on the world's databases with these secrets' config lines, in a
 * state directory of its own: its exit status (124: still running after
 * 60 s, i.e. it started) and its output in out. */
static int start_with(struct world *w, const char *secrets, struct buf *out)
{
	char *dir = h_tmpdir(), *config = xasprintf("%s/otacd.yml", dir), *otacd = h_bin("otacd");
	char *yaml = xasprintf("database: \"%s\"\nfleet_database: \"%s\"\nleader_poll: 1s\nlocal_agents: 0\n%s", w->otacd_db,
			       w->fleet_db, secrets);
	int rc;

	assert_int_equal(ota_write_file_atomic(config, yaml, strlen(yaml), 0600), 0);
	rc = h_sh(out, "timeout 60 %s --state-dir %s --config %s --listen 127.0.0.1:0 --device-listen 127.0.0.1:0",
		  otacd, dir, config);
	h_sh(out + 1, "rm -rf %s", dir);
	free(yaml);
	free(otacd);
	free(config);
	free(dir);
	return rc;
}

static void an_instance_with_another_fleet_key_or_device_secret_is_refused_with_exit_2(void **state)
{
	struct world w;
	struct buf out[2] = { BUF_INIT, BUF_INIT };
	char *dir, *other, *mixed, *other_key;
	const char *key_end;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	/* d[1] started with the same pair: it follows */
	assert_true(follows(&w.d[1]));
	dir = h_tmpdir(); /* another pair, its secret's file in a directory of its own */
	other = h_fleet_secrets_yaml(dir);
	other_key = xstrndup(other + 12, 64);
	key_end = strchr(w.secrets, '\n') + 1;

	/* the same fleet key, another device secret */
	mixed = xasprintf("%.*s%s", (int)(key_end - w.secrets), w.secrets, strchr(other, '\n') + 1);
	assert_int_equal(start_with(&w, mixed, out), 2);
	if (!strstr(buf_cstr(&out[0]), "device secret (device_secret_file) differs"))
		fail_msg("refused without naming the device secret:\n%s", buf_cstr(&out[0]));
	free(mixed);
	/* another fleet key, the same device secret */
	mixed = xasprintf("%.*s%s", (int)(strchr(other, '\n') + 1 - other), other, key_end);
	assert_int_equal(start_with(&w, mixed, out), 2);
	if (!strstr(buf_cstr(&out[0]), "fleet_key differs"))
		fail_msg("refused without naming fleet_key:\n%s", buf_cstr(&out[0]));
	assert_null(strstr(buf_cstr(&out[0]), other_key)); /* never the value */
	free(mixed);
	/* nothing of theirs was recorded: the leader's devices still register */
	{
		char **creds = h_register_devices(&w.d[0], "dev", 1);
		assert_int_equal(checkin(&w.d[0], creds, 0), 200);
		free(creds[0]);
		free(creds);
	}

	h_sh(&out[1], "rm -rf %s", dir);
	free(dir);
	free(other_key);
	free(other);
	buf_release(&out[0]);
	buf_release(&out[1]);
	world_stop(&w);
}

/* ---- reads, downloads and the PKI's reads through a follower --------------- */

/* dh_fw_release_yaml with an image past the forwarder's 4 MiB answer cap
 * (API_FWD_MAX_ANSWER): a follower that relayed it through memory would
 * answer 502. */
static const char big_release_yaml[] = "name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 5000000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
	"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n";

struct answer {
	long status;
	struct buf body;
	char range[128];   /* its Content-Range, "" when none */
};

/* GET (or another method) of d's device API path with curl and the extra
 * curl options opts (headers): status, body and Content-Range. */
static void dev_get(struct daemon *d, const char *method, const char *path, const char *opts, struct answer *a)
{
	struct buf out = BUF_INIT;
	char *body = xasprintf("%s/answer.body", d->dir), *hdrs = xasprintf("%s/answer.hdrs", d->dir);
	const char *cr;

	unlink(body);
	h_sh(&out, "curl -s -X %s -o '%s' -D '%s' -w '%%{http_code}' %s '%s%s'", method, body, hdrs, opts,
	     d->device_url, path);
	a->status = strtol(buf_cstr(&out), NULL, 10);
	buf_init(&a->body, BUF_NOLIMIT); /* empty when there is no body file */
	ota_read_file(&a->body, body, (size_t)64 << 20);
	a->range[0] = 0;
	buf_release(&out); /* ota_read_file starts it afresh */
	if (ota_read_file(&out, hdrs, 1 << 20) == 0 && (cr = strcasestr(buf_cstr(&out), "\nContent-Range: ")))
		snprintf(a->range, sizeof(a->range), "%.*s", (int)strcspn(cr + 16, "\r\n"), cr + 16);
	buf_release(&out);
	free(body);
	free(hdrs);
}

/* The same request to the leader and through the follower: the same
 * status, body and Content-Range; the status. */
static long same_answer(struct world *w, const char *method, const char *path, const char *opts)
{
	struct answer l, f;
	long st;

	dev_get(&w->d[0], method, path, opts, &l);
	dev_get(&w->d[1], method, path, opts, &f);
	if (l.status != f.status || l.body.len != f.body.len ||
	    (l.body.len && memcmp(l.body.ptr, f.body.ptr, l.body.len)) || strcmp(l.range, f.range))
		fail_msg("%s %s %s: the leader answered %ld (%zu bytes, range '%s'), the follower %ld (%zu bytes,"
			 " range '%s'): %.200s", method, path, opts, l.status, l.body.len, l.range, f.status, f.body.len,
			 f.range, buf_cstr(&f.body));
	st = l.status;
	buf_release(&l.body);
	buf_release(&f.body);
	return st;
}

/* The otacd_fleet_devices and otacd_fleet_offered lines of a /metrics text. */
static void fleet_lines(const char *text, struct buf *out)
{
	buf_init(out, BUF_NOLIMIT);
	for (const char *p = text; *p; p += strcspn(p, "\n"), p += *p == '\n') {
		if (!strncmp(p, "otacd_fleet_devices{", 20) || !strncmp(p, "otacd_fleet_offered{", 20)) {
			buf_put(out, p, strcspn(p, "\n"));
			buf_puts(out, "\n");
		}
	}
}

/* /metrics through the follower is the leader's: their fleet gauges agree
 * (read again while the writer moves them, up to 30 s). */
static void same_fleet_metrics(struct world *w, const char *opts)
{
	struct buf l = BUF_INIT, f = BUF_INIT;
	struct answer a;
	int same = 0;

	for (int k = 0; k < 300 && !same; k++) {
		buf_release(&l);
		buf_release(&f);
		dev_get(&w->d[0], "GET", "/metrics", opts, &a);
		assert_int_equal(a.status, 200);
		fleet_lines(buf_cstr(&a.body), &l);
		buf_release(&a.body);
		dev_get(&w->d[1], "GET", "/metrics", opts, &a);
		assert_int_equal(a.status, 200);
		fleet_lines(buf_cstr(&a.body), &f);
		buf_release(&a.body);
		same = l.len > 0 && !strcmp(buf_cstr(&l), buf_cstr(&f));
		if (!same)
			h_msleep(100);
	}
	if (!same)
		fail_msg("the leader's fleet metrics:\n%s\nthe follower's:\n%s", buf_cstr(&l), buf_cstr(&f));
	buf_release(&l);
	buf_release(&f);
}

/* d's device API /metrics (opts: its credential), 200, checked as a
 * Prometheus scrape checks it: no family typed twice, no series twice
 * (the text in out). */
static void metrics_of(struct daemon *d, const char *opts, struct buf *out)
{
	struct answer a;
	const char *lines[4096];
	size_t lens[4096], n = 0;
	int typed[4096]; /* a family's name (# TYPE), else a series */

	dev_get(d, "GET", "/metrics", opts, &a);
	assert_int_equal(a.status, 200);
	for (const char *p = buf_cstr(&a.body); *p; p += strcspn(p, "\n"), p += *p == '\n') {
		size_t len = strcspn(p, "\n");
		int type = !strncmp(p, "# TYPE ", 7);
		if (type) /* its family: the name */
			p += 7, len = strcspn(p, " \n");
		else if (*p == '#' || !len)
			continue;
		else if (memrchr(p, ' ', len)) /* a series: all but its value */
			len = (size_t)((const char *)memrchr(p, ' ', len) - p);
		for (size_t i = 0; i < n; i++)
			if (typed[i] == type && lens[i] == len && !memcmp(lines[i], p, len))
				fail_msg("%s/metrics names %.*s twice:\n%s", d->device_url, (int)len, p, buf_cstr(&a.body));
		assert_true(n < 4096);
		lines[n] = p;
		typed[n] = type;
		lens[n++] = len;
	}
	*out = a.body;
}

/* The unlabelled series name's value in a /metrics text; -1: none. */
static int64_t metric_in(const char *text, const char *name)
{
	size_t len = strlen(name);
	for (const char *p = text; *p; p += strcspn(p, "\n"), p += *p == '\n')
		if (!strncmp(p, name, len) && p[len] == ' ')
			return strtoll(p + len + 1, NULL, 10);
	return -1;
}

/* The image bytes each of the leader and the follower says it sent, and
 * their otacd_leader, read through their own /metrics. */
static void bytes_served(struct world *w, const char *opts, int64_t sent[2], int64_t leads[2])
{
	for (int i = 0; i < 2; i++) {
		struct buf m;
		metrics_of(&w->d[i], opts, &m);
		leads[i] = metric_in(buf_cstr(&m), "otacd_leader");
		sent[i] = metric_in(buf_cstr(&m), "otacd_image_bytes_served_total");
		assert_true(sent[i] >= 0);
		buf_release(&m);
	}
}

/* dev-0000's offer (checked in through d), waiting for the rollout. */
static json_t *offer_of(struct daemon *d, const char *cred)
{
	json_t *ans = NULL, *offer = NULL;
	for (int k = 0; k < 600 && !offer; k++) {
		json_t *req = json_pack("{ss ss ss ss ss si}", "device", "dev-0000", "product", "fw", "hardware",
					"mps2-an385", "bootloader", "1.0.0", "version", "1.0.0", "security_counter", 1);
		json_decref(ans);
		ans = NULL;
		if (h_dev_post(d, "/device/v1/checkin", cred, req, &ans) == 200 &&
		    json_is_object(json_object_get(ans, "offer")))
			offer = json_incref(json_object_get(ans, "offer"));
		else
			h_msleep(100);
	}
	json_decref(ans);
	if (!offer)
		fail_msg("no offer for dev-0000 through %s", d->device_url);
	return offer;
}

static void reads_downloads_and_pki_answer_through_a_follower_as_on_the_leader(void **state)
{
	struct world w;
	char **creds, *tok, *bad, *path, *opts, *meta, *origin;
	const char *sha;
	json_t *offer;
	int64_t release, size, before[2], after[2], leads[2];
	struct answer a;
	struct buf m;
	long hwm;

	(void)state;
	if (world_start_with(&w, 1) > 0)
		skip();
	assert_true(follows(&w.d[1]));
	creds = h_register_devices(&w.d[1], "dev", 2);
	release = dh_release_of(&w.d[0], h_trigger(&w.d[0], big_release_yaml));
	assert_true(release > 0);
	offer = offer_of(&w.d[1], creds[0]);
	sha = json_string_value(json_object_get(json_object_get(offer, "image"), "sha256"));
	size = json_integer_value(json_object_get(json_object_get(offer, "image"), "size"));
	assert_non_null(sha);
	assert_true(size > (4 << 20));
	tok = xasprintf("-H 'Authorization: Bearer %s'", creds[0]);
	bad = xasprintf("-H 'Authorization: Bearer %032d'", 7);
	meta = xasprintf("-H 'Authorization: Bearer %s'", w.d[0].fleet_key);

	/* /metrics and the registrations' audit: the fleet key; the follower
	 * relays the leader's answer (the audit byte for byte) */
	same_fleet_metrics(&w, meta);
	assert_int_equal(same_answer(&w, "GET", "/device/v1/registrations", meta), 200);
	/* the PKI's reads: the device's token and name */
	path = xasprintf("/device/v1/releases/%lld/manifest", (long long)release);
	opts = xasprintf("%s -H 'X-Device-Id: dev-0000'", tok);
	assert_int_equal(same_answer(&w, "GET", path, opts), 200);
	assert_int_equal(same_answer(&w, "GET", "/device/v1/revocations", opts), 404); /* none published */
	free(opts);

	/* the image: whole, a Range, a HEAD, from the shared store (5 MB: past
	 * what a relay through memory takes) */
	free(path);
	path = xasprintf("/device/v1/images/%s?device=dev-0000", sha);
	hwm = h_proc_kb(w.d[1].pid, "VmHWM");
	assert_int_equal(same_answer(&w, "GET", path, tok), 200);
	bytes_served(&w, meta, before, leads);
	dev_get(&w.d[1], "GET", path, tok, &a);
	{
		char got[65];
		ota_sha256_hex(a.body.ptr, a.body.len, got);
		assert_string_equal(got, sha);
		buf_release(&a.body);
	}
	/* each instance's /metrics: the fleet's gauges (the leader's, above)
	 * and its own counters: the follower sent the image, not the leader */
	bytes_served(&w, meta, after, leads);
	assert_int_equal(after[1] - before[1], size);
	assert_true(after[0] - before[0] < size);
	assert_int_equal(leads[0], 1);
	assert_int_equal(leads[1], 0);
	same_fleet_metrics(&w, meta);
	/* two whole downloads cost the follower far less than one image */
	hwm = h_proc_kb(w.d[1].pid, "VmHWM") - hwm;
	print_message("fleetha: two %lld-byte downloads through the follower: its VmHWM +%ld kB\n", (long long)size,
		      hwm);
	assert_true(hwm < size / 1024 / 2);
	/* the leader's check itself: every check first, then no bytes */
	dev_get(&w.d[0], "GET", path, "-H 'X-Otacd-Download-Check: 1'", &a);
	assert_int_equal(a.status, 401);
	buf_release(&a.body);
	opts = xasprintf("%s -H 'X-Otacd-Download-Check: 1'", tok);
	dev_get(&w.d[0], "GET", path, opts, &a);
	assert_int_equal(a.status, 204);
	assert_int_equal(a.body.len, 0);
	buf_release(&a.body);
	free(opts);
	opts = xasprintf("%s -H 'Range: bytes=1000-1999'", tok);
	assert_int_equal(same_answer(&w, "GET", path, opts), 206);
	free(opts);
	opts = xasprintf("%s -H 'Range: bytes=-10'", tok);
	assert_int_equal(same_answer(&w, "GET", path, opts), 206);
	free(opts);
	dev_get(&w.d[1], "HEAD", path, tok, &a);
	assert_int_equal(a.status, 200);
	buf_release(&a.body);
	/* the CDN's pull, its own token */
	origin = xasprintf("/device/v1/origin/%s", sha);
	assert_int_equal(same_answer(&w, "GET", origin, "-H 'Authorization: Bearer " ORIGIN_TOKEN "'"), 200);

	/* hostile: no token, a wrong one, another device's name, a Range past
	 * the end: refused as on the leader (the leader decides) */
	assert_int_equal(same_answer(&w, "GET", "/metrics", ""), 401);
	assert_int_equal(same_answer(&w, "GET", "/metrics", bad), 401);
	assert_int_equal(same_answer(&w, "GET", "/metrics", "-H 'X-Otacd-Fleet-Metrics: 1'"), 401);
	/* the fleet-wide part only: a client asking for it gets less */
	opts = xasprintf("%s -H 'X-Otacd-Fleet-Metrics: 1'", meta);
	metrics_of(&w.d[0], opts, &m);
	assert_int_equal(metric_in(buf_cstr(&m), "otacd_image_bytes_served_total"), -1);
	assert_non_null(strstr(buf_cstr(&m), "\notacd_fleet_devices{"));
	buf_release(&m);
	free(opts);
	assert_int_equal(same_answer(&w, "GET", "/device/v1/registrations", ""), 401);
	assert_int_equal(same_answer(&w, "GET", "/device/v1/registrations", tok), 401); /* a device's token */
	opts = xasprintf("-H 'X-Device-Id: dev-0000'");
	assert_int_equal(same_answer(&w, "GET", "/device/v1/revocations", opts), 401);
	free(opts);
	opts = xasprintf("%s -H 'X-Device-Id: dev-0000'", bad);
	free(path);
	path = xasprintf("/device/v1/releases/%lld/manifest", (long long)release);
	assert_int_equal(same_answer(&w, "GET", path, opts), 401);
	free(opts);
	free(path);
	path = xasprintf("/device/v1/images/%s?device=dev-0000", sha);
	assert_int_equal(same_answer(&w, "GET", path, ""), 401);
	assert_int_equal(same_answer(&w, "GET", path, bad), 401);
	opts = xasprintf("-H 'Authorization: Bearer %s'", creds[1]); /* dev-0001's token for dev-0000 */
	assert_int_equal(same_answer(&w, "GET", path, opts), 401);
	free(opts);
	opts = xasprintf("%s -H 'Range: bytes=%lld-'", tok, (long long)size);
	assert_int_equal(same_answer(&w, "GET", path, opts), 416);
	free(opts);
	assert_int_equal(same_answer(&w, "GET", origin, ""), 401);
	assert_int_equal(same_answer(&w, "GET", origin, bad), 403);
	free(path);
	path = xasprintf("/device/v1/images/%064d?device=dev-0000", 0); /* never offered */
	assert_int_equal(same_answer(&w, "GET", path, tok), 404);
	/* the leader's check is not a way around a hop: a request that
	 * crossed one already is 503 on the follower */
	opts = xasprintf("%s -H 'X-Otacd-Forwarded: 1'", tok);
	free(path);
	path = xasprintf("/device/v1/images/%s?device=dev-0000", sha);
	dev_get(&w.d[1], "GET", path, opts, &a);
	assert_int_equal(a.status, 503);
	buf_release(&a.body);
	free(opts);

	free(path);
	free(origin);
	free(tok);
	free(bad);
	free(meta);
	json_decref(offer);
	for (int i = 0; i < 2; i++)
		free(creds[i]);
	free(creds);
	world_stop(&w);
}

/* A key and a CSR for CN id made with openssl(1) in dir; the CSR's PEM. */
static char *csr_for(const char *dir, const char *id)
{
	struct buf out = BUF_INIT;
	char *pem;
	assert_int_equal(h_sh(&out, "cd %s && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
				    " -keyout %s.key -subj /CN=%s -out %s.csr 2>&1 && cat %s.csr", dir, id, id, id, id), 0);
	pem = xstrdup(strstr(buf_cstr(&out), "-----BEGIN"));
	buf_release(&out);
	return pem;
}

/* POST /device/v1/provision of id to d with the provisioner's token
 * (retried while d starts leading); the certificate's PEM, written to
 * dir/id.pem and checked with openssl verify against dir/ca.pem. */
static char *provision_checked(struct daemon *d, const char *token, const char *dir, const char *id)
{
	char *csr = csr_for(dir, id), *path, *pem;
	json_t *ans = NULL;
	struct buf out = BUF_INIT;
	long st = 0;

	for (int k = 0; k < 600; k++) {
		json_decref(ans);
		ans = NULL;
		if ((st = h_dev_post(d, "/device/v1/provision", token, json_pack("{ss ss}", "device", id, "csr", csr),
				     &ans)) != 503)
			break;
		h_msleep(50);
	}
	if (st != 200) {
		char *text = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("provision %s through %s: %ld %s", id, d->device_url, st, text ? text : "");
	}
	pem = xstrdup(json_string_value(json_object_get(ans, "certificate")));
	path = xasprintf("%s/%s.pem", dir, id);
	assert_int_equal(ota_write_file_atomic(path, pem, strlen(pem), 0644), 0);
	if (h_sh(&out, "openssl verify -CAfile %s/ca.pem %s 2>&1", dir, path) != 0)
		fail_msg("%s does not chain to the device CA: %s", id, buf_cstr(&out));
	buf_release(&out);
	json_decref(ans);
	free(path);
	free(csr);
	return pem;
}

/* d's verdict on a certificate (POST /api/v1/devices/identify): the device, or "" refused. */
static char *identify(struct daemon *d, const char *pem)
{
	json_t *ans = NULL, *req = json_pack("{ss}", "certificate", pem);
	char *id;
	assert_int_equal(h_post(d, "/api/v1/devices/identify", req, &ans), 200);
	json_decref(req);
	id = xstrdup(json_is_true(json_object_get(ans, "accepted")) ? json_string_value(json_object_get(ans, "device")) : "");
	json_decref(ans);
	return id;
}

static void the_device_ca_made_on_the_leader_issues_and_verifies_after_a_failover(void **state)
{
	struct world w;
	struct buf out[2] = { BUF_INIT, BUF_INIT };
	json_t *ans = NULL, *req;
	char *dir, *sha, *token, *old_cert, *new_cert, *id;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	dir = h_tmpdir();
	/* the CA, through the leader's API; a provisioner; one device's certificate */
	req = json_pack("{ss si}", "cn", "fleetha device CA", "days", 30);
	assert_int_equal(h_post(&w.d[0], "/api/v1/fleet/ca", req, &ans), 201);
	json_decref(req);
	sha = xstrdup(json_string_value(json_object_get(ans, "sha256")));
	{
		const char *pem = json_string_value(json_object_get(ans, "certificate"));
		char *path = xasprintf("%s/ca.pem", dir);
		assert_int_equal(ota_write_file_atomic(path, pem, strlen(pem), 0644), 0);
		free(path);
	}
	json_decref(ans);
	/* in the shared database: the certificate in clear, the key sealed */
	{
		struct db *db = NULL;
		struct db_stmt *st;
		assert_int_equal(db_open(&db, w.otacd_db, 0), 0);
		assert_non_null(st = db_stmt(db, "SELECT key_sealed FROM device_ca"));
		assert_int_equal(db_step(st), 1);
		assert_true(strncmp(db_column_text(st, 0), "v1:", 3) == 0);
		assert_null(strstr(db_column_text(st, 0), "PRIVATE KEY"));
		db_reset(st);
		db_close(db);
	}
	req = json_pack("{ss ss si si}", "name", "fab", "prefix", "fab-", "max", 10, "rate_per_min", 600);
	assert_int_equal(h_post(&w.d[0], "/api/v1/fleet/provisioners", req, &ans), 201);
	json_decref(req);
	token = xstrdup(json_string_value(json_object_get(ans, "token")));
	json_decref(ans);
	old_cert = provision_checked(&w.d[0], token, dir, "fab-0001");

	/* the leader dies; the follower leads with the CA from the database */
	h_kill(&w.d[0], SIGKILL);
	for (int k = 0; k < 600 && follows(&w.d[1]); k++)
		h_msleep(50);
	assert_false(follows(&w.d[1]));
	assert_int_equal(h_get(&w.d[1], "/api/v1/fleet/ca", &ans), 200);
	if (!json_is_true(json_object_get(ans, "configured")))
		fail_msg("the new leader has no device CA");
	assert_string_equal(json_string_value(json_object_get(ans, "sha256")), sha);
	assert_true(json_is_true(json_object_get(ans, "can_issue")));
	json_decref(ans);
	new_cert = provision_checked(&w.d[1], token, dir, "fab-0002");
	id = identify(&w.d[1], old_cert);
	assert_string_equal(id, "fab-0001");
	free(id);
	id = identify(&w.d[1], new_cert);
	assert_string_equal(id, "fab-0002");
	free(id);
	/* one CA: a second is refused, as on one instance */
	req = json_object();
	assert_int_equal(h_post(&w.d[1], "/api/v1/fleet/ca", req, &ans), 409);
	json_decref(req);
	json_decref(ans);

	/* an altered row (one hex digit of the sealed key): an instance that
	 * takes the lead refuses to lead with it, saying why */
	{
		struct db *db = NULL;
		assert_int_equal(db_open(&db, w.otacd_db, 0), 0);
		assert_int_equal(db_exec(db, "UPDATE device_ca SET key_sealed = overlay(key_sealed placing"
					     " (CASE WHEN substr(key_sealed, 40, 1) = '0' THEN '1' ELSE '0' END) from 40 for 1)"),
				 0);
		db_close(db);
	}
	h_kill(&w.d[1], SIGKILL);
	assert_int_not_equal(start_with(&w, w.secrets, out), 124);
	if (!strstr(buf_cstr(&out[0]), "does not open"))
		fail_msg("an altered device CA row was not refused by name:\n%s", buf_cstr(&out[0]));
	/* a row sealed properly (with the shared device secret) but holding a
	 * key that is not the certificate's: refused too, never half a CA */
	{
		struct db *db = NULL;
		struct db_stmt *st;
		struct buf secret = BUF_INIT, key = BUF_INIT;
		char *path = xasprintf("%s/device-shared.secret", w.pg.dir), *cert, *sealed;
		assert_int_equal(ota_read_file(&secret, path, 4096), 0);
		assert_int_equal(h_sh(&key, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>&1"), 0);
		assert_int_equal(db_open(&db, w.otacd_db, 0), 0);
		assert_non_null(st = db_stmt(db, "SELECT cert_pem FROM device_ca"));
		assert_int_equal(db_step(st), 1);
		cert = xstrdup(db_column_text(st, 0));
		db_reset(st);
		assert_non_null(sealed = fleet_ca_seal(buf_cstr(&secret), cert, (const unsigned char *)key.ptr, key.len));
		assert_non_null(st = db_stmt(db, "UPDATE device_ca SET key_sealed = ?"));
		db_bind_text(st, 1, sealed);
		assert_int_equal(db_run(st), 0);
		db_close(db);
		assert_int_not_equal(start_with(&w, w.secrets, out), 124);
		if (!strstr(buf_cstr(&out[0]), "does not belong to the CA certificate"))
			fail_msg("a device CA row with a foreign key was not refused by name:\n%s", buf_cstr(&out[0]));
		free(cert);
		free(sealed);
		free(path);
		buf_release(&secret);
		buf_release(&key);
	}

	h_sh(&out[1], "rm -rf %s", dir);
	buf_release(&out[0]);
	buf_release(&out[1]);
	free(dir);
	free(sha);
	free(token);
	free(old_cert);
	free(new_cert);
	world_stop(&w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(devices_through_a_follower_keep_credentials_and_counts_across_a_failover),
		cmocka_unit_test(an_instance_with_another_fleet_key_or_device_secret_is_refused_with_exit_2),
		cmocka_unit_test(reads_downloads_and_pki_answer_through_a_follower_as_on_the_leader),
		cmocka_unit_test(the_device_ca_made_on_the_leader_issues_and_verifies_after_a_failover),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
