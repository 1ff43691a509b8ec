/*
 * protocol.c - otacd-agent's own calls of the agent protocol (docs/api.md):
 * registration, the long poll for a job, the heartbeat thread and the
 * report of an attempt's end.
 *
 * Why here: these calls decide whether the agent may go on (a refused
 * registration stops it, a 409 heartbeat drops the job, a daemon away too
 * long stops a local agent), so they share one place for their retries and
 * for telling agent.c the daemon answered (agent_heard, agent_orphaned).
 * The job's own traffic is elsewhere: its log in logsend.c, its source and
 * artifacts in transfer.c, stage kinds' uploads in stagework.c.
 *
 * Threads: proto_register, proto_request_job and proto_finish run on the
 * main thread; proto_heartbeat is a thread of its own for the length of a
 * job, touching only struct job's fields under j->mu.
 */
#include "../common/httpc.h"
#include "../common/util.h"
#include "agent.h"

#include <pthread.h>
#include <stdlib.h>

#define LONGPOLL_WAIT_MS 25000
#define LONGPOLL_TIMEOUT_MS 35000

/* ---- registration and job requests --------------------------------- */

int proto_register(struct agent *a)
{
	long backoff = 0;
	int warned = 0, rc = OTA_ERROR;

	while (!agent_stop_flag) {
		json_t *req = json_object(), *labels = json_array(), *ans = NULL, *id;
		char *url = xasprintf("%s/api/v1/agent/register", a->url);
		long status = 0;

		for (size_t i = 0; i < a->labels.n; i++)
			json_array_append_new(labels, json_string(a->labels.v[i]));
		if (a->name) /* checked by the daemon against the token's agent */
			json_object_set_new(req, "name", json_string(a->name));
		json_object_set_new(req, "labels", labels);
		if (a->local)
			json_object_set_new(req, "local", json_true());
		rc = httpc_json(&ans, &status, "POST", url, a->token, req, REQUEST_TIMEOUT_MS);
		json_decref(req);
		free(url);
		id = json_object_get(ans, "agent_id");
		if (!rc && status == 200 && (json_is_integer(id) || json_is_string(id))) {
			json_t *l = json_object_get(ans, "lease_ms"), *h = json_object_get(ans, "heartbeat_ms");
			free(a->id_str);
			a->id_str = agent_scalar_text(id);
			a->lease_ms = json_is_integer(l) ? (long)json_integer_value(l) : 30000;
			a->heartbeat_ms = json_is_integer(h) && json_integer_value(h) > 0
				? (long)json_integer_value(h) : 5000;
			if (!a->name && json_is_string(json_object_get(ans, "name")))
				a->name = xstrdup(json_string_value(json_object_get(ans, "name")));
			agent_say("%s registered as agent %s with %s", a->name ? a->name : "?", a->id_str, a->url);
			agent_heard();
			json_decref(ans);
			return 0;
		}
		if (!rc && (status == 401 || status == 403 || status == 400)) {
			const char *e = httpc_json_error(ans);
			rc = ota_error_set(status == 400 ? OTA_EINVAL : OTA_EAUTH, "register refused (HTTP %ld)%s%s",
					   status, e ? ": " : "", e ? e : "");
			json_decref(ans);
			return rc;
		}
		if (!warned++)
			agent_warn("daemon not ready (%s), retrying", rc ? ota_error_last() : "unexpected answer");
		json_decref(ans);
		if (agent_orphaned())
			break;
		backoff = agent_backoff_next(backoff);
		agent_sleep_ms(backoff);
	}
	return ota_error_set(OTA_ERROR, "stopped");
}

/*
 * One long poll.  0 with *out = JOB_SPEC or NULL (nothing queued);
 * OTA_ENOTFOUND when the daemon does not know this agent (re-register);
 * OTA_ERROR when unreachable or odd.
 */
int proto_request_job(json_t **out, struct agent *a)
{
	json_t *req = json_object(), *ans = NULL;
	char *url = xasprintf("%s/api/v1/agent/jobs/request", a->url);
	long status = 0;
	int rc;

	*out = NULL;
	json_object_set_new(req, "wait_ms", json_integer(LONGPOLL_WAIT_MS));
	rc = httpc_json(&ans, &status, "POST", url, a->token, req, LONGPOLL_TIMEOUT_MS);
	if (rc < 0)
		goto out;
	if (status < 500)
		agent_heard();
	if (status == 200 && json_is_object(ans)) {
		*out = ans;
		ans = NULL;
	} else if (status == 401 || status == 404) {
		rc = ota_error_set(OTA_ENOTFOUND, "agent %s unknown to the daemon", a->id_str);
	} else if (status != 204) {
		rc = ota_error_set(OTA_ERROR, "job request answered HTTP %ld", status);
	}
out:
	json_decref(req);
	json_decref(ans);
	free(url);
	return rc;
}

/* ---- heartbeat ------------------------------------------------------ */

void *proto_heartbeat(void *arg)
{
	struct job *j = arg;
	long wait = j->a->heartbeat_ms;

	agent_log_job(j);
	pthread_mutex_lock(&j->mu);
	for (;;) {
		int64_t next = agent_now_ms() + wait;
		json_t *req, *ans = NULL;
		long status = 0;
		char *url;
		int rc;

		/* The condition variable is shared with the log sender, so a
		 * wake-up is not yet the time to beat. */
		while (!j->hb_stop && !j->lost && !agent_stop_flag && agent_now_ms() < next)
			agent_job_wait(j, (long)(next - agent_now_ms()));
		if (j->hb_stop || j->lost || agent_stop_flag)
			break;
		pthread_mutex_unlock(&j->mu);
		req = json_object();
		json_object_set_new(req, "attempt", json_integer(j->attempt));
		url = xasprintf("%s/api/v1/agent/jobs/%s/heartbeat", j->a->url, j->id_url);
		rc = httpc_json(&ans, &status, "POST", url, j->token, req, REQUEST_TIMEOUT_MS);
		free(url);
		json_decref(req);
		pthread_mutex_lock(&j->mu);
		wait = j->a->heartbeat_ms;
		if (!rc && status < 500)
			agent_heard();
		if (rc < 0 || status >= 500) {
			wait = wait > 1000 ? 1000 : wait; /* the daemon may be restarting */
			if (agent_orphaned())
				pthread_cond_broadcast(&j->cv);
		} else if (status == 200) {
			if (json_is_true(json_object_get(ans, "cancel")) && !j->cancel) {
				j->cancel = 1;
				pthread_cond_broadcast(&j->cv);
			}
		} else if (status == 409 || status == 404 || status == 401 || status == 403) {
			/* the attempt is over, or the agent was revoked: stop the step */
			j->lost = 1;
			pthread_cond_broadcast(&j->cv);
		}
		json_decref(ans);
	}
	pthread_mutex_unlock(&j->mu);
	return NULL;
}

/* ---- the end of an attempt ----------------------------------------- */

int proto_finish(struct job *j, int exit_code, const char *failure, const char *message,
		 int tries, long timeout_ms)
{
	char *url = xasprintf("%s/api/v1/agent/jobs/%s/finish", j->a->url, j->id_url);
	json_t *req = json_object();
	long backoff = 0;
	int rc = OTA_ERROR;

	json_object_set_new(req, "attempt", json_integer(j->attempt));
	json_object_set_new(req, "exit_code", json_integer(exit_code));
	json_object_set_new(req, "failure", failure ? json_string(failure) : json_null());
	json_object_set_new(req, "message", json_string(message ? message : ""));
	for (int t = 0; tries == 0 || t < tries; t++) {
		json_t *ans = NULL;
		long status = 0;
		int r = httpc_json(&ans, &status, "POST", url, j->token, req, timeout_ms);
		json_decref(ans);
		if (!r && status < 500)
			agent_heard();
		if (!r && ((status >= 200 && status < 300) || status == 409)) {
			rc = 0;
			break;
		}
		if (!r && status >= 400 && status < 500 && status != 408 && status != 429) {
			agent_warn("job %s: finish refused (HTTP %ld)", j->id, status);
			break;
		}
		if ((agent_stop_flag || agent_orphaned()) && tries == 0)
			break;
		backoff = agent_backoff_next(backoff);
		agent_sleep_ms(backoff);
	}
	json_decref(req);
	free(url);
	return rc;
}
