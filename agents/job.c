/*
 * job.c - one job from its spec to its end: job_run.
 *
 * Why: the order of a job's phases is the contract with the daemon and the
 * user: a fresh workspace, the source (transfer.c), the cache restored
 * (cache.c), a hil job's inputs, the steps (step.c; twice in clean
 * workspaces for `reproducible: true`, the artifacts' digests compared),
 * toolchain versions and reports (stagework.c), the artifacts
 * (transfer.c), the cache saved only after a job that passed, then
 * `finish` (protocol.c), retried until acknowledged.
 *
 * How: job_run fills struct job from the spec (the attempt's job token
 * taken out of it, the secrets into a mask set), starts the heartbeat
 * (protocol.c) and log sender (logsend.c) threads, runs the phases on the
 * main thread, closes and drains the log, reports, joins the threads and
 * removes the workspace.  A phase returns an enum outcome; the first that
 * is not OUT_OK decides the job's failure.
 */
#include "../common/httpc.h"
#include "../common/log.h"
#include "../common/mask.h"
#include "../common/util.h"
#include "agent.h"
#include "stagework.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- workspace ------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	if (remove(path) < 0 && errno != ENOENT)
		return ota_error_set(OTA_ERROR, "cannot remove %s: %s", path, strerror(errno));
	return 0;
}

static int unlock_dir(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	if (flag == FTW_D && (st->st_mode & 0700) != 0700)
		chmod(path, (st->st_mode & 07777) | 0700);
	return 0;
}

/* rm -rf path (directories a job made read-only included). */
static int job_rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : ota_error_set(OTA_ERROR, "cannot stat %s: %s", path, strerror(errno));
	nftw(path, unlock_dir, 32, FTW_PHYS);
	return nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS) ? OTA_ERROR : 0;
}

/* ---- what some stage kinds add (stagework.c) -------------------------- */

static void sw_log(void *arg, const char *line)
{
	logsend_printf(arg, "%s\n", line);
}

static struct sw_job sw_job_of(struct job *j, char **envp)
{
	return (struct sw_job){ j->a->url, j->token, j->id_url, j->attempt, j->ws, envp, sw_log, j };
}

static enum outcome sw_outcome(int rc)
{
	return rc == 0 ? OUT_OK : rc == SW_FAIL ? OUT_SCRIPT : rc == SW_LOST ? OUT_LOST : OUT_INFRA;
}

/* A hil job's inputs (its board's build artifacts) into $OTACD_INPUTS. */
static enum outcome job_inputs(struct job *j, struct strvec *env, char **msg)
{
	const char *kind = json_string_value(json_object_get(j->spec, "kind"));
	char *dir;
	struct sw_job sw;
	int n = 0, rc;

	if (!kind || strcmp(kind, "hil") != 0)
		return OUT_OK;
	dir = xasprintf("%s/.otacd-inputs", j->ws);
	step_env_set(env, "OTACD_INPUTS", dir);
	sw = sw_job_of(j, env->v);
	rc = sw_inputs_fetch(&sw, dir, &n, msg);
	if (!rc)
		logsend_printf(j, "%d input%s in %s\n", n, n == 1 ? "" : "s", dir);
	free(dir);
	return sw_outcome(rc);
}

/* reproducible: true - build once, keep the digests, start over clean. */
static enum outcome job_cache_restore(struct job *j, struct cache_state *cs, struct strvec *env, char **msg);

static enum outcome job_first_build(struct job *j, json_t *steps, struct strvec *env, int *exit_code, char **msg,
				    json_t **digests, struct cache_state *cs)
{
	enum outcome why = step_run_all(j, steps, env->v, exit_code, msg);

	if (why != OUT_OK)
		return why;
	sw_digests(digests, j->ws, json_object_get(j->spec, "artifacts"));
	logsend_printf(j, C_HEAD "reproducible: first build done (%zu artifacts), building again in a clean workspace"
		   C_OFF "\n", json_object_size(*digests));
	if (job_rm_rf(j->ws) < 0 || ota_mkdir_p(j->ws, 0755) < 0) {
		*msg = xasprintf("cannot clean the workspace: %s", ota_error_last());
		return OUT_INFRA;
	}
	if ((why = transfer_checkout(j, msg)) != OUT_OK)
		return why;
	/* the second build starts from the same cache as the first */
	if ((why = job_cache_restore(j, cs, env, msg)) != OUT_OK)
		return why;
	return job_inputs(j, env, msg);
}

static enum outcome job_compare_builds(struct job *j, json_t *first, char **msg)
{
	json_t *second = NULL;
	enum outcome why;

	sw_digests(&second, j->ws, json_object_get(j->spec, "artifacts"));
	why = sw_outcome(sw_digests_compare(first, second, msg));
	if (why == OUT_OK)
		logsend_printf(j, "reproducible: both builds gave identical artifacts (%zu)\n", json_object_size(second));
	json_decref(second);
	return why;
}

/* After the steps: toolchain versions (on success), then the reports
 * (also after a failed step: they say what failed). */
static enum outcome job_stage_after(struct job *j, enum outcome why, char **envp, char **msg)
{
	json_t *extra = json_object_get(j->spec, "extra");
	json_t *tc = json_object_get(extra, "toolchain"), *rep = json_object_get(extra, "reports");
	struct sw_job sw = sw_job_of(j, envp);
	char *m = NULL;
	int rc;

	if (why == OUT_OK && json_array_size(tc) && (rc = sw_toolchain_record(&sw, tc, &m)) != 0) {
		why = sw_outcome(rc);
		free(*msg);
		*msg = m;
		m = NULL;
	}
	if ((why == OUT_OK || why == OUT_SCRIPT) && json_object_size(rep) &&
	    (rc = sw_reports_upload(&sw, rep, &m)) != 0) {
		if (why == OUT_OK || rc == SW_LOST) {
			why = sw_outcome(rc);
			free(*msg);
			*msg = m;
			m = NULL;
		} else {
			logsend_printf(j, "%s\n", m);
		}
	}
	free(m);
	return why;
}

/* ---- caches (cache.c) ----------------------------------------------- */

static void cache_log(void *arg, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	logsend_printf(arg, "%s\n", buf_cstr(&b));
	buf_release(&b);
}

/* Restore the job's cache, if it has one and the daemon gave it a scope;
 * OTACD_CACHE_HIT tells the steps whether the exact key was found. */
static enum outcome job_cache_restore(struct job *j, struct cache_state *cs, struct strvec *env, char **msg)
{
	json_t *cache = json_object_get(j->spec, "cache"), *scope = json_object_get(j->spec, "cache_scope");
	int rc;
	if (!json_is_object(cache) || !json_is_object(scope))
		return OUT_OK;
	rc = cache_restore(cs, j->a->cache_dir, cache, scope, j->ws, cache_log, j, msg);
	step_env_set(env, "OTACD_CACHE_HIT", cs->exact ? "true" : "false");
	step_env_set(env, "OTACD_CACHE_KEY", cs->key);
	return rc == 0 ? OUT_OK : rc == OTA_EINVAL ? OUT_SCRIPT : OUT_INFRA;
}

static void job_cache_save(struct job *j, const struct cache_state *cs)
{
	json_t *cache = json_object_get(j->spec, "cache"), *scope = json_object_get(j->spec, "cache_scope");
	if (json_is_object(cache) && json_is_object(scope) && cs->key[0])
		cache_save(cs, j->a->cache_dir, &j->a->cache, cache, scope, j->ws, cache_log, j);
}

/* ---- one job -------------------------------------------------------- */

int job_run(struct agent *a, json_t *spec)
{
	static const char *const failure_names[] = {
		[OUT_OK] = NULL, [OUT_SCRIPT] = "script", [OUT_TIMEOUT] = "timeout",
		[OUT_CANCELED] = "canceled", [OUT_INFRA] = "infra", [OUT_LOST] = NULL, [OUT_STOPPED] = "infra",
	};
	struct job j;
	struct strvec env = STRVEC_INIT;
	pthread_t hb_thread, log_thread;
	pthread_condattr_t ca;
	sigset_t block, old;
	json_t *steps = json_object_get(spec, "steps"), *v, *first_build = NULL;
	struct cache_state cs = { 0 };
	enum outcome why = OUT_OK;
	char *msg = NULL, *wsname;
	const char *k, *name = json_string_value(json_object_get(spec, "name"));
	int exit_code = -1, rc;

	memset(&j, 0, sizeof(j));
	j.a = a;
	j.spec = spec;
	j.bol = 1;
	v = json_object_get(spec, "job_id");
	{
		char *t = agent_scalar_text(v);
		snprintf(j.id, sizeof(j.id), "%s", t);
		free(t);
	}
	j.id_url = httpc_escape(j.id);
	v = json_object_get(spec, "attempt");
	j.attempt = json_is_integer(v) ? json_integer_value(v) : 1;
	/* The attempt's credential: kept here only, out of the spec that the
	 * rest of the job (and its steps' environment) is built from. */
	v = json_object_get(spec, "job_token");
	j.token = xstrdup(json_is_string(v) ? json_string_value(v) : a->token);
	json_object_del(spec, "job_token");
	v = json_object_get(spec, "timeout_ms");
	j.timeout_ms = json_is_integer(v) ? json_integer_value(v) : 0;
	j.deadline = j.timeout_ms > 0 ? agent_now_ms() + j.timeout_ms : 0;
	v = json_object_get(spec, "max_log_bytes");
	j.max_log = json_is_integer(v) ? json_integer_value(v) : 0;
	{
		struct strvec sv = STRVEC_INIT;
		json_object_foreach(json_object_get(spec, "secrets"), k, v)
			if (json_is_string(v))
				strvec_push(&sv, json_string_value(v));
		j.mask = mask_set_new((const char *const *)sv.v, sv.n);
		for (size_t i = 0; i < sv.n; i++)
			memset(sv.v[i], 0, strlen(sv.v[i]));
		strvec_clear(&sv);
	}
	mask_stream_init(&j.ms, j.mask, 0);
	wsname = xasprintf("job-%s-%" JSON_INTEGER_FORMAT, j.id, j.attempt);
	for (char *p = wsname; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '-' || *p == '.'))
			*p = '_';
	j.ws = xasprintf("%s/%s", a->workdir, wsname);
	free(wsname);
	buf_init(&j.line, BUF_NOLIMIT);
	buf_init(&j.q, LOG_QUEUE_MAX);
	pthread_mutex_init(&j.mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j.cv, &ca);
	pthread_condattr_destroy(&ca);

	agent_log_job(&j);
	agent_say("job %s attempt %" JSON_INTEGER_FORMAT " (%s) started", j.id, j.attempt, name ? name : "?");
	/* Helper threads leave SIGTERM/SIGINT to the main thread, whose
	 * poll() they interrupt. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	pthread_create(&hb_thread, NULL, proto_heartbeat, &j);
	pthread_create(&log_thread, NULL, logsend_thread, &j);
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	if (job_rm_rf(j.ws) < 0 || ota_mkdir_p(j.ws, 0755) < 0) {
		msg = xasprintf("cannot prepare workspace: %s", ota_error_last());
		why = OUT_INFRA;
	}
	if (why == OUT_OK)
		why = transfer_checkout(&j, &msg);
	step_env(&env, &j);
	if (why == OUT_OK)
		why = job_cache_restore(&j, &cs, &env, &msg);
	if (why == OUT_OK)
		why = job_inputs(&j, &env, &msg);
	if (why == OUT_OK && json_is_true(json_object_get(json_object_get(spec, "extra"), "reproducible")))
		why = job_first_build(&j, steps, &env, &exit_code, &msg, &first_build, &cs);
	if (why == OUT_OK)
		why = step_run_all(&j, steps, env.v, &exit_code, &msg);
	if (why == OUT_OK && first_build)
		why = job_compare_builds(&j, first_build, &msg);
	why = job_stage_after(&j, why, env.v, &msg);
	if (why == OUT_OK)
		why = transfer_artifacts(&j, &msg);
	if (why == OUT_OK)
		job_cache_save(&j, &cs);
	if (why == OUT_TIMEOUT && !msg)
		msg = j.timeout_ms % 1000 ? xasprintf("job timed out after %.1fs", (double)j.timeout_ms / 1000)
					  : xasprintf("job timed out after %llds", (long long)(j.timeout_ms / 1000));
	if (why == OUT_CANCELED && !msg)
		msg = xstrdup("job canceled");
	if (why == OUT_STOPPED && !msg)
		msg = xstrdup("the agent was stopped");
	if (msg)
		logsend_printf(&j, C_ERR "%s" C_OFF "\n", msg);

	pthread_mutex_lock(&j.mu);
	j.log_closed = 1;
	pthread_cond_broadcast(&j.cv);
	pthread_mutex_unlock(&j.mu);
	pthread_join(log_thread, NULL);
	if (why != OUT_LOST && j.lost)
		why = OUT_LOST;
	if (msg)
		mask_string(j.mask, msg); /* an artifact name or a step's text may hold a secret */
	if (why == OUT_STOPPED) {
		pthread_mutex_lock(&j.mu);
		j.hb_stop = 1;
		pthread_cond_broadcast(&j.cv);
		pthread_mutex_unlock(&j.mu);
		pthread_join(hb_thread, NULL);
		/* Let the daemon re-queue now rather than at lease expiry. */
		httpc_set_abort_flag(NULL);
		proto_finish(&j, exit_code, "infra", msg, 1, 2000);
	} else {
		if (why != OUT_LOST)
			proto_finish(&j, exit_code, failure_names[why], msg, 0, REQUEST_TIMEOUT_MS);
		pthread_mutex_lock(&j.mu);
		j.hb_stop = 1;
		pthread_cond_broadcast(&j.cv);
		pthread_mutex_unlock(&j.mu);
		pthread_join(hb_thread, NULL);
	}
	if (why == OUT_OK)
		agent_say("job %s attempt %" JSON_INTEGER_FORMAT " finished: passed", j.id, j.attempt);
	else if (why == OUT_LOST)
		agent_say("job %s attempt %" JSON_INTEGER_FORMAT " dropped: the daemon gave its lease away", j.id, j.attempt);
	else
		agent_say("job %s attempt %" JSON_INTEGER_FORMAT " finished: failed (%s)", j.id, j.attempt, failure_names[why]);
	rc = why == OUT_OK ? 0 : OTA_ERROR;
	ota_log_ctx_clear();

	if (!getenv("OTACD_AGENT_KEEP_WORKSPACE"))
		job_rm_rf(j.ws);
	strvec_clear(&env);
	mask_stream_release(&j.ms);
	mask_set_free(j.mask);
	buf_release(&j.line);
	buf_release(&j.q);
	pthread_cond_destroy(&j.cv);
	pthread_mutex_destroy(&j.mu);
	free(j.ws);
	free(j.id_url);
	memset(j.token, 0, strlen(j.token));
	free(j.token);
	free(msg);
	json_decref(first_build);
	return rc;
}
