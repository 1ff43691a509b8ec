/*
 * webhook.h - push webhooks from GitHub, GitLab and Gitea/Forgejo.
 *
 * Two steps, in this order, because a webhook is unauthenticated input
 * until proven otherwise:
 *
 *   webhook_authenticate()  which configured repositories' secrets
 *                           authenticate this exact body?  Every secret is
 *                           checked, each in constant time; nothing in the
 *                           body is looked at.
 *   webhook_parse()         only then: the JSON payload into a push_event,
 *                           with a clear reason when a required field is
 *                           missing or has the wrong type.
 *
 * The formats are in ../shared/REFERENCE.md ("Push webhooks").  Pull and
 * merge requests (issue 17): GitHub's `pull_request` (actions opened,
 * synchronize, reopened), Gitea/Forgejo's `pull_request` and
 * `pull_request_sync` (opened, synchronized, reopened) and GitLab's
 * `Merge Request Hook` (open, reopen, and update when `oldrev` says new
 * commits came) become a push_event with pr_number set; other actions
 * (closed, edited, labeled ...) are PUSH_OTHER.
 */
#ifndef OTA_WEBHOOK_H
#define OTA_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

enum webhook_provider {
	WEBHOOK_GITHUB,
	WEBHOOK_GITLAB,
	WEBHOOK_GITEA,      /* Gitea and Forgejo */
};

/* The request headers that matter (NULL when absent). */
struct webhook_headers {
	const char *event;          /* X-GitHub-Event / X-Gitlab-Event / X-Gitea-Event (X-Forgejo-Event) */
	const char *delivery;       /* X-GitHub-Delivery / X-Gitlab-Event-UUID / X-Gitea-Delivery */
	const char *hub_signature;  /* X-Hub-Signature-256: "sha256=HEX" (GitHub; Gitea sends it too) */
	const char *gitea_signature;/* X-Gitea-Signature or X-Forgejo-Signature: bare HEX */
	const char *gitlab_token;   /* X-Gitlab-Token: the secret itself */
};

enum push_kind {
	PUSH_EVENT,                 /* a push: run something (or say why not) */
	PUSH_PING,                  /* GitHub's ping on hook creation */
	PUSH_OTHER,                 /* an event otacd does not act on */
};

struct push_event {
	enum push_kind kind;
	char *event;                /* the event name as sent */
	char *repo;                 /* full name: "acme/sensor-node" */
	char *ref;                  /* "refs/heads/main", "refs/tags/v1.2.0" */
	char *before, *after;       /* commit ids (after is all zeros on deletion) */
	int deleted;
	int forced;
	char *pusher;               /* "name <email>" or a login; may be NULL */
	/* A pull/merge request (opened, new commits, reopened): ref is the
	 * forge's head ref of the request, refs/pull/N/head (GitHub, Gitea) or
	 * refs/merge-requests/N/head (GitLab); after its head commit; before
	 * all zeros.  0 / NULL for a push. */
	int64_t pr_number;
	char *pr_base;              /* the branch it would merge into: "main" */
};

const char *webhook_provider_name(enum webhook_provider p);

/*
 * Mark in matched[i] (c->nrepos entries) whether repository i's secret
 * authenticates the request.  Returns the number of matches (0: reject
 * with 401).  Repositories without a secret never match.
 */
size_t webhook_authenticate(const struct otacd_config *c, enum webhook_provider p,
			    const struct webhook_headers *h, const void *body, size_t len, int *matched);

/* Parse the payload.  OTA_EINVAL with the reason in the error slot. */
int webhook_parse(enum webhook_provider p, const struct webhook_headers *h, const char *body,
		  size_t len, struct push_event *out);
void push_event_release(struct push_event *ev);

/* HMAC-SHA256(key, body) as lowercase hex (65 bytes with NUL). */
void webhook_hmac_hex(const char *key, const void *body, size_t len, char out[65]);

#endif
