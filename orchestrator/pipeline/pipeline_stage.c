/*
 * pipeline_stage.c - the schema of one stage, and of env and branch/tag
 * filters, which the top level shares.
 *
 * Each parse_* function reads one key of docs/pipeline.md's stage table
 * through the walker (pipeline_walk.c) and fills the matching field of
 * struct pl_stage; a wrong value becomes a diagnostic and the field stays
 * empty, so every problem in the stage is reported in one pass.  A stage's
 * name, kind and matrix are read first: messages name the stage, the kind
 * decides which keys are known (its own keys are kept as JSON for it), and
 * ${{ matrix.x }} in steps, env, labels and artifacts is checked against
 * the axes the stage defines.  Checks across stages are in pipeline.c.
 */
#include "pipeline_int.h"
#include "../../stages/stage.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- value checks ---------------------------------------------------- */

static int is_ident(const char *s)
{
	if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
		return 0;
	for (s++; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		      (*s >= '0' && *s <= '9') || *s == '_'))
			return 0;
	return 1;
}

static int is_stage_name(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '.' || *s == '-'))
			return 0;
	return 1;
}

/* NULL when pattern is a usable fnmatch(3) glob, else why not. */
static const char *glob_problem(const char *pat)
{
	if (!*pat)
		return "the pattern is empty";
	for (const char *s = pat; *s; s++) {
		if (*s == '\\') {
			if (!s[1])
				return "it ends with a lone backslash";
			s++;
		} else if (*s == '[') {
			const char *e = s + 1;
			if (*e == '!' || *e == '^')
				e++;
			if (*e == ']')
				e++;  /* a leading ']' is a member, not the end */
			while (*e && *e != ']')
				e++;
			if (!*e)
				return "'[' is never closed by ']'";
			s = e;
		}
	}
	return NULL;
}

/* ---- keys, expressions, env and filters ---------------------------------- */

static const char *const stage_keys[] = {
	"name", "kind", "needs", "matrix", "when", "steps", "env", "secrets",
	"agent", "timeout", "retry", "artifacts", "cache", NULL
};
static const char *const filter_keys[] = { "branches", "tags", NULL };
static const char *const step_keys[] = { "name", "run", NULL };
static const char *const agent_keys[] = { "labels", NULL };
static const char *const retry_keys[] = { "count", "on", "infra", NULL };
static const char *const artifact_keys[] = { "path", "name", "type", "hardware", "optional", NULL };
static const char *const failure_kinds[] = { "script", "timeout", "infra", NULL };

/* Check the ${{ ... }} expressions in s against the stage's matrix. */
static int check_expr(struct pl_ctx *c, const struct pl_stage *st, const yaml_node_t *n, const char *s)
{
	char *err = NULL;

	/* with a broken matrix, "no such axis" would be noise */
	if (c->matrix_failed || pl_subst(s, st, NULL, NULL, &err) == 0)
		return 0;
	pw_diag(&c->w, pos_of(n), "%s", err);
	free(err);
	return -1;
}

/* A string that may hold ${{ matrix.x }}: get_string + check_expr.
 * On failure *out is NULL. */
static int get_subst(struct pl_ctx *c, const struct pl_stage *st, const yaml_node_t *n,
		     const char *subject, int flags, char **out)
{
	if (pw_get_string(&c->w, n, subject, flags, out) < 0)
		return -1;
	if (check_expr(c, st, n, *out) == 0)
		return 0;
	free(*out);
	*out = NULL;
	return -1;
}

/* Branch and tag globs: a list, or one glob as a plain string. */
static void parse_globs(struct pl_ctx *c, yaml_node_t *n, const char *subject, struct strvec *out)
{
	yaml_node_t **items;
	size_t nitems;

	if (pw_expect_seq(&c->w, n, subject, "a list of globs", 1, &items, &nitems) < 0)
		return;
	for (size_t i = 0; i < nitems; i++) {
		char *s = NULL;
		const char *why;

		if (pw_get_string(&c->w, items[i], "each glob", 0, &s) < 0)
			continue;
		if ((why = glob_problem(s)))
			pw_diag(&c->w, pos_of(items[i]), "invalid glob '%s': %s", s, why);
		else
			strvec_push(out, s);
		free(s);
	}
	free(items);
}

/* { branches: [globs], tags: [globs] } for `when` and `on.push`;
 * of names the owner for messages (" of stage 'x'", or ""). */
void pl_parse_filter(struct pl_ctx *c, yaml_node_t *n, const char *name, const char *of,
		     struct pl_filter *f)
{
	struct map m;
	struct pair *br, *tg;
	size_t before;
	char *subject = xasprintf("'%s'", name);
	char *in = xasprintf("in '%s'%s", name, of);

	if (pw_map_read(&c->w, n, subject, in, filter_keys, &m) < 0)
		goto out;
	before = c->w.d->n;
	f->set = 1;
	br = pw_get(&m, "branches");
	tg = pw_get(&m, "tags");
	if (br) {
		char *s = xasprintf("'%s.branches'", name);
		parse_globs(c, br->v, s, &f->branches);
		free(s);
	}
	if (tg) {
		char *s = xasprintf("'%s.tags'", name);
		parse_globs(c, tg->v, s, &f->tags);
		free(s);
	}
	if (!br && !tg && c->w.d->n == before)   /* not after "unknown key 'branch'" */
		pw_diag(&c->w, pos_of(n), "'%s' must list 'branches' or 'tags' (or both)", name);
out:
	pw_map_release(&m);
	free(subject);
	free(in);
}

/* env: { NAME: value }.  st is NULL for the pipeline's own env. */
void pl_parse_env(struct pl_ctx *c, const struct pl_stage *st, yaml_node_t *n,
		  struct pl_kvlist *out)
{
	struct map m;

	if (pw_map_read(&c->w, n, "'env'", NULL, NULL, &m) < 0)
		goto out;
	out->v = xcalloc(m.n + 1, sizeof(*out->v));
	for (size_t i = 0; i < m.n; i++) {
		struct pl_kv *kv = &out->v[out->n];
		yaml_node_t *v = m.v[i].v;
		char *subject;
		int rc = 0;

		if (!is_ident(m.v[i].key)) {
			pw_diag(&c->w, pos_of(m.v[i].k),
				"environment variable name '%s' must be letters, digits and '_', not starting with a digit",
				m.v[i].key);
			continue;
		}
		subject = xasprintf("'env.%s'", m.v[i].key);
		if (is_null(v))
			kv->value = xstrdup("");   /* `FOO:` sets FOO to "" */
		else
			rc = get_subst(c, st, v, subject, 0, &kv->value);
		free(subject);
		if (rc < 0) {
			free(kv->value);
			kv->value = NULL;
			continue;
		}
		kv->key = xstrdup(m.v[i].key);
		kv->pos = pos_of(m.v[i].k);
		out->n++;
	}
out:
	pw_map_release(&m);
}

/* ---- schema: stages ------------------------------------------------------ */

static void parse_needs(struct pl_ctx *c, struct pl_stage *st, struct stage_aux *aux, yaml_node_t *n)
{
	yaml_node_t **items;
	size_t nitems;

	st->needs_pos = pos_of(n);
	if (pw_expect_seq(&c->w, n, "'needs'", "a list of stage names", 1, &items, &nitems) < 0)
		return;
	aux->need_nodes = xcalloc(nitems + 1, sizeof(*aux->need_nodes));
	for (size_t i = 0; i < nitems; i++) {
		char *s = NULL;
		if (pw_get_string(&c->w, items[i], "each item of 'needs'", W_NONEMPTY, &s) < 0)
			continue;
		aux->need_nodes[st->needs.n] = items[i];
		strvec_push(&st->needs, s);
		free(s);
	}
	free(items);
}

static void parse_matrix(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n)
{
	struct map m;
	size_t before = c->w.d->n, jobs;

	if (pw_map_read(&c->w, n, "'matrix'", NULL, NULL, &m) < 0)
		goto out;
	if (m.n == 0 || m.n > PL_MAX_AXES) {
		pw_diag(&c->w, pos_of(n), "'matrix' must have from 1 to %d axes", PL_MAX_AXES);
		goto out;
	}
	st->matrix = xcalloc(m.n, sizeof(*st->matrix));
	for (size_t i = 0; i < m.n; i++) {
		struct pl_matrix_axis *ax = &st->matrix[st->nmatrix++];
		yaml_node_t **items = NULL;
		size_t nitems;
		char *subject = xasprintf("'matrix.%s'", m.v[i].key);

		/* kept even when wrong, so ${{ matrix.x }} is not reported twice */
		ax->name = xstrdup(m.v[i].key);
		ax->pos = pos_of(m.v[i].k);
		if (!is_ident(ax->name))
			pw_diag(&c->w, ax->pos,
				"matrix axis name '%s' must be letters, digits and '_', not starting with a digit",
				ax->name);
		if (pw_expect_seq(&c->w, m.v[i].v, subject, "a non-empty list of values", 0, &items, &nitems) < 0)
			goto next;
		if (nitems == 0) {
			pw_wrong_type(&c->w, m.v[i].v, subject, "a non-empty list of values");
			goto next;
		}
		if (nitems > PL_MAX_MATRIX_JOBS) {
			pw_diag(&c->w, pos_of(m.v[i].v), "%s has %zu values, more than the limit of %d jobs per stage",
				subject, nitems, PL_MAX_MATRIX_JOBS);
			goto next;
		}
		ax->values = xcalloc(nitems, sizeof(*ax->values));
		for (size_t j = 0; j < nitems; j++) {
			char *s = NULL;
			int dup = 0;

			if (pw_get_string(&c->w, items[j], "each matrix value", 0, &s) < 0)
				continue;
			for (size_t k = 0; k < ax->nvalues && !dup; k++)
				dup = !strcmp(ax->values[k], s);
			if (dup) {
				pw_diag(&c->w, pos_of(items[j]), "matrix axis '%s' lists '%s' twice",
					ax->name, s);
				free(s);
				continue;
			}
			ax->values[ax->nvalues++] = s;
		}
next:
		free(items);
		free(subject);
	}
	if (c->w.d->n != before)
		goto out;
	jobs = pl_matrix_count(st->matrix, st->nmatrix);
	if (jobs > PL_MAX_MATRIX_JOBS) {
		if (jobs == SIZE_MAX)
			pw_diag(&c->w, pos_of(n), "'matrix' expands to far more than %d jobs (the limit per stage)",
				PL_MAX_MATRIX_JOBS);
		else
			pw_diag(&c->w, pos_of(n), "'matrix' expands to %zu jobs, more than the limit of %d per stage",
				jobs, PL_MAX_MATRIX_JOBS);
	}
out:
	pw_map_release(&m);
}

static void parse_steps(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n, const char *who)
{
	yaml_node_t **items;
	size_t nitems;

	if (pw_expect_seq(&c->w, n, "'steps'", "a list of steps", 0, &items, &nitems) < 0)
		return;
	if (nitems == 0)
		pw_diag(&c->w, pos_of(n), "'steps' must list at least one step");
	st->steps = xcalloc(nitems + 1, sizeof(*st->steps));
	for (size_t i = 0; i < nitems; i++) {
		struct pl_step *step = &st->steps[st->nsteps];
		yaml_node_t *item = items[i];
		struct map m = MAP_INIT;
		struct pair *run, *name;
		size_t before = c->w.d->n;
		char *in;

		step->pos = pos_of(item);
		if (is_scalar(item) && !is_null(item)) {
			/* `- make all` is short for `- run: make all` */
			if (get_subst(c, st, item, "'run'", W_NONEMPTY, &step->run) == 0)
				st->nsteps++;
			continue;
		}
		if (item->type != YAML_MAPPING_NODE) {
			pw_wrong_type(&c->w, item, "each step", "a command or a mapping with 'run'");
			continue;
		}
		in = xasprintf("in step %zu of %s", i + 1, who);
		pw_map_read(&c->w, item, "each step", in, step_keys, &m);
		free(in);
		run = pw_get(&m, "run");
		name = pw_get(&m, "name");
		if (name)
			get_subst(c, st, name->v, "'name' of a step", W_NONEMPTY, &step->name);
		if (!run) {
			if (c->w.d->n == before)   /* not after "unknown key 'rnu'" */
				pw_diag(&c->w, step->pos, "step %zu of %s has no 'run'", i + 1, who);
		} else if (get_subst(c, st, run->v, "'run'", W_NONEMPTY, &step->run) == 0) {
			st->nsteps++;
		}
		if (!step->run) {
			free(step->name);
			step->name = NULL;
		}
		pw_map_release(&m);
	}
	free(items);
}

static void parse_secrets(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n)
{
	yaml_node_t **items;
	size_t nitems;

	if (pw_expect_seq(&c->w, n, "'secrets'", "a list of secret names", 0, &items, &nitems) < 0)
		return;
	if (nitems > PL_MAX_SECRETS) {
		pw_diag(&c->w, pos_of(n), "a stage may name at most %d secrets", PL_MAX_SECRETS);
		nitems = 0;
	}
	for (size_t i = 0; i < nitems; i++) {
		char *s = NULL;
		if (pw_get_string(&c->w, items[i], "each secret name", W_NONEMPTY, &s) < 0)
			continue;
		if (!is_ident(s))
			pw_diag(&c->w, pos_of(items[i]),
				"secret name '%s' must be letters, digits and '_', not starting with a digit", s);
		else if (strvec_contains(&st->secrets, s))
			pw_diag(&c->w, pos_of(items[i]), "secret '%s' is listed twice", s);
		else
			strvec_push(&st->secrets, s);
		free(s);
	}
	free(items);
}

static void parse_agent(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n, const char *who)
{
	struct map m;
	struct pair *labels;
	yaml_node_t **items = NULL;
	size_t nitems;
	char *in = xasprintf("in 'agent' of %s", who);

	if (pw_map_read(&c->w, n, "'agent'", in, agent_keys, &m) < 0)
		goto out;
	if (!(labels = pw_get(&m, "labels")))
		goto out;
	if (pw_expect_seq(&c->w, labels->v, "'agent.labels'", "a list of labels", 1, &items, &nitems) < 0)
		goto out;
	for (size_t i = 0; i < nitems; i++) {
		char *s = NULL;
		if (get_subst(c, st, items[i], "each label", W_NONEMPTY, &s) == 0)
			strvec_push(&st->labels, s);
		free(s);
	}
out:
	free(items);
	pw_map_release(&m);
	free(in);
}

static void parse_timeout(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n)
{
	int64_t ms;

	if (!is_scalar(n) || is_null(n) || has_nul(n) || ota_parse_duration_ms(sval(n), &ms) < 0) {
		pw_wrong_type(&c->w, n, "'timeout'", "a duration like 30s or 10m");
		return;
	}
	if (ms <= 0) {
		pw_diag(&c->w, pos_of(n), "'timeout' must be longer than 0");
		return;
	}
	st->timeout_ms = ms;
}

static void parse_retry(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n, const char *who)
{
	struct map m = MAP_INIT;
	struct pair *pr;
	yaml_node_t **items = NULL;
	size_t nitems;
	char *in;

	if (is_scalar(n)) {
		pw_get_int(&c->w, n, "'retry'", 0, 10, &st->retry.count);
		return;
	}
	if (n->type != YAML_MAPPING_NODE) {
		pw_wrong_type(&c->w, n, "'retry'", "a number of retries or a mapping with 'count', 'on' and 'infra'");
		return;
	}
	in = xasprintf("in 'retry' of %s", who);
	pw_map_read(&c->w, n, "'retry'", in, retry_keys, &m);
	free(in);
	if ((pr = pw_get(&m, "count")))
		pw_get_int(&c->w, pr->v, "'retry.count'", 0, 10, &st->retry.count);
	if ((pr = pw_get(&m, "infra")))
		pw_get_int(&c->w, pr->v, "'retry.infra'", 0, 10, &st->retry.infra);
	if ((pr = pw_get(&m, "on")) &&
	    pw_expect_seq(&c->w, pr->v, "'retry.on'", "a list of failure kinds", 1, &items, &nitems) == 0) {
		st->retry.on = 0;
		for (size_t i = 0; i < nitems; i++) {
			char *s = NULL;
			size_t k;
			const char *hint;

			if (pw_get_string(&c->w, items[i], "each failure kind in 'retry.on'", 0, &s) < 0)
				continue;
			for (k = 0; failure_kinds[k] && strcmp(failure_kinds[k], s); k++)
				;
			if (failure_kinds[k]) {
				st->retry.on |= 1u << k;
			} else if ((hint = pw_did_you_mean(s, failure_kinds, 3))) {
				pw_diag(&c->w, pos_of(items[i]),
					"unknown failure kind '%s' in 'retry.on' (did you mean '%s'?)", s, hint);
			} else {
				pw_diag(&c->w, pos_of(items[i]),
					"unknown failure kind '%s' in 'retry.on' (expected script, timeout or infra)", s);
			}
			free(s);
		}
	}
	free(items);
	pw_map_release(&m);
}

/* An artifact path or name: relative, no "..", also after substitution. */
static void check_artifact_path(struct pl_ctx *c, const struct pl_stage *st, const yaml_node_t *n,
				const char *what, const char *s)
{
	size_t jobs = pl_matrix_count(st->matrix, st->nmatrix);
	size_t *choice;

	if (!pl_path_is_safe(s)) {
		pw_diag(&c->w, pos_of(n),
			"artifact %s '%s' must be relative to the workspace, without '..'", what, s);
		return;
	}
	if (!strstr(s, "${{") || jobs > PL_MAX_MATRIX_JOBS || pl_subst(s, st, NULL, NULL, NULL) < 0 ||
	    pw_spend(&c->w, n, jobs) < 0)
		return;
	choice = xcalloc(st->nmatrix + 1, sizeof(*choice));
	for (size_t k = 0; k < jobs; k++) {
		struct buf b = BUF_INIT;
		int bad;

		pl_matrix_choice(st->matrix, st->nmatrix, k, choice);
		pl_subst(s, st, choice, &b, NULL);
		bad = !pl_path_is_safe(buf_cstr(&b));
		if (bad)
			pw_diag(&c->w, pos_of(n),
				"artifact %s '%s' becomes '%s' for one of the matrix jobs; it must be relative to the workspace, without '..'",
				what, s, buf_cstr(&b));
		buf_release(&b);
		if (bad)
			break;
	}
	free(choice);
}

static void parse_artifacts(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n, const char *who)
{
	yaml_node_t **items;
	size_t nitems;

	if (pw_expect_seq(&c->w, n, "'artifacts'", "a list of paths", 0, &items, &nitems) < 0)
		return;
	st->artifacts = xcalloc(nitems + 1, sizeof(*st->artifacts));
	for (size_t i = 0; i < nitems; i++) {
		struct pl_artifact *a = &st->artifacts[st->nartifacts];
		yaml_node_t *item = items[i];
		struct map m = MAP_INIT;
		struct pair *pr;
		size_t before = c->w.d->n;
		char *in;
		int ok = 1;

		a->pos = pos_of(item);
		if (is_scalar(item) && !is_null(item)) {
			if (get_subst(c, st, item, "'path'", W_NONEMPTY, &a->path) < 0)
				continue;
			check_artifact_path(c, st, item, "path", a->path);
			st->nartifacts++;
			continue;
		}
		if (item->type != YAML_MAPPING_NODE) {
			pw_wrong_type(&c->w, item, "each artifact", "a path or a mapping with 'path'");
			continue;
		}
		in = xasprintf("in artifact %zu of %s", i + 1, who);
		pw_map_read(&c->w, item, "each artifact", in, artifact_keys, &m);
		free(in);
		if (!(pr = pw_get(&m, "path"))) {
			if (c->w.d->n == before)   /* not after "unknown key 'paht'" */
				pw_diag(&c->w, a->pos, "artifact %zu of %s has no 'path'", i + 1, who);
			ok = 0;
		} else if (get_subst(c, st, pr->v, "'path'", W_NONEMPTY, &a->path) == 0) {
			check_artifact_path(c, st, pr->v, "path", a->path);
		} else {
			ok = 0;
		}
		if ((pr = pw_get(&m, "name")) &&
		    get_subst(c, st, pr->v, "'name' of an artifact", W_NONEMPTY, &a->name) == 0)
			check_artifact_path(c, st, pr->v, "name", a->name);
		if ((pr = pw_get(&m, "type")))
			get_subst(c, st, pr->v, "'type'", W_NONEMPTY, &a->type);
		if ((pr = pw_get(&m, "hardware")))
			get_subst(c, st, pr->v, "'hardware'", W_NONEMPTY, &a->hardware);
		if ((pr = pw_get(&m, "optional")))
			pw_get_bool(&c->w, pr->v, "'optional'", &a->optional);
		pw_map_release(&m);
		if (ok) {
			st->nartifacts++;
		} else {
			free(a->path);
			free(a->name);
			free(a->type);
			free(a->hardware);
			memset(a, 0, sizeof(*a));
		}
	}
	free(items);
}

static int kind_claims(const struct stage_kind *impl, const char *key)
{
	return impl && pw_in_list(impl->keys, key);
}

/* A generic stage key, unless the stage's kind claims the name. */
static struct pair *generic(const struct map *m, const struct pl_stage *st, const char *key)
{
	return kind_claims(st->impl, key) ? NULL : pw_get(m, key);
}

static void resolve_kind(struct pl_ctx *c, struct pl_stage *st, const yaml_node_t *at)
{
	const char *const *avail = stage_kind_names();
	const char *const *planned = stage_kind_planned_names();
	struct strvec all = STRVEC_INIT;
	struct buf names = BUF_INIT;
	const char *hint;
	int is_planned;

	if ((st->impl = stage_kind_find(st->kind, &is_planned)))
		return;
	for (size_t i = 0; avail[i]; i++) {
		strvec_push(&all, avail[i]);
		buf_printf(&names, "%s%s", i ? ", " : "", avail[i]);
	}
	if (is_planned) {
		pw_diag(&c->w, pos_of(at),
			"stage kind '%s' is not available in this version of otacd (available: %s)",
			st->kind, buf_cstr(&names));
		goto out;
	}
	for (size_t i = 0; planned[i]; i++)
		strvec_push(&all, planned[i]);
	hint = pw_did_you_mean(st->kind, (const char *const *)all.v, all.n);
	if (hint)
		pw_diag(&c->w, pos_of(at), "unknown stage kind '%s' (did you mean '%s'?)", st->kind, hint);
	else
		pw_diag(&c->w, pos_of(at), "unknown stage kind '%s' (available: %s)",
			st->kind, buf_cstr(&names));
out:
	strvec_clear(&all);
	buf_release(&names);
}

void pl_parse_stage(struct pl_ctx *c, yaml_node_t *n, size_t idx)
{
	struct pl_stage *st = &c->p->stages[idx];
	struct stage_aux *aux = &c->aux[idx];
	struct walker *w = &c->w;
	size_t before = w->d->n;
	struct map m = MAP_INIT;
	struct strvec known = STRVEC_INIT;
	struct pair *pr;
	char *who = NULL, *where = NULL, *of = NULL;
	json_t *extra = NULL;

	st->pos = pos_of(n);
	st->retry.on = PL_RETRY_SCRIPT | PL_RETRY_TIMEOUT | PL_RETRY_INFRA;
	st->retry.infra = 2;
	if (n->type != YAML_MAPPING_NODE) {
		pw_wrong_type(w, n, "each stage", "a mapping with 'name' and 'steps'");
		goto out;
	}
	pw_map_collect(w, n, &m, 1, 0);
	if (pw_exhausted(w))
		goto out;

	/* name and kind first: the messages about the other keys use them */
	if ((pr = pw_get(&m, "name"))) {
		aux->name_node = pr->v;
		if (pw_get_string(w, pr->v, "'name'", W_NONEMPTY, &st->name) == 0 && !is_stage_name(st->name)) {
			pw_diag(w, pos_of(pr->v),
				"stage name '%s' may only contain letters, digits, '_', '.' and '-'", st->name);
		}
	} else {
		pw_diag(w, st->pos, "stage %zu has no 'name'", idx + 1);
	}
	who = st->name ? xasprintf("stage '%s'", st->name) : xasprintf("stage %zu", idx + 1);
	where = xasprintf("in %s", who);
	of = xasprintf(" of %s", who);
	if ((pr = pw_get(&m, "kind"))) {
		if (pw_get_string(w, pr->v, "'kind'", W_NONEMPTY, &st->kind) == 0)
			resolve_kind(c, st, pr->v);
	} else {
		st->kind = xstrdup("command");
		resolve_kind(c, st, n);
	}

	/* Unknown keys only mean something once the kind is known. */
	if (st->impl) {
		for (size_t i = 0; stage_keys[i]; i++)
			strvec_push(&known, stage_keys[i]);
		for (size_t i = 0; st->impl->keys && st->impl->keys[i]; i++)
			strvec_push(&known, st->impl->keys[i]);
		pw_map_check_keys(w, &m, where, (const char *const *)known.v, 0);
	}

	c->matrix_failed = 0;
	if ((pr = generic(&m, st, "matrix"))) {  /* before anything using ${{ matrix.x }} */
		size_t had = w->d->n;
		parse_matrix(c, st, pr->v);
		c->matrix_failed = w->d->n != had;
	}
	if ((pr = generic(&m, st, "needs")))
		parse_needs(c, st, aux, pr->v);
	if ((pr = generic(&m, st, "when")))
		pl_parse_filter(c, pr->v, "when", of, &st->when);
	if ((pr = generic(&m, st, "steps"))) {
		if (st->impl && !st->impl->runs_steps)
			pw_diag(w, pos_of(pr->k), "stage kind '%s' does not run steps; remove 'steps'",
				st->kind);
		else
			parse_steps(c, st, pr->v, who);
	} else if (st->impl && st->impl->runs_steps && !kind_claims(st->impl, "steps")) {
		pw_diag(w, st->pos, "%s has no 'steps' (kind '%s' runs at least one)",
			who, st->kind);
	}
	if ((pr = generic(&m, st, "env")))
		pl_parse_env(c, st, pr->v, &st->env);
	if ((pr = generic(&m, st, "secrets")))
		parse_secrets(c, st, pr->v);
	if ((pr = generic(&m, st, "agent")))
		parse_agent(c, st, pr->v, who);
	if ((pr = generic(&m, st, "timeout")))
		parse_timeout(c, st, pr->v);
	if ((pr = generic(&m, st, "retry")))
		parse_retry(c, st, pr->v, who);
	if ((pr = generic(&m, st, "artifacts")))
		parse_artifacts(c, st, pr->v, who);
	if ((pr = generic(&m, st, "cache")))
		pl_parse_cache(c, st, pr->v, who);

	/* the kind's own keys, kept as JSON for the kind */
	for (size_t i = 0; st->impl && i < m.n; i++) {
		json_t *v;
		if (!kind_claims(st->impl, m.v[i].key))
			continue;
		if (!(v = pw_to_json(w, m.v[i].v, 0)))
			continue;
		if (!extra)
			extra = json_object();
		json_object_set_new(extra, m.v[i].key, v);
	}
	st->extra = extra;
out:
	aux->ok = w->d->n == before;
	strvec_clear(&known);
	pw_map_release(&m);
	free(who);
	free(where);
	free(of);
}
