/*
 * test_artifacts.c - the artifact store through a real otacd: content
 * addressing and deduplication, downloads checked by digest, uploads cut
 * off halfway (by the client or by killing the daemon), the per-run cap,
 * and retention (unreleased artifacts expire, released ones stay).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "harness.h"

static int count_files(struct daemon *d, const char *sub)
{
	struct buf out = BUF_INIT;
	int n;
	h_sh(&out, "find %s/state/artifacts/%s -type f 2>/dev/null | wc -l", d->dir, sub);
	n = atoi(buf_cstr(&out));
	buf_release(&out);
	return n;
}

static void identical_artifacts_are_stored_once_and_download_intact(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "2", NULL };
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *file;
	int64_t run;
	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	run = h_trigger(&d, "name: a\nstages:\n  - name: build\n    matrix: { board: [x, y] }\n"
			    "    steps: [ { run: 'mkdir -p out; head -c 100000 /dev/zero | tr \"\\\\0\" A > out/fw.bin' } ]\n"
			    "    artifacts: [ { path: out/fw.bin, name: 'fw-${{ matrix.board }}.bin' } ]\n");
	assert_string_equal(h_wait_run(&d, run, 20000), "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 2);
	assert_int_equal(count_files(&d, "sha256"), 1); /* same bytes: one object */

	assert_int_equal(h_sh(&out, "%s --url %s --token %s artifacts ls %lld", otactl, d.url, d.token, (long long)run), 0);
	assert_non_null(strstr(buf_cstr(&out), "fw-x.bin"));
	assert_non_null(strstr(buf_cstr(&out), "100000"));
	file = xasprintf("%s/got.bin", d.dir);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s artifacts get %lld/fw-y.bin -o %s", otactl, d.url, d.token,
			      (long long)run, file), 0);
	assert_int_equal(h_sh(&out, "tr -d A < %s | wc -c; wc -c < %s", file, file), 0);
	assert_string_equal(buf_cstr(&out), "0\n100000\n");
	assert_int_equal(h_sh(&out, "sha=$(sha256sum %s | cut -c1-64); rm %s; %s --url %s --token %s artifacts get $sha -o %s && sha256sum %s",
			      file, file, otactl, d.url, d.token, file, file), 0);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s artifacts get %lld/nope -o %s", otactl, d.url, d.token,
			      (long long)run, file), 5);
	free(file);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

/* Bigger than the receiving side's hash blocks (common/hashpipe.h), and not
 * a multiple of them: the stored digest is the file's, the bytes are kept. */
static void upload_of_many_hash_blocks_is_stored_intact(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "1", NULL };
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *file, *sql;
	int64_t run;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	run = h_trigger(&d, "name: big\nstages:\n  - name: build\n"
			    "    steps: [ { run: 'mkdir -p out; head -c 3300007 /dev/urandom > out/big.bin;"
			    " sha256sum out/big.bin | cut -c1-64 > out/big.sha' } ]\n"
			    "    artifacts: [ { path: out/big.bin }, { path: out/big.sha } ]\n");
	assert_string_equal(h_wait_run(&d, run, 20000), "passed");
	file = xasprintf("%s/got.sha", d.dir);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s artifacts get %lld/out/big.sha -o %s && cat %s", otactl, d.url,
			      d.token, (long long)run, file, file), 0);
	assert_int_equal(out.len, 65);
	/* the digest otacd computed is the one sha256sum computed on the agent */
	sql = xasprintf("SELECT COUNT(*) FROM artifacts WHERE name = 'out/big.bin' AND size = 3300007 AND sha256 = '%.64s'",
			buf_cstr(&out));
	assert_int_equal(h_sql_int(&d, sql), 1);
	free(file);
	file = xasprintf("%s/got.bin", d.dir);
	assert_int_equal(h_sh(&out, "%s --url %s --token %s artifacts get %lld/out/big.bin -o %s && sha256sum < %s | cut -c1-64 | cmp - %s/got.sha",
			      otactl, d.url, d.token, (long long)run, file, file, d.dir), 0);
	free(sql);
	free(file);
	free(otactl);
	buf_release(&out);
	h_cleanup(&d);
}

/* Register an agent and take the one queued job; returns its id, *token
 * the attempt's job token (caller frees). */
static int64_t take_job(struct daemon *d, char **token)
{
	char *agent = h_agent_add(d, "tester", "");
	json_t *ans = NULL, *req = json_pack("{s[]}", "labels");
	int64_t job;
	assert_non_null(agent);
	assert_int_equal(h_call_as(d, agent, "POST", "/api/v1/agent/register", req, NULL), 200);
	json_decref(req);
	req = json_pack("{si}", "wait_ms", 5000);
	assert_int_equal(h_call_as(d, agent, "POST", "/api/v1/agent/jobs/request", req, &ans), 200);
	job = json_integer_value(json_object_get(ans, "job_id"));
	*token = xstrdup(json_string_value(json_object_get(ans, "job_token")));
	json_decref(req);
	json_decref(ans);
	free(agent);
	return job;
}

static void upload_cut_off_halfway_leaves_nothing_and_a_retry_succeeds(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	struct buf out = BUF_INIT;
	char *blob, *url, *tok;
	int64_t job;
	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	h_trigger(&d, "name: a\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	job = take_job(&d, &tok);
	blob = xasprintf("%s/blob", d.dir);
	h_sh(&out, "head -c 2000000 /dev/urandom > %s", blob);
	url = xasprintf("%s/api/v1/agent/jobs/%lld/artifacts?attempt=1&name=fw.bin&sha256=$(sha256sum %s | cut -c1-64)",
			d.url, (long long)job, blob);

	/* the client gives up halfway */
	h_sh(&out, "timeout -s KILL 1 curl -s -X PUT --limit-rate 500K -H 'Authorization: Bearer %s' "
		   "--data-binary @%s \"%s\"", tok, blob, url);
	for (int i = 0; i < 300 && count_files(&d, "tmp"); i++) /* up to 30 s on a loaded machine */
		h_msleep(100);
	assert_int_equal(count_files(&d, "tmp"), 0);
	assert_int_equal(count_files(&d, "sha256"), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 0);

	/* the daemon dies halfway */
	h_sh(&out, "(curl -s -X PUT --limit-rate 500K -H 'Authorization: Bearer %s' --data-binary @%s \"%s\" >/dev/null 2>&1 &)",
	     tok, blob, url);
	/* wait for the upload to be under way (a loaded machine may take more
	 * than a second to start curl); at 500 KB/s it lasts about 4 s */
	for (int i = 0; i < 100 && count_files(&d, "tmp") == 0; i++)
		h_msleep(50);
	assert_int_equal(count_files(&d, "tmp"), 1); /* half-way there */
	h_kill(&d, SIGKILL);
	assert_int_equal(count_files(&d, "sha256"), 0);
	h_start(&d, args);
	assert_int_equal(count_files(&d, "tmp"), 0); /* swept at start */
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 0);

	/* the same content again, whole: stored (the lease survived the restart) */
	free(url);
	url = xasprintf("%s/api/v1/agent/jobs/%lld/artifacts?attempt=1&name=fw.bin&sha256=$(sha256sum %s | cut -c1-64)",
			d.url, (long long)job, blob);
	assert_int_equal(h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -X PUT -H 'Authorization: Bearer %s' "
				    "--data-binary @%s \"%s\"", tok, blob, url), 0);
	assert_string_equal(buf_cstr(&out), "201");
	assert_int_equal(count_files(&d, "sha256"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 1);
	free(url);
	free(blob);
	free(tok);
	buf_release(&out);
	h_cleanup(&d);
}

static void run_over_its_artifact_budget_is_refused(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	struct buf out = BUF_INIT;
	int64_t job;
	char *tok;
	(void)state;
	h_init(&d, "max_run_artifacts: 1000\n");
	h_start(&d, args);
	h_trigger(&d, "name: a\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	job = take_job(&d, &tok);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(h_sh(&out, "f=%s/p%d; head -c 600 /dev/urandom > $f; curl -s -w ' %%{http_code}' -X PUT "
					    "-H 'Authorization: Bearer %s' --data-binary @$f "
					    "\"%s/api/v1/agent/jobs/%lld/artifacts?attempt=1&name=p%d&sha256=$(sha256sum $f | cut -c1-64)\"",
				      d.dir, i, tok, d.url, (long long)job, i), 0);
		assert_non_null(strstr(buf_cstr(&out), i == 0 ? " 201" : " 413"));
	}
	assert_non_null(strstr(buf_cstr(&out), "over its limit"));
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 1);
	free(tok);
	buf_release(&out);
	h_cleanup(&d);
}

static void unreleased_artifacts_expire_and_released_ones_stay(void **state)
{
	struct daemon d;
	/* one real second is an hour; retention one hour */
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	struct buf out = BUF_INIT;
	int64_t run;
	(void)state;
	h_init(&d, "artifact_retention: 1h\n");
	h_start(&d, args);
	run = h_trigger(&d, "name: a\nstages:\n  - name: s\n    steps: [ { run: 'echo keep > k.bin; echo drop > d.bin' } ]\n"
			    "    artifacts: [ k.bin, d.bin ]\n");
	assert_string_equal(h_wait_run(&d, run, 20000), "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 2);
	/* what a release does for the images it ships */
	assert_int_equal(h_sh(&out, "sqlite3 %s/state/otacd.db \"PRAGMA busy_timeout=5000; UPDATE artifacts SET released = 1 WHERE name = 'k.bin'\"",
			      d.dir), 0);
	for (int i = 0; i < 80 && h_sql_int(&d, "SELECT COUNT(*) FROM artifacts") == 2; i++)
		h_msleep(100);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM artifacts WHERE name = 'k.bin'"), 1);
	assert_int_equal(count_files(&d, "sha256"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM events WHERE kind = 'artifact.expired'"), 1);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(identical_artifacts_are_stored_once_and_download_intact),
		cmocka_unit_test(upload_of_many_hash_blocks_is_stored_intact),
		cmocka_unit_test(upload_cut_off_halfway_leaves_nothing_and_a_retry_succeeds),
		cmocka_unit_test(run_over_its_artifact_budget_is_refused),
		cmocka_unit_test(unreleased_artifacts_expire_and_released_ones_stay),
	};
	return cmocka_run_group_tests_name("artifacts", tests, NULL, NULL);
}
