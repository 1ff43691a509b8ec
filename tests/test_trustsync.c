/*
 * test_trustsync.c - the release-signing revocation list is the same on
 * every instance (issue 16, docs/scale.md "What every instance must
 * share", trustdb.h).
 *
 * A real PostgreSQL cluster (tests/pgcluster.c) and two real otacd
 * processes on one database over HTTP on loopback (h_pg_instances): the
 * first leads, the second follows.  The root, two certified signing keys
 * and the lists are made by `otactl keys` at test time.  A release signed
 * by key a verifies on the follower; a list published through the
 * follower (forwarded) and one through the leader reach both instances'
 * GET /api/v1/trust, and the follower's release verification then calls
 * the release's key revoked.  Hostile: a list signed by another root, an
 * older list, and a row written into the table behind otacd's back are
 * refused and change nothing on either instance.  Upgrade: a list an
 * older otacd left in a state directory, newer than the database's, is
 * imported once when that instance starts, and reaches the other.  Each
 * instance warns at start that its local artifact store is its own.
 *
 * Every wait has a generous cap that ends early on success; how long each
 * took is printed, never asserted.  Without PostgreSQL's binaries the test
 * is skipped, saying so.
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
#include <time.h>

#include "../orchestrator/db/db.h"
#include "devharness.h"
#include "harness.h"
#include "pgcluster.h"

#define CAP_MS 30000 /* a notification, or the 5 s periodic reload, on a loaded machine */

static const char *const RELEASE =
	"name: fw\nstages:\n"
	"  - name: build\n    steps: [ { run: \"printf 'fw 1' > app.bin && head -c 2000 /dev/zero >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.0.0\", security_counter: 1, key: a }\n";

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *otactl_bin;

/* `otactl ARGS` in dir (fails the test unless it exits 0). */
static void otactl(const char *dir, const char *args)
{
	assert_int_equal(dh_sh_in(dir, NULL, "%s %s", otactl_bin, args), 0);
}

/* A P-256 key dir/name.pem certified by dir/root: dir/name.crt; its key id in id. */
static void certified_key(const char *dir, const char *name, char id[65])
{
	struct buf b = BUF_INIT;
	char *args = xasprintf("keys certify %s.pub --root root -o %s.crt", name, name);

	assert_int_equal(dh_sh_in(dir, NULL, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s.pem"
				       " 2>/dev/null && openssl pkey -in %s.pem -pubout -out %s.pub", name, name, name), 0);
	otactl(dir, args);
	assert_int_equal(dh_sh_in(dir, &b, "openssl pkey -pubin -in %s.pub -outform DER | sha256sum | cut -c1-64", name), 0);
	assert_true(b.len >= 64);
	memcpy(id, b.ptr, 64);
	id[64] = 0;
	free(args);
	buf_release(&b);
}

/* `otactl keys revoke ID --root ROOT ... -o FILE` in dir: the next list of that root. */
static void revoke_into(const char *dir, const char *root, const char *id, const char *file)
{
	char *args = xasprintf("keys revoke %s --root %s --reason keyCompromise -o %s", id, root, file);
	otactl(dir, args);
	free(args);
}

/* POST /api/v1/revocations with dir/file on d: the status. */
static long publish(struct daemon *d, const char *dir, const char *file)
{
	char *p = xasprintf("%s/%s", dir, file);
	struct buf pem = BUF_INIT;
	json_t *req;
	long st;

	assert_int_equal(ota_read_file(&pem, p, 1 << 20), 0);
	req = json_pack("{ss}", "crl_pem", buf_cstr(&pem));
	st = h_post(d, "/api/v1/revocations", req, NULL);
	json_decref(req);
	buf_release(&pem);
	free(p);
	return st;
}

/* GET /api/v1/trust's revocations_number on d (served by d itself). */
static int64_t held(struct daemon *d)
{
	json_t *ans = NULL;
	int64_t n;

	assert_int_equal(h_get(d, "/api/v1/trust", &ans), 200);
	n = json_integer_value(json_object_get(ans, "revocations_number"));
	json_decref(ans);
	return n;
}

/* Wait until d holds list want; fail after CAP_MS. */
static void wait_held(struct daemon *d, int64_t want, const char *what)
{
	int64_t t0 = now_ms(), n;

	while ((n = held(d)) != want) {
		if (now_ms() - t0 > CAP_MS)
			fail_msg("%s: still list %lld after %d ms (want %lld)", what, (long long)n, CAP_MS, (long long)want);
		h_msleep(10);
	}
	print_message("%s: %lld ms\n", what, (long long)(now_ms() - t0));
}

/* The follower's verification of release rel: the text of its manifest check. */
static char *manifest_check(struct daemon *d, int64_t rel, int *ok)
{
	char *p = xasprintf("/api/v1/releases/%lld/verification", (long long)rel), *text = NULL;
	json_t *v = NULL, *c;
	size_t i;

	assert_int_equal(h_get(d, p, &v), 200);
	json_array_foreach(json_object_get(v, "checks"), i, c) {
		const char *t = json_string_value(json_object_get(c, "text"));
		if (t && (strstr(t, "signing certificate") || strstr(t, "signing chain")) && !text) {
			text = xstrdup(t);
			*ok = json_is_true(json_object_get(c, "ok"));
		}
	}
	if (!text) {
		char *all = json_dumps(v, JSON_INDENT(1));
		fail_msg("no signing check in %s", all);
	}
	json_decref(v);
	free(p);
	return text;
}

/* Rows of the audit log with this action, read from the database. */
static int64_t audited(struct daemon *d, const char *action)
{
	char *sql = xasprintf("SELECT COUNT(*) FROM audit WHERE action = '%s'", action);
	int64_t n = h_sql_int(d, sql);
	free(sql);
	return n;
}

static struct pgcluster pg;
static struct daemon d[2];
static char *otacd_db, *fleet_db;
static int pg_up;

/* what a failed assertion left running goes too */
static int teardown(void **state)
{
	(void)state;
	h_cleanup(&d[1]);
	h_cleanup(&d[0]);
	if (pg_up)
		pgcluster_stop(&pg);
	free(otacd_db);
	free(fleet_db);
	return 0;
}

static void one_list_on_every_instance_and_no_forgery_on_any(void **state)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	char *secrets, *yaml, *text, *tok, idA[65], idB[65];
	const char *dir;
	int64_t run, rel;
	int ok;

	(void)state;
	if (h_pg_start_dbs(&pg, &otacd_db, &fleet_db) > 0)
		skip();
	pg_up = 1;
	dir = pg.dir;
	otactl(dir, "keys root init root");
	otactl(dir, "keys root init other --cn 'another root'");
	certified_key(dir, "a", idA);
	certified_key(dir, "b", idB);
	revoke_into(dir, "root", idB, "crl1.pem");  /* list 1: b */
	revoke_into(dir, "root", idA, "crl2.pem");  /* list 2: b and a */
	revoke_into(dir, "root", idA, "crl3.pem");  /* list 3, for the upgrade */
	otactl(dir, "keys certify a.pub --root other -o a-other.crt");
	revoke_into(dir, "other", idA, "forged.pem");
	secrets = h_fleet_secrets_yaml(dir);
	yaml = xasprintf("leader_poll: 1s\ntrust_root: %s/root/root.crt.pem\nkeys:\n"
			 "  a: { spec: %s/a.pem, certificate: %s/a.crt }\n%s",
			 dir, dir, dir, secrets);
	h_pg_instances(d, 2, otacd_db, fleet_db, yaml, args);
	/* each instance says that its local artifact store is its own */
	{
		char *log = xasprintf("%s/otacd.log", d[1].dir);
		struct buf b = BUF_INIT;
		assert_int_equal(ota_read_file(&b, log, 1 << 22), 0);
		assert_non_null(strstr(buf_cstr(&b), "artifact_store: local on PostgreSQL"));
		buf_release(&b);
		free(log);
	}

	/* a release signed by a, verified on the follower: no list yet */
	run = h_trigger(&d[0], RELEASE);
	assert_string_equal(h_wait_run(&d[0], run, 120000), "passed");
	rel = h_sql_int(&d[0], "SELECT id FROM releases ORDER BY id DESC LIMIT 1");
	assert_true(rel > 0);
	/* the follower reads the release's manifest from the leader's
	 * artifacts: one directory for both (in production the S3 store) */
	{
		struct buf out = BUF_INIT;
		assert_int_equal(dh_sh_in(d[1].dir, &out, "rm -rf state/artifacts && ln -s '%s/state/artifacts' state/artifacts", d[0].dir), 0);
		buf_release(&out);
	}
	text = manifest_check(&d[1], rel, &ok);
	assert_true(ok);
	free(text);
	assert_int_equal(held(&d[1]), 0);

	/* list 1 through the follower (forwarded), list 2 through the leader:
	 * both instances hold each soon after */
	assert_int_equal(publish(&d[1], dir, "crl1.pem"), 200);
	wait_held(&d[0], 1, "list 1 (published through the follower) held by the leader");
	wait_held(&d[1], 1, "list 1 held by the follower");
	assert_int_equal(publish(&d[0], dir, "crl2.pem"), 200);
	wait_held(&d[1], 2, "list 2 (published through the leader) held by the follower");
	assert_int_equal(held(&d[0]), 2);
	/* the follower's verification uses it: a is revoked */
	text = manifest_check(&d[1], rel, &ok);
	assert_false(ok);
	if (!strstr(text, "is revoked (keyCompromise, revocation list 2)"))
		fail_msg("follower's verification: %s", text);
	free(text);

	/* hostile: another root's list, an older one, the same one again,
	 * through either instance: refused, nothing changes anywhere */
	assert_int_equal(publish(&d[1], dir, "forged.pem"), 422);
	assert_int_equal(publish(&d[0], dir, "forged.pem"), 422);
	assert_int_equal(publish(&d[1], dir, "crl1.pem"), 409);
	assert_int_equal(publish(&d[0], dir, "crl2.pem"), 409);
	assert_int_equal(h_sql_int(&d[0], "SELECT MAX(number) FROM release_crls"), 2);
	assert_int_equal(h_sql_int(&d[0], "SELECT COUNT(*) FROM release_crls"), 2);
	assert_int_equal(audited(&d[0], "revocations_published"), 2);
	assert_int_equal(audited(&d[0], "revocations_refused"), 4);
	/* a row written behind otacd's back (another root's list, under a
	 * higher number): every reload refuses it.  A token made afterwards
	 * and accepted by the follower proves a reload ran since. */
	{
		struct db *db;
		struct db_stmt *st;
		struct buf pem = BUF_INIT;
		char *p = xasprintf("%s/forged.pem", dir);

		assert_int_equal(ota_read_file(&pem, p, 1 << 20), 0);
		assert_int_equal(db_open(&db, otacd_db, 0), 0);
		st = db_stmt(db, "INSERT INTO release_crls(number, pem, published_at, actor) VALUES (99, ?, 0, 'mallory')");
		assert_non_null(st);
		db_bind_text(st, 1, buf_cstr(&pem));
		assert_int_equal(db_run(st), 0);
		db_close(db);
		buf_release(&pem);
		free(p);
	}
	{
		json_t *req = json_pack("{ss ss}", "name", "after-forgery", "role", "viewer"), *ans = NULL;
		int64_t t0 = now_ms();
		assert_int_equal(h_post(&d[0], "/api/v1/tokens", req, &ans), 201);
		tok = xstrdup(json_string_value(json_object_get(ans, "token")));
		json_decref(req);
		json_decref(ans);
		while (h_raw(&d[1], "GET", "/api/v1/runs", tok, NULL, NULL, 0, NULL) != 200) {
			if (now_ms() - t0 > CAP_MS)
				fail_msg("the follower never reloaded after the forged row");
			h_msleep(10);
		}
		free(tok);
	}
	assert_int_equal(held(&d[1]), 2);
	assert_int_equal(held(&d[0]), 2);
	text = h_sql_text(&d[0], "SELECT actor FROM release_crls WHERE number = 99");
	assert_string_equal(text, "mallory");
	free(text);
	{
		struct db *db;
		assert_int_equal(db_open(&db, otacd_db, 0), 0);
		assert_int_equal(db_exec(db, "DELETE FROM release_crls WHERE number = 99"), 0);
		db_close(db);
	}

	/* upgrade: list 3 in the follower's state directory, as an older
	 * otacd kept it, is imported once when it starts; the leader follows */
	h_kill(&d[1], SIGTERM);
	{
		char *from = xasprintf("%s/crl3.pem", dir), *to = xasprintf("%s/state/revocations.crl.pem", d[1].dir);
		struct buf pem = BUF_INIT;
		assert_int_equal(ota_read_file(&pem, from, 1 << 20), 0);
		assert_int_equal(ota_write_file_atomic(to, pem.ptr, pem.len, 0644), 0);
		buf_release(&pem);
		free(from);
		free(to);
	}
	assert_int_equal(h_start(&d[1], args), 0);
	assert_int_equal(held(&d[1]), 3);
	wait_held(&d[0], 3, "list 3 (imported by the follower at its start) held by the leader");
	assert_int_equal(audited(&d[0], "revocations_imported"), 1);
	/* the same file at the next start: nothing imported again */
	h_kill(&d[1], SIGTERM);
	assert_int_equal(h_start(&d[1], args), 0);
	assert_int_equal(held(&d[1]), 3);
	assert_int_equal(audited(&d[0], "revocations_imported"), 1);
	assert_int_equal(h_sql_int(&d[0], "SELECT COUNT(*) FROM release_crls"), 3);

	free(secrets);
	free(yaml);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(one_list_on_every_instance_and_no_forgery_on_any, teardown),
	};
	int rc;

	otactl_bin = h_bin("otactl");
	rc = cmocka_run_group_tests_name("trustsync", tests, NULL, NULL);
	free(otactl_bin);
	return rc;
}
