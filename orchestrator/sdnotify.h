/*
 * sdnotify.h - tell the service manager how otacd is doing (Type=notify).
 *
 * systemd's readiness protocol (sd_notify(3)): one datagram of
 * newline-separated KEY=VALUE lines ("READY=1", "STOPPING=1",
 * "STATUS=...") sent to the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
 * or "@name" in the abstract namespace).  systemd documents the protocol
 * as stable and meant to be spoken without libsystemd; speaking it here
 * keeps libsystemd and the three libraries it loads (libgcrypt,
 * libgpg-error, libcap: 736 kB resident, 192 kB of it private, measured
 * on an idle otacd) out of a daemon with an idle-memory budget.
 */
#ifndef OTA_SDNOTIFY_H
#define OTA_SDNOTIFY_H

/* Send msg to $NOTIFY_SOCKET.  0 when sent, and when $NOTIFY_SOCKET is
 * unset (not under a service manager: nothing to tell); negative with the
 * reason in ota_error_last() when it names no usable socket. */
int sdnotify_send(const char *msg);

#endif
