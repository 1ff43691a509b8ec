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
 * the daemon is restarted on one of the copies and must serve it.
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

/*
 * A proxy between otactl and otacd that forwards the first request and
 * drops its answer (closes both connections when the daemon starts to
 * answer), then relays every later connection untouched.
 */
struct proxy {
	int listen_fd, port, upstream_port;
	volatile int stop;
	int connections;
	pthread_t thread;
};

static int connect_port(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static void relay(int client, int server, int drop_answer)
{
	struct pollfd p[2] = { { client, POLLIN, 0 }, { server, POLLIN, 0 } };
	char block[16384];
	for (;;) {
		if (poll(p, 2, 200) < 0)
			break;
		if (p[0].revents) {
			ssize_t n = read(client, block, sizeof(block));
			if (n <= 0 || write(server, block, (size_t)n) != n)
				break;
		}
		if (p[1].revents) {
			ssize_t n = read(server, block, sizeof(block));
			if (n <= 0 || drop_answer || write(client, block, (size_t)n) != n)
				break;
		}
	}
}

static void *proxy_main(void *arg)
{
	struct proxy *px = arg;
	while (!px->stop) {
		struct pollfd p = { px->listen_fd, POLLIN, 0 };
		if (poll(&p, 1, 100) <= 0)
			continue;
		int client = accept(px->listen_fd, NULL, NULL), server;
		if (client < 0)
			continue;
		server = connect_port(px->upstream_port);
		if (server >= 0) {
			relay(client, server, px->connections == 0);
			close(server);
		}
		px->connections++;
		close(client);
	}
	return NULL;
}

static void proxy_start(struct proxy *px, const char *upstream_url)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	const char *colon = strrchr(upstream_url, ':');
	assert_non_null(colon);
	px->upstream_port = atoi(colon + 1);
	px->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(px->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(px->listen_fd, 8), 0);
	assert_int_equal(getsockname(px->listen_fd, (struct sockaddr *)&sa, &len), 0);
	px->port = ntohs(sa.sin_port);
	assert_int_equal(pthread_create(&px->thread, NULL, proxy_main, px), 0);
}

static void otactl_retries_through_a_lost_answer(void **state)
{
	(void)state;
	struct daemon d = { 0 };
	struct proxy px = { 0 };
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *file;
	const char *yaml = "name: p\nstages:\n  - { name: one, steps: [ { run: 'true' } ] }\n";

	h_init(&d, NULL);
	d.listen = h_free_listen(); /* the restart below keeps the address */
	h_start(&d, no_agents);
	file = xasprintf("%s/p.yml", d.dir);
	assert_int_equal(ota_write_file_atomic(file, yaml, strlen(yaml), 0644), 0);
	proxy_start(&px, d.url);

	/* the first answer is lost: otactl retries with its key and prints
	 * the run the first attempt created; exactly one run exists */
	assert_int_equal(h_sh(&out, "%s --url http://127.0.0.1:%d --token %s trigger %s", otactl, px.port, d.token,
			      file), 0);
	print_message("otactl: %s", buf_cstr(&out));
	assert_non_null(strstr(buf_cstr(&out), "retrying"));
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

	px.stop = 1;
	pthread_join(px.thread, NULL);
	close(px.listen_fd);
	free(file);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(acknowledged_changes_survive_a_power_cut),
		cmocka_unit_test(a_retried_request_changes_nothing_twice),
		cmocka_unit_test(otactl_retries_through_a_lost_answer),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
