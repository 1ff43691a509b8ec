/*
 * xmlload.c - libxml2 loaded on first use; see xmlload.h for why.
 */
#include "xmlload.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static struct xmlload api;
static int loaded;
static char load_error[256];

/* dlsym into *slot (a function pointer of the table); 0 or -1. */
static int sym(void *lib, const char *name, void *slot)
{
	void *p = dlsym(lib, name);
	if (!p) {
		snprintf(load_error, sizeof(load_error), "%s: no symbol %s", XMLLOAD_SONAME, name);
		return -1;
	}
	memcpy(slot, &p, sizeof(p)); /* object to function pointer, as POSIX dlsym allows */
	return 0;
}

static void load(void)
{
	/* RTLD_LOCAL: its symbols (and ICU's) stay out of the global scope */
	void *lib = dlopen(XMLLOAD_SONAME, RTLD_NOW | RTLD_LOCAL);
	__typeof__(&xmlInitParser) init_parser;

	if (!lib) {
		snprintf(load_error, sizeof(load_error), "cannot load %s (libxml2, for XML reports): %s", XMLLOAD_SONAME,
			 dlerror());
		return;
	}
	if (sym(lib, "xmlInitParser", &init_parser) < 0 || sym(lib, "xmlNewParserCtxt", &api.new_parser_ctxt) < 0 ||
	    sym(lib, "xmlCtxtReadMemory", &api.ctxt_read_memory) < 0 ||
	    sym(lib, "xmlFreeParserCtxt", &api.free_parser_ctxt) < 0 || sym(lib, "xmlFreeDoc", &api.free_doc) < 0 ||
	    sym(lib, "xmlDocGetRootElement", &api.doc_get_root_element) < 0 ||
	    sym(lib, "xmlGetLineNo", &api.get_line_no) < 0 || sym(lib, "xmlStopParser", &api.stop_parser) < 0 ||
	    sym(lib, "xmlSetGenericErrorFunc", &api.set_generic_error_func) < 0 ||
	    sym(lib, "__xmlGenericError", &api.generic_error) < 0 ||
	    sym(lib, "__xmlGenericErrorContext", &api.generic_error_context) < 0)
		return; /* the handle stays: a half-usable library is not unloaded under a caller */
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
