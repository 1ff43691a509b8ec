/*
 * test_reports.c - JUnit, cppcheck and SARIF reports into their JSON shapes
 * (orchestrator/reports.h), from the fixture files in tests/reports/: real
 * cppcheck 2.10 output of tests/reports/buggy.c, hand-written JUnit in the
 * dialects tools emit, a two-run SARIF 2.1.0 log, and hostile or broken
 * documents (billion laughs, XXE, truncated, wrong root) that must be
 * refused with the file name and line in the message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "../common/util.h"
#include "../orchestrator/reports.h"

static char *fixture_path(const char *file)
{
	const char *src = getenv("OTACD_SRC");
	return xasprintf("%s/tests/reports/%s", src && *src ? src : ".", file);
}

/* Parse tests/reports/FILE as format; *msg gets a copy of the error. */
static int parse_fixture(json_t **out, const char *format, const char *file, char **msg)
{
	struct buf b = BUF_INIT;
	char *path = fixture_path(file);
	int rc;

	if (ota_read_file(&b, path, REPORT_MAX_BYTES) < 0)
		fail_msg("cannot read %s: %s", path, ota_error_last());
	ota_error_clear();
	rc = report_parse(out, format, b.ptr, b.len, file);
	if (msg)
		*msg = rc < 0 ? xstrdup(ota_error_last()) : NULL;
	if (rc < 0)
		assert_null(*out);
	buf_release(&b);
	free(path);
	return rc;
}

static json_t *parse_ok(const char *format, const char *file)
{
	json_t *r = NULL;
	char *msg = NULL;

	if (parse_fixture(&r, format, file, &msg) < 0)
		fail_msg("%s: %s", file, msg);
	assert_non_null(r);
	assert_string_equal(json_string_value(json_object_get(r, "format")), format);
	assert_string_equal(json_string_value(json_object_get(r, "name")), file);
	return r;
}

/* Parse in-memory text; returns the error message (to free) or NULL. */
static char *parse_error(const char *format, const char *text, const char *name)
{
	json_t *r = NULL;
	int rc = report_parse(&r, format, text, strlen(text), name);

	if (rc == 0) {
		json_decref(r);
		return NULL;
	}
	assert_int_equal(rc, OTA_EINVAL);
	assert_null(r);
	return xstrdup(ota_error_last());
}

static void expect_error(const char *format, const char *text, const char *name, const char *expect)
{
	char *msg = parse_error(format, text, name);

	if (!msg || !strstr(msg, expect))
		fail_msg("%s: got '%s', expected '%s'", name, msg ? msg : "(parsed)", expect);
	free(msg);
}

static json_int_t iget(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v))
		fail_msg("'%s' is not an integer", key);
	return json_integer_value(v);
}

static const char *sget(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static double tget(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_real(v))
		fail_msg("'%s' is not a number", key);
	return json_real_value(v);
}

static json_t *item(json_t *r, const char *list, size_t i)
{
	json_t *v = json_array_get(json_object_get(r, list), i);
	assert_non_null(v);
	return v;
}

/* ---- JUnit --------------------------------------------------------------- */

static void junit_nested_suites_are_flattened_and_counts_recomputed(void **state)
{
	json_t *r = parse_ok("junit", "junit-nested.xml"), *c;
	static const char *const suites[] = { "boot", "boot", "boot.flash", "boot.flash", "net", "net" };
	static const char *const statuses[] = { "passed", "failed", "skipped", "error", "passed", "error" };
	(void)state;

	/* the attributes say 99 tests and no failures: ignored */
	assert_int_equal(iget(r, "tests"), 6);
	assert_int_equal(iget(r, "passed"), 2);
	assert_int_equal(iget(r, "failures"), 1);
	assert_int_equal(iget(r, "errors"), 2);
	assert_int_equal(iget(r, "skipped"), 1);
	assert_true(tget(r, "time") == 12.5);
	assert_int_equal(json_array_size(json_object_get(r, "cases")), 6);
	for (size_t i = 0; i < 6; i++) {
		c = item(r, "cases", i);
		assert_string_equal(sget(c, "suite"), suites[i]);
		assert_string_equal(sget(c, "status"), statuses[i]);
	}

	c = item(r, "cases", 0);
	assert_string_equal(sget(c, "classname"), "boot.mcuboot");
	assert_string_equal(sget(c, "name"), "image_validates");
	assert_true(tget(c, "time") == 1.25);
	assert_null(json_object_get(c, "message"));
	assert_null(json_object_get(c, "output"));

	c = item(r, "cases", 1);
	assert_string_equal(sget(c, "message"), "slot 0 still holds the new image");
	assert_string_equal(sget(c, "output"), "test_boot.c:88: expected 0x10000 == 0x20000\n"
					       "  at swap_reverts_unconfirmed (test_boot.c:88)\n"
					       "[boot] swap type: revert\n[boot] <done>");

	c = item(r, "cases", 2);
	assert_string_equal(sget(c, "message"), "no external flash on this rig");

	c = item(r, "cases", 3);
	assert_string_equal(sget(c, "message"), "rig timeout after 30s");
	assert_string_equal(sget(c, "output"),
			    "probe did not answer\nopenocd: Error: timed out while waiting for target halted");

	c = item(r, "cases", 4);
	assert_string_equal(sget(c, "name"), "reconnects & resubscribes");
	assert_string_equal(sget(c, "output"), "connected\nresubscribed to 3 topics");

	/* a failure and an error in one case: the error counts, once */
	c = item(r, "cases", 5);
	assert_string_equal(sget(c, "message"), "teardown: socket still open");
	json_decref(r);
}

static void junit_single_testsuite_root_is_one_suite(void **state)
{
	json_t *r = parse_ok("junit", "junit-single.xml"), *c;
	(void)state;

	assert_int_equal(iget(r, "tests"), 3);
	assert_int_equal(iget(r, "passed"), 2);
	assert_int_equal(iget(r, "failures"), 1);
	assert_int_equal(iget(r, "errors"), 0);
	assert_true(tget(r, "time") == 0.42);
	c = item(r, "cases", 1);
	assert_string_equal(sget(c, "suite"), "ctest");
	assert_string_equal(sget(c, "name"), "ringbuf_wraps");
	assert_string_equal(sget(c, "status"), "failed");
	assert_string_equal(sget(c, "message"), "Failed");
	/* the CDATA, without the indentation around it */
	assert_string_equal(sget(c, "output"), "ringbuf_wraps.c:41: expected 7, got 0");
	json_decref(r);
}

static void junit_missing_attributes_are_tolerated(void **state)
{
	static const char doc[] = "<testsuite><testcase name='' time='1e308'><failure>\n  ringbuf.c:9: expected 1\n"
				  "  at main</failure></testcase><testcase name='t' time='1e308'><error type='Timeout'/>"
				  "</testcase></testsuite>";
	json_t *r = parse_ok("junit", "junit-missing-attrs.xml"), *c;
	(void)state;

	assert_int_equal(iget(r, "tests"), 5);
	assert_int_equal(iget(r, "failures"), 1);
	assert_int_equal(iget(r, "passed"), 4);
	/* no time on the root: the sum of the cases */
	assert_true(tget(r, "time") == 2.0);

	c = item(r, "cases", 0);
	assert_string_equal(sget(c, "name"), "(unnamed)");
	assert_null(json_object_get(c, "classname"));
	assert_null(json_object_get(c, "suite"));
	assert_true(tget(c, "time") == 0.0);

	c = item(r, "cases", 1);
	assert_string_equal(sget(c, "status"), "failed");
	assert_null(json_object_get(c, "message"));

	assert_true(tget(item(r, "cases", 2), "time") == 0.0);  /* time="fast" */
	assert_true(tget(item(r, "cases", 3), "time") == 0.0);  /* time="-3" */

	c = item(r, "cases", 4);
	assert_string_equal(sget(c, "name"), "loose_case");
	assert_string_equal(sget(c, "classname"), "top");
	assert_true(tget(c, "time") == 2.0);
	json_decref(r);

	/* no message attribute: the first line of the text stands in */
	r = NULL;
	assert_int_equal(report_parse_junit(&r, doc, sizeof(doc) - 1, "msg.xml"), 0);
	assert_string_equal(sget(item(r, "cases", 0), "message"), "ringbuf.c:9: expected 1");
	assert_string_equal(sget(item(r, "cases", 0), "name"), "(unnamed)");
	assert_string_equal(sget(item(r, "cases", 1), "message"), "Timeout");
	/* times too large to add up still give a number */
	assert_true(tget(r, "time") == 0.0);
	json_decref(r);
}

static void junit_empty_suites_have_no_cases(void **state)
{
	json_t *r = parse_ok("junit", "junit-empty.xml");
	(void)state;

	assert_int_equal(iget(r, "tests"), 0);
	assert_int_equal(iget(r, "passed"), 0);
	assert_int_equal(json_array_size(json_object_get(r, "cases")), 0);
	json_decref(r);

	r = NULL;
	assert_int_equal(report_parse_junit(&r, "<testsuite name='x'/>", 21, "one.xml"), 0);
	assert_int_equal(iget(r, "tests"), 0);
	json_decref(r);
}

static void junit_output_is_capped_at_64k_and_marked_truncated(void **state)
{
	struct buf b = BUF_INIT;
	json_t *r = NULL;
	const char *out;
	size_t n;
	(void)state;

	buf_puts(&b, "<testsuite name='big'><testcase name='chatty'><system-out>");
	for (int i = 0; i < 100000; i++)
		buf_puts(&b, "h\xc3\xa9");  /* "hé": a cut must not split the é */
	buf_puts(&b, "</system-out><system-err>never reached</system-err></testcase></testsuite>");
	assert_int_equal(report_parse_junit(&r, b.ptr, b.len, "big.xml"), 0);
	out = sget(item(r, "cases", 0), "output");
	assert_non_null(out);  /* json_string accepted it: valid UTF-8 */
	n = strlen(out);
	assert_true(n <= 64 * 1024 + strlen("\n[truncated]"));
	assert_true(n > 60 * 1024);
	assert_string_equal(out + n - strlen("\n[truncated]"), "\n[truncated]");
	assert_null(strstr(out, "never reached"));
	json_decref(r);
	buf_release(&b);
}

/* ---- malformed and hostile XML -------------------------------------------- */

static void unknown_root_element_is_named_with_its_line(void **state)
{
	json_t *r = NULL;
	char *msg;
	(void)state;

	assert_int_equal(parse_fixture(&r, "junit", "wrong-root.xml", &msg), OTA_EINVAL);
	assert_non_null(strstr(msg, "wrong-root.xml:4: unknown element <tset>"));
	free(msg);
	expect_error("cppcheck", "<?xml version='1.0'?>\n<testsuites/>", "cc.xml", "cc.xml:2: unknown element <testsuites>");
}

static void malformed_xml_is_refused_with_file_and_line(void **state)
{
	json_t *r = NULL;
	char *msg;
	(void)state;

	/* cut in the middle of <failure>, on line 5 */
	assert_int_equal(parse_fixture(&r, "junit", "truncated.xml", &msg), OTA_EINVAL);
	assert_non_null(strstr(msg, "truncated.xml:5: "));
	free(msg);

	expect_error("junit", "Ran 3 tests in 0.1s\n\nOK\n", "stdout.txt", "stdout.txt:1: Start tag expected");
	expect_error("junit", "{\"tests\": 3}", "report.json", "report.json:1: ");
	expect_error("junit", "", "empty.xml", "empty.xml:1: ");
	expect_error("junit", "<testsuites>\n<testsuite>\n</testsuites>\n", "mismatch.xml",
		     "mismatch.xml:3: Opening and ending tag mismatch: testsuite line 2 and testsuites");
	expect_error("cppcheck", "<results version='2'>\n<errors>\n<error id='x'\n", "cut.xml", "cut.xml:");
	/* a message never ends in libxml2's newline */
	msg = parse_error("junit", "<a>", "nl.xml");
	assert_non_null(msg);
	assert_true(msg[strlen(msg) - 1] != '\n');
	free(msg);
}

static void errors_past_line_65535_keep_their_line(void **state)
{
	struct buf b = BUF_INIT;
	char *msg;
	(void)state;

	buf_puts(&b, "<testsuite name='long'>\n");
	for (int i = 0; i < 70000; i++)
		buf_puts(&b, "<testcase name='x'/>\n");
	buf_puts(&b, "<testcase name='y'>\n</testsuite>\n");
	msg = parse_error("junit", b.ptr, "long.xml");
	assert_non_null(msg);
	if (!strstr(msg, "long.xml:70003: "))
		fail_msg("got '%s'", msg);
	free(msg);
	buf_release(&b);
}

static void more_cases_than_the_limit_are_refused(void **state)
{
	struct buf b = BUF_INIT;
	json_t *r = NULL;
	(void)state;

	buf_puts(&b, "<testsuite>");
	for (int i = 0; i < 250001; i++)
		buf_puts(&b, "<testcase/>");
	buf_puts(&b, "</testsuite>");
	assert_int_equal(report_parse_junit(&r, b.ptr, b.len, "many.xml"), OTA_ETOOBIG);
	assert_null(r);
	assert_non_null(strstr(ota_error_last(), "many.xml:1: more than 250000 test cases"));
	buf_release(&b);
}

static void bad_encodings_are_refused_without_writing_to_stderr(void **state)
{
	static const char *const docs[] = {
		"<?xml version=\"1.0\" encoding=\"EUC-JP\"?>\n<testsuite name=\"\xff\xfe\x00\x00\"/>",
		"<?xml version=\"1.0\" encoding=\"ISO-2022-JP\"?>\n<testsuite name=\"\x1b$B\xff\xff\"/>",
		"<?xml version=\"1.0\"?>\n<testsuite name=\"\xc3\x28\"/>",
	};
	static const size_t lens[] = { 64, 70, 44 };  /* the first holds NULs */
	FILE *tmp = tmpfile();
	int saved = dup(2);
	json_t *r, *j;
	long written;
	char *msg;
	(void)state;

	assert_non_null(tmp);
	assert_true(saved >= 0);
	fflush(stderr);
	assert_true(dup2(fileno(tmp), 2) >= 0);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(docs); i++) {
		r = NULL;
		assert_int_equal(report_parse_junit(&r, docs[i], lens[i], "enc.xml"), OTA_EINVAL);
		msg = xstrdup(ota_error_last());
		json_decref(r);
		j = json_string(msg);  /* valid UTF-8 */
		if (strncmp(msg, "enc.xml:", 8) != 0 || !j)
			fail_msg("doc %zu: '%s'", i, msg);
		json_decref(j);
		free(msg);
	}
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	written = ftell(tmp) < 0 ? -1 : (fseek(tmp, 0, SEEK_END), ftell(tmp));
	fclose(tmp);
	assert_int_equal(written, 0);
}

static void billion_laughs_is_refused_without_expanding(void **state)
{
	json_t *r = NULL;
	char *msg;
	(void)state;

	assert_int_equal(parse_fixture(&r, "junit", "billion-laughs.xml", &msg), OTA_EINVAL);
	assert_string_equal(msg, "billion-laughs.xml:3: DTDs with entities are not accepted");
	free(msg);
	/* the same document claiming to be cppcheck output */
	assert_int_equal(parse_fixture(&r, "cppcheck", "billion-laughs.xml", &msg), OTA_EINVAL);
	assert_non_null(strstr(msg, "DTDs with entities are not accepted"));
	free(msg);
}

static void external_entities_are_refused_and_never_read(void **state)
{
	static const char *const files[] = { "xxe.xml", "xxe-parameter.xml", "xxe-external-dtd.xml" };
	json_t *r = NULL;
	char *msg, *dump;
	(void)state;

	/* whatever the outcome, nothing of /etc/passwd appears */
	for (size_t i = 0; i < OTA_ARRAY_SIZE(files); i++) {
		for (int f = 0; f < 2; f++) {
			r = NULL;
			if (parse_fixture(&r, f ? "cppcheck" : "junit", files[i], &msg) < 0) {
				if (!strstr(msg, files[i]) || strstr(msg, "root:") || strstr(msg, "/bin/"))
					fail_msg("%s: %s", files[i], msg);
			} else {
				dump = json_dumps(r, JSON_COMPACT);
				if (strstr(dump, "root:") || strstr(dump, "/bin/"))
					fail_msg("%s: %s", files[i], dump);
				free(dump);
			}
			json_decref(r);
			free(msg);
		}
	}
	assert_int_equal(parse_fixture(&r, "junit", "xxe.xml", &msg), OTA_EINVAL);
	assert_string_equal(msg, "xxe.xml:3: DTDs with entities are not accepted");
	free(msg);
	assert_int_equal(parse_fixture(&r, "cppcheck", "xxe-parameter.xml", &msg), OTA_EINVAL);
	assert_string_equal(msg, "xxe-parameter.xml:3: DTDs with entities are not accepted");
	free(msg);
	/* an external DTD is never loaded: &xxe; stays an empty reference */
	r = parse_ok("junit", "xxe-external-dtd.xml");
	assert_int_equal(iget(r, "tests"), 1);
	assert_null(json_object_get(item(r, "cases", 0), "output"));
	json_decref(r);
}

static void doctype_without_entities_is_accepted(void **state)
{
	static const char doc[] = "<?xml version='1.0'?>\n<!DOCTYPE testsuite>\n"
				  "<testsuite name='s'><testcase name='a &amp; &#x263A;'/></testsuite>";
	json_t *r = NULL;
	(void)state;

	assert_int_equal(report_parse_junit(&r, doc, sizeof(doc) - 1, "dt.xml"), 0);
	assert_string_equal(sget(item(r, "cases", 0), "name"), "a & \xe2\x98\xba");
	json_decref(r);
}

/* ---- cppcheck ------------------------------------------------------------- */

static void expect_fingerprint(json_t *finding, const char *rule, const char *file, const char *message)
{
	unsigned char d[32];
	char hex[65];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
	EVP_DigestUpdate(ctx, rule, strlen(rule) + 1);
	EVP_DigestUpdate(ctx, file, strlen(file) + 1);
	EVP_DigestUpdate(ctx, message, strlen(message));
	EVP_DigestFinal_ex(ctx, d, NULL);
	EVP_MD_CTX_free(ctx);
	ota_hex(hex, d, 32);
	assert_string_equal(sget(finding, "fingerprint"), hex);
}

static void cppcheck_findings_use_first_location_and_keep_severity(void **state)
{
	json_t *r = parse_ok("cppcheck", "cppcheck.xml"), *f, *counts = json_object_get(r, "counts");
	(void)state;

	assert_int_equal(json_array_size(json_object_get(r, "findings")), 13);
	assert_int_equal(iget(counts, "error"), 5);
	assert_int_equal(iget(counts, "warning"), 1);
	assert_int_equal(iget(counts, "style"), 6);
	assert_int_equal(iget(counts, "information"), 1);
	assert_int_equal(iget(counts, "performance"), 0);
	assert_int_equal(iget(counts, "portability"), 0);

	f = item(r, "findings", 0);
	assert_string_equal(sget(f, "rule"), "arrayIndexOutOfBounds");
	assert_string_equal(sget(f, "severity"), "error");
	assert_string_equal(sget(f, "file"), "buggy.c");
	assert_int_equal(iget(f, "line"), 11);  /* the first <location>, not line 10 */
	assert_int_equal(iget(f, "column"), 4);
	assert_string_equal(sget(f, "message"), "Array 'a[4]' accessed at index 4, which is out of bounds.");
	expect_fingerprint(f, "arrayIndexOutOfBounds", "buggy.c",
			   "Array 'a[4]' accessed at index 4, which is out of bounds.");

	f = item(r, "findings", 3);
	assert_string_equal(sget(f, "rule"), "nullPointerRedundantCheck");
	assert_string_equal(sget(f, "severity"), "warning");
	assert_int_equal(iget(f, "line"), 39);

	/* no <location>: file "" and line 0 */
	f = item(r, "findings", 12);
	assert_string_equal(sget(f, "rule"), "missingIncludeSystem");
	assert_string_equal(sget(f, "severity"), "information");
	assert_string_equal(sget(f, "file"), "");
	assert_int_equal(iget(f, "line"), 0);
	expect_fingerprint(f, "missingIncludeSystem", "",
			   "Cppcheck cannot find all the include files (use --check-config for details)");
	json_decref(r);
}

static void cppcheck_fingerprint_survives_line_moves(void **state)
{
	static const char a[] = "<results version='2'><errors>"
				"<error id='r' severity='style' msg='m'><location file='x.c' line='3'/></error>"
				"<error id='r' severity='style' msg='m'><location file='x.c' line='90' column='2'/></error>"
				"<error id='r' severity='style' msg='m2'><location file='x.c' line='3'/></error>"
				"<error id='r' severity='style' msg='m'><location file='y.c' line='3'/></error>"
				"</errors></results>";
	json_t *r = NULL;
	const char *fp[4];
	(void)state;

	assert_int_equal(report_parse_cppcheck(&r, a, sizeof(a) - 1, "a.xml"), 0);
	for (size_t i = 0; i < 4; i++)
		fp[i] = sget(item(r, "findings", i), "fingerprint");
	assert_string_equal(fp[0], fp[1]);
	assert_string_not_equal(fp[0], fp[2]);
	assert_string_not_equal(fp[0], fp[3]);
	assert_int_equal(strlen(fp[0]), 64);
	json_decref(r);
}

static void cppcheck_version_1_is_refused(void **state)
{
	(void)state;
	expect_error("cppcheck", "<?xml version='1.0'?>\n<results>\n<error file='a.c' line='1' id='x' severity='error' msg='m'/>\n</results>",
		     "v1.xml", "v1.xml:2: cppcheck XML version 1 is not supported (run cppcheck with --xml-version=2)");
}

/* ---- SARIF ----------------------------------------------------------------- */

static void sarif_two_runs_give_levels_rules_and_locations(void **state)
{
	json_t *r = parse_ok("sarif", "two-runs.sarif"), *f, *counts = json_object_get(r, "counts");
	static const struct {
		const char *rule, *severity, *file;
		int line, column;
	} want[] = {
		{ "-Wanalyzer-double-free", "warning", "src/flash.c", 42, 5 },
		{ "-Wanalyzer-malloc-leak", "warning", "src/flash.c", 77, 1 },  /* artifactLocation.index */
		{ "error", "error", "src/flash.c", 90, 9 },
		{ "bugprone-sizeof-expression", "error", "src/crc.c", 12, 21 },  /* ruleIndex, rule default */
		{ "readability-magic-numbers", "note", "src/crc.c", 30, 0 },     /* rule.id, rule default */
		{ "cert-err33-c", "warning", "", 0, 0 },                         /* no level anywhere */
		{ "readability-magic-numbers", "none", "", 0, 0 },               /* kind "pass" */
	};
	(void)state;

	assert_int_equal(json_array_size(json_object_get(r, "findings")), OTA_ARRAY_SIZE(want));
	for (size_t i = 0; i < OTA_ARRAY_SIZE(want); i++) {
		f = item(r, "findings", i);
		if (strcmp(sget(f, "rule"), want[i].rule) || strcmp(sget(f, "severity"), want[i].severity) ||
		    strcmp(sget(f, "file"), want[i].file) || iget(f, "line") != want[i].line ||
		    iget(f, "column") != want[i].column)
			fail_msg("finding %zu: %s", i, json_dumps(f, JSON_COMPACT));
	}
	f = item(r, "findings", 0);
	assert_string_equal(sget(f, "message"), "double-'free' of 'buf'");
	expect_fingerprint(f, "-Wanalyzer-double-free", "src/flash.c", "double-'free' of 'buf'");
	assert_int_equal(iget(counts, "error"), 2);
	assert_int_equal(iget(counts, "warning"), 3);
	assert_int_equal(iget(counts, "note"), 1);
	assert_int_equal(iget(counts, "none"), 1);
	json_decref(r);
}

static void sarif_wrong_version_or_types_name_the_json_path(void **state)
{
	static const char *const res = "{\"ruleId\":\"r\",\"message\":{\"text\":\"t\"}}";
	static const struct {
		const char *doc, *expect;
	} cases[] = {
		{ "{\"version\":\"2.0.0\",\"runs\":[]}", "s.sarif: version: '2.0.0' is not supported (expected SARIF 2.1.0)" },
		{ "{\"runs\":[]}", "s.sarif: version: missing is not supported" },
		{ "{\"version\":2.1,\"runs\":[]}", "s.sarif: version: expected string" },
		{ "[1,2]", "s.sarif: top level: expected object" },
		{ "{\"version\":\"2.1.0\"}", "s.sarif: runs: missing" },
		{ "{\"version\":\"2.1.0\",\"runs\":{}}", "s.sarif: runs: expected array" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{},3]}", "s.sarif: runs[1]: expected object" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{\"results\":[%s,%s,%s,{\"message\":\"oops\"}]}]}",
		  "s.sarif: runs[0].results[3].message: expected object" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{\"results\":[%s,%s,%s,{\"ruleId\":7}]}]}",
		  "s.sarif: runs[0].results[3].ruleId: expected string" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{},{\"results\":[{\"level\":\"fatal\"}]}]}",
		  "s.sarif: runs[1].results[0].level: unknown level 'fatal'" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{\"results\":[{\"locations\":[{\"physicalLocation\":"
		  "{\"region\":{\"startLine\":\"12\"}}}]}]}]}",
		  "s.sarif: runs[0].results[0].locations[0].physicalLocation.region.startLine: expected integer" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{\"results\":[{\"locations\":[\"src/a.c\"]}]}]}",
		  "s.sarif: runs[0].results[0].locations[0]: expected object" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{\"tool\":{\"driver\":{\"rules\":[{\"id\":\"a\"},"
		  "{\"id\":\"b\",\"defaultConfiguration\":[]}]}}}]}",
		  "s.sarif: runs[0].tool.driver.rules[1].defaultConfiguration: expected object" },
		{ "{\"version\":\"2.1.0\",\"runs\":[{\"results\":[{\"message\":{\"text\":1}}]}]}",
		  "s.sarif: runs[0].results[0].message.text: expected string" },
		{ "{\"version\":\"2.1.0\",\n\"runs\":[\n{\"results\":[}]}", "s.sarif:3: " },
		{ "", "s.sarif:1: " },
	};
	(void)state;

	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		char *doc = xasprintf(cases[i].doc, res, res, res);
		expect_error("sarif", doc, "s.sarif", cases[i].expect);
		free(doc);
	}
}

static void sarif_with_null_runs_has_no_findings(void **state)
{
	static const char doc[] = "{\"version\":\"2.1.0\",\"runs\":null}";
	json_t *r = NULL;
	(void)state;

	assert_int_equal(report_parse_sarif(&r, doc, sizeof(doc) - 1, "null.sarif"), 0);
	assert_int_equal(json_array_size(json_object_get(r, "findings")), 0);
	assert_int_equal(iget(json_object_get(r, "counts"), "warning"), 0);
	json_decref(r);
}

/* ---- dispatch, limits, threads --------------------------------------------- */

static void unknown_format_is_refused_with_a_suggestion(void **state)
{
	json_t *r = NULL;
	(void)state;

	assert_true(report_format_known("junit"));
	assert_true(report_format_known("cppcheck"));
	assert_true(report_format_known("sarif"));
	assert_false(report_format_known("tap"));
	assert_false(report_format_known(NULL));
	expect_error("sarf", "{}", "x.sarif", "x.sarif: unknown report format 'sarf', did you mean 'sarif'?");
	/* over the size limit: refused before any byte is read */
	assert_int_equal(report_parse(&r, "junit", "<a/>", (size_t)REPORT_MAX_BYTES + 1, "huge.xml"), OTA_ETOOBIG);
	assert_non_null(strstr(ota_error_last(), "huge.xml"));
	assert_null(r);
}

struct worker {
	int id, failures;
	char got[256];
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char *name = xasprintf("t%d.xml", w->id);
	char *bad = xasprintf("<testsuites>\n<testsuite name='t%d'>\n</testsuites>", w->id);
	char *good = xasprintf("<testsuite name='t%d'><testcase name='c'/></testsuite>", w->id);
	char *want = xasprintf("t%d.xml:3: ", w->id);
	json_t *r;

	for (int i = 0; i < 50; i++) {
		r = NULL;
		if (report_parse_junit(&r, bad, strlen(bad), name) == 0 || strncmp(ota_error_last(), want, strlen(want))) {
			snprintf(w->got, sizeof(w->got), "%s", ota_error_last());
			w->failures++;
		}
		json_decref(r);
		r = NULL;
		if (report_parse_junit(&r, good, strlen(good), name) < 0 || iget(r, "tests") != 1)
			w->failures++;
		json_decref(r);
	}
	free(name);
	free(bad);
	free(good);
	free(want);
	return NULL;
}

static void parses_in_parallel_keep_their_own_errors(void **state)
{
	struct worker w[4] = { { 0 } };
	pthread_t t[4];
	(void)state;

	for (int i = 0; i < 4; i++) {
		w[i].id = i;
		assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		if (w[i].failures)
			fail_msg("thread %d: %d failures, last error '%s'", i, w[i].failures, w[i].got);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(junit_nested_suites_are_flattened_and_counts_recomputed),
		cmocka_unit_test(junit_single_testsuite_root_is_one_suite),
		cmocka_unit_test(junit_missing_attributes_are_tolerated),
		cmocka_unit_test(junit_empty_suites_have_no_cases),
		cmocka_unit_test(junit_output_is_capped_at_64k_and_marked_truncated),
		cmocka_unit_test(unknown_root_element_is_named_with_its_line),
		cmocka_unit_test(malformed_xml_is_refused_with_file_and_line),
		cmocka_unit_test(errors_past_line_65535_keep_their_line),
		cmocka_unit_test(more_cases_than_the_limit_are_refused),
		cmocka_unit_test(bad_encodings_are_refused_without_writing_to_stderr),
		cmocka_unit_test(billion_laughs_is_refused_without_expanding),
		cmocka_unit_test(external_entities_are_refused_and_never_read),
		cmocka_unit_test(doctype_without_entities_is_accepted),
		cmocka_unit_test(cppcheck_findings_use_first_location_and_keep_severity),
		cmocka_unit_test(cppcheck_fingerprint_survives_line_moves),
		cmocka_unit_test(cppcheck_version_1_is_refused),
		cmocka_unit_test(sarif_two_runs_give_levels_rules_and_locations),
		cmocka_unit_test(sarif_wrong_version_or_types_name_the_json_path),
		cmocka_unit_test(sarif_with_null_runs_has_no_findings),
		cmocka_unit_test(unknown_format_is_refused_with_a_suggestion),
		cmocka_unit_test(parses_in_parallel_keep_their_own_errors),
	};
	return cmocka_run_group_tests_name("reports", tests, NULL, NULL);
}
