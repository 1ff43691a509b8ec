/*
 * api_follower.c - what a follower answers (issue 16, docs/scale.md).
 *
 * Several otacd instances on one PostgreSQL database all serve the API,
 * but only the leader runs the engine, the single writer.  A follower has
 * no engine: it answers reads from its own reader connections and refuses
 * every state-changing call with 503, Retry-After: 1 and the leader's
 * address (the holder db_leader_current() reads), so a load balancer or a
 * script retries there.  The refusal comes after authentication (bearer
 * token, job token, webhook signature): a caller that cannot prove who it
 * is gets 401 and learns nothing about the instances.  The device API
 * refuses the same way without an address (devices retry through the
 * balancer).  Forwarding the call to the leader instead is planned
 * (docs/scale.md, "What remains").  main.c sets the state: following from
 * start until the first poll that says leader, never again after (a lost
 * lead ends the process).  On SQLite nothing here ever refuses.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db_leader.h"
#include "../store.h"
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
