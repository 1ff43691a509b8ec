/*
 * flags.c - feature flags: validation of the operator's input, the sticky
 * bucket, the table's writes (engine thread, audited) and reads, and the
 * live copy the fleet's check-in path reads (flags.h says how it works).
 *
 * The operator's input is checked whole before anything is written: a bad
 * name, value, cohort, step or gate is refused with a message that names
 * it, and the table and the audit log stay as they were.  A rollout's plan
 * and gates go through the rollout stage's own parser (rollout_plan_from_extra)
 * and gate_spec_parse_flag (gate_spec_parse with a flag's `baseline: off`
 * in place of a release's `baseline: previous`), so a flag rollout accepts
 * what a rollout stage accepts, minus rings, windows and approvals (a flag
 * has one cohort and no release to approve).
 */
#include "flags.h"
#include "flags_int.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../clock.h"
#include "../db/db.h"
#include "../engine_int.h"
#include "../gate.h"
#include "../rollout.h"
#include "../store.h"

/* ---- SQL (storage layer: store_q keys each by its address) ------------ */

const char flags_sql_count[] =
	"SELECT COUNT(*) FROM flags WHERE product = ? AND name <> ?";
const char flags_sql_upsert[] =
	"INSERT INTO flags(product, name, value, cohort, state, bp, spec, step, hold_until,"
	" extend_until, seq, reason, evals, updated_at) VALUES (?,?,?,?,?,?,?,0,?,?,1,?,NULL,?)"
	" ON CONFLICT(product, name) DO UPDATE SET value = excluded.value, cohort = excluded.cohort,"
	" state = excluded.state, bp = excluded.bp, spec = excluded.spec, step = 0,"
	" hold_until = excluded.hold_until, extend_until = excluded.extend_until, seq = flags.seq + 1,"
	" reason = excluded.reason, evals = NULL, updated_at = excluded.updated_at";
const char flags_sql_list[] =
	"SELECT product, name, value, cohort, state, bp, spec, step, hold_until,"
	" reason, evals, updated_at, seq FROM flags WHERE (CAST(? AS TEXT) IS NULL OR product = ?)"
	" ORDER BY product, name";

/* ---- the bucket --------------------------------------------------------- */

/* SHA-256 fetched once, and one digest context per thread, reused: a
 * check-in computes a bucket per flag of its product, and OpenSSL 3's
 * fetch and context allocation cost ten times the hash itself. */
static EVP_MD *g_sha256;
static pthread_once_t g_sha256_once = PTHREAD_ONCE_INIT;
static _Thread_local EVP_MD_CTX *t_ctx;

static void sha256_fetch(void)
{
	g_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

uint32_t flags_bucket(const char *flag, const char *device)
{
	unsigned char md[32];
	unsigned int len = 0;
	uint64_t v = 0;

	pthread_once(&g_sha256_once, sha256_fetch);
	if (!t_ctx)
		t_ctx = EVP_MD_CTX_new();
	if (!g_sha256 || !t_ctx || EVP_DigestInit_ex2(t_ctx, g_sha256, NULL) != 1 ||
	    EVP_DigestUpdate(t_ctx, flag, strlen(flag)) != 1 || EVP_DigestUpdate(t_ctx, ":", 1) != 1 ||
	    EVP_DigestUpdate(t_ctx, device, strlen(device)) != 1 || EVP_DigestFinal_ex(t_ctx, md, &len) != 1)
		return 9999; /* out of memory: the last bucket, the one 100 % alone reaches */
	for (int i = 0; i < 8; i++)
		v = v << 8 | md[i];
	return (uint32_t)(v % 10000);
}

/* ---- input -------------------------------------------------------------- */

int flags_name_valid(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n < 1 || n > FLAGS_NAME_MAX || name[0] < 'a' || name[0] > 'z')
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') || name[i] == '_' ||
		      name[i] == '-'))
			return 0;
	return 1;
}

static int value_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._:/+@-", c);
}

/* The value a device gets when the flag is on, as JSON text (new string):
 * absent means true. */
static int value_of(const json_t *v, char **out)
{
	*out = NULL;
	if (!v || json_is_true(v)) {
		*out = xstrdup("true");
		return 0;
	}
	if (json_is_integer(v)) {
		*out = xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		size_t n = strlen(s);
		if (n < 1 || n > FLAGS_VALUE_MAX)
			return ota_error_set(OTA_EINVAL, "value: a string of 1..%d characters", FLAGS_VALUE_MAX);
		for (size_t i = 0; i < n; i++)
			if (!value_char(s[i]))
				return ota_error_set(OTA_EINVAL, "value: only characters [A-Za-z0-9._:/+@-]");
		*out = xasprintf("\"%s\"", s);
		return 0;
	}
	return ota_error_set(OTA_EINVAL, "value: true, an integer or a string (false is what a device gets when "
					 "the flag is off for it)");
}

/* {tag: value | [values]} -> {tag: [values]} (new ref; an empty object
 * for none).  Tags and values follow the device API's rules for tags. */
static int cohort_of(const json_t *c, json_t **out)
{
	const char *k;
	json_t *v;

	*out = NULL;
	if (!c || json_is_null(c)) {
		*out = json_object();
		return 0;
	}
	if (!json_is_object(c) || json_object_size(c) > 4)
		return ota_error_set(OTA_EINVAL, "cohort: an object of at most 4 tags, like {\"group\": \"beta\"}");
	*out = json_object();
	json_object_foreach((json_t *)c, k, v) {
		json_t *list, *x;
		size_t i, klen = strlen(k);
		if (klen < 1 || klen > 64)
			goto bad;
		for (size_t j = 0; j < klen; j++)
			if (!value_char(k[j]) || strchr(":/+@", k[j]))
				goto bad;
		list = json_array(); /* after the key's checks: each later refusal frees it */
		if (json_is_string(v))
			json_array_append(list, v);
		else if (json_is_array(v) && json_array_size(v) >= 1 && json_array_size(v) <= 8)
			json_array_foreach(v, i, x)
				json_array_append(list, x);
		json_array_foreach(list, i, x) {
			const char *s = json_string_value(x);
			size_t n = s ? strlen(s) : 0;
			if (n < 1 || n > 128) {
				json_decref(list);
				goto bad;
			}
			for (size_t j = 0; j < n; j++)
				if (!value_char(s[j])) {
					json_decref(list);
					goto bad;
				}
		}
		if (!json_array_size(list)) {
			json_decref(list);
			goto bad;
		}
		json_object_set_new(*out, k, list);
		continue;
	bad:
		json_decref(*out);
		*out = NULL;
		return ota_error_set(OTA_EINVAL, "cohort.%.64s: tags are 1..64 characters [A-Za-z0-9._-], values 1..8 "
						 "strings of 1..128 characters [A-Za-z0-9._:/+@-]", k);
	}
	return 0;
}

static const char *str_field(const json_t *body, const char *key)
{
	return json_string_value(json_object_get(body, key));
}

/* product, name and reason, the fields every action has. */
static int common_of(const json_t *body, const char **product, const char **name, const char **reason)
{
	const char *k;
	json_t *v;
	static const char *const known[] = { "product", "name", "state", "value", "cohort", "reason", "steps", "gates",
					     "max_extension", "check_interval", NULL };

	if (!json_is_object(body))
		return ota_error_set(OTA_EINVAL, "the body must be a JSON object");
	json_object_foreach((json_t *)body, k, v) {
		size_t i = 0;
		while (known[i] && strcmp(known[i], k))
			i++;
		if (!known[i])
			return ota_error_set(OTA_EINVAL, "unknown key '%.64s'", k);
	}
	*product = str_field(body, "product");
	*name = str_field(body, "name");
	*reason = str_field(body, "reason");
	if (!*product || !**product || strlen(*product) > 128)
		return ota_error_set(OTA_EINVAL, "product: required, 1..128 characters");
	for (const char *p = *product; *p; p++)
		if (!value_char(*p))
			return ota_error_set(OTA_EINVAL, "product: only characters [A-Za-z0-9._:/+@-]");
	if (!flags_name_valid(*name))
		return ota_error_set(OTA_EINVAL, "name: 1..%d characters [a-z0-9_-], starting with a letter",
				     FLAGS_NAME_MAX);
	if (!*reason || !**reason)
		return ota_error_set(OTA_EINVAL, "a reason is required");
	if (strlen(*reason) > 1024)
		return ota_error_set(OTA_EINVAL, "reason: at most 1024 characters");
	return 0;
}

/*
 * A rollout's plan from the body, through the rollout stage's parser:
 * {steps, cohort, gates: [names], gate_specs: {...}, ...}.  Every gate must
 * parse and be builtin (the flag's evidence is the fleet's own).
 */
static int plan_of(const json_t *body, const json_t *cohort, json_t **out)
{
	json_t *extra = json_object(), *gates = json_object_get(body, "gates"), *names = json_array(), *g;
	const char *k;
	int rc = 0;

	*out = NULL;
	if (!json_is_array(json_object_get(body, "steps")) || json_array_size(json_object_get(body, "steps")) > 20) {
		rc = ota_error_set(OTA_EINVAL, "steps: a list of 1..20 steps like [{\"percent\": 10, \"hold\": \"1h\"}]");
		goto out;
	}
	if (!json_is_object(gates) || json_object_size(gates) < 1 || json_object_size(gates) > 8) {
		rc = ota_error_set(OTA_EINVAL, "gates: 1..8 gates like {\"crash_free\": {\"metric\": "
					       "\"crashes_per_device_hour\", \"max\": 0.05}}: a flag is never rolled out unwatched");
		goto out;
	}
	json_object_foreach(gates, k, g) {
		struct gate_spec spec;
		char err[256];
		if (gate_spec_parse_flag(g, k, &spec, err, sizeof(err)) < 0) {
			gate_spec_release(&spec);
			rc = ota_error_set(OTA_EINVAL, "gates: %s", err);
			goto out;
		}
		/* the evidence is what devices report while they carry the flag:
		 * rates over those hours; crash_rate and the boot metrics count a
		 * device once per firmware version, whatever its flags */
		if (spec.provider != GATE_PROVIDER_BUILTIN || (spec.metric_id != GATE_METRIC_CRASHES_PER_DEVICE_HOUR &&
							       spec.metric_id != GATE_METRIC_BATTERY_MAH_PER_DAY)) {
			gate_spec_release(&spec);
			rc = ota_error_set(OTA_EINVAL, "gates.%.64s: a flag's gates judge crashes_per_device_hour or "
						       "battery_mah_per_day, rates over the hours devices ran with the flag on "
						       "(crash_rate and boot metrics count a device once per firmware version)", k);
			goto out;
		}
		gate_spec_release(&spec);
		json_array_append_new(names, json_string(k));
	}
	json_object_set(extra, "steps", json_object_get(body, "steps"));
	if (json_object_size(cohort))
		json_object_set(extra, "cohort", (json_t *)cohort);
	json_object_set(extra, "gates", names);
	json_object_set(extra, "gate_specs", gates);
	if (json_object_get(body, "max_extension"))
		json_object_set(extra, "max_extension", json_object_get(body, "max_extension"));
	if (json_object_get(body, "check_interval"))
		json_object_set(extra, "check_interval", json_object_get(body, "check_interval"));
	rc = rollout_plan_from_extra("rollout", extra, out);
out:
	json_decref(extra);
	json_decref(names);
	return rc;
}

/* ---- writes (engine thread) --------------------------------------------- */

struct flag_write {
	const char *actor, *product, *name, *reason, *state, *action;
	char *value;
	char *cohort;         /* JSON text */
	char *spec;           /* JSON text, NULL: no rollout */
	int bp;
	int64_t hold_until, extend_until;
};

/* The product's flag count, not counting name (a new flag must fit). */
static int count_others(struct store *db, const char *product, const char *name, int64_t *n)
{
	struct db_stmt *st = store_q(db, flags_sql_count);
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, product);
	db_bind_text(st, 2, name);
	if ((rc = db_step(st)) == 1)
		*n = db_column_int64(st, 0);
	db_reset(st);
	return rc == 1 ? 0 : OTA_ERROR;
}

static int do_write(struct engine *e, void *arg)
{
	struct flag_write *w = arg;
	struct store *db = engine_store(e);
	struct db_stmt *st;
	json_t *cohort;
	int64_t n = 0, now = clock_now_ms();
	int rc;

	if ((rc = count_others(db, w->product, w->name, &n)) < 0)
		return rc;
	if (n >= FLAGS_PER_PRODUCT)
		return ota_error_set(OTA_EINVAL, "product %s has %d flags already, the most a check-in answer carries",
				     w->product, FLAGS_PER_PRODUCT);
	st = store_q(db, flags_sql_upsert);
	if (!st)
		return OTA_ERROR;
	db_bind_text(st, 1, w->product);
	db_bind_text(st, 2, w->name);
	db_bind_text(st, 3, w->value);
	db_bind_text(st, 4, w->cohort);
	db_bind_text(st, 5, w->state);
	db_bind_int64(st, 6, w->bp);
	db_bind_text(st, 7, w->spec);
	if (w->spec) {
		db_bind_int64(st, 8, w->hold_until);
		db_bind_int64(st, 9, w->extend_until);
	}
	db_bind_text(st, 10, w->reason);
	db_bind_int64(st, 11, now);
	if ((rc = db_run(st)) < 0)
		return rc;
	cohort = json_loads(w->cohort, 0, NULL);
	return engine_audit(e, w->actor, w->action, 0, 0, w->reason,
			    json_pack("{ss ss ss ss si so}", "product", w->product, "flag", w->name, "state", w->state,
				      "value", w->value, "bp", w->bp, "cohort", cohort ? cohort : json_null()));
}

static void write_release(struct flag_write *w)
{
	free(w->value);
	free(w->cohort);
	free(w->spec);
}

/* The row just written, for the answer. */
static json_t *row_json(const char *product, const char *name)
{
	struct store *db = store_reader();
	json_t *list = db ? flags_list(db, product) : NULL, *x, *found = NULL;
	size_t i;
	json_array_foreach(list, i, x)
		if (!strcmp(json_string_value(json_object_get(x, "name")), name))
			found = json_incref(x);
	json_decref(list);
	return found ? found : json_object();
}

static int run_write(struct engine *e, struct flag_write *w, json_t **out)
{
	int rc = engine_exec(e, do_write, w);
	if (rc == 0) {
		flags_controller_kick();
		if (out)
			*out = row_json(w->product, w->name);
	}
	return rc;
}

/* The body of `flags set`, checked whole, into w (write_release it). */
static int prepare_set(const json_t *body, struct flag_write *w)
{
	json_t *cohort = NULL;
	int rc;

	w->action = "flag_set";
	if ((rc = common_of(body, &w->product, &w->name, &w->reason)) < 0)
		return rc;
	w->state = str_field(body, "state");
	if (!w->state || (strcmp(w->state, "on") && strcmp(w->state, "off")))
		return ota_error_set(OTA_EINVAL, "state: \"on\" or \"off\"");
	if (json_object_get(body, "steps") || json_object_get(body, "gates"))
		return ota_error_set(OTA_EINVAL, "steps and gates belong to `flags rollout`, not `flags set`");
	if ((rc = value_of(json_object_get(body, "value"), &w->value)) < 0 ||
	    (rc = cohort_of(json_object_get(body, "cohort"), &cohort)) < 0)
		return rc;
	w->cohort = json_dumps(cohort, JSON_COMPACT | JSON_SORT_KEYS);
	w->bp = strcmp(w->state, "on") ? 0 : 10000;
	json_decref(cohort);
	return 0;
}

/* The body of `flags rollout`, checked whole, into w (write_release it). */
static int prepare_rollout(const json_t *body, struct flag_write *w)
{
	json_t *cohort = NULL, *plan = NULL, *first;
	int rc;

	w->action = "flag_rollout";
	if ((rc = common_of(body, &w->product, &w->name, &w->reason)) < 0)
		return rc;
	if (json_object_get(body, "state"))
		return ota_error_set(OTA_EINVAL, "state belongs to `flags set`; a rollout starts at its first step");
	if ((rc = value_of(json_object_get(body, "value"), &w->value)) < 0 ||
	    (rc = cohort_of(json_object_get(body, "cohort"), &cohort)) < 0 || (rc = plan_of(body, cohort, &plan)) < 0)
		goto out;
	first = json_array_get(json_object_get(plan, "plan"), 0);
	w->state = "holding";
	w->bp = (int)json_integer_value(json_object_get(first, "bp"));
	w->hold_until = clock_now_ms() + json_integer_value(json_object_get(first, "hold_ms"));
	w->extend_until = w->hold_until + json_integer_value(json_object_get(plan, "max_extension_ms"));
	w->cohort = json_dumps(cohort, JSON_COMPACT | JSON_SORT_KEYS);
	w->spec = json_dumps(plan, JSON_COMPACT);
out:
	json_decref(cohort);
	json_decref(plan);
	return rc;
}

int flags_check(const json_t *body, int rollout)
{
	struct flag_write w = { 0 };
	int rc = rollout ? prepare_rollout(body, &w) : prepare_set(body, &w);
	write_release(&w);
	return rc;
}

static int change(struct engine *e, const char *actor, const json_t *body, int rollout, json_t **out)
{
	struct flag_write w = { 0 };
	int rc;

	if (out)
		*out = NULL;
	w.actor = actor;
	if ((rc = rollout ? prepare_rollout(body, &w) : prepare_set(body, &w)) == 0)
		rc = run_write(e, &w, out);
	write_release(&w);
	return rc;
}

int flags_set(struct engine *e, const char *actor, const json_t *body, json_t **out)
{
	return change(e, actor, body, 0, out);
}

int flags_rollout(struct engine *e, const char *actor, const json_t *body, json_t **out)
{
	return change(e, actor, body, 1, out);
}

/* ---- reads -------------------------------------------------------------- */

json_t *flags_list(struct store *db, const char *product)
{
	struct db_stmt *st = store_q(db, flags_sql_list);
	json_t *out;
	int rc;

	if (!st)
		return NULL;
	db_bind_text(st, 1, product);
	db_bind_text(st, 2, product);
	out = json_array();
	while ((rc = db_step(st)) == 1) {
		json_t *spec = db_column_text(st, 6) ? json_loads(db_column_text(st, 6), 0, NULL) : NULL;
		json_t *evals = db_column_text(st, 10) ? json_loads(db_column_text(st, 10), 0, NULL) : NULL;
		json_t *value = json_loads(db_column_text(st, 2), JSON_DECODE_ANY, NULL);
		json_t *cohort = json_loads(db_column_text(st, 3), 0, NULL);
		int bp = (int)db_column_int64(st, 5);
		json_array_append_new(
			out, json_pack("{ss ss so so ss sf si si si so ss so sI sI so}", "product", db_column_text(st, 0), "name",
				       db_column_text(st, 1), "value", value ? value : json_null(), "cohort",
				       cohort ? cohort : json_object(), "state", db_column_text(st, 4), "percent", bp / 100.0,
				       "bp", bp, "step", (int)db_column_int64(st, 7), "steps",
				       (int)json_array_size(json_object_get(spec, "plan")), "hold_until",
				       db_column_type(st, 8) == DB_NULL ? json_null() : json_integer(db_column_int64(st, 8)),
				       "reason", db_column_text(st, 9) ? db_column_text(st, 9) : "", "evals",
				       evals ? evals : json_null(), "updated_at", (json_int_t)db_column_int64(st, 11), "seq",
				       (json_int_t)db_column_int64(st, 12), "spec", spec ? spec : json_null()));
	}
	db_reset(st);
	if (rc < 0) {
		json_decref(out);
		return NULL;
	}
	return out;
}

/* ---- the live table (the check-in path's copy) ---------------------------- */

/* One cohort key: the device needs one of its "key=value" tags. */
struct live_key {
	char **kv;
	size_t n;
};

struct live_flag {
	char *product, *name, *value;
	struct live_key *keys;
	size_t nkeys;
	int bp;
};

struct flags_live {
	pthread_rwlock_t lock;       /* readers: check-ins; the writer: the controller */
	struct live_flag *v;
	size_t n;
	/* One bit per product hash (product_bit) of the products that have a
	 * flag, read without the lock: a check-in of a product without flags
	 * (most of them) skips the lock and the loop.  Written under the
	 * write lock, after the rows it describes. */
	uint64_t products;
};

/* The product's bit in flags_live.products (FNV-1a, folded to 0..63). */
static uint64_t product_bit(const char *product)
{
	uint64_t h = 1469598103934665603ULL;
	for (const unsigned char *p = (const unsigned char *)product; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return 1ULL << ((h ^ h >> 32) & 63);
}

struct flags_live *flags_live_new(void)
{
	struct flags_live *l = xcalloc(1, sizeof(*l));
	pthread_rwlock_init(&l->lock, NULL);
	return l;
}

static void live_flags_free(struct live_flag *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < v[i].nkeys; k++) {
			for (size_t j = 0; j < v[i].keys[k].n; j++)
				free(v[i].keys[k].kv[j]);
			free(v[i].keys[k].kv);
		}
		free(v[i].keys);
		free(v[i].product);
		free(v[i].name);
		free(v[i].value);
	}
	free(v);
}

void flags_live_free(struct flags_live *l)
{
	if (!l)
		return;
	live_flags_free(l->v, l->n);
	pthread_rwlock_destroy(&l->lock);
	free(l);
}

void flags_live_load(struct flags_live *l, const json_t *list)
{
	size_t n = json_array_size(list), i, old_n;
	struct live_flag *v = n ? xcalloc(n, sizeof(*v)) : NULL, *old;
	uint64_t products = 0;
	json_t *x;

	json_array_foreach(list, i, x) {
		json_t *cohort = json_object_get(x, "cohort"), *vals, *y;
		const char *k;
		size_t j, kn = 0;
		v[i].product = xstrdup(json_string_value(json_object_get(x, "product")));
		v[i].name = xstrdup(json_string_value(json_object_get(x, "name")));
		v[i].value = json_dumps(json_object_get(x, "value"), JSON_COMPACT | JSON_ENCODE_ANY);
		v[i].bp = (int)json_integer_value(json_object_get(x, "bp"));
		products |= product_bit(v[i].product);
		v[i].nkeys = json_object_size(cohort);
		v[i].keys = v[i].nkeys ? xcalloc(v[i].nkeys, sizeof(*v[i].keys)) : NULL;
		json_object_foreach(cohort, k, vals) {
			struct live_key *key = &v[i].keys[kn++];
			key->kv = xcalloc(json_array_size(vals) + 1, sizeof(char *));
			json_array_foreach(vals, j, y)
				key->kv[key->n++] = xasprintf("%s=%s", k, json_string_value(y));
		}
	}
	pthread_rwlock_wrlock(&l->lock);
	old = l->v;
	old_n = l->n;
	l->v = v;
	l->n = n;
	__atomic_store_n(&l->products, products, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&l->lock);
	live_flags_free(old, old_n);
}

static int cohort_matches(const struct live_flag *fl, const char *const *tags, size_t ntags)
{
	for (size_t k = 0; k < fl->nkeys; k++) {
		int found = 0;
		for (size_t j = 0; j < fl->keys[k].n && !found; j++)
			for (size_t t = 0; t < ntags && !found; t++)
				found = !strcmp(tags[t], fl->keys[k].kv[j]);
		if (!found)
			return 0;
	}
	return 1;
}

/* Append n bytes of src at *len in out (cap); false once it does not fit. */
static int put(char *out, size_t cap, size_t *len, const char *src, size_t n)
{
	if (*len + n >= cap)
		return 0;
	memcpy(out + *len, src, n);
	*len += n;
	return 1;
}

size_t flags_live_answer(void *live, const char *product, const char *device, const char *const *tags,
			 size_t ntags, char *out, size_t cap)
{
	struct flags_live *l = live;
	size_t len = 0;
	int fits = 1;

	if (!cap)
		return 0;
	out[0] = 0;
	/* no flag for this product (or none at all): the answer has no "flags" */
	if (!(__atomic_load_n(&l->products, __ATOMIC_ACQUIRE) & product_bit(product)))
		return 0;
	pthread_rwlock_rdlock(&l->lock);
	for (size_t i = 0; i < l->n && fits; i++) {
		const struct live_flag *fl = &l->v[i];
		const char *value;
		int on;
		if (strcmp(fl->product, product))
			continue;
		on = fl->bp > 0 && cohort_matches(fl, tags, ntags) && flags_bucket(fl->name, device) < (uint32_t)fl->bp;
		value = on ? fl->value : "false";
		fits = put(out, cap, &len, len ? ",\"" : "{\"", 2) && put(out, cap, &len, fl->name, strlen(fl->name)) &&
		       put(out, cap, &len, "\":", 2) && put(out, cap, &len, value, strlen(value));
	}
	pthread_rwlock_unlock(&l->lock);
	/* bounded by the input rules (FLAGS_PER_PRODUCT x name and value); a
	 * table that somehow outgrew cap sends no flags rather than a cut object */
	if (!len || !fits || !put(out, cap, &len, "}", 1)) {
		out[0] = 0;
		return 0;
	}
	out[len] = 0;
	return len;
}
