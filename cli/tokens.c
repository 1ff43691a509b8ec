/*
 * tokens.c - `otactl tokens`: API tokens for people and tools (admin).
 *
 * `tokens add NAME --role viewer|operator|release|admin` makes one and
 * prints it once, on stdout alone; `tokens revoke NAME` ends it, on every
 * instance of a shared PostgreSQL database within the bound of
 * docs/scale.md ("Tokens and agents").  Agents have their own tokens
 * (`otactl agents`).  --json prints the API's answers instead.
 */
#include "otactl.h"

#include <string.h>

static int tokens_add(int argc, char **argv)
{
	json_t *ans = NULL, *req;
	const char *name = NULL, *role = NULL;
	int rc;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--role") && i + 1 < argc)
			role = argv[++i];
		else if (argv[i][0] != '-' && !name)
			name = argv[i];
		else
			return usage_error("tokens", "unexpected argument '%s'", argv[i]);
	}
	if (!name || !role)
		return usage_error("tokens", "tokens add needs a NAME and --role viewer|operator|release|admin");
	req = json_pack("{ss ss}", "name", name, "role", role);
	rc = api(&ans, "POST", "/api/v1/tokens", req, "cannot add the token");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else {
			printf("%s\n", str_or(ans, "token", ""));
			fprintf(stderr, "otactl: token %s (%s) made; it is shown only now\n", name, role);
		}
	}
	json_decref(ans);
	return rc;
}

static int tokens_revoke(int argc, char **argv)
{
	json_t *ans = NULL, *req;
	int rc;

	if (argc != 3)
		return usage_error("tokens", "tokens revoke needs exactly one NAME");
	req = json_pack("{ss}", "name", argv[2]);
	rc = api(&ans, "POST", "/api/v1/tokens/revoke", req, "cannot revoke the token");
	json_decref(req);
	if (rc == 0) {
		if (ctl.json)
			print_json(ans);
		else
			printf("revoked %s\n", argv[2]);
	}
	json_decref(ans);
	return rc;
}

int cmd_tokens(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "add"))
		return tokens_add(argc, argv);
	if (argc > 1 && !strcmp(argv[1], "revoke"))
		return tokens_revoke(argc, argv);
	return usage_error("tokens", "%s (add, revoke)", argc > 1 ? "unknown subcommand" : "which subcommand?");
}
