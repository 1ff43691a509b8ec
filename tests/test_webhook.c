/*
 * test_webhook.c - webhook authentication and payload parsing, as units:
 * GitHub's published HMAC vector, signatures that must not pass, and the
 * three providers' push payloads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../orchestrator/webhook.h"

static const char body[] = "Hello, World!";
static const char vector_secret[] = "It's a Secret to Everybody";
static const char vector_sig[] = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

static void config_with(struct otacd_config *c, const char *secret_a, const char *secret_b)
{
	config_defaults(c);
	c->repos = xcalloc(2, sizeof(*c->repos));
	c->repos[0].git.name = xstrdup("acme/a");
	c->repos[0].git.url = xstrdup("/nowhere/a");
	c->repos[0].secret = secret_a ? xstrdup(secret_a) : NULL;
	c->repos[1].git.name = xstrdup("acme/b");
	c->repos[1].git.url = xstrdup("/nowhere/b");
	c->repos[1].secret = secret_b ? xstrdup(secret_b) : NULL;
	c->nrepos = 2;
}

static void github_published_test_vector_verifies(void **state)
{
	char hex[65];
	struct otacd_config c;
	struct webhook_headers h = { .hub_signature = vector_sig };
	int matched[2];
	(void)state;
	webhook_hmac_hex(vector_secret, body, strlen(body), hex);
	assert_string_equal(hex, vector_sig + 7);
	config_with(&c, "some-other-secret-xyz", vector_secret);
	assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITHUB, &h, body, strlen(body), matched), 1);
	assert_false(matched[0]);
	assert_true(matched[1]);
	config_release(&c);
}

static void bad_github_signatures_match_nothing(void **state)
{
	struct otacd_config c;
	int matched[2];
	char truncated[80], upper[80];
	(void)state;
	config_with(&c, vector_secret, NULL);
	/* wrong secret */
	{
		struct otacd_config w;
		struct webhook_headers h = { .hub_signature = vector_sig };
		config_with(&w, "It's a Secret to Everybody!", NULL);
		assert_int_equal(webhook_authenticate(&w, WEBHOOK_GITHUB, &h, body, strlen(body), matched), 0);
		config_release(&w);
	}
	/* truncated signature */
	snprintf(truncated, sizeof(truncated), "%.*s", (int)strlen(vector_sig) - 2, vector_sig);
	{
		struct webhook_headers h = { .hub_signature = truncated };
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITHUB, &h, body, strlen(body), matched), 0);
	}
	/* the right signature over a different body */
	{
		struct webhook_headers h = { .hub_signature = vector_sig };
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITHUB, &h, "Hello, World?", 13, matched), 0);
	}
	/* missing header, wrong prefix, uppercase hex */
	{
		struct webhook_headers h = { 0 };
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITHUB, &h, body, strlen(body), matched), 0);
		h.hub_signature = vector_sig + 7;
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITHUB, &h, body, strlen(body), matched), 0);
		snprintf(upper, sizeof(upper), "sha256=%s", vector_sig + 7);
		for (char *p = upper + 7; *p; p++)
			if (*p >= 'a' && *p <= 'f')
				*p = (char)(*p - 32);
		h.hub_signature = upper;
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITHUB, &h, body, strlen(body), matched), 0);
	}
	config_release(&c);
}

static void gitea_bare_hex_and_gitlab_token_authenticate(void **state)
{
	struct otacd_config c;
	int matched[2];
	(void)state;
	config_with(&c, vector_secret, "gitlab-secret-0123456789");
	{
		struct webhook_headers h = { .gitea_signature = vector_sig + 7 };
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITEA, &h, body, strlen(body), matched), 1);
		assert_true(matched[0]);
	}
	{
		struct webhook_headers h = { .gitlab_token = "gitlab-secret-0123456789" };
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITLAB, &h, body, strlen(body), matched), 1);
		assert_true(matched[1]);
		h.gitlab_token = "gitlab-secret-012345678";
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITLAB, &h, body, strlen(body), matched), 0);
		h.gitlab_token = NULL;
		assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITLAB, &h, body, strlen(body), matched), 0);
	}
	config_release(&c);
}

static void repository_without_secret_never_authenticates(void **state)
{
	struct otacd_config c;
	int matched[2];
	struct webhook_headers h = { .gitlab_token = "" };
	(void)state;
	config_with(&c, NULL, NULL);
	assert_int_equal(webhook_authenticate(&c, WEBHOOK_GITLAB, &h, body, strlen(body), matched), 0);
	config_release(&c);
}

#define SHA_A "1111111111111111111111111111111111111111"
#define SHA_B "2222222222222222222222222222222222222222"
#define ZEROS "0000000000000000000000000000000000000000"

static void github_push_payload_parses(void **state)
{
	const char *json = "{\"ref\":\"refs/heads/main\",\"before\":\"" SHA_A "\",\"after\":\"" SHA_B "\","
			   "\"forced\":true,\"repository\":{\"full_name\":\"acme/a\"},"
			   "\"pusher\":{\"name\":\"ada\",\"email\":\"ada@example.com\"}}";
	struct webhook_headers h = { .event = "push" };
	struct push_event ev;
	(void)state;
	assert_int_equal(webhook_parse(WEBHOOK_GITHUB, &h, json, strlen(json), &ev), 0);
	assert_int_equal(ev.kind, PUSH_EVENT);
	assert_string_equal(ev.repo, "acme/a");
	assert_string_equal(ev.ref, "refs/heads/main");
	assert_string_equal(ev.after, SHA_B);
	assert_true(ev.forced);
	assert_false(ev.deleted);
	assert_string_equal(ev.pusher, "ada <ada@example.com>");
	push_event_release(&ev);
}

static void gitlab_and_gitea_payloads_parse(void **state)
{
	const char *gl = "{\"object_kind\":\"tag_push\",\"ref\":\"refs/tags/v1.0.0\",\"before\":\"" ZEROS "\","
			 "\"after\":\"" SHA_B "\",\"project\":{\"path_with_namespace\":\"acme/b\"},\"user_username\":\"bob\"}";
	const char *gt = "{\"ref\":\"refs/heads/dev\",\"before\":\"" SHA_A "\",\"after\":\"" ZEROS "\","
			 "\"repository\":{\"full_name\":\"acme/a\"},\"pusher\":{\"login\":\"cy\"}}";
	struct webhook_headers h1 = { .event = "Tag Push Hook" }, h2 = { .event = "push" };
	struct push_event ev;
	(void)state;
	assert_int_equal(webhook_parse(WEBHOOK_GITLAB, &h1, gl, strlen(gl), &ev), 0);
	assert_string_equal(ev.repo, "acme/b");
	assert_string_equal(ev.ref, "refs/tags/v1.0.0");
	assert_string_equal(ev.pusher, "bob");
	push_event_release(&ev);
	assert_int_equal(webhook_parse(WEBHOOK_GITEA, &h2, gt, strlen(gt), &ev), 0);
	assert_true(ev.deleted); /* after = zeros: a branch deletion */
	assert_string_equal(ev.pusher, "cy");
	push_event_release(&ev);
}

static void ping_and_other_events_are_recognised(void **state)
{
	struct webhook_headers ping = { .event = "ping" }, issues = { .event = "issues" };
	struct push_event ev;
	(void)state;
	assert_int_equal(webhook_parse(WEBHOOK_GITHUB, &ping, "{}", 2, &ev), 0);
	assert_int_equal(ev.kind, PUSH_PING);
	push_event_release(&ev);
	assert_int_equal(webhook_parse(WEBHOOK_GITHUB, &issues, "{}", 2, &ev), 0);
	assert_int_equal(ev.kind, PUSH_OTHER);
	push_event_release(&ev);
}

static void malformed_payloads_name_the_problem(void **state)
{
	static const struct {
		const char *json, *expect;
	} cases[] = {
		{ "{\"ref\":", "invalid JSON" },
		{ "[1,2]", "must be a JSON object" },
		{ "{\"ref\":\"refs/heads/x\",\"before\":\"" SHA_A "\",\"after\":\"" SHA_B "\"}", "repository.full_name" },
		{ "{\"repository\":{\"full_name\":\"a/b\"},\"before\":\"" SHA_A "\",\"after\":\"" SHA_B "\"}", "'ref'" },
		{ "{\"repository\":{\"full_name\":\"a/b\"},\"ref\":\"refs/heads/x\",\"before\":\"" SHA_A "\",\"after\":42}", "'after'" },
		{ "{\"repository\":{\"full_name\":\"a/b\"},\"ref\":\"refs/heads/x\",\"before\":\"" SHA_A "\",\"after\":\"xyz\"}", "40-character" },
		{ "{\"repository\":{\"full_name\":\"a/b\"},\"ref\":\"main\",\"before\":\"" SHA_A "\",\"after\":\"" SHA_B "\"}", "refs/heads/" },
	};
	struct webhook_headers h = { .event = "push" };
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct push_event ev;
		assert_int_equal(webhook_parse(WEBHOOK_GITHUB, &h, cases[i].json, strlen(cases[i].json), &ev), OTA_EINVAL);
		if (!strstr(ota_error_last(), cases[i].expect))
			fail_msg("case %zu: '%s' does not mention '%s'", i, ota_error_last(), cases[i].expect);
	}
	{
		struct webhook_headers none = { 0 };
		struct push_event ev;
		assert_int_equal(webhook_parse(WEBHOOK_GITHUB, &none, "{}", 2, &ev), OTA_EINVAL);
		assert_non_null(strstr(ota_error_last(), "X-GitHub-Event"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(github_published_test_vector_verifies),
		cmocka_unit_test(bad_github_signatures_match_nothing),
		cmocka_unit_test(gitea_bare_hex_and_gitlab_token_authenticate),
		cmocka_unit_test(repository_without_secret_never_authenticates),
		cmocka_unit_test(github_push_payload_parses),
		cmocka_unit_test(gitlab_and_gitea_payloads_parse),
		cmocka_unit_test(ping_and_other_events_are_recognised),
		cmocka_unit_test(malformed_payloads_name_the_problem),
	};
	return cmocka_run_group_tests_name("webhook", tests, NULL, NULL);
}
