/*
 * pipeline_walk.c - typed access to libyaml's node tree, with diagnostics.
 *
 * The schema code never looks at a yaml_node_t's union itself.  It asks
 * the walker for "a string", "a list of ...", "a mapping with these keys",
 * and the walker either hands the value over or appends a diagnostic
 * ("'timeout' must be a duration like 30s or 10m, got a list") at the
 * node's position and reports failure, so the caller just moves on to the
 * next key.  Mappings are read into a flat list of pairs first, which is
 * where duplicate keys, unknown keys (with did-you-mean) and YAML merge
 * keys ("<<: *defaults") are handled once for every level of the schema.
 *
 * Aliases are resolved by libyaml's document API (an alias is the anchor's
 * node), which also means a document can refer to itself and a few bytes
 * can stand for a huge tree: every recursion here has a depth limit, and
 * every list item and mapping pair walked is charged to a work budget
 * (pw_spend), so an "alias bomb" costs at most PL_MAX_WORK steps.
 */
#include "pipeline_int.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_MERGE_DEPTH 8    /* "<<: *anchor" chains (and self-merges) */
#define MAX_EXTRA_DEPTH 32   /* nesting of kind-specific values */

size_t pw_utf8_cut(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
		max--;
	return max;
}

struct got pw_got(const yaml_node_t *n)
{
	struct got g;
	const char *s;
	size_t len, cut;

	if (n->type == YAML_MAPPING_NODE) {
		snprintf(g.s, sizeof(g.s), "a mapping");
	} else if (n->type == YAML_SEQUENCE_NODE) {
		snprintf(g.s, sizeof(g.s), "a list");
	} else if (is_null(n)) {
		snprintf(g.s, sizeof(g.s), "%s", *sval(n) ? "null" : "nothing");
	} else {
		s = sval(n);
		len = strcspn(s, "\r\n");
		cut = pw_utf8_cut(s, len, 40);
		snprintf(g.s, sizeof(g.s), "'%.*s%s'", (int)cut, s,
			 cut < n->data.scalar.length ? "..." : "");
	}
	return g;
}

void pw_diag(struct walker *w, struct pl_pos pos, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;

	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	for (size_t i = w->start; i < w->d->n; i++)
		if (w->d->v[i].pos.line == pos.line && w->d->v[i].pos.col == pos.col &&
		    !strcmp(w->d->v[i].msg, buf_cstr(&b)))
			goto out;
	pl_diag_add(w->d, pos, "%s", buf_cstr(&b));
out:
	buf_release(&b);
}

int pw_spend(struct walker *w, const yaml_node_t *at, size_t units)
{
	if (w->work > PL_MAX_WORK)
		return -1;   /* already reported */
	w->work = units > PL_MAX_WORK ? PL_MAX_WORK + 1 : w->work + units;
	if (w->work <= PL_MAX_WORK)
		return 0;
	pw_diag(w, pos_of(at), "the pipeline is too large: more than %d items to check (an alias counts once per use, a templated artifact once per matrix job)",
		PL_MAX_WORK);
	return -1;
}

/* "SUBJECT must be SHAPE, got X" - subject comes quoted by the caller. */
void pw_wrong_type(struct walker *w, const yaml_node_t *n, const char *subject,
		   const char *shape)
{
	pw_diag(w, pos_of(n), "%s must be %s, got %s", subject, shape, pw_got(n).s);
}

int pw_expect_map(struct walker *w, const yaml_node_t *n, const char *subject)
{
	if (n->type == YAML_MAPPING_NODE)
		return 0;
	pw_wrong_type(w, n, subject, "a mapping");
	return -1;
}

/*
 * The items of a list node into *items (borrowed nodes, array owned by the
 * caller).  With allow_scalar, a single non-null scalar counts as a list of
 * one, so `needs: build` means `needs: [build]`.
 */
int pw_expect_seq(struct walker *w, yaml_node_t *n, const char *subject,
		  const char *shape, int allow_scalar, yaml_node_t ***items, size_t *nitems)
{
	*items = NULL;
	*nitems = 0;
	if (allow_scalar && is_scalar(n) && !is_null(n)) {
		*items = xmalloc(sizeof(**items));
		(*items)[0] = n;
		*nitems = 1;
		return 0;
	}
	if (n->type != YAML_SEQUENCE_NODE) {
		pw_wrong_type(w, n, subject, shape);
		return -1;
	}
	if (pw_spend(w, n, (size_t)(n->data.sequence.items.top - n->data.sequence.items.start)) < 0)
		return -1;
	*items = xcalloc((size_t)(n->data.sequence.items.top - n->data.sequence.items.start) + 1,
			 sizeof(**items));
	for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
		yaml_node_t *item = node_at(w, *it);
		if (item)
			(*items)[(*nitems)++] = item;
	}
	return 0;
}

int pw_get_string(struct walker *w, const yaml_node_t *n, const char *subject,
		  int flags, char **out)
{
	if (!is_scalar(n) || is_null(n)) {
		pw_wrong_type(w, n, subject, "a string");
		return -1;
	}
	if (has_nul(n)) {
		pw_diag(w, pos_of(n), "%s must not contain NUL characters", subject);
		return -1;
	}
	if ((flags & W_NONEMPTY) && !*sval(n)) {
		pw_diag(w, pos_of(n), "%s must not be empty", subject);
		return -1;
	}
	free(*out);
	*out = xstrdup(sval(n));
	return 0;
}

int pw_get_int(struct walker *w, const yaml_node_t *n, const char *subject,
	       int lo, int hi, int *out)
{
	const char *s;
	char *end;
	long v;

	if (is_scalar(n) && !is_null(n)) {
		s = sval(n);
		v = strtol(s, &end, 10);
		if (end != s && !*end && v >= lo && v <= hi) {
			*out = (int)v;
			return 0;
		}
	}
	pw_diag(w, pos_of(n), "%s must be an integer from %d to %d, got %s",
		subject, lo, hi, pw_got(n).s);
	return -1;
}

int pw_get_bool(struct walker *w, const yaml_node_t *n, const char *subject, int *out)
{
	static const char *const yes[] = { "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON" };
	static const char *const no[] = { "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF" };

	if (is_scalar(n) && !is_null(n)) {
		for (size_t i = 0; i < OTA_ARRAY_SIZE(yes); i++) {
			if (!strcmp(sval(n), yes[i])) {
				*out = 1;
				return 0;
			}
			if (!strcmp(sval(n), no[i])) {
				*out = 0;
				return 0;
			}
		}
	}
	pw_wrong_type(w, n, subject, "true or false");
	return -1;
}

struct pair *pw_get(const struct map *m, const char *key)
{
	for (size_t i = 0; i < m->n; i++)
		if (!strcmp(m->v[i].key, key))
			return &m->v[i];
	return NULL;
}

void pw_map_release(struct map *m)
{
	free(m->v);
	m->v = NULL;
	m->n = m->cap = 0;
}

static void map_push(struct map *m, const char *key, yaml_node_t *k, yaml_node_t *v)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 8;
		m->v = xrealloc(m->v, m->cap * sizeof(*m->v));
	}
	m->v[m->n].key = key;
	m->v[m->n].k = k;
	m->v[m->n].v = v;
	m->n++;
}

static int is_merge_key(const yaml_node_t *k)
{
	return k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !strcmp(sval(k), "<<");
}

/*
 * Collect the pairs of mapping n into m.  Keys written in the mapping
 * itself win over keys brought in by merge keys ("<<: *defaults"), and of
 * several merged mappings the first wins, as in YAML's merge-key type.
 * Duplicate keys are an error only within the mapping itself (own).
 */
void pw_map_collect(struct walker *w, yaml_node_t *n, struct map *m, int own, int depth)
{
	yaml_node_pair_t *start = n->data.mapping.pairs.start, *top = n->data.mapping.pairs.top;

	if (depth > MAX_MERGE_DEPTH) {
		pw_diag(w, pos_of(n), "merge keys ('<<') nest more than %d deep (does a mapping merge itself?)",
			MAX_MERGE_DEPTH);
		return;
	}
	if (pw_spend(w, n, (size_t)(top - start)) < 0)
		return;
	if (m->n + (size_t)(top - start) > PL_MAX_KEYS) {
		pw_diag(w, pos_of(n), "a mapping may have at most %d keys", PL_MAX_KEYS);
		return;
	}
	for (yaml_node_pair_t *pr = start; pr < top; pr++) {
		yaml_node_t *k = node_at(w, pr->key), *v = node_at(w, pr->value);
		struct pair *old;

		if (!k || !v)
			continue;
		if (!is_scalar(k) || is_null(k) || has_nul(k)) {
			pw_diag(w, pos_of(k), "keys must be strings, got %s", pw_got(k).s);
			continue;
		}
		if (is_merge_key(k))
			continue;
		old = pw_get(m, sval(k));
		if (old && own)
			pw_diag(w, pos_of(k), "duplicate key '%s' (first at line %d)",
				sval(k), pos_of(old->k).line);
		else if (!old)
			map_push(m, sval(k), k, v);
	}
	for (yaml_node_pair_t *pr = start; pr < top; pr++) {
		yaml_node_t *k = node_at(w, pr->key), *v = node_at(w, pr->value);

		if (!k || !v || !is_scalar(k) || !is_merge_key(k))
			continue;
		if (v->type == YAML_MAPPING_NODE) {
			pw_map_collect(w, v, m, 0, depth + 1);
			continue;
		}
		if (v->type == YAML_SEQUENCE_NODE) {
			int ok = 1;
			for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
				yaml_node_t *item = node_at(w, *it);
				if (item && item->type == YAML_MAPPING_NODE)
					pw_map_collect(w, item, m, 0, depth + 1);
				else
					ok = 0;
			}
			if (ok)
				continue;
		}
		pw_wrong_type(w, v, "a merge key ('<<')", "a mapping or a list of mappings");
	}
}

static size_t nkeys(const char *const *keys)
{
	size_t n = 0;
	while (keys[n])
		n++;
	return n;
}

const char *pw_did_you_mean(const char *word, const char *const *candidates, size_t n)
{
	const char *short_ones[64];
	size_t k = 0;

	if (strlen(word) > 64)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (strlen(candidates[i]) > 64)
			continue;
		if (k == OTA_ARRAY_SIZE(short_ones)) {
			const char *best = ota_did_you_mean(word, short_ones, k);
			k = 0;
			if (best)
				short_ones[k++] = best;   /* keep the best so far */
		}
		short_ones[k++] = candidates[i];
	}
	return ota_did_you_mean(word, short_ones, k);
}

int pw_in_list(const char *const *list, const char *s)
{
	for (size_t i = 0; list && list[i]; i++)
		if (!strcmp(list[i], s))
			return 1;
	return 0;
}

/*
 * Report the keys of m not in known (NULL-terminated) as unknown and drop
 * them from m.  where says whose key it is: "in stage 'build'".
 */
void pw_map_check_keys(struct walker *w, struct map *m, const char *where,
		       const char *const *known, int dot_keys_ok)
{
	size_t nknown = nkeys(known), kept = 0;

	for (size_t i = 0; i < m->n; i++) {
		const char *key = m->v[i].key;
		const char *hint;
		struct buf b = BUF_INIT;

		if (pw_in_list(known, key)) {
			m->v[kept++] = m->v[i];
			continue;
		}
		if (dot_keys_ok && key[0] == '.')
			continue;
		hint = pw_did_you_mean(key, known, nknown);
		if (hint) {
			buf_printf(&b, " (did you mean '%s'?)", hint);
		} else if (nknown <= 5) {
			buf_puts(&b, " (expected ");
			for (size_t j = 0; j < nknown; j++)
				buf_printf(&b, "%s'%s'", j == 0 ? "" : j + 1 == nknown ? " or " : ", ", known[j]);
			buf_puts(&b, ")");
		}
		pw_diag(w, pos_of(m->v[i].k), "unknown key '%s' %s%s", key, where, buf_cstr(&b));
		buf_release(&b);
	}
	m->n = kept;
}

/* expect_map + map_collect + map_check_keys (known NULL: any key). */
int pw_map_read(struct walker *w, yaml_node_t *n, const char *subject, const char *where,
		const char *const *known, struct map *m)
{
	m->v = NULL;
	m->n = m->cap = 0;
	if (pw_expect_map(w, n, subject) < 0)
		return -1;
	pw_map_collect(w, n, m, 1, 0);
	if (known)
		pw_map_check_keys(w, m, where, known, 0);
	return 0;
}

/* YAML 1.2 core-schema value of a plain scalar, as JSON. */
static json_t *scalar_to_json(const yaml_node_t *n)
{
	const char *s = sval(n);
	char *end;

	if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
		if (is_null(n))
			return json_null();
		if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE"))
			return json_true();
		if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
			return json_false();
		if (*s && strspn(s, "+-0123456789") == strlen(s)) {
			long long v = strtoll(s, &end, 10);
			if (!*end)
				return json_integer(v);
		}
		if (*s && strspn(s, "+-0123456789.eE") == strlen(s) && strpbrk(s, "0123456789")) {
			double v = strtod(s, &end);
			if (!*end)
				return json_real(v);
		}
	}
	return json_stringn(s, n->data.scalar.length);
}

/* Any YAML value as JSON, for kind-specific keys (NULL after a diag). */
json_t *pw_to_json(struct walker *w, yaml_node_t *n, int depth)
{
	json_t *j, *v;

	if (depth > MAX_EXTRA_DEPTH) {
		pw_diag(w, pos_of(n), "value is nested more than %d deep", MAX_EXTRA_DEPTH);
		return NULL;
	}
	if (pw_spend(w, n, 1) < 0)
		return NULL;
	if (is_scalar(n)) {
		if (!(j = scalar_to_json(n)))
			pw_diag(w, pos_of(n), "value is not valid UTF-8");
		return j;
	}
	if (n->type == YAML_SEQUENCE_NODE) {
		j = json_array();
		for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
			yaml_node_t *item = node_at(w, *it);
			if (!item || !(v = pw_to_json(w, item, depth + 1)))
				goto fail;
			json_array_append_new(j, v);
		}
		return j;
	}
	{
		struct map m = MAP_INIT;
		pw_map_collect(w, n, &m, 1, 0);
		j = json_object();
		for (size_t i = 0; i < m.n; i++) {
			if (!(v = pw_to_json(w, m.v[i].v, depth + 1))) {
				pw_map_release(&m);
				goto fail;
			}
			json_object_set_new(j, m.v[i].key, v);
		}
		pw_map_release(&m);
		return j;
	}
fail:
	json_decref(j);
	return NULL;
}
