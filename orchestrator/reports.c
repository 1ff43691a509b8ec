/*
 * reports.c - JUnit XML, cppcheck XML and SARIF into one JSON shape each;
 * see reports.h.
 *
 * Reports come from jobs, so from whatever the tested code printed: every
 * byte is untrusted.  XML is read by libxml2 into a tree with no network,
 * no DTD loading and no entity substitution, and the parser context's SAX
 * entityDecl / unparsedEntityDecl hooks are replaced by one that stops the
 * parse at the first <!ENTITY ...> declaration.  A billion-laughs or XXE
 * document is therefore refused while its DTD is being read, before any
 * reference could be expanded or any file opened; the tree is checked once
 * more afterwards (intSubset entities) in case a declaration slipped past.
 * Errors go to the context's own structured handler, which keeps the
 * first one (later ones are mostly its echoes), so they are per call and
 * per thread, read "name:LINE: message", and never reach stderr.
 *
 * The tree is walked once through children/next pointers (no XPath), and
 * attributes are read in place from their text node (no xmlGetProp copy);
 * cases and findings are appended to jansson arrays, so a parse is linear
 * in the size of the document.  libxml2's own limits bound the walk: at
 * most 256 levels of nesting and 10 MB per text node (no XML_PARSE_HUGE),
 * so the recursion over nested <testsuite>s is bounded too.  Before libxml2
 * sees a byte, xml_bounds() scans the markup once (linear, no allocation)
 * and refuses an element with more than REPORT_XML_MAX_ATTRS attributes or
 * nesting deeper than REPORT_XML_MAX_DEPTH: libxml2 2.9 checks an element's
 * attributes for duplicates pairwise, so 200,000 attributes on one element
 * cost minutes of CPU.
 *
 * SARIF is loaded with jansson and walked with a type check on every member
 * read; a wrong type names its JSON path ("runs[0].results[3].message:
 * expected object").  Fingerprints are SHA-256 (OpenSSL EVP, one fetched
 * digest shared by all threads) over rule NUL file NUL message.
 */
#include "reports.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "xmlload.h"

/* Per test case, the failure text plus system-out and system-err. */
#define CASE_OUTPUT_MAX (64 * 1024)
#define TRUNCATED_NOTE "\n[truncated]"
/* Most cases or findings in one report: a 64 MiB file of <testcase/>s
 * would be six million JSON objects, several GB.  Real suites stay far
 * below this. */
#define REPORT_MAX_ITEMS 250000

static const char *const formats[] = { "junit", "cppcheck", "sarif", "pmccabe", "jscpd", "power" };
static const char *const cppcheck_severities[] = { "error", "warning", "style", "performance", "portability",
						   "information" };
static const char *const sarif_levels[] = { "error", "warning", "note", "none" };

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void init(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const char *display_name(const char *name)
{
	return name && *name ? name : "report";
}

/* How much of s to quote in a message: at most max bytes, ending on a
 * whole UTF-8 character (messages travel as JSON strings). */
static int quote_len(const char *s, size_t max)
{
	size_t n = strnlen(s, max), start = n, need;
	unsigned char c;

	while (start > 0 && ((unsigned char)s[start - 1] & 0xC0) == 0x80)
		start--;
	if (start > 0) {
		c = (unsigned char)s[start - 1];
		need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
		if (n - (start - 1) < need)
			n = start - 1;
	}
	return (int)n;
}

/* Replace every byte that is not part of a valid UTF-8 sequence (and
 * control characters) with '?', in place: libxml2's messages may quote
 * names from a document that is not valid UTF-8. */
static void utf8_scrub(char *s)
{
	unsigned char *p = (unsigned char *)s;

	while (*p) {
		size_t need = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
		size_t i;
		if (need == 1) {
			if (*p < 0x20 && *p != '\t')
				*p = '?';
			p++;
			continue;
		}
		for (i = 1; need && i < need; i++)
			if ((p[i] & 0xC0) != 0x80)
				need = 0;
		/* overlong 2-byte forms and surrogates are invalid too */
		if (need == 2 && *p < 0xC2)
			need = 0;
		if (need == 3 && ((*p == 0xE0 && p[1] < 0xA0) || (*p == 0xED && p[1] >= 0xA0)))
			need = 0;
		if (need == 4 && ((*p == 0xF0 && p[1] < 0x90) || *p > 0xF4 || (*p == 0xF4 && p[1] >= 0x90)))
			need = 0;
		if (!need) {
			*p++ = '?';
			continue;
		}
		p += need;
	}
}

static int check_size(size_t len, const char *name)
{
	if (len > REPORT_MAX_BYTES)
		return ota_error_set(OTA_ETOOBIG, "%s: report is %zu bytes, more than the limit of %d MiB", name, len,
				     REPORT_MAX_BYTES / (1024 * 1024));
	return 0;
}

int report_json_load(json_t **doc, const void *data, size_t len, const char *name)
{
	json_error_t err;
	int rc;

	*doc = NULL;
	if ((rc = check_size(len, name)) < 0)
		return rc;
	if (!(*doc = json_loadb(len ? data : "", len, JSON_REJECT_DUPLICATES, &err)))
		return ota_error_set(OTA_EINVAL, "%s:%d:%d: %s", name, err.line, err.column, err.text);
	return 0;
}

/* Set key to a string when s is not NULL (and is valid UTF-8). */
static void set_str(json_t *obj, const char *key, const char *s)
{
	if (s)
		json_object_set_new_nocheck(obj, key, json_string(s));
}

static void set_int(json_t *obj, const char *key, json_int_t v)
{
	json_object_set_new_nocheck(obj, key, json_integer(v));
}

/* A non-negative decimal integer, or 0 when s is absent or not one. */
static json_int_t parse_count(const char *s)
{
	char *end;
	long long v;

	if (!s)
		return 0;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (end == s || *end || errno || v < 0)
		return 0;
	return (json_int_t)v;
}

/* Seconds as a non-negative finite number, or 0. */
static double parse_seconds(const char *s)
{
	char *end;
	double v;

	if (!s)
		return 0;
	v = strtod(s, &end);
	while (*end == ' ' || *end == '\t')
		end++;
	if (end == s || *end || !isfinite(v) || v < 0)
		return 0;
	return v;
}

/* ---- findings (cppcheck, SARIF) ----------------------------------------- */

struct findings {
	const char *name;  /* the report's, for messages */
	json_t *list;
	json_t *counts;
	EVP_MD_CTX *md;
};

static int findings_init(struct findings *f, const char *name, const char *const *severities, size_t n)
{
	f->name = name;
	f->list = json_array();
	f->counts = json_object();
	f->md = EVP_MD_CTX_new();
	if (!f->list || !f->counts || !f->md || !sha256_md)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		set_int(f->counts, severities[i], 0);
	return 0;
}

static void findings_release(struct findings *f)
{
	json_decref(f->list);
	json_decref(f->counts);
	EVP_MD_CTX_free(f->md);
	memset(f, 0, sizeof(*f));
}

static int fingerprint(struct findings *f, const char *rule, const char *file, const char *message, char hex[65])
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (EVP_DigestInit_ex(f->md, sha256_md, NULL) != 1 || EVP_DigestUpdate(f->md, rule, strlen(rule) + 1) != 1 ||
	    EVP_DigestUpdate(f->md, file, strlen(file) + 1) != 1 ||
	    EVP_DigestUpdate(f->md, message, strlen(message)) != 1 || EVP_DigestFinal_ex(f->md, d, &n) != 1 || n != 32)
		return ota_error_set(OTA_ERROR, "sha256 failed");
	ota_hex(hex, d, n);
	return 0;
}

/* One finding; rule, file and message may be NULL (hashed as ""). */
static int findings_add(struct findings *f, const char *rule, const char *severity, const char *file,
			json_int_t line, json_int_t column, const char *message)
{
	char hex[65];
	json_t *o, *count;

	if (json_array_size(f->list) >= REPORT_MAX_ITEMS)
		return ota_error_set(OTA_ETOOBIG, "%s: more than %d findings", f->name, REPORT_MAX_ITEMS);
	if (fingerprint(f, rule ? rule : "", file ? file : "", message ? message : "", hex) < 0)
		return OTA_ERROR;
	o = json_object();
	if (!o)
		return ota_error_set(OTA_ENOMEM, "out of memory");
	set_str(o, "rule", rule);
	set_str(o, "severity", severity);
	set_str(o, "file", file);
	set_int(o, "line", line);
	set_int(o, "column", column);
	set_str(o, "message", message);
	json_object_set_new_nocheck(o, "fingerprint", json_string_nocheck(hex));
	json_array_append_new(f->list, o);

	count = json_object_get(f->counts, severity);
	if (count)
		json_integer_set(count, json_integer_value(count) + 1);
	else
		set_int(f->counts, severity, 1);
	return 0;
}

/* The result object; f's arrays move into it. */
static json_t *findings_finish(struct findings *f, const char *format, const char *name)
{
	json_t *o = json_object();

	set_str(o, "format", format);
	set_str(o, "name", name);
	json_object_set_nocheck(o, "counts", f->counts);
	json_object_set_nocheck(o, "findings", f->list);
	return o;
}

/* ---- XML ----------------------------------------------------------------- */

struct xml_guard {
	int entity_line;  /* line of the first <!ENTITY>, 0 when none */
	int error_line;   /* the first error: libxml2 goes on after it, and */
	char error[256];  /* what follows is often only a consequence */
};

/* Structured error handler of one parser context (data is the context). */
static void guard_error(void *data, xmlErrorPtr e)
{
	xmlParserCtxtPtr ctxt = data;
	struct xml_guard *g = ctxt ? ctxt->_private : NULL;
	int n;

	if (!g || g->error[0] || !e || e->level < XML_ERR_ERROR || !e->message)
		return;
	/* the first line only: libxml2 may append a quote of the input */
	n = (int)strcspn(e->message, "\n");
	if (n > (int)sizeof(g->error) - 1)
		n = (int)sizeof(g->error) - 1;
	while (n > 0 && e->message[n - 1] == ' ')
		n--;
	snprintf(g->error, sizeof(g->error), "%.*s", n, e->message);
	utf8_scrub(g->error);
	g->error_line = e->line > 0 ? e->line : 1;
}

static void guard_stop(void *ctx)
{
	xmlParserCtxtPtr ctxt = ctx;
	struct xml_guard *g = ctxt->_private;

	if (g && !g->entity_line)
		g->entity_line = ctxt->input && ctxt->input->line > 0 ? ctxt->input->line : 1;
	xmlload_get()->stop_parser(ctxt); /* loaded: a parse is running */
}

static void guard_entity_decl(void *ctx, const xmlChar *name, int type, const xmlChar *public_id,
			      const xmlChar *system_id, xmlChar *content)
{
	guard_stop(ctx);
}

static void guard_unparsed_entity_decl(void *ctx, const xmlChar *name, const xmlChar *public_id,
				       const xmlChar *system_id, const xmlChar *notation)
{
	guard_stop(ctx);
}

/* libxml2 reports a few errors (input encoding) without a parser context,
 * through the per-thread generic handler, which prints to stderr: silenced
 * during a parse; the context reports the same failure anyway. */
static void xml_silent(void *ctx, const char *msg, ...)
{
}

static int dtd_has_entities(xmlDocPtr doc)
{
	xmlDtdPtr dtd = doc->intSubset;
	return dtd && (dtd->entities || dtd->pentities);
}

/*
 * Parse XML into *out; on failure the message is "name:LINE: what".  Safe
 * options only (see the top of the file); XML_PARSE_BIG_LINES keeps line
 * numbers right past 65535, XML_PARSE_COMPACT saves an allocation per
 * short text node.
 */
/* Skip to just past the first occurrence of end (or to len). */
static size_t skip_past(const char *p, size_t len, size_t i, const char *end)
{
	const char *hit = memmem(p + i, len - i, end, strlen(end));
	return hit ? (size_t)(hit - p) + strlen(end) : len;
}

/*
 * Refuse documents with an element of too many attributes or too deep a
 * nesting, by a scan of the markup alone (comments, CDATA, processing
 * instructions and declarations skipped; quoted values honoured).  Not a
 * well-formedness check: libxml2 does that afterwards.
 */
static int xml_bounds(const char *p, size_t len, const char *name)
{
	size_t i = 0, at = 0;
	int depth = 0, attrs = 0;
	const char *why = NULL;

	while (i < len && !why) {
		const char *lt = memchr(p + i, '<', len - i);
		if (!lt)
			break;
		i = (size_t)(lt - p);
		at = i;
		if (len - i >= 4 && !memcmp(p + i, "<!--", 4)) {
			i = skip_past(p, len, i + 4, "-->");
		} else if (len - i >= 9 && !memcmp(p + i, "<![CDATA[", 9)) {
			i = skip_past(p, len, i + 9, "]]>");
		} else if (len - i >= 2 && p[i + 1] == '?') {
			i = skip_past(p, len, i + 2, "?>");
		} else if (len - i >= 2 && p[i + 1] == '!') {
			int bracket = 0;
			char q = 0;
			for (i += 2; i < len; i++) {
				if (q) {
					q = p[i] == q ? 0 : q;
				} else if (p[i] == '"' || p[i] == '\'') {
					q = p[i];
				} else if (p[i] == '[') {
					bracket++;
				} else if (p[i] == ']') {
					bracket--;
				} else if (p[i] == '>' && bracket <= 0) {
					break;
				}
			}
			i++;
		} else if (len - i >= 2 && p[i + 1] == '/') {
			depth--;
			i = skip_past(p, len, i + 2, ">");
		} else {
			char q = 0;
			attrs = 0;
			for (i++; i < len; i++) {
				if (q)
					q = p[i] == q ? 0 : q;
				else if (p[i] == '"' || p[i] == '\'')
					q = p[i];
				else if (p[i] == '=')
					attrs++;
				else if (p[i] == '>')
					break;
			}
			if (i < len && p[i - 1] != '/')
				depth++;
			i++;
			if (attrs > REPORT_XML_MAX_ATTRS)
				why = "an element with more than " OTA_STR(REPORT_XML_MAX_ATTRS) " attributes";
			else if (depth > REPORT_XML_MAX_DEPTH)
				why = "elements nested more than " OTA_STR(REPORT_XML_MAX_DEPTH) " levels deep";
		}
	}
	if (why) {
		int line = 1, col = 1;
		for (size_t k = 0; k < at; k++) {
			if (p[k] == '\n') {
				line++;
				col = 1;
			} else if (((unsigned char)p[k] & 0xc0) != 0x80) {
				col++;
			}
		}
		return ota_error_set(OTA_EINVAL, "%s:%d:%d: %s (refused before parsing)", name, line, col, why);
	}
	return 0;
}

static int xml_read(xmlDocPtr *out, const void *data, size_t len, const char *name)
{
	struct xml_guard guard = { 0 };
	xmlGenericErrorFunc saved_fn;
	void *saved_ctx;
	xmlParserCtxtPtr ctxt = NULL;
	xmlDocPtr doc = NULL;
	const struct xmlload *x = xmlload_get();
	int rc = OTA_EINVAL;

	*out = NULL;
	if (!x)
		return ota_error_set(OTA_ERROR, "%s: %s", name, xmlload_error());
	if ((rc = check_size(len, name)) < 0 || (rc = xml_bounds(data, len, name)) < 0)
		goto out;
	rc = OTA_EINVAL;
	pthread_once(&init_once, init);
	ctxt = x->new_parser_ctxt();
	if (!ctxt || !ctxt->sax) {
		rc = ota_error_set(OTA_ENOMEM, "%s: out of memory", name);
		goto out;
	}
	ctxt->_private = &guard;
	ctxt->sax->entityDecl = guard_entity_decl;
	ctxt->sax->unparsedEntityDecl = guard_unparsed_entity_decl;
	ctxt->sax->serror = guard_error;
	saved_fn = *x->generic_error();
	saved_ctx = *x->generic_error_context();
	x->set_generic_error_func(NULL, xml_silent);
	doc = x->ctxt_read_memory(ctxt, len ? data : "", (int)len, name, NULL,
				  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_BIG_LINES |
					  XML_PARSE_COMPACT);
	x->set_generic_error_func(saved_ctx, saved_fn);
	if (guard.entity_line) {
		ota_error_set(OTA_EINVAL, "%s:%d: DTDs with entities are not accepted", name, guard.entity_line);
		goto out;
	}
	if (!doc) {
		if (guard.error[0])
			ota_error_set(OTA_EINVAL, "%s:%d: %s", name, guard.error_line, guard.error);
		else
			ota_error_set(OTA_EINVAL, "%s: not well-formed XML", name);
		goto out;
	}
	if (dtd_has_entities(doc)) {
		ota_error_set(OTA_EINVAL, "%s: DTDs with entities are not accepted", name);
		goto out;
	}
	if (!x->doc_get_root_element(doc)) {
		ota_error_set(OTA_EINVAL, "%s:1: no root element", name);
		goto out;
	}
	*out = doc;
	doc = NULL;
	rc = 0;
out:
	if (doc)
		x->free_doc(doc);
	if (ctxt)
		x->free_parser_ctxt(ctxt);
	return rc;
}

static int is_elem(const xmlNode *n, const char *tag)
{
	return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, tag) == 0;
}

/*
 * An attribute's value, borrowed from the tree, or NULL.  Without entity
 * declarations (refused above) libxml2 keeps each value as one text node,
 * character and predefined references already replaced.
 */
static const char *attr(const xmlNode *n, const char *key)
{
	for (const xmlAttr *a = n->properties; a; a = a->next) {
		if (strcmp((const char *)a->name, key) != 0)
			continue;
		if (a->children && a->children->type == XML_TEXT_NODE && a->children->content)
			return (const char *)a->children->content;
		return "";
	}
	return NULL;
}

static long node_line(const xmlNode *n)
{
	long l = xmlload_get()->get_line_no(n); /* a node: libxml2 is loaded */
	return l > 0 ? l : 1;
}

/* ---- JUnit --------------------------------------------------------------- */

struct junit {
	const char *name;
	json_t *cases;
	json_int_t failures, errors, skipped;
	double time;
	struct buf out;    /* scratch: one case's output */
	int truncated;
};

/* Append to j->out up to CASE_OUTPUT_MAX bytes, cut on a UTF-8 boundary. */
static void out_put(struct junit *j, const char *s, size_t n)
{
	size_t room;

	if (j->truncated)
		return;
	room = CASE_OUTPUT_MAX - j->out.len;
	if (n > room) {
		n = room;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
		j->truncated = 1;
	}
	buf_put(&j->out, s, n);
}

/* The text and CDATA directly inside n, as one section of the output
 * (from a new line). */
static void out_section(struct junit *j, const xmlNode *n)
{
	int first = 1;

	for (const xmlNode *c = n->children; c; c = c->next) {
		const char *t = (const char *)c->content;

		/* indentation between elements and around CDATA is not output */
		if ((c->type != XML_TEXT_NODE && c->type != XML_CDATA_SECTION_NODE) || !t || !t[strspn(t, " \t\r\n")])
			continue;
		if (first && j->out.len && j->out.ptr[j->out.len - 1] != '\n')
			out_put(j, "\n", 1);
		first = 0;
		out_put(j, t, strlen(t));
	}
}

/* The first non-blank line of n's first text node, copied, or NULL. */
static char *first_line(const xmlNode *n)
{
	for (const xmlNode *c = n->children; c; c = c->next) {
		const char *s = (const char *)c->content;
		size_t len;

		if ((c->type != XML_TEXT_NODE && c->type != XML_CDATA_SECTION_NODE) || !s)
			continue;
		s += strspn(s, " \t\r\n");
		len = strcspn(s, "\r\n");
		if (len == 0)
			continue;
		if (len > 1024) {
			len = 1024;
			while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
				len--;
		}
		return xstrndup(s, len);
	}
	return NULL;
}

static int junit_case(struct junit *j, const xmlNode *tc, const char *suite)
{
	const xmlNode *verdict = NULL, *skipped = NULL;
	const char *status = "passed", *name = attr(tc, "name"), *message = NULL;
	char *line = NULL;
	json_t *o;
	double t = parse_seconds(attr(tc, "time"));

	if (json_array_size(j->cases) >= REPORT_MAX_ITEMS)
		return ota_error_set(OTA_ETOOBIG, "%s:%ld: more than %d test cases", j->name, node_line(tc),
				     REPORT_MAX_ITEMS);
	buf_clear(&j->out);
	j->truncated = 0;
	/* error wins over failure (a failing test whose teardown then errs) */
	for (const xmlNode *c = tc->children; c; c = c->next) {
		if (is_elem(c, "error") && (!verdict || is_elem(verdict, "failure")))
			verdict = c;
		else if (is_elem(c, "failure") && !verdict)
			verdict = c;
		else if (is_elem(c, "skipped") && !skipped)
			skipped = c;
	}
	if (verdict) {
		status = is_elem(verdict, "error") ? "error" : "failed";
		message = attr(verdict, "message");
		if (!message || !*message)
			message = line = first_line(verdict);
		if (!message)
			message = attr(verdict, "type");
		out_section(j, verdict);
		if (is_elem(verdict, "error"))
			j->errors++;
		else
			j->failures++;
	} else if (skipped) {
		status = "skipped";
		message = attr(skipped, "message");
		j->skipped++;
	}
	for (const xmlNode *c = tc->children; c; c = c->next) {
		if (is_elem(c, "system-out") || is_elem(c, "system-err"))
			out_section(j, c);
	}
	if (j->truncated)
		buf_puts(&j->out, TRUNCATED_NOTE);

	o = json_object();
	set_str(o, "suite", suite);
	set_str(o, "classname", attr(tc, "classname"));
	set_str(o, "name", name && *name ? name : "(unnamed)");
	json_object_set_new_nocheck(o, "time", json_real(t));
	json_object_set_new_nocheck(o, "status", json_string_nocheck(status));
	set_str(o, "message", message);
	if (j->out.len)
		json_object_set_new_nocheck(o, "output", json_stringn(j->out.ptr, j->out.len));
	json_array_append_new(j->cases, o);
	j->time += t;
	free(line);
	return 0;
}

/* The cases of a suite and of the suites nested in it, in document order. */
static int junit_suite(struct junit *j, const xmlNode *s, const char *suite)
{
	const char *inner;
	int rc = 0;

	for (const xmlNode *c = s->children; c && rc == 0; c = c->next) {
		if (is_elem(c, "testcase")) {
			rc = junit_case(j, c, suite);
		} else if (is_elem(c, "testsuite") || is_elem(c, "testsuites")) {
			inner = attr(c, "name");
			rc = junit_suite(j, c, inner && *inner ? inner : suite);
		}
	}
	return rc;
}

int report_parse_junit(json_t **out, const void *data, size_t len, const char *name)
{
	struct junit j = { 0 };
	xmlDocPtr doc = NULL;
	xmlNodePtr root;
	json_t *o = NULL;
	json_int_t tests;
	const char *suite;
	int rc;

	*out = NULL;
	name = display_name(name);
	if ((rc = xml_read(&doc, data, len, name)) < 0)
		goto out;
	root = xmlload_get()->doc_get_root_element(doc);
	if (!is_elem(root, "testsuites") && !is_elem(root, "testsuite")) {
		rc = ota_error_set(OTA_EINVAL, "%s:%ld: unknown element <%.*s> (expected <testsuites> or <testsuite>)",
				   name, node_line(root), quote_len((const char *)root->name, 64),
				   (const char *)root->name);
		goto out;
	}
	j.name = name;
	j.cases = json_array();
	buf_init(&j.out, BUF_NOLIMIT);
	suite = is_elem(root, "testsuite") ? attr(root, "name") : NULL;
	if ((rc = junit_suite(&j, root, suite)) < 0)
		goto out;

	tests = (json_int_t)json_array_size(j.cases);
	o = json_object();
	set_str(o, "format", "junit");
	set_str(o, "name", name);
	set_int(o, "tests", tests);
	set_int(o, "passed", tests - j.failures - j.errors - j.skipped);
	set_int(o, "failures", j.failures);
	set_int(o, "errors", j.errors);
	set_int(o, "skipped", j.skipped);
	/* the root's own time includes set-up; the sum of cases when absent */
	if (attr(root, "time"))
		j.time = parse_seconds(attr(root, "time"));
	json_object_set_new_nocheck(o, "time", json_real(isfinite(j.time) ? j.time : 0));
	json_object_set_nocheck(o, "cases", j.cases);
	*out = o;
	rc = 0;
out:
	json_decref(j.cases);
	buf_release(&j.out);
	if (doc)
		xmlload_get()->free_doc(doc);
	return rc;
}

/* ---- cppcheck ------------------------------------------------------------ */

static int cppcheck_error(struct findings *f, const xmlNode *e)
{
	const xmlNode *loc = NULL;
	const char *severity = attr(e, "severity");

	for (const xmlNode *c = e->children; c && !loc; c = c->next)
		if (is_elem(c, "location"))
			loc = c;
	return findings_add(f, attr(e, "id"), severity && *severity ? severity : "none",
			    loc && attr(loc, "file") ? attr(loc, "file") : "",
			    loc ? parse_count(attr(loc, "line")) : 0, loc ? parse_count(attr(loc, "column")) : 0,
			    attr(e, "msg"));
}

int report_parse_cppcheck(json_t **out, const void *data, size_t len, const char *name)
{
	struct findings f = { 0 };
	xmlDocPtr doc = NULL;
	xmlNodePtr root;
	const char *version;
	int rc;

	*out = NULL;
	name = display_name(name);
	if ((rc = xml_read(&doc, data, len, name)) < 0)
		goto out;
	root = xmlload_get()->doc_get_root_element(doc);
	if (!is_elem(root, "results")) {
		rc = ota_error_set(OTA_EINVAL, "%s:%ld: unknown element <%.*s> (expected cppcheck's <results>)", name,
				   node_line(root), quote_len((const char *)root->name, 64), (const char *)root->name);
		goto out;
	}
	version = attr(root, "version");
	if (!version || strcmp(version, "2") != 0) {
		rc = ota_error_set(OTA_EINVAL,
				   "%s:%ld: cppcheck XML version %.*s is not supported (run cppcheck with --xml-version=2)",
				   name, node_line(root), version ? quote_len(version, 32) : 1, version ? version : "1");
		goto out;
	}
	if ((rc = findings_init(&f, name, cppcheck_severities, OTA_ARRAY_SIZE(cppcheck_severities))) < 0)
		goto out;
	for (const xmlNode *c = root->children; c; c = c->next) {
		if (!is_elem(c, "errors"))
			continue;
		for (const xmlNode *e = c->children; e; e = e->next)
			if (is_elem(e, "error") && (rc = cppcheck_error(&f, e)) < 0)
				goto out;
	}
	*out = findings_finish(&f, "cppcheck", name);
	rc = 0;
out:
	findings_release(&f);
	if (doc)
		xmlload_get()->free_doc(doc);
	return rc;
}

/* ---- SARIF --------------------------------------------------------------- */

struct sarif {
	const char *name;
	struct findings f;
	struct buf path;    /* JSON path of the value being read, for errors */
	json_t *rules;      /* this run's tool.driver.rules, borrowed, or NULL */
	json_t *rule_ids;   /* rule id -> index in rules, this run */
	json_t *artifacts;  /* this run's artifacts, borrowed, or NULL */
};

/* Append to the path; returns the length to give back to path_pop. */
static size_t OTA_PRINTF(2, 3) path_push(struct sarif *s, const char *fmt, ...)
{
	size_t len = s->path.len;
	va_list ap;

	va_start(ap, fmt);
	buf_vprintf(&s->path, fmt, ap);
	va_end(ap);
	return len;
}

static void path_pop(struct sarif *s, size_t len)
{
	s->path.len = len;
	if (s->path.ptr)
		s->path.ptr[len] = '\0';
}

static const char *type_name(json_type t)
{
	switch (t) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	default: return "value";
	}
}

/*
 * *out = member key of obj when it has type `want`; NULL when absent or
 * null.  Another type is an error naming the path: "PATH.key: expected T".
 */
static int member(json_t **out, json_t *obj, const char *key, json_type want, const struct sarif *s)
{
	json_t *v = json_object_get(obj, key);

	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (json_typeof(v) != want)
		return ota_error_set(OTA_EINVAL, "%s: %s%s%s: expected %s", s->name, buf_cstr(&s->path),
				     s->path.len ? "." : "", key, type_name(want));
	*out = v;
	return 0;
}

/* A string member or NULL; does nothing once *rc is an error. */
static const char *member_str(json_t *obj, const char *key, const struct sarif *s, int *rc)
{
	json_t *v;

	if (*rc < 0 || (*rc = member(&v, obj, key, JSON_STRING, s)) < 0 || !v)
		return NULL;
	return json_string_value(v);
}

/* Element i of the array at the current path, which must have type want. */
static int element(json_t **out, json_t *arr, size_t i, json_type want, const struct sarif *s)
{
	json_t *v = json_array_get(arr, i);

	*out = v;
	if (!v || json_typeof(v) != want)
		return ota_error_set(OTA_EINVAL, "%s: %s[%zu]: expected %s", s->name, buf_cstr(&s->path), i,
				     type_name(want));
	return 0;
}

static int level_known(const char *l)
{
	for (size_t i = 0; i < OTA_ARRAY_SIZE(sarif_levels); i++)
		if (strcmp(l, sarif_levels[i]) == 0)
			return 1;
	return 0;
}

static int check_level(const char *level, const struct sarif *s)
{
	if (level && !level_known(level))
		return ota_error_set(OTA_EINVAL, "%s: %s.level: unknown level '%.*s' (expected error, warning, note or none)",
				     s->name, buf_cstr(&s->path), quote_len(level, 32), level);
	return 0;
}

/* Index the run's tool.driver.rules by id and check the fields results use. */
static int sarif_rules(struct sarif *s, json_t *run)
{
	json_t *tool, *driver, *rule, *conf;
	const char *id, *level;
	size_t top = s->path.len, at;
	int rc;

	s->rules = NULL;
	json_object_clear(s->rule_ids);
	if ((rc = member(&tool, run, "tool", JSON_OBJECT, s)) < 0 || !tool)
		goto out;
	path_push(s, ".tool");
	if ((rc = member(&driver, tool, "driver", JSON_OBJECT, s)) < 0 || !driver)
		goto out;
	path_push(s, ".driver");
	if ((rc = member(&s->rules, driver, "rules", JSON_ARRAY, s)) < 0 || !s->rules)
		goto out;
	path_push(s, ".rules");
	for (size_t i = 0; i < json_array_size(s->rules); i++) {
		if ((rc = element(&rule, s->rules, i, JSON_OBJECT, s)) < 0)
			goto out;
		at = path_push(s, "[%zu]", i);
		id = member_str(rule, "id", s, &rc);
		if (rc < 0 || (rc = member(&conf, rule, "defaultConfiguration", JSON_OBJECT, s)) < 0)
			goto out;
		if (conf) {
			path_push(s, ".defaultConfiguration");
			level = member_str(conf, "level", s, &rc);
			if (rc < 0 || (rc = check_level(level, s)) < 0)
				goto out;
		}
		if (id && !json_object_get(s->rule_ids, id))
			json_object_set_new(s->rule_ids, id, json_integer((json_int_t)i));
		path_pop(s, at);
	}
	rc = 0;
out:
	if (rc == 0)
		path_pop(s, top);
	return rc;
}

/* The rule object a result points at (by index, else by id), or NULL. */
static json_t *sarif_rule(struct sarif *s, json_int_t index, const char *id)
{
	json_t *i;

	if (index >= 0 && (size_t)index < json_array_size(s->rules))
		return json_array_get(s->rules, (size_t)index);
	if (id && (i = json_object_get(s->rule_ids, id)))
		return json_array_get(s->rules, (size_t)json_integer_value(i));
	return NULL;
}

/* File and line/column of the result's first location (locations[0]). */
static int sarif_location(struct sarif *s, json_t *result, const char **file, json_int_t *line, json_int_t *column)
{
	json_t *locs, *loc, *phys, *art, *region, *v, *a;
	size_t top = s->path.len, at;
	int rc;

	if ((rc = member(&locs, result, "locations", JSON_ARRAY, s)) < 0 || !locs || !json_array_size(locs))
		goto out;
	path_push(s, ".locations");
	if ((rc = element(&loc, locs, 0, JSON_OBJECT, s)) < 0)
		goto out;
	path_push(s, "[0]");
	if ((rc = member(&phys, loc, "physicalLocation", JSON_OBJECT, s)) < 0 || !phys)
		goto out;
	path_push(s, ".physicalLocation");
	if ((rc = member(&art, phys, "artifactLocation", JSON_OBJECT, s)) < 0 ||
	    (rc = member(&region, phys, "region", JSON_OBJECT, s)) < 0)
		goto out;
	if (art) {
		at = path_push(s, ".artifactLocation");
		*file = member_str(art, "uri", s, &rc);
		if (rc < 0 || (rc = member(&v, art, "index", JSON_INTEGER, s)) < 0)
			goto out;
		/* no uri but an index into run.artifacts[] */
		if (!*file && v && json_integer_value(v) >= 0 &&
		    (a = json_array_get(s->artifacts, (size_t)json_integer_value(v))) &&
		    (a = json_object_get(a, "location")) && (a = json_object_get(a, "uri")) && json_is_string(a))
			*file = json_string_value(a);
		path_pop(s, at);
	}
	if (region) {
		path_push(s, ".region");
		if ((rc = member(&v, region, "startLine", JSON_INTEGER, s)) < 0)
			goto out;
		*line = v && json_integer_value(v) > 0 ? json_integer_value(v) : 0;
		if ((rc = member(&v, region, "startColumn", JSON_INTEGER, s)) < 0)
			goto out;
		*column = v && json_integer_value(v) > 0 ? json_integer_value(v) : 0;
	}
	rc = 0;
out:
	if (rc == 0)
		path_pop(s, top);
	return rc;
}

static int sarif_result(struct sarif *s, json_t *result)
{
	json_t *ruleref = NULL, *msg, *v, *rule, *conf;
	const char *rule_id, *level, *kind, *text = NULL, *file = NULL;
	json_int_t index = -1, line = 0, column = 0;
	size_t top = s->path.len;
	int rc = 0;

	rule_id = member_str(result, "ruleId", s, &rc);
	level = member_str(result, "level", s, &rc);
	kind = member_str(result, "kind", s, &rc);
	if (rc < 0 || (rc = check_level(level, s)) < 0 || (rc = member(&v, result, "ruleIndex", JSON_INTEGER, s)) < 0 ||
	    (rc = member(&ruleref, result, "rule", JSON_OBJECT, s)) < 0 ||
	    (rc = member(&msg, result, "message", JSON_OBJECT, s)) < 0 ||
	    (rc = sarif_location(s, result, &file, &line, &column)) < 0)
		goto out;
	if (v)
		index = json_integer_value(v);
	if (ruleref) {
		path_push(s, ".rule");
		if (!rule_id)
			rule_id = member_str(ruleref, "id", s, &rc);
		if (rc < 0 || (rc = member(&v, ruleref, "index", JSON_INTEGER, s)) < 0)
			goto out;
		if (v && index < 0)
			index = json_integer_value(v);
		path_pop(s, top);
	}
	rule = sarif_rule(s, index, rule_id);
	if (!rule_id && rule && json_is_string(json_object_get(rule, "id")))
		rule_id = json_string_value(json_object_get(rule, "id"));
	if (msg) {
		path_push(s, ".message");
		text = member_str(msg, "text", s, &rc);
		if (!text)
			text = member_str(msg, "markdown", s, &rc);
		if (rc < 0)
			goto out;
		path_pop(s, top);
	}
	/* SARIF 3.27.10: without a level, a result whose kind is not "fail"
	 * is "none"; otherwise the rule's default level, else "warning" */
	if (!level && kind && strcmp(kind, "fail") != 0)
		level = "none";
	if (!level && rule && (conf = json_object_get(rule, "defaultConfiguration")) &&
	    json_is_string(json_object_get(conf, "level")))
		level = json_string_value(json_object_get(conf, "level"));
	if (!level)
		level = "warning";
	rc = findings_add(&s->f, rule_id, level, file ? file : "", line, column, text);
out:
	return rc;
}

static int sarif_run(struct sarif *s, json_t *run)
{
	json_t *results, *result;
	size_t top = s->path.len, at;
	int rc;

	if ((rc = sarif_rules(s, run)) < 0 || (rc = member(&s->artifacts, run, "artifacts", JSON_ARRAY, s)) < 0 ||
	    (rc = member(&results, run, "results", JSON_ARRAY, s)) < 0 || !results)
		goto out;
	path_push(s, ".results");
	for (size_t i = 0; i < json_array_size(results); i++) {
		if ((rc = element(&result, results, i, JSON_OBJECT, s)) < 0)
			goto out;
		at = path_push(s, "[%zu]", i);
		if ((rc = sarif_result(s, result)) < 0)
			goto out;
		path_pop(s, at);
	}
	rc = 0;
out:
	if (rc == 0)
		path_pop(s, top);
	return rc;
}

int report_parse_sarif(json_t **out, const void *data, size_t len, const char *name)
{
	struct sarif s = { 0 };
	json_error_t jerr;
	json_t *doc = NULL, *runs, *run;
	const char *version;
	size_t top;
	int rc;

	*out = NULL;
	s.name = name = display_name(name);
	buf_init(&s.path, BUF_NOLIMIT);
	if ((rc = check_size(len, name)) < 0)
		goto out;
	pthread_once(&init_once, init);
	doc = json_loadb(len ? data : "", len, 0, &jerr);
	if (!doc) {
		jerr.text[sizeof(jerr.text) - 1] = '\0';
		utf8_scrub(jerr.text);   /* jansson may quote the offending bytes */
		rc = ota_error_set(OTA_EINVAL, "%s:%d: %.*s", name, jerr.line > 0 ? jerr.line : 1,
				   quote_len(jerr.text, sizeof(jerr.text)), jerr.text);
		goto out;
	}
	if (!json_is_object(doc)) {
		rc = ota_error_set(OTA_EINVAL, "%s: top level: expected object", name);
		goto out;
	}
	version = member_str(doc, "version", &s, &rc);
	if (rc < 0)
		goto out;
	if (!version || strcmp(version, "2.1.0") != 0) {
		rc = ota_error_set(OTA_EINVAL, "%s: version: %s%.*s%s is not supported (expected SARIF 2.1.0)", name,
				   version ? "'" : "", quote_len(version ? version : "missing", 32),
				   version ? version : "missing", version ? "'" : "");
		goto out;
	}
	if ((rc = member(&runs, doc, "runs", JSON_ARRAY, &s)) < 0)
		goto out;
	if (!runs && !json_object_get(doc, "runs")) {
		rc = ota_error_set(OTA_EINVAL, "%s: runs: missing", name);
		goto out;
	}
	s.rule_ids = json_object();
	if ((rc = findings_init(&s.f, name, sarif_levels, OTA_ARRAY_SIZE(sarif_levels))) < 0)
		goto out;
	path_push(&s, "runs");
	for (size_t r = 0; r < json_array_size(runs); r++) {
		if ((rc = element(&run, runs, r, JSON_OBJECT, &s)) < 0)
			goto out;
		top = path_push(&s, "[%zu]", r);
		if ((rc = sarif_run(&s, run)) < 0)
			goto out;
		path_pop(&s, top);
	}
	*out = findings_finish(&s.f, "sarif", name);
	rc = 0;
out:
	findings_release(&s.f);
	buf_release(&s.path);
	json_decref(s.rule_ids);
	json_decref(doc);
	return rc;
}

/* ---- dispatch ------------------------------------------------------------ */

int report_format_known(const char *format)
{
	for (size_t i = 0; format && i < OTA_ARRAY_SIZE(formats); i++)
		if (strcmp(format, formats[i]) == 0)
			return 1;
	return 0;
}

int report_parse(json_t **out, const char *format, const void *data, size_t len, const char *name)
{
	const char *hint;

	*out = NULL;
	if (format && strcmp(format, "junit") == 0)
		return report_parse_junit(out, data, len, name);
	if (format && strcmp(format, "cppcheck") == 0)
		return report_parse_cppcheck(out, data, len, name);
	if (format && strcmp(format, "sarif") == 0)
		return report_parse_sarif(out, data, len, name);
	if (format && strcmp(format, "pmccabe") == 0)
		return report_parse_pmccabe(out, data, len, display_name(name));
	if (format && strcmp(format, "jscpd") == 0)
		return report_parse_jscpd(out, data, len, display_name(name));
	if (format && strcmp(format, "power") == 0)
		return report_parse_power(out, data, len, display_name(name));
	hint = format ? ota_did_you_mean(format, formats, OTA_ARRAY_SIZE(formats)) : NULL;
	return ota_error_set(OTA_EINVAL, "%s: unknown report format '%.*s'%s%s%s (expected junit, cppcheck, sarif, pmccabe, jscpd or power)",
			     display_name(name), format ? quote_len(format, 32) : 0, format ? format : "",
			     hint ? ", did you mean '" : "", hint ? hint : "", hint ? "'?" : "");
}
