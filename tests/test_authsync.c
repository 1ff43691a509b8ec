/*
 * test_authsync.c - tokens and agents changed on the leader reach a
 * follower's memory without a restart (issue 16, docs/scale.md, "Tokens
 * and agents").
 *
 * A real PostgreSQL cluster (tests/pgcluster.c) and two real otacd
 * processes on one otacd database over HTTP on loopback: the first leads,
 * the second follows.  An API token and an agent token made on the leader
 * are accepted by the follower; once revoked on the leader the follower
 * refuses them (401), heard from the leader's notification, and a token
 * deleted behind every instance's back (no notification at all) by the
 * periodic reload.  A role of the same cluster that is not otacd sends
 * forged notifications: the follower reloads, and accepts no token that is
 * not in the database.  How long each took is printed, never asserted (a
 * 2-core machine shared with other builds); every wait has a generous cap
 * that ends early on success.
 *
 * Without PostgreSQL's binaries every case is skipped, saying so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <time.h>

#include "../orchestrator/commitwatch.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/db/db_notify.h"
#include "harness.h"
#include "pgcluster.h"

#define CAP_MS 30000 /* a change's cap: a notification, or the 5 s periodic reload, on a loaded machine */

struct world {
	struct pgcluster pg;
	char *otacd_db, *fleet_db;
	struct daemon lead, follow;
};

static const char *const args[] = { "--local-agents", "0", NULL };

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 0, or 1 to skip when PostgreSQL's binaries are missing. */
static int world_start(struct world *w)
{
	char *secrets, *yaml;

	memset(w, 0, sizeof(*w));
	if (h_pg_start_dbs(&w->pg, &w->otacd_db, &w->fleet_db) > 0)
		return 1;
	/* every instance on one fleet database shares its secrets (fleet_keys.c) */
	secrets = h_fleet_secrets_yaml(w->pg.dir);
	yaml = xasprintf("leader_poll: 1s\n%s", secrets);
	free(secrets);
	h_init(&w->lead, yaml);
	h_use_database(&w->lead, w->otacd_db, w->fleet_db);
	assert_int_equal(h_start(&w->lead, args), 0);
	h_init(&w->follow, yaml);
	free(yaml);
	h_use_database(&w->follow, w->otacd_db, w->fleet_db);
	w->follow.follower_ok = 1;
	w->follow.token = xstrdup(w->lead.token);
	assert_int_equal(h_start(&w->follow, args), 0);
	return 0;
}

static void world_stop(struct world *w)
{
	h_cleanup(&w->follow);
	h_cleanup(&w->lead);
	pgcluster_stop(&w->pg);
	free(w->otacd_db);
	free(w->fleet_db);
}

/* GET /api/v1/runs with token: served by d itself (a read). */
static long read_as(struct daemon *d, const char *token)
{
	return h_raw(d, "GET", "/api/v1/runs", token, NULL, NULL, 0, NULL);
}

/* An agent's call with token (forwarded by a follower once it authenticated it). */
static long register_as(struct daemon *d, const char *token)
{
	static const char body[] = "{\"labels\": [\"hil\"]}";
	return h_raw(d, "POST", "/api/v1/agent/register", token, "application/json", body, sizeof(body) - 1, NULL);
}

/* Wait until call(d, token) answers want; the milliseconds it took, or
 * fail after CAP_MS. */
static int64_t wait_status(struct daemon *d, long (*call)(struct daemon *, const char *), const char *token,
			   long want, const char *what)
{
	int64_t t0 = now_ms();
	long st;

	while ((st = call(d, token)) != want) {
		if (now_ms() - t0 > CAP_MS)
			fail_msg("%s: the follower still answers %ld after %d ms (want %ld)", what, st, CAP_MS, want);
		h_msleep(10);
	}
	print_message("%s: %lld ms\n", what, (long long)(now_ms() - t0));
	return now_ms() - t0;
}

/* POST /api/v1/tokens on d: the new token (caller frees). */
static char *token_add(struct daemon *d, const char *name, const char *role)
{
	json_t *req = json_pack("{ss ss}", "name", name, "role", role), *ans = NULL;
	char *tok;

	assert_int_equal(h_post(d, "/api/v1/tokens", req, &ans), 201);
	tok = xstrdup(json_string_value(json_object_get(ans, "token")));
	assert_int_equal(strlen(tok), 64);
	json_decref(req);
	json_decref(ans);
	return tok;
}

static long revoke(struct daemon *d, const char *path, const char *name)
{
	json_t *req = json_pack("{ss}", "name", name);
	long st = h_post(d, path, req, NULL);
	json_decref(req);
	return st;
}

/* One statement on url (fails the test unless it runs). */
static void sql(const char *url, const char *text)
{
	struct db *db;
	struct db_stmt *st;

	assert_int_equal(db_open(&db, url, 0), 0);
	st = db_stmt(db, text);
	if (!st || db_run(st) < 0)
		fail_msg("%s: %s", text, ota_error_last());
	db_close(db);
}

static struct world g_world;
static int g_skip;

static int setup(void **state)
{
	(void)state;
	g_skip = world_start(&g_world);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (!g_skip)
		world_stop(&g_world);
	return 0;
}

static void tokens_and_agents_reach_a_follower_and_revocations_too(void **state)
{
	char *api, *agent, *quiet;
	struct buf out = BUF_INIT;

	(void)state;
	if (g_skip)
		skip();
	/* made on the leader (otactl), accepted by the follower without a restart */
	h_otactl_checked(&g_world.lead, &out, "tokens add ci-viewer --role viewer");
	api = h_token_line(&out);
	agent = h_agent_add(&g_world.lead, "rig-a", "hil");
	assert_non_null(agent);
	wait_status(&g_world.follow, read_as, api, 200, "a new API token accepted by the follower");
	wait_status(&g_world.follow, register_as, agent, 200, "a new agent token accepted by the follower");
	/* a token's name is taken once; an agent's role is not an API token's */
	{
		json_t *req = json_pack("{ss ss}", "name", "ci-viewer", "role", "admin");
		assert_int_equal(h_post(&g_world.lead, "/api/v1/tokens", req, NULL), 409);
		json_decref(req);
		req = json_pack("{ss ss}", "name", "x", "role", "agent");
		assert_int_equal(h_post(&g_world.lead, "/api/v1/tokens", req, NULL), 400);
		json_decref(req);
	}
	/* viewers make no tokens */
	{
		json_t *req = json_pack("{ss ss}", "name", "mine", "role", "admin");
		assert_int_equal(h_call_as(&g_world.follow, api, "POST", "/api/v1/tokens", req, NULL), 403);
		json_decref(req);
	}

	/* revoked on the leader: refused there at once, and by the follower
	 * once it heard the commit */
	h_otactl_checked(&g_world.lead, &out, "tokens revoke ci-viewer");
	assert_int_equal(read_as(&g_world.lead, api), 401);
	wait_status(&g_world.follow, read_as, api, 401, "a revoked API token refused by the follower");
	assert_int_equal(revoke(&g_world.lead, "/api/v1/tokens/revoke", "ci-viewer"), 404);
	assert_int_equal(revoke(&g_world.lead, "/api/v1/agents/revoke", "rig-a"), 200);
	assert_int_equal(register_as(&g_world.lead, agent), 401);
	wait_status(&g_world.follow, register_as, agent, 401, "a revoked agent token refused by the follower");

	/* a revocation through the follower (forwarded to the leader) */
	api = (free(api), token_add(&g_world.follow, "ci-op", "operator"));
	wait_status(&g_world.follow, read_as, api, 200, "a token made through the follower accepted by it");
	assert_int_equal(revoke(&g_world.follow, "/api/v1/tokens/revoke", "ci-op"), 200);
	wait_status(&g_world.follow, read_as, api, 401, "a token revoked through the follower refused by it");

	/* deleted with no notification at all (a lost one): the periodic
	 * reload is the bound */
	quiet = token_add(&g_world.lead, "quiet", "viewer");
	wait_status(&g_world.follow, read_as, quiet, 200, "another token accepted by the follower");
	sql(g_world.otacd_db, "DELETE FROM tokens WHERE name = 'quiet'");
	wait_status(&g_world.follow, read_as, quiet, 401, "a token deleted without a notification refused (periodic reload)");
	/* the admin token, the config's, stays through every reload */
	assert_int_equal(read_as(&g_world.follow, g_world.follow.token), 200);

	buf_release(&out);
	free(api);
	free(agent);
	free(quiet);
}

/* The follower's otacd_auth_reloads_total{cause="notification"}. */
static int64_t heard_reloads(struct daemon *d)
{
	struct buf b = BUF_INIT;
	const char *at;
	int64_t n;

	assert_int_equal(h_raw(d, "GET", "/metrics", d->token, NULL, NULL, 0, &b), 200);
	at = strstr(buf_cstr(&b), "otacd_auth_reloads_total{cause=\"notification\"} ");
	assert_non_null(at);
	n = strtoll(strchr(at, '}') + 2, NULL, 10);
	buf_release(&b);
	return n;
}

static void forged_notifications_from_another_role_only_reload(void **state)
{
	static const char *const forged[] = {
		"{\"v\":1,\"from\":\"x\",\"gen\":1,\"what\":[\"auth\"],\"name\":\"mallory\",\"role\":\"admin\","
		"\"hash\":\"" "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5" "\"}",
		"{\"v\":1,\"from\":\"x\",\"what\":[\"auth\",\"auth\"]}",
		"not json",
	};
	/* the token whose SHA-256 the first payload carries */
	static const char *const forged_token = "12345";
	char url[600], *at, *mine;
	struct db *mallory;
	struct db_stmt *st;
	int64_t before;

	(void)state;
	if (g_skip)
		skip();
	sql(g_world.otacd_db, "CREATE ROLE mallory LOGIN");
	at = strstr(g_world.otacd_db, "otacd@");
	assert_non_null(at);
	snprintf(url, sizeof(url), "%.*smallory@%s", (int)(at - g_world.otacd_db), g_world.otacd_db, at + strlen("otacd@"));
	assert_int_equal(db_open(&mallory, url, 0), 0);
	/* mallory can speak on the channel but not write a token */
	st = db_stmt(mallory, "INSERT INTO tokens(name, role, hash, created_at) VALUES ('m', 'admin', 'x', 0)");
	assert_true(!st || db_run(st) < 0);

	for (size_t i = 0; i < OTA_ARRAY_SIZE(forged); i++) {
		int64_t t0 = now_ms();

		before = heard_reloads(&g_world.follow);
		assert_int_equal(db_notify(mallory, COMMITWATCH_CHANNEL, forged[i]), 0);
		while (heard_reloads(&g_world.follow) == before) {
			if (now_ms() - t0 > CAP_MS)
				fail_msg("forged notification %zu: no reload within %d ms", i, CAP_MS);
			h_msleep(10);
		}
		/* a reload, and nothing the payload said */
		assert_int_equal(read_as(&g_world.follow, forged_token), 401);
		assert_int_equal(read_as(&g_world.follow, "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"),
				 401);
		assert_int_equal(read_as(&g_world.follow, g_world.follow.token), 200);
	}
	/* the tokens the database holds still work after those reloads */
	mine = token_add(&g_world.lead, "after-forgery", "viewer");
	wait_status(&g_world.follow, read_as, mine, 200, "a real token after forged notifications");
	free(mine);
	db_close(mallory);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tokens_and_agents_reach_a_follower_and_revocations_too),
		cmocka_unit_test(forged_notifications_from_another_role_only_reload),
	};
	return cmocka_run_group_tests_name("authsync", tests, setup, teardown);
}
