/*
 * test_stagestatus.c - per-stage commit statuses (issue 17,
 * orchestrator/notify/outbox_stage.c): with `status: {per_stage: true}` a
 * run posts one status context per stage next to the run's own, in order,
 * through the outbox, in each forge's documented request format (GitHub,
 * GitLab, Gitea), against the recording receiver of statusrecv.c.  The
 * real otacd, its local agents and a real git repository.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "harness.h"
#include "statusrecv.h"

#define GH_TOKEN "ghp_TESTTOKEN_github_0123456789"
#define GL_TOKEN "glpat-TESTTOKEN-gitlab-0123"
#define GT_TOKEN "gitea-TESTTOKEN-0123456789"

/* build, then unit-tests (needs build), then package (needs unit-tests):
 * one after another, so their statuses have one order */
static const char three_stages[] = "name: fw\nstages:\n"
				   "  - { name: build, steps: [ { run: 'true' } ] }\n"
				   "  - { name: unit-tests, needs: [build], steps: [ { run: '%s' } ] }\n"
				   "  - { name: package, needs: [unit-tests], steps: [ { run: 'true' } ] }\n";

struct forge_case {
	const char *repo, *prefix;    /* the receiver's path prefix for this forge */
	const char *ctx_key;          /* "context", GitLab's "name" */
	const char *ctx;              /* the run's context */
	const char *pending, *success, *failure;
};

static const struct forge_case forges[] = {
	{ "acme/gh", "/gh/", "context", "otacd/fw", "pending", "success", "failure" },
	{ "acme/gl", "/gl/", "name", "otacd/fw", "running", "success", "failed" },
	{ "acme/gt", "/gt/", "context", "ci/otacd", "pending", "success", "failure" },
};

/* One expected request: the context's suffix ("" for the run's) and the state. */
struct want {
	const char *stage;
	int state; /* 0 pending, 1 success, 2 failure */
};

static char *write_file(const char *dir, const char *name, const char *content)
{
	char *path = xasprintf("%s/%s", dir, name);
	assert_int_equal(ota_write_file_atomic(path, content, strlen(content), 0600), 0);
	return path;
}

static void wait_sql(struct daemon *d, const char *sql, int64_t want)
{
	for (int i = 0; i < 1200 && h_sql_int(d, sql) != want; i++)
		h_msleep(50);
	assert_int_equal(h_sql_int(d, sql), want);
}

static long trigger(struct daemon *d, const char *repo)
{
	json_t *body = json_pack("{ss ss}", "repo", repo, "ref", "main");
	long status = h_post(d, "/api/v1/triggers", body, NULL);
	json_decref(body);
	return status;
}

static char *commit_pipeline(const char *work, const char *second_step)
{
	struct buf out = BUF_INIT;
	char *yml = xasprintf(three_stages, second_step), *sha;
	h_git_commit_file(work, ".otacd/pipeline.yml", yml, "pipeline");
	h_git_push(work, "main");
	assert_int_equal(h_git(work, &out, "rev-parse HEAD"), 0);
	sha = xstrndup(out.ptr, strcspn(out.ptr, "\n"));
	buf_release(&out);
	free(yml);
	return sha;
}

/* Requests first..first+n-1 under fc->prefix are exactly want, in order,
 * each in the forge's documented format for commit sha of run. */
static void check_sequence(struct receiver *rv, const struct forge_case *fc, size_t first, const struct want *want,
			   size_t n, const char *sha, int64_t run)
{
	char *url = xasprintf("http://ci.example.test:8470/#/runs/%lld", (long long)run);
	for (size_t k = 0; k < n; k++) {
		struct req *q = recv_nth(rv, fc->prefix, first + k);
		const char *states[] = { fc->pending, fc->success, fc->failure };
		char *ctx = *want[k].stage ? xasprintf("%s/%s", fc->ctx, want[k].stage) : xstrdup(fc->ctx);
		json_t *b = json_loads(q->body, 0, NULL);
		const char *desc;

		assert_non_null(b);
		assert_string_equal(q->method, "POST");
		assert_non_null(strstr(q->path, sha));
		assert_non_null(strstr(q->path, "/statuses/"));
		if (strcmp(json_string_value(json_object_get(b, fc->ctx_key)), ctx) ||
		    strcmp(json_string_value(json_object_get(b, "state")), states[want[k].state]))
			fail_msg("%s request %zu: %s, want %s %s", fc->prefix, first + k, q->body, ctx, states[want[k].state]);
		assert_string_equal(json_string_value(json_object_get(b, "target_url")), url);
		desc = json_string_value(json_object_get(b, "description"));
		assert_non_null(desc);
		assert_true(strlen(desc) <= 140);
		if (*want[k].stage)
			assert_non_null(strstr(desc, want[k].stage));
		if (!strcmp(fc->prefix, "/gh/")) {
			assert_string_equal(q->authorization, "Bearer " GH_TOKEN);
			assert_string_equal(q->api_version, "2022-11-28");
		} else if (!strcmp(fc->prefix, "/gl/")) {
			assert_string_equal(q->private_token, GL_TOKEN);
			assert_string_equal(json_string_value(json_object_get(b, "ref")), "main");
			assert_non_null(strstr(q->path, "/projects/firmware%2Fsensor-node/statuses/"));
		} else {
			assert_string_equal(q->authorization, "token " GT_TOKEN);
		}
		json_decref(b);
		free(ctx);
	}
	free(url);
}

static void each_stage_gets_its_own_context_in_order_and_a_failed_stage_fails_it_and_the_run(void **state)
{
	const char *const args[] = { "--local-agents", "2", NULL };
	/* run pending, each stage pending then success, run success */
	static const struct want passing[] = {
		{ "", 0 }, { "build", 0 }, { "build", 1 }, { "unit-tests", 0 }, { "unit-tests", 1 },
		{ "package", 0 }, { "package", 1 }, { "", 1 },
	};
	/* unit-tests fails: its context and the run's fail; package never runs, so it has no context */
	static const struct want failing[] = {
		{ "", 0 }, { "build", 0 }, { "build", 1 }, { "unit-tests", 0 }, { "unit-tests", 2 }, { "", 2 },
	};
	const size_t npass = OTA_ARRAY_SIZE(passing), nfail = OTA_ARRAY_SIZE(failing);
	struct receiver rv;
	struct daemon d;
	struct buf out = BUF_INIT;
	char *base = h_tmpdir(), *origin = xasprintf("%s/origin.git", base), *work = xasprintf("%s/work", base);
	char *gh = write_file(base, "gh.token", GH_TOKEN "\n"), *gl = write_file(base, "gl.token", GL_TOKEN "\n");
	char *gt = write_file(base, "gt.token", GT_TOKEN "\n");
	char *config, *sha_pass, *sha_fail, *sql;
	int64_t runs[3];

	(void)state;
	receiver_start(&rv);
	assert_int_equal(h_sh(&out, "git init -q --bare -b main %s && git init -q -b main %s && cd %s && git remote add origin %s",
			      origin, work, work, origin), 0);
	sha_pass = commit_pipeline(work, "true");
	config = xasprintf("lease: 3s\nheartbeat: 300ms\n"
			   "notifications:\n  public_url: http://ci.example.test:8470\n  retry_base: 100ms\n"
			   "repositories:\n"
			   "  - name: acme/gh\n    url: \"%s\"\n"
			   "    status: { forge: github, api_url: \"http://127.0.0.1:%d/gh/api/v3\", token_file: \"%s\","
			   " per_stage: true }\n"
			   "  - name: acme/gl\n    url: \"%s\"\n"
			   "    status: { forge: gitlab, api_url: \"http://127.0.0.1:%d/gl/api/v4\", token_file: \"%s\","
			   " project: \"firmware/sensor-node\", per_stage: true }\n"
			   "  - name: acme/gt\n    url: \"%s\"\n"
			   "    status: { forge: gitea, api_url: \"http://127.0.0.1:%d/gt/api/v1\", token_file: \"%s\","
			   " context: ci/otacd, per_stage: true }\n",
			   origin, rv.port, gh, origin, rv.port, gl, origin, rv.port, gt);
	h_init(&d, config);
	h_start(&d, args);

	for (size_t f = 0; f < 3; f++)
		assert_int_equal(trigger(&d, forges[f].repo) / 100, 2);
	for (size_t f = 0; f < 3; f++) {
		sql = xasprintf("SELECT MAX(id) FROM runs WHERE repo = '%s'", forges[f].repo);
		runs[f] = h_sql_int(&d, sql);
		free(sql);
		assert_string_equal(h_wait_run(&d, runs[f], 60000), "passed");
		recv_wait_count(&rv, forges[f].prefix, 200, npass);
	}
	for (size_t f = 0; f < 3; f++)
		check_sequence(&rv, &forges[f], 0, passing, npass, sha_pass, runs[f]);
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND event LIKE 'stage.%'", 3 * 6);

	/* the second stage fails */
	sha_fail = commit_pipeline(work, "false");
	for (size_t f = 0; f < 3; f++)
		assert_int_equal(trigger(&d, forges[f].repo) / 100, 2);
	for (size_t f = 0; f < 3; f++) {
		sql = xasprintf("SELECT MAX(id) FROM runs WHERE repo = '%s'", forges[f].repo);
		runs[f] = h_sql_int(&d, sql);
		free(sql);
		assert_string_equal(h_wait_run(&d, runs[f], 60000), "failed");
		recv_wait_count(&rv, forges[f].prefix, 200, npass + nfail);
	}
	for (size_t f = 0; f < 3; f++)
		check_sequence(&rv, &forges[f], npass, failing, nfail, sha_fail, runs[f]);
	/* nothing more comes: the skipped stage posts nothing */
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'", 3 * (int64_t)(npass + nfail));
	for (size_t f = 0; f < 3; f++)
		assert_int_equal(recv_count(&rv, forges[f].prefix, 0), npass + nfail);

	h_cleanup(&d);
	receiver_stop(&rv);
	h_sh(&out, "rm -rf %s", base);
	buf_release(&out);
	free(sha_pass);
	free(sha_fail);
	free(config);
	free(gh);
	free(gl);
	free(gt);
	free(origin);
	free(work);
	free(base);
}

/* The state in the body of request k under prefix, and its context. */
static void expect_req(struct receiver *rv, const char *prefix, size_t k, const char *ctx_key, const char *ctx,
		       const char *state)
{
	json_t *b = json_loads(recv_nth(rv, prefix, k)->body, 0, NULL);
	assert_non_null(b);
	if (strcmp(json_string_value(json_object_get(b, ctx_key)), ctx) ||
	    strcmp(json_string_value(json_object_get(b, "state")), state))
		fail_msg("%s request %zu: %s, want %s %s", prefix, k, recv_nth(rv, prefix, k)->body, ctx, state);
	json_decref(b);
}

static void a_canceled_run_cancels_its_running_stages_context_and_posts_none_for_stages_that_never_ran(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	static const char slow[] = "name: fw\nstages:\n"
				   "  - { name: build, steps: [ { run: 'sleep 60' } ] }\n"
				   "  - { name: package, needs: [build], steps: [ { run: 'true' } ] }\n";
	struct receiver rv;
	struct daemon d;
	struct buf out = BUF_INIT;
	char *base = h_tmpdir(), *origin = xasprintf("%s/origin.git", base), *work = xasprintf("%s/work", base);
	char *gh = write_file(base, "gh.token", GH_TOKEN "\n"), *gl = write_file(base, "gl.token", GL_TOKEN "\n");
	char *config, *path;
	int64_t run_gh, run_gl;

	(void)state;
	receiver_start(&rv);
	assert_int_equal(h_sh(&out, "git init -q --bare -b main %s && git init -q -b main %s && cd %s && git remote add origin %s",
			      origin, work, work, origin), 0);
	h_git_commit_file(work, ".otacd/pipeline.yml", slow, "slow pipeline");
	h_git_push(work, "main");
	config = xasprintf("lease: 3s\nheartbeat: 300ms\nnotifications:\n  retry_base: 100ms\n"
			   "repositories:\n"
			   "  - name: acme/gh\n    url: \"%s\"\n"
			   "    status: { forge: github, api_url: \"http://127.0.0.1:%d/gh/api/v3\", token_file: \"%s\","
			   " per_stage: true }\n"
			   "  - name: acme/gl\n    url: \"%s\"\n"
			   "    status: { forge: gitlab, api_url: \"http://127.0.0.1:%d/gl/api/v4\", token_file: \"%s\","
			   " project: \"firmware/sensor-node\", per_stage: true }\n",
			   origin, rv.port, gh, origin, rv.port, gl);
	h_init(&d, config);
	h_start(&d, args);
	assert_int_equal(trigger(&d, "acme/gh") / 100, 2);
	assert_int_equal(trigger(&d, "acme/gl") / 100, 2);
	run_gh = h_sql_int(&d, "SELECT MAX(id) FROM runs WHERE repo = 'acme/gh'");
	run_gl = h_sql_int(&d, "SELECT MAX(id) FROM runs WHERE repo = 'acme/gl'");
	/* both runs started and their build stages with them */
	recv_wait_count(&rv, "/gh/", 200, 2);
	recv_wait_count(&rv, "/gl/", 200, 2);
	path = xasprintf("/api/v1/runs/%lld/cancel", (long long)run_gh);
	assert_int_equal(h_post(&d, path, NULL, NULL) / 100, 2);
	free(path);
	path = xasprintf("/api/v1/runs/%lld/cancel", (long long)run_gl);
	assert_int_equal(h_post(&d, path, NULL, NULL) / 100, 2);
	free(path);
	recv_wait_count(&rv, "/gh/", 200, 4);
	recv_wait_count(&rv, "/gl/", 200, 4);
	/* run and build pending, then build canceled, then the run; package never ran */
	expect_req(&rv, "/gh/", 0, "context", "otacd/fw", "pending");
	expect_req(&rv, "/gh/", 1, "context", "otacd/fw/build", "pending");
	expect_req(&rv, "/gh/", 2, "context", "otacd/fw/build", "error");
	expect_req(&rv, "/gh/", 3, "context", "otacd/fw", "error");
	expect_req(&rv, "/gl/", 0, "name", "otacd/fw", "running");
	expect_req(&rv, "/gl/", 1, "name", "otacd/fw/build", "running");
	expect_req(&rv, "/gl/", 2, "name", "otacd/fw/build", "canceled");
	expect_req(&rv, "/gl/", 3, "name", "otacd/fw", "canceled");
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'", 8);
	assert_int_equal(recv_count(&rv, "/gh/", 0), 4);
	assert_int_equal(recv_count(&rv, "/gl/", 0), 4);

	h_cleanup(&d);
	receiver_stop(&rv);
	h_sh(&out, "rm -rf %s", base);
	buf_release(&out);
	free(config);
	free(gh);
	free(gl);
	free(origin);
	free(work);
	free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(each_stage_gets_its_own_context_in_order_and_a_failed_stage_fails_it_and_the_run),
		cmocka_unit_test(a_canceled_run_cancels_its_running_stages_context_and_posts_none_for_stages_that_never_ran),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("stagestatus", tests, NULL, NULL);
}
