/*
 * test_reaper.c - the init of a step's PID namespace is otacd-reaper, a
 * small program (libc, jansson, the log code), not a second copy of the agent (agents/contain.c,
 * agents/reaper.c; issue 18: re-executing the agent was the largest cost of
 * a trivial job after the step itself).
 *
 * Looked at from outside, on the real daemon and its local agent: while a
 * step sleeps, the agent's child is the reaper, and the step is the
 * reaper's child.  Where the kernel gives no namespaces (the agent falls
 * back to process groups, and its child is the step's shell) the test is
 * skipped and says so.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "harness.h"

/* The first child of pid whose command line holds want, or 0 (waits up to
 * 30 s); its command line, NULs turned into spaces, in cmd. */
static pid_t child_of(pid_t pid, const char *want, struct buf *cmd)
{
	for (int i = 0; i < 600; i++) {
		struct buf out = BUF_INIT;
		char *p, *end;

		h_sh(&out, "pgrep -P %d || true", (int)pid);
		for (p = out.ptr; p && *p; p = end) {
			long c = strtol(p, &end, 10);
			char *path;
			if (end == p)
				break;
			path = xasprintf("/proc/%ld/cmdline", c);
			{
				/* ota_read_file starts its buffer afresh: read into a new one */
				struct buf line = BUF_INIT;
				int hit = 0;
				if (ota_read_file(&line, path, 1 << 16) == 0 && line.len) {
					for (size_t k = 0; k < line.len; k++)
						if (!line.ptr[k])
							line.ptr[k] = ' ';
					hit = !want || strstr(line.ptr, want);
					buf_clear(cmd);
					buf_put(cmd, line.ptr, line.len);
				}
				buf_release(&line);
				if (hit) {
					free(path);
					buf_release(&out);
					return (pid_t)c;
				}
			}
			free(path);
		}
		buf_release(&out);
		usleep(50000);
	}
	return 0;
}

static void a_steps_namespace_init_is_otacd_reaper_not_the_agent(void **state)
{
	static const char *const args[] = { "--local-agents", "1", NULL };
	struct daemon d;
	struct buf cmd = BUF_INIT;
	pid_t agent, init;
	int skip_it = 0;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, args), 0);
	agent = child_of(d.pid, "otacd-agent", &cmd);
	assert_true(agent > 0);
	h_trigger(&d, "name: r\nstages:\n  - { name: s, steps: [ { run: 'sleep 30' } ] }\n");
	init = child_of(agent, "sleep 30", &cmd);
	assert_true(init > 0);
	if (!strncmp(cmd.ptr, "/bin/sh", 7)) {
		skip_it = 1;      /* process-group fallback: no namespace, no init */
	} else {
		/* "otacd-reaper --log-format text --log-level info -- /bin/sh -e -c
		 * sleep 30": the agent's log format and level (test_helperlogs.c) */
		if (strncmp(cmd.ptr, "otacd-reaper --log-format text --log-level info -- /bin/sh", 58))
			fail_msg("the step's init is \"%s\", not otacd-reaper", cmd.ptr);
		assert_true(child_of(init, "sleep 30", &cmd) > 0);   /* the step under it */
	}
	buf_release(&cmd);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
	if (skip_it) {
		fprintf(stderr, "no PID namespaces here (the agent uses process groups): nothing to check\n");
		skip();
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_steps_namespace_init_is_otacd_reaper_not_the_agent),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
