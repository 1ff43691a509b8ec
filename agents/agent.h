/*
 * agent.h - what the files of otacd-agent share: the agent and the job
 * being run, how a job or step ended, a few helpers (agent.c), and each
 * file's entry points (protocol.c, job.c, step.c, transfer.c, logsend.c).
 *
 * Thread ownership is as agent.c describes: the fields of struct job under
 * `mu` are shared between the runner and the job's helper threads, the
 * rest belongs to the main thread.
 */
#ifndef OTA_AGENT_H
#define OTA_AGENT_H

#include "cache.h"
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>

#include "../common/mask.h"
#include "../common/util.h"

/* Timeout of one request to the daemon (long polls excepted). */
#define REQUEST_TIMEOUT_MS 15000
/* Cap of a job's send queue: output beyond it while the daemon is away is lost. */
#define LOG_QUEUE_MAX ((size_t)256 << 20)

struct agent {
	char *url;              /* without a trailing '/' */
	char *token;
	char *name;
	char *workdir;          /* absolute */
	struct strvec labels;
	int once;
	int local;              /* started by otacd itself */
	char *id_str;           /* agent_id as the daemon gave it (for messages) */
	long lease_ms, heartbeat_ms;
	char *cache_dir;        /* WORKDIR/cache (cache.h) */
	struct cache_limits cache;
};

struct job {
	struct agent *a;
	json_t *spec;
	char id[64];            /* for messages */
	char *id_url;           /* escaped, for URL paths */
	json_int_t attempt;
	char *token;            /* this attempt's job token: every call about the job */
	char *ws;               /* workspace, absolute */
	int64_t deadline;       /* monotonic ms, 0: none */
	int64_t timeout_ms;
	int64_t max_log;        /* 0: no limit */
	struct mask_set *mask;  /* the job's secret values, their lines and encodings */
	int bol;                /* the log is at the start of a line */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* --- guarded by mu --- */
	int cancel;             /* the daemon canceled the job */
	int lost;               /* the lease is gone: drop the job */
	int hb_stop;
	int log_closed;         /* no more output: the sender drains and exits */
	struct buf line;        /* output since the last newline, not yet masked */
	struct mask_stream ms;  /* masks line bytes on their way into q */
	int64_t line_since;
	struct buf q;           /* masked bytes not yet acknowledged */
	uint64_t q_off;         /* log offset of q.ptr[0] */
};

/* Colours of the agent's own lines in a job's log. */
#define C_HEAD "\033[1;36m"
#define C_ERR "\033[1;31m"
#define C_OFF "\033[0m"

/* Why a job (or a step) ended. */
enum outcome { OUT_OK, OUT_SCRIPT, OUT_TIMEOUT, OUT_CANCELED, OUT_INFRA, OUT_LOST, OUT_STOPPED };

/* Set by SIGINT/SIGTERM: the agent is stopping. */
extern volatile sig_atomic_t agent_stop_flag;
/* The process group of the step running now (0: none), killed by the
 * signal handler on its way out (step.c sets it). */
extern volatile sig_atomic_t agent_running_pgid;

/* A line on stderr, prefixed "otacd-agent: ". */
void agent_say(const char *fmt, ...) OTA_PRINTF(1, 2);
/* The same at level warn: something failed (otacd's log_format, ota_log). */
void agent_warn(const char *fmt, ...) OTA_PRINTF(1, 2);
/* This thread's log lines carry the job's run and job ids (ota_log_ctx). */
void agent_log_job(const struct job *j);
/* Monotonic milliseconds. */
int64_t agent_now_ms(void);
/* Wait on j->cv for at most ms (caller holds j->mu). */
void agent_job_wait(struct job *j, long ms);
/* Sleep, waking early when the agent is told to stop. */
void agent_sleep_ms(long ms);
/* The next wait of an exponential backoff after cur (100 ms .. 2 s). */
long agent_backoff_next(long cur);
/* The daemon answered (a local agent's orphan clock starts again). */
void agent_heard(void);
/* 1 (and stop the agent) when the daemon has been away too long. */
int agent_orphaned(void);
/* Text of a JSON scalar (env values, matrix values, ids); to free. */
char *agent_scalar_text(const json_t *v);

/* protocol.c: the agent's own calls of the agent protocol (docs/api.md). */
/* Register, retrying while the daemon is away; sets a's id and timings. */
int proto_register(struct agent *a);
/* One long poll: 0 with *out = JOB_SPEC or NULL (nothing queued);
 * OTA_ENOTFOUND when the daemon does not know this agent (re-register). */
int proto_request_job(json_t **out, struct agent *a);
/* The heartbeat thread (pthread_create with the job): extends the lease,
 * sets j->cancel and j->lost, until j->hb_stop. */
void *proto_heartbeat(void *arg);
/* Report the attempt's end; tries 0: until acknowledged or the agent stops. */
int proto_finish(struct job *j, int exit_code, const char *failure, const char *message, int tries,
		 long timeout_ms);

/* job.c: run one JOB_SPEC to its end; 0 when it passed. */
int job_run(struct agent *a, json_t *spec);

/* step.c: the steps and their environment. */
/* Run the steps in order until one fails; *msg says which. */
enum outcome step_run_all(struct job *j, json_t *steps, char **envp, int *exit_code, char **msg);
/* The job's environment, built from scratch (never the agent's token). */
void step_env(struct strvec *env, struct job *j);
/* Set or replace NAME=value in env. */
void step_env_set(struct strvec *env, const char *name, const char *value);

/* transfer.c: files between the daemon and the workspace. */
/* The commit's tree into the workspace (OUT_OK also without a source). */
enum outcome transfer_checkout(struct job *j, char **msg);
/* The spec's artifacts hashed and uploaded. */
enum outcome transfer_artifacts(struct job *j, char **msg);

/* logsend.c: the job's log.  Output goes in through logsend_write (steps'
 * bytes) and logsend_printf (the agent's own notes, on a line of their
 * own); logsend_thread (pthread_create with the job) masks it and ships
 * it to the daemon until the log is closed and drained or the job is lost. */
void logsend_write(struct job *j, const void *p, size_t n);
void logsend_printf(struct job *j, const char *fmt, ...) OTA_PRINTF(2, 3);
void *logsend_thread(void *arg);

#endif
