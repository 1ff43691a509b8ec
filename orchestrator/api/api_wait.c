/*
 * api_wait.c - waiting without a thread, and the header deadline.
 *
 * The HTTP server runs libmicrohttpd's epoll thread pool: a few threads
 * serve every connection, so no handler may sleep on one.  A request that
 * has to wait for something (an agent's long poll for a job, a live log or
 * event stream with nothing new, a webhook waiting for the source worker)
 * parks instead: api_park() suspends its connection and records which
 * notifier it waits on, the generation it saw, and a deadline.  One waiter
 * thread per server sleeps on an eventfd that the watched notifiers' hooks
 * write to (notify.h) and resumes each parked connection when its
 * notifier moved or its deadline passed; libmicrohttpd then calls the
 * access handler (or the stream's content reader) again on a pool thread,
 * which looks at the state once more and answers or parks again.
 *
 * The same thread enforces the header deadline.  libmicrohttpd's
 * connection timeout is an idle timeout that every received byte resets,
 * so a client sending one header byte every few seconds holds its
 * connection forever.  Each connection is tracked from the moment it is
 * accepted (MHD_OPTION_NOTIFY_CONNECTION) or its previous answer was
 * completed; one whose next request has not reached the access handler
 * within request_timeout is shut down.  Requests that are being handled
 * (bodies being received, answers being sent, parked long polls and
 * streams) are exempt, unless their client closed its side (a FIN and
 * nothing left to read): libmicrohttpd 0.9.75 does not notice that in the
 * middle of a request body (the connection stays in CLOSE-WAIT, holding
 * an upload's temp file or a follower's spool until the process ends), so
 * the sweep shuts such a connection down too.  A client that half-closes
 * and still waits for its answer is not HTTP as browsers, curl and the
 * agents speak it.
 *
 * Locks: `lock` guards the parked list; `conn_lock` the connection list
 * (an entry's busy and since are atomics its pool thread sets per request).
 * Neither is held while taking the other.  Notifier hooks only write to the
 * eventfd, so they run safely under their notifier's lock.
 */
#include "api_int.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../../common/util.h"
#include "../clock.h"
#include "../logstore.h"

/* how often the header deadline is checked at most */
#define SWEEP_MS 250

struct api_conn {
	struct api_conn *prev, *next;   /* under conn_lock */
	int fd;
	/* atomics: its own pool thread writes them at every request's start
	 * and end (api_conn_busy, no lock: a request must not queue behind
	 * the sweep or the other threads' requests), the sweeper reads them */
	int64_t since;     /* accepted, or previous request completed (mono ms) */
	int busy;          /* a request is in its handler */
	int shut;          /* we shut it down already (under conn_lock) */
};

struct api_waiter {
	pthread_t thread;
	int efd;
	int quit;
	int64_t request_timeout_ms;
	pthread_mutex_t lock;
	struct api_park *parked;       /* under lock */
	size_t nparked;
	int stopping;                  /* under lock: no new parks */
	pthread_mutex_t conn_lock;
	struct api_conn *conns;        /* under conn_lock */
	size_t nconns;
	uint64_t cut, cut_logged;      /* under conn_lock: connections cut by the deadline */
	int64_t cut_log_at;
	struct notifier *watched[4];
	size_t nwatched;
};

static void wake(void *arg)
{
	struct api_waiter *w = arg;
	uint64_t one = 1;
	ssize_t n = write(w->efd, &one, sizeof(one));
	(void)n; /* EAGAIN: the counter is already non-zero, the thread wakes anyway */
}

/* Resume every parked connection whose notifier moved or whose deadline
 * passed (all of them when stopping); returns the nearest deadline left. */
static int64_t resume_due(struct api_waiter *w, int64_t now)
{
	int64_t next = now + 60000;
	struct api_park **pp;

	pthread_mutex_lock(&w->lock);
	pp = &w->parked;
	while (*pp) {
		struct api_park *p = *pp;
		if (w->stopping || now >= p->deadline || notifier_gen(p->n) != p->gen) {
			*pp = p->next;
			p->next = NULL;
			p->parked = 0;
			w->nparked--;
			MHD_resume_connection(p->conn);
			continue;
		}
		if (p->deadline < next)
			next = p->deadline;
		pp = &p->next;
	}
	pthread_mutex_unlock(&w->lock);
	return next;
}

/* 1 when the client of a connection closed its side: end of stream with
 * nothing left to read (a peek consumes nothing). */
static int peer_closed(int fd)
{
	char b;
	return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* Shut down connections whose request is not complete within the deadline,
 * and busy ones whose client is gone: libmicrohttpd sees the socket end
 * and closes the connection. */
static void sweep(struct api_waiter *w, int64_t now)
{
	pthread_mutex_lock(&w->conn_lock);
	for (struct api_conn *c = w->conns; c; c = c->next) {
		int busy = __atomic_load_n(&c->busy, __ATOMIC_ACQUIRE);
		if (c->shut)
			continue;
		if (!busy && now - __atomic_load_n(&c->since, __ATOMIC_RELAXED) >= w->request_timeout_ms) {
			c->shut = 1;
			w->cut++;
			shutdown(c->fd, SHUT_RDWR);
		} else if (busy && peer_closed(c->fd)) {
			c->shut = 1;
			shutdown(c->fd, SHUT_RDWR);
		}
	}
	/* one line per 10 s at most, however many are cut */
	if (w->cut != w->cut_logged && now >= w->cut_log_at) {
		ota_log(OTA_LOG_INFO, "closed %" PRIu64 " connection(s) whose request was not complete within %" PRId64 " ms",
			w->cut - w->cut_logged, w->request_timeout_ms);
		w->cut_logged = w->cut;
		w->cut_log_at = now + 10000;
	}
	pthread_mutex_unlock(&w->conn_lock);
}

static void *waiter_main(void *arg)
{
	struct api_waiter *w = arg;
	int64_t next_sweep = 0;

	for (;;) {
		int64_t now = clock_mono_ms(), next, timeout;
		struct pollfd pfd = { w->efd, POLLIN, 0 };
		uint64_t v;

		if (__atomic_load_n(&w->quit, __ATOMIC_ACQUIRE))
			break;
		next = resume_due(w, now);
		if (now >= next_sweep) {
			sweep(w, now);
			next_sweep = now + SWEEP_MS;
		}
		if (next_sweep < next)
			next = next_sweep;
		timeout = next - clock_mono_ms();
		if (timeout < 0)
			timeout = 0;
		if (poll(&pfd, 1, (int)timeout) > 0 && read(w->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			break;
	}
	return NULL;
}

int api_waiter_start(struct api_waiter **out, int64_t request_timeout_ms)
{
	struct api_waiter *w = xcalloc(1, sizeof(*w));

	*out = NULL;
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd < 0) {
		free(w);
		return ota_error_set(OTA_ERROR, "eventfd: %s", strerror(errno));
	}
	w->request_timeout_ms = request_timeout_ms;
	pthread_mutex_init(&w->lock, NULL);
	pthread_mutex_init(&w->conn_lock, NULL);
	if (pthread_create(&w->thread, NULL, waiter_main, w) != 0) {
		close(w->efd);
		pthread_mutex_destroy(&w->lock);
		pthread_mutex_destroy(&w->conn_lock);
		free(w);
		return ota_error_set(OTA_ERROR, "cannot start the HTTP waiter thread");
	}
	*out = w;
	return 0;
}

int api_waiter_watch(struct api_waiter *w, struct notifier *n)
{
	if (w->nwatched == OTA_ARRAY_SIZE(w->watched) || notifier_hook(n, wake, w) < 0)
		return ota_error_set(OTA_ERROR, "too many notifiers watched by the HTTP server");
	w->watched[w->nwatched++] = n;
	return 0;
}

int api_park(struct api_waiter *w, struct api_park *p, struct MHD_Connection *conn, struct notifier *n,
	     uint64_t gen, int64_t deadline)
{
	pthread_mutex_lock(&w->lock);
	if (w->stopping) {
		pthread_mutex_unlock(&w->lock);
		return -1;
	}
	MHD_suspend_connection(conn);
	p->conn = conn;
	p->n = n;
	p->gen = gen;
	p->deadline = deadline;
	p->parked = 1;
	p->next = w->parked;
	w->parked = p;
	w->nparked++;
	pthread_mutex_unlock(&w->lock);
	wake(w); /* the generation may have moved already; the deadline may be the nearest */
	return 0;
}

void api_waiter_drain(struct api_waiter *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = 1;
	pthread_mutex_unlock(&w->lock);
	/* resumes everything now, on this thread, so that libmicrohttpd is
	 * never stopped with a suspended connection */
	resume_due(w, clock_mono_ms());
}

void api_waiter_stop(struct api_waiter *w)
{
	if (!w)
		return;
	api_waiter_drain(w);
	for (size_t i = 0; i < w->nwatched; i++)
		notifier_unhook(w->watched[i], wake, w);
	__atomic_store_n(&w->quit, 1, __ATOMIC_RELEASE);
	wake(w);
	pthread_join(w->thread, NULL);
	while (w->conns) {
		struct api_conn *c = w->conns;
		w->conns = c->next;
		free(c);
	}
	close(w->efd);
	pthread_mutex_destroy(&w->lock);
	pthread_mutex_destroy(&w->conn_lock);
	free(w);
}

/* ---- connection tracking (libmicrohttpd callbacks) ---------------------- */

void api_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	/* every connection cut by the deadline or the client would be a line:
	 * the sweeper's summary says it once */
	if (strstr(fmt, "incomplete request") || strstr(fmt, "closed by remote") ||
	    strstr(fmt, "closed when reading request") ||
	    /* a failed TLS handshake (plain HTTP, a refused client
	     * certificate, a flood) is the client's problem, not a log line */
	    strstr(fmt, "handshake") || strstr(fmt, "TLS"))
		return;
	ota_logv(OTA_LOG_WARN, fmt, ap); /* libmicrohttpd's own, one line each */
}

void api_conn_notify(struct api_waiter *w, struct MHD_Connection *conn, void **socket_context,
		     enum MHD_ConnectionNotificationCode code)
{
	struct api_conn *c = *socket_context;

	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		c = xcalloc(1, sizeof(*c));
		c->fd = ci ? ci->connect_fd : -1;
		c->since = clock_mono_ms();
		c->shut = c->fd < 0;
		pthread_mutex_lock(&w->conn_lock);
		c->next = w->conns;
		if (w->conns)
			w->conns->prev = c;
		w->conns = c;
		w->nconns++;
		pthread_mutex_unlock(&w->conn_lock);
		*socket_context = c;
		return;
	}
	if (!c)
		return;
	/* CLOSED comes before libmicrohttpd closes the socket: once the entry
	 * is gone the sweeper can no longer shut down a reused descriptor */
	pthread_mutex_lock(&w->conn_lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	w->nconns--;
	pthread_mutex_unlock(&w->conn_lock);
	free(c);
	*socket_context = NULL;
}

static struct api_conn *conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

void api_conn_busy(struct api_waiter *w, struct MHD_Connection *conn, int busy)
{
	struct api_conn *c = conn_of(conn);
	(void)w;
	if (!c)
		return;
	/* since before busy goes to 0: the sweeper never sees an idle
	 * connection with the previous request's start time */
	if (!busy)
		__atomic_store_n(&c->since, clock_mono_ms(), __ATOMIC_RELAXED);
	__atomic_store_n(&c->busy, busy, __ATOMIC_RELEASE);
}

/* ---- parking a request --------------------------------------------------- */

enum MHD_Result api_wait(struct api_req *r, struct notifier *n, uint64_t gen, int64_t deadline, api_handler fn)
{
	r->resume = fn;
	if (api_park(r->api->waiter, &r->park, r->conn, n, gen, deadline) < 0) {
		/* shutting down: answer now (fn sees a->stopping) */
		r->resume = NULL;
		return fn(r->api, r);
	}
	return MHD_YES;
}
