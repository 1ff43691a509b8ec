/*
 * test_util.c - the small building blocks: capped buffers, durations,
 * did-you-mean, atomic files, the scaled clock, the store's migrations, token
 * checks, artifact names, the log store's offset rules and the hash pipe.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <openssl/sha.h>

#include "../common/hashpipe.h"
#include "../common/util.h"
#include "../orchestrator/artifact.h"
#include "../orchestrator/auth.h"
#include "../orchestrator/clock.h"
#include "../orchestrator/logstore.h"
#include "../orchestrator/store.h"
#include "harness.h"

static void buf_refuses_to_grow_past_its_cap(void **state)
{
	struct buf b;
	(void)state;
	buf_init(&b, 8);
	assert_int_equal(buf_puts(&b, "12345678"), 0);
	assert_int_equal(buf_puts(&b, "9"), OTA_ETOOBIG);
	assert_int_equal(b.len, 8);
	assert_string_equal(buf_cstr(&b), "12345678");
	buf_release(&b);
}

static void durations_parse_units_and_reject_garbage(void **state)
{
	int64_t ms;
	(void)state;
	assert_int_equal(ota_parse_duration_ms("90", &ms), 0);
	assert_int_equal(ms, 90000);
	assert_int_equal(ota_parse_duration_ms("1h30m", &ms), 0);
	assert_int_equal(ms, 5400000);
	assert_int_equal(ota_parse_duration_ms("7d", &ms), 0);
	assert_int_equal(ms, 7 * 86400000LL);
	assert_int_equal(ota_parse_duration_ms("250ms", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_equal(ota_parse_duration_ms("10x", &ms), OTA_EINVAL);
	assert_int_equal(ota_parse_duration_ms("m", &ms), OTA_EINVAL);
	assert_int_equal(ota_parse_duration_ms("", &ms), OTA_EINVAL);
	assert_int_equal(ota_parse_duration_ms("99999999999999999999d", &ms), OTA_EINVAL);
}

static void did_you_mean_suggests_only_close_words(void **state)
{
	const char *const keys[] = { "steps", "needs", "matrix", "timeout" };
	(void)state;
	assert_string_equal(ota_did_you_mean("stpes", keys, 4), "steps");
	assert_string_equal(ota_did_you_mean("timout", keys, 4), "timeout");
	assert_null(ota_did_you_mean("banana", keys, 4));
}

static void scaled_clock_runs_faster_and_converts_deadlines(void **state)
{
	int64_t real = clock_real_ms();
	(void)state;
	clock_init(3600.0, real, real);
	/* one real second is an hour of otacd time */
	assert_in_range(clock_real_delay_ms(clock_now_ms() + 3600 * 1000), 900, 1001);
	assert_int_equal(clock_real_delay_ms(clock_now_ms() - 1), 0);
	clock_init(1.0, real, real);
}

static void store_migrates_once_and_reopens(void **state)
{
	char *dir = h_tmpdir(), *path = xasprintf("%s/db", dir), *v = NULL;
	struct store *s = NULL;
	struct buf out = BUF_INIT;
	(void)state;
	struct buf first = BUF_INIT;
	assert_int_equal(store_open(&s, path), 0);
	assert_int_equal(store_meta_set(s, "k", "v1"), 0);
	store_close(s);
	assert_int_equal(h_sh(&first, "sqlite3 %s 'SELECT COUNT(*), MAX(version) FROM schema_migrations'", path), 0);
	assert_int_equal(store_open(&s, path), 0);
	assert_int_equal(store_meta_get(s, "k", &v), 0);
	assert_string_equal(v, "v1");
	assert_int_equal(store_meta_get(s, "missing", &v), OTA_ENOTFOUND);
	store_close(s);
	/* every migration applied once, in order; reopening applies none again */
	assert_int_equal(h_sh(&out, "sqlite3 %s 'SELECT COUNT(*), MAX(version) FROM schema_migrations'", path), 0);
	assert_string_equal(buf_cstr(&out), buf_cstr(&first));
	{
		int count = -1, max = -2;
		assert_int_equal(sscanf(buf_cstr(&out), "%d|%d", &count, &max), 2);
		assert_int_equal(count, max);   /* each version once, none skipped */
	}
	assert_int_equal(h_sh(&out, "sqlite3 %s 'PRAGMA journal_mode'", path), 0);
	assert_string_equal(buf_cstr(&out), "wal\n");
	buf_release(&first);
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(v);
	free(path);
	free(dir);
}

static void tokens_are_checked_by_hash_and_role(void **state)
{
	char *dir = h_tmpdir(), *path = xasprintf("%s/db", dir), *tok = NULL;
	struct store *s = NULL;
	struct buf out = BUF_INIT;
	(void)state;
	assert_int_equal(store_open(&s, path), 0);
	assert_int_equal(auth_create(s, "ops", ROLE_OPERATOR, &tok), 0);
	assert_int_equal(auth_check(tok), ROLE_OPERATOR);
	assert_int_equal(auth_check("not-a-token"), ROLE_NONE);
	assert_int_equal(auth_check(NULL), ROLE_NONE);
	assert_true(auth_allows(ROLE_OPERATOR, ROLE_VIEWER));
	assert_false(auth_allows(ROLE_OPERATOR, ROLE_AGENT));
	assert_false(auth_allows(ROLE_AGENT, ROLE_VIEWER));
	assert_false(auth_allows(ROLE_VIEWER, ROLE_OPERATOR));
	/* the database holds the hash, never the token */
	assert_int_equal(h_sh(&out, "sqlite3 %s 'SELECT hash FROM tokens' | grep -c %s", path, tok), 1);
	store_close(s);
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(tok);
	free(path);
	free(dir);
}

static void artifact_names_must_stay_inside_the_store(void **state)
{
	(void)state;
	assert_true(artifact_name_valid("build/app.bin"));
	assert_true(artifact_name_valid("a..b/c"));
	assert_false(artifact_name_valid("../etc/passwd"));
	assert_false(artifact_name_valid("a/../../b"));
	assert_false(artifact_name_valid("/abs"));
	assert_false(artifact_name_valid("a//b"));
	assert_false(artifact_name_valid("a/"));
	assert_false(artifact_name_valid(""));
	assert_false(artifact_name_valid("bad\nname"));
}

static void log_store_appends_only_new_bytes_and_caps(void **state)
{
	char *dir = h_tmpdir();
	struct buf out = BUF_INIT;
	int64_t size = 0;
	(void)state;
	assert_int_equal(logstore_init(dir, 16), 0);
	assert_int_equal(logstore_append(1, 1, 0, "abc", 3, &size), 0);
	assert_int_equal(size, 3);
	assert_int_equal(logstore_append(1, 1, 10, "zzz", 3, &size), OTA_ECONFLICT);
	assert_int_equal(size, 3);
	assert_int_equal(logstore_append(1, 1, 1, "bcdef", 5, &size), 0);
	assert_int_equal(size, 6);
	assert_int_equal(logstore_read(1, 1, 0, 100, &out), 0);
	assert_string_equal(buf_cstr(&out), "abcdef");
	/* past the cap: truncated with a notice, later chunks accepted and dropped */
	assert_int_equal(logstore_append(1, 1, 6, "0123456789abcdef", 16, &size), 0);
	assert_int_equal(size, 22);
	assert_int_equal(logstore_append(1, 1, 22, "more", 4, &size), 0);
	assert_int_equal(size, 26);
	buf_clear(&out);
	assert_int_equal(logstore_read(1, 1, 0, 100, &out), 0);
	assert_non_null(strstr(buf_cstr(&out), "abcdef0123456789"));
	assert_non_null(strstr(buf_cstr(&out), "log truncated at 16 bytes"));
	assert_null(strstr(buf_cstr(&out), "more"));
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
}

/* Feed n pseudo-random bytes through a hashpipe in odd-sized pieces. */
static void hashpipe_digest(const unsigned char *data, size_t n, unsigned char md[32])
{
	struct hashpipe *h;
	char *block = NULL;
	size_t fill = 0, off = 0;

	assert_int_equal(hashpipe_new(&h), 0);
	while (off < n) {
		size_t piece = n - off < 7919 ? n - off : 7919;
		while (piece) {
			size_t take;
			if (!block)
				block = hashpipe_block(h);
			take = HASHPIPE_BLOCK - fill < piece ? HASHPIPE_BLOCK - fill : piece;
			memcpy(block + fill, data + off, take);
			fill += take;
			off += take;
			piece -= take;
			if (fill == HASHPIPE_BLOCK) {
				hashpipe_submit(h, fill, 0);
				block = NULL;
				fill = 0;
			}
		}
	}
	if (!block)
		block = hashpipe_block(h);
	hashpipe_submit(h, fill, 1);
	hashpipe_final(h, md);
	hashpipe_free(h);
}

static void hashpipe_matches_one_shot_sha256_at_every_block_boundary(void **state)
{
	const size_t B = HASHPIPE_BLOCK;
	const size_t sizes[] = { 0, 1, B - 1, B, B + 1, 2 * B, HASHPIPE_BLOCKS * B, (HASHPIPE_BLOCKS + 1) * B + 7,
				 3 * HASHPIPE_BLOCKS * B + 12345 };
	size_t max = sizes[OTA_ARRAY_SIZE(sizes) - 1];
	unsigned char *data = xmalloc(max), want[32], got[32];
	uint32_t x = 2463534242u;
	struct hashpipe *h;

	(void)state;
	for (size_t i = 0; i < max; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		data[i] = (unsigned char)x;
	}
	for (size_t i = 0; i < OTA_ARRAY_SIZE(sizes); i++) {
		SHA256(data, sizes[i], want);
		hashpipe_digest(data, sizes[i], got);
		assert_memory_equal(got, want, 32);
	}
	/* abandoned halfway (an upload cut off): freeing stops the worker */
	assert_int_equal(hashpipe_new(&h), 0);
	for (int i = 0; i < 3; i++) {
		memset(hashpipe_block(h), i, B);
		hashpipe_submit(h, B, 0);
	}
	hashpipe_free(h);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(buf_refuses_to_grow_past_its_cap),
		cmocka_unit_test(durations_parse_units_and_reject_garbage),
		cmocka_unit_test(did_you_mean_suggests_only_close_words),
		cmocka_unit_test(scaled_clock_runs_faster_and_converts_deadlines),
		cmocka_unit_test(store_migrates_once_and_reopens),
		cmocka_unit_test(tokens_are_checked_by_hash_and_role),
		cmocka_unit_test(artifact_names_must_stay_inside_the_store),
		cmocka_unit_test(log_store_appends_only_new_bytes_and_caps),
		cmocka_unit_test(hashpipe_matches_one_shot_sha256_at_every_block_boundary),
	};
	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
