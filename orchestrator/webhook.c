/*
 * webhook.c - authenticate and parse push webhooks; see webhook.h.
 *
 * Signatures are compared as fixed-length byte strings with CRYPTO_memcmp;
 * a signature of the wrong length or case never reaches the comparison
 * (it simply does not match).  GitLab sends the secret itself, so both it
 * and each configured secret are hashed first and the digests compared,
 * which keeps the comparison's time independent of the secret's length.
 */
#include "webhook.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *webhook_provider_name(enum webhook_provider p)
{
	switch (p) {
	case WEBHOOK_GITHUB: return "github";
	case WEBHOOK_GITLAB: return "gitlab";
	default: return "gitea";
	}
}

void webhook_hmac_hex(const char *key, const void *body, size_t len, char out[65])
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	HMAC(EVP_sha256(), key, (int)strlen(key), body, len, mac, &maclen);
	ota_hex(out, mac, maclen);
}

static int hex64(const char *s)
{
	return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

size_t webhook_authenticate(const struct otacd_config *c, enum webhook_provider p,
			    const struct webhook_headers *h, const void *body, size_t len, int *matched)
{
	const char *sig = NULL;
	unsigned char want[32], have[32];
	unsigned int n = 32;
	size_t count = 0;

	if (p == WEBHOOK_GITHUB) {
		if (h->hub_signature && !strncmp(h->hub_signature, "sha256=", 7))
			sig = h->hub_signature + 7;
	} else if (p == WEBHOOK_GITEA) {
		sig = h->gitea_signature;
		if (!sig && h->hub_signature && !strncmp(h->hub_signature, "sha256=", 7))
			sig = h->hub_signature + 7;
	} else if (h->gitlab_token) {
		EVP_Digest(h->gitlab_token, strlen(h->gitlab_token), have, &n, EVP_sha256(), NULL);
	}

	for (size_t i = 0; i < c->nrepos; i++) {
		const char *secret = c->repos[i].secret;
		matched[i] = 0;
		if (!secret)
			continue;
		if (p == WEBHOOK_GITLAB) {
			if (!h->gitlab_token)
				continue;
			EVP_Digest(secret, strlen(secret), want, &n, EVP_sha256(), NULL);
			matched[i] = CRYPTO_memcmp(want, have, 32) == 0;
		} else {
			char mac[65];
			if (!hex64(sig))
				continue;
			webhook_hmac_hex(secret, body, len, mac);
			matched[i] = CRYPTO_memcmp(mac, sig, 64) == 0;
		}
		count += (size_t)matched[i];
	}
	return count;
}

/* ---- parsing ------------------------------------------------------------ */

static int need_string(json_t *obj, const char *path, const char **out)
{
	json_t *v = obj;
	char *copy = xstrdup(path), *save = NULL;
	for (char *k = strtok_r(copy, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
		v = json_is_object(v) ? json_object_get(v, k) : NULL;
	free(copy);
	if (!json_is_string(v))
		return ota_error_set(OTA_EINVAL, "payload field '%s' is missing or not a string", path);
	*out = json_string_value(v);
	return 0;
}

static const char *opt_string(json_t *obj, const char *a, const char *b)
{
	json_t *v = json_object_get(obj, a);
	if (b && json_is_object(v))
		v = json_object_get(v, b);
	return json_is_string(v) && *json_string_value(v) ? json_string_value(v) : NULL;
}

static int commit_id(const char *s)
{
	return s && strlen(s) == 40 && strspn(s, "0123456789abcdef") == 40;
}

static char *pusher_of(enum webhook_provider p, json_t *root)
{
	const char *name = NULL, *email = NULL;
	if (p == WEBHOOK_GITLAB) {
		name = opt_string(root, "user_username", NULL);
		if (!name)
			name = opt_string(root, "user_name", NULL);
		email = opt_string(root, "user_email", NULL);
	} else {
		json_t *pu = json_object_get(root, "pusher");
		name = opt_string(pu, "name", NULL);
		if (!name)
			name = opt_string(pu, "login", NULL);
		if (!name)
			name = opt_string(pu, "username", NULL);
		email = opt_string(pu, "email", NULL);
	}
	if (!name)
		return NULL;
	return email ? xasprintf("%s <%s>", name, email) : xstrdup(name);
}

/* ---- pull and merge requests (issue 17) ---------------------------------- */

static int is_pr_event(enum webhook_provider p, const char *event)
{
	if (p == WEBHOOK_GITLAB)
		return !strcmp(event, "Merge Request Hook");
	return !strcmp(event, "pull_request") || (p == WEBHOOK_GITEA && !strcmp(event, "pull_request_sync"));
}

/* Does this action put (new) commits up for review? */
static int pr_action_runs(enum webhook_provider p, json_t *root)
{
	const char *action = NULL;
	if (p == WEBHOOK_GITLAB) {
		json_t *attrs = json_object_get(root, "object_attributes");
		action = opt_string(attrs, "action", NULL);
		if (action && !strcmp(action, "update"))
			return opt_string(attrs, "oldrev", NULL) != NULL; /* a title edit has no oldrev */
		return action && (!strcmp(action, "open") || !strcmp(action, "reopen"));
	}
	action = opt_string(root, "action", NULL);
	return action && (!strcmp(action, "opened") || !strcmp(action, "reopened") ||
			  !strcmp(action, p == WEBHOOK_GITHUB ? "synchronize" : "synchronized"));
}

static int need_int(json_t *obj, const char *path, int64_t *out)
{
	json_t *v = obj;
	char *copy = xstrdup(path), *save = NULL;
	for (char *k = strtok_r(copy, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
		v = json_is_object(v) ? json_object_get(v, k) : NULL;
	free(copy);
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 999999999)
		return ota_error_set(OTA_EINVAL, "payload field '%s' must be a number from 1 to 999999999", path);
	*out = json_integer_value(v);
	return 0;
}

/* A branch name as a forge reports it: no refs/ prefix, no control bytes. */
static int branch_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 255 || !strncmp(s, "refs/", 5))
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

static int parse_pr(enum webhook_provider p, json_t *root, struct push_event *out)
{
	const char *repo = NULL, *head = NULL, *base = NULL, *who;
	int64_t number = 0;
	int rc;

	if (p == WEBHOOK_GITLAB) {
		if ((rc = need_string(root, "project.path_with_namespace", &repo)) < 0 ||
		    (rc = need_int(root, "object_attributes.iid", &number)) < 0 ||
		    (rc = need_string(root, "object_attributes.last_commit.id", &head)) < 0 ||
		    (rc = need_string(root, "object_attributes.target_branch", &base)) < 0)
			return rc;
		who = opt_string(root, "user", "username");
	} else {
		if ((rc = need_string(root, "repository.full_name", &repo)) < 0 ||
		    (rc = need_int(root, "number", &number)) < 0 ||
		    (rc = need_string(root, "pull_request.head.sha", &head)) < 0 ||
		    (rc = need_string(root, "pull_request.base.ref", &base)) < 0)
			return rc;
		who = opt_string(root, "sender", "login");
	}
	if (!commit_id(head))
		return ota_error_set(OTA_EINVAL, "the request's head commit must be a 40-character commit id");
	if (!branch_name_ok(base))
		return ota_error_set(OTA_EINVAL, "the request's base branch '%.100s' is not a branch name", base);
	out->repo = xstrdup(repo);
	/* the forge's own ref for the request's head, never the branch name the
	 * request came from: a fork's `main` is not this repository's main */
	out->ref = xasprintf(p == WEBHOOK_GITLAB ? "refs/merge-requests/%lld/head" : "refs/pull/%lld/head",
			     (long long)number);
	out->before = xstrdup("0000000000000000000000000000000000000000");
	out->after = xstrdup(head);
	out->pr_number = number;
	out->pr_base = xstrdup(base);
	out->pusher = who ? xstrdup(who) : NULL;
	return 0;
}

static int parse_pr_payload(enum webhook_provider p, const char *body, size_t len, struct push_event *out)
{
	json_error_t err;
	json_t *root = json_loadb(body, len, 0, &err);
	int rc = 0;

	if (!root)
		rc = ota_error_set(OTA_EINVAL, "invalid JSON at line %d column %d: %s", err.line, err.column, err.text);
	else if (!json_is_object(root))
		rc = ota_error_set(OTA_EINVAL, "the payload must be a JSON object");
	else if (!pr_action_runs(p, root))
		out->kind = PUSH_OTHER;
	else if ((rc = parse_pr(p, root, out)) == 0)
		out->kind = PUSH_EVENT;
	json_decref(root);
	if (rc < 0)
		push_event_release(out);
	return rc;
}

int webhook_parse(enum webhook_provider p, const struct webhook_headers *h, const char *body,
		  size_t len, struct push_event *out)
{
	json_error_t err;
	json_t *root = NULL;
	const char *repo = NULL, *ref = NULL, *before = NULL, *after = NULL;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	if (!h->event || !*h->event)
		return ota_error_set(OTA_EINVAL, "the event header (%s) is missing",
				     p == WEBHOOK_GITHUB ? "X-GitHub-Event" : p == WEBHOOK_GITLAB ? "X-Gitlab-Event" : "X-Gitea-Event");
	out->event = xstrdup(h->event);
	if (p == WEBHOOK_GITHUB && !strcmp(h->event, "ping")) {
		out->kind = PUSH_PING;
		return 0;
	}
	if (is_pr_event(p, h->event))
		return parse_pr_payload(p, body, len, out);
	if (!((p == WEBHOOK_GITHUB && !strcmp(h->event, "push")) ||
	      (p == WEBHOOK_GITEA && !strcmp(h->event, "push")) ||
	      (p == WEBHOOK_GITLAB && (!strcmp(h->event, "Push Hook") || !strcmp(h->event, "Tag Push Hook"))))) {
		out->kind = PUSH_OTHER;
		return 0;
	}
	out->kind = PUSH_EVENT;

	root = json_loadb(body, len, 0, &err);
	if (!root) {
		rc = ota_error_set(OTA_EINVAL, "invalid JSON at line %d column %d: %s", err.line, err.column, err.text);
		goto out;
	}
	if (!json_is_object(root)) {
		rc = ota_error_set(OTA_EINVAL, "the payload must be a JSON object");
		goto out;
	}
	if ((rc = need_string(root, p == WEBHOOK_GITLAB ? "project.path_with_namespace" : "repository.full_name", &repo)) < 0 ||
	    (rc = need_string(root, "ref", &ref)) < 0 || (rc = need_string(root, "before", &before)) < 0 ||
	    (rc = need_string(root, "after", &after)) < 0)
		goto out;
	if (strncmp(ref, "refs/heads/", 11) != 0 && strncmp(ref, "refs/tags/", 10) != 0) {
		rc = ota_error_set(OTA_EINVAL, "'ref' must be refs/heads/… or refs/tags/…, got '%.100s'", ref);
		goto out;
	}
	if (!commit_id(after) || !commit_id(before)) {
		rc = ota_error_set(OTA_EINVAL, "'before' and 'after' must be 40-character commit ids");
		goto out;
	}
	out->repo = xstrdup(repo);
	out->ref = xstrdup(ref);
	out->before = xstrdup(before);
	out->after = xstrdup(after);
	out->deleted = strspn(after, "0") == 40;
	out->forced = json_is_true(json_object_get(root, "forced"));
	out->pusher = pusher_of(p, root);
out:
	json_decref(root);
	if (rc < 0)
		push_event_release(out);
	return rc;
}

void push_event_release(struct push_event *ev)
{
	free(ev->event);
	free(ev->repo);
	free(ev->ref);
	free(ev->before);
	free(ev->after);
	free(ev->pusher);
	free(ev->pr_base);
	memset(ev, 0, sizeof(*ev));
}
