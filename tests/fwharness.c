/*
 * fwharness.c - shared helpers of the sample firmware's pipeline tests;
 * see fwharness.h.
 */
#include "fwharness.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

char *fw_jscpd_path(void)
{
	const char *env = getenv("OTACD_JSCPD");
	if (env && *env)
		return xstrdup(env);
	return xasprintf("%s/.cache/otacd-npm/node_modules/.bin/jscpd", getenv("HOME") ? getenv("HOME") : "/root");
}

int fw_tools_missing(const char *const *tools, size_t n, const char *install, const char *jscpd)
{
	struct buf out = BUF_INIT;
	int missing = 0;
	for (size_t i = 0; i < n && !missing; i++)
		if (h_sh(&out, "command -v %s", tools[i]) != 0) {
			print_message("SKIP: %s is not installed (apt-get install %s)\n", tools[i], install);
			missing = 1;
		}
	if (!missing && jscpd && access(jscpd, X_OK) != 0) {
		print_message("SKIP: jscpd not found at %s (npm install --prefix ~/.cache/otacd-npm jscpd@4.0.5,"
			      " or set OTACD_JSCPD)\n", jscpd);
		missing = 1;
	}
	buf_release(&out);
	return missing;
}

void fw_replace_all(struct buf *b, const char *text, const char *from, const char *to, int *count)
{
	const char *p = text, *q;
	*count = 0;
	while ((q = strstr(p, from))) {
		buf_put(b, p, (size_t)(q - p));
		buf_puts(b, to);
		p = q + strlen(from);
		(*count)++;
	}
	buf_puts(b, p);
}

void fw_copy_step(struct buf *out, const char *text, int stages)
{
	int n;
	fw_replace_all(out, text, "    steps:\n      - run: ", "    steps:\n      - run: cp -R \"$SRC/.\" .\n      - run: ",
		       &n);
	assert_int_equal(n, stages);
}

int64_t fw_trigger_on(struct daemon *d, const char *yaml, const char *ref)
{
	json_t *req = json_pack("{ss ss ss}", "pipeline", yaml, "file", "pipeline.yml", "ref", ref), *ans = NULL;
	long status = h_post(d, "/api/v1/runs", req, &ans);
	int64_t id;
	if (status != 201) {
		char *t = ans ? json_dumps(ans, 0) : NULL;
		fail_msg("trigger answered %ld: %s", status, t ? t : "");
	}
	id = json_integer_value(json_object_get(ans, "id"));
	json_decref(ans);
	json_decref(req);
	return id;
}

const char *fw_jstr(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

void fw_wait_for(struct daemon *d, int64_t id, const char *want, int timeout_ms)
{
	const char *got = h_wait_run(d, id, timeout_ms);
	if (strcmp(got, want)) {
		json_t *run = h_run(d, id), *st, *job;
		size_t i, k;
		json_array_foreach(json_object_get(run, "stages"), i, st)
			json_array_foreach(json_object_get(st, "jobs"), k, job)
				print_error("run %lld: %s %s: %.600s\n", (long long)id, fw_jstr(job, "name"),
					    fw_jstr(job, "state"), fw_jstr(job, "message"));
		json_decref(run);
		fail_msg("run %lld ended %s, expected %s", (long long)id, got, want);
	}
}

void fw_rigs_start(struct daemon *d, pid_t rigs[2])
{
	rigs[0] = h_agent(d, "rig-an385", "hil,board=mps2-an385");
	rigs[1] = h_agent(d, "rig-an386", "hil,board=mps2-an386");
}

void fw_rigs_stop(pid_t rigs[2])
{
	for (int i = 0; i < 2; i++) {
		kill(rigs[i], SIGKILL);
		waitpid(rigs[i], NULL, 0);
	}
}
