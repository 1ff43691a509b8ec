/*
 * trustdb.c - the release-signing revocation list in the database; see
 * trustdb.h and docs/scale.md ("What every instance must share").
 *
 * Why: the list used to be a file of the state directory, so with several
 * instances a list published through the leader stayed unknown to the
 * followers, which went on verifying releases against the old one.  Now
 * the database is the only copy; memory (pki.c's trust state) is a cache
 * each instance refills from it.
 */
#include "trustdb.h"

#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "clock.h"
#include "commitwatch.h"
#include "db/db.h"
#include "engine_int.h"
#include "pki.h"
#include "store.h"

static const char newest_sql[] = "SELECT number, pem FROM release_crls ORDER BY number DESC LIMIT 1";
static const char max_sql[] = "SELECT COALESCE(MAX(number), 0) FROM release_crls";
static const char insert_sql[] = "INSERT INTO release_crls(number, pem, published_at, actor) VALUES (?,?,?,?)";
static const char audit_sql[] = "INSERT INTO audit(at, actor, action, reason, detail) VALUES (?,?,?,?,?)";

void trustdb_sql_each(void (*fn)(const char *sql, void *arg), void *arg)
{
	fn(newest_sql, arg);
	fn(max_sql, arg);
	fn(insert_sql, arg);
	fn(audit_sql, arg);
}

/* The database's newest number (0: none) into *out. */
static int db_newest(struct store *s, int64_t *out)
{
	return db_query_int64(store_conn(s), max_sql, out);
}

static int insert_row(struct store *s, int64_t number, const char *pem, const char *actor)
{
	struct db_stmt *st = store_q(s, insert_sql);

	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, number);
	db_bind_text(st, 2, pem);
	db_bind_int64(st, 3, clock_now_ms());
	db_bind_text(st, 4, actor ? actor : "");
	return db_run(st);
}

struct publish {
	const char *pem, *actor;
	int64_t number;
};

/* Engine thread: the row, the audit entry and CW_AUTH in one transaction. */
static int do_publish(struct engine *e, void *arg)
{
	struct publish *p = arg;
	struct store *s = engine_store(e);
	int64_t held = 0;
	int rc;

	if ((rc = db_newest(s, &held)) < 0)
		return rc;
	if (held < pki_trust_crl_number())
		held = pki_trust_crl_number();
	if (p->number <= held)
		return ota_error_set(OTA_ECONFLICT, "revocation list %lld is not newer than the held list %lld",
				     (long long)p->number, (long long)held);
	if ((rc = insert_row(s, p->number, p->pem, p->actor)) < 0)
		return rc;
	engine_auth_changed(e);
	return engine_audit(e, p->actor, "revocations_published", 0, 0, "revocation list published",
			    json_pack("{sI}", "number", (json_int_t)p->number));
}

int trustdb_publish(struct engine *e, const char *pem, size_t len, const char *actor, int64_t *number)
{
	struct publish p = { NULL, actor, 0 };
	struct buf canon = BUF_INIT;
	X509_CRL *crl = NULL;
	int rc;

	if ((rc = pki_trust_parse(&crl, &p.number, pem, len)) < 0)
		return rc;
	/* the list as PEM alone: nothing around it reaches the database */
	if ((rc = pki_crl_pem(crl, &canon)) < 0)
		goto out;
	p.pem = buf_cstr(&canon);
	if ((rc = engine_exec(e, do_publish, &p)) < 0)
		goto out;
	pki_trust_install(crl, p.number);
	crl = NULL;
	*number = p.number;
out:
	X509_CRL_free(crl);
	buf_release(&canon);
	return rc;
}

int trustdb_reload(struct store *db)
{
	struct db_stmt *st;
	X509_CRL *crl = NULL;
	int64_t number = 0, checked = 0;
	char *pem = NULL;
	int rc;

	if (!pki_trust_root())
		return 0;
	if (!(st = store_q(db, newest_sql)))
		return OTA_ERROR;
	if ((rc = db_step(st)) == 1) {
		number = db_column_int64(st, 0);
		if (number > pki_trust_crl_number() && db_column_text(st, 1))
			pem = xstrdup(db_column_text(st, 1));
	}
	db_reset(st);
	if (rc < 0 || !pem)
		return rc < 0 ? rc : 0;
	if ((rc = pki_trust_parse(&crl, &checked, pem, strlen(pem))) == 0 && checked != number)
		rc = ota_error_set(OTA_EAUTH, "release_crls: row %lld holds list %lld", (long long)number,
				   (long long)checked);
	if (rc < 0) {
		X509_CRL_free(crl);
		ota_error_prefix("revocation list %lld in the database", (long long)number);
	} else {
		pki_trust_install(crl, checked);
	}
	free(pem);
	return rc;
}

/* The held list (the file's) into the database, in one transaction with
 * its audit entry and CW_AUTH for the other instances. */
static int import_file(struct store *s, int64_t number)
{
	struct db *c = store_conn(s);
	struct buf pem = BUF_INIT;
	X509_CRL *crl = pki_trust_crl();
	char detail[64];
	int64_t newest = 0;
	int rc;

	if ((rc = pki_crl_pem(crl, &pem)) < 0 || (rc = db_begin(c)) < 0)
		goto out;
	if ((rc = db_newest(s, &newest)) < 0 || newest >= number)
		goto done;
	if ((rc = insert_row(s, number, buf_cstr(&pem), "otacd")) < 0)
		goto done;
	{
		struct db_stmt *st = store_q(s, audit_sql);
		if (!st) {
			rc = OTA_ERROR;
			goto done;
		}
		snprintf(detail, sizeof(detail), "{\"number\":%lld}", (long long)number);
		db_bind_int64(st, 1, clock_now_ms());
		db_bind_text(st, 2, "otacd");
		db_bind_text(st, 3, "revocations_imported");
		db_bind_text(st, 4, "revocation list imported from the state directory (revocations.crl.pem)");
		db_bind_text(st, 5, detail);
		if ((rc = db_run(st)) < 0 || (rc = commitwatch_announce(c, CW_AUTH)) < 0)
			goto done;
	}
	if ((rc = db_commit(c)) == 0)
		ota_log(OTA_LOG_INFO, "revocation list %lld imported from the state directory into the database",
			(long long)number);
	goto out;
done:
	db_rollback(c);
	if (rc == 0 && newest > number)
		ota_log(OTA_LOG_INFO, "STATE/revocations.crl.pem (list %lld) is older than the database's (%lld):"
				      " ignored", (long long)number, (long long)newest);
out:
	X509_CRL_free(crl);
	buf_release(&pem);
	return rc;
}

int trustdb_import(struct store *db)
{
	int64_t number = pki_trust_crl_number();
	int rc;

	if (!pki_trust_root())
		return 0;
	if (number > 0 && (rc = import_file(db, number)) < 0) {
		ota_error_prefix("importing STATE/revocations.crl.pem");
		return rc;
	}
	return trustdb_reload(db);
}
