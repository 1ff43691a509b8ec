/*
 * config.c - defaults and the YAML configuration file.
 *
 * The file is small and flat, so this walks libyaml's document tree
 * directly: one mapping of known keys, each checked for its type.
 */
#include "config.h"
#include "fleet/fleet_ca.h"
#include "pipeline/yamlbound.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "auth.h"
#include "db/db.h"
#include "policy.h"
#include "sched/sched.h"
#include "tls/tls.h"

void config_defaults(struct otacd_config *c)
{
	memset(c, 0, sizeof(*c));
	c->listen = xstrdup("127.0.0.1:8470");
	c->agent_listen = xstrdup("");
	c->request_timeout_ms = 10000;
	c->max_connections = 10000;
	c->max_connections_per_client = 128;
	c->device_max_connections_per_client = 4096;
	c->state_dir = xstrdup("./otacd-state");
	c->local_agents = 2;
	strvec_push(&c->local_labels, "local");
	c->time_scale = 1.0;
	c->lease_ms = 30000;
	c->leader_poll_ms = 1000;
	c->heartbeat_ms = 1000;
	c->default_timeout_ms = 3600 * 1000;
	c->max_log_bytes = 4 << 20;
	c->disk_reserve = -1; /* diskguard's default */
	c->log_format = OTA_LOG_TEXT;
	c->log_level = OTA_LOG_INFO;
	c->max_artifact_size = 256 << 20;
	c->max_run_artifacts = (int64_t)2 << 30;
	c->artifact_retention_ms = (int64_t)30 * 86400 * 1000;
	c->retention.runs_max_age_ms = RETENTION_DEFAULT_RUNS_MAX_AGE_MS; /* issue 18 */
	c->retention.runs_keep = RETENTION_DEFAULT_RUNS_KEEP;
	c->retention.logs_max_age_ms = RETENTION_DEFAULT_LOGS_MAX_AGE_MS;
	c->retention.batch = RETENTION_DEFAULT_BATCH;
	c->retention.outbox_max_age_ms = RETENTION_DEFAULT_OUTBOX_MAX_AGE_MS;
	c->retention.outbox_keep = RETENTION_DEFAULT_OUTBOX_KEEP;
	c->secrets = json_object();
	c->keys = json_object();
	c->encryption_keys = json_object(); /* issue 13, encrypted images */
	c->products = json_object();
	c->tokens = json_array();
	c->device_listen = xstrdup("127.0.0.1:8471");
	c->device_metrics_public = 1;
	c->poll_ms = 6LL * 3600 * 1000;
	c->device_register_rate = 10;
	c->device_register_burst = 10000;
	c->device_tag_cap = 256;
	c->device_name_cap = 1024;
	c->device_cert_validity_ms = 365LL * 86400 * 1000;
	c->update_server = xstrdup("builtin");
	c->prometheus_url = xstrdup("http://127.0.0.1:9090");
	c->providers = json_object();
	c->gate_max_lag_ms = 60000; /* issue 19 part 5: evidence lag */
}

static void repo_release(struct repo_cfg *r)
{
	free((char *)r->git.name);
	free((char *)r->git.url);
	free((char *)r->git.username);
	if (r->git.token)
		memset((char *)r->git.token, 0, strlen(r->git.token));
	free((char *)r->git.token);
	free((char *)r->git.ssh_key);
	if (r->secret)
		memset(r->secret, 0, strlen(r->secret));
	free(r->secret);
	free(r->pipeline);
	free(r->default_branch);
	strvec_clear(&r->protect.branches);
	strvec_clear(&r->protect.tags);
	json_decref(r->status); /* issue 17 */
	json_decref(r->schedules);
}

const struct repo_cfg *config_repo_find(const struct otacd_config *c, const char *name)
{
	for (size_t i = 0; name && i < c->nrepos; i++)
		if (!strcmp(c->repos[i].git.name, name))
			return &c->repos[i];
	return NULL;
}

void config_release(struct otacd_config *c)
{
	for (size_t i = 0; i < c->nrepos; i++)
		repo_release(&c->repos[i]);
	free(c->repos);
	free(c->listen);
	free(c->state_dir);
	free(c->database);
	free(c->fleet_database);
	free(c->logs_dir);
	strvec_clear(&c->local_labels);
	json_decref(c->secrets);
	json_decref(c->keys);
	json_decref(c->encryption_keys);
	json_decref(c->products);
	json_decref(c->tokens);
	free(c->device_listen);
	free(c->agent_listen);
	json_decref(c->device_tags);
	free(c->device_ca_cert);
	free(c->device_ca_key);
	strvec_clear(&c->device_ca_also);
	free(c->fleet_key);
	free(c->device_secret_file);
	free(c->forward_ca);
	free(c->update_server);
	free(c->update_server_url);
	free(c->update_server_token);
	free(c->prometheus_url);
	json_decref(c->tls); /* issue 13, TLS */
	json_decref(c->artifact_store); /* issue 15 */
	json_decref(c->image_origin);
	json_decref(c->push);
	json_decref(c->providers);
	free(c->trust_root);
	json_decref(c->notifications); /* issue 17 */
	memset(c, 0, sizeof(*c));
}

struct cfg_ctx {
	const char *file;
	yaml_document_t *doc;
	struct otacd_config *c;
};

static int cfg_err(struct cfg_ctx *x, yaml_node_t *n, const char *fmt, const char *arg)
{
	char msg[512];
	snprintf(msg, sizeof(msg), fmt, arg);
	return ota_error_set(OTA_EINVAL, "%s:%zu:%zu: %s", x->file, n->start_mark.line + 1,
			     n->start_mark.column + 1, msg);
}

static const char *scalar(yaml_node_t *n)
{
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int get_string(struct cfg_ctx *x, yaml_node_t *n, const char *key, char **out)
{
	const char *s = scalar(n);
	if (!s)
		return cfg_err(x, n, "'%s' must be a string", key);
	free(*out);
	*out = xstrdup(s);
	return 0;
}

static int get_duration(struct cfg_ctx *x, yaml_node_t *n, const char *key, int64_t *out)
{
	const char *s = scalar(n);
	if (!s || ota_parse_duration_ms(s, out) < 0 || *out <= 0)
		return cfg_err(x, n, "'%s' must be a positive duration like 30s or 5m", key);
	return 0;
}

static int get_int(struct cfg_ctx *x, yaml_node_t *n, const char *key, int64_t *out, int64_t min)
{
	const char *s = scalar(n);
	char *end;
	long long v;
	if (!s || !*s)
		return cfg_err(x, n, "'%s' must be an integer", key);
	v = strtoll(s, &end, 10);
	if (*end || v < min)
		return cfg_err(x, n, "'%s' must be an integer in range", key);
	*out = v;
	return 0;
}

/* A byte count: a plain integer, or one with a KiB, MiB or GiB suffix. */
static int get_size(struct cfg_ctx *x, yaml_node_t *n, const char *key, int64_t *out)
{
	static const struct { const char *suffix; int shift; } units[] = { { "", 0 }, { "KiB", 10 }, { "MiB", 20 },
									   { "GiB", 30 } };
	const char *s = scalar(n);
	char *end;
	long long v;
	if (!s || *s < '0' || *s > '9')
		return cfg_err(x, n, "'%s' must be a byte count like 67108864 or 64MiB", key);
	v = strtoll(s, &end, 10);
	while (*end == ' ')
		end++;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(units); i++)
		if (!strcmp(end, units[i].suffix) && v <= (INT64_MAX >> 31)) {
			*out = (int64_t)v << units[i].shift;
			return 0;
		}
	return cfg_err(x, n, "'%s' must be a byte count like 67108864 or 64MiB (suffixes KiB, MiB, GiB)", key);
}

static int get_bool(struct cfg_ctx *x, yaml_node_t *n, const char *key, int *out)
{
	const char *s = scalar(n);
	if (s && (!strcmp(s, "true") || !strcmp(s, "yes")))
		*out = 1;
	else if (s && (!strcmp(s, "false") || !strcmp(s, "no")))
		*out = 0;
	else
		return cfg_err(x, n, "'%s' must be true or false", key);
	return 0;
}

static int get_tokens(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_item_t *it;
	if (n->type != YAML_SEQUENCE_NODE)
		return cfg_err(x, n, "'%s' must be a list of {name, role, token | sha256}", "tokens");
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
		yaml_node_t *t = yaml_document_get_node(x->doc, *it);
		const char *name = NULL, *role = NULL, *token = NULL, *hash = NULL;
		char hex[65];
		yaml_node_pair_t *p;
		json_t *labels = NULL, *entry;
		if (t->type != YAML_MAPPING_NODE)
			return cfg_err(x, t, "a token must be a mapping {name, role, token | sha256}%s", "");
		for (p = t->data.mapping.pairs.start; p < t->data.mapping.pairs.top; p++) {
			yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
			yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
			const char *ks = scalar(k) ? scalar(k) : "";
			if (!strcmp(ks, "name"))
				name = scalar(v);
			else if (!strcmp(ks, "role"))
				role = scalar(v);
			else if (!strcmp(ks, "token"))
				token = scalar(v);
			else if (!strcmp(ks, "sha256"))
				hash = scalar(v);
			else if (!strcmp(ks, "labels") && v->type == YAML_SEQUENCE_NODE) {
				/* an agent token's registered labels: it claims nothing outside them */
				yaml_node_item_t *li;
				json_decref(labels);
				labels = json_array();
				for (li = v->data.sequence.items.start; li < v->data.sequence.items.top; li++) {
					const char *l = scalar(yaml_document_get_node(x->doc, *li));
					if (!l || !*l || strpbrk(l, " ,\t")) {
						json_decref(labels);
						return cfg_err(x, v, "'labels' of token '%s' must be words without spaces or commas",
							       name ? name : "?");
					}
					json_array_append_new(labels, json_string(l));
				}
			} else {
				json_decref(labels);
				return cfg_err(x, k, "unknown token key '%s' (expected name, role, token, sha256, labels)", ks);
			}
		}
		if (labels && (!role || strcmp(role, "agent") != 0)) {
			json_decref(labels);
			return cfg_err(x, t, "only a token of role agent has 'labels'%s", "");
		}
		if (!name || !role || (!token && !hash)) {
			json_decref(labels);
			return cfg_err(x, t, "a token needs name, role and token or sha256%s", "");
		}
		if (auth_role_parse(role) == ROLE_NONE)
			return cfg_err(x, t, "unknown role '%s' (expected viewer, operator, release, agent, admin)", role);
		if ((token && strlen(token) < 16) || (hash && (strlen(hash) != 64 || strspn(hash, "0123456789abcdef") != 64))) {
			json_decref(labels);
			return token && strlen(token) < 16
				       ? cfg_err(x, t, "token for '%s' is too short (at least 16 characters)", name)
				       : cfg_err(x, t, "sha256 for '%s' must be 64 lowercase hex digits", name);
		}
		if (token)
			auth_sha256_hex(token, hex);
		entry = json_pack("{ss ss ss}", "name", name, "role", role, "sha256", token ? hex : hash);
		if (labels)
			json_object_set_new(entry, "labels", labels);
		json_array_append_new(x->c->tokens, entry);
	}
	return 0;
}

static int http_url(const char *s)
{
	return s && (!strncmp(s, "http://", 7) || !strncmp(s, "https://", 8)) && !strpbrk(s, " \t\r\n");
}

/* providers: NAME -> {kind: prometheus|http, url: http(s)://..., token: ...} */
static int get_providers(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping NAME: {kind, url, token}", "providers");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
		yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
		const char *name = scalar(k), *kind = NULL, *url = NULL, *token = NULL;
		yaml_node_pair_t *q;
		json_t *def;

		if (!name || !*name || strlen(name) > 64 ||
		    strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != strlen(name) ||
		    !strcmp(name, "builtin"))
			return cfg_err(x, k, "provider name '%s' must be letters, digits, '_' or '-' (and not builtin)",
				       name ? name : "");
		if (v->type != YAML_MAPPING_NODE)
			return cfg_err(x, v, "provider '%s' must be a mapping {kind, url, token}", name);
		for (q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
			yaml_node_t *qk = yaml_document_get_node(x->doc, q->key);
			const char *ks = scalar(qk) ? scalar(qk) : "", *vs = scalar(yaml_document_get_node(x->doc, q->value));
			if (!vs)
				return cfg_err(x, qk, "provider key '%s' must be a string", ks);
			if (!strcmp(ks, "kind"))
				kind = vs;
			else if (!strcmp(ks, "url"))
				url = vs;
			else if (!strcmp(ks, "token"))
				token = vs;
			else
				return cfg_err(x, qk, "unknown provider key '%s' (expected kind, url, token)", ks);
		}
		if (!kind || (strcmp(kind, "prometheus") && strcmp(kind, "http")))
			return cfg_err(x, v, "provider '%s' needs kind: prometheus or kind: http", name);
		if (!http_url(url))
			return cfg_err(x, v, "provider '%s' needs a url starting with http:// or https://", name);
		def = json_pack("{ss ss}", "kind", kind, "url", url);
		if (token)
			json_object_set_new(def, "token", json_string(token));
		json_object_set_new(x->c->providers, name, def);
	}
	return 0;
}

static int get_secrets(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping NAME: value", "secrets");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
		yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
		if (!scalar(k) || !scalar(v))
			return cfg_err(x, k, "secret entries must be NAME: string%s", "");
		/* the value is never echoed in messages */
		json_object_set_new(x->c->secrets, scalar(k), json_string(scalar(v)));
	}
	return 0;
}

static int get_labels(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_item_t *it;
	if (n->type != YAML_SEQUENCE_NODE)
		return cfg_err(x, n, "'%s' must be a list of strings", "local_agent_labels");
	strvec_clear(&x->c->local_labels);
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
		yaml_node_t *v = yaml_document_get_node(x->doc, *it);
		if (!scalar(v))
			return cfg_err(x, v, "'%s' must be a list of strings", "local_agent_labels");
		strvec_push(&x->c->local_labels, scalar(v));
	}
	return 0;
}

/* device_tags: { KEY: [VALUE, ...] }: the only device tags accepted */
static int get_device_tags(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must map tag keys to lists of values", "device_tags");
	json_decref(x->c->device_tags);
	x->c->device_tags = json_object();
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key), *v = yaml_document_get_node(x->doc, p->value);
		json_t *vals = json_array();
		yaml_node_item_t *it;
		if (!scalar(k) || v->type != YAML_SEQUENCE_NODE) {
			json_decref(vals);
			return cfg_err(x, v, "'%s' must map tag keys to lists of values", "device_tags");
		}
		for (it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
			yaml_node_t *e = yaml_document_get_node(x->doc, *it);
			if (!scalar(e)) {
				json_decref(vals);
				return cfg_err(x, e, "'%s' values must be strings", "device_tags");
			}
			json_array_append_new(vals, json_string(scalar(e)));
		}
		json_object_set_new(x->c->device_tags, scalar(k), vals);
	}
	return 0;
}

static int get_strings(struct cfg_ctx *x, yaml_node_t *n, const char *key, struct strvec *v);

/* device_ca: {cert: FILE, key: FILE, also_trust: [FILE]}: the device CA
 * (issue 13); no key: an external CA otacd trusts but cannot issue with;
 * also_trust: previous CAs still trusted for verification (a rollover) */
static int get_device_ca(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	int rc = 0;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping {cert: FILE, key: FILE}", "device_ca");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top && rc == 0; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key), *v = yaml_document_get_node(x->doc, p->value);
		const char *key = scalar(k) ? scalar(k) : "";
		if (!strcmp(key, "cert"))
			rc = get_string(x, v, "device_ca.cert", &x->c->device_ca_cert);
		else if (!strcmp(key, "key"))
			rc = get_string(x, v, "device_ca.key", &x->c->device_ca_key);
		else if (!strcmp(key, "also_trust"))
			rc = get_strings(x, v, "device_ca.also_trust", &x->c->device_ca_also);
		else
			rc = cfg_err(x, k, "unknown key '%s' in device_ca (cert, key, also_trust)", key);
	}
	if (rc == 0 && x->c->device_ca_key && !x->c->device_ca_cert)
		rc = cfg_err(x, n, "'%s' has a key but no cert", "device_ca");
	if (rc == 0 && !x->c->device_ca_cert && !x->c->device_ca_also.n)
		rc = cfg_err(x, n, "'%s' needs cert (or also_trust)", "device_ca");
	return rc;
}

/* keys: { NAME: "spec" } or { NAME: { spec: "...", pin: "...", certificate: "..." } } */
static int get_keys(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping NAME: {spec, pin}", "keys");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
		yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
		const char *spec = NULL, *pin = NULL, *cert = NULL;
		json_t *e;
		if (!scalar(k))
			return cfg_err(x, k, "a key name must be a string%s", "");
		if (scalar(v)) {
			spec = scalar(v);
		} else if (v->type == YAML_MAPPING_NODE) {
			yaml_node_pair_t *q;
			for (q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
				yaml_node_t *kk = yaml_document_get_node(x->doc, q->key);
				yaml_node_t *vv = yaml_document_get_node(x->doc, q->value);
				const char *ks = scalar(kk) ? scalar(kk) : "";
				if (!strcmp(ks, "spec") && scalar(vv))
					spec = scalar(vv);
				else if (!strcmp(ks, "pin") && scalar(vv))
					pin = scalar(vv);
				else if (!strcmp(ks, "certificate") && scalar(vv))
					cert = scalar(vv); /* issue 13: the key's certificate chain (PEM) */
				else
					return cfg_err(x, kk, "unknown or non-string key setting '%s' (expected spec, pin, certificate)", ks);
			}
		}
		if (!spec || !*spec)
			return cfg_err(x, v, "key '%s' needs a spec: a PEM file or a pkcs11: URI", scalar(k));
		e = json_pack("{ss}", "spec", spec);
		if (pin)
			json_object_set_new(e, "pin", json_string(pin));
		if (cert)
			json_object_set_new(e, "certificate", json_string(cert));
		json_object_set_new(x->c->keys, scalar(k), e);
	}
	return 0;
}

/* issue 13, encrypted images: encryption_keys: { NAME: DEVICE_PUBLIC.pem },
 * each an EC P-256 or X25519 public key (the devices hold the private
 * half); a release stage's `encrypt:` names them. */
static int get_encryption_keys(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping NAME: PUBLIC_KEY.pem", "encryption_keys");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key), *v = yaml_document_get_node(x->doc, p->value);
		if (!scalar(k) || !scalar(v) || !*scalar(v))
			return cfg_err(x, v, "encryption_keys: '%s' must name a PEM public key file",
				       scalar(k) ? scalar(k) : "?");
		json_object_set_new(x->c->encryption_keys, scalar(k), json_string(scalar(v)));
	}
	return 0;
}

/* A list of strings into v (appended). */
static int get_strings(struct cfg_ctx *x, yaml_node_t *n, const char *key, struct strvec *v)
{
	yaml_node_item_t *it;
	if (n->type != YAML_SEQUENCE_NODE)
		return cfg_err(x, n, "'%s' must be a list of strings", key);
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
		yaml_node_t *s = yaml_document_get_node(x->doc, *it);
		if (!scalar(s) || !*scalar(s))
			return cfg_err(x, s ? s : n, "'%s' must be a list of non-empty strings", key);
		strvec_push(v, scalar(s));
	}
	return 0;
}

/* protected: { branches: [globs], tags: [globs] } */
static int get_protected(struct cfg_ctx *x, yaml_node_t *n, struct pl_filter *f)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping {branches: [globs], tags: [globs]}", "protected");
	strvec_clear(&f->branches);
	strvec_clear(&f->tags);
	f->set = 1;
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
		yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
		const char *ks = scalar(k) ? scalar(k) : "";
		int rc;
		if (!strcmp(ks, "branches"))
			rc = get_strings(x, v, "protected.branches", &f->branches);
		else if (!strcmp(ks, "tags"))
			rc = get_strings(x, v, "protected.tags", &f->tags);
		else
			rc = cfg_err(x, k, "unknown key '%s' in protected (expected branches, tags)", ks);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Any YAML value as JSON, plain scalars typed the way pipelines type them
 * (so a gate written the same way in both compares equal). */
static json_t *to_json(struct cfg_ctx *x, yaml_node_t *n, int depth)
{
	json_t *j = NULL;
	if (!n || depth > 16)
		return NULL;
	if (n->type == YAML_SCALAR_NODE) {
		const char *s = scalar(n);
		char *end;
		if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
			return json_string(s);
		if (!strcmp(s, "true"))
			return json_true();
		if (!strcmp(s, "false"))
			return json_false();
		if (!strcmp(s, "null") || !strcmp(s, "~") || !*s)
			return json_null();
		if (strspn(s, "+-0123456789") == strlen(s)) {
			long long v = strtoll(s, &end, 10);
			if (!*end)
				return json_integer(v);
		}
		if (strspn(s, "+-0123456789.eE") == strlen(s) && strpbrk(s, "0123456789")) {
			double v = strtod(s, &end);
			if (!*end)
				return json_real(v);
		}
		return json_string(s);
	}
	if (n->type == YAML_SEQUENCE_NODE) {
		j = json_array();
		for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
			json_t *v = to_json(x, yaml_document_get_node(x->doc, *it), depth + 1);
			if (!v) {
				json_decref(j);
				return NULL;
			}
			json_array_append_new(j, v);
		}
		return j;
	}
	if (n->type == YAML_MAPPING_NODE) {
		j = json_object();
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
			const char *k = scalar(yaml_document_get_node(x->doc, p->key));
			json_t *v = k ? to_json(x, yaml_document_get_node(x->doc, p->value), depth + 1) : NULL;
			if (!v) {
				json_decref(j);
				return NULL;
			}
			json_object_set_new(j, k, v);
		}
	}
	return j;
}

/* products: { NAME: { keys, refs, max_counter_increase, required_gates, approvals } } */
static int get_products(struct cfg_ctx *x, yaml_node_t *n)
{
	yaml_node_pair_t *p;
	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping NAME: {keys, refs, max_counter_increase, ...}", "products");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
		yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
		json_t *raw, *norm = NULL;
		char err[384], msg[512];
		if (!scalar(k) || !*scalar(k))
			return cfg_err(x, k, "a product name must be a string%s", "");
		if (!(raw = to_json(x, v, 0)))
			return cfg_err(x, v, "product '%s' is nested too deep or malformed", scalar(k));
		if (policy_product_parse(raw, &norm, err, sizeof(err)) < 0) {
			json_decref(raw);
			snprintf(msg, sizeof(msg), "product '%s': %s", scalar(k), err);
			return cfg_err(x, v, "%s", msg);
		}
		json_decref(raw);
		json_object_set_new(x->c->products, scalar(k), norm);
	}
	return 0;
}

static int get_repos(struct cfg_ctx *x, yaml_node_t *n)
{
	static const char *const keys[] = { "name", "url", "secret", "token", "username", "ssh_key", "pipeline",
					    "default_branch", "protected", "status", "schedules" };
	yaml_node_item_t *it;

	if (n->type != YAML_SEQUENCE_NODE)
		return cfg_err(x, n, "'%s' must be a list of {name, url, secret, ...}", "repositories");
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
		yaml_node_t *t = yaml_document_get_node(x->doc, *it);
		struct repo_cfg r;
		yaml_node_pair_t *p;
		yaml_node_t *sched_node = NULL;
		int rc = 0;

		memset(&r, 0, sizeof(r));
		if (t->type != YAML_MAPPING_NODE)
			return cfg_err(x, t, "a repository must be a mapping {name, url, secret, ...}%s", "");
		for (p = t->data.mapping.pairs.start; p < t->data.mapping.pairs.top && rc == 0; p++) {
			yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
			yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
			const char *ks = scalar(k) ? scalar(k) : "";
			char **slot = !strcmp(ks, "name") ? (char **)&r.git.name
				    : !strcmp(ks, "url") ? (char **)&r.git.url
				    : !strcmp(ks, "secret") ? &r.secret
				    : !strcmp(ks, "token") ? (char **)&r.git.token
				    : !strcmp(ks, "username") ? (char **)&r.git.username
				    : !strcmp(ks, "ssh_key") ? (char **)&r.git.ssh_key
				    : !strcmp(ks, "pipeline") ? &r.pipeline
				    : !strcmp(ks, "default_branch") ? &r.default_branch : NULL;
			if (!strcmp(ks, "protected")) {
				rc = get_protected(x, v, &r.protect);
			} else if (!strcmp(ks, "status")) { /* issue 17: checked by notify_open */
				json_decref(r.status);
				r.status = to_json(x, v, 0);
				if (!json_is_object(r.status))
					rc = cfg_err(x, v, "'%s' must be a mapping {forge, api_url, token_file, ...}", ks);
			} else if (!strcmp(ks, "schedules")) { /* issue 17: checked below, once the name is known */
				json_decref(r.schedules);
				r.schedules = to_json(x, v, 0);
				sched_node = v;
				if (!r.schedules)
					rc = cfg_err(x, v, "'%s' is nested too deep or malformed", ks);
			} else if (!slot) {
				const char *hint = ota_did_you_mean(ks, keys, OTA_ARRAY_SIZE(keys));
				char msg[256];
				snprintf(msg, sizeof(msg), "unknown repository key '%s'%s%s%s", ks,
					 hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
				rc = cfg_err(x, k, "%s", msg);
			} else {
				rc = get_string(x, v, ks, slot);
			}
		}
		if (rc == 0 && (!r.git.name || !r.git.url))
			rc = cfg_err(x, t, "a repository needs a name and a url%s", "");
		else if (rc == 0 && config_repo_find(x->c, r.git.name))
			rc = cfg_err(x, t, "repository '%s' is listed twice", r.git.name);
		else if (rc == 0 && r.secret && strlen(r.secret) < 16)
			rc = cfg_err(x, t, "the webhook secret of '%s' is too short (at least 16 characters)", r.git.name);
		if (rc == 0 && r.schedules) {
			char err[384], msg[512];
			if (sched_config_check(r.schedules, err, sizeof(err)) < 0) {
				snprintf(msg, sizeof(msg), "repositories[%s].%s", r.git.name, err);
				rc = cfg_err(x, sched_node, "%s", msg);
			}
		}
		if (rc < 0) {
			repo_release(&r);
			return rc;
		}
		if (!r.pipeline)
			r.pipeline = xstrdup(".otacd/pipeline.yml");
		if (!r.default_branch)
			r.default_branch = xstrdup("main");
		if (!r.protect.set) {
			/* the default branch and release tags (docs/config.md) */
			r.protect.set = 1;
			strvec_push(&r.protect.branches, r.default_branch);
			strvec_push(&r.protect.tags, "v*");
		}
		x->c->repos = xrealloc(x->c->repos, (x->c->nrepos + 1) * sizeof(r));
		x->c->repos[x->c->nrepos++] = r;
	}
	return 0;
}

/* A retention bound: "off", or a duration of at least an hour (a typo
 * such as 90s for 90d would delete nearly every run). */
static int get_bound(struct cfg_ctx *x, yaml_node_t *n, const char *key, int64_t *out)
{
	const char *s = scalar(n);
	if (s && !strcmp(s, "off")) {
		*out = 0;
		return 0;
	}
	if (!s || ota_parse_duration_ms(s, out) < 0 || *out < 3600 * 1000)
		return cfg_err(x, n, "'%s' must be off or a duration of at least 1h, like 90d", key);
	return 0;
}

/* retention: {runs_max_age, runs_keep, logs_max_age, batch, outbox_max_age,
 * outbox_keep} (issue 18, retention.h); keys left out keep their defaults */
static int get_retention(struct cfg_ctx *x, yaml_node_t *n)
{
	struct retention_cfg *r = &x->c->retention;
	yaml_node_pair_t *p;
	int rc = 0;

	if (n->type != YAML_MAPPING_NODE)
		return cfg_err(x, n, "'%s' must be a mapping {runs_max_age, runs_keep, logs_max_age, batch}",
			       "retention");
	for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top && rc == 0; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key), *v = yaml_document_get_node(x->doc, p->value);
		const char *key = scalar(k) ? scalar(k) : "";
		if (!strcmp(key, "runs_max_age"))
			rc = get_bound(x, v, "retention.runs_max_age", &r->runs_max_age_ms);
		else if (!strcmp(key, "logs_max_age"))
			rc = get_bound(x, v, "retention.logs_max_age", &r->logs_max_age_ms);
		else if (!strcmp(key, "outbox_max_age"))
			rc = get_bound(x, v, "retention.outbox_max_age", &r->outbox_max_age_ms);
		else if (!strcmp(key, "runs_keep") || !strcmp(key, "outbox_keep")) {
			int64_t *keep = key[0] == 'r' ? &r->runs_keep : &r->outbox_keep;
			if (scalar(v) && !strcmp(scalar(v), "off"))
				*keep = 0;
			else
				rc = get_int(x, v, key[0] == 'r' ? "retention.runs_keep (off or at least 1)"
								 : "retention.outbox_keep (off or at least 1)", keep, 1);
		} else if (!strcmp(key, "batch")) {
			if ((rc = get_int(x, v, "retention.batch", &r->batch, 1)) == 0 && r->batch > 1024)
				rc = cfg_err(x, v, "'%s' must be at most 1024 runs", "retention.batch");
		} else
			rc = cfg_err(x, k, "unknown key '%s' in retention (runs_max_age, runs_keep, logs_max_age, batch,"
				     " outbox_max_age, outbox_keep)",
				     key);
	}
	return rc;
}

/* database: / fleet_database: a storage-layer URL; the message never
 * shows a password the value holds (docs/security.md). */
static int get_database(struct cfg_ctx *x, yaml_node_t *v, const char *key, char **out)
{
	const char *s = scalar(v);
	int rc;

	if (!s || db_url_check(s) < 0) {
		char *shown = db_url_redacted(s ? s : ""), *what = xasprintf("'%s' must be sqlite:PATH,"
									 " postgres://... or postgresql://..., not '%s'",
									 key, shown);
		rc = cfg_err(x, v, "%s", what);
		free(what);
		free(shown);
		return rc;
	}
	free(*out);
	*out = xstrdup(s);
	return 0;
}

char *config_database_url(const struct otacd_config *c, const char *url, const char *file)
{
	return url ? xstrdup(url) : xasprintf("sqlite:%s/%s", c->state_dir, file);
}

static int apply(struct cfg_ctx *x, yaml_node_t *root)
{
	static const char *const keys[] = {
		"listen", "state_dir", "database", "fleet_database", "logs", "local_agents", "local_agent_labels", "time_scale",
		"anonymous_read", "lease", "leader_poll", "heartbeat", "default_timeout", "max_log_bytes",
		"max_artifact_size", "max_run_artifacts", "artifact_retention", "secrets", "tokens", "repositories", "keys",
		"device_listen", "fleet_key", "device_secret_file", "forward_ca", "device_metrics_public", "poll_interval", "update_server",
		"update_server_url", "update_server_token", "prometheus_url", "providers", "products", "agent_listen", "request_timeout",
		"max_connections", "max_connections_per_client", "device_max_connections_per_client", "http_threads", "device_register_rate",
		"device_register_burst", "device_checkin_capacity", "device_tags", "device_tag_cap", "device_name_cap",
		/* issue 13, device certificates */
		"device_ca", "device_auth", "device_cert_validity",
		"tls", /* issue 13, TLS */
		"trust_root", /* issue 13, signing PKI */
		"gate_max_lag", /* issue 19 part 5: evidence lag */
		"encryption_keys", /* issue 13, encrypted images */
		"artifact_store", "image_origin", /* issue 15: object storage and CDN origin */
		"push", /* issue 15: MQTT update hints */
		"disk_reserve", /* issue 18: the reserve kept for a full disk */
		"log_format", "log_level", /* issue 18: structured logs */
		"notifications", /* issue 17: commit statuses and outbound notifications */
		"retention", /* issue 18: finished runs' rows and logs */
	};
	struct otacd_config *c = x->c;
	yaml_node_pair_t *p;
	int rc = 0;

	if (root->type != YAML_MAPPING_NODE)
		return cfg_err(x, root, "the configuration must be a mapping%s", "");
	for (p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top && rc == 0; p++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, p->key);
		yaml_node_t *v = yaml_document_get_node(x->doc, p->value);
		const char *key = scalar(k) ? scalar(k) : "";
		int64_t n;

		if (!strcmp(key, "listen"))
			rc = get_string(x, v, key, &c->listen);
		else if (!strcmp(key, "agent_listen"))
			rc = get_string(x, v, key, &c->agent_listen);
		else if (!strcmp(key, "request_timeout")) {
			if ((rc = get_duration(x, v, key, &c->request_timeout_ms)) == 0 && c->request_timeout_ms < 1000)
				rc = cfg_err(x, v, "'%s' must be at least 1s", key);
		} else if (!strcmp(key, "max_connections"))
			rc = get_int(x, v, key, &c->max_connections, 16);
		else if (!strcmp(key, "max_connections_per_client"))
			rc = get_int(x, v, key, &c->max_connections_per_client, 1);
		else if (!strcmp(key, "device_max_connections_per_client"))
			rc = get_int(x, v, key, &c->device_max_connections_per_client, 1);
		else if (!strcmp(key, "http_threads")) {
			if ((rc = get_int(x, v, key, &c->http_threads, 0)) == 0 && c->http_threads > 64)
				rc = cfg_err(x, v, "'%s' must be at most 64", key);
		} else if (!strcmp(key, "state_dir"))
			rc = get_string(x, v, key, &c->state_dir);
		else if (!strcmp(key, "database"))
			rc = get_database(x, v, key, &c->database);
		else if (!strcmp(key, "fleet_database"))
			rc = get_database(x, v, key, &c->fleet_database);
		else if (!strcmp(key, "logs")) {
			if (!scalar(v) || scalar(v)[0] != '/')
				rc = cfg_err(x, v, "'%s' must be an absolute directory path (the job logs' directory)", key);
			else
				rc = get_string(x, v, key, &c->logs_dir);
		}
		else if (!strcmp(key, "local_agents")) {
			if ((rc = get_int(x, v, key, &n, 0)) == 0)
				c->local_agents = (int)(n > 64 ? 64 : n);
		} else if (!strcmp(key, "local_agent_labels"))
			rc = get_labels(x, v);
		else if (!strcmp(key, "time_scale")) {
			const char *s = scalar(v);
			char *end = NULL;
			double d = s ? strtod(s, &end) : 0;
			if (!s || *end || d <= 0)
				rc = cfg_err(x, v, "'%s' must be a positive number", key);
			else
				c->time_scale = d;
		} else if (!strcmp(key, "anonymous_read"))
			rc = get_bool(x, v, key, &c->anonymous_read);
		else if (!strcmp(key, "lease"))
			rc = get_duration(x, v, key, &c->lease_ms);
		else if (!strcmp(key, "leader_poll")) {
			rc = get_duration(x, v, key, &c->leader_poll_ms);
			if (rc == 0 && (c->leader_poll_ms < 10 || c->leader_poll_ms > 60000))
				rc = cfg_err(x, v, "'%s' must be from 10ms to 60s", key);
		} else if (!strcmp(key, "heartbeat"))
			rc = get_duration(x, v, key, &c->heartbeat_ms);
		else if (!strcmp(key, "default_timeout"))
			rc = get_duration(x, v, key, &c->default_timeout_ms);
		else if (!strcmp(key, "max_log_bytes"))
			rc = get_int(x, v, key, &c->max_log_bytes, 1024);
		else if (!strcmp(key, "log_format")) {
			if ((c->log_format = ota_log_format_parse(scalar(v))) < 0)
				rc = cfg_err(x, v, "'%s' must be text, logfmt or json", key);
		} else if (!strcmp(key, "log_level")) {
			if ((c->log_level = ota_log_level_parse(scalar(v))) < 0)
				rc = cfg_err(x, v, "'%s' must be error, warn, info or debug", key);
		} else if (!strcmp(key, "disk_reserve"))
			rc = get_size(x, v, key, &c->disk_reserve);
		else if (!strcmp(key, "max_artifact_size"))
			rc = get_int(x, v, key, &c->max_artifact_size, 1);
		else if (!strcmp(key, "max_run_artifacts"))
			rc = get_int(x, v, key, &c->max_run_artifacts, 1);
		else if (!strcmp(key, "artifact_retention"))
			rc = get_duration(x, v, key, &c->artifact_retention_ms);
		else if (!strcmp(key, "retention")) /* issue 18 */
			rc = get_retention(x, v);
		else if (!strcmp(key, "secrets"))
			rc = get_secrets(x, v);
		else if (!strcmp(key, "tokens"))
			rc = get_tokens(x, v);
		else if (!strcmp(key, "repositories"))
			rc = get_repos(x, v);
		else if (!strcmp(key, "keys"))
			rc = get_keys(x, v);
		else if (!strcmp(key, "products"))
			rc = get_products(x, v);
		else if (!strcmp(key, "device_listen"))
			rc = get_string(x, v, key, &c->device_listen);
		else if (!strcmp(key, "fleet_key"))
			rc = get_string(x, v, key, &c->fleet_key);
		else if (!strcmp(key, "device_secret_file"))
			rc = get_string(x, v, key, &c->device_secret_file);
		else if (!strcmp(key, "forward_ca")) /* issue 16: checked at start (api_fwd_cacert_check) */
			rc = get_string(x, v, key, &c->forward_ca);
		else if (!strcmp(key, "device_metrics_public"))
			rc = get_bool(x, v, key, &c->device_metrics_public);
		else if (!strcmp(key, "poll_interval"))
			rc = get_duration(x, v, key, &c->poll_ms);
		else if (!strcmp(key, "device_register_rate"))
			rc = get_int(x, v, key, &c->device_register_rate, 1);
		else if (!strcmp(key, "device_register_burst"))
			rc = get_int(x, v, key, &c->device_register_burst, 1);
		else if (!strcmp(key, "device_checkin_capacity")) /* issue 15: admission */
			rc = get_int(x, v, key, &c->device_checkin_capacity, 0);
		else if (!strcmp(key, "device_tag_cap"))
			rc = get_int(x, v, key, &c->device_tag_cap, 1);
		else if (!strcmp(key, "device_name_cap"))
			rc = get_int(x, v, key, &c->device_name_cap, 1);
		else if (!strcmp(key, "device_tags"))
			rc = get_device_tags(x, v);
		/* issue 13, device identity by certificate (docs/config.md) */
		else if (!strcmp(key, "device_ca"))
			rc = get_device_ca(x, v);
		else if (!strcmp(key, "device_auth")) {
			const char *m = scalar(v);
			if (!m || (c->device_auth = fleet_auth_mode_parse(m)) < 0)
				rc = cfg_err(x, v, "'%s' must be token, cert or both", key);
		} else if (!strcmp(key, "device_cert_validity"))
			rc = get_duration(x, v, key, &c->device_cert_validity_ms);
		else if (!strcmp(key, "update_server")) {
			if ((rc = get_string(x, v, key, &c->update_server)) == 0 && strcmp(c->update_server, "builtin") &&
			    strcmp(c->update_server, "http"))
				rc = cfg_err(x, v, "'%s' must be builtin or http", key);
		} else if (!strcmp(key, "update_server_url"))
			rc = get_string(x, v, key, &c->update_server_url);
		else if (!strcmp(key, "update_server_token"))
			rc = get_string(x, v, key, &c->update_server_token);
		else if (!strcmp(key, "prometheus_url")) {
			if ((rc = get_string(x, v, key, &c->prometheus_url)) == 0 && *c->prometheus_url &&
			    !http_url(c->prometheus_url))
				rc = cfg_err(x, v, "'%s' must start with http:// or https://", key);
		} else if (!strcmp(key, "providers"))
			rc = get_providers(x, v);
		else if (!strcmp(key, "encryption_keys")) /* issue 13, encrypted images */
			rc = get_encryption_keys(x, v);
		else if (!strcmp(key, "tls")) { /* issue 13, TLS: checked by tls/tls.c */
			json_t *raw = to_json(x, v, 0);
			if (!raw || tls_config_check(raw) < 0) {
				char msg[384];
				snprintf(msg, sizeof(msg), "%s", raw ? ota_error_last() : "tls is nested too deep or malformed");
				json_decref(raw);
				rc = cfg_err(x, v, "%s", msg);
			} else {
				json_decref(c->tls);
				c->tls = raw;
			}
		} else if (!strcmp(key, "notifications")) { /* issue 17: checked by notify_open */
			json_t *raw = to_json(x, v, 0);
			if (!json_is_object(raw)) {
				json_decref(raw);
				rc = cfg_err(x, v, "'%s' must be a mapping {targets, public_url, ...}", key);
			} else {
				json_decref(c->notifications);
				c->notifications = raw;
			}
		} else if (!strcmp(key, "artifact_store") || !strcmp(key, "image_origin") || !strcmp(key, "push")) {
			/* issue 15: checked when opened (artifact/artifact.c, artifact/origin.c, push/mqtt.c) */
			json_t *raw = to_json(x, v, 0);
			json_t **slot = key[0] == 'a' ? &c->artifact_store : key[0] == 'i' ? &c->image_origin : &c->push;
			if (!json_is_object(raw)) {
				json_decref(raw);
				rc = cfg_err(x, v, "'%s' must be a mapping", key);
			} else {
				json_decref(*slot);
				*slot = raw;
			}
		} else if (!strcmp(key, "trust_root")) /* issue 13, signing PKI */
			rc = get_string(x, v, key, &c->trust_root);
		/* issue 19 part 5: evidence lag */
		else if (!strcmp(key, "gate_max_lag")) {
			if ((rc = get_duration(x, v, key, &c->gate_max_lag_ms)) == 0 && c->gate_max_lag_ms < 1000)
				rc = cfg_err(x, v, "'%s' must be at least 1s", key);
		} else {
			const char *hint = ota_did_you_mean(key, keys, OTA_ARRAY_SIZE(keys));
			char msg[256];
			snprintf(msg, sizeof(msg), "unknown key '%s'%s%s%s", key, hint ? " (did you mean '" : "",
				 hint ? hint : "", hint ? "'?)" : "");
			rc = cfg_err(x, k, "%s", msg);
		}
	}
	return rc;
}

/* Products name keys and repositories defined anywhere in the file. */
static int check_products(const struct otacd_config *c, const char *path)
{
	const char *name;
	json_t *e, *v;
	size_t i;

	json_object_foreach(c->products, name, e) {
		json_array_foreach(json_object_get(e, "keys"), i, v)
			if (!json_object_get(c->keys, json_string_value(v)))
				return ota_error_set(OTA_EINVAL, "%s: products.%s.keys: key '%s' is not defined in keys:", path,
						     name, json_string_value(v));
		json_array_foreach(json_object_get(e, "repositories"), i, v)
			if (!config_repo_find(c, json_string_value(v)))
				return ota_error_set(OTA_EINVAL, "%s: products.%s.repositories: '%s' is not in repositories:",
						     path, name, json_string_value(v));
	}
	return 0;
}

int config_load(struct otacd_config *c, const char *path)
{
	struct buf text = BUF_INIT;
	yaml_parser_t parser;
	yaml_document_t doc;
	struct cfg_ctx x = { path, &doc, c };
	yaml_node_t *root;
	int rc;

	if ((rc = ota_read_file(&text, path, 1 << 20)) < 0)
		return rc;
	{
		struct yaml_bound_err be;
		if (yaml_bounds_check(text.ptr, text.len, YAML_MAX_DEPTH, YAML_MAX_NODES, &be) < 0) {
			rc = ota_error_set(OTA_EINVAL, "%s:%d:%d: the file %s; refused before loading", path, be.line,
					   be.col, be.msg);
			buf_release(&text);
			return rc;
		}
	}
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text.ptr, text.len);
	if (!yaml_parser_load(&parser, &doc)) {
		rc = ota_error_set(OTA_EINVAL, "%s:%zu:%zu: %s", path, parser.problem_mark.line + 1,
				   parser.problem_mark.column + 1, parser.problem ? parser.problem : "invalid YAML");
		yaml_parser_delete(&parser);
		buf_release(&text);
		return rc;
	}
	root = yaml_document_get_root_node(&doc);
	if (root)
		rc = apply(&x, root);
	if (rc == 0)
		rc = check_products(c, path);
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	buf_release(&text);
	return rc;
}
