/*
 * pipeline.c - read a pipeline file into the typed model and validate it.
 *
 * libyaml's document API (yaml_parser_load) turns the text into a node tree
 * that keeps every node's line and column, with aliases already pointing at
 * their anchor's node, so nothing here deals with raw parser events.  The
 * walker (pipeline_walk.c) gives the schema code typed access to that tree
 * and turns every wrong node into a "line:col: reason" diagnostic; the
 * schema itself is the top level here and one stage in pipeline_stage.c.
 *
 * Checks that need the whole file - duplicate stage names, needs that point
 * nowhere, cycles, each kind's own validate() - run here after the walk.
 * Every problem is collected and sorted by position; a pipeline is handed
 * out only when there was none.  Jobs and ref filters: pipeline_expand.c.
 *
 * Nothing here is global: parsing is safe on any thread.
 */
#include "pipeline.h"
#include "pipeline_int.h"
#include "yamlbound.h"
#include "../gate.h"
#include "../../stages/stage.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- diagnostics --------------------------------------------------- */

void pl_diags_init(struct pl_diags *d, const char *file)
{
	d->file = xstrdup(file && *file ? file : "pipeline.yml");
	d->v = NULL;
	d->n = d->cap = 0;
}

void pl_diag_add(struct pl_diags *d, struct pl_pos pos, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;

	if (d->n > PL_MAX_DIAGS)
		return;
	if (d->n == PL_MAX_DIAGS) {
		/* line 0 sorts last: the note follows the problems it cuts off */
		pos.line = pos.col = 0;
		buf_printf(&b, "too many problems; only the first %d are shown", PL_MAX_DIAGS);
	} else {
		va_start(ap, fmt);
		buf_vprintf(&b, fmt, ap);
		va_end(ap);
	}
	if (d->n == d->cap) {
		d->cap = d->cap ? d->cap * 2 : 8;
		d->v = xrealloc(d->v, d->cap * sizeof(*d->v));
	}
	d->v[d->n].pos = pos;
	d->v[d->n].msg = buf_detach(&b);
	d->n++;
}

void pl_diags_format(const struct pl_diags *d, struct buf *out)
{
	for (size_t i = 0; i < d->n; i++) {
		if (d->v[i].pos.line > 0)
			buf_printf(out, "%s:%d:%d: %s\n", d->file, d->v[i].pos.line,
				   d->v[i].pos.col, d->v[i].msg);
		else
			buf_printf(out, "%s: %s\n", d->file, d->v[i].msg);
	}
}

void pl_diags_release(struct pl_diags *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].msg);
	free(d->v);
	free(d->file);
	d->v = NULL;
	d->file = NULL;
	d->n = d->cap = 0;
}

static int pos_before(struct pl_pos a, struct pl_pos b)
{
	long la = a.line > 0 ? a.line : (long)INT_MAX + 1;
	long lb = b.line > 0 ? b.line : (long)INT_MAX + 1;
	return la < lb || (la == lb && a.col < b.col);
}

/* Stable insertion sort by position of d->v[start..] (at most
 * PL_MAX_DIAGS + 1 entries). */
static void diags_sort(struct pl_diags *d, size_t start)
{
	for (size_t i = start + 1; i < d->n; i++) {
		struct pl_diag x = d->v[i];
		size_t j = i;
		while (j > start && pos_before(x.pos, d->v[j - 1].pos)) {
			d->v[j] = d->v[j - 1];
			j--;
		}
		d->v[j] = x;
	}
}

/* ---- whole-pipeline checks ---------------------------------------------- */

static int by_name(const void *a, const void *b)
{
	const struct pl_stage *const *x = a, *const *y = b;
	int c = strcmp((*x)->name, (*y)->name);
	/* equal names: the earlier stage first, so lookups find the first */
	return c ? c : (*x < *y ? -1 : *x > *y);
}

/* The first stage called name, by binary search in sorted; or -1. */
static int find_stage(const struct pipeline *p, const struct pl_stage **sorted, size_t n, const char *name)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(sorted[mid]->name, name) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && !strcmp(sorted[lo]->name, name) ? (int)(sorted[lo] - p->stages) : -1;
}

/* Runs of equal names in sorted are duplicates (file order within a run):
 * each later one is reported at its name, naming the first's line. */
static void check_stage_names(struct pl_ctx *c, const struct pl_stage **sorted, size_t n)
{
	const struct stage_aux *aux = c->aux;
	const struct pl_stage *base = c->p->stages;

	for (size_t i = 1, first = 0; i < n; i++) {
		if (strcmp(sorted[i]->name, sorted[first]->name)) {
			first = i;
			continue;
		}
		pw_diag(&c->w, pos_of(aux[sorted[i] - base].name_node),
			"duplicate stage name '%s' (first defined at line %d)", sorted[i]->name,
			pos_of(aux[sorted[first] - base].name_node).line);
	}
}

/*
 * Resolve needs to stage indices: edges[i] lists the stages stage i needs
 * (only the ones that exist, each once, never itself).  Linear in the
 * number of needs, plus lookups in sorted: files are untrusted, so no
 * quadratic scans.
 */
static void check_needs(struct pl_ctx *c, const struct pl_stage **sorted, size_t nnames,
			size_t **edges, size_t *nedges)
{
	const struct pipeline *p = c->p;
	const char **names = xcalloc(nnames + 1, sizeof(*names));
	size_t *seen = xcalloc(p->nstages + 1, sizeof(*seen));   /* i + 1 when stage i listed it */

	for (size_t i = 0; i < nnames; i++)
		names[i] = sorted[i]->name;
	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *st = &p->stages[i];
		char *who = st->name ? xasprintf("stage '%s'", st->name) : xasprintf("stage %zu", i + 1);

		edges[i] = xcalloc(st->needs.n + 1, sizeof(**edges));
		for (size_t k = 0; k < st->needs.n; k++) {
			const char *need = st->needs.v[k];
			struct pl_pos at = pos_of(c->aux[i].need_nodes[k]);
			int j = find_stage(p, sorted, nnames, need);
			const char *hint;

			if (st->name && !strcmp(need, st->name)) {
				pw_diag(&c->w, at, "%s needs itself", who);
			} else if (j < 0) {
				/* suggestions cost time; none once messages are dropped */
				hint = c->w.d->n < PL_MAX_DIAGS ? pw_did_you_mean(need, names, nnames) : NULL;
				pw_diag(&c->w, at, "%s needs '%s', which is not a stage in this pipeline%s%s%s",
					who, need, hint ? " (did you mean '" : "", hint ? hint : "",
					hint ? "'?)" : "");
			} else if (seen[j] == i + 1) {
				pw_diag(&c->w, at, "'needs' of %s lists '%s' twice", who, need);
			} else {
				seen[j] = i + 1;
				edges[i][nedges[i]++] = (size_t)j;
			}
		}
		free(who);
	}
	free(names);
	free(seen);
}

/* Tarjan's strongly connected components over the needs graph. */
struct scc {
	size_t **edges;
	const size_t *nedges;
	size_t *index, *low;        /* index 0: not visited yet */
	size_t *stack, sp;
	unsigned char *on_stack;
	size_t *comp, ncomp;        /* component number of each stage */
	size_t next;
};

static void scc_visit(struct scc *g, size_t v)
{
	g->index[v] = g->low[v] = ++g->next;
	g->stack[g->sp++] = v;
	g->on_stack[v] = 1;
	for (size_t e = 0; e < g->nedges[v]; e++) {
		size_t t = g->edges[v][e];
		if (!g->index[t]) {
			scc_visit(g, t);   /* depth <= PL_MAX_STAGES */
			if (g->low[t] < g->low[v])
				g->low[v] = g->low[t];
		} else if (g->on_stack[t] && g->index[t] < g->low[v]) {
			g->low[v] = g->index[t];
		}
	}
	if (g->low[v] == g->index[v]) {
		size_t t;
		do {
			t = g->stack[--g->sp];
			g->on_stack[t] = 0;
			g->comp[t] = g->ncomp;
		} while (t != v);
		g->ncomp++;
	}
}

/*
 * Report each cycle once: every strongly connected component of two or
 * more stages holds at least one cycle.  The message shows the shortest
 * one through the component's first stage in the file (a breadth-first
 * search within the component), at that stage's position.
 */
static void check_cycles(struct pl_ctx *c, size_t **edges, const size_t *nedges)
{
	const struct pipeline *p = c->p;
	size_t n = p->nstages;
	struct scc g = {
		.edges = edges, .nedges = nedges,
		.index = xcalloc(n + 1, sizeof(size_t)), .low = xcalloc(n + 1, sizeof(size_t)),
		.stack = xcalloc(n + 1, sizeof(size_t)), .on_stack = xcalloc(n + 1, 1),
		.comp = xcalloc(n + 1, sizeof(size_t)),
	};
	size_t *size = xcalloc(n + 1, sizeof(size_t)), *parent = xcalloc(n + 1, sizeof(size_t));
	size_t *queue = xcalloc(n + 1, sizeof(size_t));
	unsigned char *seen = xcalloc(n + 1, 1);

	for (size_t v = 0; v < n; v++)
		if (!g.index[v])
			scc_visit(&g, v);
	for (size_t v = 0; v < n; v++)
		size[g.comp[v]]++;

	for (size_t s = 0; s < n; s++) {
		size_t cs = g.comp[s], head = 0, tail = 0, last = SIZE_MAX, len = 0;
		struct buf b = BUF_INIT;

		if (size[cs] < 2)
			continue;
		size[cs] = 0;   /* reported */
		memset(seen, 0, n);
		queue[tail++] = s;
		seen[s] = 1;
		while (head < tail && last == SIZE_MAX) {
			size_t u = queue[head++];
			for (size_t e = 0; e < nedges[u] && last == SIZE_MAX; e++) {
				size_t t = edges[u][e];
				if (t == s)
					last = u;
				else if (g.comp[t] == cs && !seen[t]) {
					seen[t] = 1;
					parent[t] = u;
					queue[tail++] = t;
				}
			}
		}
		/* s -> ... -> last -> s; walk parents back from last */
		for (size_t u = last; u != s; u = parent[u])
			queue[len++] = u;
		buf_puts(&b, p->stages[s].name);
		while (len)
			buf_printf(&b, " -> %s", p->stages[queue[--len]].name);
		buf_printf(&b, " -> %s", p->stages[s].name);
		pw_diag(&c->w, p->stages[s].pos, "cycle in needs: %s", buf_cstr(&b));
		buf_release(&b);
	}
	free(g.index);
	free(g.low);
	free(g.stack);
	free(g.on_stack);
	free(g.comp);
	free(size);
	free(parent);
	free(queue);
	free(seen);
}

static void check_graph(struct pl_ctx *c)
{
	const struct pipeline *p = c->p;
	size_t n = p->nstages, nnamed = 0;
	const struct pl_stage **sorted = xcalloc(n + 1, sizeof(*sorted));
	size_t **edges = xcalloc(n + 1, sizeof(*edges));
	size_t *nedges = xcalloc(n + 1, sizeof(*nedges));

	for (size_t i = 0; i < n; i++)
		if (p->stages[i].name)
			sorted[nnamed++] = &p->stages[i];
	qsort(sorted, nnamed, sizeof(*sorted), by_name);

	check_stage_names(c, sorted, nnamed);
	check_needs(c, sorted, nnamed, edges, nedges);
	check_cycles(c, edges, nedges);
	for (size_t i = 0; i < n; i++)
		free(edges[i]);
	free(edges);
	free(nedges);
	free(sorted);
}

/* ---- schema: top level --------------------------------------------------- */

/*
 * Top-level `gates`: NAME -> spec.  Each spec is kept as JSON for the
 * soak/rollout stages that name it (copied into their jobs) and checked
 * by gate_spec_parse, so a typo in a gate fails at lint time, at the
 * gate's line.
 */
static void parse_gates(struct pl_ctx *c, yaml_node_t *n)
{
	struct walker *w = &c->w;
	struct map m = MAP_INIT;

	if (pw_expect_map(w, n, "'gates'") < 0)
		return;
	pw_map_collect(w, n, &m, 1, 0);
	c->p->gates = json_object();
	for (size_t i = 0; i < m.n; i++) {
		struct gate_spec g;
		char err[256];
		json_t *v = pw_to_json(w, m.v[i].v, 0);
		if (!v)
			continue;
		if (!json_is_object(v)) {
			pw_diag(w, pos_of(m.v[i].v), "gate '%s' must be a mapping (metric, max/min ...)", m.v[i].key);
			json_decref(v);
			continue;
		}
		if (gate_spec_parse(v, m.v[i].key, &g, err, sizeof(err)) < 0)
			pw_diag(w, pos_of(m.v[i].v), "%s", err);
		gate_spec_release(&g);
		json_object_set_new(c->p->gates, m.v[i].key, v);
	}
	pw_map_release(&m);
}

static const char *const top_keys[] = {
	"name", "on", "env", "concurrency", "stages", "gates", "version", NULL
};
static const char *const on_keys[] = { "push", NULL };

static void parse_on(struct pl_ctx *c, yaml_node_t *n)
{
	struct map m;
	struct pair *push;

	/* `on: push` - every push */
	if (is_scalar(n) && !strcmp(sval(n), "push"))
		return;
	if (pw_map_read(&c->w, n, "'on'", "in 'on'", on_keys, &m) < 0)
		goto out;
	if (!(push = pw_get(&m, "push"))) {
		pw_diag(&c->w, pos_of(n), "'on' must have 'push'");
		goto out;
	}
	if (!is_null(push->v))   /* `push:` with nothing - every push */
		pl_parse_filter(c, push->v, "on.push", "", &c->p->on_push);
out:
	pw_map_release(&m);
}

static void parse_stages(struct pl_ctx *c, yaml_node_t *n)
{
	yaml_node_t **items;
	size_t nitems;

	if (pw_expect_seq(&c->w, n, "'stages'", "a list of stages", 0, &items, &nitems) < 0)
		return;
	if (nitems == 0)
		pw_diag(&c->w, pos_of(n), "'stages' must list at least one stage");
	if (nitems > PL_MAX_STAGES) {
		pw_diag(&c->w, pos_of(n), "a pipeline may have at most %d stages, this one has %zu",
			PL_MAX_STAGES, nitems);
		nitems = PL_MAX_STAGES;
	}
	c->p->stages = xcalloc(nitems + 1, sizeof(*c->p->stages));
	c->aux = xcalloc(nitems + 1, sizeof(*c->aux));
	c->p->nstages = nitems;
	for (size_t i = 0; i < nitems && !pw_exhausted(&c->w); i++)
		pl_parse_stage(c, items[i], i);
	free(items);
}

/*
 * issue 17: where otacd sends statuses and notifications is the server's
 * configuration alone.  A pushed pipeline naming a URL would let anyone
 * who can push make the daemon send requests into its own network (SSRF),
 * so such keys get a clear refusal, not just "unknown key".
 */
static void refuse_notify_keys(struct walker *w, struct map *m)
{
	static const char *const refused[] = { "notify", "notifications", "webhook", "webhooks", "status", NULL };
	size_t kept = 0;
	for (size_t i = 0; i < m->n; i++) {
		if (pw_in_list(refused, m->v[i].key)) {
			pw_diag(w, pos_of(m->v[i].k), "'%s' cannot be set by a pipeline: notification and commit-status "
				"destinations come from the server's configuration only (docs/notifications.md)", m->v[i].key);
			continue;
		}
		m->v[kept++] = m->v[i];
	}
	m->n = kept;
}

static void parse_top(struct pl_ctx *c, yaml_node_t *root)
{
	struct walker *w = &c->w;
	struct pipeline *p = c->p;
	struct map m = MAP_INIT;
	struct pair *pr;

	if (root->type != YAML_MAPPING_NODE) {
		pw_wrong_type(w, root, "a pipeline", "a mapping with 'name' and 'stages'");
		return;
	}
	pw_map_collect(w, root, &m, 1, 0);
	refuse_notify_keys(w, &m);
	pw_map_check_keys(w, &m, "at the top level", top_keys, 1);

	if (!(pr = pw_get(&m, "name")))
		pw_diag(w, pos_of(root), "missing required key 'name' at the top level");
	else
		pw_get_string(w, pr->v, "'name'", W_NONEMPTY, &p->name);
	if ((pr = pw_get(&m, "on")))
		parse_on(c, pr->v);
	if ((pr = pw_get(&m, "env")))
		pl_parse_env(c, NULL, pr->v, &p->env);
	if ((pr = pw_get(&m, "concurrency")))
		pw_get_string(w, pr->v, "'concurrency'", W_NONEMPTY, &p->concurrency);
	if ((pr = pw_get(&m, "gates")))
		parse_gates(c, pr->v);
	if ((pr = pw_get(&m, "version")))
		pw_diag(w, pos_of(pr->k),
			"key 'version' is reserved for future pipeline format versions; this version of otacd reads only the format without it");
	if (!(pr = pw_get(&m, "stages")))
		pw_diag(w, pos_of(root), "missing required key 'stages' at the top level");
	else
		parse_stages(c, pr->v);
	pw_map_release(&m);
	if (pw_exhausted(w))
		return;

	check_graph(c);
	for (size_t i = 0; i < p->nstages; i++) {
		const struct pl_stage *st = &p->stages[i];
		if (c->aux[i].ok && st->impl && st->impl->validate)
			st->impl->validate(p, st, w->d);
	}
}

/* ---- entry points ------------------------------------------------------ */

/* 1-based line and column of byte offset off (columns count characters). */
static struct pl_pos offset_pos(const char *text, size_t len, size_t off)
{
	struct pl_pos p = { 1, 1 };

	for (size_t i = 0; i < off && i < len; i++) {
		if (text[i] == '\n') {
			p.line++;
			p.col = 1;
		} else if (((unsigned char)text[i] & 0xc0) != 0x80) {
			p.col++;
		}
	}
	return p;
}

static void syntax_error(struct pl_diags *d, const yaml_parser_t *ps, const char *text, size_t len)
{
	struct pl_pos at;
	const char *problem = ps->problem ? ps->problem : "unknown problem";

	switch (ps->error) {
	case YAML_MEMORY_ERROR:
		pl_diag_add(d, (struct pl_pos){ 1, 1 }, "out of memory while reading YAML");
		return;
	case YAML_READER_ERROR:
		at = offset_pos(text, len, ps->problem_offset);
		if (ps->problem_value != -1)
			pl_diag_add(d, at, "YAML syntax error: %s (byte 0x%02x)", problem, ps->problem_value & 0xff);
		else
			pl_diag_add(d, at, "YAML syntax error: %s", problem);
		return;
	default:
		at.line = (int)(ps->problem_mark.line < INT_MAX ? ps->problem_mark.line + 1 : INT_MAX);
		at.col = (int)(ps->problem_mark.column < INT_MAX ? ps->problem_mark.column + 1 : INT_MAX);
		if (ps->context)
			pl_diag_add(d, at, "YAML syntax error: %s (%s at line %d, column %d)", problem,
				    ps->context, (int)ps->context_mark.line + 1, (int)ps->context_mark.column + 1);
		else
			pl_diag_add(d, at, "YAML syntax error: %s", problem);
		return;
	}
}

int pipeline_parse(struct pipeline **out, const char *file, const char *text,
		   size_t len, struct pl_diags *diags)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	yaml_node_t *root;
	struct pl_ctx c;
	struct buf first = BUF_INIT;
	size_t start;
	int loaded = 0, rc;

	*out = NULL;
	if (!diags->file)   /* zeroed rather than pl_diags_init()ed */
		diags->file = xstrdup(file && *file ? file : "pipeline.yml");
	start = diags->n;
	memset(&c, 0, sizeof(c));
	c.w.d = diags;
	c.w.start = start;
	c.w.doc = &doc;
	c.p = xcalloc(1, sizeof(*c.p));
	c.p->file = xstrdup(file && *file ? file : diags->file);

	{
		struct yaml_bound_err be;
		if (yaml_bounds_check(text, text ? len : 0, YAML_MAX_DEPTH, YAML_MAX_NODES, &be) < 0) {
			pl_diag_add(diags, (struct pl_pos){ be.line, be.col }, "the document %s; refused before loading",
				    be.msg);
			goto done;
		}
	}
	if (!yaml_parser_initialize(&parser)) {
		pl_diag_add(diags, (struct pl_pos){ 1, 1 }, "out of memory while reading YAML");
		goto done;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), text ? len : 0);
	loaded = yaml_parser_load(&parser, &doc);
	if (!loaded)
		syntax_error(diags, &parser, text ? text : "", text ? len : 0);
	yaml_parser_delete(&parser);
	if (!loaded)
		goto done;

	if (!(root = yaml_document_get_root_node(&doc)))
		pl_diag_add(diags, (struct pl_pos){ 1, 1 }, "file is empty");
	else
		parse_top(&c, root);

done:
	if (loaded)
		yaml_document_delete(&doc);
	if (c.aux) {
		for (size_t i = 0; i < c.p->nstages; i++)
			free(c.aux[i].need_nodes);
		free(c.aux);
	}
	if (diags->n == start) {
		*out = c.p;
		return 0;
	}
	diags_sort(diags, start);
	if (diags->v[start].pos.line > 0)
		buf_printf(&first, "%s:%d:%d: %s", diags->file, diags->v[start].pos.line,
			   diags->v[start].pos.col, diags->v[start].msg);
	else
		buf_printf(&first, "%s: %s", diags->file, diags->v[start].msg);
	rc = ota_error_set(OTA_EINVAL, "%s", buf_cstr(&first));
	buf_release(&first);
	pipeline_free(c.p);
	return rc;
}

static void kvlist_release(struct pl_kvlist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].key);
		free(l->v[i].value);
	}
	free(l->v);
}

static void filter_release(struct pl_filter *f)
{
	strvec_clear(&f->branches);
	strvec_clear(&f->tags);
}

static void stage_release(struct pl_stage *st)
{
	free(st->name);
	free(st->kind);
	strvec_clear(&st->needs);
	for (size_t i = 0; i < st->nmatrix; i++) {
		for (size_t j = 0; j < st->matrix[i].nvalues; j++)
			free(st->matrix[i].values[j]);
		free(st->matrix[i].values);
		free(st->matrix[i].name);
	}
	free(st->matrix);
	filter_release(&st->when);
	for (size_t i = 0; i < st->nsteps; i++) {
		free(st->steps[i].name);
		free(st->steps[i].run);
	}
	free(st->steps);
	kvlist_release(&st->env);
	strvec_clear(&st->secrets);
	strvec_clear(&st->labels);
	for (size_t i = 0; i < st->nartifacts; i++) {
		free(st->artifacts[i].path);
		free(st->artifacts[i].name);
		free(st->artifacts[i].type);
		free(st->artifacts[i].hardware);
	}
	free(st->artifacts);
	json_decref(st->extra);
	json_decref(st->cache);
}

void pipeline_free(struct pipeline *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nstages; i++)
		stage_release(&p->stages[i]);
	free(p->stages);
	free(p->file);
	free(p->name);
	filter_release(&p->on_push);
	kvlist_release(&p->env);
	free(p->concurrency);
	json_decref(p->gates);
	free(p);
}

int pipeline_stage_index(const struct pipeline *p, const char *name)
{
	for (size_t i = 0; i < p->nstages; i++)
		if (p->stages[i].name && name && !strcmp(p->stages[i].name, name))
			return (int)i;
	return -1;
}
