/*
 * devapi_int.h - what devapi.c (the device listener, its routes and
 * checks) and devapi_fwd.c (a follower's forwarding, issue 16) share.  Not
 * an API: see fleet.h's devapi_*.
 */
#ifndef OTA_DEVAPI_INT_H
#define OTA_DEVAPI_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stddef.h>

#include "../../common/util.h"
#include "../api/api_forward.h"
#include "fleet.h"

#define DEVAPI_BODY_MAX ((size_t)1 << 20)
/* issue 16: a follower's check of a download: the leader answers 204
 * after every check instead of the bytes (devapi.c, serve_or_vouch) */
#define DEVAPI_CHECK "X-Otacd-Download-Check"
/* a follower's /metrics: the leader answers the fleet-wide part only, the
 * follower appends its own process counters (devapi.c, do_metrics) */
#define DEVAPI_FLEET_METRICS "X-Otacd-Fleet-Metrics"

enum route { R_NONE, R_CHECKIN, R_REPORTS, R_IMAGE, R_METRICS, R_REGISTER, R_REGISTRATIONS, R_PROVISION, R_PKI, R_ORIGIN };

struct devapi {
	struct MHD_Daemon *mhd;
	struct api_waiter *waiter;     /* the header deadline (api_wait.c) */
	struct fleet *f;               /* NULL on a follower until it leads (devapi_attach) */
	int port, metrics_public;
	struct tls_server *tls;        /* issue 13: NULL: plain HTTP */
	/* guards every request's batch state below */
	pthread_mutex_t mu;
	/* atomics (every check-in counts itself in and out: a mutex there
	 * was two lock round trips per check-in on one shared line) */
	int inflight;      /* requests that may hand work to the writer, not done */
	int stopping;      /* devapi_stop: no new batches */
	/* issue 16: a follower forwards what changes the fleet to the
	 * leader's device API (devapi_set_leader; under mu) */
	struct api_fwd *fwd;
	char leader[256];
};

struct dreq {
	enum route route;
	struct buf body;
	int too_big, answered_early;
	int forward;                   /* issue 16: to the leader once the body is read */
	struct api_fwd_job *fwd;       /* ... on its way (the connection suspended) */
	size_t received;
	/* the Authorization header's token, in MHD's request headers (valid
	 * until the request completes: no copy of the secret to wipe) */
	const char *token;
	/* issue 13: the device the verified client certificate names (empty:
	 * no certificate; token authentication) */
	char cert_dev[129];
	char cert_product[129];  /* its product (OU), "" if none */
	/* issue 16: FWDCERT_HEADER came (from a follower, or a forger): 1 until
	 * checked once the body is read (devapi_fwd_identify), then 2 */
	int fwd_cert;
	/* report batches: set by the writer's done callback */
	struct devapi *api;
	struct MHD_Connection *conn;
	int submitted, done, suspended, rc, accepted;   /* under api->mu */
	char err[512];
	struct fleet_reg *reg;   /* a registration handed to the writer */
	json_t *refused;         /* a report batch's refused reports */
	json_t *duplicate;       /* its reports applied before (report seq) */
	/* last (dreq_new does not clear it): a check-in's answer (JSON
	 * text), sent from here without a copy (the request, recycled only
	 * once complete, outlives its response) */
	char answer[FLEET_ANSWER_MAX];
};

/* A request header's value, or NULL (the name's length given: no strlen
 * per lookup, two lookups per request). */
static inline const char *devapi_header(struct MHD_Connection *c, const char *name, size_t len)
{
	const char *v = NULL;
	size_t vlen;
	return MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, name, len, &v, &vlen) == MHD_YES ? v : NULL;
}

/* devapi.c: /metrics' process part: what this process counted (its
 * downloads, TLS refusals, check-ins, reports, push, admission) and
 * otacd_leader. */
void devapi_process_metrics(struct devapi *a, struct buf *b, int leader);
/* devapi.c: the bytes of image sha, whole or the Range asked for. */
enum MHD_Result devapi_serve_image(struct MHD_Connection *c, const char *sha, int delta);

/* devapi_fwd.c (issue 16) */
/* The forwarder of a follower's listener (a->fwd), trusting
 * devapi_set_forward's CA: 0 or an OTA_E* code. */
int devapi_fwd_new(struct devapi *a);
/* 1 when a follower's request r goes to the leader (once its body is read). */
int devapi_forwardable(struct devapi *a, struct MHD_Connection *c, const struct dreq *r);
/* The leader's check of a certificate a follower forwarded: 0 or OTA_EAUTH. */
int devapi_fwd_identify(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *method,
			const char *url);
/* r to the leader, then (resumed) its answer or, for a vouched download, the bytes. */
enum MHD_Result devapi_forward(struct devapi *a, struct MHD_Connection *c, struct dreq *r, const char *method,
			       const char *url);

#endif
