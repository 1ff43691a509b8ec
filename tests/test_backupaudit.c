/*
 * test_backupaudit.c - backups and restores leave audit entries (issue
 * 18): `otactl backup` (POST /api/v1/backup) by whom, when, on which host,
 * into which directory, how many files and bytes; a refused backup too;
 * `otacd --restore` inside the restored database: the OS user, from where
 * into where, how much.  A refused restore leaves nothing to audit in.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pwd.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "harness.h"

#define OPS_TOKEN "ops-admin-token-0123456789abcdef"

/* The newest audit entry whose action is action (new ref), or NULL. */
static json_t *newest_audit(struct daemon *d, const char *action)
{
	json_t *list = NULL, *e, *found = NULL;
	size_t i;

	assert_int_equal(h_get(d, "/api/v1/audit", &list), 200);
	json_array_foreach(list, i, e) {
		if (!strcmp(json_string_value(json_object_get(e, "action")), action)) {
			found = json_incref(e);
			break;
		}
	}
	json_decref(list);
	return found;
}

static int64_t detail_int(const json_t *e, const char *key)
{
	return json_integer_value(json_object_get(json_object_get(e, "detail"), key));
}

static const char *detail_str(const json_t *e, const char *key)
{
	const char *s = json_string_value(json_object_get(json_object_get(e, "detail"), key));
	return s ? s : "";
}

static void backups_and_restores_are_audited(void **state)
{
	struct daemon d, r;
	struct buf out = BUF_INIT;
	char *otactl = h_bin("otactl"), *otacd = h_bin("otacd"), *bk, host[256] = "";
	struct passwd *pw = getpwuid(getuid());
	json_t *e, *req;
	int64_t run, before, after;
	(void)state;

	gethostname(host, sizeof(host) - 1);
	h_init(&d, "tokens:\n  - { name: ops-admin, role: admin, token: " OPS_TOKEN " }\n");
	assert_int_equal(h_start(&d, (const char *const[]){ "--local-agents", "1", NULL }), 0);
	run = h_trigger(&d, "name: p\nstages:\n  - name: one\n    steps: [ { run: 'echo audited' } ]\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	assert_null(newest_audit(&d, "backup"));

	/* taken by otactl with the named admin token */
	bk = xasprintf("%s/backup", d.dir);
	before = h_sql_int(&d, "SELECT COALESCE(MAX(id), 0) FROM audit");
	assert_int_equal(h_sh(&out, "%s --url %s --token %s backup %s", otactl, d.url, OPS_TOKEN, bk), 0);
	assert_non_null(e = newest_audit(&d, "backup"));
	assert_true(json_integer_value(json_object_get(e, "id")) > before);
	assert_string_equal(json_string_value(json_object_get(e, "actor")), "ops-admin");
	assert_true(json_integer_value(json_object_get(e, "at")) > 0);
	assert_true(detail_int(e, "real_ms") > 0);
	assert_string_equal(detail_str(e, "dir"), bk);
	assert_string_equal(detail_str(e, "host"), host);
	assert_true(detail_int(e, "files") >= 3);
	assert_true(detail_int(e, "bytes") > 0);
	/* the same numbers as the backup's manifest */
	assert_int_equal(h_sh(&out, "python3 -c \"import json,sys; m=json.load(open(sys.argv[1]+'/backup.json'));"
				    " print(len(m['files']), sum(f['size'] for f in m['files']))\" %s", bk), 0);
	{
		char *expect = xasprintf("%lld %lld\n", (long long)detail_int(e, "files"), (long long)detail_int(e, "bytes"));
		assert_string_equal(buf_cstr(&out), expect);
		free(expect);
	}
	json_decref(e);

	/* a refused backup (the directory is not empty) is audited too, with why */
	req = json_pack("{ss}", "dir", bk);
	assert_int_equal(h_post(&d, "/api/v1/backup", req, NULL), 409);
	json_decref(req);
	assert_non_null(e = newest_audit(&d, "backup_failed"));
	assert_string_equal(detail_str(e, "dir"), bk);
	assert_non_null(strstr(json_string_value(json_object_get(e, "reason")), "not empty"));
	assert_null(json_object_get(json_object_get(e, "detail"), "bytes"));
	json_decref(e);
	h_kill(&d, SIGTERM);

	/* restored: the restore is the newest entry of the restored database */
	h_init(&r, NULL);
	assert_int_equal(h_sh(&out, "%s --restore %s --state-dir %s/state", otacd, bk, r.dir), 0);
	assert_int_equal(h_start(&r, NULL), 0);
	after = h_sql_int(&r, "SELECT MAX(id) FROM audit");
	assert_int_equal(h_sql_int(&r, "SELECT COUNT(*) FROM audit WHERE action = 'restore'"), 1);
	assert_non_null(e = newest_audit(&r, "restore"));
	assert_int_equal(json_integer_value(json_object_get(e, "id")), after);
	assert_string_equal(json_string_value(json_object_get(e, "actor")), pw ? pw->pw_name : "");
	assert_string_equal(detail_str(e, "from"), bk);
	{
		char *into = xasprintf("%s/state", r.dir);
		assert_string_equal(detail_str(e, "into"), into);
		free(into);
	}
	assert_string_equal(detail_str(e, "host"), host);
	assert_int_equal(detail_int(e, "uid"), (int64_t)getuid());
	assert_true(detail_int(e, "files") >= 3);
	assert_true(detail_int(e, "bytes") > 0);
	assert_true(detail_int(e, "backup_created_at") > 0);
	json_decref(e);
	/* the backup's own entry was written after the copy: not in it */
	assert_int_equal(h_sql_int(&r, "SELECT COUNT(*) FROM audit WHERE action LIKE 'backup%'"), 0);
	h_cleanup(&r);

	/* a refused restore (into a non-empty directory) writes nothing anywhere */
	{
		struct daemon x;
		h_init(&x, NULL);
		assert_int_equal(h_sh(&out, "mkdir -p %s/state && touch %s/state/keep", x.dir, x.dir), 0);
		assert_int_not_equal(h_sh(&out, "%s --restore %s --state-dir %s/state 2>&1", otacd, bk, x.dir), 0);
		assert_int_equal(h_sh(&out, "ls %s/state", x.dir), 0);
		assert_string_equal(buf_cstr(&out), "keep\n");
		h_cleanup(&x);
	}

	buf_release(&out);
	free(bk);
	free(otacd);
	free(otactl);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(backups_and_restores_are_audited),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
