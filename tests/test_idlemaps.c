/*
 * test_idlemaps.c - what an idle otacd maps (issue 18, idle Rss): libxml2,
 * and through it ICU and libstdc++, are not in the process until the
 * first XML report arrives (orchestrator/xmlload.h); then a JUnit report
 * is parsed as before and libxml2 is there.  libcurl and libpq (and the
 * Kerberos and LDAP libraries they link) are not there either while no
 * update server, S3 store, HTTP gate provider or PostgreSQL database needs
 * them (common/curlload.h, orchestrator/db/pgload.h); those paths are
 * tested through the loaders by test_updsrv, test_origin and test_db.
 * Nor libmosquitto and the libssl it links without a push: block
 * (orchestrator/push/mqtt.c; test_push publishes through the loader).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "harness.h"

/* Whether /proc/PID/maps names a file whose name contains what. */
static int maps_has(pid_t pid, const char *what)
{
	struct buf maps = BUF_INIT;
	char *path = xasprintf("/proc/%ld/maps", (long)pid);
	int found;

	assert_int_equal(ota_read_file(&maps, path, 64 << 20), 0);
	found = strstr(buf_cstr(&maps), what) != NULL;
	buf_release(&maps);
	free(path);
	return found;
}

static void libxml2_is_loaded_only_with_the_first_xml_report_and_curl_and_pq_not_at_all(void **state)
{
	struct daemon d;
	json_t *reports = NULL;
	char *path, *text;
	int64_t run;
	(void)state;

	h_init(&d, NULL);
	assert_int_equal(h_start(&d, (const char *const[]){ "--local-agents", "1", NULL }), 0);
	/* a run without reports: still nothing of libxml2 */
	run = h_trigger(&d, "name: plain\nstages:\n  - { name: s, steps: [ { run: 'true' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "passed");
	assert_false(maps_has(d.pid, "libxml2.so"));
	assert_false(maps_has(d.pid, "libicuuc.so"));
	assert_false(maps_has(d.pid, "libcurl.so"));
	assert_false(maps_has(d.pid, "libpq.so"));
	assert_false(maps_has(d.pid, "libldap"));
	assert_false(maps_has(d.pid, "libkrb5.so"));
	assert_false(maps_has(d.pid, "libmosquitto.so"));
	assert_false(maps_has(d.pid, "libssl.so"));
#ifndef __SANITIZE_ADDRESS__ /* ASan/UBSan's runtime maps libstdc++ itself */
	assert_false(maps_has(d.pid, "libstdc++.so"));
#endif

	/* the first JUnit report: parsed as ever, and libxml2 is now mapped */
	run = h_trigger(&d, "name: rep\nstages:\n"
			    "  - name: t\n    kind: test\n    reports: { junit: report.xml }\n"
			    "    steps:\n      - run: |\n"
			    "          printf '<testsuite name=\"s\"><testcase classname=\"c\" name=\"works\"/>"
			    "<testcase classname=\"c\" name=\"line\"><failure message=\"boom\">x</failure></testcase>"
			    "</testsuite>' > report.xml\n");
	assert_string_equal(h_wait_run(&d, run, 60000), "failed"); /* one failed test case */
	path = xasprintf("/api/v1/runs/%lld/reports", (long long)run);
	assert_int_equal(h_get(&d, path, &reports), 200);
	text = json_dumps(reports, 0);
	assert_non_null(strstr(text, "\"works\""));
	assert_non_null(strstr(text, "boom"));
	assert_true(maps_has(d.pid, "libxml2.so"));

	free(text);
	free(path);
	json_decref(reports);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(libxml2_is_loaded_only_with_the_first_xml_report_and_curl_and_pq_not_at_all),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
