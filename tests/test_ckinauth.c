/*
 * test_ckinauth.c - the check-in hot path's shortcuts (issue 19 part 5)
 * keep every refusal: a device's credential is computed once per
 * generation and remembered with its registry entry, a device's tags live
 * inside it when they fit, and the answer is written without printf.
 * Through real HTTP on loopback against a fleet in this process, as
 * test_fleet.c does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "../common/util.h"
#include "../orchestrator/fleet/fleet.h"

#define KEY "fleet-key-for-tests-0123456789"
#define SECRET "device-secret-for-tests-0123456789abcdef0123456789abcdef0123456789"
#define SHA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

struct env {
	char *dir, *db, *base;
	struct fleet *f;
	struct devapi *api;
};

static void env_up(struct env *e)
{
	struct fleet_config cfg = { .fleet_key = KEY, .device_secret = SECRET, .poll_ms = 6 * 3600 * 1000LL };
	cfg.db_path = e->db;
	assert_int_equal(fleet_open(&e->f, &cfg), 0);
	assert_int_equal(devapi_start(&e->api, e->f, "127.0.0.1:0", 1), 0);
	free(e->base);
	e->base = xasprintf("http://127.0.0.1:%d", devapi_port(e->api));
}

static void env_down(struct env *e)
{
	devapi_stop(e->api);
	fleet_close(e->f);
	e->api = NULL;
	e->f = NULL;
}

static int setup(void **state)
{
	struct env *e = xcalloc(1, sizeof(*e));
	char tmpl[] = "/tmp/test_ckinauth.XXXXXX";
	assert_non_null(mkdtemp(tmpl));
	e->dir = xstrdup(tmpl);
	e->db = xasprintf("%s/fleet.db", e->dir);
	env_up(e);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	char *cmd = xasprintf("rm -rf '%s'", e->dir);
	if (e->f)
		env_down(e);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", e->dir);
	free(cmd);
	free(e->dir);
	free(e->db);
	free(e->base);
	free(e);
	return 0;
}

/* Registers dev (again: a new generation), its credential into out. */
static void enrol(struct env *e, const char *dev, char out[33])
{
	const char *ids[] = { dev };
	char c[1][33];
	assert_int_equal(fleet_register(e->f, ids, 1, "test", c), 0);
	memcpy(out, c[0], 33);
}

/* A check-in of dev with token and ntags tags t0=v, t1=v ... (region=eu
 * first); its status, the answer in *out when out is not NULL. */
static long checkin(struct env *e, const char *dev, const char *token, int ntags, const char *version, json_t **out)
{
	json_t *b = json_pack("{ss ss ss ss ss si ss}", "device", dev, "product", "sensor-node", "hardware",
			      "mps2-an385", "bootloader", "1.2.0", "version", version, "security_counter", 3, "slot",
			      "confirmed");
	json_t *ans = NULL;
	char *url = xasprintf("%s/device/v1/checkin", e->base);
	long status = 0;
	if (ntags > 0) {
		json_t *tags = json_pack("{ss}", "region", "eu");
		for (int i = 1; i < ntags; i++) {
			char k[16];
			snprintf(k, sizeof(k), "t%d", i);
			json_object_set_new(tags, k, json_string("v"));
		}
		json_object_set_new(b, "tags", tags);
	}
	assert_int_equal(httpc_json(&ans, &status, "POST", url, token, b, 10000), 0);
	json_decref(b);
	free(url);
	if (out)
		*out = ans;
	else
		json_decref(ans);
	return status;
}

static void a_remembered_credential_still_refuses_every_wrong_token(void **state)
{
	struct env *e = *state;
	char good[33], other[33], bad[40];

	enrol(e, "dev-a", good);
	enrol(e, "dev-b", other);
	/* the first check-in computes the credential, the next ones compare with the kept one */
	assert_int_equal(checkin(e, "dev-a", good, 2, "1.4.0", NULL), 200);
	assert_int_equal(checkin(e, "dev-a", good, 2, "1.4.0", NULL), 200);

	memcpy(bad, good, 33);
	bad[31] = bad[31] == '0' ? '1' : '0'; /* the last digit */
	assert_int_equal(checkin(e, "dev-a", bad, 2, "1.4.0", NULL), 401);
	memcpy(bad, good, 33);
	bad[0] = bad[0] == '0' ? '1' : '0'; /* the first */
	assert_int_equal(checkin(e, "dev-a", bad, 2, "1.4.0", NULL), 401);
	memcpy(bad, good, 33);
	bad[31] = 0; /* a prefix */
	assert_int_equal(checkin(e, "dev-a", bad, 2, "1.4.0", NULL), 401);
	snprintf(bad, sizeof(bad), "%s0", good); /* one digit more */
	assert_int_equal(checkin(e, "dev-a", bad, 2, "1.4.0", NULL), 401);
	assert_int_equal(checkin(e, "dev-a", other, 2, "1.4.0", NULL), 401);  /* another device's */
	assert_int_equal(checkin(e, "dev-b", good, 2, "1.4.0", NULL), 401);   /* and the other way */
	assert_int_equal(checkin(e, "dev-a", KEY, 2, "1.4.0", NULL), 401);    /* the fleet key */
	assert_int_equal(checkin(e, "dev-a", good, 2, "1.4.0", NULL), 200);
	assert_int_equal(checkin(e, "dev-b", other, 2, "1.4.0", NULL), 200);
}

static void registering_again_revokes_a_remembered_credential(void **state)
{
	struct env *e = *state;
	char old[33], fresh[33];

	enrol(e, "dev-a", old);
	assert_int_equal(checkin(e, "dev-a", old, 2, "1.4.0", NULL), 200); /* remembered */
	enrol(e, "dev-a", fresh);
	assert_string_not_equal(old, fresh);
	assert_int_equal(checkin(e, "dev-a", old, 2, "1.4.0", NULL), 401);
	assert_int_equal(checkin(e, "dev-a", fresh, 2, "1.4.0", NULL), 200);
	assert_int_equal(checkin(e, "dev-a", old, 2, "1.4.0", NULL), 401);
	/* and after a restart, which computes it again */
	env_down(e);
	env_up(e);
	assert_int_equal(checkin(e, "dev-a", old, 2, "1.4.0", NULL), 401);
	assert_int_equal(checkin(e, "dev-a", fresh, 2, "1.4.0", NULL), 200);
	assert_int_equal(checkin(e, "dev-a", old, 2, "1.4.0", NULL), 401);
}

/* A device's tags move between its own few slots and an allocation as
 * their number changes; cohorts see them the same either way. */
static void tags_past_the_inline_few_still_select_the_cohort(void **state)
{
	struct env *e = *state;
	struct fleet_image img[] = { { "mps2-an385", SHA_A, "application", 1000 } };
	json_t *cohort = json_pack("{s[s]}", "t7", "v"); /* only a device with 8 tags has t7 */
	struct fleet_exposure x = { 7, "sensor-node", "1.5.0", 3, NULL, img, 1, 1, "salt-1", 10000, NULL, 0, NULL, 0, NULL, 0 };
	char c[33];
	json_t *ans = NULL;
	const int counts[] = { 8, 2, 0, 8, 1, 8 };

	x.cohort = cohort;
	assert_int_equal(fleet_set_exposure(e->f, &x), 0);
	json_decref(cohort);
	enrol(e, "dev-a", c);
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		json_t *offer;
		assert_int_equal(checkin(e, "dev-a", c, counts[i], "1.4.0", &ans), 200);
		offer = json_object_get(ans, "offer");
		if (counts[i] == 8)
			assert_string_equal(json_string_value(json_object_get(offer, "version")), "1.5.0");
		else
			assert_true(json_is_null(offer));
		json_decref(ans);
	}
	/* and they are what the store keeps (exposures are the engine's: set again) */
	env_down(e);
	env_up(e);
	cohort = json_pack("{s[s]}", "t7", "v");
	x.cohort = cohort;
	assert_int_equal(fleet_set_exposure(e->f, &x), 0);
	json_decref(cohort);
	assert_int_equal(checkin(e, "dev-a", c, 8, "1.4.0", &ans), 200);
	assert_string_equal(json_string_value(json_object_get(json_object_get(ans, "offer"), "version")), "1.5.0");
	json_decref(ans);
}

/* The answer, appended by hand, is the JSON object devices read. */
static void the_answer_is_json_with_every_field(void **state)
{
	struct env *e = *state;
	char c[33];
	json_t *ans = NULL;
	json_int_t now;

	enrol(e, "dev-a", c);
	assert_int_equal(checkin(e, "dev-a", c, 2, "1.4.0", &ans), 200);
	assert_true(json_is_object(ans));
	now = json_integer_value(json_object_get(ans, "now"));
	assert_true(json_is_integer(json_object_get(ans, "now")) && now > 1700000000000LL);
	assert_true(json_is_real(json_object_get(ans, "time_scale")));
	assert_true(json_real_value(json_object_get(ans, "time_scale")) == 1.0);
	assert_true(json_integer_value(json_object_get(ans, "next_poll_ms")) >= 6 * 3600 * 900);
	assert_true(json_integer_value(json_object_get(ans, "next_poll_ms")) <= 6 * 3600 * 1100);
	assert_true(json_is_null(json_object_get(ans, "offer")));
	assert_int_equal(json_object_size(ans), 4);
	json_decref(ans);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(a_remembered_credential_still_refuses_every_wrong_token, setup, teardown),
		cmocka_unit_test_setup_teardown(registering_again_revokes_a_remembered_credential, setup, teardown),
		cmocka_unit_test_setup_teardown(tags_past_the_inline_few_still_select_the_cohort, setup, teardown),
		cmocka_unit_test_setup_teardown(the_answer_is_json_with_every_field, setup, teardown),
	};
	httpc_global_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
