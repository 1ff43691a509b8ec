/*
 * test_api.c - the HTTP API's handling of bad input and the agent
 * protocol's guarantees, spoken over real HTTP to a real otacd (no local
 * agents: the test plays the agent itself, so it controls every request).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "harness.h"

#define VIEWER_TOKEN "viewer-token-0123456789abcdef"
#define OPERATOR_TOKEN "operator-token-0123456789abcdef"

static const char *const no_agents[] = { "--local-agents", "0", NULL };

static const char *const simple_pipeline =
	"name: p\nstages:\n  - { name: one, steps: [ { run: 'echo hi' } ] }\n";

static int setup(void **state)
{
	struct daemon *d = xcalloc(1, sizeof(*d));
	h_init(d, "lease: 2s\n"
		  "tokens:\n"
		  "  - { name: viewer, role: viewer, token: " VIEWER_TOKEN " }\n"
		  "  - { name: ci, role: operator, token: " OPERATOR_TOKEN " }\n");
	h_start(d, no_agents);
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct daemon *d = *state;
	h_cleanup(d);
	free(d);
	return 0;
}

static int64_t count_runs(struct daemon *d)
{
	return h_sql_int(d, "SELECT COUNT(*) FROM runs");
}

static void state_changing_calls_need_a_token(void **state)
{
	struct daemon *d = *state;
	const char *body = "{\"pipeline\":\"name: p\\nstages: [ { name: a, steps: [ { run: 'true' } ] } ]\\n\"}";
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", NULL, "application/json", body, strlen(body), NULL), 401);
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", "wrong-token-000000000000", "application/json", body,
			     strlen(body), NULL), 401);
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", VIEWER_TOKEN, "application/json", body, strlen(body), NULL), 403);
	assert_int_equal(count_runs(d), 0);
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", OPERATOR_TOKEN, "application/json", body, strlen(body), NULL), 201);
	assert_int_equal(count_runs(d), 1);
}

static void reads_need_a_viewer_token_by_default(void **state)
{
	struct daemon *d = *state;
	assert_int_equal(h_raw(d, "GET", "/api/v1/runs", NULL, NULL, NULL, 0, NULL), 401);
	assert_int_equal(h_raw(d, "GET", "/api/v1/runs", VIEWER_TOKEN, NULL, NULL, 0, NULL), 200);
	assert_int_equal(h_raw(d, "GET", "/api/v1/health", NULL, NULL, NULL, 0, NULL), 200);
}

static void agent_protocol_refuses_non_agent_tokens(void **state)
{
	struct daemon *d = *state;
	const char *body = "{\"name\":\"x\",\"labels\":[]}";
	assert_int_equal(h_raw(d, "POST", "/api/v1/agent/register", OPERATOR_TOKEN, "application/json", body,
			     strlen(body), NULL), 403);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM agents"), 0);
}

/*
 * otacd answers 413 from the headers, before reading the body, and closes.
 * A client that sends the body at once (httpc turns Expect off) races that
 * close: the unread bytes make the kernel reset the connection, which can
 * reach the client before the answer (seen once under ASan in CI).  So the
 * big body goes with `Expect: 100-continue` (curl(1), waiting 60 s for
 * the go-ahead): otacd answers 413 instead of 100 and no byte of the body
 * is sent.
 */
static void oversized_body_gets_413_and_stores_nothing(void **state)
{
	struct daemon *d = *state;
	size_t n = (1 << 20) + 100;
	char *big = xmalloc(n), *path = xasprintf("%s/big.json", d->dir);
	struct buf out = BUF_INIT;

	memset(big, ' ', n);
	big[0] = '{';
	big[n - 1] = '}';
	assert_int_equal(ota_write_file_atomic(path, big, n, 0600), 0);
	assert_int_equal(h_sh(&out, "curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s'"
				    " -H 'Content-Type: application/json' -H 'Expect: 100-continue' --expect100-timeout 60"
				    " --data-binary @%s %s/api/v1/runs", d->token, path, d->url),
			 0);
	assert_string_equal(buf_cstr(&out), "413");
	assert_int_equal(count_runs(d), 0);
	buf_release(&out);
	free(path);
	free(big);
}

static void unknown_routes_and_methods_are_404_and_405(void **state)
{
	struct daemon *d = *state;
	assert_int_equal(h_raw(d, "GET", "/api/v1/nope", d->token, NULL, NULL, 0, NULL), 404);
	assert_int_equal(h_raw(d, "GET", "/api/v1/runs/abc", d->token, NULL, NULL, 0, NULL), 404);
	assert_int_equal(h_raw(d, "GET", "/api/v1/runs/999", d->token, NULL, NULL, 0, NULL), 404);
	assert_int_equal(h_raw(d, "DELETE", "/api/v1/runs", d->token, NULL, NULL, 0, NULL), 405);
}

static void invalid_json_gets_400_with_the_position(void **state)
{
	struct daemon *d = *state;
	struct buf body = BUF_INIT;
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", d->token, "application/json", "{\"pipeline\": ", 13, &body), 400);
	assert_non_null(strstr(buf_cstr(&body), "invalid JSON"));
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", d->token, "application/json", "[1]", 3, &body), 400);
	assert_int_equal(h_raw(d, "POST", "/api/v1/runs", d->token, "application/json", "{\"pipeline\": 5}", 15, &body), 400);
	assert_int_equal(count_runs(d), 0);
	buf_release(&body);
}

static void invalid_pipeline_gets_422_with_file_line_column(void **state)
{
	struct daemon *d = *state;
	json_t *req = json_pack("{ss ss}", "pipeline", "name: p\nstages:\n  - name: a\n    stpes: []\n", "file", "ci.yml");
	json_t *ans = NULL;
	char *errors;
	assert_int_equal(h_post(d, "/api/v1/runs", req, &ans), 422);
	errors = json_dumps(json_object_get(ans, "errors"), 0);
	assert_non_null(strstr(errors, "ci.yml:4:5"));
	assert_non_null(strstr(errors, "steps"));
	assert_int_equal(count_runs(d), 0);
	free(errors);
	json_decref(ans);
	json_decref(req);
}

static const char *jtok(json_t *job)
{
	return json_string_value(json_object_get(job, "job_token"));
}

static void log_chunks_resume_without_loss_or_duplication(void **state)
{
	struct daemon *d = *state;
	int64_t agent, run = h_trigger(d, simple_pipeline);
	json_t *job = h_take_job(d, "tester", "test", &agent);
	int64_t id = json_integer_value(json_object_get(job, "job_id"));
	struct buf body = BUF_INIT;
	char *path;

	(void)run;
	path = xasprintf("/api/v1/agent/jobs/%lld/log?attempt=1&offset=0", (long long)id);
	assert_int_equal(h_raw(d, "PUT", path, jtok(job), "application/octet-stream", "hello ", 6, &body), 200);
	free(path);
	/* a chunk that starts past the end: 416 with the size to resume from */
	path = xasprintf("/api/v1/agent/jobs/%lld/log?attempt=1&offset=20", (long long)id);
	assert_int_equal(h_raw(d, "PUT", path, jtok(job), "application/octet-stream", "lost", 4, &body), 416);
	assert_non_null(strstr(buf_cstr(&body), "\"size\":6"));
	free(path);
	/* a resend overlapping what arrived: only the new part is appended */
	path = xasprintf("/api/v1/agent/jobs/%lld/log?attempt=1&offset=0", (long long)id);
	assert_int_equal(h_raw(d, "PUT", path, jtok(job), "application/octet-stream", "hello world\n", 12, &body), 200);
	free(path);
	path = xasprintf("/api/v1/jobs/%lld/log", (long long)id);
	assert_int_equal(h_raw(d, "GET", path, d->token, NULL, NULL, 0, &body), 200);
	assert_string_equal(buf_cstr(&body), "hello world\n");
	free(path);
	buf_release(&body);
	json_decref(job);
}

static void finish_is_recorded_exactly_once(void **state)
{
	struct daemon *d = *state;
	int64_t agent, run = h_trigger(d, simple_pipeline);
	json_t *job = h_take_job(d, "tester", "test", &agent), *ans = NULL, *req;
	int64_t id = json_integer_value(json_object_get(job, "job_id"));
	char *path = xasprintf("/api/v1/agent/jobs/%lld/finish", (long long)id);

	(void)agent;
	/* a report naming another attempt than its job token's is refused */
	req = json_pack("{si si}", "attempt", 7, "exit_code", 1);
	assert_int_equal(h_call_as(d, jtok(job), "POST", path, req, NULL), 409);
	json_decref(req);
	req = json_pack("{si si sn}", "attempt", 1, "exit_code", 0, "failure");
	assert_int_equal(h_call_as(d, jtok(job), "POST", path, req, &ans), 200);
	assert_string_equal(json_string_value(json_object_get(ans, "state")), "passed");
	json_decref(ans);
	/* the same report again changes nothing: the attempt is over (409,
	 * which the agent takes as "recorded") */
	assert_int_equal(h_call_as(d, jtok(job), "POST", path, req, &ans), 409);
	json_decref(ans);
	json_decref(req);
	assert_string_equal(h_wait_run(d, run, 5000), "passed");
	{
		char *sql = xasprintf("SELECT COUNT(*) FROM events WHERE job_id = %lld AND kind = 'job.final'", (long long)id);
		assert_int_equal(h_sql_int(d, sql), 1);
		free(sql);
	}
	free(path);
	json_decref(job);
}

static void expired_lease_requeues_the_job_and_refuses_the_old_attempt(void **state)
{
	struct daemon *d = *state;
	int64_t agent, run = h_trigger(d, simple_pipeline);
	json_t *job = h_take_job(d, "tester", "test", &agent), *req, *ans = NULL;
	int64_t id = json_integer_value(json_object_get(job, "job_id"));
	char *hb = xasprintf("/api/v1/agent/jobs/%lld/heartbeat", (long long)id);
	char *jobpath = xasprintf("/api/v1/jobs/%lld", (long long)id);

	(void)run;
	h_msleep(3000); /* lease is 2 s: no heartbeat, the agent is lost */
	assert_int_equal(h_get(d, jobpath, &ans), 200);
	assert_string_equal(json_string_value(json_object_get(ans, "state")), "queued");
	assert_string_equal(json_string_value(json_object_get(ans, "failure")), "infra");
	json_decref(ans);
	(void)agent;
	req = json_pack("{si}", "attempt", 1);
	assert_int_equal(h_call_as(d, jtok(job), "POST", hb, req, NULL), 409);
	json_decref(req);
	free(hb);
	free(jobpath);
	json_decref(job);
}

static void artifact_with_wrong_digest_is_refused_and_not_stored(void **state)
{
	struct daemon *d = *state;
	int64_t agent, run = h_trigger(d, simple_pipeline);
	json_t *job = h_take_job(d, "tester", "test", &agent);
	int64_t id = json_integer_value(json_object_get(job, "job_id"));
	const char *sha_of_hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
	char *path;
	struct buf out = BUF_INIT;

	(void)run;
	path = xasprintf("/api/v1/agent/jobs/%lld/artifacts?attempt=1&name=app.bin&sha256=%s", (long long)id,
			 sha_of_hello);
	assert_int_equal(h_raw(d, "PUT", path, jtok(job), "application/octet-stream", "hellO", 5, NULL), 400);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts"), 0);
	assert_int_equal(h_sh(&out, "find '%s/state/artifacts' -type f | wc -l", d->dir), 0);
	assert_int_equal(atoi(buf_cstr(&out)), 0);
	assert_int_equal(h_raw(d, "PUT", path, jtok(job), "application/octet-stream", "hello", 5, NULL), 201);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts"), 1);
	free(path);
	path = xasprintf("/api/v1/agent/jobs/%lld/artifacts?attempt=1&name=../../etc/passwd&sha256=%s", (long long)id,
			 sha_of_hello);
	assert_int_equal(h_raw(d, "PUT", path, jtok(job), "application/octet-stream", "hello", 5, NULL), 400);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts"), 1);
	free(path);
	buf_release(&out);
	json_decref(job);
}

static void lint_reports_every_problem(void **state)
{
	struct daemon *d = *state;
	struct buf body = BUF_INIT;
	const char *yaml = "name: p\nstages:\n  - { name: a, kind: biuld, steps: [ { run: x } ] }\n"
			   "  - { name: b, needs: [zz], steps: [ { run: x } ] }\n";
	assert_int_equal(h_raw(d, "POST", "/api/v1/lint?file=p.yml", d->token, "application/yaml", yaml, strlen(yaml), &body), 200);
	assert_non_null(strstr(buf_cstr(&body), "\"ok\":false"));
	assert_non_null(strstr(buf_cstr(&body), "p.yml:3:"));
	assert_non_null(strstr(buf_cstr(&body), "p.yml:4:"));
	buf_release(&body);
}

static void event_stream_replays_from_an_id_and_follows_live(void **state)
{
	struct daemon *d = *state;
	struct buf out = BUF_INIT;
	char *file = xasprintf("%s/events.txt", d->dir);
	char *text;
	(void)text;
	h_trigger(d, simple_pipeline);
	/* follow from the start for 2 s while a second run is created */
	h_sh(&out, "(timeout 2 curl -sN '%s/api/v1/events?after=0&access_token=%s' > %s &) ; sleep 0.5", d->url, d->token, file);
	h_trigger(d, simple_pipeline);
	h_msleep(2000);
	buf_release(&out);
	assert_int_equal(ota_read_file(&out, file, 1 << 20), 0);
	text = buf_detach(&out);
	assert_non_null(strstr(text, "event: run.created\ndata: {\"id\":1,"));
	assert_non_null(strstr(text, "\"run_id\":2"));   /* live: the run created while following */
	free(text);
	/* resuming after an id skips what came before */
	h_sh(&out, "timeout 1 curl -sN -H 'Last-Event-ID: 1' '%s/api/v1/events?access_token=%s'", d->url, d->token);
	assert_null(strstr(buf_cstr(&out), "id: 1\n"));
	assert_non_null(strstr(buf_cstr(&out), "id: 2\n"));
	free(file);
	buf_release(&out);
}

static void run_pages_end_where_the_runs_end(void **state)
{
	struct daemon *d = *state;
	json_t *ans = NULL;
	int64_t ids[3];
	char *path;
	for (int i = 0; i < 3; i++)
		ids[i] = h_trigger(d, simple_pipeline);
	assert_int_equal(h_get(d, "/api/v1/runs?limit=2", &ans), 200);
	assert_int_equal(json_array_size(json_object_get(ans, "runs")), 2);
	assert_int_equal(json_integer_value(json_object_get(ans, "next_before")), ids[1]);
	json_decref(ans);
	path = xasprintf("/api/v1/runs?limit=2&before=%lld", (long long)ids[1]);
	assert_int_equal(h_get(d, path, &ans), 200);
	assert_int_equal(json_array_size(json_object_get(ans, "runs")), 1);
	assert_true(json_is_null(json_object_get(ans, "next_before")));
	json_decref(ans);
	assert_int_equal(h_get(d, "/api/v1/runs?limit=3", &ans), 200);
	assert_true(json_is_null(json_object_get(ans, "next_before")));
	json_decref(ans);
	free(path);
}

static void query_token_is_accepted_for_reads_only(void **state)
{
	struct daemon *d = *state;
	char *path = xasprintf("/api/v1/runs?access_token=%s", d->token);
	assert_int_equal(h_raw(d, "GET", path, NULL, NULL, NULL, 0, NULL), 200);
	assert_int_equal(h_raw(d, "POST", path, NULL, "application/json", "{}", 2, NULL), 401);
	assert_int_equal(h_raw(d, "GET", "/api/v1/runs?access_token=nope-nope-nope-nope", NULL, NULL, NULL, 0, NULL), 401);
	free(path);
}

/* Readers hammering the cached list routes while runs are created. */
/* Shared with the reader threads, on the heap and with its own copies of
 * the addresses: if the test fails half-way (cmocka leaves by longjmp), the
 * readers go on harmlessly against a stopped daemon instead of reading a
 * dead stack frame. */
struct hammer {
	char *runs, *pipes, *token;
	volatile int stop;
	int answers, regressions, errors;
};

static void *hammer_lists(void *arg)
{
	struct hammer *h = arg;
	int64_t newest = 0, counted = 0;

	while (!h->stop) {
		json_t *ans = NULL;
		long status = 0;
		int64_t id, n;
		if (httpc_json(&ans, &status, "GET", h->runs, h->token, NULL, 20000) < 0 || status != 200) {
			h->errors++;
		} else {
			/* what one client sees never goes back in time */
			id = json_integer_value(json_object_get(json_array_get(json_object_get(ans, "runs"), 0), "id"));
			h->regressions += id < newest;
			newest = id;
			h->answers++;
		}
		json_decref(ans);
		ans = NULL;
		if (httpc_json(&ans, &status, "GET", h->pipes, h->token, NULL, 20000) < 0 || status != 200) {
			h->errors++;
		} else {
			n = json_integer_value(json_object_get(json_array_get(ans, 0), "runs"));
			h->regressions += n < counted;
			counted = n;
			h->answers++;
		}
		json_decref(ans);
	}
	return NULL;
}

static void list_answers_change_with_every_commit(void **state)
{
	struct daemon *d = *state;
	struct hammer *h = xcalloc(1, sizeof(*h));
	pthread_t th[6];
	json_t *ans = NULL, *empty = json_object();
	char *path;
	int64_t id = 0;

	h->runs = xasprintf("%s/api/v1/runs?limit=5", d->url);
	h->pipes = xasprintf("%s/api/v1/pipelines", d->url);
	h->token = xstrdup(d->token);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(th); i++)
		pthread_create(&th[i], NULL, hammer_lists, h);
	for (int i = 1; i <= 25; i++) {
		id = h_trigger(d, simple_pipeline);
		/* the answer after the commit has it, though the same URL was
		 * being answered from the cache a moment before */
		assert_int_equal(h_get(d, "/api/v1/runs?limit=5", &ans), 200);
		assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(ans, "runs"), 0), "id")), id);
		json_decref(ans);
		assert_int_equal(h_get(d, "/api/v1/pipelines", &ans), 200);
		assert_int_equal(json_integer_value(json_object_get(json_array_get(ans, 0), "runs")), i);
		json_decref(ans);
	}
	/* a change of state, not only a new row */
	path = xasprintf("/api/v1/runs/%lld/cancel", (long long)id);
	assert_int_equal(h_post(d, path, empty, NULL), 200);
	assert_int_equal(h_get(d, "/api/v1/runs?limit=1", &ans), 200);
	assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(ans, "runs"), 0), "state")),
			    "canceled");
	json_decref(ans);
	h->stop = 1;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(th); i++)
		pthread_join(th[i], NULL);
	print_message("%d answers to 6 readers, %d went back in time, %d failed\n", h->answers, h->regressions,
		      h->errors);
	assert_true(h->answers > 50);
	assert_int_equal(h->regressions, 0);
	assert_int_equal(h->errors, 0);
	json_decref(empty);
	free(path);
	free(h->runs);
	free(h->pipes);
	free(h->token);
	free(h);
}

static void cancel_is_audited_with_who_and_why(void **state)
{
	struct daemon *d = *state;
	int64_t run = h_trigger(d, simple_pipeline);
	char *path = xasprintf("/api/v1/runs/%lld/cancel", (long long)run);
	static const char bad[] = "{\"reason\": 42}", good[] = "{\"reason\": \"pushed to the wrong branch\"}";
	json_t *ans = NULL, *entry;

	/* a reason that is not text: refused, nothing canceled */
	assert_int_equal(h_raw(d, "POST", path, OPERATOR_TOKEN, "application/json", bad, strlen(bad), NULL), 400);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM runs WHERE state = 'canceled'"), 0);
	assert_int_equal(h_raw(d, "POST", path, OPERATOR_TOKEN, "application/json", good, strlen(good), NULL), 200);
	assert_int_equal(h_get(d, "/api/v1/audit", &ans), 200);
	entry = json_array_get(ans, 0);
	assert_string_equal(json_string_value(json_object_get(entry, "action")), "cancel");
	assert_string_equal(json_string_value(json_object_get(entry, "actor")), "ci");
	assert_string_equal(json_string_value(json_object_get(entry, "reason")), "pushed to the wrong branch");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(entry, "detail"), "run")), run);
	assert_true(json_is_null(json_object_get(entry, "release")));
	json_decref(ans);
	/* a second cancel is a conflict and audits nothing */
	assert_int_equal(h_raw(d, "POST", path, OPERATOR_TOKEN, "application/json", good, strlen(good), NULL), 409);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM audit"), 1);
	free(path);
}

/* A long query keeps every argument in the cache key: queries that differ
 * only in their last argument, after kilobytes of others, get their own
 * answers (around 4 and 8 KB, where a capped key would end). */
static void long_queries_are_answered_by_their_own_query(void **state)
{
	static const size_t pads[] = { 4088, 8180, 16000 };
	struct daemon *d = *state;
	json_t *ans = NULL;

	for (int i = 0; i < 3; i++)
		h_trigger(d, simple_pipeline);
	for (size_t p = 0; p < OTA_ARRAY_SIZE(pads); p++) {
		char *pad = xmalloc(pads[p] + 1);
		memset(pad, 'a', pads[p]);
		pad[pads[p]] = '\0';
		for (int limit = 1; limit <= 3; limit++) {
			char *path = xasprintf("/api/v1/runs?pad=%s&limit=%d", pad, limit);
			assert_int_equal(h_get(d, path, &ans), 200);
			assert_int_equal(json_array_size(json_object_get(ans, "runs")), limit);
			json_decref(ans);
			free(path);
		}
		free(pad);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(state_changing_calls_need_a_token, setup, teardown),
		cmocka_unit_test_setup_teardown(reads_need_a_viewer_token_by_default, setup, teardown),
		cmocka_unit_test_setup_teardown(agent_protocol_refuses_non_agent_tokens, setup, teardown),
		cmocka_unit_test_setup_teardown(oversized_body_gets_413_and_stores_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(unknown_routes_and_methods_are_404_and_405, setup, teardown),
		cmocka_unit_test_setup_teardown(invalid_json_gets_400_with_the_position, setup, teardown),
		cmocka_unit_test_setup_teardown(invalid_pipeline_gets_422_with_file_line_column, setup, teardown),
		cmocka_unit_test_setup_teardown(log_chunks_resume_without_loss_or_duplication, setup, teardown),
		cmocka_unit_test_setup_teardown(finish_is_recorded_exactly_once, setup, teardown),
		cmocka_unit_test_setup_teardown(expired_lease_requeues_the_job_and_refuses_the_old_attempt, setup, teardown),
		cmocka_unit_test_setup_teardown(artifact_with_wrong_digest_is_refused_and_not_stored, setup, teardown),
		cmocka_unit_test_setup_teardown(lint_reports_every_problem, setup, teardown),
		cmocka_unit_test_setup_teardown(event_stream_replays_from_an_id_and_follows_live, setup, teardown),
		cmocka_unit_test_setup_teardown(query_token_is_accepted_for_reads_only, setup, teardown),
		cmocka_unit_test_setup_teardown(run_pages_end_where_the_runs_end, setup, teardown),
		cmocka_unit_test_setup_teardown(list_answers_change_with_every_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(cancel_is_audited_with_who_and_why, setup, teardown),
		cmocka_unit_test_setup_teardown(long_queries_are_answered_by_their_own_query, setup, teardown),
	};
	return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
