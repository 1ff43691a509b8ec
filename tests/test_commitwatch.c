/*
 * test_commitwatch.c - a follower hears the leader's commits (issue 16;
 * orchestrator/commitwatch.h, docs/scale.md) on a real PostgreSQL cluster
 * (tests/pgcluster.h).
 *
 * This process plays the follower: its commitwatch thread listens, and
 * what it moves is what readers watch, store_generation() (the API's
 * answer cache) and logstore_changes() (parked live logs and event
 * streams).  The leader is a second connection opened with db_open(),
 * which has no commit hook, so nothing but a notification moves them; its
 * commits are announced as another instance's (commitwatch_announce_from).
 * The engine's own announcement, and this process's log appends', are
 * heard by a bare listener; so are a real otacd's on PostgreSQL, running a
 * pipeline, by this process as another instance.
 *
 * "Nothing arrived" is never a timed wait: a marker committed after the
 * thing that must not arrive is awaited, and the counters then say what
 * was heard (PostgreSQL delivers in commit order).  Latencies are printed,
 * not asserted.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/commitwatch.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/db/db_notify.h"
#include "../orchestrator/engine.h"
#include "../orchestrator/engine_core.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/store.h"
#include "dbconv.h"
#include "harness.h"
#include "pgcluster.h"

#define LATENCY_COMMITS 1000

static int wait_ms(void)
{
	return getenv("OTACD_SLOW") ? 180000 : 60000;
}

static int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A migrated database, and the leader's connection to it. */
static struct db *open_leader(void)
{
	struct db *db;

	store_close(dbconv_open_store(DB_POSTGRES));
	if (db_open(&db, dbconv_pg_url(), 0) < 0)
		fail_msg("open %s: %s", dbconv_pg_url(), ota_error_last());
	return db;
}

/* One leader commit: a meta row, announced as what (rolled back when
 * commit is 0). */
static void leader_tx(struct db *db, const char *value, unsigned what, int commit)
{
	struct db_stmt *st;

	assert_int_equal(db_begin(db), 0);
	st = db_stmt(db, "INSERT INTO meta(key, value) VALUES ('cw', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value");
	db_bind_text(st, 1, value);
	assert_true(db_run(st) >= 0);
	assert_int_equal(commitwatch_announce_from(db, "leader-under-test", what), 0);
	if (commit)
		assert_int_equal(db_commit(db), 0);
	else
		db_rollback(db);
}

static struct commitwatch_stats stats(struct commitwatch *cw)
{
	struct commitwatch_stats s;

	commitwatch_stats(cw, &s);
	return s;
}

/* Wait until the thread has applied more than `applied` bumps. */
static void wait_applied(struct commitwatch *cw, uint64_t applied)
{
	int64_t deadline = mono_us() + (int64_t)wait_ms() * 1000;

	while (stats(cw).applied <= applied) {
		if (mono_us() > deadline)
			fail_msg("the follower heard nothing within %d ms", wait_ms());
		usleep(1000);
	}
}

static char *read_meta(struct db *db)
{
	struct db_stmt *st = db_stmt(db, "SELECT value FROM meta WHERE key = 'cw'");
	char *v = NULL;

	if (db_step(st) == 1)
		v = xstrdup(db_column_text(st, 0));
	db_reset(st);
	return v;
}

/* ---- cases ---------------------------------------------------------------------- */

static void leader_commit_wakes_follower_and_moves_its_generation(void **state)
{
	struct commitwatch *cw;
	struct db *leader, *reader;
	uint64_t gen, lg;
	char *v;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);
	assert_int_equal(db_open(&reader, dbconv_pg_url(), DB_READONLY), 0);
	gen = store_generation();
	lg = notifier_gen(logstore_changes());

	leader_tx(leader, "one", CW_STATE, 1);
	/* a parked live log or event stream sleeps on exactly this */
	assert_int_not_equal(notifier_wait(logstore_changes(), lg, wait_ms()), lg);
	assert_true(store_generation() > gen);
	/* woken after the commit is visible: a reader sees the new row */
	v = read_meta(reader);
	assert_non_null(v);
	assert_string_equal(v, "one");
	free(v);

	commitwatch_stop(cw);
	db_close(reader);
	db_close(leader);
}

/* A commit that changed no run or job state (a lease heartbeat) moves
 * the cache's generation but wakes no live log or event stream. */
static void stateless_commit_moves_generation_only(void **state)
{
	struct commitwatch *cw;
	struct db *leader;
	uint64_t gen, lg, applied;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);
	gen = store_generation();
	lg = notifier_gen(logstore_changes());
	applied = stats(cw).applied;

	leader_tx(leader, "heartbeat", CW_WORK, 1);
	wait_applied(cw, applied);
	assert_true(store_generation() > gen);
	assert_int_equal(notifier_gen(logstore_changes()), lg);

	commitwatch_stop(cw);
	db_close(leader);
}

static void rolled_back_transaction_wakes_nobody(void **state)
{
	struct commitwatch *cw;
	struct db *leader;
	struct commitwatch_stats s0, s1;
	char *v;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);
	s0 = stats(cw);

	leader_tx(leader, "rolled-back", CW_STATE, 0);
	leader_tx(leader, "marker", CW_STATE, 1);
	wait_applied(cw, s0.applied);
	s1 = stats(cw);
	assert_int_equal(s1.heard, s0.heard + 1); /* the marker alone */
	assert_int_equal(s1.applied, s0.applied + 1);
	v = read_meta(leader);
	assert_string_equal(v, "marker");
	free(v);

	commitwatch_stop(cw);
	db_close(leader);
}

/* The instance's own commits were applied by its commit hook already. */
static void own_announcements_are_not_applied_twice(void **state)
{
	struct commitwatch *cw;
	struct db *leader;
	struct commitwatch_stats s0, s1;
	uint64_t gen;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);
	s0 = stats(cw);

	assert_int_equal(db_begin(leader), 0);
	assert_int_equal(commitwatch_announce(leader, CW_STATE), 0);
	assert_int_equal(db_commit(leader), 0);
	gen = store_generation();
	/* wait for it to be heard: the marker comes after it */
	leader_tx(leader, "marker", 0, 1);
	wait_applied(cw, s0.applied); /* the own one, earlier in commit order, is read by now */
	s1 = stats(cw);
	assert_int_equal(s1.own, s0.own + 1);
	assert_int_equal(s1.heard, s0.heard + 2);
	assert_int_equal(s1.applied, s0.applied + 1);
	assert_int_equal(store_generation(), gen + 1); /* the marker's bump alone */

	commitwatch_stop(cw);
	db_close(leader);
}

/* Any database user can NOTIFY on the channel: whatever it sends is at
 * most a reload.  The sender here is a role of its own with no rights. */
static void hostile_notifications_only_reload(void **state)
{
	static const char *const payloads[] = {
		"",
		"not json",
		"{",
		"[1,2,3]",
		"null",
		"{\"v\":2,\"from\":\"x\",\"what\":[\"state\"]}",
		"{\"v\":1,\"what\":[\"state\"]}",
		"{\"v\":1,\"from\":7,\"what\":[\"state\"]}",
		"{\"v\":1,\"from\":\"x\",\"what\":\"state\"}",
		"{\"v\":1,\"from\":\"x\",\"what\":[1,null,{}]}",
		"{\"v\":1,\"from\":\"x\",\"what\":[\"state\"],\"what\":[\"work\"]}",
		"{\"v\":1,\"from\":\"x\",\"what\":[\"'; DROP TABLE meta; --\"]}",
		"{\"v\":1,\"from\":\"x\",\"gen\":-1e999,\"what\":[]}",
		"{\"v\":1,\"from\":\"\\u0000\",\"what\":[\"state\"]}",
	};
	struct commitwatch *cw;
	struct db *leader, *mallory;
	struct db_stmt *st;
	char url[600], *v, *deep = xmalloc(DB_PAYLOAD_MAX + 1);
	const char *at;
	struct commitwatch_stats s0, s1;
	uint64_t lg;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	leader_tx(leader, "kept", 0, 1);
	st = db_stmt(leader, "DROP ROLE IF EXISTS mallory");
	assert_true(db_run(st) >= 0);
	st = db_stmt(leader, "CREATE ROLE mallory LOGIN");
	assert_true(db_run(st) >= 0);
	at = strstr(dbconv_pg_url(), "otacd@");
	assert_non_null(at);
	snprintf(url, sizeof(url), "%.*smallory@%s", (int)(at - dbconv_pg_url()), dbconv_pg_url(),
		 at + strlen("otacd@"));
	assert_int_equal(db_open(&mallory, url, 0), 0);
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);

	memset(deep, '[', DB_PAYLOAD_MAX);
	deep[DB_PAYLOAD_MAX] = '\0';
	s0 = stats(cw);
	for (size_t i = 0; i <= OTA_ARRAY_SIZE(payloads); i++) {
		uint64_t applied = stats(cw).applied;

		lg = notifier_gen(logstore_changes());
		assert_int_equal(db_notify(mallory, COMMITWATCH_CHANNEL, i < OTA_ARRAY_SIZE(payloads) ? payloads[i] : deep),
				 0);
		wait_applied(cw, applied);
		/* a reload: everything counts as changed, live streams look again */
		assert_int_not_equal(notifier_gen(logstore_changes()), lg);
	}
	s1 = stats(cw);
	assert_int_equal(s1.foreign - s0.foreign, OTA_ARRAY_SIZE(payloads) + 1);
	assert_int_equal(s1.heard - s0.heard, OTA_ARRAY_SIZE(payloads) + 1);
	/* and changed nothing: the data is what the leader committed, and the
	 * leader's next commit is heard as before */
	v = read_meta(leader);
	assert_string_equal(v, "kept");
	free(v);
	leader_tx(leader, "after", CW_STATE, 1);
	wait_applied(cw, s1.applied);
	assert_int_equal(stats(cw).foreign, s1.foreign);

	commitwatch_stop(cw);
	db_close(mallory);
	db_close(leader);
	free(deep);
}

/* A server restart breaks the listening connection: the thread
 * reconnects, reloads everything, and hears the next commit. */
static void listener_reconnects_after_server_restart(void **state)
{
	struct commitwatch *cw;
	struct db *leader;
	struct commitwatch_stats s0;
	int64_t deadline;
	uint64_t applied;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);
	db_close(leader);
	s0 = stats(cw);

	if (pgcluster_restart(dbconv_cluster()) < 0)
		fail_msg("pg_ctl restart: %s", ota_error_last());
	deadline = mono_us() + (int64_t)wait_ms() * 1000;
	while (stats(cw).reconnects == s0.reconnects) {
		if (mono_us() > deadline)
			fail_msg("the listener did not reconnect within %d ms", wait_ms());
		usleep(10000);
	}
	assert_true(stats(cw).applied > s0.applied); /* everything reloaded */

	if (db_open(&leader, dbconv_pg_url(), 0) < 0)
		fail_msg("open after restart: %s", ota_error_last());
	applied = stats(cw).applied;
	leader_tx(leader, "after-restart", CW_STATE, 1);
	wait_applied(cw, applied);

	commitwatch_stop(cw);
	db_close(leader);
}

/* The engine announces each command's commit, naming what it changed. */
static int touch_state(struct engine *e, void *arg)
{
	(void)arg;
	e->changed_state = 1;
	return 0;
}

static int fail_call(struct engine *e, void *arg)
{
	(void)arg;
	e->changed_state = e->changed_rollout = 1; /* "rollout" would give it away */
	return ota_error_set(OTA_ERROR, "this command fails");
}

static void engine_commit_is_announced_and_a_failed_one_is_not(void **state)
{
	struct engine_config ec = { .lease_ms = 30000, .heartbeat_ms = 1000, .default_timeout_ms = 60000 };
	struct db_listener *l;
	struct db_notification n;
	struct engine *e;
	struct store *s;
	json_t *o;

	(void)state;
	dbconv_need_pg();
	s = dbconv_open_store(DB_POSTGRES);
	assert_int_equal(db_listener_open(&l, dbconv_pg_url()), 0);
	assert_int_equal(db_listen(l, COMMITWATCH_CHANNEL), 0);
	assert_int_equal(engine_start(&e, s, &ec), 0);
	/* recovery's own commits, if any, are heard first: drain them */
	while (db_listener_wait(l, 200, &n) == 1)
		db_notification_release(&n);

	assert_true(engine_call(e, fail_call, NULL) < 0);
	assert_int_equal(engine_call(e, touch_state, NULL), 0);
	/* the first heard is touch_state's: the failed command rolled back */
	do {
		assert_int_equal(db_listener_wait(l, wait_ms(), &n), 1);
		o = json_loads(n.payload, 0, NULL);
		assert_non_null(o);
		db_notification_release(&n);
		if (json_array_size(json_object_get(o, "what")) == 0) {
			json_decref(o); /* a due-deadline pass between the calls */
			o = NULL;
		}
	} while (!o);
	assert_int_equal(json_array_size(json_object_get(o, "what")), 1);
	assert_string_equal(json_string_value(json_array_get(json_object_get(o, "what"), 0)), "state");
	assert_int_equal(json_integer_value(json_object_get(o, "v")), 1);
	json_decref(o);

	engine_stop(e);
	db_listener_close(l);
	store_close(s);
}

/* Log bytes change no row: the process that receives them (the leader:
 * followers forward the agents' protocol) announces them, at most every
 * 20 ms, and a follower wakes its live logs without touching its cache. */
static void log_appends_wake_other_instances_tails_only(void **state)
{
	struct db_listener *l;
	struct db_notification n;
	struct commitwatch *cw;
	struct db *leader;
	int64_t size;
	uint64_t gen, lg, applied;
	json_t *o;

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	assert_int_equal(db_listener_open(&l, dbconv_pg_url()), 0);
	assert_int_equal(db_listen(l, COMMITWATCH_CHANNEL), 0);
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);

	/* this process as the leader: an agent's chunk arrives */
	assert_int_equal(logstore_append(41, 1, 0, "hello\n", 6, &size), 0);
	assert_int_equal(size, 6);
	assert_int_equal(db_listener_wait(l, wait_ms(), &n), 1);
	o = json_loads(n.payload, 0, NULL);
	assert_non_null(o);
	assert_int_equal(json_array_size(json_object_get(o, "what")), 1);
	assert_string_equal(json_string_value(json_array_get(json_object_get(o, "what"), 0)), "log");
	json_decref(o);
	db_notification_release(&n);

	/* this process as a follower: another instance's logs grew */
	gen = store_generation();
	lg = notifier_gen(logstore_changes());
	applied = stats(cw).applied;
	assert_int_equal(db_notify(leader, COMMITWATCH_CHANNEL, "{\"v\":1,\"from\":\"leader-under-test\",\"what\":[\"log\"]}"), 0);
	wait_applied(cw, applied);
	assert_int_not_equal(notifier_gen(logstore_changes()), lg);
	assert_int_equal(store_generation(), gen);

	commitwatch_stop(cw);
	/* stopped: appends announce nothing any more (a marker comes first) */
	assert_int_equal(logstore_append(41, 1, 6, "more\n", 5, &size), 0);
	assert_int_equal(db_notify(leader, COMMITWATCH_CHANNEL, "marker"), 0);
	for (;;) {
		assert_int_equal(db_listener_wait(l, wait_ms(), &n), 1);
		if (!strcmp(n.payload, "marker"))
			break;
		/* the follower part's hint, heard here too; nothing of ours */
		assert_non_null(strstr(n.payload, "\"from\":\"leader-under-test\""));
		db_notification_release(&n);
	}
	db_notification_release(&n);
	db_listener_close(l);
	db_close(leader);
}

/* A real otacd on PostgreSQL as the leader, this process as another
 * instance: a run's commits and its log lines reach it as hints of the
 * right kinds, all well-formed. */
static void real_otacd_commits_and_logs_reach_another_process(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct db_listener *l;
	struct db_notification n;
	struct commitwatch *cw;
	struct commitwatch_stats s0, s1;
	struct daemon d;
	char *url, *fleet_url;
	uint64_t gen, lg;
	int64_t run;
	int heard_state = 0, heard_log = 0;

	(void)state;
	dbconv_need_pg();
	url = h_pg_createdb(dbconv_cluster(), "cwleader");
	fleet_url = h_pg_createdb(dbconv_cluster(), "cwfleet");
	h_init(&d, NULL);
	h_use_database(&d, url, fleet_url);
	assert_int_equal(h_start(&d, args), 0);
	assert_int_equal(db_listener_open(&l, url), 0);
	assert_int_equal(db_listen(l, COMMITWATCH_CHANNEL), 0);
	assert_int_equal(commitwatch_start(&cw, url), 0);
	s0 = stats(cw);
	gen = store_generation();
	lg = notifier_gen(logstore_changes());

	run = h_trigger(&d, "name: cw\nstages:\n  - { name: a, steps: [ { run: 'echo one; echo two' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, wait_ms()), "passed");
	while (!heard_state || !heard_log) {
		json_t *o, *what, *v;
		size_t i;

		assert_int_equal(db_listener_wait(l, wait_ms(), &n), 1);
		o = json_loads(n.payload, JSON_REJECT_DUPLICATES, NULL);
		assert_non_null(o);
		assert_int_equal(json_integer_value(json_object_get(o, "v")), 1);
		assert_non_null(json_string_value(json_object_get(o, "from")));
		what = json_object_get(o, "what");
		assert_true(json_is_array(what));
		json_array_foreach(what, i, v) {
			heard_state |= !strcmp(json_string_value(v), "state");
			heard_log |= !strcmp(json_string_value(v), "log");
		}
		json_decref(o);
		db_notification_release(&n);
	}
	s1 = stats(cw);
	assert_true(s1.applied > s0.applied);
	assert_int_equal(s1.foreign, s0.foreign);
	assert_int_equal(s1.own, s0.own);
	assert_true(store_generation() > gen);
	assert_int_not_equal(notifier_gen(logstore_changes()), lg);

	commitwatch_stop(cw);
	db_listener_close(l);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
	free(url);
	free(fleet_url);
}

/* SQLite has one instance: announcing is a no-op, and fine. */
static void sqlite_announce_does_nothing(void **state)
{
	struct store *s;

	(void)state;
	s = dbconv_open_store(DB_SQLITE);
	assert_int_equal(store_begin(s), 0);
	assert_int_equal(commitwatch_announce(store_conn(s), CW_STATE | CW_WORK), 0);
	assert_int_equal(store_commit(s), 0);
	store_close(s);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* docs/benchmarks.md: commit → the follower's live streams woken. */
static void latency_from_commit_to_follower_wake(void **state)
{
	int64_t *us = xcalloc(LATENCY_COMMITS, sizeof(*us));
	struct commitwatch *cw;
	struct db *leader;
	char value[32];

	(void)state;
	dbconv_need_pg();
	leader = open_leader();
	leader_tx(leader, "start", 0, 1);
	assert_int_equal(commitwatch_start(&cw, dbconv_pg_url()), 0);
	for (int i = 0; i < LATENCY_COMMITS; i++) {
		uint64_t lg = notifier_gen(logstore_changes());
		int64_t t0;

		struct db_stmt *st;

		snprintf(value, sizeof(value), "%d", i);
		assert_int_equal(db_begin(leader), 0);
		st = db_stmt(leader, "UPDATE meta SET value = ? WHERE key = 'cw'");
		db_bind_text(st, 1, value);
		assert_true(db_run(st) >= 0);
		assert_int_equal(commitwatch_announce_from(leader, "leader-under-test", CW_STATE), 0);
		t0 = mono_us(); /* from sending COMMIT */
		assert_int_equal(db_commit(leader), 0);
		assert_int_not_equal(notifier_wait(logstore_changes(), lg, wait_ms()), lg);
		us[i] = mono_us() - t0;
	}
	qsort(us, LATENCY_COMMITS, sizeof(*us), cmp_i64);
	printf("commitwatch: %d commits, commit -> follower wake: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
	       LATENCY_COMMITS, us[LATENCY_COMMITS / 2] / 1000.0, us[LATENCY_COMMITS * 99 / 100] / 1000.0,
	       us[LATENCY_COMMITS - 1] / 1000.0);
	commitwatch_stop(cw);
	db_close(leader);
	free(us);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sqlite_announce_does_nothing),
		cmocka_unit_test(leader_commit_wakes_follower_and_moves_its_generation),
		cmocka_unit_test(stateless_commit_moves_generation_only),
		cmocka_unit_test(rolled_back_transaction_wakes_nobody),
		cmocka_unit_test(own_announcements_are_not_applied_twice),
		cmocka_unit_test(hostile_notifications_only_reload),
		cmocka_unit_test(engine_commit_is_announced_and_a_failed_one_is_not),
		cmocka_unit_test(log_appends_wake_other_instances_tails_only),
		cmocka_unit_test(real_otacd_commits_and_logs_reach_another_process),
		cmocka_unit_test(latency_from_commit_to_follower_wake),
		cmocka_unit_test(listener_reconnects_after_server_restart),
	};
	int rc;

	dbconv_start("test_commitwatch");
	if (logstore_init(dbconv_tmpdir(), 0) < 0) {
		fprintf(stderr, "logstore_init: %s\n", ota_error_last());
		return 1;
	}
	rc = cmocka_run_group_tests_name("commitwatch", tests, NULL, NULL);
	dbconv_finish();
	return rc;
}
