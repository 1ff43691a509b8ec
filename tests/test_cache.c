/*
 * test_cache.c - caches between runs (agents/cache.c, docs/pipeline.md
 * "Caches"): the real otacd and otacd-agent on loopback, pipelines uploaded
 * as admin (a protected run) or as an operator (an unprotected one), and
 * the agent's cache directory looked at on disk.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../common/cachekey.h"
#include "harness.h"

#define OPS_TOKEN "ops-token-0123456789abcdef0123456789"
#define PIPE_NAME "cachepipe"

static const char *const no_agents[] = { "--local-agents", "0", NULL };

/* A stage that prints what it found in .deps, then writes content there. */
static const char pipeline_fmt[] =
	"name: " PIPE_NAME "\n"
	"stages:\n"
	"  - name: build\n"
	"    cache: { key: \"%s\", paths: [ .deps ], restore_keys: [ %s ] }\n"
	"    steps:\n"
	"      - run: |\n"
	"          if [ -f .deps/lib.txt ]; then echo \"FOUND $(cat .deps/lib.txt) hit=$OTACD_CACHE_HIT\"; "
	"else echo MISSING-CACHE; fi\n"
	"          mkdir -p .deps && echo %s > .deps/lib.txt && head -c %d /dev/zero > .deps/blob\n";

static void start(struct daemon *d, pid_t *agent)
{
	h_init(d, "lease: 3s\nheartbeat: 300ms\n"
		  "tokens:\n  - { name: ops, role: operator, token: " OPS_TOKEN " }\n");
	h_start(d, no_agents);
	*agent = h_agent(d, "c1", "test");
}

static void stop(struct daemon *d, pid_t agent)
{
	kill(agent, SIGTERM);
	waitpid(agent, NULL, 0);
	h_cleanup(d);
}

/* Upload a run as admin (protected) or as ops (unprotected); its id. */
static int64_t trigger(struct daemon *d, int protected_run, const char *key, const char *restore,
		       const char *content, int blob)
{
	char *y = xasprintf(pipeline_fmt, key, restore, content, blob);
	json_t *req = json_pack("{ss ss}", "pipeline", y, "file", "cache.yml"), *ans = NULL;
	long status = h_call_as(d, protected_run ? d->token : OPS_TOKEN, "POST", "/api/v1/runs", req, &ans);
	int64_t id = json_integer_value(json_object_get(ans, "id"));
	assert_int_equal(status, 201);
	json_decref(req);
	json_decref(ans);
	free(y);
	return id;
}

/* The log of run's build job (its latest attempt). */
static char *run_log(struct daemon *d, int64_t run)
{
	json_t *r = h_run(d, run);
	struct buf out = BUF_INIT;
	char *path = xasprintf("/api/v1/jobs/%lld/log", (long long)json_integer_value(json_object_get(h_job(r, "build"), "id")));
	h_sh(&out, "curl -s -H 'Authorization: Bearer %s' %s%s", d->token, d->url, path);
	free(path);
	json_decref(r);
	return buf_detach(&out);
}

/* Run to the end; its log, asserting the state. */
static char *run_and_log(struct daemon *d, int protected_run, const char *key, const char *restore,
			 const char *content, int blob, const char *state)
{
	int64_t id = trigger(d, protected_run, key, restore, content, blob);
	assert_string_equal(h_wait_run(d, id, 60000), state);
	return run_log(d, id);
}

static void assert_in(const char *hay, const char *needle)
{
	if (!strstr(hay, needle))
		fail_msg("'%s' not in:\n%s", needle, hay);
}

/* WORKDIR/cache/NSDIR of the agent c1 for namespace ns. */
static char *ns_dir(struct daemon *d, const char *ns)
{
	char hex[65];
	ota_sha256_hex(ns, strlen(ns), hex);
	hex[32] = '\0';
	return xasprintf("%s/work-c1/cache/%s", d->dir, hex);
}

static int exists(const char *dir, const char *name)
{
	char *p = xasprintf("%s/%s", dir, name);
	int there = access(p, F_OK) == 0;
	free(p);
	return there;
}

/* Entries of the cache dir whose name starts with prefix. */
static int count_prefix(const char *dir, const char *prefix)
{
	DIR *dd = opendir(dir);
	struct dirent *de;
	int n = 0;
	while (dd && (de = readdir(dd)))
		n += !strncmp(de->d_name, prefix, strlen(prefix));
	if (dd)
		closedir(dd);
	return n;
}

static void second_run_restores_key_change_misses_and_prefix_hits(void **state)
{
	struct daemon d;
	pid_t agent;
	char *log;
	(void)state;
	start(&d, &agent);

	log = run_and_log(&d, 1, "deps-a", "", "alpha", 10, "passed");
	assert_in(log, "MISSING-CACHE");
	assert_in(log, "cache: saved deps-a");
	free(log);
	/* same key: the file of run 1, an exact hit, not saved again */
	log = run_and_log(&d, 1, "deps-a", "", "changed", 10, "passed");
	assert_in(log, "FOUND alpha hit=true");
	assert_in(log, "not saved again");
	free(log);
	/* another key and no restore_keys: a miss */
	log = run_and_log(&d, 1, "deps-b", "", "beta", 10, "passed");
	assert_in(log, "MISSING-CACHE");
	free(log);
	/* a miss on the key, a hit on the prefix: the newest deps-* entry */
	log = run_and_log(&d, 1, "deps-c", "\"deps-\"", "gamma", 10, "passed");
	assert_in(log, "FOUND beta hit=false");
	assert_in(log, "restore_keys prefix");
	free(log);
	stop(&d, agent);
}

static void unprotected_run_cannot_poison_a_protected_cache(void **state)
{
	struct daemon d;
	pid_t agent;
	char *log, *prot;
	(void)state;
	start(&d, &agent);
	prot = ns_dir(&d, "pipeline:" PIPE_NAME "|protected");

	/* a protected run saves "base" */
	log = run_and_log(&d, 1, "base", "", "trusted", 10, "passed");
	free(log);
	assert_true(exists(prot, "base.tar"));
	/* an operator's run writes key "tool" with bad content ... */
	log = run_and_log(&d, 0, "tool", "", "evil", 10, "passed");
	assert_in(log, "cache: saved tool");
	free(log);
	assert_false(exists(prot, "tool.tar"));
	{
		/* it went to the run's own namespace instead */
		struct buf out = BUF_INIT;
		assert_int_equal(h_sh(&out, "find %s/work-c1/cache -name tool.tar | wc -l", d.dir), 0);
		assert_int_equal(atoi(buf_cstr(&out)), 1);
		buf_release(&out);
	}
	/* ... which a protected run with that key never restores */
	log = run_and_log(&d, 1, "tool", "\"to\"", "good", 10, "passed");
	assert_in(log, "MISSING-CACHE");
	free(log);
	/* but the unprotected run may read what protected runs built */
	log = run_and_log(&d, 0, "base", "", "x", 10, "passed");
	assert_in(log, "FOUND trusted hit=true");
	free(log);
	/* the pipeline cannot name the scope, nor paths out of the workspace:
	 * refused as an invalid pipeline (422) */
	{
		static const char *const bad[] = {
			"name: p\nstages:\n  - name: b\n    cache: { key: k, paths: [ x ], scope: protected }\n"
			"    steps: [ { run: 'true' } ]\n",
			"name: p\nstages:\n  - name: b\n    cache: { key: k, paths: [ ../up ] }\n    steps: [ { run: 'true' } ]\n",
			"name: p\nstages:\n  - name: b\n    cache: { key: k, paths: [ /etc ] }\n    steps: [ { run: 'true' } ]\n",
			"name: p\nstages:\n  - name: b\n    cache: { key: ../k, paths: [ x ] }\n    steps: [ { run: 'true' } ]\n",
			"name: p\nstages:\n  - name: b\n    cache: { key: \"{{ hashFiles('../x') }}\", paths: [ x ] }\n"
			"    steps: [ { run: 'true' } ]\n",
		};
		for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
			json_t *req = json_pack("{ss ss}", "pipeline", bad[i], "file", "bad.yml"), *ans = NULL;
			assert_int_equal(h_call_as(&d, OPS_TOKEN, "POST", "/api/v1/runs", req, &ans), 422);
			json_decref(req);
			json_decref(ans);
		}
	}
	/* an entry that would write outside the workspace is refused on
	 * restore (and removed), whoever put it there */
	{
		struct buf out = BUF_INIT;
		assert_int_equal(h_sh(&out, "mkdir -p %s/evil/sub && cd %s/evil/sub && echo x > ../escape.txt && "
					    "tar -cPf %s/evil.tar ../escape.txt && rm ../escape.txt",
				      d.dir, d.dir, prot), 0);
		log = run_and_log(&d, 1, "evil", "", "y", 10, "failed");
		assert_in(log, "refused and removed");
		assert_in(log, "'..'");
		free(log);
		assert_false(exists(prot, "evil.tar"));
		assert_int_equal(h_sh(&out, "find %s -name escape.txt | wc -l", d.dir), 0);
		assert_int_equal(atoi(buf_cstr(&out)), 0);
		/* through a symbolic link: link -> outside, then link/file */
		assert_int_equal(h_sh(&out, "cd %s/evil && rm -rf t && mkdir -p t out && ln -s %s/evil/out t/link && "
					    "tar -cf %s/evil2.tar -C t link && rm t/link && mkdir t/link && echo x > t/link/f && "
					    "tar -rf %s/evil2.tar -C t link/f", d.dir, d.dir, prot, prot), 0);
		log = run_and_log(&d, 1, "evil2", "", "y", 10, "failed");
		assert_in(log, "refused and removed");
		free(log);
		assert_false(exists(prot, "evil2.tar"));
		assert_false(exists(d.dir, "evil/out/f"));
		buf_release(&out);
	}
	free(prot);
	stop(&d, agent);
}

static void least_recently_used_entries_go_past_the_limit(void **state)
{
	struct daemon d;
	pid_t agent;
	char *log, *prot;
	(void)state;
	/* each entry is about 100 KiB: three do not fit in 250 KiB */
	setenv("OTACD_AGENT_CACHE_MAX", "250K", 1);
	setenv("OTACD_AGENT_CACHE_ENTRY_MAX", "150K", 1);
	start(&d, &agent);
	unsetenv("OTACD_AGENT_CACHE_MAX");
	unsetenv("OTACD_AGENT_CACHE_ENTRY_MAX");
	prot = ns_dir(&d, "pipeline:" PIPE_NAME "|protected");

	free(run_and_log(&d, 1, "e1", "", "one", 100000, "passed"));
	free(run_and_log(&d, 1, "e2", "", "two", 100000, "passed"));
	assert_true(exists(prot, "e1.tar") && exists(prot, "e2.tar"));
	/* e1 used again: e2 is now the least recently used */
	log = run_and_log(&d, 1, "e1", "", "one", 100000, "passed");
	assert_in(log, "FOUND one hit=true");
	free(log);
	log = run_and_log(&d, 1, "e3", "", "three", 100000, "passed");
	assert_in(log, "evicted e2.tar");
	free(log);
	assert_true(exists(prot, "e1.tar"));
	assert_false(exists(prot, "e2.tar"));
	assert_true(exists(prot, "e3.tar"));
	/* one entry over the per-cache cap is not saved at all */
	log = run_and_log(&d, 1, "big", "", "big", 200000, "passed");
	assert_in(log, "big not saved: over the per-cache limit");
	free(log);
	assert_false(exists(prot, "big.tar"));
	free(prot);
	stop(&d, agent);
}

static void agent_killed_mid_save_leaves_no_cache_to_restore(void **state)
{
	struct daemon d;
	pid_t agent;
	char *prot, *stall, *cachedir, *log;
	int64_t id;
	(void)state;
	h_init(&d, "lease: 3s\nheartbeat: 300ms\n");
	h_start(&d, no_agents);
	stall = xasprintf("%s/stalled", d.dir);
	setenv("OTACD_TEST_CACHE_STALL_FILE", stall, 1);
	agent = h_agent(&d, "c1", "test");
	unsetenv("OTACD_TEST_CACHE_STALL_FILE");
	prot = ns_dir(&d, "pipeline:" PIPE_NAME "|protected");
	cachedir = xasprintf("%s/work-c1/cache", d.dir);

	id = trigger(&d, 1, "k", "", "first", 50000);
	for (int waited = 0; access(stall, F_OK) != 0; waited += 50) {
		assert_true(waited < 60000);
		h_msleep(50);
	}
	/* the temp file is complete but not renamed: kill the agent there */
	kill(agent, SIGKILL);
	waitpid(agent, NULL, 0);
	assert_int_equal(count_prefix(cachedir, ".tmp-"), 1);
	assert_false(exists(prot, "k.tar"));

	/* restarted: the leftover is swept, the job's retry finds no cache */
	agent = h_agent(&d, "c1", "test");
	assert_string_equal(h_wait_run(&d, id, 60000), "passed");
	log = run_log(&d, id);
	assert_in(log, "MISSING-CACHE");
	assert_in(log, "cache: saved k");
	free(log);
	assert_int_equal(count_prefix(cachedir, ".tmp-"), 0);
	log = run_and_log(&d, 1, "k", "", "second", 10, "passed");
	assert_in(log, "FOUND first hit=true");
	free(log);
	free(prot);
	free(stall);
	free(cachedir);
	stop(&d, agent);
}

/* ---- runs from git: protected main, an unprotected feature branch ------ */

#define REPO "acme/fw"
#define SECRET "push-secret-0123456789"

static const char git_pipeline[] =
	"name: fw\n"
	"stages:\n"
	"  - name: build\n"
	"    cache: { key: \"deps-{{ hashFiles('deps.lock') }}\", paths: [ .deps ] }\n"
	"    steps:\n"
	"      - run: |\n"
	"          if [ -f .deps/lib.txt ]; then echo \"FOUND $(cat .deps/lib.txt) hit=$OTACD_CACHE_HIT\"; "
	"else echo MISSING-CACHE; fi\n"
	"          mkdir -p .deps && echo \"from-$OTACD_REF\" > .deps/lib.txt\n";

/* The newest run's id, 0 when none. */
static int64_t newest_run(struct daemon *d)
{
	json_t *ans = NULL, *run;
	int64_t id = 0;
	size_t i;
	assert_int_equal(h_get(d, "/api/v1/runs?limit=500", &ans), 200);
	json_array_foreach(json_object_get(ans, "runs"), i, run)
		if (json_integer_value(json_object_get(run, "id")) > id)
			id = json_integer_value(json_object_get(run, "id"));
	json_decref(ans);
	return id;
}

/* Push branch of work, wait for the run it made; its build job's log. */
static char *push_and_log(struct daemon *d, const char *work, const char *branch, int protected_run)
{
	int64_t before = newest_run(d), id;
	json_t *run;
	char *log;

	h_git_push(work, branch);
	for (int waited = 0; (id = newest_run(d)) == before; waited += 50) {
		assert_true(waited < 60000);
		h_msleep(50);
	}
	assert_string_equal(h_wait_run(d, id, 60000), "passed");
	run = h_run(d, id);
	assert_int_equal(json_is_true(json_object_get(run, "protected")), protected_run);
	json_decref(run);
	log = run_log(d, id);
	return log;
}

static void feature_branch_reads_main_cache_but_main_never_restores_its_writes(void **state)
{
	struct daemon d;
	struct buf out = BUF_INIT;
	pid_t agent;
	char *base = h_tmpdir(), *origin = xasprintf("%s/origin.git", base), *work = xasprintf("%s/work", base);
	char *src = xasprintf("%s/tests/githook.sh", getenv("OTACD_SRC") ? getenv("OTACD_SRC") : ".");
	char *hook = xasprintf("%s/hooks/post-receive", origin), *config, *log;
	(void)state;

	config = xasprintf("lease: 3s\nheartbeat: 300ms\nrepositories:\n"
			   "  - { name: " REPO ", url: \"%s\", secret: " SECRET " }\n", origin);
	h_init(&d, config);
	h_start(&d, no_agents);
	agent = h_agent(&d, "c1", "test");
	assert_int_equal(h_sh(&out, "git init -q --bare -b main %s && git init -q -b main %s && cd %s && "
				    "git remote add origin %s", origin, work, work, origin), 0);
	assert_int_equal(h_sh(&out, "printf '#!/bin/sh\\nOTACD_HOOK_URL=%s OTACD_HOOK_PROVIDER=github "
				    "OTACD_HOOK_SECRET=%s OTACD_HOOK_REPO=%s OTACD_HOOK_LOG=%s/hook.log exec %s\\n' > %s"
				    " && chmod +x %s", d.url, SECRET, REPO, base, src, hook, hook), 0);
	h_git_commit_file(work, "deps.lock", "v1\n", "deps v1");
	h_git_commit_file(work, ".otacd/pipeline.yml", git_pipeline, "pipeline");

	/* main (protected) fills the cache for deps.lock v1 */
	log = push_and_log(&d, work, "main", 1);
	assert_in(log, "MISSING-CACHE");
	assert_in(log, "cache: saved deps-");
	free(log);
	/* a feature branch with the same deps.lock reads it */
	assert_int_equal(h_git(work, &out, "checkout -q -b feature/x"), 0);
	h_git_commit_file(work, "README", "x\n", "feature work");
	log = push_and_log(&d, work, "feature/x", 0);
	assert_in(log, "FOUND from-refs/heads/main hit=true");
	free(log);
	/* it changes deps.lock: a new key, saved in its own namespace ... */
	h_git_commit_file(work, "deps.lock", "v2\n", "deps v2");
	log = push_and_log(&d, work, "feature/x", 0);
	assert_in(log, "MISSING-CACHE");
	assert_in(log, "cache: saved deps-");
	free(log);
	/* ... which main, with the same deps.lock, never restores */
	assert_int_equal(h_git(work, &out, "checkout -q main"), 0);
	h_git_commit_file(work, "deps.lock", "v2\n", "deps v2 on main");
	log = push_and_log(&d, work, "main", 1);
	assert_in(log, "MISSING-CACHE");
	free(log);
	h_git_commit_file(work, "README", "y\n", "more");
	log = push_and_log(&d, work, "main", 1);
	assert_in(log, "FOUND from-refs/heads/main hit=true");
	free(log);

	stop(&d, agent);
	if (!getenv("OTACD_KEEP"))
		h_sh(&out, "rm -rf %s", base);
	buf_release(&out);
	free(config);
	free(hook);
	free(src);
	free(work);
	free(origin);
	free(base);
}

/* hashFiles() on the agent: the same files give the same key, a changed
 * file another, a link out of the workspace is not followed. */
static void hash_files_key_follows_the_files(void **state)
{
	char *dir = h_tmpdir(), *real, k1[CACHEKEY_MAX + 1], k2[CACHEKEY_MAX + 1], k3[CACHEKEY_MAX + 1], err[256];
	const char *t = "deps-{{ hashFiles('*.lock', \"sub/*.txt\") }}";
	struct buf out = BUF_INIT;
	(void)state;
	real = realpath(dir, NULL);
	assert_int_equal(h_sh(&out, "cd %s && echo a > deps.lock && mkdir sub && echo b > sub/x.txt", real), 0);
	assert_int_equal(cachekey_render(k1, t, strlen(t), real, err, sizeof(err)), 0);
	assert_int_equal(strlen(k1), 5 + 64);
	assert_int_equal(cachekey_render(k2, t, strlen(t), real, err, sizeof(err)), 0);
	assert_string_equal(k1, k2);
	assert_int_equal(h_sh(&out, "cd %s && echo c > sub/x.txt", real), 0);
	assert_int_equal(cachekey_render(k2, t, strlen(t), real, err, sizeof(err)), 0);
	assert_string_not_equal(k1, k2);
	assert_int_equal(h_sh(&out, "cd %s && ln -s /etc/passwd sub/y.txt", real), 0);
	assert_int_equal(cachekey_render(k3, t, strlen(t), real, err, sizeof(err)), 0);
	assert_string_equal(k2, k3);
	assert_int_equal(cachekey_render(k3, "a b", 3, NULL, err, sizeof(err)), OTA_EINVAL);
	assert_non_null(strstr(err, "character ' '"));
	h_sh(&out, "rm -rf %s", real);
	buf_release(&out);
	free(real);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hash_files_key_follows_the_files),
		cmocka_unit_test(second_run_restores_key_change_misses_and_prefix_hits),
		cmocka_unit_test(unprotected_run_cannot_poison_a_protected_cache),
		cmocka_unit_test(feature_branch_reads_main_cache_but_main_never_restores_its_writes),
		cmocka_unit_test(least_recently_used_entries_go_past_the_limit),
		cmocka_unit_test(agent_killed_mid_save_leaves_no_cache_to_restore),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests_name("cache", tests, NULL, NULL);
}
