/*
 * logsend.c - a job's log on its way to the daemon: masking, queueing,
 * sending.
 *
 * Why: a step's output must reach the daemon live, without a secret in it,
 * and without losing bytes when the connection drops or the daemon
 * restarts; the runner must never block on the network while a step writes.
 *
 * How: the runner appends output to the job's line buffer (logsend_write);
 * complete lines, or a partial line held for LINE_HOLD_MS or past
 * LINE_HOLD_BYTES, are masked for secrets (common/mask.h, a stream that
 * sees across any cut) into the send queue j->q.  The sender thread ships
 * the queue every LOG_FLUSH_MS or LOG_FLUSH_BYTES as PUTs at an offset and
 * drops bytes only once the daemon acknowledges them: a 416 says where the
 * daemon is, a 413 halves the chunk, 409/404/401/403 mean the attempt is
 * over (the job is lost).  The line buffer and the queue are guarded by
 * j->mu; the sender lets go of it only while a request is on its way.
 */
#include "agent.h"

#include <stdlib.h>
#include <string.h>

#include "../common/httpc.h"

#define LOG_FLUSH_MS 100
#define LOG_FLUSH_BYTES (64 * 1024)
#define LOG_CHUNK_MAX (256 * 1024)
#define LINE_HOLD_MS 1000
#define LINE_HOLD_BYTES 8192

static int answer_size(const struct httpc_response *r, uint64_t *out)
{
	json_t *j = json_loadb(buf_cstr(&r->body), r->body.len, 0, NULL);
	json_t *s = json_object_get(j, "size");
	int rc = json_is_integer(s) && json_integer_value(s) >= 0 ? 0 : OTA_EINVAL;
	if (!rc)
		*out = (uint64_t)json_integer_value(s);
	json_decref(j);
	return rc;
}

/* Append p[0..n) to q masked (holds j->mu); last: the end of the log. */
static void log_queue(struct job *j, const char *p, size_t n, int last)
{
	struct buf masked = BUF_INIT;
	const char *src;
	size_t len;

	mask_stream_feed(&j->ms, p, n, &masked);
	if (last)
		mask_stream_flush(&j->ms, &masked);
	src = buf_cstr(&masked);
	len = masked.len;
	if (j->max_log > 0) {
		/* A little past the cap, so the daemon sees there was more and
		 * writes its truncation notice; the rest is dropped here. */
		uint64_t limit = (uint64_t)j->max_log + 1024, end = j->q_off + j->q.len;
		len = end >= limit ? 0 : len > limit - end ? (size_t)(limit - end) : len;
	}
	/* If the queue is full while the daemon is away, the overflow is lost. */
	if (len)
		buf_put(&j->q, src, len);
	if (masked.ptr)
		memset(masked.ptr, 0, masked.len);
	buf_release(&masked);
	if (j->q.len >= LOG_FLUSH_BYTES)
		pthread_cond_broadcast(&j->cv);
}

/* Move complete lines (or all of a held partial line when `all`) to q. */
static void log_flush_lines(struct job *j, int all)
{
	char *nl;
	size_t n;

	if (!j->line.len)
		return;
	nl = memrchr(j->line.ptr, '\n', j->line.len);
	n = nl ? (size_t)(nl - j->line.ptr) + 1 : 0;
	if (all || j->line.len - n >= LINE_HOLD_BYTES)
		n = j->line.len;
	if (!n)
		return;
	log_queue(j, j->line.ptr, n, 0);
	memmove(j->line.ptr, j->line.ptr + n, j->line.len - n);
	j->line.len -= n;
	j->line.ptr[j->line.len] = '\0';
	j->line_since = agent_now_ms();
}

void logsend_write(struct job *j, const void *p, size_t n)
{
	if (!n)
		return;
	j->bol = ((const char *)p)[n - 1] == '\n';
	pthread_mutex_lock(&j->mu);
	if (!j->line.len)
		j->line_since = agent_now_ms();
	buf_put(&j->line, p, n);
	log_flush_lines(j, 0);
	pthread_mutex_unlock(&j->mu);
}

void logsend_printf(struct job *j, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	if (!j->bol)
		buf_putc(&b, '\n'); /* the agent's notes start on a line of their own */
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	logsend_write(j, buf_cstr(&b), b.len);
	buf_release(&b);
}

/* The daemon holds everything before offset s (holds j->mu). */
static void log_ack(struct job *j, uint64_t s)
{
	size_t drop;
	if (s <= j->q_off)
		return;
	drop = s - j->q_off > j->q.len ? j->q.len : (size_t)(s - j->q_off);
	memmove(j->q.ptr, j->q.ptr + drop, j->q.len - drop);
	j->q.len -= drop;
	j->q.ptr[j->q.len] = '\0';
	j->q_off += drop;
}

void *logsend_thread(void *arg)
{
	struct job *j = arg;
	size_t chunk_max = LOG_CHUNK_MAX;
	long backoff = 0;
	int warned = 0;

	agent_log_job(j);

	pthread_mutex_lock(&j->mu);
	for (;;) {
		struct httpc_response r;
		uint64_t off, s = 0;
		char *chunk, *url;
		size_t n;
		int rc;

		if (backoff)
			agent_job_wait(j, backoff);
		else if (!j->log_closed && j->q.len < LOG_FLUSH_BYTES)
			agent_job_wait(j, LOG_FLUSH_MS);
		if (j->lost || agent_stop_flag)
			break;
		if (j->log_closed || agent_now_ms() - j->line_since >= LINE_HOLD_MS)
			log_flush_lines(j, 1);
		if (j->log_closed && mask_stream_held(&j->ms))
			log_queue(j, "", 0, 1);
		if (!j->q.len) {
			if (j->log_closed)
				break;
			continue;
		}
		n = j->q.len < chunk_max ? j->q.len : chunk_max;
		chunk = xmalloc(n);
		memcpy(chunk, j->q.ptr, n);
		off = j->q_off;
		pthread_mutex_unlock(&j->mu);

		url = xasprintf("%s/api/v1/agent/jobs/%s/log?attempt=%" JSON_INTEGER_FORMAT "&offset=%llu",
				j->a->url, j->id_url, j->attempt, (unsigned long long)off);
		rc = httpc_request(&r, "PUT", url, j->token, "application/octet-stream", chunk, n,
				   REQUEST_TIMEOUT_MS);
		free(url);
		free(chunk);

		pthread_mutex_lock(&j->mu);
		backoff = 0;
		if (rc < 0 || r.status >= 500) {
			if (!warned++)
				agent_warn("job %s: log upload failing (%s), buffering", j->id,
				    rc < 0 ? ota_error_last() : "server error");
			backoff = 500;
		} else if (r.status == 200) {
			/* The daemon took the chunk (maybe cutting it at its cap). */
			log_ack(j, off + n);
			warned = 0;
		} else if (r.status == 416 && !answer_size(&r, &s)) {
			if (s >= j->q_off)
				log_ack(j, s);
			else
				j->q_off = s; /* the daemon lost bytes we no longer have */
		} else if (r.status == 413 && chunk_max > 1024) {
			chunk_max /= 2;
		} else if (r.status == 409 || r.status == 404 || r.status == 401 || r.status == 403) {
			j->lost = 1;
			pthread_cond_broadcast(&j->cv);
		} else {
			agent_warn("job %s: log chunk refused (HTTP %ld), dropping %zu bytes", j->id, r.status, n);
			log_ack(j, off + n);
		}
		httpc_response_release(&r);
	}
	pthread_mutex_unlock(&j->mu);
	return NULL;
}
