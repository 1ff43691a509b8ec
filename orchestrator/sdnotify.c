/*
 * sdnotify.c - systemd's readiness protocol; see sdnotify.h.
 *
 * A fresh socket per message: otacd sends two in its life (READY=1 once
 * its listeners answer, STOPPING=1 at shutdown), so nothing is kept open
 * across fork/exec of the local agents.
 */
#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/util.h"

int sdnotify_send(const char *msg)
{
	const char *where = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n, len = strlen(msg);
	socklen_t salen;
	ssize_t sent;
	int fd, rc = 0;

	if (!where || !*where)
		return 0;
	n = strlen(where);
	if ((where[0] != '/' && where[0] != '@') || n >= sizeof(sa.sun_path))
		return ota_error_set(OTA_EINVAL, "NOTIFY_SOCKET=%s: not a socket path or @abstract name that fits", where);
	memcpy(sa.sun_path, where, n);
	if (where[0] == '@')
		sa.sun_path[0] = '\0'; /* the abstract namespace: no terminator counted */
	salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (where[0] == '/'));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ota_error_set(OTA_ERROR, "NOTIFY_SOCKET: socket: %s", strerror(errno));
	sent = sendto(fd, msg, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
	if (sent != (ssize_t)len)
		rc = ota_error_set(OTA_ERROR, "NOTIFY_SOCKET=%s: sending \"%.40s\": %s", where, msg,
				   sent < 0 ? strerror(errno) : "short send");
	close(fd);
	return rc;
}
