/*
 * test_agentlogs.c - the local agents' lines follow otacd's log_format
 * (issue 18).  otacd with `log_format: json` and two local agents runs a
 * passing and a failing pipeline; then every line on its stderr (the
 * daemon's and its agents', which inherit it) parses as JSON with time,
 * level and msg, the agents' lines name the program and the agent, and a
 * job's lines carry its run and job ids.  In the default text format the
 * agents' lines are the historic "otacd-agent: …" ones.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../common/log.h"
#include "../common/util.h"
#include "harness.h"

static void start_with(struct daemon *d, const char *config)
{
	static const char *const two_agents[] = { "--local-agents", "2", NULL };
	h_init(d, NULL);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, config, strlen(config), 0600), 0);
	assert_int_equal(h_start(d, two_agents), 0);
}

/* A passing and a failing run (the failing one's step also writes to
 * stderr: that goes to the job's log, never to otacd's); returns the
 * passing run's id. */
static int64_t two_runs(struct daemon *d, int64_t *failing)
{
	int64_t ok = h_trigger(d, "name: fine\nstages:\n  - { name: s, steps: [ { run: 'echo fine' } ] }\n");
	*failing = h_trigger(d, "name: broken\nstages:\n  - { name: b, steps: [ { run: 'echo \"{oops\" >&2; exit 3' } ] }\n");
	assert_string_equal(h_wait_run(d, ok, 60000), "passed");
	assert_string_equal(h_wait_run(d, *failing, 60000), "failed");
	return ok;
}

/* A sanitizer runtime's own lines (under make asan a step's namespace
 * init writes "==1==WARNING: ASan is ignoring requested
 * __asan_handle_no_return: …" and two lines after it): not otacd's to
 * format.  A real sanitizer report fails its process, which other checks
 * see. */
static int sanitizer_line(const char *s)
{
	return (s[0] == '=' && s[1] == '=' && strspn(s + 2, "0123456789") > 0) ||
	       !strcmp(s, "False positive error reports may follow") ||
	       !strncmp(s, "For details see https://github.com/google/sanitizers/", 53);
}

/* The lines of d's stderr (otacd.log; the local agents share it). */
static struct strvec log_lines(struct daemon *d)
{
	struct buf text = BUF_INIT;
	struct strvec lines = STRVEC_INIT;
	char *path = xasprintf("%s/otacd.log", d->dir);
	const char *p;

	assert_int_equal(ota_read_file(&text, path, 16 << 20), 0);
	for (p = buf_cstr(&text); *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		char *line = xmalloc(n + 1);
		memcpy(line, p, n);
		line[n] = '\0';
		strvec_push(&lines, line);
		free(line);
		p += n + (nl ? 1 : 0);
	}
	buf_release(&text);
	free(path);
	return lines;
}

static void every_line_of_otacd_and_its_local_agents_is_json(void **state)
{
	struct daemon d;
	struct strvec lines;
	int64_t ok, failing;
	int agent_lines = 0, ok_started = 0, failed_line = 0;
	(void)state;

	start_with(&d, "log_format: json\nlog_level: debug\n");
	ok = two_runs(&d, &failing);
	h_kill(&d, SIGTERM); /* stops its local agents too */
	lines = log_lines(&d);
	assert_true(lines.n > 10);
	for (size_t i = 0; i < lines.n; i++) {
		json_t *o;
		const char *program, *agent, *msg, *level;
		if (sanitizer_line(lines.v[i]))
			continue;
		o = json_loads(lines.v[i], 0, NULL);
		if (!json_is_object(o))
			fail_msg("line %zu is not JSON: %s", i + 1, lines.v[i]);
		msg = json_string_value(json_object_get(o, "msg"));
		level = json_string_value(json_object_get(o, "level"));
		if (!json_is_string(json_object_get(o, "time")) || !msg || ota_log_level_parse(level) < 0)
			fail_msg("line %zu lacks time, level or msg: %s", i + 1, lines.v[i]);
		if (strstr(msg, "{oops"))
			fail_msg("a step's output reached otacd's log: %s", lines.v[i]);
		program = json_string_value(json_object_get(o, "program"));
		agent = json_string_value(json_object_get(o, "agent"));
		if (program && !strcmp(program, "otacd-agent")) {
			agent_lines++;
			if (!agent || strncmp(agent, "local-", 6) != 0)
				fail_msg("an agent's line without its name: %s", lines.v[i]);
			if (strstr(msg, "(s) started")) {
				assert_int_equal(json_integer_value(json_object_get(o, "run_id")), ok);
				assert_true(json_integer_value(json_object_get(o, "job_id")) > 0);
				ok_started = 1;
			}
			if (strstr(msg, "finished: failed")) {
				assert_int_equal(json_integer_value(json_object_get(o, "run_id")), failing);
				assert_string_equal(level, "info");
				failed_line = 1;
			}
		} else if (program || agent) {
			fail_msg("a daemon line names a program or agent: %s", lines.v[i]);
		}
		json_decref(o);
	}
	assert_true(agent_lines >= 4); /* two registrations, two jobs' start and end */
	assert_true(ok_started);
	assert_true(failed_line);
	strvec_clear(&lines);
	h_cleanup(&d);
}

static void agents_text_lines_stay_the_historic_ones(void **state)
{
	struct daemon d;
	struct strvec lines;
	int64_t failing;
	int agent_lines = 0;
	(void)state;

	start_with(&d, "log_level: info\n");
	two_runs(&d, &failing);
	h_kill(&d, SIGTERM);
	lines = log_lines(&d);
	for (size_t i = 0; i < lines.n; i++) {
		if (sanitizer_line(lines.v[i]))
			continue;
		if (!strncmp(lines.v[i], "otacd-agent: ", 13))
			agent_lines++;
		else if (strncmp(lines.v[i], "otacd: ", 7) != 0)
			fail_msg("line %zu is neither otacd's nor an agent's: %s", i + 1, lines.v[i]);
	}
	assert_true(agent_lines >= 4);
	strvec_clear(&lines);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_line_of_otacd_and_its_local_agents_is_json),
		cmocka_unit_test(agents_text_lines_stay_the_historic_ones),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
