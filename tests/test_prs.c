/*
 * test_prs.c - pull/merge-request pipelines (issue 17): a real bare
 * repository holding the forge's request refs (refs/pull/N/head,
 * refs/merge-requests/N/head, pushed there with `git push` the way the
 * forge keeps them), signed GitHub, GitLab and Gitea request webhooks in
 * each forge's payload format posted with curl, and a real otacd that
 * fetches the request's head ref and runs it -- never protected: no
 * secrets, and its release stage skipped, even for a fork's branch named
 * `main`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../orchestrator/webhook.h"
#include "githarness.h"
#include "harness.h"

#define SECRET "pr-secret-0123456789ab"
#define REPO "acme/fw"

/* Asks for a secret and has a release stage: both need a protected run. */
static const char pipeline[] =
	"name: fw\n"
	"on: { push: { branches: [main] } }\n"
	"stages:\n"
	"  - name: build\n"
	"    secrets: [DEPLOY_KEY]\n"
	"    steps:\n"
	"      - run: 'test -z \"$DEPLOY_KEY\" && echo \"no secret at $OTACD_REF\"'\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n";

struct env {
	struct daemon d;
	struct gh_origin git;
};

static void setup(struct env *g)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	char *config;

	memset(g, 0, sizeof(*g));
	gh_origin_init(&g->git);
	gh_origin_create(&g->git);
	h_git_commit_file(g->git.work, ".otacd/pipeline.yml", pipeline, "add pipeline");
	h_git_push(g->git.work, "main");
	config = xasprintf("lease: 3s\nheartbeat: 300ms\nsecrets: { DEPLOY_KEY: \"s3cret-deploy-key\" }\n"
			   "repositories:\n  - { name: " REPO ", url: \"%s\", secret: " SECRET " }\n", g->git.origin);
	h_init(&g->d, config);
	h_start(&g->d, args);
	free(config);
}

static void teardown(struct env *g)
{
	h_cleanup(&g->d);
	gh_origin_release(&g->git);
}

/* A commit on a new local branch, pushed to the forge's request ref only
 * (the way a fork's branch reaches the base repository). */
static char *open_request(struct env *g, const char *branch, const char *ref, const char *content)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_git(g->git.work, &out, "checkout -q -B %s main", branch), 0);
	h_git_commit_file(g->git.work, "src/main.c", content, "a change under review");
	assert_int_equal(h_git(g->git.work, &out, "push -q origin HEAD:%s", ref), 0);
	assert_int_equal(h_git(g->git.work, &out, "checkout -q main"), 0);
	buf_release(&out);
	return gh_rev(&g->git, branch);
}

/* POST body to /hooks/PROVIDER signed as that forge signs; the HTTP status. */
static long post_hook(struct env *g, const char *provider, const char *event, const char *delivery, const char *body,
		      struct buf *answer)
{
	char mac[65], *file = xasprintf("%s/body.json", g->git.base), *headers;
	struct buf out = BUF_INIT;
	long status;
	FILE *f = fopen(file, "w");

	assert_non_null(f);
	fputs(body, f);
	fclose(f);
	webhook_hmac_hex(SECRET, body, strlen(body), mac);
	if (!strcmp(provider, "github"))
		headers = xasprintf("-H 'X-GitHub-Event: %s' -H 'X-GitHub-Delivery: %s' -H 'X-Hub-Signature-256: sha256=%s'",
				    event, delivery, mac);
	else if (!strcmp(provider, "gitlab"))
		headers = xasprintf("-H 'X-Gitlab-Event: %s' -H 'X-Gitlab-Event-UUID: %s' -H 'X-Gitlab-Token: " SECRET "'",
				    event, delivery);
	else
		headers = xasprintf("-H 'X-Gitea-Event: %s' -H 'X-Gitea-Delivery: %s' -H 'X-Gitea-Signature: %s'",
				    event, delivery, mac);
	assert_int_equal(h_sh(&out, "curl -s -o %s/answer.json -w '%%{http_code}' -H 'Content-Type: application/json' %s "
				    "--data-binary @%s %s/hooks/%s",
			      g->git.base, headers, file, g->d.url, provider), 0);
	status = strtol(out.ptr, NULL, 10);
	if (answer) {
		char *path = xasprintf("%s/answer.json", g->git.base);
		ota_read_file(answer, path, 1 << 20);
		free(path);
	}
	free(headers);
	free(file);
	buf_release(&out);
	return status;
}

static char *github_pr(const char *action, long number, const char *head_ref, const char *head_repo, const char *sha)
{
	return xasprintf("{\"action\": \"%s\", \"number\": %ld,"
			 " \"pull_request\": {\"number\": %ld, \"state\": \"open\","
			 "  \"head\": {\"ref\": \"%s\", \"sha\": \"%s\", \"repo\": {\"full_name\": \"%s\"}},"
			 "  \"base\": {\"ref\": \"main\", \"sha\": \"%040d\", \"repo\": {\"full_name\": \"" REPO "\"}}},"
			 " \"repository\": {\"full_name\": \"" REPO "\"}, \"sender\": {\"login\": \"mallory\"}}",
			 action, number, number, head_ref, sha, head_repo, 0);
}

/* Wait for the run of the request's head ref; its JSON. */
static json_t *request_run(struct env *g, const char *ref)
{
	for (int i = 0; i < 600; i++) {
		json_t *ans = NULL, *run;
		size_t k;
		assert_int_equal(h_get(&g->d, "/api/v1/runs?limit=50", &ans), 200);
		json_array_foreach(json_object_get(ans, "runs"), k, run) {
			if (!strcmp(json_string_value(json_object_get(run, "ref")), ref)) {
				int64_t id = json_integer_value(json_object_get(run, "id"));
				json_decref(ans);
				assert_non_null(h_wait_run(&g->d, id, 120000));
				return h_run(&g->d, id);
			}
		}
		json_decref(ans);
		h_msleep(100);
	}
	fail_msg("no run of %s", ref);
	return NULL;
}

/* The run checks the request's head commit, unprotected, without secrets,
 * its release stage skipped, and says which request it is. */
static void assert_untrusted_request_run(json_t *run, const char *sha, long number)
{
	json_t *pr = json_object_get(run, "pull_request"), *stage;
	size_t i;
	int skipped = 0;

	assert_string_equal(json_string_value(json_object_get(run, "state")), "passed");
	assert_string_equal(json_string_value(json_object_get(run, "commit")), sha);
	assert_false(json_is_true(json_object_get(run, "protected")));
	assert_non_null(strstr(json_string_value(json_object_get(run, "trust_reason")), "not a protected ref"));
	assert_int_equal(json_integer_value(json_object_get(pr, "number")), number);
	assert_string_equal(json_string_value(json_object_get(pr, "base")), "main");
	json_array_foreach(json_object_get(run, "stages"), i, stage)
		if (!strcmp(json_string_value(json_object_get(stage, "name")), "release"))
			skipped = !strcmp(json_string_value(json_object_get(stage, "state")), "skipped");
	assert_true(skipped);
}

static void github_request_from_a_forks_main_runs_unprotected_at_its_head(void **state)
{
	struct env g;
	struct buf ans = BUF_INIT;
	char *sha, *body;
	json_t *run;
	(void)state;

	setup(&g);
	/* the fork's branch is called main: the run must not count as main */
	sha = open_request(&g, "fork-main", "refs/pull/7/head", "int main(void) { return 1; } /* fork */\n");
	body = github_pr("opened", 7, "main", "mallory/fw", sha);
	assert_int_equal(post_hook(&g, "github", "pull_request", "gh-pr-1", body, &ans), 202);
	run = request_run(&g, "refs/pull/7/head");
	assert_untrusted_request_run(run, sha, 7);
	json_decref(run);
	/* no run of main was started by it */
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs WHERE ref = 'refs/heads/main'"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs WHERE protected != 0"), 0);
	free(body);
	free(sha);
	buf_release(&ans);
	teardown(&g);
}

static void gitlab_and_gitea_requests_run_at_their_head_refs(void **state)
{
	struct env g;
	char *sha, *body;
	json_t *run;
	(void)state;

	setup(&g);
	sha = open_request(&g, "feature", "refs/merge-requests/3/head", "int main(void) { return 3; }\n");
	body = xasprintf("{\"object_kind\": \"merge_request\", \"event_type\": \"merge_request\","
			 " \"user\": {\"username\": \"mallory\"},"
			 " \"project\": {\"path_with_namespace\": \"" REPO "\"},"
			 " \"object_attributes\": {\"iid\": 3, \"action\": \"open\", \"state\": \"opened\","
			 "  \"source_branch\": \"main\", \"target_branch\": \"main\","
			 "  \"last_commit\": {\"id\": \"%s\"}}}", sha);
	assert_int_equal(post_hook(&g, "gitlab", "Merge Request Hook", "gl-mr-1", body, NULL), 202);
	run = request_run(&g, "refs/merge-requests/3/head");
	assert_untrusted_request_run(run, sha, 3);
	json_decref(run);
	free(body);
	free(sha);

	sha = open_request(&g, "feature2", "refs/pull/4/head", "int main(void) { return 4; }\n");
	body = xasprintf("{\"action\": \"synchronized\", \"number\": 4,"
			 " \"pull_request\": {\"number\": 4, \"head\": {\"ref\": \"feature2\", \"sha\": \"%s\"},"
			 "  \"base\": {\"ref\": \"main\"}},"
			 " \"repository\": {\"full_name\": \"" REPO "\"}, \"sender\": {\"login\": \"mallory\"}}", sha);
	assert_int_equal(post_hook(&g, "gitea", "pull_request", "gt-pr-1", body, NULL), 202);
	run = request_run(&g, "refs/pull/4/head");
	assert_untrusted_request_run(run, sha, 4);
	json_decref(run);
	free(body);
	free(sha);
	teardown(&g);
}

static void closed_edited_and_malformed_requests_start_nothing(void **state)
{
	struct env g;
	struct buf ans = BUF_INIT;
	char *sha, *body;
	(void)state;

	setup(&g);
	sha = open_request(&g, "feature", "refs/pull/9/head", "int main(void) { return 9; }\n");
	body = github_pr("closed", 9, "feature", REPO, sha);
	assert_int_equal(post_hook(&g, "github", "pull_request", "gh-closed", body, &ans), 202);
	assert_non_null(strstr(buf_cstr(&ans), "this event is ignored"));
	buf_release(&ans);
	free(body);
	body = xasprintf("{\"object_kind\": \"merge_request\", \"project\": {\"path_with_namespace\": \"" REPO "\"},"
			 " \"object_attributes\": {\"iid\": 9, \"action\": \"update\", \"target_branch\": \"main\","
			 "  \"last_commit\": {\"id\": \"%s\"}}}", sha);   /* a title edit: no oldrev */
	assert_int_equal(post_hook(&g, "gitlab", "Merge Request Hook", "gl-edit", body, &ans), 202);
	assert_non_null(strstr(buf_cstr(&ans), "this event is ignored"));
	buf_release(&ans);
	free(body);
	/* hostile numbers, commits and base branches are refused with the reason */
	body = xasprintf("{\"action\": \"opened\", \"number\": \"9/../../heads/main\", \"pull_request\": {\"head\": {\"sha\": \"%s\"},"
			 " \"base\": {\"ref\": \"main\"}}, \"repository\": {\"full_name\": \"" REPO "\"}}", sha);
	assert_int_equal(post_hook(&g, "github", "pull_request", "gh-bad1", body, &ans), 400);
	assert_non_null(strstr(buf_cstr(&ans), "'number' must be a number"));
	free(body);
	body = github_pr("opened", -1, "feature", REPO, sha);
	assert_int_equal(post_hook(&g, "github", "pull_request", "gh-bad2", body, NULL), 400);
	free(body);
	body = github_pr("opened", 9, "feature", REPO, "refs/heads/main");
	assert_int_equal(post_hook(&g, "github", "pull_request", "gh-bad3", body, NULL), 400);
	free(body);
	body = xasprintf("{\"action\": \"opened\", \"number\": 9, \"pull_request\": {\"head\": {\"sha\": \"%s\"},"
			 " \"base\": {\"ref\": \"refs/heads/main\"}}, \"repository\": {\"full_name\": \"" REPO "\"}}", sha);
	assert_int_equal(post_hook(&g, "github", "pull_request", "gh-bad4", body, NULL), 400);
	free(body);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM runs"), 0);
	assert_int_equal(h_sql_int(&g.d, "SELECT COUNT(*) FROM deliveries"), 0);
	free(sha);
	buf_release(&ans);
	teardown(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(github_request_from_a_forks_main_runs_unprotected_at_its_head),
		cmocka_unit_test(gitlab_and_gitea_requests_run_at_their_head_refs),
		cmocka_unit_test(closed_edited_and_malformed_requests_start_nothing),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
