/*
 * load_bench.c - the two helpers of bench/load.sh.
 *
 *   load-bench trivial
 *       A trivial libmicrohttpd server with the API's flags (epoll thread
 *       pool of the same size, suspend/resume, the same per-client cap and
 *       memory limit) answering every request with a small JSON object:
 *       the floor otacd's routes are compared with.  Prints its port, then
 *       serves until stdin closes.
 *
 *   load-bench slow PORT N SECONDS
 *       Holds N half-sent requests to 127.0.0.1:PORT for SECONDS: one
 *       header byte per connection every 3 s, from source addresses
 *       127.0.0.2 onwards (50 per address, under the per-client cap); a
 *       connection the server closes is opened again, as an attacker
 *       would.  Prints how many the server closed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define PER_ADDRESS 50

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			      const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
	static const char body[] = "{\"status\":\"ok\"}";
	struct MHD_Response *resp;
	enum MHD_Result ret;

	(void)cls;
	(void)url;
	(void)method;
	(void)version;
	(void)upload_data;
	if (!*con_cls) {
		*con_cls = conn; /* headers: wait for the end of the request, like otacd */
		return MHD_YES;
	}
	if (*upload_size) {
		*upload_size = 0;
		return MHD_YES;
	}
	resp = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static int trivial(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned pool = ncpu < 4 ? 4 : ncpu > 16 ? 16 : (unsigned)ncpu;   /* as orchestrator/api/api.c */
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	char c;

	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
			     0, NULL, NULL, answer, NULL, MHD_OPTION_THREAD_POOL_SIZE, pool,
			     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_CONNECTION_LIMIT, (unsigned)10000,
			     MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)128, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
			     MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "load-bench: cannot start the trivial server\n");
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	printf("%u\n", info ? info->port : 0);
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	MHD_stop_daemon(d);
	return 0;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int slow_open(int i, int port)
{
	struct sockaddr_in sa = { 0 }, da = { 0 };
	char src[32];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	snprintf(src, sizeof(src), "127.0.%d.%d", (2 + i / PER_ADDRESS) / 250, 2 + (i / PER_ADDRESS) % 250);
	sa.sin_family = AF_INET;
	inet_pton(AF_INET, src, &sa.sin_addr);
	da.sin_family = AF_INET;
	da.sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, "127.0.0.1", &da.sin_addr);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    (connect(fd, (struct sockaddr *)&da, sizeof(da)) < 0 && errno != EINPROGRESS)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int slow(int port, int n, int seconds)
{
	int *fd = calloc((size_t)n, sizeof(int));
	int64_t end = mono_ms() + (int64_t)seconds * 1000;
	long closed = 0, failed = 0;
	struct rlimit rl;

	if (!fd)
		return 1;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	for (int i = 0; i < n; i++)
		if ((fd[i] = slow_open(i, port)) < 0)
			failed++;
	for (int tick = 0; mono_ms() < end; tick++) {
		for (int i = 0; i < n; i++) {
			struct pollfd p = { fd[i], POLLIN | POLLRDHUP, 0 };
			char b[256];
			int dead = fd[i] < 0;
			if (!dead && poll(&p, 1, 0) > 0 && recv(fd[i], b, sizeof(b), MSG_DONTWAIT) <= 0)
				dead = 1;
			if (!dead && tick % 6 == 0) {
				const char *bytes = tick == 0 ? "GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nX-Slow: " : "a";
				if (send(fd[i], bytes, strlen(bytes), MSG_NOSIGNAL) < 0 && errno != EAGAIN && errno != ENOTCONN)
					dead = 1;
			}
			if (dead) {
				if (fd[i] >= 0) {
					close(fd[i]);
					closed++;
				}
				if ((fd[i] = slow_open(i, port)) < 0)
					failed++;
				else
					send(fd[i], "GET / HTTP/1.1\r\nX-Slow: ", 24, MSG_NOSIGNAL);
			}
		}
		usleep(500 * 1000);
	}
	for (int i = 0; i < n; i++)
		if (fd[i] >= 0)
			close(fd[i]);
	free(fd);
	printf("%ld closed by the server, %ld failed to open\n", closed, failed);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "trivial"))
		return trivial();
	if (argc == 5 && !strcmp(argv[1], "slow"))
		return slow(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
	fprintf(stderr, "usage: load-bench trivial | load-bench slow PORT N SECONDS\n");
	return 2;
}
