/*
 * test_fwdupload.c - an agent's streamed calls through a follower (issue
 * 16; api_forward.h, API_FWD_BODY_FD and API_FWD_SPOOL_ANSWER; docs/scale.md
 * "Forwarding", docs/security.md).
 *
 * A real PostgreSQL cluster (tests/pgcluster.c) and two real otacd on it:
 * d[0] leads, d[1] follows.  Every agent call goes to the follower: an
 * artifact upload of several MB (spooled, sent on, checked by the leader's
 * sha256), one without a token (401, nothing spooled or sent), one whose
 * client goes away midway (no artifact, no spool left), and a hil job's
 * reads of its inputs (the leader's bytes, relayed from a spool); then a
 * real otacd-agent whose URL is the follower runs a pipeline that uploads
 * an artifact and reads it back as a hil input; last, the leader dies
 * under an upload on its way (503, nothing stored).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/httpc.h"
#include "../common/sha256.h"
#include "harness.h"
#include "pgcluster.h"

#define BIG ((size_t)16 << 20) /* the raw uploads: 16 MiB */
#define E2E_SIZE 3000000       /* the agent's artifact */
#define E2E_SIZE_S "3000000"

static struct {
	struct pgcluster pg;
	char *otacd_db, *fleet_db;
	struct daemon d[2];
	int skipped;
	char *tok[4];               /* the agents' tokens: builder, rig, e2e, gone */
} w;

#define LEADER (&w.d[0])
#define FOLLOWER (&w.d[1])

static void hex(const unsigned char *d, char out[65])
{
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void sha_hex(const void *p, size_t n, char out[65])
{
	unsigned char d[32];
	ota_sha256(p, n, d);
	hex(d, out);
}

/* n bytes of "otacd\n" repeated (what `yes otacd | head -c n` makes). */
static char *yes_otacd(size_t n)
{
	char *p = xmalloc(n);
	for (size_t i = 0; i < n; i++)
		p[i] = "otacd\n"[i % 6];
	return p;
}

/* no local agents: the agents here are the test's (and the last test
 * kills the leader, which local agents would outlive) */
static const char *const no_agents[] = { "--local-agents", "0", NULL };

static int setup(void **state)
{
	char *secrets, *yaml;
	(void)state;

	if (h_pg_start_dbs(&w.pg, &w.otacd_db, &w.fleet_db) > 0) {
		w.skipped = 1;
		return 0;
	}
	/* every instance on one fleet database shares its secrets (fleet_keys.c) */
	secrets = h_fleet_secrets_yaml(w.pg.dir);
	yaml = xasprintf("lease: 120s\nleader_poll: 1s\n%s", secrets); /* no job expires mid-test */
	for (int i = 0; i < 2; i++) {
		h_init(&w.d[i], yaml);
		h_use_database(&w.d[i], w.otacd_db, w.fleet_db);
		w.d[i].follower_ok = i > 0;
		if (i > 0)
			w.d[i].token = xstrdup(w.d[0].token);
		assert_int_equal(h_start(&w.d[i], no_agents), 0);
		/* the agents, before the follower starts (a follower now hears of
		 * later ones at the commitwatch's notification: test_authsync) */
		for (int k = 0; i == 0 && k < 4; k++) {
			static const char *const names[][2] = { { "fwd-builder", "fwdb" }, { "fwd-rig", "fwdh" },
								{ "fwd-e2e", "fwde" }, { "fwd-gone", "fwdg" } };
			assert_non_null(w.tok[k] = h_agent_add(&w.d[0], names[k][0], names[k][1]));
		}
	}
	free(yaml);
	free(secrets);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (w.skipped)
		return 0;
	for (int i = 0; i < 2; i++)
		h_cleanup(&w.d[i]);
	pgcluster_stop(&w.pg);
	for (int k = 0; k < 4; k++)
		free(w.tok[k]);
	free(w.otacd_db);
	free(w.fleet_db);
	return 0;
}

#define SKIP_WITHOUT_PG()                                                                                      \
	do {                                                                                                   \
		if (w.skipped) {                                                                               \
			print_message("PostgreSQL's binaries are missing: skipped\n");                        \
			skip();                                                                                \
		}                                                                                              \
	} while (0)

/* The follower's open spools: its descriptors on deleted files. */
static int open_spools(pid_t pid)
{
	char dir[64], path[400], target[512];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	assert_non_null(d = opendir(dir));
	while ((e = readdir(d))) {
		ssize_t len;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if ((len = readlink(path, target, sizeof(target) - 1)) <= 0)
			continue;
		target[len] = '\0';
		if (strstr(target, " (deleted)") && !strncmp(target, FOLLOWER->dir, strlen(FOLLOWER->dir)))
			n++;
	}
	closedir(d);
	return n;
}

static const char *job_token(json_t *job)
{
	return json_string_value(json_object_get(job, "job_token"));
}

static int64_t job_id(json_t *job)
{
	return json_integer_value(json_object_get(job, "job_id"));
}

static int64_t artifacts(void)
{
	return h_sql_int(LEADER, "SELECT count(*) FROM artifacts");
}

/* Upload requests the leader has seen (its /metrics, per route). */
static int64_t leader_uploads(void)
{
	static const char key[] = "otacd_api_request_duration_seconds_count{method=\"PUT\","
				  "route=\"/api/v1/agent/jobs/:id/artifacts\"} ";
	struct buf m = BUF_INIT;
	const char *p;
	int64_t n = 0;

	assert_int_equal(h_raw(LEADER, "GET", "/metrics", LEADER->token, NULL, NULL, 0, &m), 200);
	if ((p = strstr(buf_cstr(&m), key)))
		n = strtoll(p + strlen(key), NULL, 10);
	buf_release(&m);
	return n;
}

/* A hil pipeline whose build job (labels b) uploads and whose hil job
 * (labels h) reads the build's artifacts as inputs. */
static int64_t trigger_two_stages(const char *b, const char *h, const char *build_steps, const char *hil_steps)
{
	char *yaml = xasprintf("name: fwdup\nstages:\n"
			       "  - name: build\n    agent: { labels: [%s] }\n"
			       "    artifacts: [ { path: 'out/*' } ]\n    steps: [ %s ]\n"
			       "  - name: hil\n    kind: hil\n    needs: [build]\n    agent: { labels: [%s] }\n"
			       "    steps: [ %s ]\n",
			       b, build_steps, h, hil_steps);
	int64_t run = h_trigger(LEADER, yaml);
	free(yaml);
	return run;
}

/* Register as the agent of token with one label and claim a job, through d
 * (h_take_job's steps with a token made on the leader). */
static json_t *take_job(struct daemon *d, const char *token, const char *label)
{
	json_t *req = json_pack("{s[s]}", "labels", label), *ans = NULL;
	assert_int_equal(h_call_as(d, token, "POST", "/api/v1/agent/register", req, &ans), 200);
	json_decref(ans);
	json_decref(req);
	ans = NULL;
	req = json_pack("{si}", "wait_ms", 5000);
	assert_int_equal(h_call_as(d, token, "POST", "/api/v1/agent/jobs/request", req, &ans), 200);
	json_decref(req);
	assert_non_null(json_object_get(ans, "job_token"));
	return ans;
}

static long put_artifact(struct daemon *d, json_t *job, const char *token, const char *name, const char *data,
			 size_t len, struct buf *out)
{
	char sha[65], *path;
	long st;

	sha_hex(data, len, sha);
	path = xasprintf("/api/v1/agent/jobs/%lld/artifacts?name=%s&sha256=%s", (long long)job_id(job), name, sha);
	st = h_raw(d, "PUT", path, token, "application/octet-stream", data, len, out);
	free(path);
	return st;
}

static void finish(struct daemon *d, json_t *job)
{
	char *path = xasprintf("/api/v1/agent/jobs/%lld/finish", (long long)job_id(job));
	json_t *body = json_pack("{si si}", "exit_code", 0, "attempt",
				 (int)json_integer_value(json_object_get(job, "attempt"))),
	       *ans = NULL;
	long st = h_call_as(d, job_token(job), "POST", path, body, &ans);
	if (st != 200) {
		char *t = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("finish: %ld %s", st, t ? t : "");
	}
	json_decref(ans);
	json_decref(body);
	free(path);
}

/* ---- the tests --------------------------------------------------------------- */

static json_t *build_job, *hil_job;

static void an_upload_through_the_follower_lands_on_the_leader_and_memory_stays_flat(void **state)
{
	char *big = yes_otacd(BIG), sha[65], *got;
	struct buf ans = BUF_INIT;
	int64_t before, seen;
	long hwm0, hwm1;
	(void)state;
	SKIP_WITHOUT_PG();

	trigger_two_stages("fwdb", "fwdh", "{ run: 'true' }", "{ run: 'true' }");
	/* register and claim through the follower too (forwarded writes) */
	build_job = take_job(FOLLOWER, w.tok[0], "fwdb");
	assert_non_null(job_token(build_job));
	before = artifacts();
	seen = leader_uploads();
	hwm0 = h_proc_kb(FOLLOWER->pid, "VmHWM");
	assert_int_equal(put_artifact(FOLLOWER, build_job, job_token(build_job), "out/big.bin", big, BIG, &ans), 201);
	hwm1 = h_proc_kb(FOLLOWER->pid, "VmHWM");
	print_message("fwdupload: 16 MiB upload through the follower: its VmHWM %ld -> %ld kB (+%ld kB)\n", hwm0, hwm1,
		      hwm1 - hwm0);
	/* buffered, the body alone would add 16 MiB; the spool adds a few
	 * buffers (a generous bound: not a measure) */
	assert_true(hwm1 - hwm0 < (long)(BIG / 1024 / 2));
	assert_int_equal(artifacts(), before + 1);
	/* counted once the leader's answer went out: a moment after the relay */
	for (int i = 0; i < 500 && leader_uploads() == seen; i++)
		h_msleep(10);
	assert_int_equal(leader_uploads(), seen + 1);
	sha_hex(big, BIG, sha);
	got = h_sql_text(LEADER, "SELECT sha256 FROM artifacts WHERE name = 'out/big.bin'");
	assert_string_equal(got, sha);
	free(got);
	assert_int_equal(h_sql_int(LEADER, "SELECT size FROM artifacts WHERE name = 'out/big.bin'"), (int64_t)BIG);
	assert_int_equal(open_spools(FOLLOWER->pid), 0);
	buf_release(&ans);
	free(big);
}

static void an_upload_without_a_token_gets_401_and_reaches_nothing(void **state)
{
	/* small enough to sit in the socket's buffers: the answer comes
	 * before the body is read, and the client must see it */
	size_t len = 64 * 1024;
	char *big = yes_otacd(len);
	struct buf ans = BUF_INIT;
	int64_t before = artifacts(), seen = leader_uploads();
	long st;
	(void)state;
	SKIP_WITHOUT_PG();
	assert_non_null(build_job);

	assert_int_equal(put_artifact(FOLLOWER, build_job, NULL, "out/anon.bin", big, len, &ans), 401);
	assert_int_equal(put_artifact(FOLLOWER, build_job, "not-a-job-token", "out/anon.bin", big, len, &ans), 401);
	/* the admin token is no job token: refused on the follower as on the
	 * leader (403 when the follower knows the token, else 401) */
	st = put_artifact(FOLLOWER, build_job, LEADER->token, "out/anon.bin", big, len, &ans);
	assert_true(st == 401 || st == 403);
	assert_int_equal(artifacts(), before);
	assert_int_equal(leader_uploads(), seen); /* not one reached the leader */
	assert_int_equal(open_spools(FOLLOWER->pid), 0);
	buf_release(&ans);
	free(big);
}

/* A raw client sends the header and part of the body, then goes away. */
static void a_client_gone_midway_leaves_no_artifact_and_no_spool(void **state)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char *big = yes_otacd(BIG), sha[65], *head;
	const char *port = strrchr(FOLLOWER->url, ':') + 1;
	int64_t before = artifacts(), seen = leader_uploads();
	int fd, spools = -1;
	size_t sent = 0;
	(void)state;
	SKIP_WITHOUT_PG();
	assert_non_null(build_job);

	sha_hex(big, BIG, sha);
	head = xasprintf("PUT /api/v1/agent/jobs/%lld/artifacts?name=out/cut.bin&sha256=%s HTTP/1.1\r\n"
			 "Host: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/octet-stream\r\n"
			 "Content-Length: %zu\r\n\r\n",
			 (long long)job_id(build_job), sha, job_token(build_job), BIG);
	sa.sin_port = htons((uint16_t)atoi(port));
	assert_true((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(fd, head, strlen(head)), (ssize_t)strlen(head));
	while (sent < BIG / 4) {
		ssize_t n = write(fd, big + sent, BIG / 4 - sent);
		assert_true(n > 0);
		sent += (size_t)n;
	}
	/* the spool is there while the body arrives (a witness that this
	 * test sees one), then the client goes */
	for (int i = 0; i < 3000 && (spools = open_spools(FOLLOWER->pid)) == 0; i++)
		h_msleep(10);
	assert_int_equal(spools, 1);
	/* gone with a FIN, as a process that ends goes (libmicrohttpd alone
	 * would keep the connection in CLOSE-WAIT: api_wait.c's sweep cuts it) */
	close(fd);
	for (int i = 0; i < 3000 && (spools = open_spools(FOLLOWER->pid)) != 0; i++) /* a cap, not a measure */
		h_msleep(10);
	assert_int_equal(spools, 0);
	assert_int_equal(artifacts(), before);
	/* nothing was sent: the leader saw no upload at all */
	assert_int_equal(leader_uploads(), seen);
	free(head);
	free(big);
}

/* The hil job's reads, through the follower: the leader's bytes. */
static void a_jobs_reads_through_the_follower_are_the_leaders_bytes(void **state)
{
	struct buf via = BUF_INIT, direct = BUF_INIT;
	char *big = yes_otacd(BIG), sha[65], got[65], *path;
	json_t *list;
	(void)state;
	SKIP_WITHOUT_PG();
	assert_non_null(build_job);

	finish(FOLLOWER, build_job);
	hil_job = take_job(FOLLOWER, w.tok[1], "fwdh");
	path = xasprintf("/api/v1/agent/jobs/%lld/inputs", (long long)job_id(hil_job));
	assert_int_equal(h_raw(FOLLOWER, "GET", path, job_token(hil_job), NULL, NULL, 0, &via), 200);
	assert_int_equal(h_raw(LEADER, "GET", path, job_token(hil_job), NULL, NULL, 0, &direct), 200);
	assert_int_equal(via.len, direct.len);
	assert_memory_equal(via.ptr, direct.ptr, via.len);
	list = json_loads(buf_cstr(&via), 0, NULL);
	assert_int_equal(json_array_size(list), 1);
	json_decref(list);
	free(path);
	/* the input itself: 16 MiB, past API_FWD_MAX_ANSWER (4 MiB) */
	sha_hex(big, BIG, sha);
	path = xasprintf("/api/v1/agent/jobs/%lld/inputs/%s", (long long)job_id(hil_job), sha);
	{
		struct httpc_response a = HTTPC_RESPONSE_INIT;
		char *url = xasprintf("%s%s", FOLLOWER->url, path), *h = NULL;
		assert_int_equal(httpc_request(&a, "GET", url, job_token(hil_job), NULL, NULL, 0, 60000), 0);
		assert_int_equal(a.status, 200);
		assert_int_equal(a.body.len, BIG);
		sha_hex(a.body.ptr, a.body.len, got);
		assert_string_equal(got, sha);
		/* the leader's digest header is relayed */
		assert_int_equal(httpc_response_header(&h, &a, "X-Sha256"), 0);
		assert_string_equal(h, sha);
		free(h);
		free(url);
		httpc_response_release(&a);
	}
	/* no token: the follower's own 401 */
	buf_release(&via);
	assert_int_equal(h_raw(FOLLOWER, "GET", path, NULL, NULL, NULL, 0, &via), 401);
	assert_int_equal(open_spools(FOLLOWER->pid), 0);
	finish(FOLLOWER, hil_job);
	free(path);
	buf_release(&via);
	buf_release(&direct);
	free(big);
}

/* A real agent whose URL is the follower: it claims, uploads an artifact,
 * and its hil job reads it back (sha256 checked by the step itself). */
static void a_real_agent_on_the_follower_uploads_and_reads_inputs_end_to_end(void **state)
{
	char *data = yes_otacd(E2E_SIZE), sha[65], *hil, *got;
	int64_t run;
	pid_t pid;
	(void)state;
	SKIP_WITHOUT_PG();

	sha_hex(data, E2E_SIZE, sha);
	hil = xasprintf("{ run: 'f=$(find \"$OTACD_INPUTS\" -type f -name e2e.bin); sha256sum \"$f\" | grep -q %s' }",
			sha);
	pid = h_agent_with(FOLLOWER, "fwd-e2e", "fwde", w.tok[2]);
	run = trigger_two_stages("fwde", "fwde",
				 "{ run: 'mkdir -p out && yes otacd | head -c " E2E_SIZE_S " > out/e2e.bin' }",
				 hil);
	assert_string_equal(h_wait_run(LEADER, run, 120000), "passed");
	got = h_sql_text(LEADER, "SELECT sha256 FROM artifacts WHERE name = 'out/e2e.bin'");
	assert_string_equal(got, sha);
	assert_int_equal(open_spools(FOLLOWER->pid), 0);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	free(got);
	free(hil);
	free(data);
}

struct upload_call {
	pthread_t t;
	json_t *job;
	long status;
};

static void *upload_run(void *arg)
{
	struct upload_call *c = arg;
	char *big = yes_otacd(BIG);
	c->status = put_artifact(FOLLOWER, c->job, job_token(c->job), "out/gone.bin", big, BIG, NULL);
	free(big);
	return NULL;
}

/* Last (the leader dies): a leader gone while the follower sends the
 * upload: the client gets 503 with nothing stored, and the spool goes. */
static void a_leader_gone_midway_gives_503_and_no_artifact(void **state)
{
	struct upload_call c = { 0 };
	int64_t before;
	int spools = 0;
	(void)state;
	SKIP_WITHOUT_PG();

	trigger_two_stages("fwdg", "fwdg", "{ run: 'true' }", "{ run: 'true' }");
	c.job = take_job(FOLLOWER, w.tok[3], "fwdg");
	before = artifacts();
	kill(LEADER->pid, SIGSTOP); /* its kernel accepts the hop; nothing reads it */
	assert_int_equal(pthread_create(&c.t, NULL, upload_run, &c), 0);
	/* spooled, and on its way (a cap, not a measure) */
	for (int i = 0; i < 3000 && (spools = open_spools(FOLLOWER->pid)) == 0; i++)
		h_msleep(10);
	assert_int_equal(spools, 1);
	h_msleep(1000);
	h_kill(LEADER, SIGKILL);
	pthread_join(c.t, NULL);
	assert_int_equal(c.status, 503);
	for (int i = 0; i < 3000 && (spools = open_spools(FOLLOWER->pid)) != 0; i++)
		h_msleep(10);
	assert_int_equal(spools, 0);
	assert_int_equal(artifacts(), before); /* the database is PostgreSQL's: the leader's death does not hide rows */
	json_decref(c.job);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(an_upload_through_the_follower_lands_on_the_leader_and_memory_stays_flat),
		cmocka_unit_test(an_upload_without_a_token_gets_401_and_reaches_nothing),
		cmocka_unit_test(a_client_gone_midway_leaves_no_artifact_and_no_spool),
		cmocka_unit_test(a_jobs_reads_through_the_follower_are_the_leaders_bytes),
		cmocka_unit_test(a_real_agent_on_the_follower_uploads_and_reads_inputs_end_to_end),
		cmocka_unit_test(a_leader_gone_midway_gives_503_and_no_artifact),
	};
	int rc;

	httpc_global_init();
	rc = cmocka_run_group_tests_name("fwdupload", tests, setup, teardown);
	json_decref(build_job);
	json_decref(hil_job);
	return rc;
}
