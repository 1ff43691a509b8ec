/*
 * pgload.c - libpq loaded on first use; see pgload.h for why.
 */
#include "pgload.h"

#include <pthread.h>

#include "../../common/libload.h"

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static struct pgload api;
static int loaded;
static char load_error[256];

static void load(void)
{
	static const struct libload_sym syms[] = {
		{ "PQconnectdb", &api.connectdb },
		{ "PQfinish", &api.finish },
		{ "PQstatus", &api.status },
		{ "PQtransactionStatus", &api.transaction_status },
		{ "PQerrorMessage", &api.error_message },
		{ "PQexec", &api.exec },
		{ "PQprepare", &api.prepare },
		{ "PQexecPrepared", &api.exec_prepared },
		{ "PQresultStatus", &api.result_status },
		{ "PQresultErrorField", &api.result_error_field },
		{ "PQresultErrorMessage", &api.result_error_message },
		{ "PQcmdStatus", &api.cmd_status },
		{ "PQcmdTuples", &api.cmd_tuples },
		{ "PQntuples", &api.ntuples },
		{ "PQnfields", &api.nfields },
		{ "PQftype", &api.ftype },
		{ "PQgetisnull", &api.getisnull },
		{ "PQgetlength", &api.getlength },
		{ "PQgetvalue", &api.getvalue },
		{ "PQunescapeBytea", &api.unescape_bytea },
		{ "PQfreemem", &api.freemem },
		{ "PQclear", &api.clear },
		{ "PQescapeIdentifier", &api.escape_identifier },
		{ "PQsetNoticeProcessor", &api.set_notice_processor },
		{ "PQnotifies", &api.notifies },
		{ "PQconsumeInput", &api.consume_input },
		{ "PQsocket", &api.socket },
		{ "PQconninfoParse", &api.conninfo_parse },
		{ "PQconninfoFree", &api.conninfo_free },
	};

	loaded = libload_open(PGLOAD_SONAME, "PostgreSQL databases", syms, sizeof(syms) / sizeof(syms[0]), load_error,
			      sizeof(load_error)) == 0;
}

const struct pgload *pgload_get(void)
{
	pthread_once(&load_once, load);
	return loaded ? &api : NULL;
}

const char *pgload_error(void)
{
	pthread_once(&load_once, load);
	return loaded ? "" : load_error;
}
