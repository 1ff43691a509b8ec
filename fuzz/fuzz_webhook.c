/*
 * fuzz_webhook.c - libFuzzer target for push webhook payloads (untrusted
 * input from the network): the first byte picks the provider and event,
 * the rest is the body, authenticated against one configured secret and
 * then parsed.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../orchestrator/webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const events[] = { "push", "ping", "Push Hook", "Tag Push Hook", "issues" };
	struct otacd_config c;
	struct webhook_headers h = { 0 };
	struct push_event ev;
	int matched[1];
	enum webhook_provider p;

	if (size < 1)
		return 0;
	p = (enum webhook_provider)(data[0] % 3);
	h.event = events[(data[0] / 3) % 5];
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
	if (webhook_parse(p, &h, (const char *)data + 1, size - 1, &ev) == 0)
		push_event_release(&ev);
	config_release(&c);
	return 0;
}
