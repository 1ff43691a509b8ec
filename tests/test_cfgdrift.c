/*
 * test_cfgdrift.c - instances whose configurations disagree are seen
 * (issue 16, orchestrator/cfgdrift.h, docs/scale.md).
 *
 * A real PostgreSQL cluster and three real otacd instances on one otacd
 * and one fleet database.  The leader and the first follower share one
 * configuration; the second follower has a signing key of the same name
 * but another key, and another time_scale.  The first follower sees no
 * mismatch; the second logs the two items once and has them at 1 on
 * /metrics and in /healthz; the leader's stay 0.  No private key appears
 * in any log or answer.  Then a malformed row in the database's place of
 * the leader's: a mismatch ("record"), the follower still answering.
 * Then the leader is SIGKILLed: the new leader's items are 0, the other
 * follower compares with the new leader's row.
 *
 * The clock (docs/scale.md, "One clock"): the second follower's
 * time_scale 2 writes no clock row (the leader's 1 needs none), and every
 * follower's otacd time is the leader's (read between two of the
 * leader's); a new leader's scale becomes the row, and the remaining
 * follower takes it.
 *
 * Then the PostgreSQL server restarts (that follower stopped meanwhile, so
 * it stays one): the leader exits 75 and is started again; the follower's
 * reader, broken by the restart, is opened again, so a difference written
 * after the restart is seen and one that agrees again clears, and a token
 * made on the leader since opens the follower's reads (its token reload
 * reopens its reader too).
 * Every wait has a generous cap that ends at the first success.
 *
 * Without PostgreSQL's binaries the case is skipped, saying so.
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

#include "../orchestrator/db/db.h"
#include "harness.h"
#include "pgcluster.h"

#define CAP_S 60

static const char *const args[] = { "--local-agents", "0", NULL };

/* The series line `otacd_config_mismatch{item="ITEM"} V` of d's /metrics:
 * V, or -1 when absent. */
static int mismatch(struct daemon *d, const char *item)
{
	struct buf out = BUF_INIT;
	char *want = xasprintf("otacd_config_mismatch{item=\"%s\"} ", item);
	const char *at;
	int v = -1;

	assert_int_equal(h_raw(d, "GET", "/metrics", d->token, NULL, NULL, 0, &out), 200);
	if ((at = strstr(buf_cstr(&out), want)))
		v = atoi(at + strlen(want));
	free(want);
	buf_release(&out);
	return v;
}

/* Wait (up to CAP_S) for item to read want on d's /metrics. */
static void wait_mismatch(struct daemon *d, const char *item, int want)
{
	for (int i = 0; i < CAP_S * 10 && mismatch(d, item) != want; i++)
		h_msleep(100);
	assert_int_equal(mismatch(d, item), want);
}

/* How many lines of d's log hold both a and b. */
static int log_lines(struct daemon *d, const char *a, const char *b)
{
	struct buf out = BUF_INIT;
	int n;
	assert_int_equal(h_sh(&out, "grep -F -- '%s' %s/otacd.log | grep -c -F -- '%s' || true", a, d->dir, b), 0);
	n = atoi(buf_cstr(&out));
	buf_release(&out);
	return n;
}

#define LEADER_ROW "SELECT value FROM meta WHERE key = (SELECT 'config_fp:' || holder FROM otacd_leader)"

/* Write text (no single quote in it) as the leader's row, as a hostile
 * database would. */
static void set_leader_row(const char *url, const char *text)
{
	struct db *db = NULL;
	char *sql = xasprintf("UPDATE meta SET value = '%s' WHERE key = (SELECT 'config_fp:' || holder FROM"
			      " otacd_leader)", text);
	assert_null(strchr(text, '\''));
	assert_int_equal(db_open(&db, url, 0), 0);
	assert_int_equal(db_exec(db, sql), 0);
	db_close(db);
	free(sql);
}

/* d's otacd time, /api/v1/health's "time"; its scale in *scale. */
static int64_t otacd_time(struct daemon *d, double *scale)
{
	json_t *h = NULL;
	int64_t t;

	assert_int_equal(h_get(d, "/api/v1/health", &h), 200);
	t = json_integer_value(json_object_get(h, "time"));
	*scale = json_real_value(json_object_get(h, "time_scale"));
	assert_true(t > 0);
	json_decref(h);
	return t;
}

/* 1 when d's otacd time, read between two readings of the leader's, lies
 * between them, at the leader's scale: one clock, whatever the load (two
 * instances at scale 2 with their own anchors drift apart by the seconds
 * they ran). */
static int on_leaders_clock(struct daemon *lead, struct daemon *d)
{
	double s1, s, s2;
	int64_t l1 = otacd_time(lead, &s1), t = otacd_time(d, &s), l2 = otacd_time(lead, &s2);
	return l1 <= t && t <= l2 && s == s1 && s1 == s2;
}

/* Wait (up to CAP_S) for d to be on the leader's clock. */
static void wait_leaders_clock(struct daemon *lead, struct daemon *d)
{
	for (int i = 0; i < CAP_S * 10 && !on_leaders_clock(lead, d); i++)
		h_msleep(100);
	assert_true(on_leaders_clock(lead, d));
}

/* A file's text (caller frees). */
static char *slurp(const char *path)
{
	struct buf b = BUF_INIT;
	assert_int_equal(ota_read_file(&b, path, 1 << 20), 0);
	return buf_detach(&b);
}

/* A signing key (EC P-256) made in dir as name; its path (caller frees). */
static char *new_key(const char *dir, const char *name)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s",
			      dir, name), 0);
	buf_release(&out);
	return xasprintf("%s/%s", dir, name);
}

/* The second line of a PEM file: a piece of the private key. */
static char *pem_line(const char *path)
{
	char *text = slurp(path), *nl = strchr(text, '\n'), *line, *end;
	assert_non_null(nl);
	end = strchr(nl + 1, '\n');
	assert_non_null(end);
	line = xstrndup(nl + 1, (size_t)(end - nl - 1));
	free(text);
	return line;
}

/* Nothing d logged or answers holds secret. */
static void assert_not_shown(struct daemon *d, const char *secret)
{
	struct buf out = BUF_INIT;
	char *log = xasprintf("%s/otacd.log", d->dir), *text = slurp(log);
	assert_null(strstr(text, secret));
	assert_int_equal(h_raw(d, "GET", "/metrics", d->token, NULL, NULL, 0, &out), 200);
	assert_null(strstr(buf_cstr(&out), secret));
	assert_int_equal(h_raw(d, "GET", "/healthz", NULL, NULL, NULL, 0, &out), 200);
	assert_null(strstr(buf_cstr(&out), secret));
	free(text);
	free(log);
	buf_release(&out);
}

static void followers_see_the_settings_that_differ_from_the_leaders(void **state)
{
	struct pgcluster pg;
	struct daemon d[3];
	char *otacd_db, *fleet_db, *secrets, *ka, *kb, *same, *other, *piece_a, *piece_b;
	char *row, *bad;
	struct buf body = BUF_INIT;
	json_t *h = NULL;
	char *row2, *own_key, *own_row;
	int next, f, status = 0;

	(void)state;
	memset(d, 0, sizeof(d));
	if (h_pg_start_dbs(&pg, &otacd_db, &fleet_db) > 0)
		skip();
	secrets = h_fleet_secrets_yaml(pg.dir);
	ka = new_key(pg.dir, "a.pem");
	kb = new_key(pg.dir, "b.pem");
	same = xasprintf("lease: 3s\nleader_poll: 1s\nkeys:\n  release: { spec: %s }\n%s", ka, secrets);
	other = xasprintf("lease: 3s\nleader_poll: 1s\ntime_scale: 2\nkeys:\n  release: { spec: %s }\n%s", kb, secrets);
	h_pg_instances(d, 2, otacd_db, fleet_db, same, args);
	h_init(&d[2], other);
	h_use_database(&d[2], otacd_db, fleet_db);
	d[2].follower_ok = 1;
	d[2].token = xstrdup(d[0].token);
	assert_int_equal(h_start(&d[2], args), 0);
	assert_true(h_leads(&d[0]));

	/* the first follower agrees; the second differs in two items */
	wait_mismatch(&d[2], "signing_key.release", 1);
	wait_mismatch(&d[2], "time_scale", 1);
	for (int i = 0; i < 3; i++) {
		const char *agree[] = { "trust_root", "release_policy", "protected_refs", "device_ca", "device_auth",
					"gate_max_lag" };
		for (size_t j = 0; j < sizeof(agree) / sizeof(agree[0]); j++)
			assert_int_equal(mismatch(&d[i], agree[j]), 0);
		if (i < 2) {
			assert_int_equal(mismatch(&d[i], "signing_key.release"), 0);
			assert_int_equal(mismatch(&d[i], "time_scale"), 0);
			assert_int_equal(log_lines(&d[i], "configuration:", "differs"), 0);
		}
	}
	/* logged once each (a few polls later still once), naming the item */
	h_msleep(2500);
	assert_int_equal(log_lines(&d[2], "configuration: signing_key.release differs", "leader"), 1);
	assert_int_equal(log_lines(&d[2], "configuration: time_scale differs", "leader"), 1);
	assert_int_equal(log_lines(&d[2], "configuration:", "differs"), 2);
	assert_int_equal(h_get(&d[2], "/healthz", &h), 200);
	assert_int_equal(json_array_size(json_object_get(h, "config_mismatch")), 2);
	assert_string_equal(json_string_value(json_array_get(json_object_get(h, "config_mismatch"), 0)), "signing_key");
	json_decref(h);
	assert_int_equal(h_get(&d[1], "/healthz", &h), 200);
	assert_int_equal(json_array_size(json_object_get(h, "config_mismatch")), 0);
	json_decref(h);
	/* one clock: the follower at time_scale 2 wrote no clock row and runs
	 * on the leader's (wall time), saying so once */
	assert_int_equal(h_sql_int(&d[0], "SELECT COUNT(*) FROM meta WHERE key = 'clock'"), 0);
	for (int i = 1; i < 3; i++)
		assert_true(on_leaders_clock(&d[0], &d[i]));
	assert_int_equal(log_lines(&d[2], "time_scale: 2 configured", "clock runs at 1:"), 1);
	assert_int_equal(log_lines(&d[1], "time_scale:", "configured"), 0);
	/* the leader's own values: unchanged by what a follower recorded */
	assert_int_equal(mismatch(&d[0], "signing_key.release"), 0);
	assert_int_equal(mismatch(&d[0], "time_scale"), 0);
	/* no private key, no fleet secret, in any log or answer */
	piece_a = pem_line(ka);
	piece_b = pem_line(kb);
	for (int i = 0; i < 3; i++) {
		assert_not_shown(&d[i], piece_a);
		assert_not_shown(&d[i], piece_b);
	}

	/* hostile: the leader's row malformed in the database; a mismatch,
	 * never a crash */
	row = h_sql_text(&d[0], LEADER_ROW);
	assert_non_null(strstr(row, "\"time_scale\":"));
	set_leader_row(otacd_db, "{\"time_scale\": 7, \"x\\\"y\": \"00\"");
	wait_mismatch(&d[1], "record", 1);
	assert_int_equal(mismatch(&d[1], "time_scale"), 1);
	assert_int_equal(h_get(&d[1], "/healthz", &h), 200);
	json_decref(h);
	/* the row back: agreement again, said once */
	set_leader_row(otacd_db, row);
	wait_mismatch(&d[1], "record", 0);
	assert_int_equal(mismatch(&d[1], "time_scale"), 0);
	assert_int_equal(log_lines(&d[1], "configuration: time_scale agrees", "again"), 1);
	/* an item whose name would break out of a metric's label: the row
	 * counts as malformed, the name shown nowhere */
	assert_int_equal(row[strlen(row) - 1], '}');
	row[strlen(row) - 1] = 0;
	bad = xasprintf("%s,\"evil\\\"} 0\\nx{\": \"0000000000000001\"}", row);
	set_leader_row(otacd_db, bad);
	wait_mismatch(&d[1], "record", 1);
	assert_int_equal(mismatch(&d[1], "time_scale"), 0);
	assert_int_equal(h_raw(&d[1], "GET", "/metrics", d[1].token, NULL, NULL, 0, &body), 200);
	assert_null(strstr(buf_cstr(&body), "evil"));
	assert_int_equal(log_lines(&d[1], "evil", ""), 0);
	assert_true(h_leads(&d[0]));

	/* the leader changes: the new one's own are 0, the other follower
	 * compares with the new leader's (intact) row */
	h_kill(&d[0], SIGKILL);
	for (int i = 0; i < CAP_S * 10 && !h_leads(&d[1]) && !h_leads(&d[2]); i++)
		h_msleep(100);
	next = h_leads(&d[1]) ? 1 : 2;
	assert_true(h_leads(&d[next]));
	wait_mismatch(&d[next], "signing_key.release", 0);
	assert_int_equal(mismatch(&d[next], "time_scale"), 0);
	assert_int_equal(mismatch(&d[next], "record"), 0);
	wait_mismatch(&d[3 - next], "record", 0);
	assert_int_equal(mismatch(&d[3 - next], "signing_key.release"), 1);
	assert_int_equal(mismatch(&d[3 - next], "time_scale"), 1);
	assert_int_equal(mismatch(&d[3 - next], "trust_root"), 0);
	/* the new leader's scale is the clock row's (none for 1), and the
	 * other follower's otacd time is the new leader's */
	if (next == 2) {
		row2 = h_sql_text(&d[next], "SELECT value FROM meta WHERE key = 'clock'");
		assert_non_null(row2);
		assert_int_equal(strncmp(row2, "2 ", 2), 0);
		free(row2);
	} else {
		assert_int_equal(h_sql_int(&d[next], "SELECT COUNT(*) FROM meta WHERE key = 'clock'"), 0);
	}
	wait_leaders_clock(&d[next], &d[3 - next]);

	/* the server restarts; the follower, stopped meanwhile, stays one */
	f = 3 - next;
	assert_int_equal(kill(d[f].pid, SIGSTOP), 0);
	assert_int_equal(pgcluster_restart(&pg), 0);
	for (int i = 0; i < CAP_S * 10 && waitpid(d[next].pid, &status, WNOHANG) == 0; i++)
		h_msleep(100);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 75); /* it lost the lead */
	d[next].pid = 0;
	d[next].follower_ok = 0; /* started again: h_start() returns once it leads */
	assert_int_equal(h_start(&d[next], args), 0);
	assert_int_equal(kill(d[f].pid, SIGCONT), 0);
	/* a difference written after the restart: the leader's row made the
	 * follower's own, so every item agrees; then the leader's back */
	row2 = h_sql_text(&d[next], LEADER_ROW);
	own_key = xasprintf("SELECT value FROM meta WHERE key = 'config_fp:%s'", d[f].url);
	own_row = h_sql_text(&d[next], own_key);
	assert_non_null(row2);
	assert_non_null(own_row);
	assert_string_not_equal(row2, own_row);
	set_leader_row(otacd_db, own_row);
	wait_mismatch(&d[f], "signing_key.release", 0);
	assert_int_equal(mismatch(&d[f], "time_scale"), 0);
	set_leader_row(otacd_db, row2);
	wait_mismatch(&d[f], "signing_key.release", 1);
	assert_int_equal(mismatch(&d[f], "time_scale"), 1);
	wait_leaders_clock(&d[next], &d[f]);
	/* the follower's tokens reload again too (the commitwatch's reader):
	 * one made on the leader after the restart opens its reads */
	{
		json_t *req = json_pack("{ss ss}", "name", "after-restart", "role", "viewer"), *ans = NULL;
		const char *tok;
		long st = 0;

		assert_int_equal(h_post(&d[next], "/api/v1/tokens", req, &ans), 201);
		tok = json_string_value(json_object_get(ans, "token"));
		assert_non_null(tok);
		for (int i = 0; i < CAP_S * 10 && (st = h_raw(&d[f], "GET", "/api/v1/runs", tok, NULL, NULL, 0, NULL)) != 200;
		     i++)
			h_msleep(100);
		assert_int_equal(st, 200);
		json_decref(req);
		json_decref(ans);
	}
	/* the database's absence said at most once, its return as often */
	assert_true(log_lines(&d[f], "clock and settings:", "trying again") <= 1);
	assert_int_equal(log_lines(&d[f], "clock and settings again", ""),
			 log_lines(&d[f], "clock and settings:", "trying again"));

	for (int i = 0; i < 3; i++)
		h_cleanup(&d[i]);
	pgcluster_stop(&pg);
	buf_release(&body);
	free(row);
	free(row2);
	free(own_key);
	free(own_row);
	free(bad);
	free(piece_a);
	free(piece_b);
	free(same);
	free(other);
	free(ka);
	free(kb);
	free(secrets);
	free(otacd_db);
	free(fleet_db);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(followers_see_the_settings_that_differ_from_the_leaders),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
