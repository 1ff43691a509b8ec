/*
 * pipeline_expand.c - from a validated stage to the jobs a run executes,
 * and the branch/tag filters that decide whether a push runs at all.
 *
 * A stage with a matrix becomes one job per combination of axis values,
 * enumerated like nested loops in axis order (the first axis varies
 * slowest), so job order and names are stable across runs and restarts.
 * Each job is self-contained JSON - steps, env, labels, artifacts with
 * ${{ matrix.NAME }} already substituted - because the run stores jobs as
 * JSON and hands them to agents as they are.  pl_subst() is the one place
 * that understands ${{ }}: the parser calls it without values to validate
 * expressions, expansion calls it with the job's values.
 */
#include "pipeline_int.h"

#include <fnmatch.h>
#include <stdlib.h>

size_t pl_matrix_count(const struct pl_matrix_axis *axes, size_t n)
{
	size_t jobs = 1;

	for (size_t i = 0; i < n; i++) {
		if (axes[i].nvalues && jobs > SIZE_MAX / axes[i].nvalues)
			return SIZE_MAX;
		jobs *= axes[i].nvalues;
	}
	return jobs;
}

void pl_matrix_choice(const struct pl_matrix_axis *axes, size_t n, size_t k, size_t *choice)
{
	for (size_t i = n; i-- > 0;) {
		size_t nv = axes[i].nvalues ? axes[i].nvalues : 1;
		choice[i] = k % nv;
		k /= nv;
	}
}

static int is_ident_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

static int subst_error(char **err, const char *fmt, ...) OTA_PRINTF(2, 3);
static int subst_error(char **err, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		buf_vprintf(&b, fmt, ap);
		va_end(ap);
		*err = buf_detach(&b);
	}
	return OTA_EINVAL;
}

int pl_subst(const char *s, const struct pl_stage *st, const size_t *choice,
	     struct buf *out, char **err)
{
	const char *p = s;

	if (err)
		*err = NULL;
	for (;;) {
		const char *open = strstr(p, "${{"), *close, *q, *name;
		size_t namelen, shown, i;

		if (!open) {
			if (out)
				buf_puts(out, p);
			return 0;
		}
		if (out)
			buf_put(out, p, (size_t)(open - p));
		if (!(close = strstr(open + 3, "}}")))
			return subst_error(err, "'${{' without a closing '}}'");
		shown = (size_t)(close + 2 - open);
		for (q = open + 3; *q == ' ' || *q == '\t'; q++)
			;
		name = NULL;
		namelen = 0;
		if (!strncmp(q, "matrix.", 7)) {
			name = q + 7;
			for (q = name; is_ident_char(*q); q++)
				;
			namelen = (size_t)(q - name);
			while (*q == ' ' || *q == '\t')
				q++;
		}
		if (!namelen || q != close) {
			size_t cut = pw_utf8_cut(open, shown, 40);
			return subst_error(err, "unsupported expression '%.*s%s' (only ${{ matrix.NAME }} is available)",
					   (int)cut, open, cut < shown ? "..." : "");
		}
		if (!st)
			return subst_error(err, "'${{ matrix.%.*s }}' can only be used inside a stage",
					   (int)namelen, name);
		for (i = 0; i < st->nmatrix; i++)
			if (strlen(st->matrix[i].name) == namelen && !strncmp(st->matrix[i].name, name, namelen))
				break;
		if (i == st->nmatrix) {
			const char **names = xcalloc(st->nmatrix + 1, sizeof(*names));
			char *want = xstrndup(name, namelen);
			const char *hint;
			int rc;

			for (size_t k = 0; k < st->nmatrix; k++)
				names[k] = st->matrix[k].name;
			hint = pw_did_you_mean(want, names, st->nmatrix);
			if (!st->nmatrix)
				rc = subst_error(err, "'${{ matrix.%s }}' refers to a matrix axis, but stage '%s' has no 'matrix'",
						 want, st->name ? st->name : "?");
			else
				rc = subst_error(err, "'${{ matrix.%s }}' refers to axis '%s', which the matrix of stage '%s' does not define%s%s%s",
						 want, want, st->name ? st->name : "?",
						 hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
			free(names);
			free(want);
			return rc;
		}
		if (out && choice) {
			if (choice[i] >= st->matrix[i].nvalues)
				return subst_error(err, "matrix value index out of range");
			buf_puts(out, st->matrix[i].values[choice[i]]);
		}
		p = close + 2;
	}
}

int pl_path_is_safe(const char *s)
{
	if (!s || !*s || *s == '/')
		return 0;
	while (*s) {
		size_t len = strcspn(s, "/");
		if (len == 2 && s[0] == '.' && s[1] == '.')
			return 0;
		s += len;
		if (*s == '/')
			s++;
	}
	return 1;
}

/* ---- ref filters ------------------------------------------------------ */

static int any_match(const struct strvec *globs, const char *name)
{
	for (size_t i = 0; i < globs->n; i++)
		if (fnmatch(globs->v[i], name, 0) == 0)
			return 1;
	return 0;
}

int pipeline_filter_match(const struct pl_filter *f, const char *ref)
{
	if (!f || !f->set)
		return 1;
	if (!ref || !*ref)
		return 0;
	if (!strncmp(ref, "refs/heads/", 11))
		return any_match(&f->branches, ref + 11);
	if (!strncmp(ref, "refs/tags/", 10))
		return any_match(&f->tags, ref + 10);
	if (!strncmp(ref, "refs/", 5))
		return 0;   /* refs/pull/..., refs/notes/...: neither branch nor tag */
	return any_match(&f->branches, ref);
}

/* ---- jobs ---------------------------------------------------------------- */

/* json_string() refuses invalid UTF-8; the parser only produces valid
 * UTF-8, so this is a guard for hand-built models. */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s ? s : "");
	return j ? j : json_string("\xef\xbf\xbd");
}

/* s with the job's matrix values substituted, as JSON (NULL on error). */
static json_t *jsubst(const char *s, const struct pl_stage *st, const size_t *choice)
{
	struct buf b = BUF_INIT;
	json_t *j = NULL;
	char *err = NULL;

	if (!s)
		return json_null();
	if (pl_subst(s, st, choice, &b, &err) < 0) {
		ota_error_set(OTA_EINVAL, "stage '%s': %s", st->name ? st->name : "?", err);
		free(err);
	} else {
		j = jstr(buf_cstr(&b));
	}
	buf_release(&b);
	return j;
}

/* A kind's keys with ${{ matrix.* }} substituted in every string. */
static json_t *extra_subst(const json_t *v, const struct pl_stage *st, const size_t *choice)
{
	json_t *out, *x;
	const char *k;
	size_t i;

	if (json_is_string(v))
		return jsubst(json_string_value(v), st, choice);
	if (json_is_array(v)) {
		out = json_array();
		json_array_foreach(v, i, x) {
			json_t *y = extra_subst(x, st, choice);
			if (!y) {
				json_decref(out);
				return NULL;
			}
			json_array_append_new(out, y);
		}
		return out;
	}
	if (json_is_object(v)) {
		out = json_object();
		json_object_foreach((json_t *)v, k, x) {
			json_t *y = extra_subst(x, st, choice);
			if (!y) {
				json_decref(out);
				return NULL;
			}
			json_object_set_new(out, k, y);
		}
		return out;
	}
	return json_deep_copy(v);
}

/* The specs of the gates a stage names, from the pipeline's `gates`, so
 * the job carries everything its rollout needs. */
static json_t *gate_specs(const struct pipeline *p, const json_t *extra)
{
	json_t *out = json_object(), *names = json_object_get(extra, "gates"), *n;
	size_t i;

	json_array_foreach(names, i, n) {
		json_t *spec = p && p->gates ? json_object_get(p->gates, json_string_value(n)) : NULL;
		if (spec)
			json_object_set_new(out, json_string_value(n), json_deep_copy(spec));
	}
	return out;
}

/* A step without a name is shown as its command's first line. */
static json_t *step_title(const char *run)
{
	size_t len;
	json_t *j;
	char *t;

	while (*run == ' ' || *run == '\t' || *run == '\n')
		run++;
	len = strcspn(run, "\n");
	if (len > 72)
		t = xasprintf("%.*s...", (int)pw_utf8_cut(run, len, 72), run);
	else
		t = xstrndup(run, len);
	j = jstr(t);
	free(t);
	return j;
}

/* Append v to array a; a NULL v (substitution failed) fails the job. */
static int add(json_t *a, json_t *v)
{
	if (!v)
		return -1;
	json_array_append_new(a, v);
	return 0;
}

static int put(json_t *o, const char *key, json_t *v)
{
	if (!v)
		return -1;
	json_object_set_new(o, key, v);
	return 0;
}

static json_t *job_name(const struct pl_stage *st, const size_t *choice)
{
	struct buf b = BUF_INIT;
	json_t *j;

	buf_puts(&b, st->name ? st->name : "");
	for (size_t i = 0; i < st->nmatrix; i++)
		buf_printf(&b, "%s%s=%s", i ? ", " : " (", st->matrix[i].name,
			   st->matrix[i].values[choice[i]]);
	if (st->nmatrix)
		buf_puts(&b, ")");
	j = jstr(buf_cstr(&b));
	buf_release(&b);
	return j;
}

static json_t *job_retry(const struct pl_retry *r)
{
	static const char *const kinds[] = { "script", "timeout", "infra" };
	json_t *on = json_array();

	for (size_t i = 0; i < OTA_ARRAY_SIZE(kinds); i++)
		if (r->on & (1u << i))
			json_array_append_new(on, json_string(kinds[i]));
	return json_pack("{s:i, s:o, s:i}", "count", r->count, "on", on, "infra", r->infra);
}

static json_t *job_new(const struct pipeline *p, const struct pl_stage *st, const size_t *choice)
{
	json_t *job = json_object(), *matrix = json_object(), *steps = json_array();
	json_t *env = json_object(), *secrets = json_array(), *labels = json_array();
	json_t *arts = json_array();
	int bad = 0;

	for (size_t i = 0; i < st->nmatrix; i++)
		json_object_set_new(matrix, st->matrix[i].name, jstr(st->matrix[i].values[choice[i]]));
	for (size_t i = 0; i < st->nsteps; i++) {
		const struct pl_step *s = &st->steps[i];
		json_t *run = jsubst(s->run, st, choice);
		json_t *name = s->name ? jsubst(s->name, st, choice) : run ? step_title(json_string_value(run)) : NULL;
		json_t *step = json_object();

		bad |= put(step, "name", name) | put(step, "run", run) | add(steps, step);
	}
	for (size_t i = 0; p && i < p->env.n; i++)
		json_object_set_new(env, p->env.v[i].key, jstr(p->env.v[i].value));
	for (size_t i = 0; i < st->env.n; i++)   /* the stage's value wins */
		bad |= put(env, st->env.v[i].key, jsubst(st->env.v[i].value, st, choice));
	for (size_t i = 0; i < st->secrets.n; i++)
		json_array_append_new(secrets, jstr(st->secrets.v[i]));
	for (size_t i = 0; i < st->labels.n; i++)
		bad |= add(labels, jsubst(st->labels.v[i], st, choice));
	for (size_t i = 0; i < st->nartifacts; i++) {
		const struct pl_artifact *a = &st->artifacts[i];
		json_t *art = json_object();

		bad |= put(art, "path", jsubst(a->path, st, choice)) |
		       put(art, "name", jsubst(a->name, st, choice)) |
		       put(art, "type", jsubst(a->type, st, choice)) |
		       put(art, "hardware", jsubst(a->hardware, st, choice)) |
		       put(art, "optional", json_boolean(a->optional)) | add(arts, art);
	}

	json_object_set_new(job, "name", job_name(st, choice));
	json_object_set_new(job, "stage", jstr(st->name));
	json_object_set_new(job, "matrix", matrix);
	json_object_set_new(job, "steps", steps);
	json_object_set_new(job, "env", env);
	json_object_set_new(job, "secrets", secrets);
	json_object_set_new(job, "labels", labels);
	json_object_set_new(job, "timeout_ms", json_integer(st->timeout_ms > 0 ? st->timeout_ms : 0));
	json_object_set_new(job, "retry", job_retry(&st->retry));
	json_object_set_new(job, "artifacts", arts);
	json_object_set_new(job, "kind", jstr(st->kind ? st->kind : "command"));
	{
		json_t *extra = st->extra ? extra_subst(st->extra, st, choice) : json_object();
		if (extra && json_object_get(extra, "gates"))
			json_object_set_new(extra, "gate_specs", gate_specs(p, extra));
		bad |= put(job, "extra", extra);
	}
	if (st->cache)
		json_object_set(job, "cache", st->cache);
	if (bad) {
		json_decref(job);
		return NULL;
	}
	return job;
}

int pipeline_expand_stage(const struct pipeline *p, const struct pl_stage *st, json_t **out)
{
	size_t jobs = pl_matrix_count(st->matrix, st->nmatrix);
	size_t *choice = NULL;
	json_t *arr = NULL;
	int rc = OTA_EINVAL;

	*out = NULL;
	if (jobs == 0 || jobs > PL_MAX_MATRIX_JOBS) {
		ota_error_set(OTA_EINVAL, "stage '%s': matrix expands to %zu jobs (1 to %d allowed)",
			      st->name ? st->name : "?", jobs, PL_MAX_MATRIX_JOBS);
		goto out;
	}
	choice = xcalloc(st->nmatrix + 1, sizeof(*choice));
	arr = json_array();
	for (size_t k = 0; k < jobs; k++) {
		json_t *job;

		pl_matrix_choice(st->matrix, st->nmatrix, k, choice);
		if (!(job = job_new(p, st, choice)))
			goto out;
		json_array_append_new(arr, job);
	}
	*out = arr;
	arr = NULL;
	rc = 0;
out:
	json_decref(arr);
	free(choice);
	return rc;
}
