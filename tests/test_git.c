/*
 * test_git.c - git push to otacd, for real: a bare repository whose
 * post-receive hook (tests/githook.sh) sends a signed GitHub, GitLab or
 * Gitea push webhook with curl, a working clone that `git push`es to it,
 * and a real otacd that fetches the mirror with libgit2, reads the
 * pipeline at the pushed commit and runs it on its local agents.
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

#include "githarness.h"
#include "harness.h"

#define SECRET "push-secret-0123456789"
#define REPO "acme/fw"

static const char pipeline[] =
	"name: fw\n"
	"on: { push: { branches: [main, \"release/*\"], tags: [\"v*\"] } }\n"
	"concurrency: fw\n"
	"stages:\n"
	"  - name: build\n"
	"    steps:\n"
	"      - run: 'cat src/main.c; echo \"commit=$OTACD_COMMIT ref=$OTACD_REF\"'\n";

struct gitenv {
	struct daemon d;
	struct gh_origin git;
	char *hooklog;
	const char *provider;
};

static void setup_env_extra(struct gitenv *g, const char *provider, const char *extra_config);

static void setup_env(struct gitenv *g, const char *provider)
{
	setup_env_extra(g, provider, "");
}

static void setup_env_extra(struct gitenv *g, const char *provider, const char *extra_config)
{
	const char *const args[] = { "--local-agents", "2", NULL };
	char *config;

	memset(g, 0, sizeof(*g));
	g->provider = provider;
	gh_origin_init(&g->git);
	g->hooklog = xasprintf("%s/hook.log", g->git.base);
	config = xasprintf("lease: 3s\nheartbeat: 300ms\nrepositories:\n"
			   "  - { name: " REPO ", url: \"%s\", secret: " SECRET " }\n%s", g->git.origin, extra_config);
	h_init(&g->d, config);
	h_start(&g->d, args);
	gh_origin_create(&g->git);
	gh_origin_hook(&g->git, &g->d, provider, SECRET, REPO, g->hooklog);
	h_git_commit_file(g->git.work, ".otacd/pipeline.yml", pipeline, "add pipeline");
	h_git_commit_file(g->git.work, "src/main.c", "int main(void) { return 0; } /* v1 */\n", "first");
	free(config);
}

static void teardown_env(struct gitenv *g)
{
	h_cleanup(&g->d);
	gh_origin_release(&g->git);
	free(g->hooklog);
}

/* The runs of REPO, oldest first. */
static json_t *repo_runs(struct gitenv *g)
{
	json_t *ans = NULL, *out = json_array(), *run;
	size_t i;
	assert_int_equal(h_get(&g->d, "/api/v1/runs?limit=500", &ans), 200);
	json_array_foreach(json_object_get(ans, "runs"), i, run)
		if (json_is_string(json_object_get(run, "repo")))
			json_array_insert(out, 0, run);
	json_decref(ans);
	return out;
}

static char *job_log(struct gitenv *g, json_t *run)
{
	struct buf out = BUF_INIT;
	json_t *full = h_run(&g->d, json_integer_value(json_object_get(run, "id")));
	json_t *job = h_job(full, "build");
	assert_int_equal(h_sh(&out, "curl -sf -H 'Authorization: Bearer %s' %s/api/v1/jobs/%lld/log", g->d.token, g->d.url,
			      (long long)json_integer_value(json_object_get(job, "id"))), 0);
	json_decref(full);
	return buf_detach(&out);
}

static char *hook_log(struct gitenv *g)
{
	struct buf b = BUF_INIT;
	if (ota_read_file(&b, g->hooklog, 1 << 20) < 0)
		return xstrdup("");
	return buf_detach(&b);
}

static void push_runs_the_pipeline_at_the_pushed_commit(const char *provider)
{
	struct gitenv g;
	json_t *runs, *run;
	char *head, *tree, *log;

	setup_env(&g, provider);
	h_git_push(g.git.work, "main");
	head = gh_rev(&g.git, "HEAD");
	tree = gh_rev(&g.git, "HEAD^{tree}");
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), 1);
	run = json_array_get(runs, 0);
	assert_string_equal(json_string_value(json_object_get(run, "commit")), head);
	assert_string_equal(json_string_value(json_object_get(run, "tree")), tree);
	assert_string_equal(json_string_value(json_object_get(run, "ref")), "refs/heads/main");
	assert_string_equal(json_string_value(json_object_get(run, "repo")), REPO);
	assert_non_null(strstr(json_string_value(json_object_get(run, "author")), "Tester"));
	assert_non_null(strstr(json_string_value(json_object_get(run, "message")), "first"));
	assert_non_null(strstr(json_string_value(json_object_get(run, "pusher")), "tester"));
	assert_string_equal(h_wait_run(&g.d, json_integer_value(json_object_get(run, "id")), 20000), "passed");
	/* the job saw exactly the pushed files */
	log = job_log(&g, run);
	assert_non_null(strstr(log, "/* v1 */"));
	{
		char *want = xasprintf("commit=%s ref=refs/heads/main", head);
		assert_non_null(strstr(log, want));
		free(want);
	}
	free(log);
	json_decref(runs);
	free(head);
	free(tree);
	teardown_env(&g);
}

static void github_push_runs_the_pipeline_at_the_pushed_commit(void **state)
{
	(void)state;
	push_runs_the_pipeline_at_the_pushed_commit("github");
}

static void gitlab_push_runs_the_pipeline_at_the_pushed_commit(void **state)
{
	(void)state;
	push_runs_the_pipeline_at_the_pushed_commit("gitlab");
}

static void gitea_push_runs_the_pipeline_at_the_pushed_commit(void **state)
{
	(void)state;
	push_runs_the_pipeline_at_the_pushed_commit("gitea");
}

static void redelivered_webhook_starts_one_run(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	json_t *runs;
	(void)state;
	setup_env(&g, "github");
	h_git_push(g.git.work, "main");
	/* resend the exact request the hook sent */
	assert_int_equal(h_sh(&out, "set --; while IFS= read -r h; do set -- \"$@\" -H \"$h\"; done < %s.headers; "
				    "curl -s -w ' %%{http_code}' -H 'Content-Type: application/json' \"$@\" --data-binary @%s.body %s/hooks/github",
			      g.hooklog, g.hooklog, g.d.url), 0);
	assert_non_null(strstr(buf_cstr(&out), "\"duplicate\":true"));
	assert_non_null(strstr(buf_cstr(&out), " 200"));
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), 1);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM deliveries"), 1);
	json_decref(runs);
	buf_release(&out);
	teardown_env(&g);
}

static void forged_signature_gets_401_and_records_nothing(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	(void)state;
	setup_env(&g, "github");
	h_git_push(g.git.work, "main");
	/* the same body with a signature made with another secret; and none */
	assert_int_equal(h_sh(&out, "sig=$(openssl dgst -sha256 -hmac wrong-secret-000000 -r < %s.body | cut -d' ' -f1); "
				    "curl -s -o /dev/null -w '%%{http_code}' -H 'X-GitHub-Event: push' -H 'X-GitHub-Delivery: forged-1' "
				    "-H \"X-Hub-Signature-256: sha256=$sig\" --data-binary @%s.body %s/hooks/github",
			      g.hooklog, g.hooklog, g.d.url), 0);
	assert_string_equal(buf_cstr(&out), "401");
	assert_int_equal(h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -H 'X-GitHub-Event: push' -H 'X-GitHub-Delivery: forged-2' "
				    "--data-binary @%s.body %s/hooks/github", g.hooklog, g.d.url), 0);
	assert_string_equal(buf_cstr(&out), "401");
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM deliveries WHERE delivery LIKE 'forged%'"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs"), 1);
	buf_release(&out);
	teardown_env(&g);
}

static void deleted_branch_and_unfiltered_branch_start_nothing_but_matching_tag_does(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	json_t *runs;
	char *log;
	(void)state;
	setup_env(&g, "github");
	h_git_push(g.git.work, "main");
	h_git_push(g.git.work, "main:feature/x");          /* not in on.push.branches */
	h_git_push(g.git.work, ":feature/x");              /* deletion */
	assert_int_equal(h_git(g.git.work, &out, "tag v1.0.0"), 0);
	h_git_push(g.git.work, "v1.0.0");                  /* matches tags: [v*] */
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 1), "ref")), "refs/tags/v1.0.0");
	log = hook_log(&g);
	/* the hook's answers: 202 with the reason nothing was started */
	assert_non_null(strstr(log, "refs/heads/feature/x {\"delivery\":2,\"reason\":\"refs/heads/feature/x does not match the pipeline's on.push filters: nothing to run\"} 202"));
	assert_non_null(strstr(log, "refs/heads/feature/x was deleted: nothing to build"));
	free(log);
	json_decref(runs);
	buf_release(&out);
	teardown_env(&g);
}

static void broken_pipeline_gives_a_failed_run_naming_file_line_column(void **state)
{
	struct gitenv g;
	json_t *runs;
	const char *error;
	(void)state;
	setup_env(&g, "github");
	h_git_commit_file(g.git.work, ".otacd/pipeline.yml", "name: fw\nstages:\n  - name: build\n    stpes: [ { run: x } ]\n", "break it");
	h_git_push(g.git.work, "main");
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 0), "state")), "failed");
	error = json_string_value(json_object_get(json_array_get(runs, 0), "error"));
	assert_non_null(error);
	assert_non_null(strstr(error, ".otacd/pipeline.yml:4:5"));
	assert_non_null(strstr(error, "steps"));
	json_decref(runs);
	teardown_env(&g);
}

static void force_push_and_rapid_pushes_each_get_a_run_in_order(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	char *commits[12];
	json_t *runs;
	int n = 0;
	(void)state;
	setup_env(&g, "github");
	h_git_push(g.git.work, "main");
	commits[n++] = gh_rev(&g.git, "HEAD");
	/* rewrite history and force-push */
	assert_int_equal(h_git(g.git.work, &out, "commit -q --amend -m 'first, amended'"), 0);
	h_git_push(g.git.work, "+main");
	commits[n++] = gh_rev(&g.git, "HEAD");
	/* ten pushes as fast as git can make them */
	for (int i = 0; i < 10; i++) {
		char content[64], msg[32];
		snprintf(content, sizeof(content), "int main(void) { return %d; }\n", i);
		snprintf(msg, sizeof(msg), "rapid %d", i);
		h_git_commit_file(g.git.work, "src/main.c", content, msg);
		h_git_push(g.git.work, "main");
		commits[n++] = gh_rev(&g.git, "HEAD");
	}
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), (size_t)n);
	for (int i = 0; i < n; i++) {
		json_t *run = json_array_get(runs, (size_t)i);
		assert_string_equal(json_string_value(json_object_get(run, "commit")), commits[i]);
	}
	/* one concurrency group: all pass, one after another in push order */
	for (int i = 0; i < n; i++)
		assert_string_equal(h_wait_run(&g.d, json_integer_value(json_object_get(json_array_get(runs, (size_t)i), "id")),
					       30000), "passed");
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs a JOIN runs b ON b.id > a.id WHERE b.started_at < a.finished_at"), 0);
	for (int i = 0; i < n; i++)
		free(commits[i]);
	json_decref(runs);
	buf_release(&out);
	teardown_env(&g);
}

/* POST body (a file) to /hooks/github signed with SECRET; returns "CODE BODY". */
static char *signed_post(struct gitenv *g, const char *event, const char *delivery, const char *file)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "sig=$(openssl dgst -sha256 -hmac " SECRET " -r < %s | cut -d' ' -f1); "
				    "curl -s -w ' %%{http_code}' -H 'X-GitHub-Event: %s' -H 'X-GitHub-Delivery: %s' "
				    "-H \"X-Hub-Signature-256: sha256=$sig\" --data-binary @%s %s/hooks/github",
			      file, event, delivery, file, g->d.url), 0);
	return buf_detach(&out);
}

static void webhook_edge_cases_get_clear_answers_and_change_nothing(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	char *file, *ans;
	json_t *runs;
	const char *error;
	(void)state;
	setup_env(&g, "github");
	h_git_push(g.git.work, "main");
	file = xasprintf("%s.edge", g.hooklog);

	/* ping: 200 */
	ota_write_file_atomic(file, "{\"zen\":\"hi\"}", 13, 0600);
	ans = signed_post(&g, "ping", "edge-1", file);
	assert_non_null(strstr(ans, " 200"));
	free(ans);
	/* malformed JSON and a missing field: 400 with the reason */
	ota_write_file_atomic(file, "{\"ref\": ", 8, 0600);
	ans = signed_post(&g, "push", "edge-2", file);
	assert_non_null(strstr(ans, "invalid JSON"));
	assert_non_null(strstr(ans, " 400"));
	free(ans);
	h_sh(&out, "sed 's/\"ref\"/\"rfe\"/' %s.body > %s", g.hooklog, file);
	ans = signed_post(&g, "push", "edge-3", file);
	assert_non_null(strstr(ans, "'ref'"));
	assert_non_null(strstr(ans, " 400"));
	free(ans);
	/* a repository otacd does not know: 404 */
	h_sh(&out, "sed 's#acme/fw#acme/other#' %s.body > %s", g.hooklog, file);
	ans = signed_post(&g, "push", "edge-4", file);
	assert_non_null(strstr(ans, " 404"));
	free(ans);
	/* over GitHub's 25 MB: 413 */
	h_sh(&out, "head -c 26214500 /dev/zero | tr '\\0' ' ' > %s", file);
	ans = signed_post(&g, "push", "edge-5", file);
	assert_non_null(strstr(ans, " 413"));
	free(ans);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM deliveries WHERE delivery LIKE 'edge-%'"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs"), 1);

	/* a commit that cannot be fetched: a failed run that says so, promptly */
	h_sh(&out, "sed 's/\"after\":\"[0-9a-f]*\"/\"after\":\"0123456789abcdef0123456789abcdef01234567\"/' %s.body > %s",
	     g.hooklog, file);
	ans = signed_post(&g, "push", "edge-6", file);
	assert_non_null(strstr(ans, "run_id"));
	assert_non_null(strstr(ans, " 202"));
	free(ans);
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 1), "state")), "failed");
	error = json_string_value(json_object_get(json_array_get(runs, 1), "error"));
	assert_non_null(strstr(error, "0123456789abcdef0123456789abcdef01234567"));
	assert_non_null(strstr(error, "could not be fetched"));
	json_decref(runs);
	free(file);
	buf_release(&out);
	teardown_env(&g);
}

static void otactl_triggers_a_repository_ref_without_a_webhook(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *head;
	json_t *run;
	(void)state;
	setup_env(&g, "github");
	h_git_push(g.git.work, "main");
	head = gh_rev(&g.git, "HEAD");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s trigger " REPO " main --wait", otactl, g.d.url, g.d.token), 0);
	run = h_run(&g.d, 2);
	assert_string_equal(json_string_value(json_object_get(run, "commit")), head);
	assert_string_equal(json_string_value(json_object_get(run, "trigger")), "api");
	assert_string_equal(json_string_value(json_object_get(run, "state")), "passed");
	json_decref(run);
	/* an unknown ref says so and starts nothing */
	assert_int_equal(h_sh(&out, "%s --url %s --token %s trigger " REPO " no-such-branch", otactl, g.d.url, g.d.token), 1);
	assert_non_null(strstr(buf_cstr(&out), "no-such-branch"));
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs"), 2);
	free(head);
	free(otactl);
	buf_release(&out);
	teardown_env(&g);
}

static void release_from_a_push_names_its_commit_and_verifies_against_the_mirror(void **state)
{
	struct gitenv g;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *key, *extra, *head;
	json_t *runs;
	(void)state;
	key = h_tmpdir();
	assert_int_equal(h_sh(&out, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s/k.pem", key), 0);
	extra = xasprintf("keys:\n  rel: { spec: %s/k.pem }\n", key);
	setup_env_extra(&g, "github", extra);
	h_git_commit_file(g.git.work, ".otacd/pipeline.yml",
		    "name: fw\non: { push: { tags: [\"v*\"] } }\nstages:\n"
		    "  - name: build\n    steps: [ { run: 'cp src/main.c app.bin' } ]\n"
		    "    artifacts: [ { path: app.bin, type: application, hardware: an385 } ]\n"
		    "  - { name: release, kind: release, needs: [build], security_counter: 1, key: rel }\n", "release pipeline");
	assert_int_equal(h_git(g.git.work, &out, "tag v2.3.4"), 0);
	h_git_push(g.git.work, "main v2.3.4");
	head = gh_rev(&g.git, "HEAD");
	runs = repo_runs(&g);
	assert_int_equal(json_array_size(runs), 1);
	assert_string_equal(h_wait_run(&g.d, json_integer_value(json_object_get(json_array_get(runs, 0), "id")), 30000), "passed");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s verify 1", otactl, g.d.url, g.d.token), 0);
	{
		char *want = xasprintf("ok    commit %.12s exists in the mirror of " REPO ", tree matches", head);
		assert_non_null(strstr(buf_cstr(&out), want));
		free(want);
	}
	assert_non_null(strstr(buf_cstr(&out), "release 1: fw 2.3.4"));
	/* the daemon's own verification (the release page) finds the commit
	 * in its mirror too */
	{
		json_t *ans = NULL, *c;
		size_t i, commits = 0;
		assert_int_equal(h_get(&g.d, "/api/v1/releases/1/verification", &ans), 200);
		assert_true(json_is_true(json_object_get(ans, "ok")));
		json_array_foreach(json_object_get(ans, "checks"), i, c)
			commits += !strcmp(json_string_value(json_object_get(c, "step")), "commit") &&
				   json_is_true(json_object_get(c, "ok"));
		assert_int_equal(commits, 1);
		json_decref(ans);
	}
	json_decref(runs);
	h_sh(&out, "rm -rf %s", key);
	free(head);
	free(extra);
	free(key);
	free(otactl);
	buf_release(&out);
	teardown_env(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(github_push_runs_the_pipeline_at_the_pushed_commit),
		cmocka_unit_test(gitlab_push_runs_the_pipeline_at_the_pushed_commit),
		cmocka_unit_test(gitea_push_runs_the_pipeline_at_the_pushed_commit),
		cmocka_unit_test(redelivered_webhook_starts_one_run),
		cmocka_unit_test(forged_signature_gets_401_and_records_nothing),
		cmocka_unit_test(deleted_branch_and_unfiltered_branch_start_nothing_but_matching_tag_does),
		cmocka_unit_test(broken_pipeline_gives_a_failed_run_naming_file_line_column),
		cmocka_unit_test(force_push_and_rapid_pushes_each_get_a_run_in_order),
		cmocka_unit_test(webhook_edge_cases_get_clear_answers_and_change_nothing),
		cmocka_unit_test(otactl_triggers_a_repository_ref_without_a_webhook),
		cmocka_unit_test(release_from_a_push_names_its_commit_and_verifies_against_the_mirror),
	};
	return cmocka_run_group_tests_name("git", tests, NULL, NULL);
}
