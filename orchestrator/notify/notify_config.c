/*
 * notify_config.c - the `notifications:` block and repositories' `status:`,
 * checked once at start (docs/notifications.md).
 *
 * config.c keeps both as JSON; this file turns them into targets and forge
 * statuses, reading the token and secret files, so a daemon with a bad
 * block refuses to start with the key that is wrong instead of failing
 * later, on the sender thread, where nobody reads the error.
 */
#include "notify_int.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"

static _Atomic(struct notify *) g_current;

void notify_set_current(struct notify *n)
{
	atomic_store(&g_current, n);
}

const struct notify *notify_current(void)
{
	return atomic_load(&g_current);
}

static int http_url(const char *s)
{
	return s && (!strncmp(s, "http://", 7) || !strncmp(s, "https://", 8)) && !strpbrk(s, " \t\r\n");
}

/* A duration key: "30s"-style string or a number of milliseconds; def when absent. */
static int get_ms(const json_t *o, const char *key, int64_t def, int64_t *out)
{
	const json_t *v = json_object_get(o, key);
	*out = def;
	if (!v)
		return 0;
	if (json_is_integer(v) && json_integer_value(v) > 0) {
		*out = json_integer_value(v);
		return 0;
	}
	if (json_is_string(v) && ota_parse_duration_ms(json_string_value(v), out) == 0 && *out > 0)
		return 0;
	return ota_error_set(OTA_EINVAL, "notifications.%s: must be a positive duration like 5s or 24h", key);
}

/* The first line of file path, the way token files are written; at most 4 KiB. */
static int read_secret_file(const char *path, const char *what, char **out)
{
	struct buf b = BUF_INIT;
	char *s;
	if (ota_read_file(&b, path, 4096) < 0) {
		buf_release(&b);
		return ota_error_set(OTA_EINVAL, "%s: cannot read %s", what, path);
	}
	s = buf_detach(&b);
	s[strcspn(s, "\r\n")] = '\0';
	if (!*s) {
		free(s);
		return ota_error_set(OTA_EINVAL, "%s: %s is empty", what, path);
	}
	*out = s;
	return 0;
}

static const char *str(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static int only_keys(const json_t *o, const char *where, const char *const *keys, size_t n)
{
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v) {
		size_t i;
		for (i = 0; i < n && strcmp(k, keys[i]); i++)
			;
		if (i == n)
			return ota_error_set(OTA_EINVAL, "%s: unknown key '%s'", where, k);
	}
	return 0;
}

static int parse_target(const json_t *t, size_t i, struct notify *n, struct notify_target *out)
{
	static const char *const keys[] = { "name", "kind", "url", "secret_file", "events" };
	char where[64];
	const char *kind = str(t, "kind"), *name = str(t, "name");
	const json_t *ev = json_object_get(t, "events");

	snprintf(where, sizeof(where), "notifications.targets[%zu]", i);
	if (!json_is_object(t))
		return ota_error_set(OTA_EINVAL, "%s: must be a mapping {name, kind, url, ...}", where);
	if (only_keys(t, where, keys, OTA_ARRAY_SIZE(keys)) < 0)
		return OTA_EINVAL;
	if (!name || !*name || strlen(name) > 64 || strpbrk(name, " :/\t\r\n"))
		return ota_error_set(OTA_EINVAL, "%s.name: a short name without spaces, ':' or '/'", where);
	if (notify_target_find(n, name))
		return ota_error_set(OTA_EINVAL, "%s.name: '%s' is listed twice", where, name);
	if (!kind || (strcmp(kind, "webhook") && strcmp(kind, "slack")))
		return ota_error_set(OTA_EINVAL, "%s.kind: webhook or slack", where);
	if (!http_url(str(t, "url")))
		return ota_error_set(OTA_EINVAL, "%s.url: must start with http:// or https://", where);
	if (ev && !json_is_array(ev))
		return ota_error_set(OTA_EINVAL, "%s.events: a list like [run.failed, rollout.*]", where);
	out->name = xstrdup(name);
	out->kind = !strcmp(kind, "slack") ? NOTIFY_SLACK : NOTIFY_WEBHOOK;
	out->url = xstrdup(str(t, "url"));
	out->events = ev ? json_incref((json_t *)ev) : NULL;
	if (out->kind == NOTIFY_WEBHOOK) {
		char what[96];
		snprintf(what, sizeof(what), "%s.secret_file", where);
		if (!str(t, "secret_file"))
			return ota_error_set(OTA_EINVAL, "%s: a webhook needs secret_file (its HMAC key)", what);
		if (read_secret_file(str(t, "secret_file"), what, &out->secret) < 0)
			return OTA_EINVAL;
		if (strlen(out->secret) < 16)
			return ota_error_set(OTA_EINVAL, "%s: the secret is too short (at least 16 characters)", what);
	}
	return 0;
}

static int parse_forge(const struct repo_cfg *r, struct forge_status *out)
{
	static const char *const keys[] = { "forge", "api_url", "token_file", "project", "context", "per_stage" };
	const json_t *s = r->status;
	const char *forge = str(s, "forge"), *api = str(s, "api_url");
	char where[320];
	size_t len;

	snprintf(where, sizeof(where), "repositories[%s].status", r->git.name);
	if (only_keys(s, where, keys, OTA_ARRAY_SIZE(keys)) < 0)
		return OTA_EINVAL;
	out->repo = xstrdup(r->git.name);
	if (forge && !strcmp(forge, "github"))
		out->forge = FORGE_GITHUB, api = api ? api : "https://api.github.com";
	else if (forge && !strcmp(forge, "gitlab"))
		out->forge = FORGE_GITLAB, api = api ? api : "https://gitlab.com/api/v4";
	else if (forge && (!strcmp(forge, "gitea") || !strcmp(forge, "forgejo")))
		out->forge = FORGE_GITEA;
	else
		return ota_error_set(OTA_EINVAL, "%s.forge: github, gitlab, gitea or forgejo", where);
	if (!http_url(api))
		return ota_error_set(OTA_EINVAL, "%s.api_url: %s", where,
				     api ? "must start with http:// or https://" : "required for gitea (like https://gitea.example/api/v1)");
	len = strlen(api);
	while (len > 0 && api[len - 1] == '/')
		len--;
	out->api_url = xstrndup(api, len);
	if (!str(s, "token_file"))
		return ota_error_set(OTA_EINVAL, "%s.token_file: required (a file holding the API token)", where);
	{
		char what[340];
		snprintf(what, sizeof(what), "%s.token_file", where);
		if (read_secret_file(str(s, "token_file"), what, &out->token) < 0)
			return OTA_EINVAL;
	}
	out->project = xstrdup(str(s, "project") ? str(s, "project") : r->git.name);
	if (!*out->project || strpbrk(out->project, " ?#\t\r\n"))
		return ota_error_set(OTA_EINVAL, "%s.project: owner/name (or GitLab's project id)", where);
	if (str(s, "context"))
		out->context = xstrndup(str(s, "context"), 100);
	if (json_object_get(s, "per_stage") && !json_is_boolean(json_object_get(s, "per_stage")))
		return ota_error_set(OTA_EINVAL, "%s.per_stage: true or false", where);
	out->per_stage = json_is_true(json_object_get(s, "per_stage"));
	return 0;
}

static int parse_block(const json_t *b, struct notify *n)
{
	static const char *const keys[] = { "targets", "public_url", "retry_base", "retry_max", "max_age", "timeout", "poll" };
	const json_t *targets = json_object_get(b, "targets"), *t;
	size_t i;

	if (only_keys(b, "notifications", keys, OTA_ARRAY_SIZE(keys)) < 0)
		return OTA_EINVAL;
	if (get_ms(b, "retry_base", 1000, &n->retry_base_ms) < 0 || get_ms(b, "retry_max", 300000, &n->retry_max_ms) < 0 ||
	    get_ms(b, "max_age", 86400000, &n->max_age_ms) < 0 || get_ms(b, "timeout", 10000, &n->timeout_ms) < 0 ||
	    get_ms(b, "poll", 250, &n->poll_ms) < 0)
		return OTA_EINVAL;
	if (json_object_get(b, "public_url")) {
		if (!http_url(str(b, "public_url")))
			return ota_error_set(OTA_EINVAL, "notifications.public_url: must start with http:// or https://");
		n->public_url = xstrdup(str(b, "public_url"));
	}
	if (targets && !json_is_array(targets))
		return ota_error_set(OTA_EINVAL, "notifications.targets: a list of {name, kind, url, ...}");
	n->targets = xcalloc(json_array_size(targets) + 1, sizeof(*n->targets));
	json_array_foreach(targets, i, t) {
		if (parse_target(t, i, n, &n->targets[n->ntargets]) < 0) {
			n->ntargets++; /* freed by notify_free */
			return OTA_EINVAL;
		}
		n->ntargets++;
	}
	return 0;
}

int notify_open(struct notify **out, const struct otacd_config *c)
{
	struct notify *n;
	size_t nstatus = 0;
	int rc = 0;

	*out = NULL;
	for (size_t i = 0; i < c->nrepos; i++)
		nstatus += c->repos[i].status != NULL;
	if (!c->notifications && !nstatus)
		return 0;
	n = xcalloc(1, sizeof(*n));
	{
		json_t *empty = json_object();
		rc = parse_block(c->notifications ? c->notifications : empty, n);
		json_decref(empty);
		if (rc < 0)
			goto out;
	}
	n->forges = xcalloc(nstatus + 1, sizeof(*n->forges));
	for (size_t i = 0; i < c->nrepos && rc == 0; i++)
		if (c->repos[i].status)
			rc = parse_forge(&c->repos[i], &n->forges[n->nforges++]);
out:
	if (rc < 0) {
		notify_free(n);
		return rc;
	}
	*out = n;
	return 0;
}

static void wipe_free(char *s)
{
	if (s)
		memset(s, 0, strlen(s));
	free(s);
}

void notify_free(struct notify *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->ntargets; i++) {
		free(n->targets[i].name);
		wipe_free(n->targets[i].url);
		wipe_free(n->targets[i].secret);
		json_decref(n->targets[i].events);
	}
	for (size_t i = 0; i < n->nforges; i++) {
		free(n->forges[i].repo);
		free(n->forges[i].api_url);
		wipe_free(n->forges[i].token);
		free(n->forges[i].project);
		free(n->forges[i].context);
	}
	free(n->targets);
	free(n->forges);
	free(n->public_url);
	free(n);
}

const struct notify_target *notify_target_find(const struct notify *n, const char *name)
{
	for (size_t i = 0; n && i < n->ntargets; i++)
		if (n->targets[i].name && !strcmp(n->targets[i].name, name))
			return &n->targets[i];
	return NULL;
}

const struct forge_status *notify_forge_find(const struct notify *n, const char *repo)
{
	for (size_t i = 0; n && repo && i < n->nforges; i++)
		if (n->forges[i].repo && !strcmp(n->forges[i].repo, repo))
			return &n->forges[i];
	return NULL;
}

int notify_any_per_stage(const struct notify *n)
{
	for (size_t i = 0; n && i < n->nforges; i++)
		if (n->forges[i].per_stage)
			return 1;
	return 0;
}

int notify_target_wants(const struct notify_target *t, const char *event)
{
	size_t i;
	const json_t *p;
	if (!t->events)
		return 1;
	json_array_foreach(t->events, i, p) {
		const char *s = json_string_value(p);
		size_t len = s ? strlen(s) : 0;
		if (!s)
			continue;
		if (len && s[len - 1] == '*' ? !strncmp(s, event, len - 1) : !strcmp(s, event))
			return 1;
	}
	return 0;
}
