/*
 * test_jobdur.c - job results across daemon kills (issue 19, part 2): a
 * local agent outlives a SIGKILLed otacd and reports to the restarted one,
 * so a step that ended is not run again; attempts lost to the daemon
 * itself (a restart that took the local agent with it, a stalled daemon)
 * cost the job none of its retry.infra budget.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "harness.h"

static const char *const one_agent[] = { "--local-agents", "1", NULL };

/* Lines in path (0 when absent). */
static int count_lines(const char *path)
{
	struct buf b = BUF_INIT;
	int n = 0;
	if (ota_read_file(&b, path, 1 << 20) == 0)
		for (size_t i = 0; i < b.len; i++)
			n += b.ptr[i] == '\n';
	buf_release(&b);
	return n;
}

/* The pid recorded for local agent name (STATE/local-agents/NAME), 0: none. */
static long local_agent_pid(struct daemon *d, const char *name)
{
	char *path = xasprintf("%s/state/local-agents/%s", d->dir, name);
	struct buf b = BUF_INIT;
	long pid = 0;
	if (ota_read_file(&b, path, 256) == 0)
		pid = atol(buf_cstr(&b));
	buf_release(&b);
	free(path);
	return pid;
}

/* otacd-agent processes of this daemon's state directory. */
static int agent_processes(struct daemon *d)
{
	struct buf out = BUF_INIT;
	int n;
	h_sh(&out, "pgrep -f -c -- '[-]-workdir %s/state/work/' || true", d->dir);
	n = atoi(buf_cstr(&out));
	buf_release(&out);
	return n;
}

/* Running (a zombie, which the init here may never reap, is not). */
static int running(long pid)
{
	char *path = xasprintf("/proc/%ld/stat", pid);
	struct buf b = BUF_INIT;
	const char *p;
	int alive = 0;
	if (ota_read_file(&b, path, 4096) == 0 && (p = strrchr(buf_cstr(&b), ')')))
		alive = p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
	buf_release(&b);
	free(path);
	return alive;
}

static int file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/*
 * The step ends by touching a file the test watches; the test SIGKILLs the
 * daemon `delay_ms` after it appears (the step is still in its last
 * instant, or just reporting), restarts it, and checks the job is recorded
 * passed exactly once by attempt 1 and the step ran once.
 */
static void kill_at_step_end(int delay_ms, const char *tail)
{
	struct daemon d;
	char *yaml, *count, *ended;
	int64_t run;
	long pid_before, pid_after;

	h_init(&d, "lease: 3s\nheartbeat: 300ms\n");
	h_start(&d, one_agent);
	count = xasprintf("%s/count", d.dir);
	ended = xasprintf("%s/ended", d.dir);
	yaml = xasprintf("name: once\nstages:\n  - { name: deploy, retry: { infra: 0 }, steps: [ { run: 'echo ran >> %s; touch %s%s' } ] }\n",
			 count, ended, tail);
	run = h_trigger(&d, yaml);
	for (int i = 0; i < 1000 && !file_exists(ended); i++)
		h_msleep(5);
	assert_true(file_exists(ended));
	if (delay_ms)
		h_msleep(delay_ms);
	pid_before = local_agent_pid(&d, "local-1");
	h_kill(&d, SIGKILL);
	assert_true(pid_before > 0);
	assert_true(running(pid_before)); /* the agent outlived its daemon */
	h_start(&d, one_agent);
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	/* once: one side effect, one attempt, one final state */
	assert_int_equal(count_lines(count), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE state = 'passed' AND attempt = 1"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM events WHERE kind = 'job.final'"), 1);
	/* the new daemon adopted the agent: no second one on its work directory */
	pid_after = local_agent_pid(&d, "local-1");
	assert_int_equal(pid_after, pid_before);
	assert_int_equal(agent_processes(&d), 1);
	/* and the adopted agent takes the next job */
	run = h_trigger(&d, "name: next\nstages:\n  - { name: a, steps: [ { run: 'true' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	assert_int_equal(agent_processes(&d), 1);
	h_cleanup(&d);
	/* an orderly stop stops the adopted agent too */
	assert_false(running(pid_before));
	free(yaml);
	free(count);
	free(ended);
}

static void daemon_killed_while_the_step_ends_records_it_once(void **state)
{
	(void)state;
	/* killed while the step's last command still runs: it ends and is
	 * reported while no daemon is there */
	kill_at_step_end(0, "; sleep 0.3");
}

static void daemon_killed_just_after_the_step_ended_records_it_once(void **state)
{
	(void)state;
	/* killed as the agent reports, at a few delays around the report */
	kill_at_step_end(0, "");
	kill_at_step_end(3, "");
	kill_at_step_end(12, "");
}

/*
 * Power loss takes the daemon and its local agent at once: the restarted
 * daemon's new local agent releases the job as a `daemon` failure, which
 * is retried without touching retry.infra (here 0).
 */
static void daemon_and_local_agent_killed_costs_no_infra_retry(void **state)
{
	struct daemon d;
	char *yaml, *started;
	int64_t run;
	long agent;

	(void)state;
	h_init(&d, "lease: 2s\nheartbeat: 300ms\n");
	h_start(&d, one_agent);
	started = xasprintf("%s/started", d.dir);
	yaml = xasprintf("name: lost\nstages:\n  - { name: a, retry: { infra: 0 }, steps: [ { run: 'touch %s; sleep 1' } ] }\n",
			 started);
	run = h_trigger(&d, yaml);
	for (int i = 0; i < 1000 && !file_exists(started); i++)
		h_msleep(5);
	assert_true(file_exists(started));
	agent = local_agent_pid(&d, "local-1");
	assert_true(agent > 0);
	h_kill(&d, SIGKILL);
	kill((pid_t)agent, SIGKILL);
	for (int i = 0; i < 200 && running(agent); i++)
		h_msleep(10);
	h_start(&d, one_agent);
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE attempt = 1 AND failure = 'daemon'"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE attempt = 2 AND failure IS NULL"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT infra_retries_left FROM jobs"), 0);
	h_cleanup(&d);
	free(yaml);
	free(started);
}

/*
 * Repeated daemon kills (some taking the local agents with them) during a
 * multi-job run: every run passes although no job may spend an infra retry.
 */
static void repeated_daemon_kills_do_not_exhaust_retry_infra(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "2", NULL };
	int64_t runs[6];
	char *yaml;

	(void)state;
	h_init(&d, "lease: 2s\nheartbeat: 300ms\n");
	h_start(&d, args);
	yaml = xasprintf("name: multi\nenv: { LOG: \"%s/executions\" }\nstages:\n"
			 "  - { name: a, retry: { infra: 0 }, steps: [ { run: 'echo a-$OTACD_RUN_ID >> $LOG; sleep 0.3' } ] }\n"
			 "  - { name: b, needs: [a], retry: { infra: 0 }, steps: [ { run: 'echo b-$OTACD_RUN_ID >> $LOG; sleep 0.3' } ] }\n",
			 d.dir);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(runs); i++)
		runs[i] = h_trigger(&d, yaml);
	for (int k = 0; k < 6; k++) {
		h_msleep(250 + 70 * k);
		if (k % 2) { /* as a power loss: the local agents go too */
			long a1 = local_agent_pid(&d, "local-1"), a2 = local_agent_pid(&d, "local-2");
			h_kill(&d, SIGKILL);
			if (a1 > 0)
				kill((pid_t)a1, SIGKILL);
			if (a2 > 0)
				kill((pid_t)a2, SIGKILL);
			h_msleep(50);
		} else {
			h_kill(&d, SIGKILL);
		}
		h_start(&d, args);
	}
	for (size_t i = 0; i < OTA_ARRAY_SIZE(runs); i++)
		assert_string_equal(h_wait_run(&d, runs[i], 60000), "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE failure = 'infra'"), 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE state = 'passed'"), 2 * (int64_t)OTA_ARRAY_SIZE(runs));
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM events WHERE kind = 'job.final'"), 2 * (int64_t)OTA_ARRAY_SIZE(runs));
	/* no agent left over from the kills: the two of the last start.  One
	 * on its way out may still be listed for a moment (an agent exiting
	 * runs ASan's leak check; a step's child shows the agent's command
	 * line until it execs otacd-reaper), so allow it time to go. */
	for (int i = 0; i < 200 && agent_processes(&d) > 2; i++)
		h_msleep(50);
	if (agent_processes(&d) > 2) {
		struct buf ps = BUF_INIT;
		h_sh(&ps, "pgrep -a -f -- '[-]-workdir %s/state/work/'; ps -ef --forest | grep -v grep | grep -A3 otacd-agent", d.dir);
		fail_msg("more than two agents are left:\n%s", buf_cstr(&ps));
	}
	h_cleanup(&d);
	free(yaml);
}

/*
 * A stopped daemon (SIGSTOP for longer than a lease) hears no heartbeats:
 * once it runs again, its running jobs get a new lease instead of being
 * recorded lost, and the healthy agent's attempt stands.
 */
static void stalled_daemon_does_not_call_its_agents_lost(void **state)
{
	struct daemon d;
	int64_t run;

	(void)state;
	h_init(&d, "lease: 1s\nheartbeat: 200ms\n");
	h_start(&d, one_agent);
	run = h_trigger(&d, "name: stall\nstages:\n  - { name: a, retry: { infra: 0 }, steps: [ { run: 'sleep 9' } ] }\n");
	for (int i = 0; i < 400; i++) {
		if (h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND agent_id > 0") == 1)
			break;
		h_msleep(25);
	}
	kill(d.pid, SIGSTOP);
	h_msleep(7000);
	kill(d.pid, SIGCONT);
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts"), 1);
	h_cleanup(&d);
}

/* A process's user + system CPU time so far, in seconds. */
static double cpu_seconds(pid_t pid)
{
	char path[64], text[1024];
	unsigned long ut = 0, st = 0;
	const char *p;
	FILE *fp;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if (!(fp = fopen(path, "r")))
		return 0;
	n = fread(text, 1, sizeof(text) - 1, fp);
	fclose(fp);
	text[n] = '\0';
	/* fields 14 and 15, counted after the command's closing parenthesis */
	if (!(p = strrchr(text, ')')) ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/*
 * The disk holding otacd's state fills up for longer than a lease: the
 * agent's heartbeats fail (otacd cannot commit), but that is otacd's
 * fault, so once the disk has room the attempt goes on and is not
 * recorded lost.  Needs root (a small tmpfs); skipped otherwise.
 */
static void full_disk_does_not_call_healthy_agents_lost(void **state)
{
	struct daemon d;
	char *mnt = h_tmpdir(), *old = getenv("TMPDIR") ? xstrdup(getenv("TMPDIR")) : NULL, *filler;
	struct buf out = BUF_INIT;
	int64_t run;
	double cpu_full;

	(void)state;
	if (mount("tmpfs", mnt, "tmpfs", 0, "size=48m") < 0) {
		fprintf(stderr, "jobdur: cannot mount a tmpfs (not root?): full-disk test skipped\n");
		rmdir(mnt);
		free(mnt);
		free(old);
		skip();
	}
	setenv("TMPDIR", mnt, 1);
	h_init(&d, "lease: 1s\nheartbeat: 200ms\n");
	if (old)
		setenv("TMPDIR", old, 1);
	else
		unsetenv("TMPDIR");
	h_start(&d, one_agent);
	run = h_trigger(&d, "name: full\nstages:\n  - { name: a, retry: { infra: 0 }, steps: [ { run: 'sleep 6' } ] }\n");
	for (int i = 0; i < 400; i++) {
		if (h_sql_int(&d, "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND agent_id > 0") == 1)
			break;
		h_msleep(25);
	}
	filler = xasprintf("%s/filler", mnt);
	h_sh(&out, "dd if=/dev/zero of=%s bs=1M count=64 2>/dev/null; true", filler);
	cpu_full = -cpu_seconds(d.pid);
	h_msleep(3000); /* three leases without a commit */
	cpu_full += cpu_seconds(d.pid);
	unlink(filler);
	if (strcmp(h_wait_run(&d, run, 30000), "passed") != 0) {
		json_t *r = h_run(&d, run);
		char *text = json_dumps(h_job(r, "a"), JSON_COMPACT);
		fail_msg("the job did not pass: %s", text);
		free(text);
		json_decref(r);
	}
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts"), 1);
	/* while the disk was full the engine retried its lease check about
	 * once a second: a tight loop would burn about a core for 3 s */
	if (cpu_full > 1.0)
		fail_msg("otacd used %.2f s of CPU in 3 s of full disk", cpu_full);
	h_cleanup(&d);
	umount2(mnt, MNT_DETACH);
	rmdir(mnt);
	buf_release(&out);
	free(filler);
	free(mnt);
	free(old);
}

/*
 * The attack: a step starts an otacd-agent of its own named local-1 with a
 * token it chose and forges the adoption record to point at it, hoping the
 * next daemon adopts it (and hands it local jobs).  The step's processes
 * live in the step's PID namespace: not adopted, its token refused.
 */
static void forged_adoption_record_is_not_adopted(void **state)
{
	static const char fake[] = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0";
	struct daemon d;
	struct buf out = BUF_INIT, rec = BUF_INIT;
	char *agent = h_bin("otacd-agent"), *yaml, *path, *url;
	long fake_pid = 0;
	int64_t run;

	(void)state;
	h_init(&d, "lease: 3s\nheartbeat: 300ms\n");
	h_start(&d, one_agent);
	yaml = xasprintf("name: evil\nstages:\n  - { name: a, steps: [ { run: '%s --url http://127.0.0.1:9 --name local-1"
			 " --token %s --workdir %s/fakework > /dev/null 2>&1 & sleep 4' } ] }\n", agent, fake, d.dir);
	run = h_trigger(&d, yaml);
	for (int i = 0; i < 400 && fake_pid <= 0; i++) {
		buf_clear(&out);
		h_sh(&out, "pgrep -f -- '^%s --url http://127.0.0.1:9 ' | head -1", agent);
		fake_pid = atol(buf_cstr(&out));
		h_msleep(25);
	}
	assert_true(fake_pid > 0);
	/* the forged record: the fake's (host) pid, the hash of its token */
	path = xasprintf("%s/state/local-agents/local-1", d.dir);
	assert_int_equal(ota_read_file(&rec, path, 1024), 0);
	url = strrchr(buf_cstr(&rec), ' ');
	assert_non_null(url);
	buf_clear(&out);
	assert_int_equal(h_sh(&out, "printf %%s %s | sha256sum | cut -c1-64 | tr -d '\\n'", fake), 0);
	{
		char *line = xasprintf("%ld %s%s", fake_pid, buf_cstr(&out), url);
		assert_int_equal(ota_write_file_atomic(path, line, strlen(line), 0600), 0);
		free(line);
	}
	h_kill(&d, SIGKILL);
	h_start(&d, one_agent);
	/* not adopted: its token is unknown to the new daemon */
	{
		json_t *body = json_pack("{ss s[s]}", "name", "local-1", "labels", "local");
		assert_int_equal(h_call_as(&d, fake, "POST", "/api/v1/agent/register", body, NULL), 401);
		json_decref(body);
	}
	buf_clear(&out);
	h_sh(&out, "grep -c 'pid %ld) kept running: adopted' %s/otacd.log || true", fake_pid, d.dir);
	assert_int_equal(atoi(buf_cstr(&out)), 0);
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	h_cleanup(&d);
	buf_release(&out);
	buf_release(&rec);
	free(path);
	free(yaml);
	free(agent);
}

/* An agent asks for work (role agent, its own token); the job's id or 0
 * when the answer held none. */
static int64_t ask_for_work(struct daemon *d, const char *token, int *attempt)
{
	json_t *ans = NULL, *req = json_pack("{si}", "wait_ms", 3000);
	long status = h_call_as(d, token, "POST", "/api/v1/agent/jobs/request", req, &ans);
	int64_t job = 0;

	json_decref(req);
	assert_true(status == 200 || status == 204);
	if (status == 200) {
		job = json_integer_value(json_object_get(ans, "job_id"));
		*attempt = (int)json_integer_value(json_object_get(ans, "attempt"));
	}
	json_decref(ans);
	return job;
}

/*
 * The daemon commits a claim and dies before its answer reaches the agent:
 * the agent, knowing of no job, asks the next daemon for work.  That
 * attempt never ran and was lost by otacd, so it costs the job no retry
 * (with `retry: { infra: 0 }` the job is handed out again).  The same
 * question without a restart between is the agent's own fault: "infra".
 */
static void claim_whose_answer_a_daemon_kill_lost_costs_no_retry(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "0", NULL };
	const char *yaml = "name: lost\nstages:\n"
			   "  - { name: a, agent: { labels: [remote] }, retry: { infra: 0 }, steps: [ { run: 'true' } ] }\n";
	char *token;
	int64_t agent, run, job, again;
	int attempt = 0;
	json_t *ans = NULL, *req;

	(void)state;
	h_init(&d, NULL);
	h_start(&d, args);
	token = h_agent_add(&d, "r1", "remote");
	assert_non_null(token);
	req = json_pack("{s[s]}", "labels", "remote");
	assert_int_equal(h_call_as(&d, token, "POST", "/api/v1/agent/register", req, &ans), 200);
	agent = json_integer_value(json_object_get(ans, "agent_id"));
	json_decref(ans);
	json_decref(req);

	run = h_trigger(&d, yaml);
	job = ask_for_work(&d, token, &attempt);
	assert_true(job > 0);
	assert_int_equal(attempt, 1);
	/* ... and that answer is "lost": the daemon dies */
	h_kill(&d, SIGKILL);
	h_start(&d, args);
	again = ask_for_work(&d, token, &attempt);
	assert_int_equal(again, job);       /* handed out again at once */
	assert_int_equal(attempt, 2);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE attempt = 1 AND failure = 'daemon'"), 1);
	assert_int_equal(h_sql_int(&d, "SELECT infra_retries_left FROM jobs"), 0);
	/* no restart now: asking again while holding attempt 2 is the agent's
	 * fault, and with no infra retry left the job fails */
	again = ask_for_work(&d, token, &attempt);
	assert_int_equal(again, 0);
	assert_int_equal(h_sql_int(&d, "SELECT COUNT(*) FROM job_attempts WHERE attempt = 2 AND failure = 'infra'"), 1);
	assert_string_equal(h_wait_run(&d, run, 30000), "failed");
	(void)agent;
	h_cleanup(&d);
	free(token);
}

int main(void)
{
	const char *only = getenv("JOBDUR_ONLY");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(daemon_killed_while_the_step_ends_records_it_once),
		cmocka_unit_test(daemon_killed_just_after_the_step_ended_records_it_once),
		cmocka_unit_test(daemon_and_local_agent_killed_costs_no_infra_retry),
		cmocka_unit_test(repeated_daemon_kills_do_not_exhaust_retry_infra),
		cmocka_unit_test(claim_whose_answer_a_daemon_kill_lost_costs_no_retry),
		cmocka_unit_test(stalled_daemon_does_not_call_its_agents_lost),
		cmocka_unit_test(forged_adoption_record_is_not_adopted),
		cmocka_unit_test(full_disk_does_not_call_healthy_agents_lost),
	};
	if (only) /* one test, by name (while debugging) */
		cmocka_set_test_filter(only);
	return cmocka_run_group_tests_name("jobdur", tests, NULL, NULL);
}
