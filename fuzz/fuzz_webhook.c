/*
 * fuzz_webhook.c - libFuzzer target for push and pull/merge-request
 * webhook payloads (untrusted input from the network): the first byte
 * picks the provider and event, the rest is the body, authenticated
 * against one configured secret and then parsed.  An accepted request
 * must name its head ref as refs/pull/N/head or refs/merge-requests/N/head
 * with N its number, and a 40-hex head commit (else abort).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const events[] = { "push", "ping", "Push Hook", "Tag Push Hook", "issues",
					      "pull_request", "Merge Request Hook", "pull_request_sync" };
	struct otacd_config c;
	struct webhook_headers h = { 0 };
	struct push_event ev;
	int matched[1];
	enum webhook_provider p;

	if (size < 1)
		return 0;
	p = (enum webhook_provider)(data[0] % 3);
	h.event = events[(data[0] / 3) % 8];
	h.delivery = "fuzz";
	h.hub_signature = "sha256=0000000000000000000000000000000000000000000000000000000000000000";
	h.gitea_signature = h.hub_signature + 7;
	h.gitlab_token = "fuzz-secret-0123456789";

	config_defaults(&c);
	c.repos = calloc(1, sizeof(*c.repos));
	c.repos[0].git.name = strdup("acme/a");
	c.repos[0].git.url = strdup("/nowhere");
	c.repos[0].secret = strdup("fuzz-secret-0123456789");
	c.nrepos = 1;
	webhook_authenticate(&c, p, &h, data + 1, size - 1, matched);
	if (webhook_parse(p, &h, (const char *)data + 1, size - 1, &ev) == 0) {
		if (ev.pr_number) {
			char want[64];
			snprintf(want, sizeof(want), p == WEBHOOK_GITLAB ? "refs/merge-requests/%lld/head" : "refs/pull/%lld/head",
				 (long long)ev.pr_number);
			if (ev.kind != PUSH_EVENT || ev.pr_number < 1 || strcmp(ev.ref, want) || strlen(ev.after) != 40 ||
			    strspn(ev.after, "0123456789abcdef") != 40 || !ev.pr_base || !*ev.pr_base)
				abort();
		}
		push_event_release(&ev);
	}
	config_release(&c);
	return 0;
}
