/*
 * api.h - otacd's HTTP server: the JSON API, the agent protocol, the page.
 *
 * libmicrohttpd's epoll thread pool: a few threads serve every connection,
 * so a handler never sleeps; what waits (an agent's long poll, a live log
 * follower, a webhook waiting for the source worker) parks its suspended
 * connection with the waiter thread (api_wait.c), which also shuts down
 * connections whose request is not complete within request_timeout.
 * Handlers read through their thread's reader connection (store_reader())
 * and change state only through the engine (engine.h).  docs/api.md is the
 * reference for every route.
 */
#ifndef OTA_API_H
#define OTA_API_H

#include <sys/socket.h>

#include <stdint.h>

#include "../engine.h"

struct otacd_config;
struct sources;
struct fleet_ca;

struct api_config {
	const char *listen;          /* HOST:PORT; port 0 picks a free one */
	const char *agent_listen;    /* the agents' own listener, or NULL/"" for none */
	int64_t request_timeout_ms;  /* a request's header must be complete within this */
	unsigned max_connections;    /* per listener */
	unsigned max_per_client;     /* connections per client address */
	unsigned threads;            /* the thread pool's size; 0: from the CPU count */
	struct engine *engine;
	const struct otacd_config *config;   /* repositories, for webhooks and sources */
	struct sources *sources;
	int anonymous_read;
	int64_t lease_ms, heartbeat_ms;
	struct updsrv *updsrv;       /* fleet state for rollout views (may be NULL) */
	struct fleet_ca *devca;      /* the device CA (issue 13; may be NULL) */
	struct tls_server *tls;      /* the main listener's TLS (tls/tls.h), NULL: plain HTTP */
	struct tls_server *agent_tls; /* the agents' listener's */
	const char *forward_ca;      /* issue 16: the CA bundle for an https:// leader (api_forward.h); NULL: the system's */
};

struct api;
struct tls_server;

int api_start(struct api **out, const struct api_config *cfg);
/* "HOST:PORT" (HOST may be [v6]) resolved for bind(); OTA_EINVAL with the reason.
 * Also used by the device listener (devapi.c). */
struct sockaddr_storage;
int api_parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len);
/* The port actually bound. */
int api_port(const struct api *a);
/* The agents' listener's port, 0 without one. */
int api_agent_port(const struct api *a);
void api_stop(struct api *a);

/*
 * Issue 16 (api_follower.c, docs/scale.md): several instances on one
 * PostgreSQL database.  An API started with no engine (cfg->engine NULL)
 * serves reads only; api_lead() hands it the engine and the sources once
 * this instance leads (main thread, once).  api_follower_set(1) makes the
 * API forward state-changing calls to the leader (api_forward.h) and the
 * device API refuse them with 503; api_following() says whether they do.
 */
int api_lead(struct api *a, struct engine *e, struct sources *s);
void api_follower_set(int on);
int api_following(void);

#endif
