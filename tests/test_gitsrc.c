/*
 * test_gitsrc.c - git mirrors, revision lookup, file reads and tree archives
 * (orchestrator/gitsrc.c) against real repositories made with the git CLI in
 * a temporary directory.  The git CLI is the reference: commit and tree ids
 * must equal `git rev-parse`, archives must extract to what `git archive`
 * extracts to.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/util.h"
#include "../orchestrator/gitsrc.h"
#include "harness.h"

#define PIPELINE_YML "name: sensor-node\nstages:\n  - { name: build, kind: build, steps: [ { run: make } ] }\n"

struct fix {
	char *dir;      /* temp dir: sources live here */
	char *state;    /* gitsrc's state dir */
};

/* ---- helpers ------------------------------------------------------------ */

/* Run a shell command; fail the test unless it exits 0; return its output
 * without the trailing newline (caller frees). */
static char *sh(const char *fmt, ...) OTA_PRINTF(1, 2);
static char *sh(const char *fmt, ...)
{
	struct buf cmd = BUF_INIT, out = BUF_INIT;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	buf_vprintf(&cmd, fmt, ap);
	va_end(ap);
	rc = h_sh(&out, "{ %s; }", buf_cstr(&cmd));     /* every command's stderr captured */
	if (rc != 0)
		fail_msg("command failed (%d): %s\n%s", rc, buf_cstr(&cmd), buf_cstr(&out));
	buf_release(&cmd);
	while (out.len && out.ptr[out.len - 1] == '\n')
		out.ptr[--out.len] = '\0';
	return buf_detach(&out);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * A firmware-like repository at dir on branch main: a pipeline file, an
 * executable script, a symlink, nested directories, an empty file, a UTF-8
 * name, a path longer than ustar's 100 bytes and a submodule entry; tag v1
 * (lightweight) and v2 (annotated).
 */
static void make_repo(const char *dir)
{
	free(sh("set -e; mkdir -p '%s' && cd '%s' && git init -q -b main . && "
		"mkdir -p .otacd scripts src/drivers docs "
		"deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/cccccccccccccccccccccccccccccc && "
		"printf '%%s' '%s' > .otacd/pipeline.yml && "
		"printf '# sensor-node\\n' > README.md && "
		"printf '#!/bin/sh\\nmake \"$@\"\\n' > scripts/build.sh && chmod 755 scripts/build.sh && "
		"printf 'int main(void) { return 0; }\\n' > src/main.c && "
		"printf 'void uart_init(void);\\n' > src/drivers/uart.h && "
		"printf '#include \"uart.h\"\\nvoid uart_init(void) {}\\n' > src/drivers/uart.c && "
		"ln -s ../README.md docs/link && "
		"printf 'caf\\303\\251\\n' > 'docs/donn\xc3\xa9""es.txt' && "
		": > empty.txt && printf 'not utf-8\\n' > \"$(printf 'raw\\377name')\" && "
		"printf 'deep\\n' > deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/cccccccccccccccccccccccccccccc/file-with-a-long-name.txt && "
		"git add -A && git commit -q -m 'first: the board boots' && "
		"git update-index --add --cacheinfo 160000,$(git rev-parse HEAD),vendor/lib && "
		"git commit -q -m 'second: add a submodule' -m 'With a body.' && "
		"git tag v1 && git tag -a v2 -m 'release v2'",
		dir, dir, PIPELINE_YML));
}

static int setup(void **state)
{
	struct fix *f = xcalloc(1, sizeof(*f));
	f->dir = h_tmpdir();
	f->state = xasprintf("%s/state", f->dir);
	assert_int_equal(gitsrc_init(f->state), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	gitsrc_shutdown();
	free(sh("rm -rf '%s'", f->dir));
	free(f->state);
	free(f->dir);
	free(f);
	return 0;
}

static void assert_resolves_to(const struct gitsrc_repo *repo, const char *what, const char *want)
{
	struct gitsrc_commit c;
	int rc = gitsrc_resolve(repo, what, &c);
	if (rc != 0)
		fail_msg("resolve %s: %d %s", what, rc, ota_error_last());
	assert_string_equal(c.id, want);
	gitsrc_commit_release(&c);
}

/* ---- mirrors and resolve -------------------------------------------------- */

static void fetch_from_local_path_mirrors_branches_and_tags(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir);
	struct gitsrc_repo repo = { .name = "acme/sensor-node", .url = src };
	struct gitsrc_commit c;
	char *head, *tree, *first, *tagobj, *ct, *abbrev;

	make_repo(src);
	assert_int_equal(gitsrc_fetch(&repo), 0);
	head = sh("git -C '%s' rev-parse main", src);
	tree = sh("git -C '%s' rev-parse 'main^{tree}'", src);
	first = sh("git -C '%s' rev-parse main~1", src);
	tagobj = sh("git -C '%s' rev-parse v2", src);
	ct = sh("git -C '%s' log -1 --format=%%ct main", src);
	abbrev = sh("git -C '%s' rev-parse --short=7 main", src);

	assert_int_equal(gitsrc_resolve(&repo, "main", &c), 0);
	assert_string_equal(c.id, head);
	assert_string_equal(c.tree, tree);
	assert_string_equal(c.author, "Ada Lovelace <ada@example.com>");
	assert_string_equal(c.committer, "Grace Hopper <grace@example.com>");
	assert_string_equal(c.message, "second: add a submodule\n\nWith a body.\n");
	assert_int_equal(c.time_ms, strtoll(ct, NULL, 10) * 1000);
	gitsrc_commit_release(&c);

	assert_resolves_to(&repo, "refs/heads/main", head);
	assert_resolves_to(&repo, "HEAD", head);
	assert_resolves_to(&repo, "v1", head);              /* lightweight tag */
	assert_resolves_to(&repo, "v2", head);              /* annotated: peeled */
	assert_resolves_to(&repo, "refs/tags/v2", head);
	assert_resolves_to(&repo, tagobj, head);            /* the tag object's id */
	assert_resolves_to(&repo, head, head);              /* full id */
	assert_resolves_to(&repo, abbrev, head);            /* abbreviated id */
	assert_resolves_to(&repo, first, first);            /* an older commit */
	assert_string_not_equal(tagobj, head);

	free(head); free(tree); free(first); free(tagobj); free(ct); free(abbrev);
	free(src);
}

static void fetch_from_file_url_works_like_a_path(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir), *url = xasprintf("file://%s", src);
	struct gitsrc_repo repo = { .name = "acme/by-url", .url = url };
	char *head;

	make_repo(src);
	assert_int_equal(gitsrc_fetch(&repo), 0);
	head = sh("git -C '%s' rev-parse main", src);
	assert_resolves_to(&repo, "main", head);
	/* a second fetch with nothing new is a no-op that succeeds */
	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_resolves_to(&repo, "main", head);
	free(head);
	free(url);
	free(src);
}

static void unknown_revisions_and_unfetched_repos_are_not_found(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir);
	struct gitsrc_repo repo = { .name = "acme/sensor-node", .url = src };
	struct gitsrc_commit c;

	make_repo(src);
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), "acme/sensor-node"));
	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_int_equal(gitsrc_resolve(&repo, "no-such-branch", &c), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), "no-such-branch"));
	assert_int_equal(gitsrc_resolve(&repo, "refs/heads/nope", &c), OTA_ENOTFOUND);
	assert_int_equal(gitsrc_resolve(&repo, "0000000000000000000000000000000000000000", &c), OTA_ENOTFOUND);
	assert_int_equal(gitsrc_resolve(&repo, "deadbeef", &c), OTA_ENOTFOUND);
	assert_int_equal(gitsrc_resolve(&repo, "main~1", &c), OTA_ENOTFOUND);   /* no expressions */
	assert_int_equal(gitsrc_resolve(&repo, "", &c), OTA_EINVAL);
	gitsrc_commit_release(&c);
	free(src);
}

static void mirror_paths_differ_for_names_that_sanitise_alike(void **state)
{
	struct fix *f = *state;
	struct gitsrc_repo a = { .name = "acme/x" }, b = { .name = "acme_x" };
	char *pa = gitsrc_mirror_path(&a), *pb = gitsrc_mirror_path(&b);
	char *prefix = xasprintf("%s/git/acme_x-", f->state);

	assert_string_not_equal(pa, pb);
	assert_true(!strncmp(pa, prefix, strlen(prefix)));
	assert_true(!strncmp(pb, prefix, strlen(prefix)));
	assert_string_equal(pa + strlen(pa) - 4, ".git");
	assert_null(strchr(pa + strlen(f->state) + 5, '/'));
	free(prefix);
	free(pa);
	free(pb);
}

static void mirror_follows_a_changed_url(void **state)
{
	struct fix *f = *state;
	char *a = xasprintf("%s/a", f->dir), *b = xasprintf("%s/b", f->dir);
	struct gitsrc_repo repo = { .name = "acme/moved", .url = a };
	struct gitsrc_commit c;
	char *only_a, *head_b;

	make_repo(a);
	make_repo(b);
	free(sh("cd '%s' && git checkout -q -b only-in-a && git commit -q --allow-empty -m a", a));
	free(sh("cd '%s' && git commit -q --allow-empty -m 'b moves on'", b));
	only_a = sh("git -C '%s' rev-parse only-in-a", a);
	head_b = sh("git -C '%s' rev-parse main", b);
	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_resolves_to(&repo, "only-in-a", only_a);
	assert_resolves_to(&repo, "HEAD", only_a);     /* a's checked-out branch */

	repo.url = b;
	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_resolves_to(&repo, "main", head_b);
	assert_resolves_to(&repo, "HEAD", head_b);
	assert_int_equal(gitsrc_resolve(&repo, "only-in-a", &c), OTA_ENOTFOUND);
	free(only_a);
	free(head_b);
	free(a);
	free(b);
}

/* ---- read_file ------------------------------------------------------------ */

static void read_file_returns_exact_bytes_and_enotfound_for_missing(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir);
	struct gitsrc_repo repo = { .name = "acme/sensor-node", .url = src };
	struct buf out = BUF_INIT;
	char *head;

	make_repo(src);
	assert_int_equal(gitsrc_fetch(&repo), 0);
	head = sh("git -C '%s' rev-parse main", src);

	assert_int_equal(gitsrc_read_file(&repo, head, ".otacd/pipeline.yml", &out, 65536), 0);
	assert_int_equal(out.len, strlen(PIPELINE_YML));
	assert_memory_equal(out.ptr, PIPELINE_YML, out.len);
	/* read again into the same buffer: replaced, not appended */
	assert_int_equal(gitsrc_read_file(&repo, "v2", "scripts/build.sh", &out, 65536), 0);
	assert_string_equal(buf_cstr(&out), "#!/bin/sh\nmake \"$@\"\n");
	assert_int_equal(gitsrc_read_file(&repo, head, "empty.txt", &out, 65536), 0);
	assert_int_equal(out.len, 0);
	assert_string_equal(buf_cstr(&out), "");

	assert_int_equal(gitsrc_read_file(&repo, head, ".otacd/missing.yml", &out, 65536), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), ".otacd/missing.yml"));
	assert_int_equal(gitsrc_read_file(&repo, head, "nodir/file", &out, 65536), OTA_ENOTFOUND);
	assert_int_equal(gitsrc_read_file(&repo, "nope", ".otacd/pipeline.yml", &out, 65536), OTA_ENOTFOUND);
	assert_int_equal(gitsrc_read_file(&repo, head, "src", &out, 65536), OTA_EINVAL);
	assert_non_null(strstr(ota_error_last(), "directory"));
	assert_int_equal(gitsrc_read_file(&repo, head, "docs/link", &out, 65536), OTA_EINVAL);
	assert_int_equal(gitsrc_read_file(&repo, head, "vendor/lib", &out, 65536), OTA_EINVAL);
	assert_int_equal(gitsrc_read_file(&repo, head, ".otacd/pipeline.yml", &out, 10), OTA_ETOOBIG);

	buf_release(&out);
	free(head);
	free(src);
}

/* ---- history rewrites ------------------------------------------------------ */

static void force_push_and_branch_deletion_are_followed(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir);
	struct gitsrc_repo repo = { .name = "acme/rewrite", .url = src };
	struct gitsrc_commit c;
	char *feature, *head, *old_head;

	make_repo(src);
	free(sh("cd '%s' && git checkout -q -b feature && git commit -q --allow-empty -m wip && git checkout -q main", src));
	assert_int_equal(gitsrc_fetch(&repo), 0);
	feature = sh("git -C '%s' rev-parse feature", src);
	old_head = sh("git -C '%s' rev-parse main", src);
	assert_resolves_to(&repo, "feature", feature);
	assert_resolves_to(&repo, "v1", old_head);

	/* rewrite main, move the lightweight tag, delete the branch */
	free(sh("cd '%s' && git commit -q --amend -m 'rewritten' && git tag -f v1 >/dev/null && git branch -q -D feature", src));
	head = sh("git -C '%s' rev-parse main", src);
	assert_string_not_equal(head, old_head);

	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_int_equal(gitsrc_resolve(&repo, "feature", &c), OTA_ENOTFOUND);
	assert_int_equal(gitsrc_resolve(&repo, "refs/heads/feature", &c), OTA_ENOTFOUND);
	assert_resolves_to(&repo, "main", head);
	assert_resolves_to(&repo, "v1", head);
	assert_resolves_to(&repo, head, head);
	free(feature);
	free(head);
	free(old_head);
	free(src);
}

/* ---- archives ------------------------------------------------------------ */

static void archive_extracts_like_git_archive_with_modes_and_symlinks(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir);
	struct gitsrc_repo repo = { .name = "acme/sensor-node", .url = src };
	char *tar = NULL, *out, *ct;

	make_repo(src);
	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_int_equal(gitsrc_archive(&repo, "main", &tar), 0);
	assert_non_null(strstr(tar, "/git/archives/"));

	free(sh("mkdir -p '%s/ours' '%s/theirs' && tar -xf '%s' -C '%s/ours' && "
		"git -C '%s' archive --format=tar main | tar -xf - -C '%s/theirs'",
		f->dir, f->dir, tar, f->dir, src, f->dir));
	/* git archive writes an empty directory for a submodule; we leave it out */
	free(sh("test -d '%s/theirs/vendor/lib' && rmdir '%s/theirs/vendor/lib' && "
		"test ! -e '%s/ours/vendor/lib'", f->dir, f->dir, f->dir));
	free(sh("diff -r --no-dereference '%s/ours' '%s/theirs'", f->dir, f->dir));

	free(sh("test -x '%s/ours/scripts/build.sh' && test ! -x '%s/ours/README.md' && "
		"test -L '%s/ours/docs/link'", f->dir, f->dir, f->dir));
	out = sh("readlink '%s/ours/docs/link'", f->dir);
	assert_string_equal(out, "../README.md");
	free(out);
	out = sh("cat '%s/ours/docs/donn\xc3\xa9""es.txt'", f->dir);
	assert_string_equal(out, "caf\xc3\xa9");
	free(out);

	/* entry names are relative with no "./"; mtimes are the commit time */
	out = sh("tar -tf '%s' 2>/dev/null | grep -c -e '^\\./' -e '^/' || true", tar);
	assert_string_equal(out, "0");
	free(out);
	out = sh("tar -tf '%s' 2>/dev/null | head -1", tar);
	assert_string_equal(out, ".otacd/");
	free(out);
	ct = sh("git -C '%s' log -1 --format=%%ct main", src);
	out = sh("stat -c %%Y '%s/ours/src/drivers/uart.c'", f->dir);
	assert_string_equal(out, ct);
	free(out);
	out = sh("tar -tvf '%s' 2>/dev/null | awk '{print $2}' | sort -u", tar);
	assert_string_equal(out, "root/root");
	free(out);

	free(ct);
	free(tar);
	free(src);
}

static void archive_is_cached_by_tree_and_not_rebuilt(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir);
	struct gitsrc_repo repo = { .name = "acme/sensor-node", .url = src };
	char *tar1 = NULL, *tar2 = NULL, *tar3 = NULL, *sum1, *sum2, *parent;
	struct stat st1, st2;

	make_repo(src);
	/* a later commit with the same tree shares the archive */
	free(sh("cd '%s' && git commit -q --allow-empty -m 'same tree'", src));
	assert_int_equal(gitsrc_fetch(&repo), 0);
	assert_int_equal(gitsrc_archive(&repo, "main", &tar1), 0);
	assert_int_equal(stat(tar1, &st1), 0);
	h_msleep(20);
	parent = sh("git -C '%s' rev-parse main~1", src);
	assert_int_equal(gitsrc_archive(&repo, parent, &tar2), 0);
	free(parent);
	assert_string_equal(tar1, tar2);
	assert_int_equal(stat(tar2, &st2), 0);
	assert_int_equal(st1.st_ino, st2.st_ino);
	assert_int_equal(st1.st_mtim.tv_sec, st2.st_mtim.tv_sec);
	assert_int_equal(st1.st_mtim.tv_nsec, st2.st_mtim.tv_nsec);

	/* rebuilt from scratch, the same commit gives the same bytes */
	sum1 = sh("sha256sum < '%s'", tar1);
	assert_int_equal(unlink(tar1), 0);
	assert_int_equal(gitsrc_archive(&repo, "main", &tar3), 0);
	sum2 = sh("sha256sum < '%s'", tar3);
	assert_string_equal(sum1, sum2);
	/* and no temporary files are left behind */
	free(sum1);
	sum1 = sh("ls '%s/git/archives' | wc -l", f->state);
	assert_string_equal(sum1, "1");

	free(sum1);
	free(sum2);
	free(tar1);
	free(tar2);
	free(tar3);
	free(src);
}

struct archiver {
	const struct gitsrc_repo *repo;
	const char *commit;
	char *tar;
	int rc;
};

static void *archive_main(void *arg)
{
	struct archiver *t = arg;
	t->rc = gitsrc_archive(t->repo, t->commit, &t->tar);
	return NULL;
}

static void concurrent_archives_of_one_tree_build_one_file(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir), *n;
	struct gitsrc_repo repo = { .name = "acme/matrix", .url = src };
	struct archiver t[4];
	pthread_t th[4];
	int i;

	make_repo(src);
	assert_int_equal(gitsrc_fetch(&repo), 0);
	for (i = 0; i < 4; i++) {
		t[i] = (struct archiver){ &repo, i % 2 ? "main" : "v2", NULL, 0 };
		assert_int_equal(pthread_create(&th[i], NULL, archive_main, &t[i]), 0);
	}
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < 4; i++) {
		assert_int_equal(t[i].rc, 0);
		assert_string_equal(t[i].tar, t[0].tar);
	}
	n = sh("ls '%s/git/archives' | wc -l", f->state);
	assert_string_equal(n, "1");
	free(sh("tar -tf '%s' >/dev/null", t[0].tar));
	for (i = 0; i < 4; i++)
		free(t[i].tar);
	free(n);
	free(src);
}

/* ---- failures and credentials --------------------------------------------- */

static void fetch_of_missing_path_fails_fast_naming_the_repo(void **state)
{
	struct fix *f = *state;
	char *url = xasprintf("%s/does-not-exist", f->dir);
	struct gitsrc_repo repo = { .name = "acme/missing", .url = url };
	struct gitsrc_commit c;
	int64_t t0 = now_ms();

	assert_true(gitsrc_fetch(&repo) < 0);
	assert_true(now_ms() - t0 < 5000);
	assert_non_null(strstr(ota_error_last(), "cannot fetch acme/missing from"));
	assert_non_null(strstr(ota_error_last(), url));
	assert_non_null(strstr(ota_error_last(), "No such file or directory"));
	/* and it leaves no empty mirror behind */
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), OTA_ENOTFOUND);
	assert_non_null(strstr(ota_error_last(), "has not been fetched"));
	free(url);
}

static void credentials_in_url_never_appear_in_errors(void **state)
{
	struct gitsrc_repo repo = {
		.name = "acme/creds",
		.url = "https://user:secret@127.0.0.1:1/x.git",
		.token = "tok-should-not-leak",
	};
	int64_t t0 = now_ms();
	(void)state;

	assert_true(gitsrc_fetch(&repo) < 0);
	assert_true(now_ms() - t0 < 5000);
	assert_non_null(strstr(ota_error_last(), "cannot fetch acme/creds from https://user:***@127.0.0.1:1/x.git"));
	assert_null(strstr(ota_error_last(), "secret"));
	assert_null(strstr(ota_error_last(), "tok-should-not-leak"));
}

/* A loopback HTTP server that answers every request with 401. */
struct deny_server {
	int fd;
	int port;
	int stop;
	int requests;
	pthread_t thread;
	pthread_mutex_t mu;
};

static void *deny_main(void *arg)
{
	struct deny_server *s = arg;
	static const char reply[] = "HTTP/1.1 401 Unauthorized\r\n"
				    "WWW-Authenticate: Basic realm=\"git\"\r\n"
				    "Content-Length: 0\r\nConnection: close\r\n\r\n";
	for (;;) {
		struct pollfd p = { s->fd, POLLIN, 0 };
		char req[8192];
		size_t got = 0;
		int c;

		pthread_mutex_lock(&s->mu);
		if (s->stop) {
			pthread_mutex_unlock(&s->mu);
			break;
		}
		pthread_mutex_unlock(&s->mu);
		if (poll(&p, 1, 50) <= 0)
			continue;
		if ((c = accept(s->fd, NULL, NULL)) < 0)
			continue;
		while (got < sizeof(req) - 1) {
			ssize_t n = read(c, req + got, sizeof(req) - 1 - got);
			if (n <= 0)
				break;
			got += (size_t)n;
			req[got] = '\0';
			if (strstr(req, "\r\n\r\n"))
				break;
		}
		pthread_mutex_lock(&s->mu);
		s->requests++;
		pthread_mutex_unlock(&s->mu);
		if (write(c, reply, sizeof(reply) - 1) < 0)
			(void)0;
		close(c);
	}
	return NULL;
}

static void deny_start(struct deny_server *s)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);

	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->fd >= 0);
	assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->fd, 16), 0);
	assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &len), 0);
	s->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&s->thread, NULL, deny_main, s), 0);
}

static int deny_stop(struct deny_server *s)
{
	int n;
	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	close(s->fd);
	n = s->requests;
	pthread_mutex_destroy(&s->mu);
	return n;
}

static void rejected_token_gives_up_after_two_attempts(void **state)
{
	struct deny_server s;
	char *url, *url_with_user;
	int64_t t0;
	int n;
	(void)state;

	deny_start(&s);
	url = xasprintf("http://127.0.0.1:%d/acme/fw.git", s.port);
	url_with_user = xasprintf("http://bob:hunter22@127.0.0.1:%d/acme/fw.git", s.port);
	{
		struct gitsrc_repo repo = { .name = "acme/fw", .url = url, .token = "tok-s3cret-value" };
		t0 = now_ms();
		assert_int_equal(gitsrc_fetch(&repo), OTA_EAUTH);
		assert_true(now_ms() - t0 < 5000);
		assert_non_null(strstr(ota_error_last(), "cannot fetch acme/fw"));
		assert_non_null(strstr(ota_error_last(), "rejected"));
		assert_null(strstr(ota_error_last(), "tok-s3cret-value"));
	}
	{
		/* no token: fails at once with a message that says so */
		struct gitsrc_repo repo = { .name = "acme/fw", .url = url };
		assert_int_equal(gitsrc_fetch(&repo), OTA_EAUTH);
		assert_non_null(strstr(ota_error_last(), "no token is configured"));
	}
	{
		/* credentials in the URL are tried by libgit2 first, then ours */
		struct gitsrc_repo repo = { .name = "acme/fw", .url = url_with_user, .token = "tok-s3cret-value" };
		assert_int_equal(gitsrc_fetch(&repo), OTA_EAUTH);
		assert_null(strstr(ota_error_last(), "hunter22"));
		assert_null(strstr(ota_error_last(), "tok-s3cret-value"));
		assert_non_null(strstr(ota_error_last(), "bob:***@"));
	}
	n = deny_stop(&s);
	/* 1 + 2 attempts, 1 without credentials, 1 + 1 (URL) + 2 attempts */
	assert_in_range(n, 3, 12);
	free(url);
	free(url_with_user);
}

/* ---- concurrency ------------------------------------------------------------ */

struct fetcher {
	struct gitsrc_repo repo;
	const char *want;
	int rc;
	char err[256];
};

static void *fetch_main(void *arg)
{
	struct fetcher *t = arg;
	for (int i = 0; i < 3 && t->rc == 0; i++) {
		struct gitsrc_commit c;
		if ((t->rc = gitsrc_fetch(&t->repo)) == 0 &&
		    (t->rc = gitsrc_resolve(&t->repo, "main", &c)) == 0) {
			if (strcmp(c.id, t->want))
				t->rc = -100;
			gitsrc_commit_release(&c);
		}
	}
	if (t->rc)
		snprintf(t->err, sizeof(t->err), "%s", ota_error_last());
	return NULL;
}

static void concurrent_fetches_of_one_and_several_mirrors_all_succeed(void **state)
{
	struct fix *f = *state;
	char *src[3], *head[3];
	struct fetcher t[6];
	pthread_t th[6];
	int i;

	for (i = 0; i < 3; i++) {
		src[i] = xasprintf("%s/src%d", f->dir, i);
		make_repo(src[i]);
		free(sh("cd '%s' && git commit -q --allow-empty -m 'repo %d'", src[i], i));
		head[i] = sh("git -C '%s' rev-parse main", src[i]);
	}
	for (i = 0; i < 6; i++) {
		int r = i < 4 ? 0 : i - 3;     /* four on repo 0, one each on 1 and 2 */
		memset(&t[i], 0, sizeof(t[i]));
		t[i].repo.name = r == 0 ? "acme/shared" : r == 1 ? "acme/one" : "acme/two";
		t[i].repo.url = src[r];
		t[i].want = head[r];
	}
	for (i = 0; i < 6; i++)
		assert_int_equal(pthread_create(&th[i], NULL, fetch_main, &t[i]), 0);
	for (i = 0; i < 6; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < 6; i++)
		if (t[i].rc)
			fail_msg("thread %d (%s): %d %s", i, t[i].repo.name, t[i].rc, t[i].err);
	for (i = 0; i < 3; i++) {
		free(src[i]);
		free(head[i]);
	}
}

static void fetch_resolve_and_archive_of_a_small_repo_take_milliseconds(void **state)
{
	struct fix *f = *state;
	char *src = xasprintf("%s/src", f->dir), *tar = NULL;
	struct gitsrc_repo repo = { .name = "acme/timed", .url = src };
	struct gitsrc_commit c;
	int64_t t0, t1, t2, t3, t4;

	make_repo(src);
	t0 = now_ms();
	assert_int_equal(gitsrc_fetch(&repo), 0);
	t1 = now_ms();
	assert_int_equal(gitsrc_resolve(&repo, "main", &c), 0);
	t2 = now_ms();
	assert_int_equal(gitsrc_archive(&repo, c.id, &tar), 0);
	t3 = now_ms();
	assert_int_equal(gitsrc_fetch(&repo), 0);
	t4 = now_ms();
	print_message("first fetch %lld ms, resolve %lld ms, archive %lld ms, no-op fetch %lld ms\n",
		      (long long)(t1 - t0), (long long)(t2 - t1), (long long)(t3 - t2), (long long)(t4 - t3));
	assert_true(t3 - t0 < 5000);
	gitsrc_commit_release(&c);
	free(tar);
	free(src);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(fetch_from_local_path_mirrors_branches_and_tags, setup, teardown),
		cmocka_unit_test_setup_teardown(fetch_from_file_url_works_like_a_path, setup, teardown),
		cmocka_unit_test_setup_teardown(unknown_revisions_and_unfetched_repos_are_not_found, setup, teardown),
		cmocka_unit_test_setup_teardown(mirror_paths_differ_for_names_that_sanitise_alike, setup, teardown),
		cmocka_unit_test_setup_teardown(mirror_follows_a_changed_url, setup, teardown),
		cmocka_unit_test_setup_teardown(read_file_returns_exact_bytes_and_enotfound_for_missing, setup, teardown),
		cmocka_unit_test_setup_teardown(force_push_and_branch_deletion_are_followed, setup, teardown),
		cmocka_unit_test_setup_teardown(archive_extracts_like_git_archive_with_modes_and_symlinks, setup, teardown),
		cmocka_unit_test_setup_teardown(archive_is_cached_by_tree_and_not_rebuilt, setup, teardown),
		cmocka_unit_test_setup_teardown(concurrent_archives_of_one_tree_build_one_file, setup, teardown),
		cmocka_unit_test_setup_teardown(fetch_of_missing_path_fails_fast_naming_the_repo, setup, teardown),
		cmocka_unit_test_setup_teardown(credentials_in_url_never_appear_in_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(rejected_token_gives_up_after_two_attempts, setup, teardown),
		cmocka_unit_test_setup_teardown(concurrent_fetches_of_one_and_several_mirrors_all_succeed, setup, teardown),
		cmocka_unit_test_setup_teardown(fetch_resolve_and_archive_of_a_small_repo_take_milliseconds, setup, teardown),
	};

	/* commits made by the fixtures: fixed identities, no user config */
	setenv("GIT_AUTHOR_NAME", "Ada Lovelace", 1);
	setenv("GIT_AUTHOR_EMAIL", "ada@example.com", 1);
	setenv("GIT_AUTHOR_DATE", "2020-01-02T03:04:05Z", 1);
	setenv("GIT_COMMITTER_NAME", "Grace Hopper", 1);
	setenv("GIT_COMMITTER_EMAIL", "grace@example.com", 1);
	setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
	setenv("GIT_CONFIG_GLOBAL", "/dev/null", 1);
	return cmocka_run_group_tests_name("gitsrc", tests, NULL, NULL);
}
