/*
 * test_helperlogs.c - otacd's helper programs log like the daemon (issue
 * 18): otacd-git, started by the daemon's own gitsrc.c while it logs JSON,
 * and otacd-reaper (and `otacd-agent --reaper`), started with the agent's
 * --log-format, write only lines that parse as JSON, with time, level, msg
 * and their program's name; in the text format they keep their
 * "PROGRAM: …" prefix.  Every line each writes is checked, not a sample.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../orchestrator/gitsrc.h"
#include "harness.h"

/* The same exception as test_agentlogs.c: a sanitizer runtime's own lines
 * (an ASan build's namespace init warns about __asan_handle_no_return). */
static int sanitizer_line(const char *s)
{
	return (s[0] == '=' && s[1] == '=' && strspn(s + 2, "0123456789") > 0) ||
	       !strcmp(s, "False positive error reports may follow") ||
	       !strncmp(s, "For details see https://github.com/google/sanitizers/", 53);
}

/*
 * Every line of text parses as a JSON object with time, level and msg,
 * and names program; returns how many lines have a msg containing want.
 */
static int assert_all_json(const char *text, const char *program, const char *want)
{
	int lines = 0, wanted = 0;

	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		char *line = xstrndup(p, nl ? (size_t)(nl - p) : strlen(p));
		json_t *o;
		const char *msg;

		p += strlen(line) + (nl ? 1 : 0);
		if (sanitizer_line(line)) {
			free(line);
			continue;
		}
		o = json_loads(line, 0, NULL);
		if (!json_is_object(o))
			fail_msg("line %d is not JSON: %s", lines + 1, line);
		msg = json_string_value(json_object_get(o, "msg"));
		if (!json_is_string(json_object_get(o, "time")) || !msg ||
		    ota_log_level_parse(json_string_value(json_object_get(o, "level"))) < 0)
			fail_msg("line %d lacks time, level or msg: %s", lines + 1, line);
		if (!json_is_string(json_object_get(o, "program")) ||
		    strcmp(json_string_value(json_object_get(o, "program")), program))
			fail_msg("line %d is not %s's: %s", lines + 1, program, line);
		wanted += strstr(msg, want) != NULL;
		lines++;
		json_decref(o);
		free(line);
	}
	assert_true(lines > 0);
	return wanted;
}

/* What otacd-git writes on stderr while the daemon's gitsrc.c, logging in
 * format at debug level, has it fetch a repository that does not exist. */
static char *git_helper_lines(enum ota_log_format format)
{
	static const struct gitsrc_repo missing = { "acme/fw", "/nonexistent/repo.git", NULL, NULL, NULL };
	char *dir = h_tmpdir(), *state = xasprintf("%s/state", dir), *log = xasprintf("%s/stderr", dir);
	char *helper = h_bin("otacd-git");
	struct buf text = BUF_INIT, out = BUF_INIT;
	int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(saved >= 0 && fd >= 0);
	fflush(stderr);
	/* the helper inherits fd 2, as it inherits the daemon's stderr */
	assert_int_equal(dup2(fd, 2), 2);
	ota_log_setup(format, OTA_LOG_DEBUG, saved);
	assert_int_equal(gitsrc_init(state), 0);
	gitsrc_set_helper(helper);
	assert_true(gitsrc_fetch(&missing) < 0);
	gitsrc_shutdown(); /* the helper has exited: its lines are all written */
	ota_log_setup(OTA_LOG_TEXT, OTA_LOG_INFO, 2);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	close(fd);
	assert_int_equal(ota_read_file(&text, log, 1 << 20), 0);
	h_sh(&out, "rm -rf '%s'", dir);
	buf_release(&out);
	free(helper);
	free(log);
	free(state);
	free(dir);
	return buf_detach(&text);
}

static void git_helper_lines_are_json_when_the_daemon_logs_json(void **state)
{
	char *text = git_helper_lines(OTA_LOG_JSON);
	(void)state;

	/* its debug line about the failed fetch: the level was passed too */
	if (assert_all_json(text, "otacd-git", "request failed") < 1)
		fail_msg("otacd-git did not log its failed fetch: %s", text);
	free(text);
}

static void git_helper_text_lines_keep_their_prefix(void **state)
{
	char *text = git_helper_lines(OTA_LOG_TEXT);
	(void)state;

	if (strncmp(text, "otacd-git: git helper: request failed: ", 39) != 0)
		fail_msg("not otacd-git's text line: %s", text);
	free(text);
}

/* Run a reaper command line; its exit status, stderr in out. */
static int reaper(struct buf *out, const char *prog, const char *args)
{
	char *bin = h_bin(prog);
	int rc = h_sh(out, "'%s' %s", bin, args);
	free(bin);
	return rc;
}

static void reaper_says_in_json_why_it_cannot_run_a_step(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;

	assert_int_equal(reaper(&out, "otacd-reaper", "--log-format json --log-level info -- /nonexistent/step"), 127);
	assert_int_equal(assert_all_json(buf_cstr(&out), "otacd-reaper", "cannot run /nonexistent/step"), 1);
	/* a usage error too */
	assert_int_equal(reaper(&out, "otacd-reaper", "--log-format json --log-level info"), 127);
	assert_int_equal(assert_all_json(buf_cstr(&out), "otacd-reaper", "usage: otacd-reaper"), 1);
	/* the agent's own --reaper (when otacd-reaper is not installed) is the same code */
	assert_int_equal(reaper(&out, "otacd-agent", "--reaper --log-format json -- /nonexistent/step"), 127);
	assert_int_equal(assert_all_json(buf_cstr(&out), "otacd-reaper", "cannot run /nonexistent/step"), 1);
	/* a step that runs: its output is its own, the reaper adds nothing */
	assert_int_equal(reaper(&out, "otacd-reaper", "--log-format json -- /bin/sh -c 'echo plain; exit 3'"), 3);
	assert_string_equal(buf_cstr(&out), "plain\n");
	buf_release(&out);
}

static void reaper_text_and_unknown_formats(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;

	assert_int_equal(reaper(&out, "otacd-reaper", "-- /nonexistent/step"), 127);
	if (strncmp(buf_cstr(&out), "otacd-reaper: cannot run /nonexistent/step: ", 44) != 0)
		fail_msg("not the reaper's text line: %s", buf_cstr(&out));
	assert_int_equal(reaper(&out, "otacd-reaper", "--log-format xml -- /bin/true"), 127);
	assert_non_null(strstr(buf_cstr(&out), "--log-format: not one of text, logfmt, json"));
	buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(git_helper_lines_are_json_when_the_daemon_logs_json),
		cmocka_unit_test(git_helper_text_lines_keep_their_prefix),
		cmocka_unit_test(reaper_says_in_json_why_it_cannot_run_a_step),
		cmocka_unit_test(reaper_text_and_unknown_formats),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
