/*
 * test_agentauth.c - agents and jobs have identities, steps are contained
 * (issue 12, parts 2, 7 and 8; docs/security.md "Agents and jobs", "Job
 * containment", "Artifact names").
 *
 * Each test is an attack tried against the real otacd and, where a step is
 * involved, real otacd-agent processes, over real HTTP on loopback, and
 * shows it refused: another agent's token on a job, labels an agent was not
 * registered for, a revoked agent, a stale attempt's job token, a step
 * reading the agent's credentials, a step outliving its SIGKILLed agent,
 * and artifact names that are not plain relative paths.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include <cmocka.h>

#include "../common/httpc.h"
#include "harness.h"

#define CFG_AGENT_TOKEN "cfg-agent-token-0123456789abcdef"

static const char *const no_agents[] = { "--local-agents", "0", NULL };

static const char *const hil_pipeline =
	"name: p\nstages:\n  - { name: flash, agent: { labels: [hil] }, steps: [ { run: 'echo hi' } ] }\n";

static int setup(void **state)
{
	struct daemon *d = xcalloc(1, sizeof(*d));
	h_init(d, "lease: 1500ms\nheartbeat: 300ms\n"
		  "tokens:\n"
		  "  - { name: cfg-rig, role: agent, token: " CFG_AGENT_TOKEN ", labels: [hil] }\n");
	h_start(d, no_agents);
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct daemon *d = *state;
	h_cleanup(d);
	free(d);
	return 0;
}

static int64_t now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Register name (an agent token from h_agent_add) and claim a job; returns
 * the job (with job_token) or NULL when none came within wait_ms. */
static json_t *claim(struct daemon *d, const char *token, const char *labels_json, int wait_ms)
{
	json_t *req = json_loads(labels_json, 0, NULL), *ans = NULL;
	json_t *body = json_pack("{so}", "labels", req);
	long status = h_call_as(d, token, "POST", "/api/v1/agent/register", body, NULL);
	json_decref(body);
	assert_int_equal(status, 200);
	body = json_pack("{si}", "wait_ms", wait_ms);
	status = h_call_as(d, token, "POST", "/api/v1/agent/jobs/request", body, &ans);
	json_decref(body);
	if (status == 204) {
		json_decref(ans);
		return NULL;
	}
	assert_int_equal(status, 200);
	assert_true(json_is_string(json_object_get(ans, "job_token")));
	return ans;
}

static int64_t job_id(json_t *job)
{
	return json_integer_value(json_object_get(job, "job_id"));
}

static const char *job_token(json_t *job)
{
	return json_string_value(json_object_get(job, "job_token"));
}

/* Every job route of job id, tried with token: each status into st[7]
 * (log, artifact, report, heartbeat, finish, source, inputs). */
static void try_job_routes(struct daemon *d, int64_t id, const char *token, long st[7])
{
	const char *sha_of_x = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
	const char *junit = "<testsuite name='s' tests='1'><testcase name='t'/></testsuite>";
	char *p;

	p = xasprintf("/api/v1/agent/jobs/%lld/log?offset=0", (long long)id);
	st[0] = h_raw(d, "PUT", p, token, "application/octet-stream", "forged line\n", 12, NULL);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/artifacts?name=app.bin&type=application&sha256=%s", (long long)id,
		      sha_of_x);
	st[1] = h_raw(d, "PUT", p, token, "application/octet-stream", "x", 1, NULL);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/reports?format=junit&name=r.xml", (long long)id);
	st[2] = h_raw(d, "PUT", p, token, "application/octet-stream", junit, strlen(junit), NULL);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/heartbeat", (long long)id);
	st[3] = h_raw(d, "POST", p, token, "application/octet-stream", "{}", 2, NULL);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/finish", (long long)id);
	st[4] = h_raw(d, "POST", p, token, "application/octet-stream", "{\"exit_code\":0}", 15, NULL);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/source", (long long)id);
	st[5] = h_raw(d, "GET", p, token, "application/octet-stream", NULL, 0, NULL);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/inputs", (long long)id);
	st[6] = h_raw(d, "GET", p, token, "application/octet-stream", NULL, 0, NULL);
	free(p);
}

static void assert_nothing_written(struct daemon *d, int64_t id)
{
	char *sql;
	sql = xasprintf("SELECT COUNT(*) FROM artifacts WHERE job_id = %lld", (long long)id);
	assert_int_equal(h_sql_int(d, sql), 0);
	free(sql);
	sql = xasprintf("SELECT COUNT(*) FROM reports WHERE job_id = %lld", (long long)id);
	assert_int_equal(h_sql_int(d, sql), 0);
	free(sql);
	sql = xasprintf("SELECT COUNT(*) FROM jobs WHERE id = %lld AND state = 'running'", (long long)id);
	assert_int_equal(h_sql_int(d, sql), 1);
	free(sql);
}

static void log_text(struct daemon *d, int64_t id, struct buf *out)
{
	char *p = xasprintf("/api/v1/jobs/%lld/log", (long long)id);
	assert_int_equal(h_raw(d, "GET", p, d->token, "application/octet-stream", NULL, 0, out), 200);
	free(p);
}

/* rig-b, with its own agent token and with its own job's token, on rig-a's job. */
static void other_agent_cannot_touch_a_job_it_does_not_hold(void **state)
{
	struct daemon *d = *state;
	char *ta = h_agent_add(d, "rig-a", "hil"), *tb = h_agent_add(d, "rig-b", "hil");
	json_t *ja, *jb, *req, *ans = NULL;
	long st[7];
	struct buf log = BUF_INIT;

	h_trigger(d, hil_pipeline);
	h_trigger(d, hil_pipeline);
	ja = claim(d, ta, "[\"hil\"]", 5000);
	assert_non_null(ja);
	/* rig-b claims as rig-a in the body: it still is rig-b, and gets its own job */
	req = json_pack("{ss s[s]}", "name", "rig-a", "labels", "hil");
	assert_int_equal(h_call_as(d, tb, "POST", "/api/v1/agent/register", req, NULL), 403);
	json_decref(req);
	jb = claim(d, tb, "[\"hil\"]", 5000);
	assert_non_null(jb);
	assert_true(job_id(jb) != job_id(ja));

	try_job_routes(d, job_id(ja), tb, st); /* rig-b's agent token */
	for (int i = 0; i < 7; i++)
		assert_int_equal(st[i], 403);
	try_job_routes(d, job_id(ja), job_token(jb), st); /* rig-b's job token */
	for (int i = 0; i < 7; i++)
		assert_int_equal(st[i], 403);
	try_job_routes(d, job_id(ja), d->token, st); /* not even the admin's token */
	for (int i = 0; i < 7; i++)
		assert_int_equal(st[i], 403);
	try_job_routes(d, job_id(ja), "no-such-token-0123456789abcdef", st);
	for (int i = 0; i < 7; i++)
		assert_int_equal(st[i], 401);
	assert_nothing_written(d, job_id(ja));
	log_text(d, job_id(ja), &log);
	assert_null(strstr(buf_cstr(&log), "forged"));

	/* rig-a's own job token works */
	{
		char *p = xasprintf("/api/v1/agent/jobs/%lld/log?offset=0", (long long)job_id(ja));
		assert_int_equal(h_raw(d, "PUT", p, job_token(ja), "application/octet-stream", "mine\n", 5, NULL), 200);
		free(p);
		p = xasprintf("/api/v1/agent/jobs/%lld/finish", (long long)job_id(ja));
		req = json_pack("{si}", "exit_code", 0);
		assert_int_equal(h_call_as(d, job_token(ja), "POST", p, req, &ans), 200);
		json_decref(req);
		assert_string_equal(json_string_value(json_object_get(ans, "state")), "passed");
		json_decref(ans);
		free(p);
	}
	buf_release(&log);
	json_decref(ja);
	json_decref(jb);
	free(ta);
	free(tb);
}

static void agent_cannot_claim_labels_it_is_not_registered_for(void **state)
{
	struct daemon *d = *state;
	char *t = h_agent_add(d, "builder", "arm-gcc");
	json_t *req = json_pack("{s[ss]}", "labels", "arm-gcc", "hil"), *job;
	struct buf out = BUF_INIT;
	pid_t pid;
	int status = 0;

	h_trigger(d, hil_pipeline);
	assert_int_equal(h_call_as(d, t, "POST", "/api/v1/agent/register", req, NULL), 403);
	json_decref(req);
	/* registered within its labels, it never gets the hil job */
	job = claim(d, t, "[\"arm-gcc\"]", 1000);
	assert_null(job);
	/* a config-file agent token is bound to its `labels:` too */
	req = json_pack("{s[ss]}", "labels", "hil", "arm-gcc");
	assert_int_equal(h_call_as(d, CFG_AGENT_TOKEN, "POST", "/api/v1/agent/register", req, NULL), 403);
	json_decref(req);
	/* a real agent announcing a label outside its registration is refused and stops */
	pid = h_agent_with(d, "builder", "arm-gcc,hil", t);
	for (int i = 0; i < 200 && waitpid(pid, &status, WNOHANG) == 0; i++)
		h_msleep(50);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
	h_sh(&out, "cat '%s/agent-builder.log'", d->dir);
	assert_non_null(strstr(buf_cstr(&out), "not registered for label(s) hil"));
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'"), 1);
	/* the admin's token is no agent at all */
	req = json_pack("{s[s]}", "labels", "hil");
	assert_int_equal(h_call_as(d, d->token, "POST", "/api/v1/agent/register", req, NULL), 403);
	json_decref(req);
	buf_release(&out);
	free(t);
}

static void revoked_agent_is_refused_at_once_and_its_job_retried(void **state)
{
	struct daemon *d = *state;
	char *t = h_agent_add(d, "rig-r", "hil"), *otactl = h_bin("otactl");
	struct buf out = BUF_INIT;
	json_t *job, *req;
	char *p;
	pid_t pid;
	int status = 0;
	int64_t run = h_trigger(d, "name: p\nstages:\n  - { name: flash, agent: { labels: [hil] },"
				   " steps: [ { run: 'sleep 59.123' } ] }\n");

	pid = h_agent_with(d, "rig-r", "hil", t);
	for (int i = 0; i < 200 && h_sql_int(d, "SELECT COUNT(*) FROM jobs WHERE state = 'running'") == 0; i++)
		h_msleep(50);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM jobs WHERE state = 'running'"), 1);
	/* a second agent token for checks below */
	assert_int_equal(h_sh(&out, "OTACD_URL=%s OTACD_TOKEN=%s %s agents revoke rig-r", d->url, d->token, otactl), 0);
	assert_non_null(strstr(buf_cstr(&out), "released for a retry"));
	/* the job went back to the queue as an infra failure, naming why */
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND failure = 'infra'"
				      " AND message LIKE '%revoked%'"), 1);
	/* its token no longer works, for anything */
	req = json_pack("{s[s]}", "labels", "hil");
	assert_int_equal(h_call_as(d, t, "POST", "/api/v1/agent/register", req, NULL), 401);
	assert_int_equal(h_call_as(d, t, "POST", "/api/v1/agent/jobs/request", req, NULL), 401);
	json_decref(req);
	/* the real agent learns it at its next heartbeat, kills the step and stops */
	for (int i = 0; i < 200 && waitpid(pid, &status, WNOHANG) == 0; i++)
		h_msleep(50);
	assert_false(h_pid_alive(pid));
	assert_int_equal(h_sh(&out, "pgrep -f '^sleep 59.123$' | wc -l"), 0);
	assert_int_equal(atoi(buf_cstr(&out)), 0);
	/* listed as revoked; a new registration of the name gets a new token */
	assert_int_equal(h_sh(&out, "OTACD_URL=%s OTACD_TOKEN=%s %s agents ls", d->url, d->token, otactl), 0);
	assert_non_null(strstr(buf_cstr(&out), "revoked"));
	assert_int_equal(h_sh(&out, "(OTACD_URL=%s OTACD_TOKEN=%s %s agents add rig-r --labels hil 2>/dev/null)", d->url,
			      d->token, otactl), 0);
	while (out.len && out.ptr[out.len - 1] == '\n')
		out.ptr[--out.len] = '\0';
	assert_int_equal(out.len, 64);
	assert_string_not_equal(buf_cstr(&out), t);
	job = claim(d, buf_cstr(&out), "[\"hil\"]", 5000);
	assert_non_null(job);
	assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 2);
	/* adding an agent is for admins only, and a taken name is refused */
	p = xasprintf("{\"name\":\"x\",\"labels\":[]}");
	assert_int_equal(h_raw(d, "POST", "/api/v1/agents", t, "application/octet-stream", p, strlen(p), NULL), 401);
	free(p);
	req = json_pack("{ss s[]}", "name", "rig-r", "labels");
	assert_int_equal(h_post(d, "/api/v1/agents", req, NULL), 409);
	json_decref(req);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM audit WHERE action = 'agent.revoke'"), 1);
	(void)run;
	json_decref(job);
	buf_release(&out);
	free(otactl);
	free(t);
}

static void stale_attempt_job_token_is_refused_after_lease_expiry_and_retry(void **state)
{
	struct daemon *d = *state;
	char *t1 = h_agent_add(d, "rig-1", "hil"), *t2 = h_agent_add(d, "rig-2", "hil");
	json_t *j1, *j2;
	long st[7];
	char *p;

	h_trigger(d, hil_pipeline);
	j1 = claim(d, t1, "[\"hil\"]", 5000);
	assert_non_null(j1);
	/* no heartbeat: after the 1.5 s lease the attempt is over */
	h_msleep(2500);
	j2 = claim(d, t2, "[\"hil\"]", 5000);
	assert_non_null(j2);
	assert_int_equal(job_id(j1), job_id(j2));
	assert_int_equal(json_integer_value(json_object_get(j2, "attempt")), 2);
	try_job_routes(d, job_id(j1), job_token(j1), st);
	for (int i = 0; i < 7; i++)
		assert_int_equal(st[i], 409);
	assert_nothing_written(d, job_id(j1));
	/* the current attempt's token works, and says which attempt it is */
	p = xasprintf("/api/v1/agent/jobs/%lld/log?offset=0", (long long)job_id(j2));
	assert_int_equal(h_raw(d, "PUT", p, job_token(j2), "application/octet-stream", "second\n", 7, NULL), 200);
	free(p);
	p = xasprintf("/api/v1/agent/jobs/%lld/log?offset=7&attempt=1", (long long)job_id(j2));
	assert_int_equal(h_raw(d, "PUT", p, job_token(j2), "application/octet-stream", "x\n", 2, NULL), 409);
	free(p);
	/* a finished attempt's token is refused too */
	p = xasprintf("/api/v1/agent/jobs/%lld/finish", (long long)job_id(j2));
	{
		json_t *fin = json_pack("{si}", "exit_code", 0);
		assert_int_equal(h_call_as(d, job_token(j2), "POST", p, fin, NULL), 200);
		json_decref(fin);
	}
	free(p);
	try_job_routes(d, job_id(j2), job_token(j2), st);
	for (int i = 0; i < 7; i++)
		assert_int_equal(st[i], 409);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts"), 0);
	json_decref(j1);
	json_decref(j2);
	free(t1);
	free(t2);
}

/* The step tries every way it has to the agent's token: its parent's and
 * the agent's environ, the agent's command line and memory. */
static void step_cannot_read_the_agent_token(void **state)
{
	struct daemon *d = *state;
	char *t = h_agent_add(d, "rig-s", "hil"), *yaml, *script;
	struct buf log = BUF_INIT;
	json_t *r;
	int64_t run, id;
	pid_t pid = h_agent_with(d, "rig-s", "hil", t);

	/* The token in two halves, so the script (which the agent holds in
	 * memory) never contains it whole. */
	script = xasprintf(
		"P=%ld; A=%.32s; B=%s\n"
		"for f in /proc/$PPID/environ /proc/$P/environ /proc/$P/cmdline; do\n"
		"  if tr '\\0' '\\n' < $f > /tmp/otacd-step-$$ 2>/dev/null; then grep -q \"$A$B\" /tmp/otacd-step-$$ && echo FOUND\"\"-IN-$f || echo clean-$f;\n"
		"  else echo refused-$f; fi; done\n"
		"rm -f /tmp/otacd-step-$$\n"
		"if maps=$(cat /proc/$P/maps 2>/dev/null); then\n"
		"  echo \"$maps\" | grep ' rw-p ' | while read range rest; do s=${range%%-*}; e=${range#*-};\n"
		"    dd if=/proc/$P/mem bs=65536 iflag=skip_bytes,count_bytes skip=$((0x$s)) count=$((0x$e - 0x$s)) 2>/dev/null; done |\n"
		"  grep -c -a \"$A$B\" && echo FOUND\"\"-IN-MEM || echo clean-mem\n"
		"else echo refused\"\"-mem; fi\n",
		(long)pid, t, t + 32);
	yaml = xasprintf("name: p\nstages:\n  - name: snoop\n    agent: { labels: [hil] }\n    steps:\n      - run: |\n");
	{
		struct buf y = BUF_INIT;
		buf_puts(&y, yaml);
		for (const char *s = script; *s;) {
			size_t n = strcspn(s, "\n");
			buf_printf(&y, "          %.*s\n", (int)n, s);
			s += n + (s[n] == '\n');
		}
		free(yaml);
		yaml = buf_detach(&y);
	}
	run = h_trigger(d, yaml);
	h_wait_run(d, run, 30000);
	r = h_run(d, run);
	id = json_integer_value(json_object_get(h_job(r, "snoop"), "id"));
	log_text(d, id, &log);
	if (strcmp(json_string_value(json_object_get(r, "state")), "passed") != 0)
		print_message("%s\n", buf_cstr(&log));
	assert_string_equal(json_string_value(json_object_get(r, "state")), "passed");
	json_decref(r);
	assert_null(strstr(buf_cstr(&log), t));
	assert_null(strstr(buf_cstr(&log), "FOUND-IN-")); /* the script's own text has FOUND""-IN- */
	/* the agent's own files were refused outright, not merely clean */
	{
		char *want = xasprintf("refused-/proc/%ld/environ", (long)pid);
		assert_non_null(strstr(buf_cstr(&log), want));
		free(want);
	}
	assert_non_null(strstr(buf_cstr(&log), "refused-mem"));
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	buf_release(&log);
	free(script);
	free(yaml);
	free(t);
}

/* Last time stamp of lines starting with prefix in text ("PREFIX MS"), or 0;
 * *first the first one. */
static int64_t stamps(const char *text, const char *prefix, int64_t *first)
{
	int64_t last = 0;
	size_t pl = strlen(prefix);
	*first = 0;
	for (const char *l = text; *l;) {
		size_t n = strcspn(l, "\n");
		if (n > pl && !strncmp(l, prefix, pl) && l[pl] == ' ') {
			int64_t v = atoll(l + pl + 1);
			if (!*first)
				*first = v;
			if (v > last)
				last = v;
		}
		l += n + (l[n] == '\n');
	}
	return last;
}

static void killed_agent_leaves_no_step_running_when_the_retry_starts(void **state)
{
	struct daemon *d = *state;
	char *file = xasprintf("%s/heartbeats", d->dir), *yaml;
	struct buf out = BUF_INIT;
	int64_t run, killed_at, f1, f1bg, f2, l1, l1bg, retry_started;
	pid_t a1, a2;
	json_t *r, *job;

	/* attempt 1 writes heartbeats every 100 ms forever, also from a
	 * grandchild that left the step's process group (setsid); attempt 2
	 * writes three and passes */
	yaml = xasprintf("name: p\nenv: { HB: \"%s\" }\nstages:\n  - name: flash\n    agent: { labels: [hil] }\n"
			 "    steps:\n      - run: |\n"
			 "          if [ \"$OTACD_ATTEMPT\" = 1 ]; then\n"
			 "            setsid sh -c 'while :; do echo \"bg1 $(date +%%s%%3N)\" >> $HB; sleep 0.1; done' &\n"
			 "            while :; do echo \"a1 $(date +%%s%%3N)\" >> $HB; sleep 0.1; done\n"
			 "          fi\n"
			 "          for i in 1 2 3; do echo \"a2 $(date +%%s%%3N)\" >> $HB; sleep 0.1; done\n",
			 file);
	a1 = h_agent(d, "rig-k1", "hil");
	run = h_trigger(d, yaml);
	for (int i = 0; i < 300; i++) {
		if (ota_read_file(&out, file, 1 << 20) == 0 && strstr(buf_cstr(&out), "bg1 ") &&
		    stamps(buf_cstr(&out), "a1", &f1) && f1 && now_ms() - f1 > 500)
			break;
		buf_release(&out);
		h_msleep(50);
	}
	assert_non_null(strstr(buf_cstr(&out), "bg1 "));
	{
		struct buf alog = BUF_INIT;
		h_sh(&alog, "cat '%s/agent-rig-k1.log'", d->dir);
		if (!strstr(buf_cstr(&alog), "own PID"))
			print_message("no PID namespaces on this host: the setsid grandchild will outlive the agent\n");
		buf_release(&alog);
	}
	kill(a1, SIGKILL);
	waitpid(a1, NULL, 0);
	killed_at = now_ms();
	a2 = h_agent(d, "rig-k2", "hil");
	assert_string_equal(h_wait_run(d, run, 30000), "passed");
	h_msleep(500); /* anything still alive would write more */
	buf_release(&out); /* ota_read_file starts a new buffer */
	assert_int_equal(ota_read_file(&out, file, 1 << 20), 0);
	l1 = stamps(buf_cstr(&out), "a1", &f1);
	l1bg = stamps(buf_cstr(&out), "bg1", &f1bg);
	stamps(buf_cstr(&out), "a2", &f2);
	assert_true(l1 > 0 && l1bg > 0 && f2 > 0);
	r = h_run(d, run);
	job = h_job(r, "flash");
	assert_int_equal(json_integer_value(json_object_get(job, "attempt")), 2);
	assert_string_equal(json_string_value(json_object_get(job, "agent")), "rig-k2");
	retry_started = json_integer_value(json_object_get(job, "started_at"));
	json_decref(r);
	/* the heartbeats of attempt 1 (step and escaped grandchild) stopped
	 * when its agent died, before the retry started */
	assert_true(l1 < killed_at + 200);
	assert_true(l1bg < killed_at + 200);
	assert_true(l1 < retry_started && l1bg < retry_started);
	assert_true(l1 < f2 && l1bg < f2);
	/* the killed attempt is recorded as lost */
	{
		/* ...and closed, so its job token (only its hash is stored) is
		 * refused like any stale attempt's (stale_attempt_job_token_...) */
		char *sql = xasprintf("SELECT COUNT(*) FROM job_attempts WHERE attempt = 1 AND failure = 'infra'"
				      " AND message LIKE '%%lost%%' AND token_hash IS NOT NULL AND finished_at IS NOT NULL");
		assert_int_equal(h_sql_int(d, sql), 1);
		free(sql);
	}
	kill(a2, SIGTERM);
	waitpid(a2, NULL, 0);
	buf_release(&out);
	free(yaml);
	free(file);
}

/* The fallback without namespaces: the step outlives a SIGKILLed agent,
 * but the agent restarted on the same work directory kills it before it
 * asks for work, so the retry still never overlaps it. */
static void restarted_agent_kills_what_a_process_group_step_left(void **state)
{
	struct daemon *d = *state;
	char *file = xasprintf("%s/heartbeats", d->dir), *yaml, *t = h_agent_add(d, "rig-p", "hil");
	struct buf out = BUF_INIT;
	int64_t run, killed_at, f1 = 0, f2, l1;
	pid_t a;

	yaml = xasprintf("name: p\nenv: { HB: \"%s\" }\nstages:\n  - name: flash\n    agent: { labels: [hil] }\n"
			 "    steps:\n      - run: |\n"
			 "          if [ \"$OTACD_ATTEMPT\" = 1 ]; then\n"
			 "            while :; do echo \"a1 $(date +%%s%%3N)\" >> $HB; sleep 0.1; done\n"
			 "          fi\n"
			 "          echo \"a2 $(date +%%s%%3N)\" >> $HB\n",
			 file);
	setenv("OTACD_AGENT_CONTAIN", "pgroup", 1);
	a = h_agent_with(d, "rig-p", "hil", t);
	unsetenv("OTACD_AGENT_CONTAIN");
	run = h_trigger(d, yaml);
	for (int i = 0; i < 300; i++) {
		if (ota_read_file(&out, file, 1 << 20) == 0 && stamps(buf_cstr(&out), "a1", &f1) && now_ms() - f1 > 300)
			break;
		buf_release(&out);
		h_msleep(50);
	}
	assert_true(f1 > 0);
	kill(a, SIGKILL);
	waitpid(a, NULL, 0);
	killed_at = now_ms();
	/* in this mode the step did outlive its agent: it still writes 300 ms
	 * after the kill (polled: a loaded machine runs its loop late) */
	for (int i = 0; i < 200; i++) {
		buf_release(&out); /* ota_read_file starts a new buffer */
		assert_int_equal(ota_read_file(&out, file, 1 << 20), 0);
		if (stamps(buf_cstr(&out), "a1", &f1) > killed_at + 300)
			break;
		h_msleep(50);
	}
	assert_true(stamps(buf_cstr(&out), "a1", &f1) > killed_at + 300);
	setenv("OTACD_AGENT_CONTAIN", "pgroup", 1);
	a = h_agent_with(d, "rig-p", "hil", t);
	unsetenv("OTACD_AGENT_CONTAIN");
	assert_string_equal(h_wait_run(d, run, 30000), "passed");
	h_msleep(400);
	buf_release(&out); /* ota_read_file starts a new buffer */
	assert_int_equal(ota_read_file(&out, file, 1 << 20), 0);
	l1 = stamps(buf_cstr(&out), "a1", &f1);
	stamps(buf_cstr(&out), "a2", &f2);
	/* ...until the restarted agent killed it, before the retry ran */
	assert_true(f2 > 0 && l1 < f2);
	h_sh(&out, "cat '%s/agent-rig-p.log'", d->dir);
	assert_non_null(strstr(buf_cstr(&out), "steps run in a process group (OTACD_AGENT_CONTAIN=pgroup)"));
	assert_non_null(strstr(buf_cstr(&out), "left by a step of the previous agent"));
	kill(a, SIGTERM);
	waitpid(a, NULL, 0);
	buf_release(&out);
	free(yaml);
	free(file);
	free(t);
}

static void artifact_names_that_are_not_plain_paths_are_refused(void **state)
{
	struct daemon *d = *state;
	static const char *const bad[] = {
		"fw.bin%00.txt", "a/../b", "..", "./x", "a/./b", ".", "x%01y", "x%7fy", "x%0ay", "/abs", "a//b",
		"a%5cb", "a/",
	};
	const char *sha_of_x = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
	char *t = h_agent_add(d, "rig-n", "hil"), why[128];
	struct buf body = BUF_INIT;
	json_t *job;
	char *p;

	/* the shared rule itself */
	assert_int_equal(ota_artifact_name_check("fw.bin\0.txt", 11, why, sizeof(why)), OTA_EINVAL);
	assert_string_equal(why, "it contains a NUL byte");
	assert_int_equal(ota_artifact_name_check("build/fw.bin", 12, why, sizeof(why)), 0);
	assert_int_equal(ota_artifact_name_check("a/./b", 5, why, sizeof(why)), OTA_EINVAL);

	h_trigger(d, hil_pipeline);
	job = claim(d, t, "[\"hil\"]", 5000);
	assert_non_null(job);
	for (size_t i = 0; i < OTA_ARRAY_SIZE(bad); i++) {
		p = xasprintf("/api/v1/agent/jobs/%lld/artifacts?name=%s&sha256=%s", (long long)job_id(job), bad[i],
			      sha_of_x);
		assert_int_equal(h_raw(d, "PUT", p, job_token(job), "application/octet-stream", "x", 1, &body), 400);
		assert_non_null(strstr(buf_cstr(&body), "artifact name refused"));
		free(p);
	}
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts"), 0);
	p = xasprintf("/api/v1/agent/jobs/%lld/artifacts?name=fw.bin&sha256=%s", (long long)job_id(job), sha_of_x);
	assert_int_equal(h_raw(d, "PUT", p, job_token(job), "application/octet-stream", "x", 1, NULL), 201);
	free(p);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts WHERE name = 'fw.bin'"), 1);
	json_decref(job);
	buf_release(&body);
	free(t);
}

/* The agent applies the same rule before uploading, with the reason. */
static void agent_refuses_a_control_character_in_an_artifact_name(void **state)
{
	struct daemon *d = *state;
	pid_t pid = h_agent(d, "rig-c", "hil");
	struct buf log = BUF_INIT;
	json_t *r, *job;
	int64_t run = h_trigger(d, "name: p\nstages:\n  - name: build\n    agent: { labels: [hil] }\n"
				   "    artifacts: [ { path: 'out/*' } ]\n"
				   "    steps: [ { run: 'mkdir out; printf x > \"out/$(printf \"fw\\001.bin\")\"' } ]\n");

	assert_string_equal(h_wait_run(d, run, 30000), "failed");
	r = h_run(d, run);
	job = h_job(r, "build");
	log_text(d, json_integer_value(json_object_get(job, "id")), &log);
	assert_non_null(strstr(buf_cstr(&log), "refused: it contains a control character"));
	json_decref(r);
	assert_int_equal(h_sql_int(d, "SELECT COUNT(*) FROM artifacts"), 0);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	buf_release(&log);
}

/* The remote agent's usual set-up: `otactl agents add` into a 0600 file,
 * `otacd-agent --token-file` without --name: it is the agent its token names. */
static void agent_with_a_token_file_is_the_agent_its_token_names(void **state)
{
	struct daemon *d = *state;
	char *otactl = h_bin("otactl"), *agent = h_bin("otacd-agent");
	char *tokfile = xasprintf("%s/rig-f.token", d->dir), *work = xasprintf("%s/work-f", d->dir);
	char *log = xasprintf("%s/agent-f.log", d->dir);
	struct buf out = BUF_INIT;
	json_t *r;
	int64_t run;
	pid_t pid;

	assert_int_equal(h_sh(&out, "(umask 077; OTACD_URL=%s OTACD_TOKEN=%s %s agents add rig-f --labels hil > %s)",
			      d->url, d->token, otactl, tokfile), 0);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		h_child_dies_with_test();
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(agent, agent, "--url", d->url, "--token-file", tokfile, "--labels", "hil", "--workdir", work,
		      (char *)NULL);
		_exit(127);
	}
	run = h_trigger(d, hil_pipeline);
	assert_string_equal(h_wait_run(d, run, 30000), "passed");
	r = h_run(d, run);
	assert_string_equal(json_string_value(json_object_get(h_job(r, "flash"), "agent")), "rig-f");
	json_decref(r);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	h_sh(&out, "cat '%s'", log);
	assert_non_null(strstr(buf_cstr(&out), "rig-f registered as agent"));
	buf_release(&out);
	free(otactl);
	free(agent);
	free(tokfile);
	free(work);
	free(log);
}

/* Local agents: each its own identity, its token neither in its
 * environment nor on its command line. */
static void local_agents_have_their_own_tokens_out_of_sight(void **state)
{
	struct daemon d;
	const char *const args[] = { "--local-agents", "2", NULL };
	struct buf out = BUF_INIT;
	json_t *ans = NULL, *ag;
	int64_t run;
	size_t i;
	int locals = 0;

	(void)state;
	h_init(&d, "lease: 2s\n");
	h_start(&d, args);
	run = h_trigger(&d, "name: p\nstages:\n  - { name: a, steps: [ { run: 'echo hi' } ] }\n");
	assert_string_equal(h_wait_run(&d, run, 30000), "passed");
	assert_int_equal(h_get(&d, "/api/v1/agents", &ans), 200);
	json_array_foreach(ans, i, ag)
		locals += !strncmp(json_string_value(json_object_get(ag, "name")), "local-", 6) &&
			  !strcmp(json_string_value(json_object_get(ag, "kind")), "local");
	json_decref(ans);
	assert_true(locals >= 1);
	/* nothing that looks like a token in any local agent's environ or argv */
	assert_int_equal(h_sh(&out, "for p in $(pgrep -P %ld otacd-agent); do tr '\\0' '\\n' < /proc/$p/environ;"
				   " tr '\\0' ' ' < /proc/$p/cmdline; echo; done", (long)d.pid), 0);
	assert_non_null(strstr(buf_cstr(&out), "--token-fd 3"));
	assert_null(strstr(buf_cstr(&out), "OTACD_AGENT_TOKEN"));
	for (const char *p = buf_cstr(&out); *p; p++)
		assert_false(strspn(p, "0123456789abcdef") >= 64);
	buf_release(&out);
	h_cleanup(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(other_agent_cannot_touch_a_job_it_does_not_hold, setup, teardown),
		cmocka_unit_test_setup_teardown(agent_cannot_claim_labels_it_is_not_registered_for, setup, teardown),
		cmocka_unit_test_setup_teardown(revoked_agent_is_refused_at_once_and_its_job_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(stale_attempt_job_token_is_refused_after_lease_expiry_and_retry, setup,
						teardown),
		cmocka_unit_test_setup_teardown(step_cannot_read_the_agent_token, setup, teardown),
		cmocka_unit_test_setup_teardown(killed_agent_leaves_no_step_running_when_the_retry_starts, setup,
						teardown),
		cmocka_unit_test_setup_teardown(restarted_agent_kills_what_a_process_group_step_left, setup, teardown),
		cmocka_unit_test_setup_teardown(artifact_names_that_are_not_plain_paths_are_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(agent_refuses_a_control_character_in_an_artifact_name, setup, teardown),
		cmocka_unit_test_setup_teardown(agent_with_a_token_file_is_the_agent_its_token_names, setup, teardown),
		cmocka_unit_test(local_agents_have_their_own_tokens_out_of_sight),
	};
	return cmocka_run_group_tests_name("agentauth", tests, NULL, NULL);
}
