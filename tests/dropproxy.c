/*
 * dropproxy.c - the proxy that loses the first answer; see dropproxy.h.
 * One connection at a time, polled every 100 ms for the stop flag.
 */
#include "dropproxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

int dproxy_connect(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

/* Forward the request; when drop_answer, close both ends as soon as the
 * daemon starts to answer (so the client never sees it). */
static void relay(int client, int server, int drop_answer)
{
	struct pollfd p[2] = { { client, POLLIN, 0 }, { server, POLLIN, 0 } };
	char block[16384];
	for (;;) {
		if (poll(p, 2, 200) < 0)
			break;
		if (p[0].revents) {
			ssize_t n = read(client, block, sizeof(block));
			if (n <= 0 || write(server, block, (size_t)n) != n)
				break;
		}
		if (p[1].revents) {
			ssize_t n = read(server, block, sizeof(block));
			if (n <= 0 || drop_answer || write(client, block, (size_t)n) != n)
				break;
		}
	}
}

static void *proxy_main(void *arg)
{
	struct dproxy *px = arg;
	while (!px->stop) {
		struct pollfd p = { px->listen_fd, POLLIN, 0 };
		if (poll(&p, 1, 100) <= 0)
			continue;
		int client = accept(px->listen_fd, NULL, NULL), server;
		if (client < 0)
			continue;
		server = dproxy_connect(px->upstream_port);
		if (server >= 0) {
			relay(client, server, px->connections == 0);
			close(server);
		}
		px->connections++;
		close(client);
	}
	return NULL;
}

int dproxy_listen(int backlog, int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, backlog), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

void dproxy_start(struct dproxy *px, const char *upstream_url)
{
	const char *colon = strrchr(upstream_url, ':');

	assert_non_null(colon);
	px->upstream_port = atoi(colon + 1);
	px->listen_fd = dproxy_listen(8, &px->port);
	assert_int_equal(pthread_create(&px->thread, NULL, proxy_main, px), 0);
}

void dproxy_stop(struct dproxy *px)
{
	px->stop = 1;
	pthread_join(px->thread, NULL);
	close(px->listen_fd);
}
