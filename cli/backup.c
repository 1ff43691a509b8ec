/*
 * backup.c - `otactl backup DIR`: ask otacd for a consistent backup of its
 * state into DIR (admin; POST /api/v1/backup).  DIR is on otacd's host: a
 * relative DIR is made absolute from otactl's working directory, which is
 * right when otactl runs on that host (docs/operations.md).
 */
#include "otactl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cmd_backup(int argc, char **argv)
{
	json_t *ans = NULL, *req;
	char *dir, cwd[4096];
	int rc;

	if (argc != 2)
		return usage_error("backup", "backup needs exactly one DIR");
	if (argv[1][0] == '/')
		dir = xstrdup(argv[1]);
	else if (getcwd(cwd, sizeof(cwd)))
		dir = xasprintf("%s/%s", cwd, argv[1]);
	else {
		fprintf(stderr, "otactl: backup: cannot read the working directory: %s\n", strerror(errno));
		return 1;
	}
	req = json_pack("{ss}", "dir", dir);
	rc = api(&ans, "POST", "/api/v1/backup", req, "backup failed");
	if (rc == 0 && ctl.json)
		print_json(ans);
	else if (rc == 0)
		printf("backed up into %s: %" JSON_INTEGER_FORMAT " files, %" JSON_INTEGER_FORMAT
		       " bytes, schema %" JSON_INTEGER_FORMAT "%s\n",
		       dir, json_integer_value(json_object_get(ans, "files")),
		       json_integer_value(json_object_get(ans, "bytes")),
		       json_integer_value(json_object_get(ans, "schema")),
		       strcmp(str_or(ans, "artifacts", ""), "local") ? " (artifacts: the S3 bucket is backed up by its own means)"
								     : "");
	json_decref(req);
	json_decref(ans);
	free(dir);
	return rc;
}
