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

/* Limits of one request: its timeout, how long a command waiting on the
 * daemon keeps retrying while it is unreachable, the biggest pipeline file. */
#define REQUEST_TIMEOUT_MS 30000
#define UNREACHABLE_GIVE_UP_MS 120000
#define PIPELINE_MAX ((size_t)1 << 20)

/* The abbreviated commit id shown everywhere (as in the agent's log). */
#define SHORT_COMMIT 12

/* A table printed with columns padded to their widest cell; the column
 * `state_col` is coloured by state. */
struct ctl_table {
	size_t ncols;
	int state_col;
	struct strvec cells;
};
void ctl_table_row(struct ctl_table *t, ...);
void ctl_table_print(struct ctl_table *t);

int usage_error(const char *cmd, const char *fmt, ...) OTA_PRINTF(2, 3);
int64_t ctl_now_ms(void);
void ctl_sleep_ms(long ms);
/* Text of an id or other scalar into out. */
const char *ctl_id_text(char *out, size_t n, const json_t *v);
void ctl_fmt_time(char *out, size_t n, int64_t ms);
/* Duration between started_at and finished_at of a run or job. */
void ctl_obj_duration(char *out, size_t n, const json_t *o);
const char *ctl_short_ref(const char *ref);
/* The first line of s for a terminal, at most max bytes; caller frees. */
char *ctl_one_line(const char *s, size_t max);
int ctl_state_final(const char *s);
/* Prints why the daemon cannot be reached; EXIT_UNREACHABLE. */
int ctl_unreachable(void);
/* GET a run (id as given on the command line); 0 with *out or an exit code. */
int ctl_get_run(json_t **out, const char *run);
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

/* cli/runs.c */
int cmd_trigger(int argc, char **argv);
int cmd_runs(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
/* cli/logs.c */
int cmd_logs(int argc, char **argv);
/* cli/agents.c */
int cmd_agents(int argc, char **argv);
int cmd_tokens(int argc, char **argv);
/* cli/artifacts.c */
int cmd_artifacts(int argc, char **argv);
/* cli/rollout.c */
int cmd_releases(int argc, char **argv);
int cmd_rollout(int argc, char **argv);
int cmd_promote(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
int cmd_pause(int argc, char **argv);
int cmd_resume(int argc, char **argv);
int cmd_gates(int argc, char **argv);
int cmd_audit(int argc, char **argv);
/* flags.c: feature flags (issue 17) */
int cmd_flags(int argc, char **argv);
/* cli/devca.c: the device CA, provisioners, device certificates (issue 13) */
int cmd_fleet(int argc, char **argv);
int cmd_devices(int argc, char **argv);
/* cli/keys.c: the signing PKI (docs/security.md) */
int cmd_keys(int argc, char **argv);
int cmd_backup(int argc, char **argv);
/* cli/migrate.c: SQLite state into PostgreSQL, offline (docs/storage.md) */
int cmd_migrate(int argc, char **argv);
/* reports.c: `show RUN --tests / --findings` (run_id as the API names it). */
int show_reports(const char *run_id, int tests, int findings);

#endif
