/*
 * pgload.h - libpq, loaded when the first PostgreSQL database is opened.
 *
 * Most otacd installations keep their state in SQLite; linked, libpq and
 * what it links (Kerberos, LDAP, SASL) are mapped into every otacd anyway
 * (common/libload.h, issue 18).  db_pg.c reaches libpq through this
 * table instead; its types are libpq's own prototypes (typeof), so a
 * mismatch does not compile.
 *
 *   const struct pgload *pq = pgload_get();
 *   if (!pq) return ota_error_set(OTA_ERROR, "%s", pgload_error());
 *   res = pq->exec(conn, "SELECT 1");
 *
 * Loaded once per process (pthread_once), never unloaded.  Any thread.
 */
#ifndef OTA_PGLOAD_H
#define OTA_PGLOAD_H

#include <libpq-fe.h>

/* The soname otacd was built against (libpq's ABI). */
#define PGLOAD_SONAME "libpq.so.5"

struct pgload {
	__typeof__(&PQconnectdb) connectdb;
	__typeof__(&PQfinish) finish;
	__typeof__(&PQstatus) status;
	__typeof__(&PQtransactionStatus) transaction_status;
	__typeof__(&PQerrorMessage) error_message;
	__typeof__(&PQexec) exec;
	__typeof__(&PQprepare) prepare;
	__typeof__(&PQexecPrepared) exec_prepared;
	__typeof__(&PQresultStatus) result_status;
	__typeof__(&PQresultErrorField) result_error_field;
	__typeof__(&PQresultErrorMessage) result_error_message;
	__typeof__(&PQcmdStatus) cmd_status;
	__typeof__(&PQcmdTuples) cmd_tuples;
	__typeof__(&PQntuples) ntuples;
	__typeof__(&PQnfields) nfields;
	__typeof__(&PQftype) ftype;
	__typeof__(&PQgetisnull) getisnull;
	__typeof__(&PQgetlength) getlength;
	__typeof__(&PQgetvalue) getvalue;
	__typeof__(&PQunescapeBytea) unescape_bytea;
	__typeof__(&PQfreemem) freemem;
	__typeof__(&PQclear) clear;
	/* db_notify.c's listener */
	__typeof__(&PQescapeIdentifier) escape_identifier;
	__typeof__(&PQsetNoticeProcessor) set_notice_processor;
	__typeof__(&PQnotifies) notifies;
	__typeof__(&PQconsumeInput) consume_input;
	__typeof__(&PQsocket) socket;
	/* backup_pg.c: the URL taken apart for pg_dump/pg_restore */
	__typeof__(&PQconninfoParse) conninfo_parse;
	__typeof__(&PQconninfoFree) conninfo_free;
};

/* The table, or NULL when libpq cannot be loaded (pgload_error says why;
 * every later call answers the same). */
const struct pgload *pgload_get(void);
const char *pgload_error(void);

#endif
