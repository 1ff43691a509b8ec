/*
 * otactl.h - what otactl's command files share (the globals set from the
 * command line and the helpers that talk to the daemon and print).
 */
#ifndef OTA_OTACTL_H
#define OTA_OTACTL_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/util.h"

enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,
	EXIT_USAGE = 2,
	EXIT_UNREACHABLE = 3,
	EXIT_AUTH = 4,
	EXIT_NOTFOUND = 5,
};

struct otactl_ctl {
	char *url;
	char *token;
	int json;
	int color;
};
extern struct otactl_ctl ctl;

int usage_error(const char *cmd, const char *fmt, ...) OTA_PRINTF(2, 3);
const char *str_or(const json_t *obj, const char *key, const char *dflt);
int64_t int_or(const json_t *obj, const char *key, int64_t dflt);
void print_state(FILE *f, const char *s, int width);
void print_json(const json_t *j);
/* Exit code and message for a failed API answer. */
int api_fail(long status, const json_t *ans, const char *what);
/* One API request; 0 or an EXIT_* code (unreachable ...). */
int api_raw(json_t **out, long *status, const char *method, const char *path, json_t *req);
int is_option(const char *a);
/* A JSON call that must answer 2xx: 0 with *out, else an exit code. */
int api(json_t **out, const char *method, const char *path, json_t *req, const char *what);
/* "--name V" / "--name=V" at argv[*i]: 1 and *val, 0 if not it, -1 if V is missing. */
int opt_value(const char *name, int argc, char **argv, int *i, const char **val);

/* cli/rollout.c */
int cmd_releases(int argc, char **argv);
int cmd_rollout(int argc, char **argv);
int cmd_promote(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
int cmd_pause(int argc, char **argv);
int cmd_resume(int argc, char **argv);
int cmd_gates(int argc, char **argv);
int cmd_audit(int argc, char **argv);
/* reports.c: `show RUN --tests / --findings` (run_id as the API names it). */
int show_reports(const char *run_id, int tests, int findings);

#endif
