/*
 * test_githelper.c - the boundary between otacd and its git helper
 * (orchestrator/gitsrc.c, orchestrator/gitproto.c, githelper/).
 *
 * The helper parses what forges send, so the daemon must treat it as
 * hostile: these tests put a fake helper (a small Python program speaking
 * the frame protocol) in its place and check that every kind of bad reply
 * is refused with a message, that nothing it names outside the archive
 * directory is taken, and that a helper that dies is reported, not trusted.
 * The real daemon is also checked to map neither libgit2 nor libarchive.
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
#include "../orchestrator/gitsrc.h"
#include "harness.h"

/*
 * The fake helper: answers each request with $FAKE_REPLY as the reply frame
 * (with its length header, or with $FAKE_HEADER as a raw 4-byte length when
 * set), then $FAKE_DATA as one more frame when set; $FAKE_SIGNAL kills
 * itself with that signal instead; $FAKE_ONCE exits after one answer.
 */
static const char fake_py[] =
	"import os, struct, sys, signal\n"
	"inp = sys.stdin.buffer\n"
	"if os.environ.get('FAKE_PIDFILE'): open(os.environ['FAKE_PIDFILE'], 'w').write(str(os.getpid()))\n"
	"out = os.fdopen(0, 'wb', buffering=0)\n"
	"while True:\n"
	"    h = inp.read(4)\n"
	"    if len(h) < 4: sys.exit(0)\n"
	"    inp.read(struct.unpack('>I', h)[0])\n"
	"    if os.environ.get('FAKE_SIGNAL'): os.kill(os.getpid(), int(os.environ['FAKE_SIGNAL']))\n"
	"    r = os.environ['FAKE_REPLY'].encode()\n"
	"    hdr = bytes.fromhex(os.environ['FAKE_HEADER']) if os.environ.get('FAKE_HEADER') else struct.pack('>I', len(r))\n"
	"    out.write(hdr + r)\n"
	"    if 'FAKE_DATA' in os.environ:\n"
	"        d = os.environ['FAKE_DATA'].encode()\n"
	"        n = int(os.environ.get('FAKE_DATA_LEN', len(d)))\n"
	"        out.write(struct.pack('>I', n) + d)\n"
	"    if os.environ.get('FAKE_ONCE'): sys.exit(0)\n";

static const char good_commit[] =
	"{\"rc\":0,\"id\":\"0123456789abcdef0123456789abcdef01234567\","
	"\"tree\":\"89abcdef0123456789abcdef0123456789abcdef\",\"author\":\"A <a@x>\","
	"\"committer\":\"C <c@x>\",\"message\":\"m\",\"time_ms\":1000}";

struct fix {
	char *dir;
	char *state;
	char *fake;
};

static const struct gitsrc_repo repo = { "acme/fw", "/nonexistent", NULL, NULL, NULL };

static void clear_fake_env(void)
{
	unsetenv("FAKE_REPLY");
	unsetenv("FAKE_HEADER");
	unsetenv("FAKE_DATA");
	unsetenv("FAKE_DATA_LEN");
	unsetenv("FAKE_SIGNAL");
	unsetenv("FAKE_ONCE");
	unsetenv("FAKE_PIDFILE");
}

/* Start over with the fake helper and these settings (no helper kept). */
static void fake(struct fix *f, const char *reply)
{
	gitsrc_shutdown();
	assert_int_equal(gitsrc_init(f->state), 0);
	gitsrc_set_helper(f->fake);
	clear_fake_env();
	setenv("FAKE_REPLY", reply, 1);
}

static int setup(void **state)
{
	struct fix *f = xcalloc(1, sizeof(*f));
	char *py;

	f->dir = h_tmpdir();
	f->state = xasprintf("%s/state", f->dir);
	py = xasprintf("%s/fake.py", f->dir);
	f->fake = xasprintf("%s/fake-helper", f->dir);
	assert_int_equal(ota_write_file_atomic(py, fake_py, strlen(fake_py), 0644), 0);
	{
		char *sh = xasprintf("#!/bin/sh\nexec python3 '%s'\n", py);
		assert_int_equal(ota_write_file_atomic(f->fake, sh, strlen(sh), 0755), 0);
		free(sh);
	}
	free(py);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	struct buf out = BUF_INIT;

	gitsrc_shutdown();
	clear_fake_env();
	h_sh(&out, "rm -rf '%s'", f->dir);
	buf_release(&out);
	free(f->dir);
	free(f->state);
	free(f->fake);
	free(f);
	return 0;
}

static void assert_error_has(const char *want)
{
	if (!strstr(ota_error_last(), want))
		fail_msg("error \"%s\" does not say \"%s\"", ota_error_last(), want);
}

static void a_well_formed_fake_reply_is_taken(void **state)
{
	struct fix *f = *state;
	struct gitsrc_commit c;

	/* the control case: the fake speaks the protocol, so the refusals
	 * below are about their replies, not about the fake */
	fake(f, good_commit);
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), 0);
	assert_string_equal(c.id, "0123456789abcdef0123456789abcdef01234567");
	assert_string_equal(c.author, "A <a@x>");
	assert_int_equal(c.time_ms, 1000);
	gitsrc_commit_release(&c);
}

static void archive_paths_outside_the_archive_directory_are_refused(void **state)
{
	struct fix *f = *state;
	const char *bad[] = { "/etc/passwd", "%s/archives/../../x.tar",
			      "%s/archives/0123456789abcdef0123456789abcdef0123456.tar",
			      "%s/archives/0123456789ABCDEF0123456789abcdef01234567.tar",
			      "%s/archives/0123456789abcdef0123456789abcdef01234567.tar.x" };
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *git = xasprintf("%s/git", f->state);
		char *path = xasprintf(bad[i], git);
		char *reply = xasprintf("{\"rc\":0,\"path\":\"%s\"}", path);
		char *tar = (char *)"untouched";

		fake(f, reply);
		assert_true(gitsrc_archive(&repo, "main", &tar) < 0);
		assert_null(tar);
		assert_error_has("malformed reply (path)");
		free(reply);
		free(path);
		free(git);
	}
	{
		/* and the one shape that is accepted */
		char *reply = xasprintf("{\"rc\":0,\"path\":\"%s/git/archives/0123456789abcdef0123456789abcdef01234567.tar\"}",
					f->state);
		char *tar = NULL;
		fake(f, reply);
		assert_int_equal(gitsrc_archive(&repo, "main", &tar), 0);
		assert_non_null(strstr(tar, "/git/archives/0123456789abcdef"));
		free(tar);
		free(reply);
	}
}

static void commits_with_made_up_ids_or_missing_fields_are_refused(void **state)
{
	struct fix *f = *state;
	const char *bad[] = {
		"{\"rc\":0,\"id\":\"zz23456789abcdef0123456789abcdef01234567\",\"tree\":\"89abcdef0123456789abcdef0123456789abcdef\",\"author\":\"a\",\"committer\":\"c\",\"message\":\"m\",\"time_ms\":1}",
		"{\"rc\":0,\"id\":\"0123456789abcdef0123456789abcdef01234567\",\"tree\":\"89abcdef\",\"author\":\"a\",\"committer\":\"c\",\"message\":\"m\",\"time_ms\":1}",
		"{\"rc\":0,\"id\":\"0123456789abcdef0123456789abcdef01234567\",\"tree\":\"89abcdef0123456789abcdef0123456789abcdef\",\"committer\":\"c\",\"message\":\"m\",\"time_ms\":1}",
		"{\"rc\":0,\"id\":\"0123456789abcdef0123456789abcdef01234567\",\"tree\":\"89abcdef0123456789abcdef0123456789abcdef\",\"author\":\"a\\u0000b\",\"committer\":\"c\",\"message\":\"m\",\"time_ms\":1}",
		"{\"rc\":0,\"id\":\"0123456789abcdef0123456789abcdef01234567\",\"tree\":\"89abcdef0123456789abcdef0123456789abcdef\",\"author\":\"a\",\"committer\":\"c\",\"message\":\"m\",\"time_ms\":\"1\"}",
		"{\"rc\":7}", "{\"rc\":-99,\"error\":\"x\"}", "[1]", "not json", "{\"rc\":0,\"rc\":0}",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct gitsrc_commit c;
		fake(f, bad[i]);
		assert_true(gitsrc_resolve(&repo, "main", &c) < 0);
		assert_null(c.author);
		assert_error_has("git helper: malformed reply");
	}
}

static void reads_longer_than_asked_or_cut_short_are_refused(void **state)
{
	struct fix *f = *state;
	struct buf out = BUF_INIT;

	/* more than the caller's cap */
	fake(f, "{\"rc\":0,\"len\":100}");
	setenv("FAKE_DATA", "x", 1);
	assert_true(gitsrc_read_file(&repo, "main", "a", &out, 10) < 0);
	assert_error_has("malformed reply (len)");
	assert_int_equal(out.len, 0);

	/* a data frame that says 10 bytes and brings 3 */
	fake(f, "{\"rc\":0,\"len\":10}");
	setenv("FAKE_DATA", "abc", 1);
	setenv("FAKE_DATA_LEN", "10", 1);
	setenv("FAKE_ONCE", "1", 1);
	assert_true(gitsrc_read_file(&repo, "main", "a", &out, 100) < 0);
	assert_error_has("git helper");
	assert_int_equal(out.len, 0);

	/* a data frame of another length than announced */
	fake(f, "{\"rc\":0,\"len\":2}");
	setenv("FAKE_DATA", "abc", 1);
	assert_true(gitsrc_read_file(&repo, "main", "a", &out, 100) < 0);
	assert_int_equal(out.len, 0);

	/* exact: taken */
	fake(f, "{\"rc\":0,\"len\":3}");
	setenv("FAKE_DATA", "abc", 1);
	assert_int_equal(gitsrc_read_file(&repo, "main", "a", &out, 100), 0);
	assert_int_equal(out.len, 3);
	assert_memory_equal(out.ptr, "abc", 3);
	buf_release(&out);
}

static void a_huge_frame_header_is_refused_without_reading_it(void **state)
{
	struct fix *f = *state;
	struct gitsrc_commit c;

	fake(f, good_commit);
	setenv("FAKE_HEADER", "7fffffff", 1);
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), OTA_ETOOBIG);
	assert_error_has("a frame of 2147483647 bytes");
}

static void a_helper_error_is_passed_on_with_its_code(void **state)
{
	struct fix *f = *state;
	struct gitsrc_commit c;

	fake(f, "{\"rc\":-3,\"error\":\"acme/fw has not been fetched yet\"}");
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), OTA_ENOTFOUND);
	assert_string_equal(ota_error_last(), "acme/fw has not been fetched yet");
}

static void a_helper_that_crashes_is_reported_with_its_signal(void **state)
{
	struct fix *f = *state;
	struct gitsrc_commit c;

	fake(f, good_commit);
	setenv("FAKE_SIGNAL", "11", 1);
	assert_true(gitsrc_resolve(&repo, "main", &c) < 0);
	assert_error_has("the git helper killed by signal 11 before answering");
}

static void a_reused_helper_that_went_away_is_replaced_transparently(void **state)
{
	struct fix *f = *state;
	struct gitsrc_commit c;
	int i;

	/* each fake answers once and exits: the second call finds the pooled
	 * helper gone and must retry on a new one */
	fake(f, good_commit);
	setenv("FAKE_ONCE", "1", 1);
	for (i = 0; i < 3; i++) {
		if (gitsrc_resolve(&repo, "main", &c) < 0)
			fail_msg("call %d: %s", i + 1, ota_error_last());
		gitsrc_commit_release(&c);
	}
}

static void an_idle_helper_is_ended_and_reaped(void **state)
{
	struct fix *f = *state;
	struct gitsrc_commit c;
	struct buf b = BUF_INIT;
	char *pidfile = xasprintf("%s/helper.pid", f->dir), *proc;
	int i;

	fake(f, good_commit);
	setenv("FAKE_PIDFILE", pidfile, 1);
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), 0);
	gitsrc_commit_release(&c);
	assert_int_equal(ota_read_file(&b, pidfile, 64), 0);
	proc = xasprintf("/proc/%s", b.ptr);
	assert_int_equal(access(proc, F_OK), 0);     /* kept for the next call */
	/* the janitor ends it after 8 s idle and reaps it: no zombie left
	 * (a zombie keeps its /proc entry); 60 s allows for a loaded machine */
	for (i = 0; i < 600 && access(proc, F_OK) == 0; i++)
		usleep(100000);
	if (access(proc, F_OK) == 0)
		fail_msg("helper %s still there (or a zombie) after 60 s idle", b.ptr);
	free(proc);
	free(pidfile);
	buf_release(&b);
}

static void the_daemon_maps_neither_libgit2_nor_libarchive(void **state)
{
	struct daemon d;
	struct buf maps = BUF_INIT;
	char *path;

	(void)state;
	h_init(&d, NULL);
	assert_int_equal(h_start(&d, NULL), 0);
	path = xasprintf("/proc/%d/maps", (int)d.pid);
	assert_int_equal(ota_read_file(&maps, path, 1 << 22), 0);
	assert_non_null(strstr(maps.ptr, "libsqlite3"));   /* the check can see libraries */
	assert_null(strstr(maps.ptr, "libgit2"));
	assert_null(strstr(maps.ptr, "libarchive"));
	buf_release(&maps);
	free(path);
	h_kill(&d, SIGTERM);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(a_well_formed_fake_reply_is_taken, setup, teardown),
		cmocka_unit_test_setup_teardown(archive_paths_outside_the_archive_directory_are_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(commits_with_made_up_ids_or_missing_fields_are_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(reads_longer_than_asked_or_cut_short_are_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(a_huge_frame_header_is_refused_without_reading_it, setup, teardown),
		cmocka_unit_test_setup_teardown(a_helper_error_is_passed_on_with_its_code, setup, teardown),
		cmocka_unit_test_setup_teardown(a_helper_that_crashes_is_reported_with_its_signal, setup, teardown),
		cmocka_unit_test_setup_teardown(a_reused_helper_that_went_away_is_replaced_transparently, setup, teardown),
		cmocka_unit_test_setup_teardown(an_idle_helper_is_ended_and_reaped, setup, teardown),
		cmocka_unit_test(the_daemon_maps_neither_libgit2_nor_libarchive),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
