/*
 * agent.h - what otacd-agent's job runner (agent.c) shares with its log
 * sender (logsend.c): the agent and the job being run, and a few helpers.
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

/* Set by SIGINT/SIGTERM: the agent is stopping. */
extern volatile sig_atomic_t agent_stop_flag;

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

/* logsend.c: the job's log.  Output goes in through logsend_write (steps'
 * bytes) and logsend_printf (the agent's own notes, on a line of their
 * own); logsend_thread (pthread_create with the job) masks it and ships
 * it to the daemon until the log is closed and drained or the job is lost. */
void logsend_write(struct job *j, const void *p, size_t n);
void logsend_printf(struct job *j, const char *fmt, ...) OTA_PRINTF(2, 3);
void *logsend_thread(void *arg);

#endif
