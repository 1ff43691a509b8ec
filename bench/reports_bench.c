/*
 * reports_bench.c - how fast the report parsers (orchestrator/reports.h)
 * turn large reports into JSON.  Figures are printed, never asserted.
 *
 * Three documents are generated in memory: a JUnit file of N test cases
 * (nested suites; one case in 10 failed with a stack trace, one in 20
 * skipped, one in 5 with system-out), a cppcheck v2 file of N errors and
 * a SARIF 2.1.0 log of N results over 40 rules in two runs.  Each is
 * parsed R times; the bench prints ms per parse and MB/s, and, as the
 * baseline measured in the same run on the same bytes, the cost of the
 * bare library call (xmlReadMemory + xmlFreeDoc, json_loadb +
 * json_decref) and the ratio of the two.  The target is N = 10,000 under
 * 200 ms per parse.
 *
 * Usage: reports-bench [N [R]]      (defaults 10000 and 10)
 */
#include <libxml/parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/util.h"
#include "../orchestrator/reports.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void gen_junit(struct buf *b, int n)
{
	buf_puts(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"bench\" time=\"123.4\">\n");
	for (int i = 0; i < n; i++) {
		if (i % 100 == 0)
			buf_printf(b, "%s<testsuite name=\"suite%d\" tests=\"100\">\n"
				      "  <testsuite name=\"suite%d.inner\">\n",
				   i ? "  </testsuite>\n</testsuite>\n" : "", i / 100, i / 100);
		buf_printf(b, "    <testcase classname=\"fw.module%d.Test\" name=\"test_case_%d_does_the_thing\" time=\"0.%03d\"",
			   i % 37, i, i % 1000);
		if (i % 10 == 3)
			buf_printf(b, ">\n      <failure message=\"expected %d, got %d\" type=\"AssertionError\">"
				      "test_%d.c:%d: assertion failed: x == %d\n  at frame_a (a.c:1)\n  at frame_b (b.c:2)\n"
				      "  at main (main.c:3)</failure>\n    </testcase>\n",
				   i, i + 1, i % 37, i % 500, i);
		else if (i % 20 == 7)
			buf_puts(b, ">\n      <skipped message=\"needs a HIL rig\"/>\n    </testcase>\n");
		else if (i % 5 == 1)
			buf_printf(b, ">\n      <system-out>[boot] image %d ok\n[app] started in 12 ms\n"
				      "[app] self-test passed</system-out>\n    </testcase>\n",
				   i);
		else
			buf_puts(b, "/>\n");
	}
	buf_puts(b, "  </testsuite>\n</testsuite>\n</testsuites>\n");
}

static void gen_cppcheck(struct buf *b, int n)
{
	buf_puts(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<results version=\"2\">\n"
		    "    <cppcheck version=\"2.10\"/>\n    <errors>\n");
	for (int i = 0; i < n; i++)
		buf_printf(b, "        <error id=\"rule%d\" severity=\"%s\" msg=\"Message number %d about &apos;v%d&apos;.\" "
			      "verbose=\"A longer explanation of message %d.\" cwe=\"%d\" file0=\"src/f%d.c\">\n"
			      "            <location file=\"src/f%d.c\" line=\"%d\" column=\"%d\" info=\"here\"/>\n"
			      "            <location file=\"src/f%d.c\" line=\"%d\" column=\"1\"/>\n"
			      "            <symbol>v%d</symbol>\n        </error>\n",
			   i % 40, i % 3 ? "style" : "warning", i, i, i, 400 + i % 100, i % 200, i % 200, 10 + i % 900,
			   1 + i % 60, i % 200, 5 + i % 900, i);
	buf_puts(b, "    </errors>\n</results>\n");
}

static void gen_sarif(struct buf *b, int n)
{
	static const char *const levels[] = { "error", "warning", "note" };

	buf_puts(b, "{\"$schema\":\"https://json.schemastore.org/sarif-2.1.0.json\",\"version\":\"2.1.0\",\"runs\":[");
	for (int run = 0; run < 2; run++) {
		buf_printf(b, "%s{\"tool\":{\"driver\":{\"name\":\"analyzer%d\",\"version\":\"1.0\",\"rules\":[", run ? "," : "",
			   run);
		for (int r = 0; r < 40; r++)
			buf_printf(b, "%s{\"id\":\"R%03d\",\"shortDescription\":{\"text\":\"rule %d\"},"
				      "\"defaultConfiguration\":{\"level\":\"%s\"}}",
				   r ? "," : "", r, r, levels[r % 3]);
		buf_puts(b, "]}},\"results\":[");
		for (int i = run; i < n; i += 2)
			buf_printf(b, "%s{\"ruleId\":\"R%03d\",\"ruleIndex\":%d,%s\"message\":{\"text\":\"finding %d: value "
				      "'v%d' may be used uninitialised\"},\"locations\":[{\"physicalLocation\":{"
				      "\"artifactLocation\":{\"uri\":\"src/module%d/file%d.c\",\"uriBaseId\":\"SRCROOT\"},"
				      "\"region\":{\"startLine\":%d,\"startColumn\":%d,\"endLine\":%d}}}],"
				      "\"partialFingerprints\":{\"primaryLocationLineHash\":\"%08x:1\"}}",
				   i < 2 ? "" : ",", i % 40, i % 40, i % 4 ? "" : "\"level\":\"warning\",", i, i, i % 10,
				   i % 300, 1 + i % 2000, 1 + i % 80, 1 + i % 2000, (unsigned)i * 2654435761u);
		buf_puts(b, "]}");
	}
	buf_puts(b, "]}\n");
}

typedef int (*parse_fn)(json_t **out, const void *data, size_t len, const char *name);

static double time_parser(parse_fn fn, const struct buf *b, int reps, size_t *items)
{
	double t0 = now_ms();
	json_t *r;

	for (int i = 0; i < reps; i++) {
		r = NULL;
		if (fn(&r, b->ptr, b->len, "bench") < 0) {
			fprintf(stderr, "parse failed: %s\n", ota_error_last());
			exit(1);
		}
		*items = json_array_size(json_object_get(r, "cases")) + json_array_size(json_object_get(r, "findings"));
		json_decref(r);
	}
	return (now_ms() - t0) / reps;
}

static double time_xml_baseline(const struct buf *b, int reps)
{
	double t0 = now_ms();

	for (int i = 0; i < reps; i++) {
		xmlDocPtr d = xmlReadMemory(b->ptr, (int)b->len, "bench", NULL,
					    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
		if (!d)
			exit(1);
		xmlFreeDoc(d);
	}
	return (now_ms() - t0) / reps;
}

static double time_json_baseline(const struct buf *b, int reps)
{
	double t0 = now_ms();

	for (int i = 0; i < reps; i++) {
		json_t *j = json_loadb(b->ptr, b->len, 0, NULL);
		if (!j)
			exit(1);
		json_decref(j);
	}
	return (now_ms() - t0) / reps;
}

static void report(const char *what, const struct buf *b, size_t items, double ms, const char *base, double base_ms)
{
	double mb = (double)b->len / (1024.0 * 1024.0);

	printf("%-9s %6zu items %6.2f MB: %8.2f ms/parse %7.1f MB/s | %-12s %8.2f ms %7.1f MB/s | ratio %.2fx\n", what,
	       items, mb, ms, mb / (ms / 1e3), base, base_ms, mb / (base_ms / 1e3), ms / base_ms);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 10000, reps = argc > 2 ? atoi(argv[2]) : 10;
	struct buf junit = BUF_INIT, cppcheck = BUF_INIT, sarif = BUF_INIT;
	size_t items = 0;
	double ms;

	if (n < 1 || reps < 1) {
		fprintf(stderr, "usage: reports-bench [N [R]]\n");
		return 2;
	}
	xmlInitParser();
	gen_junit(&junit, n);
	gen_cppcheck(&cppcheck, n);
	gen_sarif(&sarif, n);
	printf("report parsers: %d cases/findings per document, %d parses each (target: < 200 ms at 10000)\n", n, reps);

	/* one warm-up parse each, so the first timing pays no page faults */
	time_parser(report_parse_junit, &junit, 1, &items);
	ms = time_parser(report_parse_junit, &junit, reps, &items);
	report("junit", &junit, items, ms, "xmlReadMemory", time_xml_baseline(&junit, reps));

	time_parser(report_parse_cppcheck, &cppcheck, 1, &items);
	ms = time_parser(report_parse_cppcheck, &cppcheck, reps, &items);
	report("cppcheck", &cppcheck, items, ms, "xmlReadMemory", time_xml_baseline(&cppcheck, reps));

	time_parser(report_parse_sarif, &sarif, 1, &items);
	ms = time_parser(report_parse_sarif, &sarif, reps, &items);
	report("sarif", &sarif, items, ms, "json_loadb", time_json_baseline(&sarif, reps));

	buf_release(&junit);
	buf_release(&cppcheck);
	buf_release(&sarif);
	return 0;
}
