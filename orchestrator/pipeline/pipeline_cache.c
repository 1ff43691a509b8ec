/*
 * pipeline_cache.c - a stage's `cache:` (docs/pipeline.md, "Caches").
 *
 *   cache:
 *     key: "deps-{{ hashFiles('deps.lock') }}"
 *     paths: [ .deps, toolchain/ ]
 *     restore_keys: [ "deps-" ]
 *
 * Only what the pipeline may decide is read here: the key template, the
 * workspace paths to keep, the fallback prefixes.  Where the cache lives
 * and who may read or write it is the daemon's to say (engine_jobs.c puts
 * the scope in the job, from the run's stored trust), so `cache:` has no
 * key for it.  The templates are checked with the agent's own parser
 * (common/cachekey.c), so a key the agent would refuse is refused at push.
 */
#include "pipeline_int.h"

#include "../../common/cachekey.h"

#include <string.h>

static const char *const cache_keys[] = { "key", "paths", "restore_keys", NULL };

/* A list of strings each checked by check(); NULL after a diagnostic. */
static json_t *string_list(struct pl_ctx *c, yaml_node_t *n, const char *subject, int is_key)
{
	json_t *out = json_array();
	yaml_node_t **items;
	size_t nitems;
	int bad = 0;

	if (pw_expect_seq(&c->w, n, subject, is_key ? "a list of key prefixes" : "a list of workspace paths", 1,
			  &items, &nitems) < 0) {
		json_decref(out);
		return NULL;
	}
	if (nitems > CACHEKEY_MAX_PATHS) {
		pw_diag(&c->w, pos_of(n), "%s may list at most %d entries", subject, CACHEKEY_MAX_PATHS);
		nitems = 0;
		bad = 1;
	}
	for (size_t i = 0; i < nitems; i++) {
		char *s = NULL, why[256] = "", key[CACHEKEY_MAX + 1];
		if (pw_get_string(&c->w, items[i], subject, W_NONEMPTY, &s) < 0) {
			bad = 1;
			continue;
		}
		if (is_key ? cachekey_render(key, s, strlen(s), NULL, why, sizeof(why)) < 0
			   : cachekey_path_check(s, strlen(s), why, sizeof(why)) < 0) {
			pw_diag(&c->w, pos_of(items[i]), "%s: %s", subject, why);
			bad = 1;
		} else {
			json_array_append_new(out, json_string(s));
		}
		free(s);
	}
	free(items);
	if (bad) {
		json_decref(out);
		return NULL;
	}
	return out;
}

void pl_parse_cache(struct pl_ctx *c, struct pl_stage *st, yaml_node_t *n, const char *who)
{
	struct map m = MAP_INIT;
	struct pair *pr;
	char *in = xasprintf("in 'cache' of %s", who), *key = NULL;
	json_t *paths = NULL, *restore = NULL;
	size_t before = c->w.d->n;

	if (pw_map_read(&c->w, n, "'cache'", in, cache_keys, &m) < 0)
		goto out;
	if (!(pr = pw_get(&m, "key"))) {
		pw_diag(&c->w, pos_of(n), "'cache' of %s has no 'key'", who);
	} else if (pw_get_string(&c->w, pr->v, "'cache.key'", W_NONEMPTY, &key) == 0) {
		char why[256] = "", out[CACHEKEY_MAX + 1];
		if (cachekey_render(out, key, strlen(key), NULL, why, sizeof(why)) < 0)
			pw_diag(&c->w, pos_of(pr->v), "%s", why);
	}
	if (!(pr = pw_get(&m, "paths")))
		pw_diag(&c->w, pos_of(n), "'cache' of %s has no 'paths'", who);
	else
		paths = string_list(c, pr->v, "'cache.paths'", 0);
	if ((pr = pw_get(&m, "restore_keys")))
		restore = string_list(c, pr->v, "'cache.restore_keys'", 1);
	else
		restore = json_array();
	if (c->w.d->n == before && key && paths && restore)
		st->cache = json_pack("{ss sO sO}", "key", key, "paths", paths, "restore_keys", restore);
out:
	json_decref(paths);
	json_decref(restore);
	free(key);
	free(in);
	pw_map_release(&m);
}
