/*
 * test_stagehold.c - per-stage commit statuses while a rollout holds
 * (issue 17, orchestrator/notify/outbox_stage.c, docs/notifications.md
 * "Per-stage statuses"): with `per_stage: true` the rollout stage's
 * context stays pending while the rollout walks, its description naming
 * each step it holds, the first one included ("holding, step 2/3 (50.00%)"), and turns success when
 * the last step passes; the run's own context follows.
 *
 * The real otacd (its local agents build and sign a release), a real git
 * repository and the recording receiver of statusrecv.c as GitHub.  The
 * rollout has no gates and holds of one otacd hour at --time-scale 3600,
 * so it walks on its own; no device is needed.
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

static const char pipeline[] = "name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 4000 /dev/zero >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 25, hold: 1h}, {percent: 50, hold: 1h}, {percent: 100, hold: 1h} ]\n";

/* One expected GitHub status: the context ("" the run's, else its stage),
 * the state, and a part of the description (NULL: any). */
struct want {
	const char *stage, *state, *desc;
};

static void the_rollout_stage_reports_each_step_it_holds_then_success(void **state)
{
	static const struct want want[] = {
		{ "", "pending", NULL },
		{ "build", "pending", "build running" },
		{ "build", "success", "build passed" },
		{ "release", "pending", "release running" },
		{ "release", "success", "release passed" },
		{ "canary", "pending", "canary running" },
		{ "canary", "pending", "canary: holding, step 1/3 (25.00%)" },
		{ "canary", "pending", "canary: holding, step 2/3 (50.00%)" },
		{ "canary", "pending", "canary: holding, step 3/3 (100.00%)" },
		{ "canary", "success", "canary passed" },
		{ "", "success", NULL },
	};
	const char *const args[] = { "--local-agents", "2", "--time-scale", "3600", NULL };
	const size_t n = OTA_ARRAY_SIZE(want);
	struct receiver rv;
	struct daemon d;
	struct buf out = BUF_INIT;
	char *base = h_tmpdir(), *origin = xasprintf("%s/origin.git", base), *work = xasprintf("%s/work", base);
	char *token = xasprintf("%s/gh.token", base), *config, *sha, *url;
	json_t *body;
	int64_t run;

	(void)state;
	receiver_start(&rv);
	assert_int_equal(ota_write_file_atomic(token, GH_TOKEN "\n", strlen(GH_TOKEN) + 1, 0600), 0);
	assert_int_equal(h_sh(&out, "git init -q --bare -b main %s && git init -q -b main %s && cd %s && git remote add origin %s"
				    " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s/key.pem",
			      origin, work, work, origin, base),
			 0);
	h_git_commit_file(work, ".otacd/pipeline.yml", pipeline, "pipeline");
	h_git_push(work, "main");
	assert_int_equal(h_git(work, &out, "rev-parse HEAD"), 0);
	sha = xstrndup(out.ptr, strcspn(out.ptr, "\n"));
	config = xasprintf("lease: 3s\nheartbeat: 300ms\nkeys:\n  test: { spec: %s/key.pem }\n"
			   "notifications:\n  public_url: http://ci.example.test:8470\n  retry_base: 100ms\n"
			   "repositories:\n"
			   "  - name: acme/gh\n    url: \"%s\"\n"
			   "    status: { forge: github, api_url: \"http://127.0.0.1:%d/gh/api/v3\", token_file: \"%s\","
			   " per_stage: true }\n",
			   base, origin, rv.port, token);
	h_init(&d, config);
	assert_int_equal(h_start(&d, args), 0);

	body = json_pack("{ss ss}", "repo", "acme/gh", "ref", "main");
	assert_int_equal(h_post(&d, "/api/v1/triggers", body, NULL) / 100, 2);
	json_decref(body);
	run = h_sql_int(&d, "SELECT MAX(id) FROM runs WHERE repo = 'acme/gh'");
	assert_string_equal(h_wait_run(&d, run, 120000), "passed");
	recv_wait_count(&rv, "/gh/", 200, n);

	url = xasprintf("http://ci.example.test:8470/#/runs/%lld", (long long)run);
	for (size_t k = 0; k < n; k++) {
		struct req *q = recv_nth(&rv, "/gh/", k);
		char *ctx = *want[k].stage ? xasprintf("otacd/fw/%s", want[k].stage) : xstrdup("otacd/fw");
		json_t *b = json_loads(q->body, 0, NULL);
		const char *desc = json_string_value(json_object_get(b, "description"));

		assert_non_null(b);
		assert_string_equal(q->method, "POST");
		assert_non_null(strstr(q->path, sha));
		assert_string_equal(q->authorization, "Bearer " GH_TOKEN);
		if (strcmp(json_string_value(json_object_get(b, "context")), ctx) ||
		    strcmp(json_string_value(json_object_get(b, "state")), want[k].state) || !desc ||
		    (want[k].desc && !strstr(desc, want[k].desc)))
			fail_msg("request %zu: %s, want %s %s \"%s\"", k, q->body, ctx, want[k].state,
				 want[k].desc ? want[k].desc : "");
		assert_string_equal(json_string_value(json_object_get(b, "target_url")), url);
		assert_true(strlen(desc) <= 140);
		json_decref(b);
		free(ctx);
	}
	/* nothing more: every stage event was sent, once */
	for (int i = 0; i < 600 && h_sql_int(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'") != (int64_t)n; i++)
		h_msleep(50);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'"), (int64_t)n);
	assert_int_equal(recv_count(&rv, "/gh/", 0), n);

	h_cleanup(&d);
	receiver_stop(&rv);
	h_sh(&out, "rm -rf %s", base);
	buf_release(&out);
	free(url);
	free(sha);
	free(config);
	free(token);
	free(origin);
	free(work);
	free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(the_rollout_stage_reports_each_step_it_holds_then_success),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("stagehold", tests, NULL, NULL);
}
