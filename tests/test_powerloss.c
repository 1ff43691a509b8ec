/*
 * test_powerloss.c - what an answer promises survives a power cut, and a
 * retried request (Idempotency-Key) changes nothing twice.
 *
 * Power loss is simulated the way crash-consistency harnesses do without a
 * special device: while a real otacd creates runs (otacd.db) and registers
 * devices (fleet.db) as fast as two clients can ask, the test copies the
 * database files (the main file, then its -wal; never the -shm, which a
 * reboot loses) at random instants.  The copy races the daemon's writes,
 * so the WAL's tail may be torn mid-frame: exactly what a power cut leaves.
 * Each copy must open, pass PRAGMA integrity_check and hold every change
 * whose answer the clients had received before the copy began.  Finally
 * the daemon is restarted on one of the copies and must serve it.  A second
 * scenario does the same for approvals, promotions, rollbacks, artifact
 * records and device report batches, each checked on its own.
 *
 * What it cannot prove: a copy sees the page cache, not the disk, so it
 * does not reorder or drop writes the kernel had not flushed; that part
 * rests on synchronous=FULL (the WAL is fsynced before COMMIT returns and
 * thus before any answer) and on SQLite's own fsync ordering.  A copy whose
 * WAL was restarted while it was being taken (a checkpoint reset the log
 * between copying the main file and the WAL) is not a state any crash can
 * produce and is discarded, detected by the WAL header (salts) changing.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "../common/httpc.h"
#include "../orchestrator/fleet/fleet.h"
#include "dropproxy.h"
#include "harness.h"

static const char *const no_agents[] = { "--local-agents", "0", NULL };

struct load {
	struct daemon *d;
	pthread_mutex_t mu;
	volatile int stop;
	int64_t runs_acked;     /* runs whose 201 came back (ids 1..n: only this client creates runs) */
	int64_t max_run_id;
	int devices_acked;      /* devices pl-00000 .. pl-(n-1) whose registration was answered */
	int errors;
};

static void *make_runs(void *arg)
{
	struct load *l = arg;
	char *url = xasprintf("%s/api/v1/runs", l->d->url);
	json_t *req = json_pack("{ss ss}", "pipeline", "name: p\nstages:\n  - { name: one, steps: [ { run: 'true' } ] }\n",
				"file", "p.yml");
	while (!l->stop) {
		json_t *ans = NULL;
		long status = 0;
		int rc = httpc_json(&ans, &status, "POST", url, l->d->token, req, 20000);
		pthread_mutex_lock(&l->mu);
		if (rc == 0 && status == 201) {
			l->runs_acked++;
			l->max_run_id = json_integer_value(json_object_get(ans, "id"));
		} else {
			l->errors++;
		}
		pthread_mutex_unlock(&l->mu);
		json_decref(ans);
	}
	json_decref(req);
	free(url);
	return NULL;
}

static void *register_devices(void *arg)
{
	struct load *l = arg;
	char *url = xasprintf("%s/device/v1/register", l->d->device_url);
	int next = 0;
	while (!l->stop && next < 90000) {
		json_t *ids = json_array(), *req, *ans = NULL;
		long status = 0;
		char id[32];
		for (int i = 0; i < 10; i++) {
			snprintf(id, sizeof(id), "pl-%05d", next + i);
			json_array_append_new(ids, json_string(id));
		}
		req = json_pack("{so}", "devices", ids);
		int rc = httpc_json(&ans, &status, "POST", url, l->d->fleet_key, req, 20000);
		pthread_mutex_lock(&l->mu);
		if (rc == 0 && status == 200) {
			next += 10;
			l->devices_acked = next;
		} else if (!(rc == 0 && status == 429)) {
			l->errors++;
		}
		pthread_mutex_unlock(&l->mu);
		json_decref(ans);
		json_decref(req);
		if (rc == 0 && status == 429)
			h_msleep(20);
	}
	free(url);
	return NULL;
}

/* The WAL header's checkpoint sequence and salts (bytes 12..23); zeros
 * when there is no WAL yet. */
static void wal_header(const char *db, unsigned char hdr[12])
{
	char *wal = xasprintf("%s-wal", db);
	int fd = open(wal, O_RDONLY);
	memset(hdr, 0, 12);
	if (fd >= 0) {
		if (pread(fd, hdr, 12, 12) != 12)
			memset(hdr, 0, 12);
		close(fd);
	}
	free(wal);
}

/* Copy src to dst with small reads (so the daemon's writes interleave);
 * a missing src leaves no dst. */
static void copy_file(const char *src, const char *dst)
{
	char block[4096];
	ssize_t n;
	int in = open(src, O_RDONLY), out;
	unlink(dst);
	if (in < 0)
		return;
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(out >= 0);
	while ((n = read(in, block, sizeof(block))) > 0)
		assert_int_equal(write(out, block, (size_t)n), n);
	close(in);
	close(out);
}

/* Snapshot db (main file, then WAL) into dir; 0 when the WAL was not reset
 * while copying, else -1 (discard the copy). */
static int snapshot(const char *state, const char *name, const char *dir)
{
	char *src = xasprintf("%s/%s", state, name), *dst = xasprintf("%s/%s", dir, name);
	char *srcw = xasprintf("%s-wal", src), *dstw = xasprintf("%s-wal", dst), *dsts = xasprintf("%s-shm", dst);
	unsigned char before[12], after[12];
	wal_header(src, before);
	copy_file(src, dst);
	copy_file(srcw, dstw);
	unlink(dsts);
	wal_header(src, after);
	free(src);
	free(dst);
	free(srcw);
	free(dstw);
	free(dsts);
	return memcmp(before, after, sizeof(before)) ? -1 : 0;
}

static int64_t copy_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t v = -1;
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* Open the copy (SQLite recovers the WAL), check its integrity. */
static sqlite3 *open_copy(const char *dir, const char *name)
{
	char *path = xasprintf("%s/%s", dir, name);
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	if (strcmp((const char *)sqlite3_column_text(st, 0), "ok"))
		fail_msg("%s: integrity_check: %s", path, sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	free(path);
	return db;
}

static void acknowledged_changes_survive_a_power_cut(void **state)
{
	(void)state;
	struct daemon d = { 0 };
	struct load l = { .mu = PTHREAD_MUTEX_INITIALIZER };
	pthread_t runs, devs;
	char *snap = h_tmpdir(), *last = NULL, *state_dir;
	int good = 0, torn = 0, discarded = 0;
	int64_t last_runs = 0;

	h_init(&d, "device_register_rate: 100000\ndevice_register_burst: 100000\n");
	h_start(&d, no_agents);
	state_dir = xasprintf("%s/state", d.dir);
	l.d = &d;
	assert_int_equal(pthread_create(&runs, NULL, make_runs, &l), 0);
	assert_int_equal(pthread_create(&devs, NULL, register_devices, &l), 0);
	srand((unsigned)getpid());
	for (int attempt = 0; good < 12 && attempt < 80; attempt++) {
		char *dir = xasprintf("%s/%d", snap, attempt);
		int64_t runs_acked, max_id;
		int devices_acked, ok;
		h_msleep(20 + rand() % 80);
		pthread_mutex_lock(&l.mu);
		runs_acked = l.runs_acked;
		max_id = l.max_run_id;
		devices_acked = l.devices_acked;
		pthread_mutex_unlock(&l.mu);
		assert_int_equal(mkdir(dir, 0700), 0);
		/* one instant for both files is not needed: each database's
		 * promises are checked against its own copy */
		ok = snapshot(state_dir, "otacd.db", dir) == 0 && snapshot(state_dir, "fleet.db", dir) == 0;
		if (!ok) {
			discarded++;
			free(dir);
			continue;
		}
		sqlite3 *db = open_copy(dir, "otacd.db");
		char *sql = xasprintf("SELECT COUNT(*) FROM runs WHERE id <= %lld", (long long)max_id);
		int64_t have = copy_int(db, sql), total = copy_int(db, "SELECT COUNT(*) FROM runs");
		free(sql);
		if (have != runs_acked)
			fail_msg("copy %d: %lld of %lld acknowledged runs", attempt, (long long)have, (long long)runs_acked);
		torn += total > runs_acked; /* the copy caught runs not yet answered */
		sqlite3_close(db);
		db = open_copy(dir, "fleet.db");
		sql = xasprintf("SELECT COUNT(*) FROM registered WHERE id < 'pl-%05d'", devices_acked);
		have = copy_int(db, sql);
		free(sql);
		if (have != devices_acked)
			fail_msg("copy %d: %lld of %d acknowledged devices", attempt, (long long)have, devices_acked);
		sqlite3_close(db);
		good++;
		free(last);
		last = dir;
		last_runs = runs_acked;
	}
	l.stop = 1;
	pthread_join(runs, NULL);
	pthread_join(devs, NULL);
	print_message("%d copies checked (%d caught work in flight), %d discarded (WAL reset while copying);"
		      " %lld runs and %d devices acknowledged, %d failed requests\n",
		      good, torn, discarded, (long long)l.runs_acked, l.devices_acked, l.errors);
	assert_true(good >= 12);
	assert_int_equal(l.errors, 0);
	assert_true(l.runs_acked > 50);

	/* the daemon comes up on the last copy as if the power had been cut
	 * then, and serves every acknowledged run */
	h_kill(&d, SIGKILL);
	for (int i = 0; i < 2; i++) {
		const char *name = i ? "fleet.db" : "otacd.db";
		char *src = xasprintf("%s/%s", last, name), *dst = xasprintf("%s/%s", state_dir, name);
		char *dsts = xasprintf("%s-shm", dst), *srcw = xasprintf("%s-wal", src), *dstw = xasprintf("%s-wal", dst);
		copy_file(src, dst);
		copy_file(srcw, dstw);
		unlink(dsts);
		free(src);
		free(dst);
		free(dsts);
		free(srcw);
		free(dstw);
	}
	assert_int_equal(h_start(&d, no_agents), 0);
	assert_true(h_sql_int(&d, "SELECT COUNT(*) FROM runs") >= last_runs);
	json_t *run = h_run(&d, last_runs);
	json_decref(run);
	free(last);
	free(snap);
	free(state_dir);
	h_cleanup(&d);
}


/* ---- release actions, artifact records, report batches ------------------ */

#define PL_RELEASES 4
#define PL_DEVICES 4000

struct load2 {
	struct daemon *d;
	pthread_mutex_t mu;
	volatile int stop;
	int64_t release[PL_RELEASES];
	/* per release: 1 once its answer (200) came back */
	int approved[PL_RELEASES], promoted[PL_RELEASES], rolled_back[PL_RELEASES];
	int actions_done;       /* release_actions has finished */
	char *agent_token, *job_token;
	int64_t job_id;
	int artifacts_acked;    /* pa-00000 .. pa-(n-1) answered 201 */
	char **cred;            /* devices rp-0000 .. */
	int batches_acked;      /* report batches answered 200, 10 new devices each */
	int errors;
};

static long post_action(struct daemon *d, int64_t release, const char *what, json_t *req)
{
	char *path = xasprintf("/api/v1/releases/%lld/%s", (long long)release, what);
	json_t *ans = NULL;
	long st = h_post(d, path, req, &ans);
	if (st != 200)
		print_message("%s %lld: %ld %s\n", what, (long long)release, st,
			      json_string_value(json_object_get(ans, "error")));
	json_decref(ans);
	json_decref(req);
	free(path);
	return st;
}

/* Approve (promote a waiting stage), promote a holding step (skip_step),
 * roll back: each release in turn, spread over the copies. */
static void *release_actions(void *arg)
{
	struct load2 *l = arg;
	for (int i = 0; i < PL_RELEASES && !l->stop; i++) {
		int *flag[3] = { &l->approved[i], &l->promoted[i], &l->rolled_back[i] };
		for (int k = 0; k < 3 && !l->stop; k++) {
			json_t *req = k == 0   ? json_pack("{ss}", "reason", "approved for the power cut")
				      : k == 1 ? json_pack("{ss sb}", "reason", "next step now", "skip_step", 1)
					       : json_pack("{ss}", "reason", "power cut drill");
			long st;
			h_msleep(60 + rand() % 240);
			st = post_action(l->d, l->release[i], k == 2 ? "rollback" : "promote", req);
			pthread_mutex_lock(&l->mu);
			if (st == 200)
				*flag[k] = 1;
			else
				l->errors++;
			pthread_mutex_unlock(&l->mu);
		}
	}
	pthread_mutex_lock(&l->mu);
	l->actions_done = 1;
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

/* Upload artifacts pa-00000, pa-00001 ... to the job this test's agent holds. */
static void *upload_artifacts(void *arg)
{
	struct load2 *l = arg;
	for (int n = 0; !l->stop && n < 100000; n++) {
		struct httpc_response resp;
		char body[64], sha[65], *url;
		int len = snprintf(body, sizeof(body), "artifact %d of the power cut\n", n);
		ota_sha256_hex(body, (size_t)len, sha);
		url = xasprintf("%s/api/v1/agent/jobs/%lld/artifacts?name=pa-%05d&sha256=%s", l->d->url,
				(long long)l->job_id, n, sha);
		int rc = httpc_request_ex(&resp, "PUT", url, l->job_token, "application/octet-stream", body, (size_t)len,
					  20000, NULL);
		long st = rc == 0 ? resp.status : 0;
		pthread_mutex_lock(&l->mu);
		if (st == 201)
			l->artifacts_acked = n + 1;
		else
			l->errors++;
		pthread_mutex_unlock(&l->mu);
		if (rc == 0)
			httpc_response_release(&resp);
		free(url);
		if (st != 201)
			break;
		if (n % 50 == 49) {
			json_t *ans = NULL, *req = json_object();
			long hb = 0;
			url = xasprintf("%s/api/v1/agent/jobs/%lld/heartbeat", l->d->url, (long long)l->job_id);
			httpc_json(&ans, &hb, "POST", url, l->job_token, req, 20000);
			json_decref(req);
			json_decref(ans);
			free(url);
		}
	}
	return NULL;
}

/* Batches of 10 devices never seen reporting: each checks in (1.0.0 of
 * product rp, no rollout), then one batch reports a heartbeat for all ten. */
static void *report_batches(void *arg)
{
	struct load2 *l = arg;
	char *checkin = xasprintf("%s/device/v1/checkin", l->d->device_url);
	char *reports = xasprintf("%s/device/v1/reports", l->d->device_url);
	for (int b = 0; !l->stop && (b + 1) * 10 <= PL_DEVICES; b++) {
		json_t *list = json_array(), *req, *ans = NULL;
		long st = 0;
		int ok = 1;
		for (int i = b * 10; i < b * 10 + 10 && ok; i++) {
			char id[32];
			snprintf(id, sizeof(id), "rp-%04d", i);
			req = json_pack("{ss ss ss ss ss si}", "device", id, "product", "rp", "hardware", "mps2-an385",
					"bootloader", "1.0.0", "version", "1.0.0", "security_counter", 0);
			ok = httpc_json(&ans, &st, "POST", checkin, l->cred[i], req, 20000) == 0 && st == 200;
			json_decref(ans);
			json_decref(req);
			ans = NULL;
			json_array_append_new(list, json_pack("{ss ss ss ss}", "device", id, "credential", l->cred[i],
							      "version", "1.0.0", "event", "heartbeat"));
		}
		req = json_pack("{so}", "reports", list);
		ok = ok && httpc_json(&ans, &st, "POST", reports, NULL, req, 20000) == 0 && st == 200;
		pthread_mutex_lock(&l->mu);
		if (ok)
			l->batches_acked = b + 1;
		else
			l->errors++;
		pthread_mutex_unlock(&l->mu);
		json_decref(ans);
		json_decref(req);
		if (!ok)
			break;
	}
	free(checkin);
	free(reports);
	return NULL;
}

/* The committed aggregate of the copy's fleet.db, read by the fleet module
 * itself (so the check does not depend on fleet.db's layout). */
static int64_t copy_reporting(const char *dir, const char *product, const char *version)
{
	struct fleet_config c = { 0 };
	struct fleet *f = NULL;
	struct fleet_agg a;
	char *path = xasprintf("%s/fleet.db", dir);
	c.db_path = path;
	assert_int_equal(fleet_open(&f, &c), 0);
	assert_int_equal(fleet_aggregate(f, product, version, "*", &a), 0);
	fleet_close(f);
	free(path);
	return a.reporting;
}

static char *release_pipeline(int i)
{
	return xasprintf("name: p%d\nstages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: \"printf 'p%d' > app.bin && head -c 3000 /dev/zero >> app.bin\" } ]\n"
			 "    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 0, key: test }\n"
			 "  - { name: canary, kind: rollout, needs: [release], approval: required,"
			 " steps: [ {percent: 10, hold: 1000h}, {percent: 100, hold: 1000h} ], gates: [uptime] }\n"
			 "gates:\n  uptime: { metric: crash_rate, max: 0.5, min_devices: 1 }\n", i, i);
}

/*
 * The same power cut for what the release side and the fleet promise:
 * approvals and promotions (POST promote answered 200), rollbacks,
 * artifact records (an agent's upload answered 201) and device report
 * batches (answered 200: their counts are in the aggregates), each checked
 * on its own in every copy taken while all four happen at once.
 */
static void acknowledged_actions_artifacts_and_reports_survive_a_power_cut(void **state)
{
	(void)state;
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	struct daemon d = { 0 };
	struct load2 l = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct buf out = BUF_INIT;
	pthread_t th[3];
	char *snap = h_tmpdir(), *state_dir, *cfg;
	int good = 0, discarded = 0, caught[4] = { 0 };
	char failed[512] = "";   /* the first broken promise (fail only once the threads stopped) */

	h_init(&d, NULL);
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem",
			      d.dir), 0);
	cfg = xasprintf("keys:\n  test: { spec: %s/key.pem }\ndevice_register_rate: 100000\n"
			"device_register_burst: 100000\n", d.dir);
	d.config = xasprintf("%s/config.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(d.config, cfg, strlen(cfg), 0600), 0);
	assert_int_equal(h_start(&d, args), 0);
	state_dir = xasprintf("%s/state", d.dir);
	l.d = &d;

	/* four releases waiting for approval, one job held by this test's agent */
	for (int i = 0; i < PL_RELEASES; i++) {
		char *y = release_pipeline(i);
		h_trigger(&d, y);
		free(y);
	}
	for (int waited = 0; waited < 120000 && h_sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE state ="
							     " 'waiting_approval'") < PL_RELEASES; waited += 100)
		h_msleep(100);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM rollouts WHERE state = 'waiting_approval'"), PL_RELEASES);
	for (int i = 0; i < PL_RELEASES; i++) {
		char sql[128];
		snprintf(sql, sizeof(sql), "SELECT release_id FROM rollouts ORDER BY release_id LIMIT 1 OFFSET %d", i);
		l.release[i] = h_sql_int(&d, sql);
	}
	l.agent_token = h_agent_add(&d, "pl-up", "pl-upload");
	assert_non_null(l.agent_token);
	{
		char *url = xasprintf("%s/api/v1/agent/register", d.url);
		json_t *req = json_pack("{s[s]}", "labels", "pl-upload"), *ans = NULL;
		long st = 0;
		h_trigger(&d, "name: up\nstages:\n  - { name: hold, agent: { labels: [pl-upload] },"
			      " steps: [ { run: 'true' } ] }\n");
		assert_int_equal(httpc_json(&ans, &st, "POST", url, l.agent_token, req, 20000), 0);
		assert_int_equal(st, 200);
		json_decref(ans);
		json_decref(req);
		free(url);
		url = xasprintf("%s/api/v1/agent/jobs/request", d.url);
		req = json_pack("{si}", "wait_ms", 20000);
		ans = NULL;
		assert_int_equal(httpc_json(&ans, &st, "POST", url, l.agent_token, req, 30000), 0);
		assert_int_equal(st, 200);
		l.job_id = json_integer_value(json_object_get(ans, "job_id"));
		l.job_token = xstrdup(json_string_value(json_object_get(ans, "job_token")));
		json_decref(ans);
		json_decref(req);
		free(url);
	}
	l.cred = h_register_devices(&d, "rp", PL_DEVICES);

	srand((unsigned)getpid());
	assert_int_equal(pthread_create(&th[0], NULL, release_actions, &l), 0);
	assert_int_equal(pthread_create(&th[1], NULL, upload_artifacts, &l), 0);
	assert_int_equal(pthread_create(&th[2], NULL, report_batches, &l), 0);
	/* at least 12 copies, and copies until every action was answered */
	for (int attempt = 0, done = 0; (good < 12 || !done) && attempt < 200 && !failed[0]; attempt++) {
		char *dir = xasprintf("%s/%d", snap, attempt), sql[256];
		int approved[PL_RELEASES], promoted[PL_RELEASES], rolled[PL_RELEASES], artifacts, batches;
		int64_t have;
		sqlite3 *db;
		h_msleep(40 + rand() % 120);
		pthread_mutex_lock(&l.mu);
		memcpy(approved, l.approved, sizeof(approved));
		memcpy(promoted, l.promoted, sizeof(promoted));
		memcpy(rolled, l.rolled_back, sizeof(rolled));
		artifacts = l.artifacts_acked;
		batches = l.batches_acked;
		done = l.actions_done;
		pthread_mutex_unlock(&l.mu);
		assert_int_equal(mkdir(dir, 0700), 0);
		if (snapshot(state_dir, "otacd.db", dir) < 0 || snapshot(state_dir, "fleet.db", dir) < 0) {
			discarded++;
			free(dir);
			continue;
		}
#define FAILED(...) (failed[0] ? 0 : snprintf(failed, sizeof(failed), __VA_ARGS__))
		db = open_copy(dir, "otacd.db");
		for (int i = 0; i < PL_RELEASES; i++) {
			/* an approval answered: the stage no longer waits */
			snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM rollouts WHERE release_id = %lld AND state !="
				 " 'waiting_approval'", (long long)l.release[i]);
			have = copy_int(db, sql);
			if (approved[i] && have != 1)
				FAILED("copy %d: approval of release %lld answered, not in the copy", attempt,
					 (long long)l.release[i]);
			caught[0] += !approved[i] && have > 0;
			/* audited: the approval (the first promote), then a promotion,
			 * whose step was entered */
			snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM audit WHERE action = 'promote' AND actor != 'otacd'"
				 " AND release_id = %lld", (long long)l.release[i]);
			have = copy_int(db, sql);
			if (approved[i] && have < 1)
				FAILED("copy %d: approval of release %lld answered, not audited in the copy", attempt,
					 (long long)l.release[i]);
			if (promoted[i] && have < 2)
				FAILED("copy %d: promotion of release %lld answered, not in the copy", attempt,
					 (long long)l.release[i]);
			snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM rollouts WHERE release_id = %lld AND step >= 1",
				 (long long)l.release[i]);
			if (promoted[i] && copy_int(db, sql) != 1)
				FAILED("copy %d: release %lld promoted, its step not in the copy", attempt,
					 (long long)l.release[i]);
			/* a rollback answered: recorded, the rollout over */
			snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM audit WHERE action = 'rollback' AND release_id = %lld",
				 (long long)l.release[i]);
			have = copy_int(db, sql);
			if (rolled[i] && have < 1)
				FAILED("copy %d: rollback of release %lld answered, not in the copy", attempt,
					 (long long)l.release[i]);
			caught[1] += !rolled[i] && have > 0;
		}
		/* artifact records answered 201 */
		snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM artifacts WHERE job_id = %lld AND name < 'pa-%05d'",
			 (long long)l.job_id, artifacts);
		have = copy_int(db, sql);
		if (have != artifacts)
			FAILED("copy %d: %lld of %d acknowledged artifact records", attempt, (long long)have, artifacts);
		snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM artifacts WHERE job_id = %lld", (long long)l.job_id);
		caught[2] += copy_int(db, sql) > artifacts;
		sqlite3_close(db);
		/* report batches answered 200: ten new reporting devices each */
		have = copy_reporting(dir, "rp", "1.0.0");
		if (have < 10LL * batches)
			FAILED("copy %d: %lld reporting devices, %d acknowledged", attempt, (long long)have, 10 * batches);
		caught[3] += have > 10LL * batches;
		good++;
		free(dir);
	}
#undef FAILED
	l.stop = 1;
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	if (failed[0])
		fail_msg("%s", failed);
	{
		int approved = 0, promoted = 0, rolled = 0;
		for (int i = 0; i < PL_RELEASES; i++) {
			approved += l.approved[i];
			promoted += l.promoted[i];
			rolled += l.rolled_back[i];
		}
		print_message("%d copies checked, %d discarded; acknowledged: %d approvals, %d promotions, %d rollbacks,"
			      " %d artifacts, %d report batches; copies that caught unanswered work: %d approvals,"
			      " %d rollbacks, %d artifacts, %d batches; %d failed requests\n",
			      good, discarded, approved, promoted, rolled, l.artifacts_acked, l.batches_acked, caught[0],
			      caught[1], caught[2], caught[3], l.errors);
		assert_true(good >= 12);
		assert_int_equal(l.errors, 0);
		/* every kind was acknowledged while copies were taken */
		assert_true(approved == PL_RELEASES && promoted == PL_RELEASES && rolled == PL_RELEASES);
		assert_true(l.artifacts_acked > 20);
		assert_true(l.batches_acked > 5);
	}
	for (int i = 0; i < PL_DEVICES; i++)
		free(l.cred[i]);
	free(l.cred);
	free(l.agent_token);
	free(l.job_token);
	free(cfg);
	free(snap);
	free(state_dir);
	buf_release(&out);
	h_cleanup(&d);
}

/* ---- Idempotency-Key ---------------------------------------------------- */

#define OPERATOR_TOKEN "operator-token-0123456789abcdef"

/* POST path with body and key (NULL: none) as token; the status, the
 * answer's "id" in *id (0 without one), the Idempotent-Replayed header in
 * *replayed. */
static long post_key(struct daemon *d, const char *token, const char *path, const char *body, const char *key,
		     int64_t *id, int *replayed)
{
	struct httpc_response resp;
	char *url = xasprintf("%s%s", d->url, path), *h = key ? xasprintf("Idempotency-Key: %s", key) : NULL;
	const char *headers[2] = { h, NULL };
	char *flag = NULL;
	long status;
	assert_int_equal(httpc_request_ex(&resp, "POST", url, token, "application/json", body, strlen(body), 20000,
					  headers), 0);
	status = resp.status;
	*id = 0;
	if (status < 300) {
		json_t *ans = json_loadb(resp.body.ptr, resp.body.len, 0, NULL);
		assert_non_null(ans);
		*id = json_integer_value(json_object_get(ans, "id"));
		json_decref(ans);
	}
	*replayed = httpc_response_header(&flag, &resp, "Idempotent-Replayed") == 0 && !strcmp(flag, "true");
	free(flag);
	httpc_response_release(&resp);
	free(h);
	free(url);
	return status;
}

static const char run_body[] = "{\"pipeline\":\"name: p\\nstages:\\n  - { name: one, steps: [ { run: 'true' } ] }\\n\"}";
static const char other_body[] = "{\"pipeline\":\"name: q\\nstages:\\n  - { name: one, steps: [ { run: 'true' } ] }\\n\"}";

static void a_retried_request_changes_nothing_twice(void **state)
{
	(void)state;
	struct daemon d = { 0 };
	int64_t id, again;
	int replayed;

	h_init(&d, "tokens:\n  - { name: ci, role: operator, token: " OPERATOR_TOKEN " }\n");
	h_start(&d, no_agents);

	/* the same POST twice with one key: one run, the same answer */
	assert_int_equal(post_key(&d, d.token, "/api/v1/runs", run_body, "key-1", &id, &replayed), 201);
	assert_true(id > 0);
	assert_false(replayed);
	assert_int_equal(post_key(&d, d.token, "/api/v1/runs", run_body, "key-1", &again, &replayed), 201);
	assert_true(replayed);
	assert_int_equal(again, id);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 1);

	/* across a daemon killed and restarted */
	h_kill(&d, SIGKILL);
	assert_int_equal(h_start(&d, no_agents), 0);
	assert_int_equal(post_key(&d, d.token, "/api/v1/runs", run_body, "key-1", &again, &replayed), 201);
	assert_true(replayed);
	assert_int_equal(again, id);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 1);

	/* another body under the same key: refused, nothing created */
	assert_int_equal(post_key(&d, d.token, "/api/v1/runs", other_body, "key-1", &again, &replayed), 422);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 1);
	/* a malformed key: refused */
	assert_int_equal(post_key(&d, d.token, "/api/v1/runs", run_body, "two words", &again, &replayed), 400);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 1);

	/* keys belong to their token: another token's key-1 is a new request */
	assert_int_equal(post_key(&d, OPERATOR_TOKEN, "/api/v1/runs", run_body, "key-1", &again, &replayed), 201);
	assert_false(replayed);
	assert_true(again != id);
	/* without a key every POST acts */
	assert_int_equal(post_key(&d, d.token, "/api/v1/runs", run_body, NULL, &again, &replayed), 201);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 3);

	/* cancel: the retry gets the first answer and writes no second event */
	char *path = xasprintf("/api/v1/runs/%lld/cancel", (long long)id);
	assert_int_equal(post_key(&d, d.token, path, "{}", "cancel-1", &again, &replayed), 200);
	int64_t events = h_sql_int(&d, "SELECT COUNT(*) FROM events");
	assert_int_equal(post_key(&d, d.token, path, "{}", "cancel-1", &again, &replayed), 200);
	assert_true(replayed);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM events"), events);
	/* the key of the run trigger on the cancel path: another request */
	assert_int_equal(post_key(&d, d.token, path, "{}", "key-1", &again, &replayed), 422);
	free(path);
	h_cleanup(&d);
}

static void otactl_retries_through_a_lost_answer(void **state)
{
	(void)state;
	struct daemon d = { 0 };
	struct dproxy px = { 0 };
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *file;
	const char *yaml = "name: p\nstages:\n  - { name: one, steps: [ { run: 'true' } ] }\n";

	h_init(&d, NULL);
	d.listen = h_free_listen(); /* the restart below keeps the address */
	h_start(&d, no_agents);
	file = xasprintf("%s/p.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(file, yaml, strlen(yaml), 0644), 0);
	dproxy_start(&px, d.url);  /* otactl's first answer is lost */

	/* the first answer is lost: otactl retries with its key and prints
	 * the run the first attempt created; exactly one run exists */
	assert_int_equal(h_sh(&out, "%s --url http://127.0.0.1:%d --token %s trigger %s", otactl, px.port, d.token,
			      file), 0);
	print_message("otactl: %s", buf_cstr(&out));
	assert_non_null(strstr(buf_cstr(&out), "retrying"));
	/* the proxy counts a connection once its client has gone */
	for (int waited = 0; waited < 5000 && px.connections < 2; waited += 20)
		h_msleep(20);
	assert_true(px.connections >= 2);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM idempotency WHERE status = 201"), 1);

	/* without the proxy, a daemon restarted while otactl retries: otactl
	 * waits it out and acts once */
	h_kill(&d, SIGKILL);
	{
		char *cmd = xasprintf("%s --url %s --token %s trigger %s", otactl, d.url, d.token, file);
		FILE *p = popen(cmd, "r");
		assert_non_null(p);
		h_msleep(600);
		assert_int_equal(h_start(&d, no_agents), 0);
		assert_int_equal(pclose(p), 0);
		free(cmd);
	}
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 2);

	dproxy_stop(&px);
	free(file);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(acknowledged_changes_survive_a_power_cut),
		cmocka_unit_test(acknowledged_actions_artifacts_and_reports_survive_a_power_cut),
		cmocka_unit_test(a_retried_request_changes_nothing_twice),
		cmocka_unit_test(otactl_retries_through_a_lost_answer),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
