/*
 * xmlload.h - libxml2, loaded the first time a report is parsed.
 *
 * otacd reads XML only for JUnit and cppcheck reports (reports.c), yet
 * linking libxml2 maps it and, through it, ICU and libstdc++ into the
 * daemon from the start, and their relocations and constructors touch
 * about 1.7 MB of it on every start (issue 18, idle Rss; docs/benchmarks.md
 * "Memory").  So libxml2 is dlopen()ed on first use instead, and reached
 * through this table, whose types are libxml2's own prototypes (typeof),
 * so a mismatch does not compile.
 *
 *   const struct xmlload *x = xmlload_get();
 *   if (!x) return ota_error_set(OTA_ERROR, "%s", xmlload_error());
 *   doc = x->ctxt_read_memory(ctxt, ...);
 *
 * Loaded once per process (pthread_once), never unloaded; xmlInitParser
 * has run when xmlload_get returns the table.  Any thread.
 */
#ifndef OTA_XMLLOAD_H
#define OTA_XMLLOAD_H

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

/* The soname otacd was built against (libxml2's ABI). */
#define XMLLOAD_SONAME "libxml2.so.2"

struct xmlload {
	__typeof__(&xmlNewParserCtxt) new_parser_ctxt;
	__typeof__(&xmlCtxtReadMemory) ctxt_read_memory;
	__typeof__(&xmlFreeParserCtxt) free_parser_ctxt;
	__typeof__(&xmlFreeDoc) free_doc;
	__typeof__(&xmlDocGetRootElement) doc_get_root_element;
	__typeof__(&xmlGetLineNo) get_line_no;
	__typeof__(&xmlStopParser) stop_parser;
	__typeof__(&xmlSetGenericErrorFunc) set_generic_error_func;
	/* the per-thread generic handler behind the xmlGenericError and
	 * xmlGenericErrorContext macros */
	__typeof__(&__xmlGenericError) generic_error;
	__typeof__(&__xmlGenericErrorContext) generic_error_context;
};

/* The table, or NULL when libxml2 cannot be loaded (xmlload_error says
 * why; every later call answers the same). */
const struct xmlload *xmlload_get(void);
const char *xmlload_error(void);

#endif
