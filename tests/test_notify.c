/*
 * test_notify.c - commit statuses and outbound notifications (issue 17),
 * end to end: the real otacd and its local agents, a real git repository,
 * and a receiver in this process (libmicrohttpd) that records each request
 * exactly as it arrived - method, raw path, headers, body - so the tests
 * check the request format each forge documents, the webhook signature
 * (with OpenSSL's HMAC), retries with backoff under one delivery id,
 * delivery after a SIGKILL, and that no token or secret reaches the log.
 */
#include <sqlite3.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>

#include "../orchestrator/config.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/engine.h"
#include "../orchestrator/engine_core.h"
#include "../orchestrator/engine_int.h"
#include "../orchestrator/store.h"
#include "../orchestrator/notify/notify.h"
#include "harness.h"
#include "statusrecv.h"

#define HOOK_SECRET "hook-secret-0123456789abcdef"
#define SLACK_PATH "/slack/T000/B000/SLACKSECRETPATH"
#define GH_TOKEN "ghp_TESTTOKEN_github_0123456789"
#define GL_TOKEN "glpat-TESTTOKEN-gitlab-0123"
#define GT_TOKEN "gitea-TESTTOKEN-0123456789"

/* ---- the receiver: statusrecv.c ----------------------------------------- */

static void wait_sql(struct daemon *d, const char *sql, int64_t want)
{
	for (int i = 0; i < 1200 && h_sql_int(d, sql) != want; i++)
		h_msleep(50);
	assert_int_equal(h_sql_int(d, sql), want);
}

static char *write_file(const char *dir, const char *name, const char *content)
{
	char *path = xasprintf("%s/%s", dir, name);
	assert_int_equal(ota_write_file_atomic(path, content, strlen(content), 0600), 0);
	return path;
}

/* The daemon's log must not hold s. */
static void log_lacks(struct daemon *d, const char *s)
{
	struct buf b = BUF_INIT;
	char *path = xasprintf("%s/otacd.log", d->dir);
	assert_int_equal(ota_read_file(&b, path, 64 << 20), 0);
	if (strstr(buf_cstr(&b), s))
		fail_msg("the log %s holds a secret", path);
	buf_release(&b);
	free(path);
}

/* Remove a directory the test made (and free its name). */
static void rm_dir(char *dir)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "rm -rf '%s'", dir);
	buf_release(&out);
	free(dir);
}

/* h_post of a body this call owns. */
static long post(struct daemon *d, const char *path, json_t *body, json_t **out)
{
	long status = h_post(d, path, body, out);
	json_decref(body);
	return status;
}

static const char pass_pipeline[] = "name: fw\nstages:\n  - name: build\n    steps:\n      - run: 'true'\n";

/* ---- commit statuses ----------------------------------------------------- */

static void check_json_body(const struct req *q, const char *state, const char *ctx_key, const char *ctx,
			    const char *target_url)
{
	json_t *b = json_loads(q->body, 0, NULL);
	assert_non_null(b);
	assert_string_equal(json_string_value(json_object_get(b, "state")), state);
	assert_string_equal(json_string_value(json_object_get(b, ctx_key)), ctx);
	assert_string_equal(json_string_value(json_object_get(b, "target_url")), target_url);
	assert_non_null(strstr(json_string_value(json_object_get(b, "description")), "otacd run #"));
	assert_true(strlen(json_string_value(json_object_get(b, "description"))) <= 140);
	json_decref(b);
	assert_non_null(q->ctype);
	assert_non_null(strstr(q->ctype, "application/json"));
	assert_string_equal(q->method, "POST");
}

static void commit_statuses_follow_each_forges_documented_request(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct receiver rv;
	struct daemon d;
	struct buf out = BUF_INIT;
	char *base = h_tmpdir(), *origin = xasprintf("%s/origin.git", base), *work = xasprintf("%s/work", base);
	char *gh = write_file(base, "gh.token", GH_TOKEN "\n"), *gl = write_file(base, "gl.token", GL_TOKEN "\n");
	char *gt = write_file(base, "gt.token", GT_TOKEN "\n");
	char *config, *sha, *path, *url;
	int64_t run_gh, run_gl, run_gt;
	struct req *q;

	(void)state;
	receiver_start(&rv);
	assert_int_equal(h_sh(&out, "git init -q --bare -b main %s && git init -q -b main %s && cd %s && git remote add origin %s",
			      origin, work, work, origin), 0);
	h_git_commit_file(work, ".otacd/pipeline.yml", pass_pipeline, "add pipeline");
	h_git_push(work, "main");
	assert_int_equal(h_git(work, &out, "rev-parse HEAD"), 0);
	sha = xstrndup(out.ptr, strcspn(out.ptr, "\n"));
	config = xasprintf("lease: 3s\nheartbeat: 300ms\n"
			   "notifications:\n  public_url: http://ci.example.test:8470\n  retry_base: 100ms\n"
			   "repositories:\n"
			   "  - name: acme/gh\n    url: \"%s\"\n"
			   "    status: { forge: github, api_url: \"http://127.0.0.1:%d/gh/api/v3/\", token_file: \"%s\" }\n"
			   "  - name: acme/gl\n    url: \"%s\"\n"
			   "    status: { forge: gitlab, api_url: \"http://127.0.0.1:%d/gl/api/v4\", token_file: \"%s\","
			   " project: \"firmware/sensor-node\" }\n"
			   "  - name: acme/gt\n    url: \"%s\"\n"
			   "    status: { forge: gitea, api_url: \"http://127.0.0.1:%d/gt/api/v1\", token_file: \"%s\","
			   " context: ci/otacd }\n",
			   origin, rv.port, gh, origin, rv.port, gl, origin, rv.port, gt);
	h_init(&d, config);
	h_start(&d, args);
	assert_int_equal(post(&d, "/api/v1/triggers", json_pack("{ss ss}", "repo", "acme/gh", "ref", "main"), NULL) / 100, 2);
	assert_int_equal(post(&d, "/api/v1/triggers", json_pack("{ss ss}", "repo", "acme/gl", "ref", "main"), NULL) / 100, 2);
	assert_int_equal(post(&d, "/api/v1/triggers", json_pack("{ss ss}", "repo", "acme/gt", "ref", "main"), NULL) / 100, 2);
	/* running, then passed, for each forge */
	recv_wait_count(&rv, "/gh/", 200, 2);
	recv_wait_count(&rv, "/gl/", 200, 2);
	recv_wait_count(&rv, "/gt/", 200, 2);
	run_gh = h_sql_int(&d, "SELECT id FROM runs WHERE repo = 'acme/gh'");
	run_gl = h_sql_int(&d, "SELECT id FROM runs WHERE repo = 'acme/gl'");
	run_gt = h_sql_int(&d, "SELECT id FROM runs WHERE repo = 'acme/gt'");
	assert_string_equal(h_wait_run(&d, run_gh, 30000), "passed");

	/* GitHub: POST /repos/{owner}/{repo}/statuses/{sha}, Bearer token,
	 * states pending -> success, context */
	path = xasprintf("/gh/api/v3/repos/acme/gh/statuses/%s", sha);
	url = xasprintf("http://ci.example.test:8470/#/runs/%lld", (long long)run_gh);
	for (int k = 0; k < 2; k++) {
		q = recv_nth(&rv, "/gh/", (size_t)k);
		assert_string_equal(q->path, path);
		assert_string_equal(q->authorization, "Bearer " GH_TOKEN);
		assert_null(q->private_token);
		assert_string_equal(q->accept, "application/vnd.github+json");
		assert_string_equal(q->api_version, "2022-11-28");
		check_json_body(q, k == 0 ? "pending" : "success", "context", "otacd/fw", url);
	}
	free(path);
	free(url);

	/* GitLab: POST /projects/:id/statuses/:sha with the path-encoded id,
	 * PRIVATE-TOKEN, states running -> success, name and ref */
	path = xasprintf("/gl/api/v4/projects/firmware%%2Fsensor-node/statuses/%s", sha);
	url = xasprintf("http://ci.example.test:8470/#/runs/%lld", (long long)run_gl);
	for (int k = 0; k < 2; k++) {
		json_t *b;
		q = recv_nth(&rv, "/gl/", (size_t)k);
		assert_string_equal(q->path, path);
		assert_string_equal(q->private_token, GL_TOKEN);
		assert_null(q->authorization);
		check_json_body(q, k == 0 ? "running" : "success", "name", "otacd/fw", url);
		b = json_loads(q->body, 0, NULL);
		assert_string_equal(json_string_value(json_object_get(b, "ref")), "main");
		json_decref(b);
	}
	free(path);
	free(url);

	/* Gitea / Forgejo: POST /repos/{owner}/{repo}/statuses/{sha},
	 * Authorization: token, states pending -> success, the configured context */
	path = xasprintf("/gt/api/v1/repos/acme/gt/statuses/%s", sha);
	url = xasprintf("http://ci.example.test:8470/#/runs/%lld", (long long)run_gt);
	for (int k = 0; k < 2; k++) {
		q = recv_nth(&rv, "/gt/", (size_t)k);
		assert_string_equal(q->path, path);
		assert_string_equal(q->authorization, "token " GT_TOKEN);
		assert_null(q->private_token);
		check_json_body(q, k == 0 ? "pending" : "success", "context", "ci/otacd", url);
	}
	free(path);
	free(url);
	/* the receiver answered before the sender recorded it: wait for the record */
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND target LIKE 'status:%'", 6);

	/* a failing commit: GitLab says failed, Gitea failure */
	h_git_commit_file(work, ".otacd/pipeline.yml", "name: fw\nstages:\n  - name: build\n    steps:\n      - run: 'false'\n",
			  "break the build");
	h_git_push(work, "main");
	assert_int_equal(post(&d, "/api/v1/triggers", json_pack("{ss ss}", "repo", "acme/gl", "ref", "main"), NULL) / 100, 2);
	assert_int_equal(post(&d, "/api/v1/triggers", json_pack("{ss ss}", "repo", "acme/gt", "ref", "main"), NULL) / 100, 2);
	recv_wait_count(&rv, "/gl/", 200, 4);
	recv_wait_count(&rv, "/gt/", 200, 4);
	{
		json_t *gl_fail = json_loads(recv_nth(&rv, "/gl/", 3)->body, 0, NULL);
		json_t *gt_fail = json_loads(recv_nth(&rv, "/gt/", 3)->body, 0, NULL);
		assert_string_equal(json_string_value(json_object_get(gl_fail, "state")), "failed");
		assert_string_equal(json_string_value(json_object_get(gt_fail, "state")), "failure");
		assert_null(strstr(recv_nth(&rv, "/gl/", 3)->path, sha)); /* the new commit */
		json_decref(gl_fail);
		json_decref(gt_fail);
	}
	log_lacks(&d, "TESTTOKEN");

	h_cleanup(&d);
	receiver_stop(&rv);
	h_sh(&out, "rm -rf %s", base);
	buf_release(&out);
	free(sha);
	free(config);
	free(gh);
	free(gl);
	free(gt);
	free(origin);
	free(work);
	free(base);
}

/* ---- webhooks and Slack ------------------------------------------------ */

/* X-Otacd-Signature-256 is sha256=HMAC-SHA256(secret, "TIMESTAMP.BODY"). */
static int signature_valid(const char *timestamp, const char *body, const char *signature)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
	char *text = xasprintf("%s.%s", timestamp, body);
	int ok;

	HMAC(EVP_sha256(), HOOK_SECRET, (int)strlen(HOOK_SECRET), (const unsigned char *)text, strlen(text), mac, &maclen);
	for (unsigned i = 0; i < maclen; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	ok = !strncmp(signature, "sha256=", 7) && !strcmp(signature + 7, hex);
	free(text);
	return ok;
}

static void check_signature(const struct req *q)
{
	assert_non_null(q->timestamp);
	assert_non_null(q->signature);
	assert_true(llabs(strtoll(q->timestamp, NULL, 10) - (long long)time(NULL)) < 600);
	assert_true(signature_valid(q->timestamp, q->body, q->signature));
}

static char *hook_config(struct receiver *rv, const char *dir, const char *extra)
{
	char *secret = write_file(dir, "hook.secret", HOOK_SECRET "\n");
	char *c = xasprintf("notifications:\n  retry_base: 100ms\n  retry_max: 2s\n%s  targets:\n"
			    "    - { name: ops, kind: webhook, url: \"http://127.0.0.1:%d/hook\", secret_file: \"%s\","
			    " events: [run.passed] }\n"
			    "    - { name: chat, kind: slack, url: \"http://127.0.0.1:%d" SLACK_PATH "\", events: [\"run.*\"] }\n",
			    extra, rv->port, secret, rv->port);
	free(secret);
	return c;
}

static void webhook_retries_with_backoff_under_one_signed_delivery(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct receiver rv;
	struct daemon d;
	char *config, *dir = h_tmpdir();
	int64_t run;
	struct req *first, *q;
	json_t *b;

	(void)state;
	receiver_start(&rv);
	rv.fail_hook = 3;
	config = hook_config(&rv, dir, "");
	h_init(&d, config);
	h_start(&d, args);
	run = h_trigger(&d, pass_pipeline);
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	recv_wait_count(&rv, "/hook", 200, 1);
	recv_wait_count(&rv, "/slack/", 200, 2);
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE target = 'hook:ops' AND state = 'sent' AND attempts = 4", 1);

	/* three 500s, then 200: four tries of one delivery, each signed, the
	 * gaps growing as retry_base * 2^k with jitter keeping at least half */
	assert_int_equal(recv_count(&rv, "/hook", 0), 4);
	first = recv_nth(&rv, "/hook", 0);
	b = json_loads(first->body, 0, NULL);
	assert_non_null(b);
	assert_string_equal(json_string_value(json_object_get(b, "event")), "run.passed");
	assert_string_equal(json_string_value(json_object_get(b, "id")), first->delivery);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(b, "run"), "id")), run);
	assert_string_equal(json_string_value(json_object_get(json_object_get(b, "run"), "state")), "passed");
	json_decref(b);
	assert_string_equal(first->event, "run.passed");
	for (size_t k = 0; k < 4; k++) {
		q = recv_nth(&rv, "/hook", k);
		assert_string_equal(q->delivery, first->delivery);
		assert_string_equal(q->body, first->body);
		check_signature(q);
		if (k > 0)
			assert_true(q->at_ms - recv_nth(&rv, "/hook", k - 1)->at_ms >= (100 << (k - 1)) / 2);
	}
	/* a signature over another body or timestamp does not verify */
	assert_false(signature_valid("1", first->body, first->signature));
	assert_false(signature_valid(first->timestamp, "{}", first->signature));

	/* Slack: {"text": ...} only, started and passed */
	q = recv_nth(&rv, "/slack/", 1);
	b = json_loads(q->body, 0, NULL);
	assert_int_equal(json_object_size(b), 1);
	assert_non_null(strstr(json_string_value(json_object_get(b, "text")), "passed"));
	json_decref(b);
	assert_null(q->signature);

	log_lacks(&d, HOOK_SECRET);
	log_lacks(&d, "SLACKSECRETPATH");
	h_cleanup(&d);
	receiver_stop(&rv);
	free(config);
	rm_dir(dir);
}

static void undelivered_rows_survive_sigkill_and_go_out_once_after_restart(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct receiver rv;
	struct daemon d;
	char *config, *dir = h_tmpdir();
	int64_t run, total;
	char *ids;
	size_t seen = 0;

	(void)state;
	receiver_start(&rv);
	rv.down = 503;
	config = hook_config(&rv, dir, "");
	h_init(&d, config);
	h_start(&d, args);
	run = h_trigger(&d, pass_pipeline);
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	/* every row tried at least once and still owed */
	total = h_sql_int(&d, "SELECT COUNT(*) FROM outbox");
	assert_int_equal(total, 3); /* ops: passed; chat: started, passed */
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts >= 1", total);
	h_kill(&d, SIGKILL);

	pthread_mutex_lock(&rv.lock);
	rv.down = 0;
	pthread_mutex_unlock(&rv.lock);
	h_start(&d, args);
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE state = 'sent'", total);
	/* each delivery id was accepted exactly once */
	ids = h_sql_text(&d, "SELECT group_concat(delivery, ' ') FROM outbox");
	for (char *line = strtok(ids, " "); line; line = strtok(NULL, " ")) {
		size_t accepted = 0;
		pthread_mutex_lock(&rv.lock);
		for (size_t i = 0; i < rv.n; i++)
			if (rv.reqs[i].status == 200 && rv.reqs[i].delivery && !strcmp(rv.reqs[i].delivery, line))
				accepted++;
		pthread_mutex_unlock(&rv.lock);
		assert_int_equal(accepted, 1);
		seen++;
	}
	assert_int_equal(seen, total);
	free(ids);
	h_cleanup(&d);
	receiver_stop(&rv);
	free(config);
	rm_dir(dir);
}

static void rows_older_than_max_age_are_given_up_and_recorded(void **state)
{
	const char *const no_agents[] = { "--local-agents", "0", NULL };
	struct receiver rv;
	struct daemon d;
	char *config, *dir = h_tmpdir();

	(void)state;
	receiver_start(&rv);
	rv.down = 500;
	config = hook_config(&rv, dir, "  max_age: 1s\n");
	h_init(&d, config);
	h_start(&d, no_agents);
	h_trigger(&d, pass_pipeline); /* no agent: only run.started goes out */
	wait_sql(&d, "SELECT COUNT(*) FROM outbox WHERE target = 'hook:chat' AND state = 'expired'"
		     " AND last_error LIKE '%max_age%' AND done_at IS NOT NULL", 1);
	assert_true(recv_count(&rv, SLACK_PATH, 500) >= 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM outbox"), 1);
	/* the API shows the give-up and why, and no URL */
	{
		json_t *ans = NULL, *row;
		char *text;
		assert_int_equal(h_get(&d, "/api/v1/notifications?state=expired", &ans), 200);
		assert_int_equal(json_array_size(ans), 1);
		row = json_array_get(ans, 0);
		assert_string_equal(json_string_value(json_object_get(row, "target")), "hook:chat");
		assert_string_equal(json_string_value(json_object_get(row, "event")), "run.started");
		assert_non_null(strstr(json_string_value(json_object_get(row, "last_error")), "max_age"));
		text = json_dumps(ans, 0);
		assert_null(strstr(text, "SLACKSECRETPATH"));
		free(text);
		json_decref(ans);
		assert_int_equal(h_get(&d, "/api/v1/notifications?state=bogus", NULL), 400);
	}
	h_cleanup(&d);
	receiver_stop(&rv);
	free(config);
	rm_dir(dir);
}

/* ---- trust boundary: destinations come from the server only ------------ */

static void a_pipeline_cannot_name_a_notification_destination(void **state)
{
	struct daemon d;
	json_t *ans = NULL;
	const char *yaml = "name: evil\nnotifications:\n  - { kind: webhook, url: \"http://169.254.169.254/latest\" }\n"
			   "stages:\n  - name: build\n    steps:\n      - run: 'true'\n";
	char *text;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, NULL);
	assert_int_equal(post(&d, "/api/v1/runs", json_pack("{ss}", "pipeline", yaml), &ans), 422);
	text = json_dumps(ans, 0);
	assert_non_null(strstr(text, "server's configuration only"));
	free(text);
	json_decref(ans);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM runs"), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM outbox"), 0);
	h_cleanup(&d);
}

static void bad_notification_config_is_refused_with_its_key(void **state)
{
	struct otacd_config c;
	struct notify *n = NULL;
	char *dir = h_tmpdir();
	char *file = write_file(dir, "c.yml", "notifications:\n  targets:\n    - { name: ops, kind: webhook, url: \"http://x/\" }\n");

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_load(&c, file), 0);
	assert_int_equal(notify_open(&n, &c), OTA_EINVAL);
	assert_null(n);
	assert_non_null(strstr(ota_error_last(), "notifications.targets[0].secret_file"));
	config_release(&c);
	free(file);

	file = write_file(dir, "d.yml", "repositories:\n  - name: a/b\n    url: /nonexistent\n"
					"    status: { forge: gitea, token_file: /nonexistent }\n");
	config_defaults(&c);
	assert_int_equal(config_load(&c, file), 0);
	assert_int_equal(notify_open(&n, &c), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "repositories[a/b].status.api_url"));
	config_release(&c);
	free(file);
	rm_dir(dir);
}

/* ---- rollout events ------------------------------------------------------ */

struct audit_call {
	const char *action;
	const char *reason;
};

/* What rollout.c does on a decision: an audit entry in the engine's transaction. */
static int audit_on_engine(struct engine *e, void *arg)
{
	const struct audit_call *a = arg;
	return engine_audit(e, "otacd", a->action, 1, 1, a->reason, NULL);
}

/* A decision that fails after its audit entry: the transaction, outbox row included, goes. */
static int audit_then_fail(struct engine *e, void *arg)
{
	(void)arg;
	if (engine_audit(e, "otacd", "promote", 1, 1, "doomed", NULL) < 0)
		return OTA_ERROR;
	return ota_error_set(OTA_ERROR, "the decision failed after its audit entry");
}

static void rollout_decisions_queue_their_events_in_the_same_transaction(void **state)
{
	static const struct audit_call calls[] = {
		{ "step", "window opened" },          /* not notified */
		{ "promote", "gates passed at 1%" },
		{ "pause", "gate boots inconclusive" },
		{ "auto_rollback", "gate crash_free failed" },
		{ "stage_passed", "step 3/3" },
	};
	static const char *const want[] = { "rollout.promoted", "rollout.halted", "rollout.rolled_back",
					    "rollout.completed" };
	struct otacd_config c;
	struct notify *n = NULL;
	struct store *db = NULL;
	struct engine *e = NULL;
	struct engine_config ec = { 0 };
	char *dir = h_tmpdir(), *path = xasprintf("%s/otacd.db", dir);
	char *file = write_file(dir, "c.yml", "notifications:\n  targets:\n"
					      "    - { name: chat, kind: slack, url: \"http://127.0.0.1:9/x\", events: [\"rollout.*\"] }\n");
	struct db_stmt *st;
	int i = 0;

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_load(&c, file), 0);
	assert_int_equal(notify_open(&n, &c), 0);
	notify_set_current(n);
	assert_int_equal(store_open(&db, path), 0);
	assert_int_equal(sqlite3_exec(db_sqlite_handle(store_conn(db)),
				      "PRAGMA foreign_keys=OFF;"
				      "INSERT INTO releases(id, run_id, product, version, branch, security_counter, key_id, created_at)"
				      " VALUES (1, 7, 'fw', '1.2.0', 'main', 1, 'test', 0);"
				      "INSERT INTO rollouts(id, job_id, run_id, release_id, stage, kind, spec, state, step, percent_bp,"
				      " created_at) VALUES (1, 1, 7, 1, 'canary', 'rollout', '{}', 'holding', 1, 500, 0);"
				      "PRAGMA foreign_keys=ON;", NULL, NULL, NULL), SQLITE_OK);
	ec.lease_ms = 30000;
	ec.heartbeat_ms = 1000;
	ec.default_timeout_ms = 60000;
	ec.secrets = c.secrets;
	ec.config = &c;
	assert_int_equal(engine_start(&e, db, &ec), 0);
	for (size_t k = 0; k < OTA_ARRAY_SIZE(calls); k++)
		assert_int_equal(engine_call(e, audit_on_engine, (void *)&calls[k]), 0);
	assert_true(engine_call(e, audit_then_fail, NULL) < 0);
	engine_stop(e);

	st = store_q(db, "SELECT event, target, payload, state FROM outbox ORDER BY id");
	while (db_step(st) == 1) {
		json_t *p = json_loads(db_column_text(st, 2), 0, NULL), *ro = json_object_get(p, "rollout");
		assert_true(i < 4);
		assert_string_equal(db_column_text(st, 0), want[i]);
		assert_string_equal(db_column_text(st, 1), "hook:chat");
		assert_string_equal(db_column_text(st, 3), "pending");
		assert_string_equal(json_string_value(json_object_get(p, "event")), want[i]);
		assert_string_equal(json_string_value(json_object_get(ro, "product")), "fw");
		assert_string_equal(json_string_value(json_object_get(ro, "version")), "1.2.0");
		assert_string_equal(json_string_value(json_object_get(ro, "stage")), "canary");
		assert_int_equal(json_integer_value(json_object_get(ro, "percent_bp")), 500);
		assert_string_equal(json_string_value(json_object_get(ro, "reason")), calls[i + 1].reason);
		assert_int_equal(strlen(json_string_value(json_object_get(p, "id"))), 32);
		json_decref(p);
		i++;
	}
	db_reset(st);
	assert_int_equal(i, 4);
	store_close(db);
	notify_set_current(NULL);
	notify_free(n);
	config_release(&c);
	free(file);
	free(path);
	rm_dir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(bad_notification_config_is_refused_with_its_key),
		cmocka_unit_test(a_pipeline_cannot_name_a_notification_destination),
		cmocka_unit_test(rollout_decisions_queue_their_events_in_the_same_transaction),
		cmocka_unit_test(commit_statuses_follow_each_forges_documented_request),
		cmocka_unit_test(webhook_retries_with_backoff_under_one_signed_delivery),
		cmocka_unit_test(undelivered_rows_survive_sigkill_and_go_out_once_after_restart),
		cmocka_unit_test(rows_older_than_max_age_are_given_up_and_recorded),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("notify", tests, NULL, NULL);
}
