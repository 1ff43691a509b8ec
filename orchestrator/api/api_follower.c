/*
 * api_follower.c - what a follower answers (issue 16, docs/scale.md).
 *
 * Several otacd instances on one PostgreSQL database all serve the API,
 * but only the leader runs the engine, the single writer.  A follower has
 * no engine: it answers reads from its own reader connections and sends
 * every state-changing call on to the leader (the holder
 * db_leader_current() reads) with api_forward_begin(), relaying the
 * leader's answer (api_forward.h).  The forward comes after authentication
 * (bearer token, job token, webhook signature: a caller that cannot prove
 * who it is gets 401 and nothing is sent) and after the body was read
 * within the route's cap, before the Idempotency-Key is looked at (the
 * leader keeps the key's answer).  No leader recorded, or one that cannot
 * be reached: 503 with Retry-After: 1.  Streamed routes go through a
 * spool file (api_forward_spool(): unnamed, 0600, under the state
 * directory): an agent's artifact upload is written to it as it arrives
 * (capped at artifact_max_size(), the route's own checks first) and sent
 * from it once whole, and the answer to an agent's read of a job (source,
 * inputs: the follower has neither) is spooled and relayed from it
 * (API_FWD_SPOOL_ANSWER).  Why a spool and not a pipe with suspend and
 * resume: memory stays flat by construction, a client cut short never
 * reaches the leader at all (nothing to clean there), a slow client never
 * holds a connection of the leader's, and there is no buffer handover
 * between libmicrohttpd's and libcurl's threads to get wrong; the cost is
 * disk (the disk guard refuses an upload while the disk is full) and one
 * body's time of latency.
 * main.c sets the state: following from start until the first poll that
 * says leader, never again after (a lost lead ends the process).  On
 * SQLite nothing here ever forwards or refuses.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <unistd.h>

#include "../artifact.h"
#include "../config.h"
#include "../db/db_leader.h"
#include "../diskguard.h"
#include "../store.h"
#include "api_forward.h"
#include "api_int.h"

static atomic_int following;

void api_follower_set(int on)
{
	atomic_store(&following, on ? 1 : 0);
}

int api_following(void)
{
	return atomic_load(&following);
}

int api_follower_gated(const struct api_route *route)
{
	/* every call of the agent protocol: the agents must go where jobs are dispatched */
	if (!strncmp(route->pattern, "/api/v1/agent/", 14))
		return 1;
	if (!strcmp(route->method, "GET") || !strcmp(route->method, "HEAD"))
		return 0;
	/* a POST that only reads (identify needs the revocations, which a
	 * follower does not load: main.c) */
	return strcmp(route->pattern, "/api/v1/lint") != 0;
}

int api_follower_forwards(const struct api_route *route)
{
	/* writes with their body in memory or spooled; of the reads, the
	 * agents' reads of a job only (the gate holds no other), spooled */
	return strcmp(route->method, "HEAD") != 0;
}

/* The state directory, where spools go (NULL without a configuration). */
static const char *spool_dir(const struct api *a)
{
	return a->cfg.config ? a->cfg.config->state_dir : NULL;
}

enum MHD_Result api_follower_prepare(struct api *a, struct api_req *r)
{
	char msg[512];

	if (r->route->body != BODY_ARTIFACT)
		return MHD_YES;
	/* the route's own checks read only (query, attempt): a bad upload is
	 * refused before a byte is spooled; the leader checks again */
	if (r->route->precheck && r->route->precheck(a, r))
		return MHD_YES;
	if (diskguard_poll()) {
		diskguard_message(msg, sizeof(msg));
		r->failed = 1;
		return api_reply_error(r, MHD_HTTP_INSUFFICIENT_STORAGE, "%s; retry once space is freed", msg);
	}
	if (!spool_dir(a) || api_forward_spool(spool_dir(a), &r->spool_fd) < 0) {
		r->failed = 1;
		return api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "this follower cannot spool the upload: %s",
				       spool_dir(a) ? ota_error_last() : "no state directory");
	}
	return MHD_YES;
}

int api_follower_spool_write(struct api_req *r, const char *data, size_t len)
{
	if (r->spool_len + len > api_body_cap(r->route->body))
		return OTA_ETOOBIG;
	while (len > 0) {
		ssize_t w = write(r->spool_fd, data, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return ota_error_set(OTA_ERROR, "cannot spool the upload: %s", strerror(w < 0 ? errno : EIO));
		data += w;
		len -= (size_t)w;
		r->spool_len += (uint64_t)w;
	}
	return 0;
}

/* The forward's answer, once libmicrohttpd resumed the connection. */
static enum MHD_Result forward_done(struct api *a, struct api_req *r)
{
	struct MHD_Response *resp = NULL;
	unsigned status = 0;
	enum MHD_Result ret;

	(void)a;
	api_forward_end(r->fwd, &status, &resp);
	r->fwd = NULL;
	ret = api_queue_response(r, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

enum MHD_Result api_follower_forward(struct api *a, struct api_req *r)
{
	int64_t epoch = 0;
	char *leader = api_follower_leader(&epoch);
	struct api_fwd_req q = { r->conn, leader, r->method, r->url, r->body.ptr, r->body.len,
				 api_body_cap(r->route->body), r->request_id, 0, NULL, NULL, 0 };
	struct api_fwd_stream s = { 0, -1, NULL, 0 };
	struct MHD_Response *resp = NULL;
	unsigned status = 0;
	enum MHD_Result ret;
	int rc;

	if (r->spool_fd >= 0) { /* an upload, sent from its spool */
		s.flags |= API_FWD_BODY_FD;
		s.body_fd = r->spool_fd;
		q.body = NULL;
		q.len = (size_t)r->spool_len;
	}
	if (!strcmp(r->method, "GET")) { /* a job's source or inputs: any size */
		s.flags |= API_FWD_SPOOL_ANSWER;
		s.spool_dir = spool_dir(a);
		s.max_answer = (uint64_t)artifact_max_size() + API_FWD_MAX_ANSWER;
	}
	rc = api_forward_begin_stream(a->fwd, &q, &s, &r->fwd, &status, &resp);

	free(leader); /* the job keeps its own copy of the base URL */
	if (rc == 0) {
		r->resume = forward_done;
		return MHD_YES;
	}
	ret = api_queue_response(r, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

char *api_follower_leader(int64_t *epoch)
{
	struct store *db = store_reader();
	char *holder = NULL;

	*epoch = 0;
	if (!db || db_leader_current(store_conn(db), epoch, &holder) < 0)
		return NULL;
	return holder;
}

enum MHD_Result api_follower_refuse(struct api_req *r)
{
	int64_t epoch = 0;
	char *leader = api_follower_leader(&epoch);
	json_t *body = json_pack("{ss so sI}", "error",
				 "this otacd instance is a follower: state-changing calls go to the leader; retry there",
				 "leader", leader ? json_string(leader) : json_null(), "epoch", (json_int_t)epoch);
	char *text = json_dumps(body, JSON_COMPACT);
	struct MHD_Response *resp;
	enum MHD_Result ret;

	json_decref(body);
	free(leader);
	if (!text)
		text = xstrdup("{\"error\":\"this otacd instance is a follower\"}");
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "Retry-After", "1");
	ret = api_queue_response(r, MHD_HTTP_SERVICE_UNAVAILABLE, resp);
	MHD_destroy_response(resp);
	return ret;
}
