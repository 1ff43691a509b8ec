/*
 * flags.c - otactl flags: feature flags (issue 17, docs/update-server.md).
 *
 *   flags ls [PRODUCT]
 *   flags set PRODUCT NAME on|off [--value V] [--cohort TAG=V[,V...]]... --reason TEXT
 *   flags rollout PRODUCT NAME --steps P:HOLD[,P:HOLD...] --gate NAME:METRIC[<=X|>=X][,KEY=V]...
 *                 [--value V] [--cohort TAG=V[,V...]]... [--max-extension D] [--check-interval D] --reason TEXT
 *
 * The command line is turned into the API's JSON here; otacd checks it
 * whole (flags.c) and refuses bad input with a message naming the field.
 */
#include "otactl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"

/* "true" -> true, an integer -> integer, anything else a string. */
static json_t *value_json(const char *v)
{
	char *end;
	long long n;
	if (!strcmp(v, "true"))
		return json_true();
	errno = 0;
	n = strtoll(v, &end, 10);
	if (*v && !*end && !errno)
		return json_integer(n);
	return json_string(v);
}

/* TAG=V[,V...] into cohort {TAG: [V...]}. */
static int cohort_add(json_t *cohort, const char *arg)
{
	const char *eq = strchr(arg, '=');
	json_t *list;
	char *vals, *save = NULL, *tok, key[80];

	if (!eq || eq == arg || !eq[1] || (size_t)(eq - arg) >= sizeof(key))
		return -1;
	snprintf(key, sizeof(key), "%.*s", (int)(eq - arg), arg);
	list = json_array();
	vals = xstrdup(eq + 1);
	for (tok = strtok_r(vals, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		json_array_append_new(list, json_string(tok));
	free(vals);
	json_object_set_new(cohort, key, list);
	return 0;
}

/* P:HOLD[,P:HOLD...] into [{percent, hold}]. */
static json_t *steps_json(const char *arg)
{
	json_t *steps = json_array();
	char *s = xstrdup(arg), *save = NULL, *tok;

	for (tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(tok, ':'), *end;
		double pc;
		if (!colon || !colon[1])
			goto bad;
		*colon = 0;
		pc = strtod(tok, &end);
		if (end == tok || *end)
			goto bad;
		json_array_append_new(steps, json_pack("{sf ss}", "percent", pc, "hold", colon + 1));
	}
	free(s);
	if (json_array_size(steps))
		return steps;
	json_decref(steps);
	return NULL;
bad:
	free(s);
	json_decref(steps);
	return NULL;
}

/* NAME:METRIC[<=X|>=X][,KEY=V...] into gates[NAME] = {metric, max|min, KEY: V}:
 * V a number, or a word as a string (baseline=off); otacd checks the rest. */
static int gate_add(json_t *gates, const char *arg)
{
	char *s = xstrdup(arg), *colon = strchr(s, ':'), *op, *rest, *save = NULL, *tok, *end;
	json_t *g;
	double x;
	int max;

	if (!colon || colon == s)
		goto bad;
	*colon = 0;
	rest = strchr(colon + 1, ',');
	if (rest)
		*rest++ = 0;
	max = (op = strstr(colon + 1, "<=")) != NULL;
	if (!op)
		op = strstr(colon + 1, ">=");
	if (op)
		*op = 0;
	if (!colon[1])
		goto bad;
	g = json_pack("{ss}", "metric", colon + 1);
	if (op) {
		x = strtod(op + 2, &end);
		if (end == op + 2 || *end) {
			json_decref(g);
			goto bad;
		}
		json_object_set_new(g, max ? "max" : "min", json_real(x));
	}
	for (tok = rest ? strtok_r(rest, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq || eq == tok || !eq[1]) {
			json_decref(g);
			goto bad;
		}
		*eq = 0;
		x = strtod(eq + 1, &end);
		if (end == eq + 1 || *end)
			json_object_set_new(g, tok, json_string(eq + 1));
		else
			json_object_set_new(g, tok, x == (double)(long long)x ? json_integer((long long)x) : json_real(x));
	}
	json_object_set_new(gates, s, g);
	free(s);
	return 0;
bad:
	free(s);
	return -1;
}

static void print_flags(const json_t *list)
{
	const json_t *x;
	size_t i;

	printf("%-16s %-20s %-10s %8s %-6s %-12s %s\n", "PRODUCT", "FLAG", "STATE", "PERCENT", "STEP", "VALUE", "COHORT / WHY");
	json_array_foreach(list, i, x) {
		char *value = json_dumps(json_object_get(x, "value"), JSON_COMPACT | JSON_ENCODE_ANY);
		char *cohort = json_dumps(json_object_get(x, "cohort"), JSON_COMPACT | JSON_SORT_KEYS);
		char step[16] = "-";
		if (int_or(x, "steps", 0) > 0)
			snprintf(step, sizeof(step), "%d/%d", (int)int_or(x, "step", 0) + 1, (int)int_or(x, "steps", 0));
		printf("%-16s %-20s %-10s %7.2f%% %-6s %-12s %s %s\n", str_or(x, "product", ""), str_or(x, "name", ""),
		       str_or(x, "state", ""), (double)int_or(x, "bp", 0) / 100.0, step, value ? value : "",
		       cohort ? cohort : "{}", str_or(x, "reason", ""));
		free(value);
		free(cohort);
	}
}

static int flags_ls(int argc, char **argv)
{
	json_t *ans = NULL;
	char *path, *e = NULL;
	int rc;

	if (argc > 3)
		return usage_error("flags", "flags ls takes at most a product");
	if (argc == 3)
		e = httpc_escape(argv[2]);
	path = e ? xasprintf("/api/v1/flags?product=%s", e) : xstrdup("/api/v1/flags");
	rc = api(&ans, "GET", path, NULL, "cannot list flags");
	free(path);
	free(e);
	if (rc)
		return rc;
	if (ctl.json)
		print_json(ans);
	else
		print_flags(ans);
	json_decref(ans);
	return 0;
}

static int flags_change(const char *verb, int argc, char **argv)
{
	json_t *req = json_object(), *cohort = json_object(), *gates = json_object(), *ans = NULL;
	const char *reason = NULL, *value = NULL, *steps = NULL, *maxext = NULL, *check = NULL, *v;
	int rollout = !strcmp(verb, "rollout"), rc = 2, pos = 0;
	long status = 0;

	for (int i = 2; i < argc; i++) {
		int r;
		if ((r = opt_value("--reason", argc, argv, &i, &reason)) || (r = opt_value("--value", argc, argv, &i, &value))) {
			if (r < 0) {
				usage_error("flags", "%s needs a value", argv[i]);
				goto out;
			}
		} else if ((r = opt_value("--cohort", argc, argv, &i, &v))) {
			if (r < 0 || cohort_add(cohort, v) < 0) {
				usage_error("flags", "--cohort needs TAG=VALUE[,VALUE...]");
				goto out;
			}
		} else if (rollout && (r = opt_value("--steps", argc, argv, &i, &steps))) {
			if (r < 0) {
				usage_error("flags", "--steps needs PERCENT:HOLD[,PERCENT:HOLD...]");
				goto out;
			}
		} else if (rollout && (r = opt_value("--gate", argc, argv, &i, &v))) {
			if (r < 0 || gate_add(gates, v) < 0) {
				usage_error("flags", "--gate needs NAME:METRIC, NAME:METRIC<=X or NAME:METRIC>=X, then ,KEY=V"
							    " (min_devices=N, baseline=off, max_increase=0.5 ...)");
				goto out;
			}
		} else if (rollout && ((r = opt_value("--max-extension", argc, argv, &i, &maxext)) ||
				       (r = opt_value("--check-interval", argc, argv, &i, &check)))) {
			if (r < 0) {
				usage_error("flags", "%s needs a duration like 30m", argv[i]);
				goto out;
			}
		} else if (is_option(argv[i])) {
			usage_error("flags", "unexpected option '%s'", argv[i]);
			goto out;
		} else {
			static const char *const keys[] = { "product", "name", "state" };
			if (pos >= (rollout ? 2 : 3)) {
				usage_error("flags", "unexpected argument '%s'", argv[i]);
				goto out;
			}
			json_object_set_new(req, keys[pos++], json_string(argv[i]));
		}
	}
	if (pos < (rollout ? 2 : 3)) {
		usage_error("flags", rollout ? "flags rollout PRODUCT NAME --steps ... --gate ... --reason TEXT"
					     : "flags set PRODUCT NAME on|off --reason TEXT");
		goto out;
	}
	if (!reason || !*reason) {
		usage_error("flags", "--reason is required: it goes into the audit log");
		goto out;
	}
	json_object_set_new(req, "reason", json_string(reason));
	if (value)
		json_object_set_new(req, "value", value_json(value));
	if (json_object_size(cohort))
		json_object_set(req, "cohort", cohort);
	if (rollout) {
		json_t *s = steps ? steps_json(steps) : NULL;
		if (!s) {
			usage_error("flags", "--steps needs PERCENT:HOLD[,PERCENT:HOLD...], like 10:1h,50:1h,100:1h");
			goto out;
		}
		json_object_set_new(req, "steps", s);
		json_object_set(req, "gates", gates);
		if (maxext)
			json_object_set_new(req, "max_extension", json_string(maxext));
		if (check)
			json_object_set_new(req, "check_interval", json_string(check));
	}
	rc = api_raw(&ans, &status, "POST", rollout ? "/api/v1/flags/rollout" : "/api/v1/flags", req);
	if (!rc && (status < 200 || status >= 300)) {
		rc = api_fail(status, ans, rollout ? "cannot roll the flag out" : "cannot set the flag");
	} else if (!rc && ctl.json) {
		print_json(ans);
	} else if (!rc) {
		printf("flag %s/%s: %s at %.2f%%\n", str_or(ans, "product", ""), str_or(ans, "name", ""),
		       str_or(ans, "state", ""), (double)int_or(ans, "bp", 0) / 100.0);
	}
out:
	json_decref(req);
	json_decref(cohort);
	json_decref(gates);
	json_decref(ans);
	return rc;
}

int cmd_flags(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "ls"))
		return flags_ls(argc < 2 ? 2 : argc, argv);
	if (!strcmp(argv[1], "set") || !strcmp(argv[1], "rollout"))
		return flags_change(argv[1], argc, argv);
	return usage_error("flags", "unknown subcommand '%s' (ls, set, rollout)", argv[1]);
}
