/*
 * api_int.h - what api.c (HTTP plumbing, reads) and api_agent.c (the agent
 * protocol) share.  Not used outside the HTTP server.
 */
#ifndef OTA_API_INT_H
#define OTA_API_INT_H

#include <jansson.h>
#include <microhttpd.h>

#include "../../common/log.h"
#include "../../common/notify.h"
#include "api.h"
#include "api_wait.h"
#include "../artifact.h"
#include "../auth.h"

#define API_MAX_JSON_BODY (1 << 20)
#define API_MAX_LOG_CHUNK (1 << 20)
#define API_MAX_HOOK_BODY (25 << 20)   /* GitHub's own cap on payloads */

enum body_kind {
	BODY_NONE,      /* no body expected; any body is capped small */
	BODY_JSON,      /* JSON object, capped at API_MAX_JSON_BODY */
	BODY_RAW,       /* raw bytes kept in memory (log chunks, lint) */
	BODY_ARTIFACT,  /* streamed to the artifact store */
	BODY_HOOK,      /* raw webhook payload, capped at API_MAX_HOOK_BODY */
	BODY_REPORT,    /* raw report file in memory, capped at REPORT_MAX_BYTES */
};

struct api_req;

typedef enum MHD_Result (*api_handler)(struct api *a, struct api_req *r);

struct api_route {
	const char *method;
	const char *pattern;       /* "/api/v1/runs/:id/cancel" */
	enum auth_role need;       /* ROLE_NONE: no authentication */
	enum body_kind body;
	api_handler handler;
	/* Called on the first callback, before the body, for early checks
	 * (e.g. artifact name): return non-zero after queueing a response. */
	int (*precheck)(struct api *a, struct api_req *r);
	/* 1: the answer comes from the database alone and is the same for
	 * every reader, so it is kept until the next commit (api_cache.c) */
	int cached;
};

struct api_req {
	struct api *api;
	const struct api_listener *listener;
	struct MHD_Connection *conn;
	const struct api_route *route;
	const char *url;
	int64_t id;                /* the :id in the pattern, if any */
	char sha[65];              /* the :sha in the pattern, if any */
	char sha40[41];            /* the :commit in the pattern, if any */
	enum auth_role role;
	char actor[64];            /* the token's name, for the audit log */
	struct buf body;
	json_t *json;              /* parsed BODY_JSON */
	struct artifact_upload *upload;
	int too_big;
	int failed;                /* an error was already decided */
	int status;
	char error[512];
	struct api_cache_slot *cache_slot;   /* the slot this request builds */
	/* a parked request: called instead of the route's handler on resume */
	api_handler resume;
	struct api_park park;
	int64_t wait_deadline;     /* the handler's own deadline (clock_mono_ms) */
	int64_t wait_arg;          /* what it waits for (an id) */
	int wait_kind;
	/* job routes (ROLE_JOB), set by api_job_auth from the job token */
	int64_t attempt, agent_id;
	json_t *agent_labels;      /* the agent's registered labels (NULL: any) */
	char *idem_key;            /* a reserved Idempotency-Key: keep the answer */
	int idem_ran;              /* the handler of that request has run */
	int forward;               /* issue 16: a follower sends it to the leader once the body is in */
	struct api_fwd_job *fwd;   /* that forward on its way (api_forward.h) */
	int spool_fd;              /* a forwarded upload's spool (api_forward_spool); -1: none */
	uint64_t spool_len;        /* bytes in it */
	int64_t started_us;        /* monotonic µs the header was complete (latency metrics) */
	/* issue 18: the request's id (the client's X-Request-Id when sane, else
	 * made here), on its log lines and in its answer's X-Request-Id */
	char request_id[OTA_LOG_REQUEST_ID_MAX + 1];
	char method[16];
	unsigned status_sent;      /* the answer's status, for the access log line */
};

/* The largest body a route reads (its body kind's cap). */
size_t api_body_cap(enum body_kind k);

/* Lists (docs/api.md, "Lists"): ?limit= from 1 to API_LIST_MAX, dflt when
 * absent.  -1 after answering 400 for anything else. */
#define API_LIST_MAX 500
int api_list_limit(struct api_req *r, int64_t dflt, int64_t *out);

/* MHD_queue_response with the request's X-Request-Id added: every answer
 * goes through here. */
enum MHD_Result api_queue_response(struct api_req *r, unsigned status, struct MHD_Response *resp);

/* api_ops.c: /healthz, /readyz, /metrics */
enum MHD_Result api_get_metrics(struct api *a, struct api_req *r);
enum MHD_Result api_get_healthz(struct api *a, struct api_req *r);
enum MHD_Result api_get_readyz(struct api *a, struct api_req *r);
void api_ops_observe(const struct api_route *route, int64_t elapsed_us);
json_t *api_ops_storage_json(void);
/* api_follower.c (issue 16): the routes a follower does not run itself,
 * those of them it forwards to the leader (the rest get its 503), the
 * forward (after authentication and the body: api_forward.h), its 503
 * answer, the leader's address (caller frees; NULL: none recorded) */
int api_follower_gated(const struct api_route *route);
int api_follower_forwards(const struct api_route *route);
/* after authentication, before the body: a forwarded upload's checks and
 * spool (MHD_YES; r->failed when it answered), then its body chunks */
enum MHD_Result api_follower_prepare(struct api *a, struct api_req *r);
int api_follower_spool_write(struct api_req *r, const char *data, size_t len);
enum MHD_Result api_follower_forward(struct api *a, struct api_req *r);
enum MHD_Result api_follower_refuse(struct api_req *r);
char *api_follower_leader(int64_t *epoch);
/* api_backup.c: POST /api/v1/backup (admin) */
enum MHD_Result api_post_backup(struct api *a, struct api_req *r);

/* One listening socket: the API, or the agents' own (agent_listen). */
struct api_listener {
	struct api *api;
	struct MHD_Daemon *mhd;
	int agents_only;           /* only the agent protocol and health */
	int port;
	struct tls_server *tls;    /* NULL: plain HTTP */
};

struct api {
	struct api_listener main, agents;
	struct api_waiter *waiter;
	struct api_cache *cache;
	struct api_fwd *fwd;       /* a follower's forwards to the leader (api_forward.h) */
	struct api_config cfg;
	volatile int stopping;
};

enum MHD_Result api_reply_json(struct api_req *r, unsigned status, json_t *body);
enum MHD_Result api_reply_error(struct api_req *r, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Maps an OTA_E* code to an HTTP status with ota_error_last() as the reason. */
enum MHD_Result api_reply_rc(struct api_req *r, int rc);
const char *api_query(struct api_req *r, const char *key);
/* Parse a non-negative integer query parameter; -1 if absent, -2 if invalid. */
int64_t api_query_int(struct api_req *r, const char *key);

/* api_cache.c: answers of `cached` routes, one per URL and query */
#define API_CACHE_SLOTS 64
struct api_cache *api_cache_new(void);
void api_cache_free(struct api_cache *c);
/* Before the handler: queue the kept answer (*answered = 1), or wait for
 * the thread building it, or claim the slot so that this request's answer
 * is kept (r->cache_slot). */
enum MHD_Result api_cache_begin(struct api *a, struct api_req *r, int *answered);
/* On queueing r's answer: a 200's body is copied into its slot. */
void api_cache_keep(struct api *a, struct api_req *r, unsigned status, const char *type, const char *data,
		    size_t len);
/* The request ended without an answer: free its claim. */
void api_cache_abandon(struct api *a, struct api_req *r);

/* api_wait.c (the waiter itself: api_wait.h) */
/* Park request r; on resume libmicrohttpd calls the access handler again
 * and fn runs instead of the route's handler.  fn looks at the state again
 * and answers or parks again; it must answer when r->api->stopping. */
enum MHD_Result api_wait(struct api_req *r, struct notifier *n, uint64_t gen, int64_t deadline, api_handler fn);
/* api_agent.c */
enum MHD_Result api_agent_register(struct api *a, struct api_req *r);
enum MHD_Result api_agent_request(struct api *a, struct api_req *r);
enum MHD_Result api_agent_heartbeat(struct api *a, struct api_req *r);
enum MHD_Result api_agent_log(struct api *a, struct api_req *r);
int api_agent_artifact_precheck(struct api *a, struct api_req *r);
/* Before the body of a job route (need ROLE_JOB): the bearer must be the
 * job token of this job's current attempt; sets r->attempt, r->agent_id,
 * r->actor.  0, or 1 after queueing 401/403/409 (r->failed set). */
int api_job_auth(struct api *a, struct api_req *r);
/* api_agents.c: registered agents (admin) */
enum MHD_Result api_post_agent(struct api *a, struct api_req *r);
enum MHD_Result api_post_agent_revoke(struct api *a, struct api_req *r);
enum MHD_Result api_post_token(struct api *a, struct api_req *r);
enum MHD_Result api_post_token_revoke(struct api *a, struct api_req *r);
/* api_devca.c: the device CA, provisioners, device certificates (issue 13) */
enum MHD_Result api_get_devca(struct api *a, struct api_req *r);
enum MHD_Result api_post_devca(struct api *a, struct api_req *r);
enum MHD_Result api_post_devca_remove(struct api *a, struct api_req *r);
enum MHD_Result api_get_provisioners(struct api *a, struct api_req *r);
enum MHD_Result api_post_provisioner(struct api *a, struct api_req *r);
enum MHD_Result api_post_provisioner_revoke(struct api *a, struct api_req *r);
enum MHD_Result api_post_device_provision(struct api *a, struct api_req *r);
enum MHD_Result api_post_device_revoke(struct api *a, struct api_req *r);
enum MHD_Result api_post_device_identify(struct api *a, struct api_req *r);
enum MHD_Result api_agent_artifact(struct api *a, struct api_req *r);
enum MHD_Result api_agent_finish(struct api *a, struct api_req *r);

/* api_hooks.c */
enum MHD_Result api_hook_github(struct api *a, struct api_req *r);
enum MHD_Result api_hook_gitlab(struct api *a, struct api_req *r);
enum MHD_Result api_hook_gitea(struct api *a, struct api_req *r);
enum MHD_Result api_post_trigger(struct api *a, struct api_req *r);
enum MHD_Result api_agent_source(struct api *a, struct api_req *r);
enum MHD_Result api_get_deliveries(struct api *a, struct api_req *r);
/* issue 17: the notification outbox (api_notify.c) */
enum MHD_Result api_get_notifications(struct api *a, struct api_req *r);
/* api_flags.c: feature flags (issue 17) */
enum MHD_Result api_get_flags(struct api *a, struct api_req *r);
enum MHD_Result api_post_flags(struct api *a, struct api_req *r);
enum MHD_Result api_get_commit(struct api *a, struct api_req *r);
int api_attempt_current(int64_t job, int64_t attempt);

/* api_reports.c */
enum MHD_Result api_agent_report(struct api *a, struct api_req *r);
enum MHD_Result api_agent_inputs(struct api *a, struct api_req *r);
enum MHD_Result api_agent_input(struct api *a, struct api_req *r);
enum MHD_Result api_get_run_reports(struct api *a, struct api_req *r);
enum MHD_Result api_get_run_metrics(struct api *a, struct api_req *r);

/* api_release.c */
enum MHD_Result api_get_releases(struct api *a, struct api_req *r);
enum MHD_Result api_get_release(struct api *a, struct api_req *r);
enum MHD_Result api_get_release_verification(struct api *a, struct api_req *r);
enum MHD_Result api_get_keys(struct api *a, struct api_req *r);
enum MHD_Result api_get_trust(struct api *a, struct api_req *r);         /* issue 13 */
enum MHD_Result api_post_revocations(struct api *a, struct api_req *r);  /* issue 13 */

/* api_rollout.c */
enum MHD_Result api_get_rollout(struct api *a, struct api_req *r);
enum MHD_Result api_get_rollouts(struct api *a, struct api_req *r);
enum MHD_Result api_get_gates(struct api *a, struct api_req *r);
enum MHD_Result api_get_audit(struct api *a, struct api_req *r);
enum MHD_Result api_post_rollout_action(struct api *a, struct api_req *r);

/* A read snapshot on the thread's reader (issue 16): every statement of
 * one answer between api_snapshot_begin() and api_snapshot_end() reads the
 * same state, on SQLite and PostgreSQL (docs/storage.md).  begin: 0 or
 * negative (message in the error slot); end is safe without a begin. */
struct store;
int api_snapshot_begin(struct store *s);
void api_snapshot_end(struct store *s);
/* Every SQL statement a reader file prepares, one call of fn each, so that
 * tests/test_dbconv_read.c prepares them on PostgreSQL too. */
void api_read_sql_each(void (*fn)(const char *sql, void *arg), void *arg);
void api_reports_sql_each(void (*fn)(const char *sql, void *arg), void *arg);
void api_rollout_sql_each(void (*fn)(const char *sql, void *arg), void *arg);
void api_release_sql_each(void (*fn)(const char *sql, void *arg), void *arg);
void api_notify_sql_each(void (*fn)(const char *sql, void *arg), void *arg);
/* api_reports.c: a job's inputs [{name, sha256, size, hardware}] (the
 * passed artifacts of the stages its stage needs, its board's only when
 * it has one), read on s; OTA_ENOTFOUND for no such job. */
int api_job_inputs(struct store *s, int64_t job, json_t **out);

/* api_read.c */
enum MHD_Result api_get_pipelines(struct api *a, struct api_req *r);
enum MHD_Result api_get_runs(struct api *a, struct api_req *r);
enum MHD_Result api_get_run(struct api *a, struct api_req *r);
enum MHD_Result api_get_run_artifacts(struct api *a, struct api_req *r);
enum MHD_Result api_get_job(struct api *a, struct api_req *r);
enum MHD_Result api_get_job_log(struct api *a, struct api_req *r);
enum MHD_Result api_get_artifact(struct api *a, struct api_req *r);
enum MHD_Result api_get_agents(struct api *a, struct api_req *r);
enum MHD_Result api_get_object(struct api *a, struct api_req *r);
enum MHD_Result api_get_events(struct api *a, struct api_req *r);
/* Lint warnings for gates that cannot be proven at a step's expected
 * device count (the fleet's devices of the product x the step's percent). */
struct pipeline;
struct strvec;
void api_lint_gate_sizing(struct api *a, const struct pipeline *p, struct strvec *w);

#endif
