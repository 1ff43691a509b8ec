/*
 * api.h - otacd's HTTP server: the JSON API, the agent protocol, the page.
 *
 * libmicrohttpd in thread-per-connection mode: a handler may block (an
 * agent's long poll, a live log follower) without holding up anyone else.
 * Handlers read through their thread's reader connection (store_reader())
 * and change state only through the engine (engine.h).  docs/api.md is the
 * reference for every route.
 */
#ifndef OTA_API_H
#define OTA_API_H

#include <sys/socket.h>

#include <stdint.h>

#include "engine.h"

struct otacd_config;
struct sources;

struct api_config {
	const char *listen;          /* HOST:PORT; port 0 picks a free one */
	struct engine *engine;
	const struct otacd_config *config;   /* repositories, for webhooks and sources */
	struct sources *sources;
	int anonymous_read;
	int64_t lease_ms, heartbeat_ms;
	struct updsrv *updsrv;       /* fleet state for rollout views (may be NULL) */
};

struct api;

int api_start(struct api **out, const struct api_config *cfg);
/* "HOST:PORT" (HOST may be [v6]) resolved for bind(); OTA_EINVAL with the reason.
 * Also used by the device listener (devapi.c). */
struct sockaddr_storage;
int api_parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len);
/* The port actually bound. */
int api_port(const struct api *a);
void api_stop(struct api *a);

#endif
