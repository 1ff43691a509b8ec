/*
 * test_policy.c - protected refs and the release policy, attacked for real
 * (docs/security.md, "Protected refs and release policy").
 *
 * Each test is an attack on a real otacd with real local agents: a `git
 * push` of a feature branch whose pipeline prints a secret in base64 and
 * tries to sign and roll out a release with an anti-rollback-locking
 * counter; an operator uploading a releasing pipeline; protected pipelines
 * asking for a key, a counter jump, a missing or weakened gate or an
 * unapproved production stage the server's `products:` policy forbids;
 * one person approving twice where two are required.  Each is refused,
 * with the reason on the run or in the answer, and in the audit log.
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
#include <sqlite3.h>

#include "githarness.h"
#include "harness.h"

#define SECRET "push-secret-0123456789"
#define REPO "acme/fw"
#define DEPLOY_KEY "s3cr3t-value-42"
#define DEPLOY_KEY_B64 "czNjcjN0LXZhbHVlLTQy"
#define OPS_TOKEN "ops-token-0123456789abcdef"
#define REL_TOKEN "rel-token-0123456789abcdef"
#define ALICE_TOKEN "alice-token-0123456789abcdef"
#define BOB_TOKEN "bob-token-0123456789abcdef"

#define GATE "{ metric: crash_rate, max: 0.005, min_devices: 50 }"
#define LAX_GATE "{ metric: crash_rate, max: 0.5, min_devices: 1 }"

/* ---- a git origin whose post-receive hook sends signed webhooks ------- */

struct gitenv {
	struct daemon d;
	struct gh_origin git; /* its base also holds hook.log and the keys */
};

static void keygen(const char *dir, const char *name)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s/%s.pem", dir,
			      name), 0);
	buf_release(&out);
}

/* A daemon with secrets, two keys (release, other), API tokens of every
 * role and extra_config (products:); a git origin when with_git. */
static void setup_env(struct gitenv *g, const char *extra_config, int with_git)
{
	const char *const args[] = { "--local-agents", "2", NULL };
	char *config;

	memset(g, 0, sizeof(*g));
	gh_origin_init(&g->git);
	keygen(g->git.base, "release");
	keygen(g->git.base, "other");
	config = xasprintf("lease: 3s\nheartbeat: 300ms\n"
			   "secrets:\n  DEPLOY_KEY: " DEPLOY_KEY "\n"
			   "keys:\n  release: { spec: %s/release.pem }\n  other: { spec: %s/other.pem }\n"
			   "tokens:\n"
			   "  - { name: ops, role: operator, token: " OPS_TOKEN " }\n"
			   "  - { name: relmgr, role: release, token: " REL_TOKEN " }\n"
			   "  - { name: alice, role: operator, token: " ALICE_TOKEN " }\n"
			   "  - { name: bob, role: operator, token: " BOB_TOKEN " }\n"
			   "repositories:\n"
			   "  - { name: " REPO ", url: \"%s\", secret: " SECRET " }\n%s",
			   g->git.base, g->git.base, g->git.origin, extra_config);
	h_init(&g->d, config);
	h_start(&g->d, args);
	if (with_git) {
		char *hooklog = xasprintf("%s/hook.log", g->git.base);
		gh_origin_create(&g->git);
		gh_origin_hook(&g->git, &g->d, "github", SECRET, REPO, hooklog);
		h_git_commit_file(g->git.work, "src/main.c", "int main(void) { return 0; }\n", "first");
		free(hooklog);
	}
	free(config);
}

static void teardown_env(struct gitenv *g)
{
	h_cleanup(&g->d);
	gh_origin_release(&g->git);
}

/* The newest run of REPO (a new reference), or NULL. */
static json_t *last_repo_run(struct gitenv *g)
{
	json_t *ans = NULL, *run, *found = NULL;
	size_t i;
	assert_int_equal(h_get(&g->d, "/api/v1/runs?limit=500", &ans), 200);
	json_array_foreach(json_object_get(ans, "runs"), i, run)
		if (json_is_string(json_object_get(run, "repo")) &&
		    (!found || json_integer_value(json_object_get(run, "id")) > json_integer_value(json_object_get(found, "id"))))
			found = run;
	json_incref(found);
	json_decref(ans);
	return found;
}

static json_t *stage_of(json_t *run, const char *name)
{
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(run, "stages"), i, s)
		if (!strcmp(json_string_value(json_object_get(s, "name")), name))
			return s;
	fail_msg("run has no stage %s", name);
	return NULL;
}

static char *job_log(struct daemon *d, json_t *run, const char *job)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", d->token, d->url,
			      (long long)json_integer_value(json_object_get(h_job(run, job), "id"))), 0);
	return buf_detach(&out);
}

/* POST /api/v1/runs with token; returns the status, *out the answer. */
static long upload(struct daemon *d, const char *token, const char *yaml, json_t **out)
{
	char *admin = d->token;
	json_t *req = json_pack("{ss ss}", "pipeline", yaml, "file", "upload.yml");
	long status;
	d->token = (char *)token;
	status = h_post(d, "/api/v1/runs", req, out);
	d->token = admin;
	json_decref(req);
	return status;
}

static long act(struct daemon *d, const char *token, int64_t release, const char *action, json_t **out)
{
	char *admin = d->token, *path = xasprintf("/api/v1/releases/%lld/%s", (long long)release, action);
	json_t *req = json_pack("{ss}", "reason", "policy test");
	long status;
	d->token = (char *)token;
	status = h_post(d, path, req, out);
	d->token = admin;
	json_decref(req);
	free(path);
	return status;
}

/* Does any error of a 4xx answer contain needle? */
static int answer_says(json_t *ans, const char *needle)
{
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(ans, "errors"), i, e)
		if (json_is_string(e) && strstr(json_string_value(e), needle))
			return 1;
	return 0;
}

/* The attacker's pipeline: every branch, the secret in base64, the whole
 * counter space, the production key, 100 % with no gates. */
static const char attack[] =
	"name: fw\n"
	"on: { push: { branches: [\"*\"] } }\n"
	"stages:\n"
	"  - name: build\n"
	"    secrets: [DEPLOY_KEY]\n"
	"    steps:\n"
	"      - run: 'printf %s \"$DEPLOY_KEY\" | base64; echo \"len=${#DEPLOY_KEY}\"; cp src/main.c app.bin'\n"
	"    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"9.9.9\", security_counter: 4294967295, key: release }\n"
	"  - name: everyone\n"
	"    kind: rollout\n"
	"    needs: [release]\n"
	"    steps: [ { percent: 100, hold: 1s } ]\n";

static const char legit[] =
	"name: fw\n"
	"on: { push: { branches: [main] } }\n"
	"stages:\n"
	"  - name: build\n"
	"    secrets: [DEPLOY_KEY]\n"
	"    steps:\n"
	"      - run: 'test \"$DEPLOY_KEY\" = " DEPLOY_KEY "; cp src/main.c app.bin'\n"
	"    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1, key: %s }\n";

static void feature_branch_push_gets_no_secret_no_key_no_release_no_rollout(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	json_t *run, *full;
	char *log, *y;
	int64_t id;
	(void)state;
	/* a second repository (never pushed to) owns product gadget */
	setup_env(&g, "  - { name: acme/gadget, url: \"/nonexistent/gadget.git\" }\n"
		      "products:\n  fw: { keys: [release], repositories: [" REPO "] }\n"
		      "  gadget: { repositories: [acme/gadget] }\n", 1);

	/* lint (the daemon's, read-only) warns about what only protected runs do */
	{
		struct buf ans = BUF_INIT;
		char *file = xasprintf("%s/attack.yml", g.git.base);
		assert_int_equal(ota_write_file_atomic(file, attack, strlen(attack), 0644), 0);
		assert_int_equal(h_sh(&ans, "curl -sf -H 'Authorization: Bearer %s' --data-binary @%s %s/api/v1/lint", OPS_TOKEN,
				      file, g.d.url), 0);
		assert_non_null(strstr(buf_cstr(&ans), "release stage 'release' runs only on protected refs"));
		assert_non_null(strstr(buf_cstr(&ans), "stage 'build' uses secrets, which only protected runs receive"));
		free(file);
		buf_release(&ans);
	}

	/* the attack: a push of feature/untrusted */
	assert_int_equal(h_git(g.git.work, &out, "checkout -q -b feature/untrusted"), 0);
	h_git_commit_file(g.git.work, ".otacd/pipeline.yml", attack, "ship it");
	h_git_push(g.git.work, "feature/untrusted");
	run = last_repo_run(&g);
	assert_non_null(run);
	id = json_integer_value(json_object_get(run, "id"));
	assert_string_equal(json_string_value(json_object_get(run, "ref")), "refs/heads/feature/untrusted");
	h_wait_run(&g.d, id, 30000);
	full = h_run(&g.d, id);
	/* the run says it is unprotected, and why */
	assert_true(json_is_false(json_object_get(full, "protected")));
	assert_non_null(strstr(json_string_value(json_object_get(full, "trust_reason")), "not a protected ref of " REPO));
	/* the step ran without the secret: not in clear, not in base64 */
	log = job_log(&g.d, full, "build");
	assert_null(strstr(log, DEPLOY_KEY));
	assert_null(strstr(log, DEPLOY_KEY_B64));
	assert_non_null(strstr(log, "len=0"));
	free(log);
	/* release and rollout never ran: skipped with the reason */
	assert_string_equal(json_string_value(json_object_get(stage_of(full, "release"), "state")), "skipped");
	assert_non_null(strstr(json_string_value(json_object_get(stage_of(full, "release"), "skip_reason")),
			       "not a protected run"));
	assert_string_equal(json_string_value(json_object_get(stage_of(full, "everyone"), "state")), "skipped");
	assert_non_null(json_string_value(json_object_get(stage_of(full, "everyone"), "skip_reason")));
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts"), 0);
	/* the refusal is in the audit log */
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_skip'"
				      " AND detail LIKE '%feature/untrusted%' AND detail LIKE '%everyone%'"), 1);
	json_decref(full);
	json_decref(run);

	/* main, asking for a key the product may not use: a failed run with the reason */
	assert_int_equal(h_git(g.git.work, &out, "checkout -q main"), 0);
	y = xasprintf(legit, "other");
	h_git_commit_file(g.git.work, ".otacd/pipeline.yml", y, "release with the wrong key");
	free(y);
	h_git_push(g.git.work, "main");
	run = last_repo_run(&g);
	id = json_integer_value(json_object_get(run, "id"));
	assert_string_equal(h_wait_run(&g.d, id, 10000), "failed");
	full = h_run(&g.d, id);
	assert_non_null(strstr(json_string_value(json_object_get(full, "error")), "key 'other' may not sign product fw"));
	assert_int_equal(json_array_size(json_object_get(full, "stages")), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_refused'"
				      " AND reason LIKE '%key ''other'' may not sign%'"), 1);
	json_decref(full);
	json_decref(run);

	/* main of this repository releasing another repository's product: refused */
	h_git_commit_file(g.git.work, ".otacd/pipeline.yml",
		    "name: gadget\nstages:\n  - name: build\n    steps: [ { run: 'cp src/main.c app.bin' } ]\n"
		    "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
		    "  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1, key: release }\n",
		    "release another product");
	h_git_push(g.git.work, "main");
	run = last_repo_run(&g);
	id = json_integer_value(json_object_get(run, "id"));
	assert_string_equal(h_wait_run(&g.d, id, 10000), "failed");
	full = h_run(&g.d, id);
	assert_non_null(strstr(json_string_value(json_object_get(full, "error")),
			       "repository " REPO " may not release product gadget"));
	json_decref(full);
	json_decref(run);

	/* and main's legitimate release is not locked out by anti-rollback */
	y = xasprintf(legit, "release");
	h_git_commit_file(g.git.work, ".otacd/pipeline.yml", y, "release");
	free(y);
	h_git_push(g.git.work, "main");
	run = last_repo_run(&g);
	id = json_integer_value(json_object_get(run, "id"));
	assert_string_equal(h_wait_run(&g.d, id, 30000), "passed");
	full = h_run(&g.d, id);
	assert_true(json_is_true(json_object_get(full, "protected")));
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases WHERE security_counter = 1"), 1);
	json_decref(full);
	json_decref(run);
	buf_release(&out);
	teardown_env(&g);
}

static const char upload_release[] =
	"name: fw\n"
	"stages:\n"
	"  - name: build\n"
	"    secrets: [DEPLOY_KEY]\n"
	"    steps: [ { run: 'echo \"len=${#DEPLOY_KEY}\"; head -c 2000 /dev/urandom > app.bin' } ]\n"
	"    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"%s\", security_counter: %d, key: release }\n";

static void operator_upload_runs_unprotected_release_role_and_admin_release(void **state)
{
	struct gitenv g;
	json_t *ans = NULL, *run;
	char *y, *log;
	int64_t id;
	(void)state;
	setup_env(&g, "", 0);

	/* an operator's `otactl trigger FILE`: accepted, but unprotected: no
	 * secret, no release */
	y = xasprintf(upload_release, "1.0.0", 1);
	{
		struct buf out = BUF_INIT;
		char *file = xasprintf("%s/upload.yml", g.git.base), *otactl = h_bin("otactl");
		assert_int_equal(ota_write_file_atomic(file, y, strlen(y), 0644), 0);
		assert_int_equal(h_sh(&out, "%s --url %s --token %s trigger %s", otactl, g.d.url, OPS_TOKEN, file), 0);
		id = strtoll(buf_cstr(&out), NULL, 10);
		assert_true(id > 0);
		free(otactl);
		free(file);
		buf_release(&out);
	}
	h_wait_run(&g.d, id, 30000);
	run = h_run(&g.d, id);
	assert_true(json_is_false(json_object_get(run, "protected")));
	assert_non_null(strstr(json_string_value(json_object_get(run, "trust_reason")), "uploaded by ops (role operator)"));
	assert_string_equal(json_string_value(json_object_get(stage_of(run, "release"), "state")), "skipped");
	{
		/* otactl show says so too */
		struct buf out = BUF_INIT;
		char *otactl = h_bin("otactl");
		assert_int_equal(h_sh(&out, "%s --url %s --token %s show %lld", otactl, g.d.url, OPS_TOKEN, (long long)id), 0);
		assert_non_null(strstr(buf_cstr(&out), "trust    unprotected: uploaded by ops (role operator)"));
		free(otactl);
		buf_release(&out);
	}
	log = job_log(&g.d, run, "build");
	assert_non_null(strstr(log, "len=0"));
	free(log);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_skip' AND actor = 'ops'"), 1);
	json_decref(run);
	free(y);

	/* the release role's upload releases (and gets the secret) */
	y = xasprintf(upload_release, "1.0.0", 1);
	assert_int_equal(upload(&g.d, REL_TOKEN, y, &ans), 201);
	id = json_integer_value(json_object_get(ans, "id"));
	json_decref(ans);
	assert_string_equal(h_wait_run(&g.d, id, 30000), "passed");
	run = h_run(&g.d, id);
	assert_true(json_is_true(json_object_get(run, "protected")));
	log = job_log(&g.d, run, "build");
	assert_non_null(strstr(log, "len=15"));
	free(log);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 1);
	json_decref(run);
	free(y);

	/* and the admin's */
	y = xasprintf(upload_release, "1.0.1", 2);
	id = h_trigger(&g.d, y);
	assert_string_equal(h_wait_run(&g.d, id, 30000), "passed");
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 2);
	free(y);
	teardown_env(&g);
}

/* A protected (admin) upload of product fw with a release and stages. */
static char *fw_pipeline(const char *key, long long counter, const char *gates_yaml, const char *stages_yaml)
{
	return xasprintf("name: fw\n"
			 "stages:\n"
			 "  - name: build\n"
			 "    steps: [ { run: 'head -c 2000 /dev/urandom > app.bin' } ]\n"
			 "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
			 "  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: %lld, key: %s }\n"
			 "%s%s",
			 counter, key, stages_yaml, gates_yaml);
}

static void refused_before_it_runs(struct gitenv *g, char *yaml, const char *needle)
{
	json_t *ans = NULL;
	int64_t runs = h_sql_int(&g->d, "SELECT COUNT(*) FROM runs");
	int64_t audits = h_sql_int(&g->d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_refused'");
	long status = upload(&g->d, g->d.token, yaml, &ans);
	if (status != 403 || !answer_says(ans, needle)) {
		char *text = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("expected 403 saying \"%s\", got %ld %s", needle, status, text ? text : "");
	}
	assert_string_equal(json_string_value(json_object_get(ans, "error")), "refused by the release policy");
	assert_int_equal(h_sql_int(&g->d, "SELECT COUNT(*) FROM runs"), runs);
	assert_int_equal(h_sql_int(&g->d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_refused'"), audits + 1);
	json_decref(ans);
	free(yaml);
}

static void protected_pipeline_asking_for_more_than_its_product_policy_is_refused(void **state)
{
	struct gitenv g;
	const char *rollout1 = "  - { name: canary, kind: rollout, needs: [release], steps: [ { percent: 1, hold: 1h } ],"
			       " gates: [crash_free] }\n";
	const char *rollout25 = "  - { name: canary, kind: rollout, needs: [release], steps: [ { percent: 25, hold: 1h } ],"
				" gates: [crash_free] }\n";
	const char *production = "  - { name: production, kind: rollout, needs: [release], steps: [ { percent: 1, hold: 1h } ],"
				 " gates: [crash_free] }\n";
	const char *nogate = "  - { name: canary, kind: rollout, needs: [release], steps: [ { percent: 1, hold: 1h } ] }\n";
	const char *gates = "gates:\n  crash_free: " GATE "\n";
	const char *lax = "gates:\n  crash_free: " LAX_GATE "\n";
	int64_t id;
	char *y;
	(void)state;
	setup_env(&g, "products:\n"
		      "  fw:\n"
		      "    keys: [release]\n"
		      "    max_counter_increase: 1\n"
		      "    required_gates: { crash_free: " GATE " }\n"
		      "    approvals: { above_percent: 5, stages: [production], count: 2 }\n", 0);

	refused_before_it_runs(&g, fw_pipeline("other", 1, gates, rollout1), "key 'other' may not sign product fw");
	/* the same through `otactl trigger FILE`: exit 1 and the reason */
	{
		struct buf out = BUF_INIT;
		char *file = xasprintf("%s/bad.yml", g.git.base), *otactl = h_bin("otactl");
		y = fw_pipeline("other", 1, gates, rollout1);
		assert_int_equal(ota_write_file_atomic(file, y, strlen(y), 0644), 0);
		assert_int_equal(h_sh(&out, "%s --url %s --token %s trigger %s", otactl, g.d.url, g.d.token, file), 1);
		assert_non_null(strstr(buf_cstr(&out), "refused by the release policy"));
		assert_non_null(strstr(buf_cstr(&out), "key 'other' may not sign product fw"));
		free(y);
		free(otactl);
		free(file);
		buf_release(&out);
	}
	refused_before_it_runs(&g, fw_pipeline("release", 5, gates, rollout1), "security_counter 5 is more than +1");
	refused_before_it_runs(&g, fw_pipeline("release", 4294967295LL, gates, rollout1), "more than +1");
	refused_before_it_runs(&g, fw_pipeline("release", 1, "", nogate), "must include gate 'crash_free'");
	refused_before_it_runs(&g, fw_pipeline("release", 1, lax, rollout1), "may not redefine it");
	refused_before_it_runs(&g, fw_pipeline("release", 1, gates, production), "needs approval: required");
	refused_before_it_runs(&g, fw_pipeline("release", 1, gates, rollout25), "above approvals.above_percent 5");
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 0);

	/* what the policy allows runs: the right key, +1, the gate as the
	 * server defines it, a 1 % step (no approval needed) */
	y = fw_pipeline("release", 1, gates, rollout1);
	id = h_trigger(&g.d, y);
	free(y);
	for (int i = 0; i < 600 && !h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding'"); i++)
		h_msleep(50);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases WHERE security_counter = 1"), 1);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding'"), 1);
	/* the rollout judges with the server's gate */
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE spec LIKE '%\"min_devices\":50%'"), 1);
	(void)id;
	teardown_env(&g);
}

static void production_needs_two_distinct_approvers(void **state)
{
	struct gitenv g;
	json_t *ans = NULL;
	char *y;
	int64_t rel;
	(void)state;
	setup_env(&g, "products:\n  fw: { approvals: { count: 2 } }\n", 0);
	y = fw_pipeline("release", 1, "",
			"  - { name: production, kind: rollout, needs: [release], approval: required,"
			" steps: [ { percent: 1, hold: 1h } ] }\n");
	h_trigger(&g.d, y);
	free(y);
	for (int i = 0; i < 600 && !h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'waiting_approval'"); i++)
		h_msleep(50);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'waiting_approval'"), 1);
	rel = h_sql_int(&g.d, "SELECT release_id FROM rollouts");

	/* alice approves: one of two, still waiting */
	assert_int_equal(act(&g.d, ALICE_TOKEN, rel, "promote", &ans), 200);
	json_decref(ans);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'waiting_approval'"), 1);
	/* a daemon killed now keeps the approval and the run's trust */
	{
		const char *const args[] = { "--local-agents", "2", NULL };
		json_t *run;
		h_kill(&g.d, SIGKILL);
		assert_int_equal(h_start(&g.d, args), 0);
		run = h_run(&g.d, h_sql_int(&g.d, "SELECT run_id FROM rollouts"));
		assert_true(json_is_true(json_object_get(run, "protected")));
		assert_non_null(strstr(json_string_value(json_object_get(run, "trust_reason")), "uploaded by admin (role admin)"));
		json_decref(run);
	}
	/* alice again: counts once, refused with why */
	assert_int_equal(act(&g.d, ALICE_TOKEN, rel, "promote", &ans), 409);
	assert_non_null(strstr(json_string_value(json_object_get(ans, "error")), "alice already approved"));
	json_decref(ans);
	/* promote --to cannot skip the second approval */
	{
		char *admin = g.d.token, *path = xasprintf("/api/v1/releases/%lld/promote", (long long)rel);
		json_t *req = json_pack("{ss ss}", "reason", "skip", "to", "later");
		g.d.token = (char *)ALICE_TOKEN;
		assert_int_equal(h_post(&g.d, path, req, &ans), 409);
		g.d.token = admin;
		json_decref(req);
		json_decref(ans);
		free(path);
	}
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'waiting_approval'"), 1);
	/* bob approves: the rollout starts; the audit names both */
	assert_int_equal(act(&g.d, BOB_TOKEN, rel, "promote", &ans), 200);
	json_decref(ans);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE state = 'holding'"), 1);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'approve' AND actor = 'alice'"), 1);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'promote' AND actor = 'bob'"), 1);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM rollouts WHERE approved_by = '[\"alice\",\"bob\"]'"), 1);
	teardown_env(&g);
}

/* Write the daemon's database behind its back (what a bug in the
 * trigger-time decision, or a run from before the rule, would leave). */
static void sql_write(struct daemon *d, const char *sql)
{
	char *path = xasprintf("%s/state/otacd.db", d->dir);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 10000);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	free(path);
}

static void an_unprotected_run_gets_no_secret_and_no_key_even_past_the_trigger(void **state)
{
	struct gitenv g;
	json_t *run;
	char *y, *log;
	int64_t id;
	(void)state;
	setup_env(&g, "", 0);
	y = xasprintf("name: fw\nstages:\n"
		      "  - { name: wait, steps: [ { run: 'while [ ! -f %s/go ]; do sleep 0.1; done' } ] }\n"
		      "  - name: build\n    needs: [wait]\n    secrets: [DEPLOY_KEY]\n"
		      "    steps: [ { run: 'echo \"len=${#DEPLOY_KEY}\"; head -c 2000 /dev/urandom > app.bin' } ]\n"
		      "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
		      "  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1, key: release }\n",
		      g.git.base);
	id = h_trigger(&g.d, y); /* the admin's upload: protected when created */
	free(y);
	for (int i = 0; i < 400 && !h_sql_int(&g.d, "SELECT COUNT(*) FROM jobs WHERE name = 'wait' AND state = 'running'"); i++)
		h_msleep(50);
	sql_write(&g.d, "UPDATE runs SET protected = 0");
	{
		struct buf out = BUF_INIT;
		assert_int_equal(h_sh(&out, "touch %s/go", g.git.base), 0);
		buf_release(&out);
	}
	assert_string_equal(h_wait_run(&g.d, id, 30000), "failed");
	run = h_run(&g.d, id);
	/* the job handed out after the change carried no secret */
	log = job_log(&g.d, run, "build");
	assert_non_null(strstr(log, "len=0"));
	free(log);
	/* the release stage refused to start: no key loaded, no release */
	assert_non_null(strstr(json_string_value(json_object_get(h_job(run, "release"), "message")),
			       "this run is not protected"));
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_refused'"
				      " AND detail LIKE '%\"stage\":\"release\"%'"), 1);
	json_decref(run);

	/* the release stage checks the counter step again right before it
	 * loads the key: a step allowed at trigger time (+1 over release 1)
	 * but not any more when it signs (release 1 gone) is refused */
	y = xasprintf(upload_release, "1.0.0", 1);
	assert_string_equal(h_wait_run(&g.d, h_trigger(&g.d, y), 30000), "passed");
	free(y);
	y = xasprintf("name: fw\nstages:\n"
		      "  - { name: wait, steps: [ { run: 'while [ ! -f %s/go2 ]; do sleep 0.1; done' } ] }\n"
		      "  - name: build\n    needs: [wait]\n"
		      "    steps: [ { run: 'head -c 2000 /dev/urandom > app.bin' } ]\n"
		      "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
		      "  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 2, key: release }\n",
		      g.git.base);
	id = h_trigger(&g.d, y);
	free(y);
	for (int i = 0; i < 400 && !h_sql_int(&g.d, "SELECT COUNT(*) FROM jobs WHERE name = 'wait' AND state = 'running'"); i++)
		h_msleep(50);
	sql_write(&g.d, "DELETE FROM releases");
	{
		struct buf out = BUF_INIT;
		assert_int_equal(h_sh(&out, "touch %s/go2", g.git.base), 0);
		buf_release(&out);
	}
	assert_string_equal(h_wait_run(&g.d, id, 30000), "failed");
	run = h_run(&g.d, id);
	assert_non_null(strstr(json_string_value(json_object_get(h_job(run, "release"), "message")),
			       "refused by the release policy: security_counter 2 is more than +1"));
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM releases"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM audit WHERE action = 'policy_refused'"
				      " AND detail LIKE '%\"product\":\"fw\"%'"), 1);
	json_decref(run);
	teardown_env(&g);
}

/* A policy the server cannot honour is a configuration error: otacd
 * refuses to start and says where. */
static void bad_release_policy_configuration_refuses_to_start(void **state)
{
	static const struct { const char *yaml, *says; } cases[] = {
		{ "products:\n  fw: { keys: [nope] }\n", "products.fw.keys: key 'nope' is not defined in keys:" },
		{ "products:\n  fw: { kyes: [nope] }\n", "product 'fw': unknown key 'kyes'" },
		{ "products:\n  fw: { max_counter_increase: -1 }\n", "max_counter_increase must be an integer" },
		{ "products:\n  fw: { approvals: { count: 0 } }\n", "approvals.count must be an integer 1..10" },
		{ "products:\n  fw: { required_gates: { g: { metric: nope } } }\n", "required_gates.g:" },
		{ "products:\n  fw: { repositories: [acme/none] }\n", "products.fw.repositories: 'acme/none' is not in repositories:" },
		{ "repositories:\n  - { name: a/b, url: /x, protected: { branch: [main] } }\n", "unknown key 'branch' in protected" },
	};
	char *dir = h_tmpdir(), *otacd = h_bin("otacd");
	struct buf out = BUF_INIT;
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *cfg = xasprintf("%s/c%zu.yml", dir, i);
		assert_int_equal(ota_write_file_atomic(cfg, cases[i].yaml, strlen(cases[i].yaml), 0600), 0);
		if (h_sh(&out, "%s --config %s --state-dir %s/s%zu --listen 127.0.0.1:0 --device-listen off", otacd, cfg, dir,
			 i) == 0 || !strstr(buf_cstr(&out), cases[i].says))
			fail_msg("case %zu: expected a refusal saying \"%s\", got: %s", i, cases[i].says, buf_cstr(&out));
		free(cfg);
	}
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(otacd);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(feature_branch_push_gets_no_secret_no_key_no_release_no_rollout),
		cmocka_unit_test(operator_upload_runs_unprotected_release_role_and_admin_release),
		cmocka_unit_test(protected_pipeline_asking_for_more_than_its_product_policy_is_refused),
		cmocka_unit_test(production_needs_two_distinct_approvers),
		cmocka_unit_test(an_unprotected_run_gets_no_secret_and_no_key_even_past_the_trigger),
		cmocka_unit_test(bad_release_policy_configuration_refuses_to_start),
	};
	return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
