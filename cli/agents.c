/*
 * agents.c - `otactl agents`: list, register and revoke build agents.
 *
 * `agents ls` shows each agent's kind, state and labels and the labels it
 * may claim; `agents add NAME --labels a,b` registers one (admin) and
 * prints its token once; `agents revoke NAME` ends a token at once, and
 * the job its agent held is retried.  --json prints the API's answers
 * instead.
 */
#include "otactl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"

static void labels_text(struct buf *b, json_t *labels)
{
	json_t *l;
	size_t k;
	json_array_foreach(labels, k, l)
		buf_printf(b, "%s%s", k ? "," : "", json_string_value(l) ? json_string_value(l) : "");
}

static int agents_ls(void)
{
	struct ctl_table t = { 8, 3, STRVEC_INIT };
	json_t *ans = NULL, *ag;
	size_t i;
	int rc;

	if ((rc = api(&ans, "GET", "/api/v1/agents", NULL, "cannot list agents")) != 0)
		return rc;
	if (ctl.json) {
		print_json(ans);
		goto out;
	}
	ctl_table_row(&t, "ID", "NAME", "KIND", "STATE", "JOB", "LAST SEEN", "LABELS", "MAY CLAIM");
	json_array_foreach(ans, i, ag) {
		struct buf labels = BUF_INIT, bound = BUF_INIT;
		char id[64], job[64], seen[32];
		json_t *reg = json_object_get(ag, "registered_labels");
		labels_text(&labels, json_object_get(ag, "labels"));
		if (json_is_array(reg))
			labels_text(&bound, reg);
		else
			buf_puts(&bound, !strcmp(str_or(ag, "kind", ""), "local") ? "(local labels)" : "(as configured)");
		ctl_fmt_time(seen, sizeof(seen), int_or(ag, "last_seen", 0));
		ctl_table_row(&t, ctl_id_text(id, sizeof(id), json_object_get(ag, "id")), str_or(ag, "name", "-"),
			  str_or(ag, "kind", "-"), str_or(ag, "state", "-"),
			  ctl_id_text(job, sizeof(job), json_object_get(ag, "current_job")), seen, buf_cstr(&labels),
			  buf_cstr(&bound));
		buf_release(&labels);
		buf_release(&bound);
	}
	ctl_table_print(&t);
out:
	json_decref(ans);
	return rc;
}

/* agents add NAME --labels a,b: the token is printed once, on stdout alone. */
static int agents_add(int argc, char **argv)
{
	json_t *ans = NULL, *labels = json_array(), *req;
	const char *name = NULL;
	int rc;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--labels") && i + 1 < argc) {
			const char *s = argv[++i];
			while (*s) {
				size_t n = strcspn(s, ",");
				if (n)
					json_array_append_new(labels, json_stringn(s, n));
				s += n;
				if (*s == ',')
					s++;
			}
		} else if (argv[i][0] != '-' && !name) {
			name = argv[i];
		} else {
			json_decref(labels);
			return usage_error("agents", "unexpected argument '%s'", argv[i]);
		}
	}
	if (!name) {
		json_decref(labels);
		return usage_error("agents", "agents add needs a NAME");
	}
	req = json_pack("{ss so}", "name", name, "labels", labels);
	rc = api(&ans, "POST", "/api/v1/agents", req, "cannot add the agent");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else {
			printf("%s\n", str_or(ans, "token", ""));
			fprintf(stderr, "otactl: agent %s registered; the token above is shown only now"
				" (give it to otacd-agent --token-file)\n", name);
		}
	}
	json_decref(ans);
	return rc;
}

static int agents_revoke(int argc, char **argv)
{
	json_t *ans = NULL, *req;
	int rc;

	if (argc != 3)
		return usage_error("agents", "agents revoke needs exactly one NAME");
	req = json_pack("{ss}", "name", argv[2]);
	rc = api(&ans, "POST", "/api/v1/agents/revoke", req, "cannot revoke the agent");
	json_decref(req);
	if (rc == 0) {
		json_t *job = json_object_get(ans, "released_job");
		if (ctl.json)
			print_json(ans);
		else if (json_is_integer(job))
			printf("revoked %s; its job %" JSON_INTEGER_FORMAT " was released for a retry\n", argv[2],
			       json_integer_value(job));
		else
			printf("revoked %s\n", argv[2]);
	}
	json_decref(ans);
	return rc;
}

int cmd_agents(int argc, char **argv)
{
	if (argc == 1 || !strcmp(argv[1], "ls"))
		return argc > 2 ? usage_error("agents", "unexpected argument '%s'", argv[2]) : agents_ls();
	if (!strcmp(argv[1], "add"))
		return agents_add(argc, argv);
	if (!strcmp(argv[1], "revoke"))
		return agents_revoke(argc, argv);
	return usage_error("agents", "unknown subcommand '%s' (ls, add, revoke)", argv[1]);
}
