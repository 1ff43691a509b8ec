/*
 * api_wait.h - the HTTP servers' waiter thread (api_wait.c): parked
 * (suspended) connections resumed when a notifier moves or a deadline
 * passes, and the header deadline for every connection.  Used by the API
 * (api.c) and the device API (devapi.c).
 */
#ifndef OTA_API_WAIT_H
#define OTA_API_WAIT_H

#include <stdarg.h>
#include <stdint.h>

#include <microhttpd.h>

#include "../../common/notify.h"

/* A request or stream waiting without a thread (api_wait.c). */
struct api_park {
	struct api_park *next;
	struct MHD_Connection *conn;
	struct notifier *n;
	uint64_t gen;
	int64_t deadline;          /* clock_mono_ms() */
	int parked;
};

struct api_waiter;
int api_waiter_start(struct api_waiter **out, int64_t request_timeout_ms);
/* Wake the waiter on every bump of n (a notifier that parked requests use). */
int api_waiter_watch(struct api_waiter *w, struct notifier *n);
/* Suspend conn until n's generation differs from gen or deadline passes;
 * -1 (nothing suspended) once the server is stopping.  Call from the
 * access handler or a content reader only (libmicrohttpd's rule). */
int api_park(struct api_waiter *w, struct api_park *p, struct MHD_Connection *conn, struct notifier *n,
	     uint64_t gen, int64_t deadline);
/* Refuse new parks and resume every parked connection (before MHD_stop_daemon). */
void api_waiter_drain(struct api_waiter *w);
void api_waiter_stop(struct api_waiter *w);
/* MHD_OPTION_NOTIFY_CONNECTION, and the handler's start (busy = 1) and
 * end (0): the header deadline runs while a connection is not busy. */
void api_conn_notify(struct api_waiter *w, struct MHD_Connection *conn, void **socket_context,
		     enum MHD_ConnectionNotificationCode code);
void api_conn_busy(struct api_waiter *w, struct MHD_Connection *conn, int busy);
/* MHD_OPTION_EXTERNAL_LOGGER: stderr, without a line per dropped client. */
void api_mhd_log(void *cls, const char *fmt, va_list ap);

#endif
