/*
 * stagework.h - what otacd-agent does for the build, test, analysis and
 * hil stage kinds beyond running steps (docs/stages.md):
 *
 *   - inputs: download the artifacts the daemon lists for the job (a hil
 *     job's board images) into a directory, checking each digest;
 *   - reports: upload the files `reports:` names, for the daemon to parse;
 *   - toolchain: run each `toolchain:` command and upload the first line
 *     of its output as a "toolchain" report;
 *   - reproducible: digest the artifacts of a build, compare two builds.
 *
 * job.c calls these at the right points of a job; they only need the
 * daemon's address, the job's identity and workspace, and a log callback,
 * so they know nothing of the agent's threads.
 */
#ifndef OTA_STAGEWORK_H
#define OTA_STAGEWORK_H

#include <jansson.h>
#include <stdio.h>
#include <stdint.h>

struct sw_job {
	const char *url;          /* daemon base URL, no trailing '/' */
	const char *token;
	const char *job_id_url;   /* the job id, escaped for a path */
	long long attempt;
	const char *ws;           /* workspace, absolute */
	char *const *envp;        /* the steps' environment */
	void (*log)(void *arg, const char *line);   /* one line, no newline */
	void *log_arg;
};

/* Results: 0 fine; SW_FAIL the job's fault (*msg says why); SW_INFRA the
 * agent's or network's (*msg); SW_LOST the daemon gave the lease away. */
#define SW_FAIL 1
#define SW_INFRA (-1)
#define SW_LOST (-2)

/* Download the job's inputs into dir/<artifact name>; *count is how many. */
int sw_inputs_fetch(const struct sw_job *j, const char *dir, int *count, char **msg);

/* Upload every file matching the spec's `reports` ({format: glob}).  A
 * pattern matching nothing, or a file the daemon refuses, is SW_FAIL. */
int sw_reports_upload(const struct sw_job *j, const json_t *reports, char **msg);

/* Run each command of `toolchain` (list of strings) in the workspace and
 * upload {commands: [{command, version}]} as a "toolchain" report. */
int sw_toolchain_record(const struct sw_job *j, const json_t *commands, char **msg);

/* {relative path: sha256} of the files the spec's `artifacts` match. */
int sw_digests(json_t **out, const char *ws, const json_t *artifacts);

/* SW_FAIL with "not reproducible: NAME A vs B; ..." when the two differ. */
int sw_digests_compare(const json_t *first, const json_t *second, char **msg);

/* SHA-256 of f from its current position, lowercase hex (shared with transfer.c). */
int agent_sha256_file(char out[65], FILE *f);
/* s with glob(3)'s special characters escaped, to prefix a pattern with a
 * directory taken literally (shared with transfer.c); to free. */
char *sw_glob_quote(const char *s);

#endif
