/*
 * agent.c - otacd-agent, the job runner.
 *
 * Why: every job of every pipeline, on the daemon's own machine or on a
 * build box or HIL rig elsewhere, runs through this one program and the
 * agent protocol of docs/api.md, so local and remote agents behave alike.
 *
 * How: main() registers (retrying while the daemon is away: forever, or for
 * a local agent OTACD_AGENT_ORPHAN_MS, see agent_orphaned), then
 * long-polls for a job.  A job runs on the main thread: a fresh workspace,
 * the commit's tree unpacked into it when the run comes from git (the
 * daemon serves a tar, streamed to an unlinked temporary file, retried on
 * 404/5xx/network errors, extracted by source.c), then each step as
 * `/bin/sh -e -c RUN`, contained so it cannot outlive the agent or the
 * attempt (contain.c: its own PID namespace, or a process group), its
 * stdout+stderr read from one pipe with poll().
 *
 * Credentials: the agent's token (from a pipe, a file, the environment or
 * argv; the last two are wiped from this process's memory at start) and
 * each attempt's job token (from the claim; every call about that job uses
 * it) never reach a step: steps get an environment built from scratch, and
 * the agent is not dumpable, so a step of the same uid cannot read its
 * memory or /proc/PID/environ.  Two helper threads live for
 * the length of a job:
 *   - the heartbeat thread extends the lease and learns about cancels (the
 *     runner then kills the process group) and lost leases (409: kill and
 *     drop the job without finishing it);
 *   - the log sender (logsend.c) ships output every 100 ms or 64 KiB.
 *     Output is masked for secrets (common/mask.h: the values, their lines,
 *     base64 and URL forms, across any cut) on its way into the send queue,
 *     and queued bytes are dropped only once the daemon acknowledges them,
 *     so a dropped connection or a daemon restart loses nothing (416 tells
 *     where to resume).
 * Thread ownership: struct job's fields under `mu` are shared (the runner
 * writes output and closes the log, the threads set cancel/lost); the rest
 * of struct job belongs to the main thread.  After the steps, artifacts are
 * hashed (SHA-256) and streamed up, and the result is reported by `finish`,
 * retried until the daemon acknowledges it.
 *
 * Where: this file holds main() (options, the token, signals, the loop
 * that asks for jobs) and the helpers every part of the agent uses (log
 * lines, clocks, sleeps and backoff, how long the daemon has been away).
 * The rest, each file with its own header comment:
 *   protocol.c  registration, job requests, the heartbeat thread, finish;
 *   job.c       one job from its spec to its end (job_run), stage kinds'
 *               additions (stagework.c) and the cache (cache.c) around it;
 *   step.c      one step: its environment, the contained shell, its output;
 *   transfer.c  the source archive down, artifacts up;
 *   logsend.c   the masked log and its sender thread.
 */
#include "../common/httpc.h"
#include "../common/log.h"
#include "../common/util.h"
#include "agent.h"
#include "contain.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>

#define DEFAULT_URL "http://127.0.0.1:8470"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

volatile sig_atomic_t agent_stop_flag;
volatile sig_atomic_t agent_running_pgid;

static void on_signal(int sig)
{
	agent_stop_flag = 1;
	if (agent_running_pgid > 0)
		kill(-(pid_t)agent_running_pgid, SIGKILL);
}

/* The agent's own lines go through ota_log (common/log.h), in the format
 * --log-format chose (otacd passes its own to its local agents): "text"
 * is the historic "otacd-agent: …" line, logfmt and JSON lines name the
 * program and the agent, and the run and job at hand (agent_log_job). */
void agent_say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ota_logv(OTA_LOG_INFO, fmt, ap);
	va_end(ap);
}

void agent_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	ota_logv(OTA_LOG_WARN, fmt, ap);
	va_end(ap);
}

void agent_log_job(const struct job *j)
{
	const json_t *run = json_object_get(j->spec, "run_id");
	ota_log_ctx_work(json_is_integer(run) ? (int64_t)json_integer_value(run) : 0, strtoll(j->id, NULL, 10));
}

int64_t agent_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void agent_sleep_ms(long ms)
{
	int64_t end = agent_now_ms() + ms;
	while (!agent_stop_flag) {
		int64_t left = end - agent_now_ms();
		struct timespec ts;
		if (left <= 0)
			break;
		if (left > 100)
			left = 100;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left * 1000000;
		nanosleep(&ts, NULL);
	}
}

/*
 * A local agent outlives a daemon restart (the new daemon adopts it), but
 * not its daemon for good: unheard from for agent_orphan_ms (otacd gone
 * for good, or restarted somewhere it cannot find), it stops.  Remote
 * agents (agent_orphan_ms 0) wait for their daemon forever.
 */
static int64_t agent_contact_ms;  /* agent_now_ms() of the daemon's last answer */
static long agent_orphan_ms;

void agent_heard(void)
{
	__atomic_store_n(&agent_contact_ms, agent_now_ms(), __ATOMIC_RELAXED);
}

int agent_orphaned(void)
{
	int64_t away = agent_now_ms() - __atomic_load_n(&agent_contact_ms, __ATOMIC_RELAXED);
	if (agent_orphan_ms <= 0 || away <= agent_orphan_ms)
		return 0;
	if (!agent_stop_flag)
		agent_warn("no answer from otacd for %lld ms: a local agent without its daemon stops", (long long)away);
	agent_stop_flag = 1;
	return 1;
}

long agent_backoff_next(long cur)
{
	return cur < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : cur * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : cur * 2;
}

void agent_job_wait(struct job *j, long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

char *agent_scalar_text(const json_t *v)
{
	if (json_is_string(v))
		return xstrdup(json_string_value(v));
	if (json_is_integer(v))
		return xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
	if (json_is_real(v))
		return xasprintf("%g", json_real_value(v));
	if (json_is_boolean(v))
		return xstrdup(json_is_true(v) ? "true" : "false");
	return xstrdup("");
}

/* ---- main ----------------------------------------------------------- */

static void usage(FILE *f)
{
	fputs("usage: otacd-agent [--url URL] [--token-file FILE | --token-fd N | --token TOKEN]\n"
	      "                   [--labels a,b,key=value] [--workdir DIR] [--name NAME] [--once]\n"
	      "                   [--cacert FILE] [--log-format text|logfmt|json] [--log-level L]\n"
	      "\n"
	      "Runs otacd jobs.  Registers with the daemon at URL (default $OTACD_URL or\n"
	      DEFAULT_URL "), long-polls for jobs whose labels are all among\n"
	      "--labels, runs each in DIR/job-ID-ATTEMPT and reports back.\n"
	      "\n"
	      "  --token-file F  read the agent token (`otactl agents add`) from file F\n"
	      "  --token-fd N    read it from descriptor N (to its end) and close N\n"
	      "  --token TOKEN   the token itself (default $OTACD_AGENT_TOKEN); both are\n"
	      "                  wiped from this process's memory, but prefer a file\n"
	      "  --workdir DIR   where workspaces are made (default ./otacd-agent-work)\n"
	      "  --cache-max SIZE        all caches kept in WORKDIR/cache (default 5G; K, M, G)\n"
	      "  --cache-entry-max SIZE  one cache entry (default 1G)\n"
	      "  --name NAME     agent name (default: the one its token was registered as;\n"
	      "                  if given, it must be that name)\n"
	      "  --once          exit after one job: 0 if it passed, 1 otherwise\n"
	      "  --cacert FILE   verify an https:// daemon against the CA(s) in FILE\n"
	      "                  (default $OTACD_CACERT, else the system's CAs)\n"
	      "  --log-format F  text (default), logfmt or json: the agent's own lines on stderr\n"
	      "  --log-level L   error, warn, info (default) or debug\n", f);
}

/* The token in the environment variable name, then wiped where it was:
 * /proc/PID/environ shows the environment block exec gave us, so the
 * bytes themselves are overwritten, not just the variable unset. */
static char *token_from_env(const char *name)
{
	char *v = getenv(name), *tok;
	if (!v)
		return NULL;
	tok = xstrdup(v);
	memset(v, 'x', strlen(v));
	unsetenv(name);
	return tok;
}

/* The token from a file (e.g. 0600, written by the operator) or a
 * descriptor (local agents: a pipe from otacd); surrounding space trimmed. */
static char *token_read(const char *path, int fd)
{
	struct buf b = BUF_INIT;
	char *tok = NULL, *p, *e;
	int rc = 0;

	if (path) {
		rc = ota_read_file(&b, path, 4096);
	} else if (fd >= 0) {
		char tmp[256];
		ssize_t n;
		buf_init(&b, 4096);
		while ((n = read(fd, tmp, sizeof(tmp))) > 0 || (n < 0 && errno == EINTR))
			if (n > 0 && (rc = buf_put(&b, tmp, (size_t)n)) < 0)
				break;
		close(fd);
	} else {
		rc = ota_error_set(OTA_EINVAL, "no such descriptor");
	}
	if (rc == 0) {
		for (p = (char *)buf_cstr(&b); *p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'; p++)
			;
		for (e = p + strlen(p); e > p && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\r' || e[-1] == '\t'); e--)
			;
		if (e > p)
			tok = xstrndup(p, (size_t)(e - p));
		else
			ota_error_set(OTA_EINVAL, "it is empty");
	}
	if (b.ptr)
		memset(b.ptr, 0, b.len);
	buf_release(&b);
	return tok;
}

static void split_labels(struct strvec *out, const char *s)
{
	while (*s) {
		size_t n = strcspn(s, ",");
		const char *b = s, *e = s + n;
		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (e > b) {
			char *l = xstrndup(b, (size_t)(e - b));
			if (!strvec_contains(out, l))
				strvec_push(out, l);
			free(l);
		}
		s += n;
		if (*s == ',')
			s++;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "token", required_argument, NULL, 't' },
		{ "token-file", required_argument, NULL, 'T' },
		{ "token-fd", required_argument, NULL, 'F' },
		{ "labels", required_argument, NULL, 'l' },
		{ "workdir", required_argument, NULL, 'w' },
		{ "name", required_argument, NULL, 'n' },
		{ "once", no_argument, NULL, '1' },
		{ "cacert", required_argument, NULL, 'C' },
		{ "cache-max", required_argument, NULL, 'M' },
		{ "cache-entry-max", required_argument, NULL, 'E' },
		{ "log-format", required_argument, NULL, 'f' },
		{ "log-level", required_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct agent a;
	struct sigaction sa;
	const char *url = getenv("OTACD_URL"), *workdir = "otacd-agent-work", *e, *cacert = NULL;
	long backoff = 0;
	int c, rc = 0, log_format = OTA_LOG_TEXT, log_level = OTA_LOG_INFO;

	/* The namespace init of a step (contain.c): nothing else of the agent. */
	if (argc > 1 && !strcmp(argv[1], "--reaper"))
		return contain_reaper_main(argv + 2);
	/* Not dumpable: a step of the same uid cannot read this process's
	 * memory or /proc/PID/environ (steps are exec'd, and so dumpable). */
	prctl(PR_SET_DUMPABLE, 0);
	ota_log_set_origin("otacd-agent", NULL); /* its name once the options are read */
	memset(&a, 0, sizeof(a));
	a.token = token_from_env("OTACD_AGENT_TOKEN");
	a.cache.max_total = CACHE_DEFAULT_MAX;
	a.cache.max_entry = CACHE_DEFAULT_ENTRY_MAX;
	if (((e = getenv("OTACD_AGENT_CACHE_MAX")) && cache_parse_size(e, &a.cache.max_total) < 0) ||
	    ((e = getenv("OTACD_AGENT_CACHE_ENTRY_MAX")) && cache_parse_size(e, &a.cache.max_entry) < 0)) {
		agent_warn("%s", ota_error_last());
		return 2;
	}
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'u': url = optarg; break;
		case 't':
			free(a.token);
			a.token = xstrdup(optarg);
			memset(optarg, 'x', strlen(optarg)); /* out of /proc/PID/cmdline */
			break;
		case 'T':
		case 'F':
			free(a.token);
			if (!(a.token = token_read(c == 'T' ? optarg : NULL, c == 'F' ? atoi(optarg) : -1))) {
				agent_warn("cannot read the token from %s %s: %s", c == 'T' ? "file" : "descriptor", optarg,
				    ota_error_last());
				return 2;
			}
			break;
		case 'l': split_labels(&a.labels, optarg); break;
		case 'w': workdir = optarg; break;
		case 'n':
			free(a.name);
			a.name = xstrdup(optarg);
			break;
		case '1': a.once = 1; break;
		case 'C': cacert = optarg; break;
		case 'M':
		case 'E':
			if (cache_parse_size(optarg, c == 'M' ? &a.cache.max_total : &a.cache.max_entry) < 0) {
				agent_warn("--%s: %s", c == 'M' ? "cache-max" : "cache-entry-max", ota_error_last());
				return 2;
			}
			break;
		case 'f':
		case 'v':
			if ((c == 'f' ? ota_log_format_parse(optarg) : ota_log_level_parse(optarg)) < 0) {
				agent_warn("--%s: '%s' is not one of %s", c == 'f' ? "log-format" : "log-level", optarg,
					   c == 'f' ? "text, logfmt, json" : "error, warn, info, debug");
				return 2;
			}
			if (c == 'f')
				log_format = ota_log_format_parse(optarg);
			else
				log_level = ota_log_level_parse(optarg);
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	/* before any thread: every line from here on in the chosen format */
	ota_log_setup((enum ota_log_format)log_format, (enum ota_log_level)log_level, 2);
	ota_log_set_origin("otacd-agent", a.name);
	if (!a.token || !*a.token) {
		agent_warn("no token: pass --token-file, --token-fd or --token, or set OTACD_AGENT_TOKEN");
		return 2;
	}
	a.url = xstrdup(url && *url ? url : DEFAULT_URL);
	while (strlen(a.url) > 1 && a.url[strlen(a.url) - 1] == '/')
		a.url[strlen(a.url) - 1] = '\0';
	/* without --name the agent is whatever its token names (the daemon says) */

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A local agent is not tied to its daemon's life (a restarted daemon
	 * adopts it) but gives up on it after a while (agent_orphaned). */
	if ((e = getenv("OTACD_AGENT_LOCAL")) && !strcmp(e, "1")) {
		a.local = 1;
		agent_orphan_ms = 300000;
	}
	if ((e = getenv("OTACD_AGENT_ORPHAN_MS")) && atol(e) > 0)
		agent_orphan_ms = atol(e);
	agent_heard();

	if (ota_mkdir_p(workdir, 0755) < 0 || !(a.workdir = realpath(workdir, NULL))) {
		agent_warn("cannot use work directory %s: %s", workdir, a.workdir ? ota_error_last() : strerror(errno));
		return 1;
	}
	agent_say("%s", contain_init(a.workdir));
	/* a killed agent may have left a half-written cache entry: drop it */
	a.cache_dir = xasprintf("%s/cache", a.workdir);
	if (ota_mkdir_p(a.cache_dir, 0700) < 0) {
		agent_warn("cannot use cache directory %s: %s", a.cache_dir, ota_error_last());
		return 1;
	}
	cache_sweep(a.cache_dir);
	if (httpc_global_init() < 0) {
		agent_warn("%s", ota_error_last());
		return 1;
	}
	if (cacert)
		httpc_set_cacert(cacert);
	httpc_set_abort_flag(&agent_stop_flag);

	if (proto_register(&a) < 0) {
		if (!agent_stop_flag)
			agent_warn("%s", ota_error_last());
		rc = agent_stop_flag ? 0 : 1;
		goto out;
	}
	while (!agent_stop_flag) {
		json_t *spec = NULL;
		int r = proto_request_job(&spec, &a);
		if (!r && spec) {
			backoff = 0;
			rc = job_run(&a, spec) < 0 ? 1 : 0;
			json_decref(spec);
			if (a.once)
				break;
		} else if (!r) {
			backoff = 0;
		} else if (r == OTA_ENOTFOUND) {
			if (proto_register(&a) < 0) {
				if (!agent_stop_flag)
					agent_warn("%s", ota_error_last());
				rc = agent_stop_flag ? 0 : 1;
				break;
			}
		} else if (!agent_stop_flag && !agent_orphaned()) {
			backoff = agent_backoff_next(backoff);
			agent_sleep_ms(backoff);
		}
	}
	if (agent_stop_flag)
		rc = 0; /* asked to stop: a clean exit */
out:
	httpc_global_cleanup();
	strvec_clear(&a.labels);
	free(a.url);
	memset(a.token, 0, strlen(a.token));
	free(a.token);
	free(a.name);
	free(a.workdir);
	free(a.cache_dir);
	free(a.id_str);
	return rc;
}
