/*
 * test_dbconv_misc.c - the release stage, the report kinds, release deltas,
 * the device CA's tables and the device PKI route, converted to the storage
 * layer (docs/storage.md, conversion plan steps 3 and 5):
 *
 *  - every statement those files prepare (each store_q() literal, read
 *    from the sources, so a statement added later is checked too) prepares
 *    on SQLite and on a real PostgreSQL cluster (tests/pgcluster.h) after
 *    store.c's migrations ran there, and none of the files calls sqlite3_*
 *    any more;
 *  - the device CA's table work (fleet_ca_store_*: provisioners added,
 *    certificates issued and looked up, devices and provisioners revoked,
 *    everything loaded back into memory) runs with real certificates on
 *    both backends and gives the same answers;
 *  - a verdict's reports and its baseline run's (reports_kind.c) load the
 *    same from rows on both backends.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "../common/util.h"
#include "../orchestrator/auth.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/fleet/fleet_ca.h"
#include "../orchestrator/store.h"
#include "../stages/reports_kind.h"
#include "harness.h"
#include "dbconv.h"

/* the converted files, relative to the source tree */
static const char *const k_files[] = {
	"stages/release.c",
	"stages/reports_kind.c",
	"stages/release_delta.c",
	"orchestrator/fleet/fleet_ca_db.c",
	"orchestrator/fleet/devapi_pki.c",
};
#define NFILES (sizeof(k_files) / sizeof(k_files[0]))

/* ---- the statements, read from the sources ---------------------------------- */

/* Every store_q(db, "..." "...") of the files: the adjacent literals after
 * the first argument, joined as the compiler joins them. */
static void scan_all(struct dbconv_sql *l)
{
	for (size_t i = 0; i < NFILES; i++)
		if (dbconv_scan_calls(k_files[i], "store_q(", 1, l) == 0)
			fail_msg("%s: no store_q() statement found (moved? update k_files)", k_files[i]);
}

static void prepare_all(enum db_backend kind)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;

	scan_all(&l);
	dbconv_prepare_all(kind, &l, NULL);
	dbconv_sql_clear(&l);
}

static void every_statement_prepares_on_sqlite(void **state)
{
	(void)state;
	prepare_all(DB_SQLITE);
}

static void every_statement_prepares_on_postgres(void **state)
{
	(void)state;
	prepare_all(DB_POSTGRES);
}

/* the scan itself finds what it should: a dialect problem it would miss
 * is no problem it checks */
static void the_scan_finds_joined_literals_and_the_old_dialect_fails(void **state)
{
	struct dbconv_sql l = DBCONV_SQL_INIT;
	struct store *s;
	struct db_stmt *st = NULL;
	int joined = 0;

	(void)state;
	dbconv_need_pg();
	scan_all(&l);
	for (size_t i = 0; i < l.sql.n; i++)
		joined |= strstr(l.sql.v[i], "DO UPDATE SET cutoff = MAX(device_revocations.cutoff, excluded.cutoff),"
					    " at = excluded.at") != NULL;
	assert_true(joined);
	/* fleet_ca_db.c's statement as it was: SUM of a boolean, which
	 * PostgreSQL refuses, so preparing is the check that catches it */
	s = dbconv_open_store(DB_POSTGRES);
	assert_true(db_prepare(store_conn(s), &st, "SELECT COUNT(*), COALESCE(SUM(revoked_at IS NULL AND not_after > ?), 0)"
						   " FROM device_certs WHERE device = ?") < 0);
	assert_null(st);
	store_close(s);
	dbconv_sql_clear(&l);
}

/* ---- the device CA's tables, with rows, on both backends ------------------- */

struct issued {
	const char *device, *product, *prov;
	char *pem;
	char serial[41];
	int64_t nb, na;
};

static struct fleet_ca *g_ca;
static struct issued g_certs[] = {
	{ "fab1-0001", "sensor", "fab1", NULL, "", 0, 0 },
	{ "fab1-0002", "sensor", "fab1", NULL, "", 0, 0 },
	{ "admin-0001", NULL, NULL, NULL, "", 0, 0 },
};
#define NCERTS (sizeof(g_certs) / sizeof(g_certs[0]))

/* A CSR for cn, from a new P-256 key. */
static char *make_csr(const char *cn)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509_REQ *r = X509_REQ_new();
	X509_NAME *n = X509_NAME_new();
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *pem;
	long len;

	assert_non_null(k);
	assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0));
	assert_true(X509_REQ_set_subject_name(r, n));
	assert_true(X509_REQ_set_pubkey(r, k));
	assert_true(X509_REQ_sign(r, k, EVP_sha256()) > 0);
	assert_true(PEM_write_bio_X509_REQ(b, r));
	len = BIO_get_mem_data(b, &data);
	pem = xmalloc((size_t)len + 1);
	memcpy(pem, data, (size_t)len);
	pem[len] = '\0';
	BIO_free(b);
	X509_NAME_free(n);
	X509_REQ_free(r);
	EVP_PKEY_free(k);
	return pem;
}

/* A device CA in the temporary directory, and one real certificate per
 * g_certs entry: both backends store the same ones. */
static int issue_certificates(void **state)
{
	char *dir = xasprintf("%s/devca", dbconv_tmpdir()), *cert = xasprintf("%s/ca.pem", dir), *key = xasprintf("%s/ca.key", dir);
	struct fleet_ca_config cfg = { 0 };

	if (fleet_ca_create_files(dir, "dbconv test CA", 2) < 0)
		fail_msg("CA: %s", ota_error_last());
	cfg.cert_file = cert;
	cfg.key_file = key;
	if (fleet_ca_open(&g_ca, &cfg) < 0)
		fail_msg("CA open: %s", ota_error_last());
	assert_int_equal(fleet_ca_state(g_ca), 2);
	for (size_t i = 0; i < NCERTS; i++) {
		struct issued *c = &g_certs[i];
		char *pem = make_csr(c->device);
		void *csr = NULL;
		if (fleet_ca_csr_parse(&csr, pem, strlen(pem), c->device) < 0 ||
		    fleet_ca_issue(g_ca, csr, c->device, c->product, &c->pem, c->serial, &c->nb, &c->na) < 0)
			fail_msg("issue %s: %s", c->device, ota_error_last());
		fleet_ca_csr_free(csr);
		free(pem);
	}
	free(dir);
	free(cert);
	free(key);
	(void)state;
	return 0;
}

#define T0 1700000000000LL /* ms: the scenario's clock */
#define S0 1700000000LL    /* s: revocation cutoffs */

static int64_t live_certs(struct store *s, const char *device, int64_t now_s, int64_t *certs)
{
	int64_t live = -1;
	if (fleet_ca_store_device_certs(s, device, now_s, certs, &live) < 0)
		fail_msg("device_certs %s: %s", device, ota_error_last());
	return live;
}

static void add_prov(struct store *s, const char *name, const char *prefix, json_t *products, int64_t max,
		     const char *token, int64_t now_ms, int want)
{
	char hash[65];
	struct fleet_ca_prov p = { name, hash, prefix, products, max, 0, 60 };

	auth_sha256_hex(token, hash);
	dbconv_begin(s);
	assert_int_equal(fleet_ca_store_prov_add(s, &p, "admin", now_ms), want);
	if (want == 0)
		dbconv_commit(s);
	else
		store_rollback(s);
}

/*
 * The device CA's life on one backend: provisioners added, certificates
 * stored and looked up, a device revoked twice (the later cutoff stays),
 * a provisioner revoked with its devices, its name taken over, everything
 * loaded back into a CA's memory.  Asserts what it knows, and returns
 * what both backends must agree on.
 */
static json_t *ca_life(struct store *s)
{
	json_t *sensor = json_pack("[s]", "sensor"), *out = json_object(), *list;
	struct fleet_ca *mem = NULL;
	struct fleet_ca_config none = { 0 };
	int64_t issued = -1, max = -1, certs = -1, revoked = -1, retry = 0;
	char name[65] = "";

	add_prov(s, "fab1", "fab1-", sensor, 2, "fab1-token", T0, 0);
	add_prov(s, "fab2", "fab2-", NULL, 5, "fab2-token", T0 + 1, 0);
	/* a name in use is refused, and changes nothing */
	add_prov(s, "fab1", "other-", NULL, 9, "fab1-token-b", T0 + 2, OTA_ECONFLICT);

	/* issue: each certificate stored, and counted against its provisioner */
	dbconv_begin(s);
	for (size_t i = 0; i < NCERTS; i++) {
		struct fleet_ca_cert c = { g_certs[i].serial, g_certs[i].device, g_certs[i].product, g_certs[i].prov,
					   g_certs[i].pem, g_certs[i].nb, g_certs[i].na };
		if (fleet_ca_store_cert_add(s, &c, T0 + 10 + (int64_t)i) < 0)
			fail_msg("cert_add %s: %s", c.device, ota_error_last());
	}
	dbconv_commit(s);
	assert_int_equal(fleet_ca_store_quota(s, "fab1", &issued, &max), 0);
	assert_int_equal(issued, 2);
	assert_int_equal(max, 2);
	json_object_set_new(out, "quota", json_pack("[II]", (json_int_t)issued, (json_int_t)max));

	/* lookup: live while valid, not once expired, not for a stranger */
	assert_int_equal(live_certs(s, "fab1-0001", g_certs[0].nb + 1, &certs), 1);
	assert_int_equal(certs, 1);
	assert_int_equal(live_certs(s, "admin-0001", g_certs[2].na + 1, &certs), 0);
	assert_int_equal(certs, 1);
	assert_int_equal(live_certs(s, "nobody", g_certs[0].nb, &certs), 0);
	assert_int_equal(certs, 0);

	/* revoke a device, then again with an earlier cutoff: the later stays */
	dbconv_begin(s);
	assert_int_equal(fleet_ca_store_revoke(s, "fab1-0001", S0 + 10, T0 + 20, "admin", "lost", &revoked), 0);
	dbconv_commit(s);
	assert_int_equal(revoked, 1);
	dbconv_begin(s);
	assert_int_equal(fleet_ca_store_revoke(s, "fab1-0001", S0 + 5, T0 + 21, "admin", NULL, &revoked), 0);
	dbconv_commit(s);
	assert_int_equal(revoked, 0);
	list = dbconv_rows(s, "SELECT cutoff, reason FROM device_revocations WHERE device = 'fab1-0001'");
	assert_int_equal(json_integer_value(json_array_get(json_array_get(list, 0), 0)), S0 + 10);
	assert_string_equal(json_string_value(json_array_get(json_array_get(list, 0), 1)), "");
	json_decref(list);
	assert_int_equal(live_certs(s, "fab1-0001", g_certs[0].nb + 1, &certs), 0);
	assert_int_equal(certs, 1);

	/* a provisioner revoked with the devices it provisioned */
	list = json_array();
	assert_int_equal(fleet_ca_store_prov_devices(s, "fab1", list), 0);
	json_object_set_new(out, "fab1_devices", list);
	list = json_array();
	dbconv_begin(s);
	assert_int_equal(fleet_ca_store_prov_revoke(s, "fab1", 1, S0 + 20, T0 + 30, "admin", list), 0);
	dbconv_commit(s);
	assert_int_equal(json_array_size(list), 2);
	json_object_set_new(out, "fab1_revoked", list);
	list = json_array();
	dbconv_begin(s);
	assert_int_equal(fleet_ca_store_prov_revoke(s, "nobody", 0, S0 + 21, T0 + 31, "admin", list), OTA_ENOTFOUND);
	store_rollback(s);
	dbconv_begin(s);
	assert_int_equal(fleet_ca_store_prov_revoke(s, "fab2", 0, S0 + 22, T0 + 32, "admin", list), 0);
	dbconv_commit(s);
	assert_int_equal(json_array_size(list), 0);
	json_decref(list);
	assert_int_equal(fleet_ca_store_quota(s, "fab1", &issued, &max), OTA_ENOTFOUND);

	/* a revoked provisioner's name is taken over, from a count of 0 */
	add_prov(s, "fab1", "fab1-", sensor, 3, "fab1-token-2", T0 + 40, 0);
	assert_int_equal(fleet_ca_store_quota(s, "fab1", &issued, &max), 0);
	assert_int_equal(issued, 0);
	assert_int_equal(max, 3);

	json_object_set_new(out, "provisioners", fleet_ca_store_prov_list(s));
	json_object_set_new(out, "revocations", dbconv_rows(s, "SELECT device, cutoff, at, actor, reason FROM device_revocations"
							" ORDER BY device"));
	json_object_set_new(out, "certificates", dbconv_rows(s, "SELECT serial, device, product, provisioner, not_before, not_after,"
							 " issued_at, revoked_at, pem FROM device_certs ORDER BY serial"));

	/* the installed CA's row removed (a stolen key): gone, marked, never
	 * put back; another CA goes in */
	{
		char sha[65], *cert = NULL, *sealed = NULL;
		json_t *rec = json_pack("{ss ss}", "actor", "ops", "reason", "key stolen");
		assert_int_equal(fleet_ca_pem_sha256(g_certs[0].pem, sha), 0);
		dbconv_begin(s);
		assert_int_equal(fleet_ca_store_ca_put(s, g_certs[0].pem, "v1:sealed", T0 + 50), 0);
		dbconv_commit(s);
		assert_int_equal(fleet_ca_store_ca_removed(s, sha), 0);
		dbconv_begin(s);
		assert_int_equal(fleet_ca_store_ca_remove(s, sha, rec), 0);
		dbconv_commit(s);
		json_decref(rec);
		assert_int_equal(fleet_ca_store_ca_get(s, &cert, &sealed), 0);
		assert_int_equal(fleet_ca_store_ca_removed(s, sha), 1);
		dbconv_begin(s);
		assert_int_equal(fleet_ca_store_ca_put(s, g_certs[0].pem, "v1:sealed", T0 + 51), OTA_ECONFLICT);
		store_rollback(s);
		dbconv_begin(s);
		assert_int_equal(fleet_ca_store_ca_put(s, g_certs[1].pem, NULL, T0 + 52), 0);
		dbconv_commit(s);
		json_object_set_new(out, "device_ca", dbconv_rows(s, "SELECT k, cert_pem, key_sealed, created_at FROM device_ca"));
		json_object_set_new(out, "removed_marks", dbconv_rows(s, "SELECT key, value FROM meta"
									 " WHERE key LIKE 'device_ca_removed:%' ORDER BY key"));
	}

	/* loaded into a CA's memory, as otacd's start does */
	if (fleet_ca_open(&mem, &none) < 0)
		fail_msg("CA open: %s", ota_error_last());
	assert_int_equal(fleet_ca_store_load(s, mem), 0);
	assert_int_equal(fleet_ca_revoked_at(mem, "fab1-0001"), S0 + 20);
	assert_int_equal(fleet_ca_revoked_at(mem, "fab1-0002"), S0 + 20);
	assert_int_equal(fleet_ca_revoked_at(mem, "admin-0001"), 0);
	json_object_set_new(out, "loaded_cutoffs", json_pack("[III]", (json_int_t)fleet_ca_revoked_at(mem, "fab1-0001"),
							     (json_int_t)fleet_ca_revoked_at(mem, "fab1-0002"),
							     (json_int_t)fleet_ca_revoked_at(mem, "admin-0001")));
	/* the new fab1 token is the one that works; fab2 is gone */
	assert_int_equal(fleet_ca_prov_admit(mem, "fab1-token-2", "fab1-0003", "sensor", name, &retry), 0);
	assert_string_equal(name, "fab1");
	assert_int_equal(fleet_ca_prov_admit(mem, "fab1-token", "fab1-0004", "sensor", name, &retry), OTA_EAUTH);
	assert_int_equal(fleet_ca_prov_admit(mem, "fab2-token", "fab2-0001", NULL, name, &retry), OTA_EAUTH);
	fleet_ca_close(mem);
	json_decref(sensor);
	return out;
}

static void device_ca_rows_give_the_same_answers_on_both_backends(void **state)
{
	struct store *s;
	json_t *lite, *pg;

	(void)state;
	dbconv_need_pg();
	s = dbconv_open_store(DB_SQLITE);
	lite = ca_life(s);
	store_close(s);
	s = dbconv_open_store(DB_POSTGRES);
	pg = ca_life(s);
	store_close(s);
	/* the certificates went in and came back byte for byte */
	for (size_t i = 0; i < NCERTS; i++) {
		json_t *row, *rows_ = json_object_get(pg, "certificates");
		size_t k;
		int seen = 0;
		json_array_foreach(rows_, k, row)
			if (!strcmp(json_string_value(json_array_get(row, 0)), g_certs[i].serial)) {
				assert_string_equal(json_string_value(json_array_get(row, 8)), g_certs[i].pem);
				seen = 1;
			}
		assert_true(seen);
	}
	dbconv_must_agree("the device CA's rows", lite, pg);
	json_decref(lite);
	json_decref(pg);
}

/* ---- a verdict's reports and baseline (reports_kind.c) ---------------------- */

/* A run of pipeline fw on ref in state, with an "analysis" stage and one
 * job at attempt, and one report per body; the job's id. */
static int64_t run_with_reports(struct store *s, const char *ref, const char *state, int attempt,
				const char *const *bodies, int64_t *run)
{
	int64_t stage, job;

	*run = dbconv_insert(s, "INSERT INTO runs(pipeline, file, yaml, ref, state, trigger, created_at)"
				" VALUES ('fw', 'fw.yml', '', ?, ?, 'push', 1) RETURNING id", "tt", ref, state);
	stage = dbconv_insert(s, "INSERT INTO stages(run_id, idx, name, kind, state, needs) VALUES (?, 0, 'analysis',"
				 " 'analysis', ?, '[]') RETURNING id", "it", *run, state);
	job = dbconv_insert(s, "INSERT INTO jobs(run_id, stage_id, idx, name, spec, state, attempt, retries_left,"
			       " infra_retries_left) VALUES (?, ?, 0, 'lint', '{}', ?, ?, 0, 0) RETURNING id", "iiti", *run, stage,
			    state, (int64_t)attempt);
	for (int i = 0; bodies[i]; i++) {
		char name[16];
		snprintf(name, sizeof(name), "r%d.xml", i);
		dbconv_insert(s, "INSERT INTO reports(run_id, job_id, attempt, format, name, summary, body, created_at)"
				 " VALUES (?, ?, ?, 'cppcheck', ?, '', ?, 1) RETURNING id", "iiitt", *run, job, (int64_t)attempt,
			      name, bodies[i]);
	}
	return job;
}

static json_t *verdict_inputs(struct store *s)
{
	static const char *const old[] = { "{\"errors\":3}", "{\"errors\":4}", NULL };
	static const char *const older[] = { "{\"errors\":9}", NULL };
	static const char *const now[] = { "{\"errors\":1}", "not json", NULL };
	json_t *spec = json_pack("{ss s{ss}}", "stage", "analysis", "extra", "baseline", "main");
	json_t *reports = NULL, *baseline = NULL, *out;
	int64_t run, base_run, job, found = -1;

	run_with_reports(s, "refs/heads/main", "passed", 1, older, &run);
	run_with_reports(s, "refs/heads/main", "passed", 1, old, &base_run);
	run_with_reports(s, "refs/heads/main", "failed", 1, older, &run);
	run_with_reports(s, "refs/heads/dev", "passed", 1, older, &run);
	job = run_with_reports(s, "refs/heads/dev", "running", 2, now, &run);
	if (rk_load_for_verdict(s, run, job, 2, spec, &reports, &baseline, &found) < 0)
		fail_msg("rk_load_for_verdict: %s", ota_error_last());
	/* the latest passed run of main is the baseline; a body that is not
	 * JSON reads as {} in the reports and is left out of the baseline */
	assert_int_equal(found, base_run);
	assert_int_equal(json_array_size(reports), 2);
	assert_int_equal(json_array_size(baseline), 2);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(baseline, 1), "errors")), 4);
	assert_int_equal(json_object_size(json_object_get(json_array_get(reports, 1), "body")), 0);
	out = json_pack("{so so*}", "reports", reports, "baseline", baseline);
	json_decref(spec);
	return out;
}

static void verdict_reports_and_baseline_load_the_same_on_both_backends(void **state)
{
	struct store *s;
	json_t *lite, *pg;

	(void)state;
	dbconv_need_pg();
	s = dbconv_open_store(DB_SQLITE);
	lite = verdict_inputs(s);
	store_close(s);
	s = dbconv_open_store(DB_POSTGRES);
	pg = verdict_inputs(s);
	store_close(s);
	dbconv_must_agree("verdict reports and baseline", lite, pg);
	json_decref(lite);
	json_decref(pg);
}

/* ---- main --------------------------------------------------------------------- */

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_statement_prepares_on_sqlite),
		cmocka_unit_test(every_statement_prepares_on_postgres),
		cmocka_unit_test(the_scan_finds_joined_literals_and_the_old_dialect_fails),
		cmocka_unit_test(device_ca_rows_give_the_same_answers_on_both_backends),
		cmocka_unit_test(verdict_reports_and_baseline_load_the_same_on_both_backends),
	};
	int rc;

	dbconv_start("test_dbconv_misc");
	rc = cmocka_run_group_tests_name("dbconv_misc", tests, issue_certificates, NULL);
	dbconv_finish();
	for (size_t i = 0; i < NCERTS; i++)
		free(g_certs[i].pem);
	fleet_ca_close(g_ca);
	return rc;
}
