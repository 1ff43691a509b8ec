/*
 * main.c - otacd-git, the daemon's git helper.
 *
 * otacd starts this program on demand (orchestrator/gitsrc.c) with a
 * socketpair as fd 0 and no other descriptor but stdout and stderr.  It
 * answers requests one at a time (orchestrator/gitproto.h) with the
 * libgit2/libarchive code in gitwork.c, and exits when fd 0 reaches end of
 * file or after --idle-ms without a request.  It is where data from forges
 * is parsed, so it holds nothing of the daemon's: no database, no keys but
 * the repository credentials each request carries (docs/security.md).
 *
 *   otacd-git --state-dir DIR [--fetch-timeout-ms N] [--idle-ms N]
 *             [--log-format F] [--log-level L]
 *
 * Its lines go to stderr (the daemon's) through common/log.c, in the
 * format and level the daemon passes, with "program":"otacd-git".
 */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../orchestrator/gitproto.h"
#include "gitwork.h"

static const char *get(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static int send_reply(json_t *reply)
{
	char *text = json_dumps(reply, JSON_COMPACT);
	int rc = text ? gitproto_write(0, text, strlen(text)) : OTA_ERROR;

	free(text);
	return rc;
}

/* The reply for a failed call: its code and the error slot's message
 * (logged at debug: the daemon reports what matters to it). */
static json_t *failed(int rc)
{
	ota_log(OTA_LOG_DEBUG, "git helper: request failed: %s", ota_error_last());
	return json_pack("{s:i, s:s}", "rc", rc, "error", ota_error_last());
}

static json_t *do_resolve(const struct gitsrc_repo *repo, json_t *req)
{
	struct gitsrc_commit c;
	json_t *reply;
	int rc = gitwork_resolve(repo, get(req, "what") ? get(req, "what") : "", &c);

	if (rc < 0)
		return failed(rc);
	reply = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:I}", "rc", 0, "id", c.id, "tree", c.tree,
			  "author", c.author, "committer", c.committer, "message", c.message,
			  "time_ms", (json_int_t)c.time_ms);
	gitsrc_commit_release(&c);
	/* a signature or message that is not UTF-8 cannot travel as JSON */
	return reply ? reply : json_pack("{s:i, s:s}", "rc", OTA_EINVAL, "error",
					 "the commit's author, committer or message is not valid UTF-8");
}

/* Answers a read itself: the reply and then the data frame. */
static int do_read(const struct gitsrc_repo *repo, json_t *req)
{
	struct buf data = BUF_INIT;
	json_int_t max = json_integer_value(json_object_get(req, "max"));
	json_t *reply;
	int rc;

	if (max < 0 || max > GITSRC_READ_MAX)
		max = GITSRC_READ_MAX;
	rc = gitwork_read_file(repo, get(req, "what") ? get(req, "what") : "", get(req, "path"), &data, (size_t)max);
	reply = rc < 0 ? failed(rc) : json_pack("{s:i, s:I}", "rc", 0, "len", (json_int_t)data.len);
	rc = send_reply(reply);
	if (rc == 0 && json_integer_value(json_object_get(reply, "rc")) == 0)
		rc = gitproto_write(0, buf_cstr(&data), data.len);
	json_decref(reply);
	buf_release(&data);
	return rc;
}

static int serve(json_t *req)
{
	json_t *r = json_object_get(req, "repo"), *reply = NULL;
	struct gitsrc_repo repo = { get(r, "name"), get(r, "url"), get(r, "username"), get(r, "token"),
				    get(r, "ssh_key") };
	const char *op = get(req, "op");
	char *tar = NULL;
	int rc;

	if (!op)
		reply = json_pack("{s:i, s:s}", "rc", OTA_EINVAL, "error", "git helper: a request without an op");
	else if (!strcmp(op, "read"))
		return do_read(&repo, req);
	else if (!strcmp(op, "fetch"))
		reply = (rc = gitwork_fetch(&repo, get(req, "request_ref"))) < 0 ? failed(rc) : json_pack("{s:i}", "rc", 0);
	else if (!strcmp(op, "resolve"))
		reply = do_resolve(&repo, req);
	else if (!strcmp(op, "archive"))
		reply = (rc = gitwork_archive(&repo, get(req, "what") ? get(req, "what") : "", &tar)) < 0
				? failed(rc) : json_pack("{s:i, s:s}", "rc", 0, "path", tar);
	else
		reply = json_pack("{s:i, s:s}", "rc", OTA_EINVAL, "error", "git helper: unknown op");
	rc = send_reply(reply);
	json_decref(reply);
	free(tar);
	return rc;
}

int main(int argc, char **argv)
{
	const char *state = NULL, *why = NULL;
	long long timeout_ms = 0, idle_ms = 10000;
	struct buf frame = BUF_INIT;
	int i, rc;

	for (i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--state-dir"))
			state = argv[i + 1];
		else if (!strcmp(argv[i], "--fetch-timeout-ms"))
			timeout_ms = atoll(argv[i + 1]);
		else if (!strcmp(argv[i], "--idle-ms"))
			idle_ms = atoll(argv[i + 1]);
		else
			break;
	}
	/* the log options come last (gitsrc.c passes them so) */
	if (ota_log_args(argv, &i, "otacd-git", &why) < 0 || !state || i != argc) {
		ota_log(OTA_LOG_ERROR, "%s%susage: otacd-git --state-dir DIR [--fetch-timeout-ms N] [--idle-ms N] "
				       "[--log-format F] [--log-level L] (started by otacd, speaking on fd 0; see "
				       "orchestrator/gitproto.h)", why ? why : "", why ? "; " : "");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, SIG_IGN);    /* a ^C for the daemon's terminal is the daemon's to handle */
	if (gitwork_init(state) < 0) {
		ota_log(OTA_LOG_ERROR, "git helper: %s", ota_error_last());
		return 1;
	}
	gitwork_set_fetch_timeout(timeout_ms);
	for (;;) {
		struct pollfd p = { 0, POLLIN, 0 };
		json_t *req;

		rc = poll(&p, 1, idle_ms > 0 && idle_ms < 3600000 ? (int)idle_ms : 10000);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc <= 0)
			break;      /* idle: the daemon starts another when it needs one */
		if (gitproto_read(0, &frame, GITPROTO_FRAME_MAX) != 0)
			break;      /* end of file (the daemon let go of us) or a broken frame */
		req = json_loadb(frame.ptr, frame.len, 0, NULL);
		if (!json_is_object(req))
			ota_log(OTA_LOG_ERROR, "git helper: a request that is not a JSON object: stopping");
		rc = json_is_object(req) ? serve(req) : OTA_ERROR;
		json_decref(req);
		if (rc < 0)
			break;
	}
	buf_release(&frame);
	gitwork_shutdown();
	return 0;
}
