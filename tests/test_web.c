/*
 * test_web.c - the status page in a real browser: runs tests/web/test.mjs
 * (playwright-core driving Debian's headless Chromium against the real
 * otacd from $OTACD_BIN) and fails with its output if any check failed.
 * See docs/web.md for what it checks; screenshots go to $OTACD_TEST_OUT
 * (default /tmp/otacd-web-shots).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "harness.h"

static void status_page_works_in_headless_chromium(void **state)
{
	const char *src = getenv("OTACD_SRC"), *bin = getenv("OTACD_BIN");
	struct buf out = BUF_INIT;
	int rc;

	(void)state;
	if (!src || !*src)
		src = ".";
	if (!bin || !*bin)
		bin = "build/bin";
	if (access("/usr/bin/chromium", X_OK) != 0)
		fail_msg("/usr/bin/chromium is missing: install Debian's chromium (apt-get install chromium)");
	if (h_sh(&out, "command -v node && command -v npm") != 0)
		fail_msg("node and npm are missing: install Debian's nodejs and npm (apt-get install nodejs npm)");

	rc = h_sh(&out,
		  "(cd '%s/tests/web' && (test -d node_modules/playwright-core || npm ci --no-audit --no-fund) && "
		  "OTACD_BIN='%s' node test.mjs)",
		  src, bin);
	if (rc != 0) {
		fprintf(stderr, "%s\n", buf_cstr(&out));
		buf_release(&out);
		fail_msg("the browser test failed (exit %d); its output is above", rc);
	}
	/* the last line is the summary: "N passed, 0 failed" */
	assert_non_null(strstr(buf_cstr(&out), " passed, 0 failed"));
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(status_page_works_in_headless_chromium),
	};
	return cmocka_run_group_tests_name("web", tests, NULL, NULL);
}
