/*
 * xmlload.c - libxml2 loaded on first use; see xmlload.h for why.
 */
#include "xmlload.h"

#include <pthread.h>

#include "../common/libload.h"

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static struct xmlload api;
static int loaded;
static char load_error[256];

static void load(void)
{
	__typeof__(&xmlInitParser) init_parser;
	const struct libload_sym syms[] = {
		{ "xmlInitParser", &init_parser },
		{ "xmlNewParserCtxt", &api.new_parser_ctxt },
		{ "xmlCtxtReadMemory", &api.ctxt_read_memory },
		{ "xmlFreeParserCtxt", &api.free_parser_ctxt },
		{ "xmlFreeDoc", &api.free_doc },
		{ "xmlDocGetRootElement", &api.doc_get_root_element },
		{ "xmlGetLineNo", &api.get_line_no },
		{ "xmlStopParser", &api.stop_parser },
		{ "xmlSetGenericErrorFunc", &api.set_generic_error_func },
		{ "__xmlGenericError", &api.generic_error },
		{ "__xmlGenericErrorContext", &api.generic_error_context },
	};

	/* RTLD_LOCAL (libload.h): its symbols (and ICU's) stay out of the global scope */
	if (libload_open(XMLLOAD_SONAME, "XML reports", syms, sizeof(syms) / sizeof(syms[0]), load_error,
			 sizeof(load_error)) < 0)
		return;
	init_parser();
	loaded = 1;
}

const struct xmlload *xmlload_get(void)
{
	pthread_once(&load_once, load);
	return loaded ? &api : NULL;
}

const char *xmlload_error(void)
{
	pthread_once(&load_once, load);
	return loaded ? "" : load_error;
}
