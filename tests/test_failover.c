/*
 * test_failover.c - several otacd instances on one PostgreSQL database
 * (issue 16, docs/scale.md): one leads, the others follow, and a leader
 * that dies or is cut off hands over to one of them.
 *
 * A real PostgreSQL cluster (tests/pgcluster.c), three real otacd
 * processes with state directories of their own on one otacd database and
 * one fleet database, each with a local agent, spoken to over HTTP on
 * loopback.  The first is started alone and leads; the two others start
 * as followers, which forward writes to the leader.  A leader that loses its lead, by a poll or by the fence
 * inside a transaction, exits with 75 (EX_TEMPFAIL) and stores nothing
 * more.  Takeover times are printed, never asserted (a 2-core
 * machine shared with other builds); every wait has a generous cap.
 *
 * Without PostgreSQL's binaries every case is skipped, saying so.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../orchestrator/db/db.h"
#include "harness.h"
#include "pgcluster.h"

#define N 3
#define CAP_MS 30000 /* a takeover's cap: poll 1 s, a loaded machine */

struct world {
	struct pgcluster pg;
	char *otacd_db, *fleet_db;
	struct daemon d[N];
};

static const char *const args[] = { "--local-agents", "1", NULL };

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 0, or 1 to skip when PostgreSQL's binaries are missing.  d[0] is started
 * first and leads; the others follow with its admin token (the database's:
 * written to the state directory of the instance that made it). */
static int world_start(struct world *w)
{
	char *secrets, *yaml;

	memset(w, 0, sizeof(*w));
	if (h_pg_start_dbs(&w->pg, &w->otacd_db, &w->fleet_db) > 0)
		return 1;
	secrets = h_fleet_secrets_yaml(w->pg.dir);
	yaml = xasprintf("lease: 3s\nleader_poll: 1s\n%s", secrets);
	h_pg_instances(w->d, N, w->otacd_db, w->fleet_db, yaml, args);
	free(yaml);
	free(secrets);
	return 0;
}

static void world_stop(struct world *w)
{
	for (int i = 0; i < N; i++)
		h_cleanup(&w->d[i]);
	pgcluster_stop(&w->pg);
	free(w->otacd_db);
	free(w->fleet_db);
}

/* The one instance of those alive that leads, once exactly one does
 * (-1 when none did within cap_ms). */
static int wait_leader(struct world *w, int cap_ms)
{
	int64_t end = now_ms() + cap_ms;
	do {
		int n = 0, who = -1;
		for (int i = 0; i < N; i++)
			if (w->d[i].pid > 0 && h_leads(&w->d[i]))
				n++, who = i;
		if (n == 1)
			return who;
		assert_true(n <= 1); /* never two */
		h_msleep(20);
	} while (now_ms() < end);
	return -1;
}

/* A run's pipeline, named. */
static char *pipeline(const char *name, const char *cmd)
{
	return xasprintf("name: %s\nstages:\n  - { name: a, steps: [ { run: '%s' } ] }\n", name, cmd);
}

/* POST /api/v1/runs through d with the admin token and key as its
 * Idempotency-Key (none: NULL): the whole answer, headers too (curl -i). */
static char *trigger_keyed(struct daemon *d, const char *name, const char *key)
{
	struct buf out = BUF_INIT;
	h_sh(&out, "curl -s -i -X POST -H 'Authorization: Bearer %s' -H 'Content-Type: application/json'"
		   " %s%s%s --data '{\"pipeline\": \"name: %s\\nstages:\\n  - { name: a, steps: [ { run: echo %s } ] }\\n\"}'"
		   " '%s/api/v1/runs'",
	     d->token, key ? "-H 'Idempotency-Key: " : "", key ? key : "", key ? "'" : "", name, name, d->url);
	return buf_detach(&out);
}

/* The run id in an answer of trigger_keyed (0: none). */
static int64_t answer_id(const char *ans)
{
	const char *body = strstr(ans, "\r\n\r\n"), *id = body ? strstr(body, "\"id\":") : NULL;
	return id ? strtoll(id + 5, NULL, 10) : 0;
}

/* The runs of that name in the database (through d's SQL). */
static int64_t runs_named(struct daemon *d, const char *name)
{
	char *sql = xasprintf("SELECT COUNT(*) FROM runs WHERE pipeline = '%s'", name);
	int64_t n = h_sql_int(d, sql);
	free(sql);
	return n;
}

/* A write through the follower d is forwarded to the leader, which runs it
 * once (the run is there for everyone, once, and passes). */
static void assert_forwards(struct daemon *d, struct daemon *leader, const char *name)
{
	char *ans = trigger_keyed(d, name, NULL);
	int64_t id = answer_id(ans);
	if (!strstr(ans, " 201") || id <= 0)
		fail_msg("a follower's answer to a write:\n%s\n(the leader is %s)", ans, leader->url);
	free(ans);
	assert_int_equal(runs_named(leader, name), 1);
	assert_string_equal(h_wait_run(leader, id, 120000), "passed");
}

/* The runs of d's list: "id state;" each. */
static char *run_list(struct daemon *d)
{
	json_t *r = NULL, *run;
	struct buf b = BUF_INIT;
	size_t i;
	assert_int_equal(h_get(d, "/api/v1/runs", &r), 200);
	json_array_foreach(json_object_get(r, "runs"), i, run)
		buf_printf(&b, "%lld %s;", (long long)json_integer_value(json_object_get(run, "id")),
			   json_string_value(json_object_get(run, "state")));
	json_decref(r);
	return buf_detach(&b);
}

static void three_instances_one_leads_followers_forward_writes_and_serve_reads(void **state)
{
	struct world w;
	json_t *r = NULL;
	struct buf body = BUF_INIT;
	int64_t run;
	long st;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	assert_int_equal(wait_leader(&w, CAP_MS), 0);
	run = h_trigger(&w.d[0], "name: one\nstages:\n  - { name: a, steps: [ { run: 'echo one' } ] }\n");
	assert_string_equal(h_wait_run(&w.d[0], run, 120000), "passed");

	for (int i = 1; i < N; i++) {
		char *mine = NULL, *theirs = NULL, *name = xasprintf("via-%d", i), *yaml, path[96], want[64];
		int64_t seen = 0, runs, slow, fresh;
		/* alive, not ready, saying why and who leads */
		assert_int_equal(h_get(&w.d[i], "/healthz", NULL), 200);
		assert_int_equal(h_raw(&w.d[i], "GET", "/readyz", NULL, NULL, NULL, 0, &body), 503);
		assert_non_null(strstr(buf_cstr(&body), "follower"));
		assert_non_null(strstr(buf_cstr(&body), w.d[0].url));
		/* writes: forwarded after authentication, run once by the leader */
		assert_forwards(&w.d[i], &w.d[0], name);
		slow = h_trigger(&w.d[0], (yaml = pipeline("slow", "sleep 60")));
		free(yaml);
		snprintf(path, sizeof(path), "/api/v1/runs/%lld/cancel", (long long)slow);
		r = json_object();
		assert_int_equal(h_post(&w.d[i], path, r, NULL), 200);
		json_decref(r);
		assert_string_equal(h_wait_run(&w.d[0], slow, 120000), "canceled");
		/* no credentials: 401 here, nothing sent, nothing run */
		runs = h_sql_int(&w.d[0], "SELECT COUNT(*) FROM runs");
		st = h_raw(&w.d[i], "POST", "/api/v1/runs", NULL, "application/json", "{}", 2, &body);
		assert_int_equal(st, 401);
		assert_null(strstr(buf_cstr(&body), w.d[0].url));
		st = h_raw(&w.d[i], "POST", "/api/v1/agent/jobs/request", "not-a-token", "application/json", "{}", 2,
			   &body);
		assert_int_equal(st, 401);
		assert_null(strstr(buf_cstr(&body), w.d[0].url));
		/* a webhook with a bad signature learns nothing either */
		st = h_raw(&w.d[i], "POST", "/hooks/github", NULL, "application/json", "{}", 2, &body);
		assert_int_equal(st, 401);
		assert_null(strstr(buf_cstr(&body), w.d[0].url));
		assert_int_equal(h_sql_int(&w.d[0], "SELECT COUNT(*) FROM runs"), runs);
		/* the device API's writes go to the leader's device API, which
		 * refuses a bad credential (test_fleetha.c: the rest) */
		st = h_dev_post(&w.d[i], "/device/v1/checkin", "no-such-device-token",
				json_pack("{ss ss}", "device", "d1", "version", "1.0.0"), NULL);
		assert_int_equal(st, 401);
		/* reads, from the follower's answer cache: a run the leader
		 * commits shows in the follower's list once commitwatch heard it */
		free(run_list(&w.d[i])); /* kept */
		fresh = h_trigger(&w.d[0], (yaml = pipeline("fresh", "echo fresh")));
		free(yaml);
		assert_string_equal(h_wait_run(&w.d[0], fresh, 120000), "passed");
		for (int k = 0; k < 1500 && !seen; k++) {
			json_t *fr = NULL;
			free(mine);
			mine = run_list(&w.d[i]);
			snprintf(path, sizeof(path), "/api/v1/runs/%lld", (long long)fresh);
			snprintf(want, sizeof(want), "%lld passed;", (long long)fresh);
			if (h_get(&w.d[i], path, &fr) == 200 && json_is_string(json_object_get(fr, "state")) &&
			    !strcmp(json_string_value(json_object_get(fr, "state")), "passed") && strstr(mine, want))
				seen = 1;
			json_decref(fr);
			if (!seen)
				h_msleep(20);
		}
		assert_true(seen);
		theirs = run_list(&w.d[0]);
		assert_string_equal(mine, theirs);
		free(mine);
		free(theirs);
		r = h_run(&w.d[i], run);
		assert_string_equal(json_string_value(json_object_get(r, "state")), "passed");
		json_decref(r);
		free(name);
	}
	/* an Idempotency-Key's retry through another follower is answered
	 * once, from the leader's record */
	{
		char *first = trigger_keyed(&w.d[1], "keyed", "failover-key-1");
		char *again = trigger_keyed(&w.d[2], "keyed", "failover-key-1");
		if (!strstr(first, " 201") || !strstr(again, " 201") || !strcasestr(again, "Idempotent-Replayed: true") ||
		    answer_id(first) <= 0 || answer_id(first) != answer_id(again))
			fail_msg("a keyed write and its retry through two followers:\n%s\n---\n%s", first, again);
		assert_int_equal(runs_named(&w.d[0], "keyed"), 1);
		free(first);
		free(again);
	}
	/* one epoch, held by the first */
	{
		char *holder = h_sql_text(&w.d[0], "SELECT holder FROM otacd_leader");
		assert_string_equal(holder, w.d[0].url);
		free(holder);
		assert_int_equal(h_sql_int(&w.d[0], "SELECT epoch FROM otacd_leader"), 1);
	}
	buf_release(&body);
	world_stop(&w);
}

static void sigkill_leader_mid_run_another_leads_and_the_run_passes_once(void **state)
{
	struct world w;
	int64_t run, t0, took, keyed = 0;
	int next, other, refused = 0;
	char *sql;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	run = h_trigger(&w.d[0], "name: long\nstages:\n"
				 "  - { name: build, steps: [ { run: 'sleep 4; echo built' } ] }\n"
				 "  - { name: test, needs: [build], steps: [ { run: 'echo tested' } ] }\n");
	sql = xasprintf("SELECT COUNT(*) FROM jobs WHERE run_id = %lld AND state = 'running'", (long long)run);
	for (int i = 0; i < 3000 && h_sql_int(&w.d[0], sql) == 0; i++)
		h_msleep(20);
	free(sql);

	t0 = now_ms();
	h_kill(&w.d[0], SIGKILL);
	/* a write through a follower meanwhile: 503 with Retry-After while
	 * nobody leads (the dead leader's address refuses the hop), then
	 * forwarded to the new leader; retried with one key, run once */
	for (int64_t end = now_ms() + 2 * CAP_MS; !keyed && now_ms() < end;) {
		char *ans = trigger_keyed(&w.d[1], "during", "failover-key-2");
		if (strstr(ans, " 201"))
			keyed = answer_id(ans);
		else if (strstr(ans, " 503") && strcasestr(ans, "Retry-After: 1"))
			refused++, h_msleep(200);
		else
			fail_msg("a write through a follower while the leader died:\n%s", ans);
		free(ans);
	}
	assert_true(keyed > 0);
	print_message("a write through a follower after the leader's SIGKILL: %d times 503, then forwarded\n", refused);
	next = wait_leader(&w, CAP_MS);
	took = now_ms() - t0;
	assert_true(next > 0);
	print_message("takeover after the leader's SIGKILL: %lld ms (leader_poll 1 s)\n", (long long)took);
	other = next == 1 ? 2 : 1;

	assert_string_equal(h_wait_run(&w.d[next], run, 180000), "passed");
	assert_string_equal(h_wait_run(&w.d[next], keyed, 120000), "passed");
	{
		char *again = trigger_keyed(&w.d[other], "during", "failover-key-2");
		if (!strcasestr(again, "Idempotent-Replayed: true") || answer_id(again) != keyed)
			fail_msg("the keyed write's retry after the takeover:\n%s", again);
		free(again);
	}
	assert_int_equal(runs_named(&w.d[next], "during"), 1);
	/* once: the two runs, every job passed, each job final once, no audit line twice */
	assert_int_equal(h_sql_int(&w.d[next], "SELECT COUNT(*) FROM runs"), 2);
	assert_int_equal(h_sql_int(&w.d[next], "SELECT COUNT(*) FROM jobs WHERE state <> 'passed'"), 0);
	assert_int_equal(h_sql_int(&w.d[next], "SELECT COUNT(*) FROM events WHERE kind = 'job.final'"),
			 h_sql_int(&w.d[next], "SELECT COUNT(*) FROM jobs"));
	assert_int_equal(h_sql_int(&w.d[next], "SELECT COUNT(*) FROM (SELECT job_id FROM events WHERE kind = 'job.final'"
					       " GROUP BY job_id HAVING COUNT(*) > 1) x"), 0);
	assert_int_equal(h_sql_int(&w.d[next], "SELECT COUNT(*) FROM (SELECT action, reason, detail FROM audit"
					       " GROUP BY action, reason, detail HAVING COUNT(*) > 1) x"), 0);
	/* the new leader leads under the next epoch, and the last follower says so */
	assert_int_equal(h_sql_int(&w.d[next], "SELECT epoch FROM otacd_leader"), 2);
	assert_forwards(&w.d[other], &w.d[next], "after-takeover");
	/* and takes new work */
	run = h_trigger(&w.d[next], "name: after\nstages:\n  - { name: a, steps: [ { run: 'echo after' } ] }\n");
	assert_string_equal(h_wait_run(&w.d[next], run, 120000), "passed");
	world_stop(&w);
}

static void a_cut_off_leader_exits_75_and_another_leads(void **state)
{
	struct world w;
	int status = 0, next;
	pid_t pid;
	int64_t t0;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	/* end the leader's leadership session behind its back */
	t0 = now_ms();
	assert_int_equal(h_sql_int(&w.d[0], "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_locks"
					    " WHERE locktype = 'advisory' AND granted AND classid = 1869898060"),
			 1);
	pid = w.d[0].pid;
	for (int i = 0; i < CAP_MS / 20 && waitpid(pid, &status, WNOHANG) == 0; i++)
		h_msleep(20);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 75);
	w.d[0].pid = 0;
	next = wait_leader(&w, CAP_MS);
	assert_true(next > 0);
	print_message("takeover after the leader's session was ended: %lld ms\n", (long long)(now_ms() - t0));
	assert_int_equal(h_sql_int(&w.d[next], "SELECT epoch FROM otacd_leader"), 2);
	/* restarted as systemd would, it comes back as a follower */
	w.d[0].follower_ok = 1;
	assert_int_equal(h_start(&w.d[0], args), 0);
	h_msleep(1500); /* a poll or more */
	assert_false(h_leads(&w.d[0]));
	assert_forwards(&w.d[0], &w.d[next], "via-restarted");
	world_stop(&w);
}

static void a_leader_whose_epoch_moved_stores_nothing_more_and_exits_75(void **state)
{
	struct world w;
	struct buf body = BUF_INIT;
	const char *fenced = "{\"pipeline\": \"name: fenced\\nstages:\\n  - { name: a, steps: [ { run: 'true' } ] }\\n\"}";
	int status = 0, next;
	pid_t pid;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	/* another instance's takeover as the database sees it, while the
	 * leader still holds its lock and has not polled */
	{
		struct db *db = NULL;
		assert_int_equal(db_open(&db, w.otacd_db, 0), 0);
		/* under the writers' lock, as db_leader.c's bump (db_pg.c's key) */
		assert_int_equal(db_exec(db, "BEGIN; SELECT pg_advisory_xact_lock(478560101220);"
					     " UPDATE otacd_leader SET epoch = epoch + 1; COMMIT;"), 0);
		db_close(db);
	}
	assert_int_equal(h_sql_int(&w.d[0], "SELECT epoch FROM otacd_leader"), 2);
	h_raw(&w.d[0], "POST", "/api/v1/runs", w.d[0].token, "application/json", fenced, strlen(fenced), &body);
	pid = w.d[0].pid;
	for (int i = 0; i < CAP_MS / 20 && waitpid(pid, &status, WNOHANG) == 0; i++)
		h_msleep(20);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 75);
	w.d[0].pid = 0;
	assert_int_equal(h_sql_int(&w.d[1], "SELECT COUNT(*) FROM runs"), 0);
	next = wait_leader(&w, CAP_MS);
	assert_true(next > 0);
	assert_int_equal(h_sql_int(&w.d[next], "SELECT epoch FROM otacd_leader"), 3);
	assert_int_equal(h_sql_int(&w.d[next], "SELECT COUNT(*) FROM runs"), 0);
	buf_release(&body);
	world_stop(&w);
}

static void sigkill_a_follower_changes_nothing_for_the_leader(void **state)
{
	struct world w;
	int64_t run;

	(void)state;
	if (world_start(&w) > 0)
		skip();
	h_kill(&w.d[1], SIGKILL);
	h_msleep(2000); /* two polls of the others */
	assert_int_equal(wait_leader(&w, CAP_MS), 0);
	run = h_trigger(&w.d[0], "name: still\nstages:\n  - { name: a, steps: [ { run: 'echo still' } ] }\n");
	assert_string_equal(h_wait_run(&w.d[0], run, 120000), "passed");
	assert_int_equal(h_sql_int(&w.d[0], "SELECT epoch FROM otacd_leader"), 1);
	assert_forwards(&w.d[2], &w.d[0], "via-survivor");
	world_stop(&w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(three_instances_one_leads_followers_forward_writes_and_serve_reads),
		cmocka_unit_test(sigkill_leader_mid_run_another_leads_and_the_run_passes_once),
		cmocka_unit_test(a_cut_off_leader_exits_75_and_another_leads),
		cmocka_unit_test(a_leader_whose_epoch_moved_stores_nothing_more_and_exits_75),
		cmocka_unit_test(sigkill_a_follower_changes_nothing_for_the_leader),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
