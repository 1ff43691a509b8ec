/*
 * config.h - otacd's configuration: embedded defaults, a YAML file, flags.
 *
 * otacd runs with no configuration at all (the embedded defaults below).
 * --config FILE overlays a YAML file (docs/config.md); command-line flags
 * overlay both.  Errors in the file name file:line:column.
 */
#ifndef OTA_CONFIG_H
#define OTA_CONFIG_H

#include <jansson.h>
#include <stdint.h>

#include "../common/log.h"
#include "../common/util.h"
#include "gitsrc.h"
#include "pipeline/pipeline.h"
#include "retention.h"

/* A repository otacd builds from (docs/config.md, "repositories"). */
struct repo_cfg {
	struct gitsrc_repo git;         /* name, url, credentials */
	char *secret;                   /* webhook secret (HMAC key / GitLab token) */
	char *pipeline;                 /* path of the pipeline file in the tree */
	char *default_branch;           /* default "main" */
	struct pl_filter protect;       /* protected refs; default: default_branch and tags v* (policy.h) */
	json_t *status;                 /* issue 17: commit status on the forge {forge, api_url, token_file, ...}
					 * or NULL; checked by notify_open (notify/notify.h) */
	json_t *schedules;              /* issue 17: [{name, cron, ref, pipeline}], checked at load
					 * (sched/sched.h); NULL: none */
};

struct otacd_config {
	char *listen;                   /* HOST:PORT, default 127.0.0.1:8470 */
	/* HTTP under hostile load (docs/config.md) */
	char *agent_listen;             /* the agents' own listener; "" (default): 127.0.0.1:0 when local agents run */
	int64_t request_timeout_ms;     /* a request's header must be complete within this, default 10 s */
	int64_t max_connections;        /* per listener, default 10000 */
	int64_t max_connections_per_client;  /* per client address, default 128 */
	int64_t device_max_connections_per_client;  /* the device API's, default 4096 (devices share NAT addresses) */
	int64_t http_threads;           /* the HTTP thread pool, default 0: from the CPU count */
	char *state_dir;                /* default ./otacd-state */
	/* otacd.db and fleet.db as storage-layer URLs (docs/storage.md): NULL
	 * (the default) is sqlite:STATE/otacd.db and sqlite:STATE/fleet.db,
	 * resolved with config_database_url() once state_dir is final */
	char *database;
	char *fleet_database;
	/* the job logs' directory (logstore.h): NULL is STATE/logs; an
	 * absolute path, shared by every instance on one PostgreSQL
	 * database so followers serve live logs (docs/scale.md) */
	char *logs_dir;
	int local_agents;               /* default 2 */
	struct strvec local_labels;     /* default: local */
	double time_scale;              /* default 1 */
	int anonymous_read;             /* default 0 */
	int64_t lease_ms;               /* default 30 s */
	int64_t leader_poll_ms;         /* issue 16: followers try to lead this often, default 1 s */
	int64_t heartbeat_ms;           /* default 1 s */
	int64_t default_timeout_ms;     /* default 1 h */
	int64_t max_log_bytes;          /* default 4 MiB per job attempt */
	int log_format;                 /* issue 18: enum ota_log_format (common/log.h), default text */
	int log_level;                  /* issue 18: enum ota_log_level, default info (debug: one line per API answer) */
	int64_t disk_reserve;           /* bytes kept free for a full disk (diskguard.h); -1: 64 MiB or 1/16 of the filesystem */
	int64_t max_artifact_size;      /* default 256 MiB */
	int64_t max_run_artifacts;      /* all artifacts of a run, default 2 GiB */
	int64_t artifact_retention_ms;  /* unreleased artifacts, default 30 days */
	struct retention_cfg retention; /* issue 18: finished runs' rows and logs (retention.h) */
	json_t *secrets;                /* object NAME -> string */
	json_t *tokens;                 /* array of {name, role, sha256} */
	json_t *keys;                   /* signing keys: object NAME -> {"spec", "pin"?, "certificate"?} */
	json_t *encryption_keys;        /* issue 13, encrypted images: NAME -> device public key PEM path */
	json_t *products;               /* release policy: object NAME -> normalised entry (policy.h) */
	struct repo_cfg *repos;         /* repositories (webhooks, git sources) */
	size_t nrepos;
	/* the fleet (docs/update-server.md) */
	char *device_listen;            /* built-in device API, default 127.0.0.1:8471 ("" or "off": none) */
	char *device_secret_file;       /* issue 16: the device secret's file; NULL: STATE/device.secret */
	char *forward_ca;               /* issue 16: PEM CA bundle a follower trusts for an https:// leader;
					 * NULL: the system's (api_forward.h) */
	char *fleet_key;                /* devices' shared key; NULL: a random one per start (see main.c) */
	int device_metrics_public;      /* GET /metrics without a token (default 1) */
	int64_t poll_ms;                /* devices' check-in interval, default 6 h (otacd time) */
	int64_t device_register_rate;   /* device registrations per second, default 10 */
	int64_t device_register_burst;  /* registrations at once, default 10000 */
	int64_t device_checkin_capacity; /* check-ins per otacd second, 0: unlimited (issue 15) */
	json_t *device_tags;            /* tag allowlist {key: [values]} or NULL */
	int64_t device_tag_cap;         /* distinct tags without an allowlist, default 256 */
	int64_t device_name_cap;        /* distinct products/versions/hardware/bootloaders, default 1024 */
	/* device identity by certificate (issue 13, orchestrator/fleet/fleet_ca.h) */
	char *device_ca_cert;           /* device_ca: {cert: FILE}: the CA; NULL: STATE/devca/ca.pem if there */
	char *device_ca_key;            /* device_ca: {key: FILE}; NULL with a cert: external CA, verify only */
	struct strvec device_ca_also;   /* device_ca: {also_trust: [FILE]}: more CAs, verify only (a rollover) */
	int device_auth;                /* device_auth: token (default) | cert | both (enum fleet_auth_mode) */
	int64_t device_cert_validity_ms;   /* device_cert_validity: certificates otacd issues, default 365d */
	char *update_server;            /* adapter: "builtin" (default) or "http" */
	char *update_server_url;        /* http adapter: base URL */
	char *update_server_token;      /* http adapter: bearer token */
	char *prometheus_url;           /* the provider `prometheus` unless `providers` defines it, default http://127.0.0.1:9090 */
	json_t *providers;              /* metric providers: object NAME -> {"kind", "url", "token"?} */
	/* issue 13, TLS: the `tls:` block as checked JSON (tls/tls.h), NULL: plain HTTP */
	json_t *tls;
	/* issue 15: artifact_store {backend, endpoint, bucket, region, credentials_file}
	 * and image_origin {kind, url, ttl, token_file}, checked when opened */
	json_t *artifact_store;
	json_t *image_origin;
	json_t *push;  /* issue 15, push: {url, cacert, username, password_file, prefix, capacity, window, ...} (push/push.h) */
	/* issue 13, signing PKI (orchestrator/pki.h, docs/security.md) */
	char *trust_root;               /* the release root certificate (PEM file) or NULL */
	/* issue 19 part 5 (evidence lag): a builtin gate never passes while the
	 * fleet's committed aggregates lag accepted reports by more than this
	 * (real ms, default 60 s; docs/gates.md) */
	int64_t gate_max_lag_ms;
	/* issue 17: the `notifications:` block {targets, public_url, retry...},
	 * checked by notify_open (notify/notify.h), or NULL */
	json_t *notifications;
};

/* The repository called name, or NULL. */
const struct repo_cfg *config_repo_find(const struct otacd_config *c, const char *name);

void config_defaults(struct otacd_config *c);
/* Overlay the YAML file at path.  On error the message names file:line:col. */
int config_load(struct otacd_config *c, const char *path);
void config_release(struct otacd_config *c);

/*
 * The URL of a database: url when configured, else sqlite:STATE/file
 * (state_dir as given by the config or -s).  Caller frees.
 */
char *config_database_url(const struct otacd_config *c, const char *url, const char *file);

#endif
