/*
 * policy.c - protected refs and the per-product release policy; see
 * policy.h for the rules.
 *
 * Why a module of its own: the same rules are applied at three moments
 * (when a run is created, when a job is handed its secrets or an in-daemon
 * stage starts, when the release stage is about to load a key), by three
 * threads (HTTP or source workers, the engine, the stage worker).  Keeping
 * them here means each moment asks the same question the same way.
 * Everything here is a pure function of the configuration and what a
 * reader connection sees; nothing writes the database.
 */
#include "policy.h"

#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "db/db.h"
#include "gate.h"

/* ---- refs ------------------------------------------------------------- */

static int glob_vec(const struct strvec *v, const char *name)
{
	for (size_t i = 0; i < v->n; i++)
		if (fnmatch(v->v[i], name, 0) == 0)
			return 1;
	return 0;
}

static int glob_json(const json_t *arr, const char *name)
{
	size_t i;
	json_t *g;
	json_array_foreach(arr, i, g)
		if (json_is_string(g) && fnmatch(json_string_value(g), name, 0) == 0)
			return 1;
	return 0;
}

/* Only full branch and tag refs can be protected: refs/pull/..., a bare
 * commit id or anything else never is. */
static int ref_in_filter(const struct pl_filter *f, const char *ref)
{
	if (!ref)
		return 0;
	if (!strncmp(ref, "refs/heads/", 11))
		return glob_vec(&f->branches, ref + 11);
	if (!strncmp(ref, "refs/tags/", 10))
		return glob_vec(&f->tags, ref + 10);
	return 0;
}

static int ref_in_json(const json_t *refs, const char *ref)
{
	if (!ref)
		return 0;
	if (!strncmp(ref, "refs/heads/", 11))
		return glob_json(json_object_get(refs, "branches"), ref + 11);
	if (!strncmp(ref, "refs/tags/", 10))
		return glob_json(json_object_get(refs, "tags"), ref + 10);
	return 0;
}

void policy_trust(const struct otacd_config *c, const char *repo, const char *ref, const char *trigger,
		  enum auth_role role, const char *actor, struct policy_trust *out)
{
	memset(out, 0, sizeof(*out));
	if (!actor || !*actor)
		actor = "anonymous";
	if (repo) {
		const struct repo_cfg *r = c ? config_repo_find(c, repo) : NULL;
		if (!r) {
			snprintf(out->reason, sizeof(out->reason), "repository %s is not configured", repo);
		} else if (ref_in_filter(&r->protect, ref)) {
			out->protected_run = 1;
			snprintf(out->reason, sizeof(out->reason), "%s is a protected ref of %s", ref, repo);
		} else {
			snprintf(out->reason, sizeof(out->reason),
				 "%s is not a protected ref of %s: no secrets, no signing keys, no release, soak or rollout",
				 ref ? ref : "(no ref)", repo);
		}
	} else if (trigger && !strcmp(trigger, "reissue")) {
		out->protected_run = 1;
		snprintf(out->reason, sizeof(out->reason), "otacd re-signs a released build (rollback --reissue)");
	} else if (role == ROLE_ADMIN || role == ROLE_RELEASE) {
		out->protected_run = 1;
		snprintf(out->reason, sizeof(out->reason), "uploaded by %s (role %s)", actor, auth_role_name(role));
	} else {
		snprintf(out->reason, sizeof(out->reason),
			 "uploaded by %s (role %s): uploaded pipelines get secrets, keys, release, soak and rollout"
			 " only for the admin and release roles", actor, auth_role_name(role));
	}
}

/* ---- the products table ------------------------------------------------ */

static int strings_ok(const json_t *v)
{
	size_t i;
	json_t *s;
	if (!json_is_array(v))
		return 0;
	json_array_foreach(v, i, s)
		if (!json_is_string(s) || !*json_string_value(s))
			return 0;
	return 1;
}

int policy_product_parse(const json_t *raw, json_t **out, char *err, size_t n)
{
	static const char *const known[] = { "keys", "refs", "repositories", "max_counter_increase", "required_gates",
					     "approvals", NULL };
	json_t *e = NULL, *v, *x;
	const char *k;
	int rc = OTA_EINVAL;

	*out = NULL;
	if (!json_is_object(raw)) {
		snprintf(err, n, "must be a mapping {keys, refs, repositories, max_counter_increase, required_gates, approvals}");
		return OTA_EINVAL;
	}
	json_object_foreach((json_t *)raw, k, v) {
		size_t i = 0;
		while (known[i] && strcmp(known[i], k))
			i++;
		if (!known[i]) {
			snprintf(err, n, "unknown key '%s' (expected keys, refs, repositories, max_counter_increase,"
				 " required_gates, approvals)", k);
			return OTA_EINVAL;
		}
	}
	e = json_pack("{sn sn sn si so s{so sn si}}", "keys", "refs", "repositories", "max_counter_increase", 1, "required_gates",
		      json_object(), "approvals", "stages", json_array(), "above_percent", "count", 1);
	if ((v = json_object_get(raw, "keys"))) {
		if (!strings_ok(v)) {
			snprintf(err, n, "keys must be a list of key names from keys:");
			goto out;
		}
		json_object_set(e, "keys", v);
	}
	if ((v = json_object_get(raw, "repositories"))) {
		if (!strings_ok(v)) {
			snprintf(err, n, "repositories must be a list of repository names from repositories:");
			goto out;
		}
		json_object_set(e, "repositories", v);
	}
	if ((v = json_object_get(raw, "refs"))) {
		json_t *b = json_object_get(v, "branches"), *t = json_object_get(v, "tags");
		if (!json_is_object(v) || json_object_size(v) != (size_t)(!!b + !!t) || (b && !strings_ok(b)) ||
		    (t && !strings_ok(t))) {
			snprintf(err, n, "refs must be {branches: [globs], tags: [globs]}");
			goto out;
		}
		json_object_set_new(e, "refs", json_pack("{so so}", "branches", b ? json_incref(b) : json_array(), "tags",
							 t ? json_incref(t) : json_array()));
	}
	if ((v = json_object_get(raw, "max_counter_increase"))) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0xffffffffLL) {
			snprintf(err, n, "max_counter_increase must be an integer 0..4294967295");
			goto out;
		}
		json_object_set(e, "max_counter_increase", v);
	}
	if ((v = json_object_get(raw, "required_gates"))) {
		if (!json_is_object(v)) {
			snprintf(err, n, "required_gates must be a mapping NAME: gate (docs/gates.md)");
			goto out;
		}
		json_object_foreach(v, k, x) {
			struct gate_spec g;
			char gerr[256];
			if (gate_spec_parse(x, k, &g, gerr, sizeof(gerr)) < 0) {
				snprintf(err, n, "required_gates.%s: %s", k, gerr);
				goto out;
			}
			gate_spec_release(&g);
		}
		json_object_set(e, "required_gates", v);
	}
	if ((v = json_object_get(raw, "approvals"))) {
		json_t *a = json_object_get(e, "approvals"), *s = json_object_get(v, "stages");
		json_t *p = json_object_get(v, "above_percent"), *c = json_object_get(v, "count");
		if (!json_is_object(v) || json_object_size(v) != (size_t)(!!s + !!p + !!c)) {
			snprintf(err, n, "approvals must be {stages: [names], above_percent: N, count: N}");
			goto out;
		}
		if (s && !strings_ok(s)) {
			snprintf(err, n, "approvals.stages must be a list of stage names");
			goto out;
		}
		if (p && (!json_is_number(p) || json_number_value(p) < 0 || json_number_value(p) > 100)) {
			snprintf(err, n, "approvals.above_percent must be a number 0..100");
			goto out;
		}
		if (c && (!json_is_integer(c) || json_integer_value(c) < 1 || json_integer_value(c) > 10)) {
			snprintf(err, n, "approvals.count must be an integer 1..10 (distinct approvers)");
			goto out;
		}
		if (s)
			json_object_set(a, "stages", s);
		if (p)
			json_object_set_new(a, "above_percent", json_real(json_number_value(p)));
		if (c)
			json_object_set(a, "count", c);
	}
	*out = e;
	e = NULL;
	rc = 0;
out:
	json_decref(e);
	return rc;
}

json_t *policy_product(const struct otacd_config *c, const char *product)
{
	json_t *e = c && product ? json_object_get(c->products, product) : NULL;
	json_t *def = NULL, *none;
	char err[64];

	if (e)
		return json_incref(e);
	none = json_object();
	policy_product_parse(none, &def, err, sizeof(err)); /* every default */
	json_decref(none);
	return def;
}

const char *policy_stage_product(const struct pipeline *p, const struct pl_stage *st)
{
	const char *s = json_string_value(json_object_get(st->extra, "product"));
	return s ? s : p->name;
}

/* ---- checks ------------------------------------------------------------ */

static int is_kind(const struct pl_stage *st, const char *kind)
{
	return st->kind && !strcmp(st->kind, kind);
}

static int is_rollout_kind(const struct pl_stage *st)
{
	return is_kind(st, "soak") || is_kind(st, "rollout");
}

/* Highest security counter released for product, -1 when none. */
static int64_t highest_counter(struct store *db, const char *product)
{
	struct db_stmt *st = db ? store_q(db, "SELECT COALESCE(MAX(security_counter), -1) FROM releases WHERE product = ?")
			      : NULL;
	int64_t v = -1;
	if (!st)
		return -1;
	db_bind_text(st, 1, product);
	if (db_step(st) == 1)
		v = db_column_int64(st, 0);
	db_reset(st);
	return v;
}

/* The most a release of product may ask for, or OTA_EPERM with why. */
static int counter_allowed(struct store *db, const char *product, const json_t *e, int64_t counter, char *why,
			   size_t n)
{
	int64_t high = highest_counter(db, product), base = high < 0 ? 0 : high;
	int64_t inc = json_integer_value(json_object_get(e, "max_counter_increase"));
	if (counter <= base + inc)
		return 0;
	snprintf(why, n,
		 "security_counter %" PRId64 " is more than +%" PRId64 " over %s %" PRId64 " of product %s"
		 " (products.%s.max_counter_increase): a jump locks every device out of later releases",
		 counter, inc, high < 0 ? "the first-release base" : "the highest released counter", base, product, product);
	return OTA_EPERM;
}

static int key_allowed(const struct otacd_config *c, const json_t *e, const char *product, const char *key,
		       char *why, size_t n)
{
	const json_t *keys = json_object_get(e, "keys");
	size_t i;
	json_t *k;

	if (!key || !c || !json_object_get(c->keys, key)) {
		snprintf(why, n, "signing key '%s' is not configured in otacd (keys:)", key ? key : "");
		return OTA_EPERM;
	}
	if (json_is_null(keys) || !keys)
		return 0;
	json_array_foreach(keys, i, k)
		if (!strcmp(json_string_value(k), key))
			return 0;
	snprintf(why, n, "key '%s' may not sign product %s (products.%s.keys)", key, product, product);
	return OTA_EPERM;
}

/* Uploads (no repository) are judged by their role, not here. */
static int repo_allowed(const json_t *e, const char *product, const char *repo, char *why, size_t n)
{
	const json_t *repos = json_object_get(e, "repositories");
	size_t i;
	json_t *r;
	if (!repo || !json_is_array(repos))
		return 0;
	json_array_foreach(repos, i, r)
		if (!strcmp(json_string_value(r), repo))
			return 0;
	snprintf(why, n, "repository %s may not release product %s (products.%s.repositories)", repo, product, product);
	return OTA_EPERM;
}

static int refs_allowed(const json_t *e, const char *product, const char *ref, char *why, size_t n)
{
	const json_t *refs = json_object_get(e, "refs");
	if (!refs || json_is_null(refs) || ref_in_json(refs, ref))
		return 0;
	snprintf(why, n, "%s may not release product %s (products.%s.refs)", ref ? ref : "(no ref)", product, product);
	return OTA_EPERM;
}

/* Does the policy entry want approval for stage st?  Why in why. */
static int needs_approval(const json_t *e, const struct pl_stage *st, char *why, size_t n)
{
	const json_t *a = json_object_get(e, "approvals"), *above = json_object_get(a, "above_percent");
	json_t *s, *steps;
	size_t i;

	json_array_foreach(json_object_get(a, "stages"), i, s)
		if (!strcmp(json_string_value(s), st->name)) {
			snprintf(why, n, "stage '%s' is listed in approvals.stages", st->name);
			return 1;
		}
	if (!json_is_number(above))
		return 0;
	if (is_kind(st, "soak")) {
		/* a soak exposes its whole cohort: without one, the whole fleet */
		snprintf(why, n, "a soak without a cohort exposes the whole fleet, above approvals.above_percent %g",
			 json_number_value(above));
		return !json_object_get(st->extra, "cohort") && 100 > json_number_value(above);
	}
	steps = json_object_get(st->extra, "steps");
	json_array_foreach(steps, i, s) {
		json_t *pc = json_object_get(s, "percent");
		if (json_is_number(pc) && json_number_value(pc) > json_number_value(above)) {
			snprintf(why, n, "step %zu goes to %g%%, above approvals.above_percent %g", i + 1,
				 json_number_value(pc), json_number_value(above));
			return 1;
		}
	}
	return 0;
}

static int has_approval(const struct pl_stage *st)
{
	json_t *a = json_object_get(st->extra, "approval");
	return json_is_true(a) || (json_is_string(a) && !strcmp(json_string_value(a), "required"));
}

static int names_gate(const struct pl_stage *st, const char *gate)
{
	size_t i;
	json_t *g;
	json_array_foreach(json_object_get(st->extra, "gates"), i, g)
		if (!strcmp(json_string_value(g), gate))
			return 1;
	return 0;
}

/* The products the pipeline's release stages release (a new array). */
static json_t *released_products(const struct pipeline *p)
{
	json_t *v = json_array();
	for (size_t i = 0; i < p->nstages; i++) {
		const char *prod;
		size_t k;
		json_t *x;
		int seen = 0;
		if (!is_kind(&p->stages[i], "release"))
			continue;
		prod = policy_stage_product(p, &p->stages[i]);
		json_array_foreach(v, k, x)
			seen |= !strcmp(json_string_value(x), prod);
		if (!seen)
			json_array_append_new(v, json_string(prod));
	}
	return v;
}

int policy_check_pipeline(const struct otacd_config *c, struct store *db, const struct pipeline *p,
			  const char *repo, const char *ref, const char *trigger, struct pl_diags *d)
{
	/* a reissue re-signs a build released from an allowed ref before */
	int reissue = trigger && !strcmp(trigger, "reissue");
	json_t *products = released_products(p), *prod;
	size_t before = d->n, k;
	char why[512];

	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *st = &p->stages[i];
		if (st->when.set && !pipeline_filter_match(&st->when, ref))
			continue; /* skipped on this ref: it asks for nothing */
		if (is_kind(st, "release")) {
			const char *name = policy_stage_product(p, st);
			json_t *e = policy_product(c, name);
			json_t *sc = json_object_get(st->extra, "security_counter");
			if (key_allowed(c, e, name, json_string_value(json_object_get(st->extra, "key")), why, sizeof(why)) < 0)
				pl_diag_add(d, st->pos, "release stage '%s': %s", st->name, why);
			if (!reissue && refs_allowed(e, name, ref, why, sizeof(why)) < 0)
				pl_diag_add(d, st->pos, "release stage '%s': %s", st->name, why);
			if (repo_allowed(e, name, repo, why, sizeof(why)) < 0)
				pl_diag_add(d, st->pos, "release stage '%s': %s", st->name, why);
			if (json_is_integer(sc) && counter_allowed(db, name, e, json_integer_value(sc), why, sizeof(why)) < 0)
				pl_diag_add(d, st->pos, "release stage '%s': %s", st->name, why);
			json_decref(e);
		} else if (is_rollout_kind(st)) {
			json_array_foreach(products, k, prod) {
				const char *name = json_string_value(prod), *g;
				json_t *e = policy_product(c, name), *spec;
				json_object_foreach(json_object_get(e, "required_gates"), g, spec) {
					json_t *mine = p->gates ? json_object_get(p->gates, g) : NULL;
					if (!names_gate(st, g)) {
						pl_diag_add(d, st->pos,
							    "%s stage '%s' must include gate '%s', which product %s requires"
							    " of every soak and rollout (products.%s.required_gates)",
							    st->kind, st->name, g, name, name);
					} else if (mine && !json_equal(mine, spec)) {
						/* a required gate means the server's definition */
						char *want = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
						pl_diag_add(d, st->pos,
							    "%s stage '%s': gate '%s' is required by product %s and defined by"
							    " the server as %s; the pipeline may not redefine it"
							    " (products.%s.required_gates)",
							    st->kind, st->name, g, name, want ? want : "?", name);
						free(want);
					}
				}
				if (needs_approval(e, st, why, sizeof(why)) && !has_approval(st))
					pl_diag_add(d, st->pos, "%s stage '%s' needs approval: required for product %s: %s",
						    st->kind, st->name, name, why);
				json_decref(e);
			}
		}
	}
	json_decref(products);
	return (int)(d->n - before);
}

void policy_apply_job(const struct otacd_config *c, const struct pipeline *p, const struct pl_stage *st, json_t *job)
{
	json_t *extra = json_object_get(job, "extra"), *products, *prod;
	int64_t approvals = 0;
	size_t k;
	char why[256];

	if (!is_rollout_kind(st) || !json_is_object(extra))
		return;
	products = released_products(p);
	json_array_foreach(products, k, prod) {
		json_t *e = policy_product(c, json_string_value(prod)), *spec, *specs;
		const char *g;
		json_object_foreach(json_object_get(e, "required_gates"), g, spec) {
			if (!json_is_object(specs = json_object_get(extra, "gate_specs"))) {
				specs = json_object();
				json_object_set_new(extra, "gate_specs", specs);
			}
			if (names_gate(st, g))
				json_object_set_new(specs, g, json_deep_copy(spec));
		}
		if (needs_approval(e, st, why, sizeof(why)) || has_approval(st)) {
			int64_t n = json_integer_value(json_object_get(json_object_get(e, "approvals"), "count"));
			if (n > approvals)
				approvals = n;
		}
		json_decref(e);
	}
	json_decref(products);
	if (approvals > 0)
		json_object_set_new(extra, "approvals", json_integer(approvals));
}

int policy_run_protected(struct store *db, int64_t run_id)
{
	struct db_stmt *st = db ? store_q(db, "SELECT protected FROM runs WHERE id = ?") : NULL;
	int rc;
	if (!st)
		return OTA_ERROR;
	db_bind_int64(st, 1, run_id);
	rc = db_step(st);
	if (rc == 1)
		rc = db_column_int64(st, 0) ? 1 : 0;
	else if (rc == 0)
		rc = ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", run_id);
	db_reset(st);
	return rc;
}

int policy_release_allowed(const struct otacd_config *c, struct store *db, int64_t run_id, const char *product,
			   const char *key, int64_t counter)
{
	struct db_stmt *st = db ? store_q(db, "SELECT protected, COALESCE(trust_reason, ''), ref, trigger, repo FROM runs"
					       " WHERE id = ?") : NULL;
	char why[512] = "", ref[256] = "", reason[256] = "", repo[256] = "";
	int prot = 0, reissue = 0, rc;
	json_t *e;

	if (!st)
		return ota_error_set(OTA_ERROR, "database unavailable");
	db_bind_int64(st, 1, run_id);
	if ((rc = db_step(st)) == 1) {
		prot = db_column_int64(st, 0) != 0;
		snprintf(reason, sizeof(reason), "%s", db_column_text(st, 1));
		snprintf(ref, sizeof(ref), "%s", db_column_text(st, 2) ? db_column_text(st, 2) : "");
		reissue = db_column_text(st, 3) && !strcmp(db_column_text(st, 3), "reissue");
		snprintf(repo, sizeof(repo), "%s", db_column_text(st, 4) ? db_column_text(st, 4) : "");
	}
	db_reset(st);
	if (rc != 1)
		return rc < 0 ? rc : ota_error_set(OTA_ENOTFOUND, "run %" PRId64 " not found", run_id);
	if (!prot)
		return ota_error_set(OTA_EPERM, "run %" PRId64 " is not protected (%s): it may not sign releases", run_id,
				     reason);
	e = policy_product(c, product);
	if (key_allowed(c, e, product, key, why, sizeof(why)) < 0 ||
	    (!reissue && refs_allowed(e, product, ref, why, sizeof(why)) < 0) ||
	    repo_allowed(e, product, repo[0] ? repo : NULL, why, sizeof(why)) < 0 ||
	    counter_allowed(db, product, e, counter, why, sizeof(why)) < 0)
		rc = ota_error_set(OTA_EPERM, "refused by the release policy: %s", why);
	else
		rc = 0;
	json_decref(e);
	return rc;
}

void policy_lint(const struct pipeline *p, struct strvec *w)
{
	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *st = &p->stages[i];
		if (is_kind(st, "release") || is_rollout_kind(st))
			strvec_pushf(w, "%s stage '%s' runs only on protected refs (the repository's protected: branches"
				     " and tags) or uploaded with the admin or release role; elsewhere it is skipped",
				     st->kind, st->name);
		if (st->secrets.n)
			strvec_pushf(w, "stage '%s' uses secrets, which only protected runs receive; elsewhere they are"
				     " not set", st->name);
	}
}
