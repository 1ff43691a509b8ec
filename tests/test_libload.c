/*
 * test_libload.c - the on-demand loaders (common/libload.h, issue 18):
 * libcurl and libpq are found and every function of their tables is
 * filled, and a library or symbol that is missing is an error that names
 * it and says what it was for, not a crash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/curlload.h"
#include "../common/libload.h"
#include "../orchestrator/db/pgload.h"

/* Every slot of a table of function pointers is set. */
static void assert_all_set(const void *table, size_t size)
{
	void *const *slot = table;
	for (size_t i = 0; i < size / sizeof(void *); i++)
		if (!slot[i])
			fail_msg("slot %zu of the table is empty", i);
}

static void libcurl_and_libpq_tables_are_complete(void **state)
{
	const struct curlload *cu = curlload_get();
	const struct pgload *pq = pgload_get();
	(void)state;

	if (!cu)
		fail_msg("%s", curlload_error());
	if (!pq)
		fail_msg("%s", pgload_error());
	assert_all_set(cu, sizeof(*cu));
	assert_all_set(pq, sizeof(*pq));
	assert_string_equal(curlload_error(), "");
	/* and they work: a call through each */
	{
		char *e = cu->easy_escape(NULL, "a b/c", 0);
		assert_string_equal(e, "a%20b%2Fc");
		cu->free(e);
	}
	assert_int_equal(pq->status(NULL), CONNECTION_BAD);
}

static void a_missing_library_or_symbol_is_an_error_naming_it(void **state)
{
	void (*f)(void) = NULL;
	const struct libload_sym missing_lib[] = { { "anything", &f } };
	const struct libload_sym missing_sym[] = { { "otacd_no_such_function", &f } };
	char err[256];
	(void)state;

	assert_int_equal(libload_open("libotacd-none.so.9", "a test", missing_lib, 1, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "cannot load libotacd-none.so.9 (for a test): "));
	assert_int_equal(libload_open("libc.so.6", "a test", missing_sym, 1, err, sizeof(err)), -1);
	assert_string_equal(err, "libc.so.6: no symbol otacd_no_such_function");
	assert_null(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(libcurl_and_libpq_tables_are_complete),
		cmocka_unit_test(a_missing_library_or_symbol_is_an_error_naming_it),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
