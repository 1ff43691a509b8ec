/*
 * test_manifest.c - the release manifest's schema: exactly the documented
 * fields, each of its type; anything else is refused by name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/manifest.h"

#define SHA "9814552eeadbc2a9908b918c341b2c8a1f771dec28ddda4de6e0cd56cfd876f3"

static const char *const good =
	"{\"product\":\"fw\",\"version\":\"1.2.0\",\"build_version\":\"1.2.0+7\",\"run\":7,"
	"\"git\":{\"repo\":\"acme/fw\",\"ref\":\"refs/tags/v1.2.0\",\"commit\":null,\"tree\":null},"
	"\"built_at\":\"2026-11-25T01:50:46.769Z\",\"builders\":[\"local-1\"],\"hardware\":[\"an385\"],"
	"\"min_bootloader\":\"2.0.0\",\"security_counter\":3,\"key_id\":\"d3ea\","
	"\"images\":[{\"name\":\"release/an385/app.signed.bin\",\"type\":\"application\",\"hardware\":\"an385\","
	"\"sha256\":\"" SHA "\",\"size\":5675}]}";

static char *check(const char *edit_from, const char *edit_to)
{
	struct buf b = BUF_INIT;
	const char *at = edit_from ? strstr(good, edit_from) : NULL;
	json_t *m;
	int rc;

	if (edit_from)
		assert_non_null(at);
	if (at) {
		buf_put(&b, good, (size_t)(at - good));
		buf_puts(&b, edit_to);
		buf_puts(&b, at + strlen(edit_from));
	} else {
		buf_puts(&b, good);
	}
	m = json_loads(b.ptr, 0, NULL);
	assert_non_null(m);
	rc = manifest_check(m);
	json_decref(m);
	buf_release(&b);
	return rc == 0 ? NULL : xstrdup(ota_error_last());
}

static void documented_manifest_passes(void **state)
{
	(void)state;
	assert_null(check(NULL, NULL));
}

static void unknown_or_missing_or_mistyped_fields_are_named(void **state)
{
	static const struct {
		const char *from, *to, *expect;
	} cases[] = {
		{ "\"product\":\"fw\",", "\"product\":\"fw\",\"channel\":\"beta\",", "unknown field 'channel'" },
		{ "\"size\":5675", "\"size\":5675,\"signed_by\":\"me\"", "unknown field 'images[0].signed_by'" },
		{ "\"tree\":null", "\"tree\":null,\"branch\":\"main\"", "unknown field 'git.branch'" },
		{ "\"security_counter\":3,", "", "field 'security_counter' is missing" },
		{ "\"security_counter\":3", "\"security_counter\":\"3\"", "field 'security_counter' has the wrong type" },
		{ "\"security_counter\":3", "\"security_counter\":-1", "field 'security_counter' has the wrong type" },
		{ "\"sha256\":\"" SHA "\"", "\"sha256\":\"ABC\"", "images[0].sha256 is not 64 lowercase hex digits" },
		{ "\"type\":\"application\",", "", "field 'images[0].type' is missing" },
		{ "\"hardware\":[\"an385\"]", "\"hardware\":[1]", "hardware[0] must be a string" },
	};
	(void)state;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(cases); i++) {
		char *msg = check(cases[i].from, cases[i].to);
		if (!msg || !strstr(msg, cases[i].expect))
			fail_msg("case %zu: got '%s', expected '%s'", i, msg ? msg : "(passed)", cases[i].expect);
		free(msg);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(documented_manifest_passes),
		cmocka_unit_test(unknown_or_missing_or_mistyped_fields_are_named),
	};
	return cmocka_run_group_tests_name("manifest", tests, NULL, NULL);
}
