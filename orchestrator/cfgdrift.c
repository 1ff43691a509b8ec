/*
 * cfgdrift.c - the settings a leader's decisions depend on, compared
 * between instances (cfgdrift.h; docs/scale.md).
 *
 * The items, each a canonical text hashed with a label of its own:
 *   signing_key.NAME     the public key's id (keys.h: SHA-256 of its DER),
 *                        or the spec of a PKCS#11 key (not opened here)
 *   encryption_key.NAME  the device public key file's content
 *   trust_root           the release root certificate file's content
 *   time_scale           otacd time per real second ("%.17g")
 *   release_policy       `products:` as sorted compact JSON
 *   protected_refs       each repository's name, default branch and protect
 *   device_ca            the device CA certificate (device_ca: or
 *                        STATE/devca/ca.pem) and the also_trust ones
 *   device_auth          token, cert or both
 *   gate_max_lag         the builtin gates' evidence lag, ms
 * The fleet key and the device secret are not here: fleet_keys.c refuses
 * to start with other ones (exit 2).
 *
 * A row is a JSON object {"ITEM": "16 hex digits"}.  A follower holds the
 * union of its items and the leader's, each with its state, so a warning
 * is logged once when an item starts to differ and an info line when it
 * agrees again.
 */
#include "cfgdrift.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/sha256.h"
#include "db/db_leader.h"
#include "fleet/fleet_ca.h"
#include "keys.h"

#define MAX_ITEMS 256         /* this instance's and the leader's */
#define MAX_LEADER_ITEMS 64   /* items taken from a leader's row */
#define MAX_NAME 100
#define MAX_ROW (64 * 1024)
#define MAX_FILE (1024 * 1024)

struct item {
	char *name;
	int64_t own;      /* this instance's fingerprint */
	int has_own;
	int mismatch;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct item g_items[MAX_ITEMS];
static size_t g_n;
static char *g_seen;  /* the leader's holder and row last compared */

static int64_t fingerprint(const char *label, const char *text, size_t len)
{
	unsigned char md[32];
	struct buf b = BUF_INIT;
	int64_t v = 0;

	buf_printf(&b, "otacd config %s:", label);
	buf_put(&b, text, len);
	ota_sha256(b.ptr, b.len, md);
	buf_release(&b);
	for (int i = 0; i < 8; i++)
		v = (int64_t)(((uint64_t)v << 8) | md[i]);
	return v & INT64_MAX;
}

/* Under g_lock: the item called name, made when missing (NULL: full). */
static struct item *item_get(const char *name)
{
	for (size_t i = 0; i < g_n; i++)
		if (!strcmp(g_items[i].name, name))
			return &g_items[i];
	if (g_n == MAX_ITEMS)
		return NULL;
	g_items[g_n] = (struct item){ xstrdup(name), 0, 0, 0 };
	return &g_items[g_n++];
}

static void own(const char *name, const char *text, size_t len)
{
	struct item *it = item_get(name);
	if (!it)
		return;
	it->own = fingerprint(name, text, len);
	it->has_own = 1;
}

static void own_str(const char *name, const char *text)
{
	own(name, text, strlen(text));
}

/* A file's content, "none" without a path, "unreadable" when it cannot be
 * read (a mismatch with an instance that reads it: worth a warning). */
static void own_file(const char *name, const char *path, struct buf *extra)
{
	struct buf b = BUF_INIT;

	if (!path)
		buf_puts(&b, "none");
	else if (ota_read_file(&b, path, MAX_FILE) < 0)
		buf_puts(&b, "unreadable");
	if (extra)
		buf_put(&b, extra->ptr, extra->len);
	own(name, b.ptr, b.len);
	buf_release(&b);
}

static void own_keys(const struct otacd_config *cfg)
{
	const char *name;
	json_t *v;

	json_object_foreach(cfg->keys, name, v) {
		const char *spec = json_string_value(json_object_get(v, "spec"));
		const char *pin = json_string_value(json_object_get(v, "pin"));
		char *item = xasprintf("signing_key.%s", name);
		struct sign_key *k = NULL;

		if (!spec)
			own_str(item, "none");
		else if (!strncmp(spec, "pkcs11:", 7))
			own_str(item, spec); /* a token is opened by the engine, with its PIN */
		else if (sign_key_load(&k, spec, pin) == 0)
			own_str(item, sign_key_id(k));
		else
			own_str(item, "unreadable");
		sign_key_free(k);
		free(item);
	}
	json_object_foreach(cfg->encryption_keys, name, v) {
		char *item = xasprintf("encryption_key.%s", name);
		own_file(item, json_string_value(v), NULL);
		free(item);
	}
}

static void filter_text(struct buf *b, const char *what, const struct pl_filter *f)
{
	buf_printf(b, "%s set=%d branches", what, f->set);
	for (size_t i = 0; i < f->branches.n; i++)
		buf_printf(b, " %zu:%s", strlen(f->branches.v[i]), f->branches.v[i]);
	buf_puts(b, " tags");
	for (size_t i = 0; i < f->tags.n; i++)
		buf_printf(b, " %zu:%s", strlen(f->tags.v[i]), f->tags.v[i]);
	buf_puts(b, "\n");
}

int cfgdrift_init(const struct otacd_config *cfg)
{
	struct buf b = BUF_INIT;
	char *text;

	cfgdrift_release();
	pthread_mutex_lock(&g_lock);
	own_keys(cfg);
	own_file("trust_root", cfg->trust_root, NULL);
	buf_printf(&b, "%.17g", cfg->time_scale);
	own_str("time_scale", buf_cstr(&b));
	text = cfg->products ? json_dumps(cfg->products, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
	own_str("release_policy", text ? text : "none");
	free(text);
	buf_clear(&b);
	for (size_t i = 0; i < cfg->nrepos; i++) {
		const struct repo_cfg *r = &cfg->repos[i];
		buf_printf(&b, "repo %zu:%s default %zu:%s\n", strlen(r->git.name), r->git.name,
			   r->default_branch ? strlen(r->default_branch) : 0,
			   r->default_branch ? r->default_branch : "");
		filter_text(&b, "protect", &r->protect);
	}
	own("protected_refs", b.ptr ? b.ptr : "", b.len);
	buf_clear(&b);
	for (size_t i = 0; i < cfg->device_ca_also.n; i++) {
		struct buf f = BUF_INIT;
		buf_puts(&b, "\nalso_trust\n");
		if (ota_read_file(&f, cfg->device_ca_also.v[i], MAX_FILE) < 0)
			buf_puts(&b, "unreadable");
		else
			buf_put(&b, f.ptr, f.len);
		buf_release(&f);
	}
	{
		char *path = cfg->device_ca_cert ? xstrdup(cfg->device_ca_cert)
						 : xasprintf("%s/devca/ca.pem", cfg->state_dir);
		int there = cfg->device_ca_cert || access(path, F_OK) == 0;
		own_file("device_ca", there ? path : NULL, &b);
		free(path);
	}
	own_str("device_auth", fleet_auth_mode_name(cfg->device_auth));
	buf_clear(&b);
	buf_printf(&b, "%" PRId64, cfg->gate_max_lag_ms);
	own_str("gate_max_lag", buf_cstr(&b));
	pthread_mutex_unlock(&g_lock);
	buf_release(&b);
	return 0;
}

int cfgdrift_record(struct store *db, const char *holder)
{
	json_t *row = json_object();
	char *text, *key = xasprintf("config_fp:%s", holder);
	int rc;

	pthread_mutex_lock(&g_lock);
	for (size_t i = 0; i < g_n; i++)
		if (g_items[i].has_own)
			json_object_set_new(row, g_items[i].name, json_sprintf("%016" PRIx64, (uint64_t)g_items[i].own));
	pthread_mutex_unlock(&g_lock);
	text = json_dumps(row, JSON_SORT_KEYS | JSON_COMPACT);
	rc = text ? store_meta_set(db, key, text) : OTA_ERROR;
	if (rc < 0)
		rc = ota_error_set(OTA_ERROR, "recording the configuration's fingerprints: %s", ota_error_last());
	free(text);
	free(key);
	json_decref(row);
	return rc;
}

/* An item name from a row: a few safe characters, never a label's quote. */
static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MAX_NAME)
		return 0;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") == n;
}

/* "16 hex digits" of a fingerprint, or -1. */
static int64_t fp_parse(json_t *v)
{
	const char *s = json_string_value(v);
	uint64_t x = 0;

	if (!s || strlen(s) != 16 || strspn(s, "0123456789abcdef") != 16)
		return -1;
	for (int i = 0; i < 16; i++)
		x = x << 4 | (uint64_t)(s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10);
	return x > (uint64_t)INT64_MAX ? -1 : (int64_t)x;
}

/* Under g_lock: set an item's state, saying a change once. */
static void set_state(struct item *it, int mismatch)
{
	if (!it || it->mismatch == mismatch)
		return;
	it->mismatch = mismatch;
	if (mismatch)
		ota_log(OTA_LOG_WARN, "configuration: %s differs from the leader's; whatever instance leads decides"
				      " with its own (docs/scale.md, \"What every instance must share\")", it->name);
	else
		ota_log(OTA_LOG_INFO, "configuration: %s agrees with the leader's again", it->name);
}

/* Under g_lock: compare with a leader's row (text, hostile). */
static void compare_row(const char *text)
{
	json_t *row = strlen(text) <= MAX_ROW ? json_loads(text, JSON_REJECT_DUPLICATES, NULL) : NULL;
	int bad = !json_is_object(row);
	size_t taken = 0;
	const char *name;
	json_t *v;

	for (size_t i = 0; i < g_n; i++) {
		struct item *it = &g_items[i];
		if (!strcmp(it->name, "record"))
			continue;
		v = bad ? NULL : json_object_get(row, it->name);
		/* an item this instance lacks, or the leader lacks, differs */
		set_state(it, bad || !it->has_own || !v || fp_parse(v) != it->own);
	}
	json_object_foreach(bad ? NULL : row, name, v) {
		if (!name_ok(name) || !strcmp(name, "record") || fp_parse(v) < 0) {
			bad = 1;
			continue;
		}
		if (taken++ == MAX_LEADER_ITEMS) {
			bad = 1;
			break;
		}
		{
			struct item *it = item_get(name);
			set_state(it, it && (!it->has_own || fp_parse(v) != it->own));
		}
	}
	set_state(item_get("record"), bad);
	json_decref(row);
}

int cfgdrift_compare(struct store *db)
{
	int64_t epoch = 0;
	char *holder = NULL, *text = NULL, *key, *seen;
	int rc;

	if (!db)
		return OTA_ERROR;
	if ((rc = db_leader_current(store_conn(db), &epoch, &holder)) < 0 || !holder) {
		free(holder);
		return rc < 0 ? rc : 0;
	}
	key = xasprintf("config_fp:%s", holder);
	if ((rc = store_meta_get(db, key, &text)) < 0) {
		free(key);
		free(holder);
		return rc == OTA_ENOTFOUND ? 0 : rc;
	}
	seen = xasprintf("%s\n%s", holder, text);
	pthread_mutex_lock(&g_lock);
	if (!g_seen || strcmp(g_seen, seen) != 0) {
		free(g_seen);
		g_seen = seen;
		seen = NULL;
		compare_row(text);
	}
	pthread_mutex_unlock(&g_lock);
	free(seen);
	free(text);
	free(key);
	free(holder);
	return 0;
}

void cfgdrift_leading(void)
{
	pthread_mutex_lock(&g_lock);
	for (size_t i = 0; i < g_n; i++)
		g_items[i].mismatch = 0;
	free(g_seen);
	g_seen = NULL;
	pthread_mutex_unlock(&g_lock);
}

void cfgdrift_metrics_text(struct buf *b)
{
	buf_puts(b, "# HELP otacd_config_mismatch 1 when this instance's setting differs from the leader's"
		    " (fingerprints in the database, docs/scale.md).\n# TYPE otacd_config_mismatch gauge\n");
	pthread_mutex_lock(&g_lock);
	for (size_t i = 0; i < g_n; i++) {
		buf_puts(b, "otacd_config_mismatch{item=\"");
		/* a configured key's name may hold anything: the label escaped */
		for (const char *c = g_items[i].name; *c; c++) {
			if (*c == '\\' || *c == '"')
				buf_printf(b, "\\%c", *c);
			else if (*c == '\n')
				buf_puts(b, "\\n");
			else
				buf_put(b, c, 1);
		}
		buf_printf(b, "\"} %d\n", g_items[i].mismatch);
	}
	pthread_mutex_unlock(&g_lock);
}

json_t *cfgdrift_mismatch_json(void)
{
	json_t *a = json_array();

	pthread_mutex_lock(&g_lock);
	for (size_t i = 0; i < g_n; i++) {
		/* kinds only (signing_key, not signing_key.NAME): the probe
		 * needs no token and names no configured key */
		char *kind = xstrndup(g_items[i].name, strcspn(g_items[i].name, "."));
		size_t j;
		for (j = 0; j < json_array_size(a) && strcmp(json_string_value(json_array_get(a, j)), kind); j++)
			;
		if (g_items[i].mismatch && j == json_array_size(a))
			json_array_append_new(a, json_string(kind));
		free(kind);
	}
	pthread_mutex_unlock(&g_lock);
	return a;
}

void cfgdrift_release(void)
{
	pthread_mutex_lock(&g_lock);
	for (size_t i = 0; i < g_n; i++)
		free(g_items[i].name);
	g_n = 0;
	free(g_seen);
	g_seen = NULL;
	pthread_mutex_unlock(&g_lock);
}
