/*
 * notify_int.h - what the notify/ files share (not for other modules).
 */
#ifndef OTA_NOTIFY_INT_H
#define OTA_NOTIFY_INT_H

#include <stdint.h>

#include "notify.h"

enum notify_kind { NOTIFY_WEBHOOK, NOTIFY_SLACK };
enum forge_kind { FORGE_GITHUB, FORGE_GITLAB, FORGE_GITEA };

/* notifications.targets[i] */
struct notify_target {
	char *name;
	enum notify_kind kind;
	char *url;            /* may hold a secret (Slack's URLs do): never logged */
	char *secret;         /* webhook: the HMAC key, from secret_file */
	json_t *events;       /* array of patterns ("run.failed", "rollout.*"), NULL: all */
};

/* repositories[i].status */
struct forge_status {
	char *repo;           /* the repository's name in the config */
	enum forge_kind forge;
	char *api_url;        /* without a trailing '/' */
	char *token;          /* from token_file */
	char *project;        /* owner/repo, or GitLab's id or path */
	char *context;        /* NULL: "otacd/<pipeline>" */
	int per_stage;        /* also "<context>/<stage>" per stage (outbox_stage.c) */
};

struct notify {
	struct notify_target *targets;
	size_t ntargets;
	struct forge_status *forges;
	size_t nforges;
	char *public_url;     /* links in statuses and messages; NULL: none */
	int64_t retry_base_ms, retry_max_ms, max_age_ms, timeout_ms, poll_ms;
};

const struct notify_target *notify_target_find(const struct notify *n, const char *name);
const struct forge_status *notify_forge_find(const struct notify *n, const char *repo);
/* Whether a configured repository wants per-stage statuses: without one a
 * stage change reads nothing for them (outbox_stage.c). */
int notify_any_per_stage(const struct notify *n);
/* Does target t want event (its `events:` patterns; a trailing '*' matches any rest)? */
int notify_target_wants(const struct notify_target *t, const char *event);

/* outbox_stage.c's statements (tests/test_dbconv_stagestatus.c prepares each on both backends). */
extern const char stage_sql_run[], stage_sql_running[], stage_sql_rollout[];

/* The process-wide configuration set by notify_set_current (engine thread reads it). */
const struct notify *notify_current(void);

#endif
