/*
 * test_ckbody.c - the device API reads check-in bodies in one pass of
 * its own (fleet_ckbody_parse) instead of jansson: proof that nothing
 * changes for a device.  On a corpus of good bodies and bad ones (malformed JSON,
 * duplicate keys, bad escapes, invalid UTF-8, \u0000, lone surrogates,
 * leading zeros, overflowing integers, trailing garbage, field-rule
 * violations, a wrong credential):
 *
 *   - whatever the fast path accepts, jansson parses to the same fields,
 *     and whatever jansson refuses, the fast path leaves to jansson; the
 *     ordinary bodies are taken by the fast path (it is really used);
 *   - over real HTTP, the device listener (fast path, jansson fallback)
 *     answers every body with the same status and the same error text as
 *     the jansson path does in-process on a twin fleet.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"
#include "../orchestrator/fleet/fleet_ckbody.h"
#include "../orchestrator/fleet/fleet_int.h"

#define KEY "fleet-key-for-tests-0123456789"
#define SECRET "device-secret-for-tests-0123456789abcdef0123456789abcdef0123456789"

/* what the corpus expects of the fast path */
enum { FAST, JANSSON_REFUSES, EITHER };

struct body {
	int expect;
	const char *text;
	size_t len; /* 0: strlen(text) */
};

#define GOOD_HEAD "\"device\":\"dev-1\",\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.0.0\""
#define GOOD "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":1"
#define TAGS17 \
	"{\"a\":\"1\",\"b\":\"1\",\"c\":\"1\",\"d\":\"1\",\"e\":\"1\",\"f\":\"1\",\"g\":\"1\",\"h\":\"1\",\"i\":\"1\"," \
	"\"j\":\"1\",\"k\":\"1\",\"l\":\"1\",\"m\":\"1\",\"n\":\"1\",\"o\":\"1\",\"p\":\"1\",\"q\":\"1\"}"

static const struct body corpus[] = {
	/* good bodies */
	{ FAST, GOOD ",\"slot\":\"confirmed\",\"tags\":{\"region\":\"eu\",\"tier\":\"standard\"}}", 0 },
	{ FAST, GOOD "}", 0 },
	{ FAST, " \r\n\t{ \"device\" : \"dev-1\" ,\n\"product\":\"fw\",\t\"hardware\":\"mps2-an385\",\"bootloader\":"
		"\"1.0.0\",\"version\":\"1.0.0\",\"security_counter\" :\n1 , \"tags\" : { \"region\" : \"eu\" } }\n ", 0 },
	{ FAST, GOOD ",\"tags\":null}", 0 },
	{ FAST, GOOD ",\"tags\":{}}", 0 },
	{ FAST, "{\"security_counter\":1,\"version\":\"1.0.0\",\"tags\":{\"region\":\"us\"},\"bootloader\":\"1.0.0\","
		"\"hardware\":\"mps2-an385\",\"product\":\"fw\",\"device\":\"dev-1\"}", 0 },
	{ FAST, GOOD ",\"x\":1,\"y\":\"s\",\"z\":true,\"w\":null,\"v\":-5,\"u\":false}", 0 },
	{ FAST, "{\"device\":\"dev\\u002d1\",\"product\":\"f\\u0077\",\"hardware\":\"mps2\\/an385\",\"bootloader\":"
		"\"1.0.0\",\"version\":\"1.0.0\",\"security_counter\":1}", 0 },
	{ FAST, "{\"\\u0064evice\":\"dev-1\",\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.0.0\","
		"\"version\":\"1.0.0\",\"security_counter\":1}", 0 },
	{ FAST, GOOD ",\"note\":\"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 \xf0\x9f\x98\x80 \xe2\x82\xac \\\" \\\\ \\b\\f\\n\\r\\t\"}",
	  0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":-0}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":9223372036854775807}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":0,\"big\":-9223372036854775808}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":1,\"\x7f\":\"\x7f\"}", 0 },
	/* the one-pass reader's edges: an escape before a closing quote, quotes
	 * and backslashes inside keys, whitespace inside "tags", an empty key */
	{ FAST, GOOD ",\"x\":\"a\\\\\",\"y\":\"\\\"\",\"a\\\"b\":1,\"c\\\\\":\"\\\\\\\"\"}", 0 },
	{ FAST, GOOD ",\"tags\" : { \"region\" : \"e\\u0075\" , \"t\\u0069er\"\n:\t\"x\" } }", 0 },
	{ FAST, GOOD ",\"tags\":{ }}", 0 },
	{ FAST, GOOD ",\"\":1}", 0 },
	{ FAST, GOOD ",\"slot\":\"c\\u006fnfirmed\"}", 0 },
	{ FAST, GOOD ",\"x\":0,\"y\":-0,\"z\":10}", 0 },
	/* JSON, but refused by a field rule (or the credential) */
	{ FAST, "{\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.0.0\",\"version\":\"1.0.0\","
		"\"security_counter\":1}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"abc\",\"security_counter\":1}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"security_counter\":1}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\"}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":\"3\"}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":-1}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":true}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":null}", 0 },
	{ FAST, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":-9223372036854775808}", 0 },
	{ FAST, GOOD ",\"slot\":\"other\"}", 0 },
	{ FAST, GOOD ",\"slot\":5}", 0 },
	{ FAST, GOOD ",\"slot\":null}", 0 },
	{ FAST, GOOD ",\"tags\":\"eu\"}", 0 },
	{ FAST, GOOD ",\"tags\":true}", 0 },
	{ FAST, GOOD ",\"tags\":{\"region\":\"e u\"}}", 0 },
	{ FAST, GOOD ",\"tags\":{\"bad key!\":\"x\"}}", 0 },
	{ FAST, GOOD ",\"tags\":{\"region\":\"\"}}", 0 },
	{ FAST, "{\"device\":\"dev-1\",\"product\":7,\"hardware\":\"mps2-an385\",\"bootloader\":\"1.0.0\","
		"\"version\":\"1.0.0\",\"security_counter\":1}", 0 },
	{ FAST, "{\"device\":\"dev-1\",\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.0\","
		"\"version\":\"1.0.0\",\"security_counter\":1}", 0 },
	{ FAST, "{\"device\":\"dev-2\",\"product\":\"fw\",\"hardware\":\"mps2-an385\",\"bootloader\":\"1.0.0\","
		"\"version\":\"1.0.0\",\"security_counter\":1}", 0 },
	{ FAST, "{\"device\":5,\"product\":\"fw\"}", 0 },
	{ FAST, "{}", 0 },
	{ EITHER, GOOD ",\"tags\":" TAGS17 "}", 0 },
	{ EITHER, GOOD ",\"tags\":{\"region\":5}}", 0 },
	{ EITHER, GOOD ",\"tags\":{\"region\":[\"eu\"]}}", 0 },
	{ EITHER, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":3.0}", 0 },
	{ EITHER, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":1e2}", 0 },
	{ EITHER, GOOD ",\"x\":1.5,\"y\":[1,2,{\"a\":1}],\"z\":{\"k\":\"v\"}}", 0 },
	{ EITHER, "{\"device\":{\"id\":\"dev-1\"}}", 0 },
	{ EITHER, "[]", 0 },
	{ EITHER, "[" GOOD "}]", 0 },
	/* not JSON jansson accepts */
	{ JANSSON_REFUSES, "", 0 },
	{ JANSSON_REFUSES, "  \n", 0 },
	{ JANSSON_REFUSES, "3", 0 },
	{ JANSSON_REFUSES, "\"dev-1\"", 0 },
	{ JANSSON_REFUSES, "null", 0 },
	{ JANSSON_REFUSES, "{", 0 },
	{ JANSSON_REFUSES, GOOD, 0 },
	{ JANSSON_REFUSES, GOOD ",}", 0 },
	{ JANSSON_REFUSES, "{,\"device\":\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, "{\"device\":\"dev-1\" \"product\":\"fw\"}", 0 },
	{ JANSSON_REFUSES, "{\"device\"::\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, "{\"device\":}", 0 },
	{ JANSSON_REFUSES, "{\"device\"}", 0 },
	{ JANSSON_REFUSES, "{\"device\",\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, "{1:2}", 0 },
	{ JANSSON_REFUSES, "{'device':'dev-1'}", 0 },
	{ JANSSON_REFUSES, "{device:\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, GOOD "} x", 0 },
	{ JANSSON_REFUSES, GOOD "}{}", 0 },
	{ JANSSON_REFUSES, GOOD "}\0", sizeof(GOOD "}\0") - 1 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"a\0b\"}", sizeof(GOOD ",\"x\":\"a\0b\"}") - 1 },
	{ JANSSON_REFUSES, "\xef\xbb\xbf" GOOD "}", 0 },
	{ JANSSON_REFUSES, GOOD "} // comment", 0 },
	{ JANSSON_REFUSES, GOOD ",\"device\":\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"\\u0064evice\":\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1,\"x\":2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu\",\"region\":\"us\"}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"a\":\"1\"},\"tags\":null}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":{\"a\":1,\"a\":2}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"tab\there\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"nl\nhere\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\x41\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\u00\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\u00g0\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\u0000\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\\u0000\":\"a\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\ud800\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\udc00\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\ud800\\u0041\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\ud800x\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\xff\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\xc0\xaf\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\xe0\x80\xaf\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\xed\xa0\x80\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\xf4\x90\x80\x80\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\xe2\x82\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\x80\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"\xff\":1}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":01}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":-}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":+1}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":.5}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1.}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1e}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":0x10}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":tru}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":truex}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":nul}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":NaN}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":9223372036854775808}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":-9223372036854775809}", 0 },
	{ JANSSON_REFUSES, "{" GOOD_HEAD ",\"version\":\"1.0.0\",\"security_counter\":99999999999999999999}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu\",}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\" \"eu\"}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu\"]}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":[1,2}", 0 },
	/* the one-pass reader's edges: ends and separators it checks itself */
	{ JANSSON_REFUSES, "{\"device\":\"dev-1", 0 },
	{ JANSSON_REFUSES, "{\"device\":\"dev-1\\", 0 },
	{ JANSSON_REFUSES, "{\"device\":\"dev-1\\\"}", 0 },
	{ JANSSON_REFUSES, "{\"dev", 0 },
	{ JANSSON_REFUSES, "{\"device\":1", 0 },
	{ JANSSON_REFUSES, "{\"device\":", 0 },
	{ JANSSON_REFUSES, "{\"device\"", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1\"y\":2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1-2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":- 1}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1 2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1:2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":true1}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"a\"\"b\"}", 0 },
	{ JANSSON_REFUSES, GOOD "}\"", 0 },
	{ JANSSON_REFUSES, GOOD ",\"\":1,\"\":2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":1,\"\\u0078\":2}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"r\":\"1\",\"\\u0072\":\"2\"}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{,}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\"}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu\"", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu}}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"tags\":{\"region\":\"eu\"}}}", 0 },
	{ JANSSON_REFUSES, "{\f}", 0 },
	{ JANSSON_REFUSES, "{\v\"device\":\"dev-1\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\u12\"}", 0 },
	{ JANSSON_REFUSES, GOOD ",\"x\":\"\\ud83d\\u", 0 },
};

#define NCORPUS (sizeof(corpus) / sizeof(corpus[0]))

static size_t len_of(const struct body *b)
{
	return b->len ? b->len : strlen(b->text);
}

/* ---- the parsers agree ----------------------------------------------------- */

static void fast_path_reads_what_jansson_reads(void **state)
{
	size_t fast = 0, want_fast = 0, refused = 0;
	(void)state;
	for (size_t i = 0; i < NCORPUS; i++) {
		struct fleet_ckbody a, b;
		json_error_t err;
		json_t *j = json_loadb(corpus[i].text, len_of(&corpus[i]), JSON_REJECT_DUPLICATES, &err);
		int rc = fleet_ckbody_parse(&a, corpus[i].text, len_of(&corpus[i]));

		if (rc == 0) {
			fast++;
			if (!j || !fleet_ckbody_equal(&a, (fleet_ckbody_from_json(&b, j), &b)))
				fail_msg("corpus[%zu] taken by the fast path, but jansson %s: %s", i,
					 j ? "reads other fields" : "refuses it", corpus[i].text);
		} else {
			assert_int_equal(rc, 1);
		}
		if (corpus[i].expect == FAST && rc != 0)
			fail_msg("corpus[%zu] left to jansson: %s", i, corpus[i].text);
		if (corpus[i].expect == JANSSON_REFUSES && j)
			fail_msg("corpus[%zu]: jansson accepts it: %s", i, corpus[i].text);
		want_fast += corpus[i].expect == FAST;
		refused += corpus[i].expect == JANSSON_REFUSES;
		json_decref(j);
	}
	assert_int_equal(fast, want_fast);
	assert_true(want_fast >= 30 && refused >= 60);
}

/* The fields read are the body's, and strings are decoded. */
static void fast_path_decodes_escapes_and_utf8(void **state)
{
	struct fleet_ckbody a;
	static const char body[] = "{\"device\":\"dev\\u002d1\",\"product\":\"caf\\u00e9\xc3\xa9\",\"hardware\":"
				   "\"\\ud83d\\ude00\",\"bootloader\":\"1.0.0\",\"version\":\"1.0.0\",\"security_counter\":-0,"
				   "\"tags\":{\"r\\u0065gion\":\"eu\"}}";
	(void)state;
	assert_int_equal(fleet_ckbody_parse(&a, body, sizeof(body) - 1), 0);
	assert_int_equal(a.kind[FCK_DEVICE], FCK_STRING);
	assert_string_equal(a.str[FCK_DEVICE], "dev-1");
	assert_string_equal(a.str[FCK_PRODUCT], "caf\xc3\xa9\xc3\xa9");
	assert_string_equal(a.str[FCK_HARDWARE], "\xf0\x9f\x98\x80");
	assert_int_equal(a.kind[FCK_SLOT], FCK_ABSENT);
	assert_int_equal(a.counter_kind, FCK_INTEGER);
	assert_int_equal(a.counter, 0);
	assert_int_equal(a.tags_kind, FCK_OBJECT);
	assert_int_equal(a.ntags, 1);
	assert_string_equal(a.tag_key[0], "region");
	assert_string_equal(a.tag_val[0], "eu");
}

/* A bootloader version is X.Y.Z of 1..10 digits each within uint32, as it
 * was when strtoul read it (leading zeros allowed; no sign, no spaces). */
static void bootloader_versions_read_as_before(void **state)
{
	static const struct {
		const char *s;
		int ok;
		uint32_t v[3];
	} cases[] = {
		{ "1.2.3", 1, { 1, 2, 3 } },           { "0.0.0", 1, { 0, 0, 0 } },
		{ "01.002.0003", 1, { 1, 2, 3 } },     { "4294967295.0.4294967295", 1, { 4294967295u, 0, 4294967295u } },
		{ "0000000001.0.0", 1, { 1, 0, 0 } },  { "4294967296.0.0", 0, { 0 } },
		{ "00000000001.0.0", 0, { 0 } },       { "1.2", 0, { 0 } },
		{ "1.2.3.", 0, { 0 } },                { "1..3", 0, { 0 } },
		{ ".1.2", 0, { 0 } },                  { "+1.2.3", 0, { 0 } },
		{ " 1.2.3", 0, { 0 } },                { "1.2.3x", 0, { 0 } },
		{ "1.2.-3", 0, { 0 } },                { "", 0, { 0 } },
		{ "99999999999999999999.0.0", 0, { 0 } },
	};
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t v[3] = { 7, 7, 7 };
		int rc = fleet_xyz_parse(cases[i].s, v);
		if ((rc == 0) != cases[i].ok)
			fail_msg("\"%s\": %s", cases[i].s, rc == 0 ? "accepted" : "refused");
		if (cases[i].ok && memcmp(v, cases[i].v, sizeof(v)))
			fail_msg("\"%s\" read as %u.%u.%u", cases[i].s, v[0], v[1], v[2]);
	}
}

/* ---- the device listener answers as the jansson path does ---------------- */

struct twin {
	char dir[64];
	struct fleet *served, *ref;     /* behind devapi; read with jansson in-process */
	struct devapi *api;
	char cred[1][33];
};

struct sync_wait {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int done, rc;
	char err[512];
};

static void sync_done(void *ctx, int rc)
{
	struct sync_wait *w = ctx;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	w->rc = rc;
	if (rc < 0)
		snprintf(w->err, sizeof(w->err), "%s", ota_error_last());
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

static unsigned status_of(int rc)
{
	switch (rc) {
	case OTA_EINVAL: return 400;
	case OTA_ENOTFOUND: return 404;
	case OTA_ETOOBIG: return 413;
	case OTA_EAUTH: return 401;
	case OTA_ECONFLICT: return 429;
	case OTA_EPERM: return 403;
	default: return 500;
	}
}

/* What the device listener answered before the fast path: jansson's parse
 * (its message on a refusal), then the authenticated check-in. */
static long jansson_answer(struct fleet *f, const char *text, size_t len, const char *token, char *err, size_t n)
{
	json_error_t je;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	char answer[FLEET_ANSWER_MAX];
	struct sync_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "" };
	int rc;

	err[0] = 0;
	if (!j) {
		snprintf(err, n, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
		return 400;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		snprintf(err, n, "the body must be a JSON object");
		return 400;
	}
	rc = fleet_checkin_auth_text_async(f, j, token, answer, sizeof(answer), sync_done, &w);
	if (rc < 0)
		snprintf(err, n, "%s", ota_error_last());
	if (rc == 1) {
		pthread_mutex_lock(&w.mu);
		while (!w.done)
			pthread_cond_wait(&w.cond, &w.mu);
		pthread_mutex_unlock(&w.mu);
		rc = w.rc;
		snprintf(err, n, "%s", w.err);
	}
	json_decref(j);
	return rc < 0 ? (long)status_of(rc) : 200;
}

static void listener_answers_every_body_as_jansson_did(void **state)
{
	struct twin t;
	struct fleet_config cfg = { .fleet_key = KEY, .device_secret = SECRET, .poll_ms = 6 * 3600 * 1000LL };
	static const struct fleet_image img = { "mps2-an385",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "application", 100 };
	struct fleet_exposure x = { 0 };
	const char *ids[] = { "dev-1" };
	char ref_cred[1][33], *db, *url, *rm;
	size_t accepted = 0, offers = 0;
	(void)state;

	snprintf(t.dir, sizeof(t.dir), "/tmp/test_ckbody.XXXXXX");
	assert_non_null(mkdtemp(t.dir));
	x.release_id = 1;
	x.product = "fw";
	x.version = "1.1.0";
	x.security_counter = 1;
	x.min_bootloader = "1.0.0";
	x.images = &img;
	x.nimages = 1;
	x.active = 1;
	x.salt = "0123456789abcdef";
	x.basis_points = 10000;
	/* two fleets with one secret: the same device registered in both has
	 * the same credential, and the same bodies move both alike */
	db = xasprintf("%s/served.db", t.dir);
	cfg.db_path = db;
	assert_int_equal(fleet_open(&t.served, &cfg), 0);
	free(db);
	db = xasprintf("%s/ref.db", t.dir);
	cfg.db_path = db;
	assert_int_equal(fleet_open(&t.ref, &cfg), 0);
	free(db);
	assert_int_equal(fleet_register(t.served, ids, 1, "test", t.cred), 0);
	assert_int_equal(fleet_register(t.ref, ids, 1, "test", ref_cred), 0);
	assert_string_equal(t.cred[0], ref_cred[0]);
	assert_int_equal(fleet_set_exposure(t.served, &x), 0);
	assert_int_equal(fleet_set_exposure(t.ref, &x), 0);
	assert_int_equal(devapi_start(&t.api, t.served, "127.0.0.1:0", 1), 0);
	url = xasprintf("http://127.0.0.1:%d/device/v1/checkin", devapi_port(t.api));

	for (size_t i = 0; i < NCORPUS; i++) {
		struct httpc_response r;
		char want_err[1024];
		const char *got_err = "";
		json_t *ans;
		long want = jansson_answer(t.ref, corpus[i].text, len_of(&corpus[i]), t.cred[0], want_err, sizeof(want_err));

		assert_int_equal(httpc_request(&r, "POST", url, t.cred[0], "application/json", corpus[i].text,
					       len_of(&corpus[i]), 10000),
				 0);
		ans = json_loadb(r.body.ptr ? r.body.ptr : "", r.body.len, 0, NULL);
		if (r.status != 200)
			got_err = httpc_json_error(ans) ? httpc_json_error(ans) : "(no error member)";
		if (r.status != want || strcmp(got_err, want_err))
			fail_msg("corpus[%zu] %s\n  listener: %ld %s\n  jansson:  %ld %s", i, corpus[i].text, r.status,
				 got_err, want, want_err);
		if (r.status == 200) {
			/* the answer the device reads: 1.1.0 is offered to all of the
			 * fleet whose hardware and counter fit */
			json_t *offer = json_object_get(ans, "offer");
			assert_true(json_is_integer(json_object_get(ans, "next_poll_ms")));
			assert_true(json_is_null(offer) ||
				    !strcmp(json_string_value(json_object_get(offer, "version")) ?: "", "1.1.0"));
			offers += json_is_object(offer);
			accepted++;
		}
		json_decref(ans);
		httpc_response_release(&r);
	}
	/* the good bodies were good: they are not all refused */
	assert_true(accepted >= 14);
	assert_true(offers >= 10);

	free(url);
	devapi_stop(t.api);
	fleet_close(t.served);
	fleet_close(t.ref);
	rm = xasprintf("rm -rf '%s'", t.dir);
	assert_int_equal(system(rm), 0);
	free(rm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(fast_path_reads_what_jansson_reads),
		cmocka_unit_test(fast_path_decodes_escapes_and_utf8),
		cmocka_unit_test(bootloader_versions_read_as_before),
		cmocka_unit_test(listener_answers_every_body_as_jansson_did),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
