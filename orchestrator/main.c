/*
 * main.c - otacd, the daemon.
 *
 * Start-up order: configuration (embedded defaults, --config file, flags),
 * the state directory and its lock, the database (migrations), the clock's
 * anchor, tokens, the engine (which recovers every unfinished run), the HTTP
 * server, then the local agents.  Shutdown on SIGINT/SIGTERM in reverse.
 * Nothing here is needed for correctness after a crash: every start is a
 * recovery.
 *
 * On PostgreSQL (issue 16, docs/scale.md) the engine and everything that
 * writes through it, and the local agents, wait for this instance to lead:
 * the listeners come up as a follower's (api_follower.c), the main thread
 * polls the leadership lock every leader_poll between signals, starts the
 * leader's part on the first poll that says so, and ends the process with
 * 75 when the lead is lost.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/mask.h"
#include "../common/util.h"
#include "api/api.h"
#include "api/api_forward.h"
#include "artifact.h"
#include "artifact/origin.h"
#include "push/push.h"
#include "auth.h"
#include "backup/backup.h"
#include "cfgdrift.h"
#include "clock.h"
#include "config.h"
#include "db/db.h"
#include "commitwatch.h"
#include "db/db_leader.h"
#include "diskguard.h"
#include "engine.h"
#include "flags/flags.h"
#include "fleet/admission.h"
#include "fleet/fleet.h"
#include "fleet/fleet_ca.h"
#include "rollout.h"
#include "updsrv.h"
#include "gitsrc.h"
#include "localagents.h"
#include "logstore.h"
#include "mcuboot_enc.h"
#include "pipeline/pipeline.h"
#include "pki.h"
#include "policy.h"
#include "sdnotify.h"
#include "notify/notify.h"
#include "sched/sched.h"
#include "sources.h"
#include "store.h"
#include "trustdb.h"
#include "tls/tls.h"

static const char usage[] =
	"usage: otacd [options]\n"
	"\n"
	"  --state-dir DIR     where the database, logs and artifacts live (./otacd-state)\n"
	"  --listen HOST:PORT  HTTP API and status page (127.0.0.1:8470)\n"
	"  --config FILE       YAML configuration (docs/config.md)\n"
	"  --local-agents N    agents otacd starts itself (2)\n"
	"  --time-scale X      run otacd's clock X times faster (1)\n"
	"  --device-listen HOST:PORT  built-in update server's device API (127.0.0.1:8471; off: none)\n"
	"  --check FILE        validate a pipeline file and exit\n"
	"  --restore DIR       restore the backup in DIR (otactl backup) into a new or empty\n"
	"                      state directory and exit\n"
	"  --version, --help\n";

static int check_pipeline(const char *path)
{
	struct buf text = BUF_INIT;
	struct pl_diags d;
	struct pipeline *p = NULL;
	int rc;

	if (ota_read_file(&text, path, 4 << 20) < 0) {
		fprintf(stderr, "otacd: %s\n", ota_error_last());
		return 2;
	}
	pl_diags_init(&d, path);
	rc = pipeline_parse(&p, path, text.ptr, text.len, &d);
	if (rc < 0) {
		struct buf out = BUF_INIT;
		pl_diags_format(&d, &out);
		fputs(buf_cstr(&out), stderr);
		buf_release(&out);
	} else {
		struct strvec w = STRVEC_INIT;
		printf("%s: ok (%zu stages)\n", path, p->nstages);
		policy_lint(p, &w);
		for (size_t i = 0; i < w.n; i++)
			printf("%s: warning: %s\n", path, w.v[i]);
		strvec_clear(&w);
	}
	pipeline_free(p);
	pl_diags_release(&d);
	buf_release(&text);
	return rc < 0 ? 1 : 0;
}

/* The clock row, "SCALE ANCHOR_REAL ANCHOR_OTACD" (clock.h): 1 read, 0
 * absent or unreadable (otacd time is then wall time), negative when the
 * database could not be read. */
static int clock_row(struct store *db, double *scale, int64_t *real, int64_t *otacd)
{
	char *v = NULL;
	int rc = store_meta_get(db, "clock", &v), have;

	if (rc < 0)
		return rc == OTA_ENOTFOUND ? 0 : rc;
	have = sscanf(v, "%lf %" SCNd64 " %" SCNd64, scale, real, otacd) == 3 && *scale > 0;
	free(v);
	return have;
}

/*
 * Keep otacd time continuous across restarts: see clock.h.  Run by the
 * instance that leads (on SQLite, at start; on PostgreSQL, when it takes
 * the lead): the only one that (re)writes the clock row, re-anchored at
 * the row's own now when its scale is another (docs/scale.md, "One
 * clock").  Negative: the new row could not be written.
 */
static int clock_setup(struct store *db, double scale)
{
	int64_t real = clock_real_ms(), now = real;
	double old_scale = 1.0;
	int64_t old_real = 0, old_otacd = 0;
	char *v;
	int rc;

	if (clock_row(db, &old_scale, &old_real, &old_otacd) == 1) {
		clock_init(old_scale, old_real, old_otacd);
		now = clock_now_ms();
		if (old_scale == scale) {
			return 0;
		}
	} else if (scale == 1.0) {
		/* the common case: otacd time is wall time, nothing to anchor */
		clock_init(1.0, real, real);
		return 0;
	}
	clock_init(scale, real, now);
	v = xasprintf("%.17g %" PRId64 " %" PRId64, scale, real, now);
	rc = store_meta_set(db, "clock", v);
	free(v);
	return rc;
}

/*
 * A follower's clock (PostgreSQL): the leader's, as the clock row says (no
 * row: wall time, a leader at scale 1), whatever this instance's own
 * time_scale.  So every time a follower computes or shows is on the
 * leader's clock.  A configured scale the row does not have is said once
 * (say), and once more whenever the row's scale changes; cfgdrift exports
 * it as the item time_scale.
 */
static int clock_follow(struct store *db, double configured, int say)
{
	static double said;
	double scale = 1.0, cur_scale;
	int64_t real = 0, otacd = 0, cur_real, cur_otacd;
	int rc = clock_row(db, &scale, &real, &otacd);

	if (rc < 0)
		return rc;
	if (rc == 0) {
		scale = 1.0;
		real = otacd = 0; /* wall time (clock.c) */
	}
	clock_anchor(&cur_scale, &cur_real, &cur_otacd);
	if (cur_scale != scale || (rc == 1 && (cur_real != real || cur_otacd != otacd)) ||
	    (rc == 0 && cur_real != cur_otacd))
		clock_init(scale, real, otacd);
	if (say && scale != configured && scale != said)
		ota_log(OTA_LOG_WARN, "time_scale: %g configured, but the leader's clock runs at %g: this follower"
				      " keeps the leader's (docs/scale.md, \"One clock\")", configured, scale);
	said = say && scale != configured ? scale : 0;
	return 0;
}

/* This state directory's own random id (store meta "instance_id"), made
 * once: it makes provenance invocation ids globally unique (release.c). */
static int instance_id(struct store *db)
{
	char *v = NULL, hex[33];
	int rc;
	if (store_meta_get(db, "instance_id", &v) == 0) {
		free(v);
		return 0;
	}
	if ((rc = ota_random_hex(hex, 16)) < 0)
		return rc;
	return store_meta_set(db, "instance_id", hex);
}

/* The commitwatch thread's auth hook: the database's tokens and agents,
 * the release revocation list (trustdb.h) and, arg, the device CA's
 * removal (fleet_ca_sync), read again in one snapshot
 * of that thread's reader connection (opened again after a PostgreSQL
 * restart: store_snapshot_begin()). */
static int reload_tokens(void *arg)
{
	struct store *r = store_reader();
	int rc;

	if (!r || store_snapshot_begin(r) < 0)
		return OTA_ERROR;
	/* a list that does not verify changes nothing and is said, loudly,
	 * at each reload; the tokens still reload */
	if (trustdb_reload(r) < 0)
		ota_log(OTA_LOG_WARN, "commit notifications: %s", ota_error_last());
	/* a device CA removed on the leader (`otactl fleet ca remove`) */
	if (arg && fleet_ca_sync(arg, r) < 0)
		ota_log(OTA_LOG_WARN, "commit notifications: device CA: %s", ota_error_last());
	rc = auth_reload(r);
	store_snapshot_end(r);
	return rc;
}

static int admin_token(struct store *db, const char *state_dir)
{
	char *path = xasprintf("%s/admin.token", state_dir), *token = NULL, *line;
	struct db_stmt *st = store_q(db, "SELECT 1 FROM tokens WHERE name = 'admin'");
	int exists = st && db_step(st) == 1, rc = 0;

	if (st)
		db_reset(st);
	if (exists)
		goto out;
	if ((rc = auth_create(db, "admin", ROLE_ADMIN, &token)) < 0)
		goto out;
	line = xasprintf("%s\n", token);
	rc = ota_write_file_atomic(path, line, strlen(line), 0600);
	free(line);
	if (rc == 0)
		ota_log(OTA_LOG_INFO, "created an admin token in %s (mode 0600)", path);
out:
	free(token);
	free(path);
	return rc;
}

/*
 * The update server: the built-in one (fleet + device API on its own
 * listener) unless the configuration names an external one.  Devices need
 * a stable fleet key: without one in the configuration, one is made on
 * first start and kept in STATE/fleet.key.
 */
/* issue 13: the listeners' TLS (tls/tls.h), NULL: plain HTTP.  Reloaded
 * on SIGHUP; freed after the listeners stopped. */
static struct tls_server *tls_api, *tls_agents, *tls_devices;

static int start_tls(const struct otacd_config *cfg)
{
	struct tls_files f;
	int rc = 0;

	if (!cfg->tls)
		return 0;
	tls_listener_files(&f, cfg->tls, "api");
	if (f.cert && (rc = tls_server_new(&tls_api, "API", &f)) < 0)
		return rc;
	/* the implicit loopback listener of the local agents stays plain */
	tls_listener_files(&f, cfg->tls, "agents");
	if (f.cert && cfg->agent_listen[0] && strcmp(cfg->agent_listen, "off") &&
	    (rc = tls_server_new(&tls_agents, "agents'", &f)) < 0)
		return rc;
	tls_listener_files(&f, cfg->tls, "devices");
	if (f.cert && (rc = tls_server_new(&tls_devices, "device", &f)) < 0)
		return rc;
	return 0;
}

/* The address other instances name this one by: listen's, with the
 * host's name for a wildcard listener (issue 16: the API's as the
 * leader's holder, the device API's in fleet_leader). */
static char *advertised(const char *listen, int port, int tls)
{
	const char *colon = strrchr(listen, ':');
	int host_len = colon ? (int)(colon - listen) : 0;
	char host[256] = "";

	if (host_len && !((host_len == 7 && !strncmp(listen, "0.0.0.0", 7)) || (host_len == 4 && !strncmp(listen, "[::]", 4))))
		return xasprintf("%s://%.*s:%d", tls ? "https" : "http", host_len, listen, port);
	gethostname(host, sizeof(host) - 1);
	return xasprintf("%s://%s:%d", tls ? "https" : "http", host, port);
}

/*
 * What the leader runs and a follower does not (issue 16, docs/scale.md):
 * the engine (recovery, leases, deadlines, the pruner), the notification
 * sender, the sources and the scheduler, the rollout and flag
 * controllers, and the local agents.  On SQLite otacd leads from the
 * start; on PostgreSQL from the first leadership poll that says so, in
 * the same process and on the listeners already up.
 */
struct leading {
	struct otacd_config *cfg;
	struct engine_config ecfg;
	struct store *db;
	struct updsrv *us;
	struct fleet *fleet;             /* NULL on a follower (PostgreSQL) until it leads */
	struct fleet_config fc;          /* how to open it: start_fleet() */
	char *fleet_db, *fleet_secret;   /* fc's strings, owned */
	char *device_url;                /* PostgreSQL: the device API's address recorded at the lead */
	struct devapi *devapi;
	struct push *push;
	struct fleet_ca *devca;
	struct notify *notify;
	struct engine *engine;
	struct notify_sender *sender;
	struct sources *sources;
	struct sched *sched;
	struct rollout_controller *rollouts;
	struct flags_controller *flags;
};

/*
 * Open the fleet (issue 16): on SQLite at the start, on PostgreSQL when
 * this instance takes the lead (lead_start), so that a follower never
 * writes the shared fleet database (its writer's rounds and snapshots
 * would race the leader's) and the leader serves the fleet as the
 * database has it when it takes over, not as it was at its start
 * (docs/scale.md, "The fleet on several instances").  The device API and
 * the builtin adapter get it here, once it is loaded.
 */
static int open_fleet(struct leading *l)
{
	int rc;

	if (l->fleet || !l->fleet_db) /* open, or an external update server */
		return 0;
	if ((rc = fleet_open(&l->fleet, &l->fc)) < 0)
		return rc;
	fleet_set_ca(l->fleet, l->devca, l->cfg->device_auth); /* issue 13: before devices can ask */
	/* issue 18: no offers until the rollout controller applied them all
	 * (updsrv_mark_loaded): the device API answers 503 until then */
	fleet_hold_offers(l->fleet, 1);
	if (l->push) /* issue 15: hints to devices whose offer changes, before the controller sets any */
		fleet_set_notify(l->fleet, push_fleet_notify, l->push);
	updsrv_builtin_attach(l->us, l->fleet);
	devapi_attach(l->devapi, l->fleet);
	/* the followers' device listeners forward to this one from now on */
	if (l->device_url && fleet_leader_record(l->fleet_db, l->device_url) < 0)
		ota_log(OTA_LOG_WARN, "%s", ota_error_last());
	return 0;
}

static int start_fleet(struct otacd_config *cfg, struct leading *l, int now)
{
	char *db = NULL, *keyfile = NULL, *secretfile = NULL, *secret = NULL;
	struct buf key = BUF_INIT;
	int rc = 0;

	if (!strcmp(cfg->update_server, "http")) {
		if (!cfg->update_server_url)
			return ota_error_set(OTA_EINVAL, "update_server: http needs update_server_url");
		return updsrv_http(&l->us, cfg->update_server_url, cfg->update_server_token);
	}
	keyfile = xasprintf("%s/fleet.key", cfg->state_dir);
	if (!cfg->fleet_key) {
		if (ota_read_file(&key, keyfile, 4096) == 0 && key.len >= 32) {
			while (key.len && (key.ptr[key.len - 1] == '\n' || key.ptr[key.len - 1] == '\r'))
				key.ptr[--key.len] = 0;
			cfg->fleet_key = xstrdup(buf_cstr(&key));
		} else {
			char fresh[65];
			if ((rc = ota_random_hex(fresh, 32)) < 0 ||
			    (rc = ota_write_file_atomic(keyfile, fresh, strlen(fresh), 0600)) < 0)
				goto out;
			cfg->fleet_key = xstrdup(fresh);
		}
	}
	/* the server-only key of device credentials: device_secret_file
	 * (issue 16: one file every instance shares, made by the operator),
	 * else STATE/device.secret, made on first start */
	secretfile = cfg->device_secret_file ? xstrdup(cfg->device_secret_file)
					     : xasprintf("%s/device.secret", cfg->state_dir);
	/* ota_read_file starts a fresh buffer: release the fleet key's first */
	if (key.ptr)
		explicit_bzero(key.ptr, key.len);
	buf_release(&key);
	if (ota_read_file(&key, secretfile, 4096) == 0 && key.len >= 64) {
		while (key.len && (key.ptr[key.len - 1] == '\n' || key.ptr[key.len - 1] == '\r'))
			key.ptr[--key.len] = 0;
		secret = xstrdup(buf_cstr(&key));
	} else if (cfg->device_secret_file) {
		rc = ota_error_set(OTA_EINVAL, "device_secret_file %s: cannot read 64 hex characters from it (make it"
				   " with `openssl rand -hex 32`)", secretfile);
		goto out;
	} else {
		char fresh[65];
		if ((rc = ota_random_hex(fresh, 32)) < 0 ||
		    (rc = ota_write_file_atomic(secretfile, fresh, strlen(fresh), 0600)) < 0)
			goto out;
		secret = xstrdup(fresh);
		explicit_bzero(fresh, sizeof(fresh));
	}
	db = config_database_url(cfg, cfg->fleet_database, "fleet.db");
	{
		char *shown = db_url_redacted(db);
		ota_log(OTA_LOG_INFO, "fleet database %s", shown);
		free(shown);
	}
	l->fleet_db = db;
	l->fleet_secret = secret;
	db = secret = NULL;
	l->fc.db_path = l->fleet_db;
	l->fc.fleet_key = cfg->fleet_key;
	l->fc.device_secret = l->fleet_secret;
	l->fc.poll_ms = cfg->poll_ms;
	l->fc.register_rate = (double)cfg->device_register_rate;
	l->fc.register_burst = cfg->device_register_burst;
	l->fc.tag_allow = cfg->device_tags;
	l->fc.tag_cap = cfg->device_tag_cap;
	l->fc.name_cap = cfg->device_name_cap;
	/* issue 16: the same secrets as every other instance on this fleet
	 * database (OTA_ECONFLICT: main exits 2) */
	if ((rc = fleet_keys_check(&l->fc)) < 0)
		goto out;
	if ((rc = updsrv_builtin(&l->us, NULL)) < 0 || (now && (rc = open_fleet(l)) < 0))
		goto out;
	if (cfg->device_listen[0] && strcmp(cfg->device_listen, "off") != 0) {
		char *path, *line;
		devapi_set_limits(cfg->request_timeout_ms, (unsigned)cfg->device_max_connections_per_client);
		admission_configure(cfg->device_checkin_capacity);
		devapi_set_tls(tls_devices);
		devapi_set_forward(cfg->forward_ca, l->fleet_secret);
		if ((rc = devapi_start(&l->devapi, l->fleet, cfg->device_listen, cfg->device_metrics_public)) < 0)
			goto out;
		path = xasprintf("%s/otacd-device.url", cfg->state_dir);
		{
			const char *colon = strrchr(cfg->device_listen, ':');
			int host_len = colon ? (int)(colon - cfg->device_listen) : 9;
			line = xasprintf("%s://%.*s:%d\n", tls_devices ? "https" : "http", host_len,
					 colon ? cfg->device_listen : "127.0.0.1",
					 devapi_port(l->devapi));
		}
		ota_write_file_atomic(path, line, strlen(line), 0600);
		ota_log(OTA_LOG_INFO, "device API on %s", line);
		if (!now) /* PostgreSQL: where followers send devices once this one leads */
			l->device_url = advertised(cfg->device_listen, devapi_port(l->devapi), tls_devices != NULL);
		free(line);
		free(path);
	}
out:
	if (key.ptr)
		explicit_bzero(key.ptr, key.len);
	buf_release(&key);
	if (secret)
		explicit_bzero(secret, strlen(secret));
	free(secret);
	free(secretfile);
	free(keyfile);
	free(db);
	return rc;
}

/* The URL local agents use for the agents' listener: its host (loopback
 * for a wildcard address) and the port it bound. */
static char *agent_listener_url(const char *listen, int port)
{
	const char *colon = strrchr(listen, ':');
	int host_len = colon ? (int)(colon - listen) : 0;
	if (!colon || (host_len == 7 && !strncmp(listen, "0.0.0.0", 7)) || (host_len == 4 && !strncmp(listen, "[::]", 4)) ||
	    host_len == 0)
		return xasprintf("%s://127.0.0.1:%d", tls_agents ? "https" : "http", port);
	return xasprintf("%s://%.*s:%d", tls_agents ? "https" : "http", host_len, listen, port);
}

static int lead_start(struct leading *l)
{
	struct otacd_config *cfg = l->cfg;
	if (open_fleet(l) < 0) /* issue 16: loaded as the database has it now */
		return -1;
	if (engine_start(&l->engine, l->db, &l->ecfg) < 0 || notify_sender_start(&l->sender, l->notify, l->engine) < 0)
		return -1;
	if ((cfg->nrepos && gitsrc_init(cfg->state_dir) < 0) || sources_start(&l->sources, l->engine, cfg, 2) < 0)
		return -1;
	if (sched_start(&l->sched, l->engine, cfg, l->sources) < 0) /* issue 17: after the sources it feeds */
		return -1;
	if (fleet_ca_attach(l->devca, l->engine, l->fleet_secret) < 0)
		return -1;
	if (rollout_controller_start(&l->rollouts, l->engine, l->us, cfg) < 0)
		return -1;
	if (flags_controller_start(&l->flags, l->engine, l->us, l->fleet) < 0) /* issue 17: feature flags */
		return -1;
	return 0;
}

/* A follower's device listener forwards to the device API the leader
 * recorded (fleet_leader); read at every leadership poll. */
static void follow_devices(struct leading *l, struct db **conn)
{
	char url[256];

	if (!l->devapi || !l->fleet_db)
		return;
	if (fleet_leader_device(conn, l->fleet_db, url, sizeof(url)) < 0) {
		ota_log(OTA_LOG_WARN, "the leader's device API: %s", ota_error_last());
		return;
	}
	devapi_set_leader(l->devapi, url);
}

static int on_postgresql(const char *url)
{
	return !strncmp(url, "postgres://", 11) || !strncmp(url, "postgresql://", 13);
}

/* The local agents, once this instance leads. */
static int start_agents(struct localagents **agents, struct otacd_config *cfg, const struct api_config *acfg,
			struct api *api, const char *url)
{
	char *workdir, *agent_url;
	int rc;

	if (cfg->local_agents <= 0)
		return 0;
	workdir = xasprintf("%s/work", cfg->state_dir);
	agent_url = api_agent_port(api) ? agent_listener_url(acfg->agent_listen, api_agent_port(api)) : xstrdup(url);
	rc = localagents_start(agents, cfg->local_agents, agent_url, &cfg->local_labels, workdir, cfg->state_dir);
	free(agent_url);
	free(workdir);
	return rc;
}

/*
 * A follower's reads of the leader's state, at start and at each
 * leadership poll, in one snapshot of the main thread's reader: its clock
 * (clock_follow()) and its settings (cfgdrift_compare()).  After a
 * PostgreSQL restart that reader is opened again by
 * store_snapshot_begin(); while the database is away the failure is
 * logged once, and its end once (test_cfgdrift.c).
 */
static void follower_reads(double time_scale, int say)
{
	static int away;
	struct store *r = store_reader();
	int rc = r ? store_snapshot_begin(r) : OTA_ERROR;

	if (rc == 0) {
		if ((rc = clock_follow(r, time_scale, say)) == 0)
			rc = cfgdrift_compare(r);
		store_snapshot_end(r);
	}
	if (rc < 0 && !away) {
		ota_log(OTA_LOG_WARN, "following the leader's clock and settings: %s; trying again at each poll",
			ota_error_last());
		away = 1;
	} else if (rc == 0 && away) {
		ota_log(OTA_LOG_INFO, "following the leader's clock and settings again");
		away = 0;
	}
}

/*
 * One leadership poll of a follower (PostgreSQL).  LEADER: start the
 * leader's part under the new epoch (*leads = 1).  A poll that fails
 * (the database is away) leaves this instance a follower; it tries again
 * at the next.  A leader's lost lead is leader_watch()'s.
 */
static int follow(struct db_leader *l, struct leading *lead, int *leads)
{
	enum db_leader_state st = DB_LEADER_FOLLOWER;
	static int was_away;

	if (db_leader_poll(l, &st) < 0) {
		ota_log(OTA_LOG_WARN, "leadership poll: %s", ota_error_last());
		was_away = 1;
		return 0;
	}
	if (st != DB_LEADER_LEADER)
		return 0;
	/* the server went away while this instance followed (a restart): the
	 * connections it opened at start are broken, so it leads from a fresh
	 * start instead, as a leader that lost the lead does (test_hafail.c) */
	if (was_away) {
		ota_log(OTA_LOG_ERROR, "the database was away while following: exiting to lead from a fresh start");
		_exit(75);
	}
	/* the only place a PostgreSQL instance writes the clock row: before
	 * the engine computes a deadline with it */
	{
		double before = clock_scale();
		if (clock_setup(lead->db, lead->cfg->time_scale) < 0) {
			ota_log(OTA_LOG_ERROR, "writing the clock row: %s: exiting to come back as a follower",
				ota_error_last());
			_exit(75);
		}
		if (clock_scale() != before)
			ota_log(OTA_LOG_INFO, "time_scale: this instance leads; the shared clock runs at %g from now on",
				clock_scale());
	}
	lead->ecfg.leader_epoch = db_leader_epoch(l);
	ota_log(OTA_LOG_INFO, "this instance leads (epoch %" PRId64 "): starting the engine", lead->ecfg.leader_epoch);
	if (lead_start(lead) < 0)
		return -1;
	*leads = 1;
	return 0;
}

/*
 * A leader's poll.  LOST: another instance may lead already, so this one
 * ends at once with EX_TEMPFAIL (75), without stopping anything: dropping
 * the engine's memory in-process would be a second recovery path next to
 * the restart, which is tested for crash safety (docs/scale.md); systemd's
 * Restart= brings otacd back as a follower.  Anything the engine was
 * committing meanwhile is fenced (engine.c).
 */
static void leader_watch(struct db_leader *l)
{
	enum db_leader_state st = DB_LEADER_LEADER;
	if (db_leader_poll(l, &st) == 0 && st == DB_LEADER_LEADER)
		return;
	ota_log(OTA_LOG_ERROR, "lost the lead (%s): exiting to come back as a follower", ota_error_last());
	_exit(75);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "listen", required_argument, NULL, 'l' },
		{ "config", required_argument, NULL, 'c' },
		{ "local-agents", required_argument, NULL, 'a' },
		{ "time-scale", required_argument, NULL, 't' },
		{ "device-listen", required_argument, NULL, 'D' },
		{ "check", required_argument, NULL, 'k' },
		{ "restore", required_argument, NULL, 'r' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct otacd_config cfg;
	const char *config_file = NULL, *state_dir = NULL, *listen = NULL, *device_listen = NULL, *restore = NULL;
	int local_agents = -1, opt, lockfd = -1, status = 1;
	double time_scale = 0;
	struct store *db = NULL;
	struct notify *notify = NULL;           /* issue 17 */
	struct api *api = NULL;
	struct localagents *agents = NULL;
	struct updsrv *us = NULL;
	struct fleet_ca *devca = NULL;
	struct leading lead = { 0 };     /* the leader's part (issue 16) */
	struct commitwatch *watch = NULL; /* PostgreSQL: the other instances' commits */
	struct db_leader *leader = NULL; /* PostgreSQL: this instance's leadership session */
	struct db *fleet_conn = NULL;    /* PostgreSQL, following: reads the leader's device API */
	int leads = 0;
	struct api_config acfg = { 0 };
	char *path = NULL, *url = NULL, *dburl = NULL;
	char *end;
	size_t i;
	json_t *t;
	sigset_t stop_signals;

	/* Idle memory (issue 18): glibc gives each thread that mallocs its own
	 * arena, up to 8 per core, each keeping freed pages; otacd's ~19
	 * threads (HTTP, engine, workers) allocate little and rarely at once.
	 * Two arenas: idle heap + anonymous Rss measured 0.1-0.2 MB lower. */
	mallopt(M_ARENA_MAX, 2);
	/* SQLite's page cache grows a page at a time instead of starting each
	 * connection with a 20-page block (~87 KB, its page headers written,
	 * so resident): otacd holds 7 connections, most reading a few pages.
	 * 0.4-0.5 MB of idle Rss (issue 18); a warm cache is the same. */
	sqlite3_config(SQLITE_CONFIG_PAGECACHE, NULL, 0, 0);

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 's': state_dir = optarg; break;
		case 'l': listen = optarg; break;
		case 'D': device_listen = optarg; break;
		case 'c': config_file = optarg; break;
		case 'a':
			local_agents = (int)strtol(optarg, &end, 10);
			if (*end || local_agents < 0 || local_agents > 64) {
				fprintf(stderr, "otacd: --local-agents must be 0..64\n");
				return 2;
			}
			break;
		case 't':
			time_scale = strtod(optarg, &end);
			if (*end || time_scale <= 0) {
				fprintf(stderr, "otacd: --time-scale must be a positive number\n");
				return 2;
			}
			break;
		case 'k': return check_pipeline(optarg);
		case 'r': restore = optarg; break;
		case 'V': printf("otacd %s\n", OTACD_VERSION); return 0;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "otacd: unexpected argument '%s'\n%s", argv[optind], usage);
		return 2;
	}

	config_defaults(&cfg);
	if (config_file && config_load(&cfg, config_file) < 0) {
		fprintf(stderr, "otacd: %s\n", ota_error_last());
		config_release(&cfg);
		return 2;
	}
	if (cfg.forward_ca && api_fwd_cacert_check(cfg.forward_ca) < 0) { /* issue 16 */
		fprintf(stderr, "otacd: %s\n", ota_error_last());
		config_release(&cfg);
		return 2;
	}
	if (state_dir) {
		free(cfg.state_dir);
		cfg.state_dir = xstrdup(state_dir);
	}
	if (listen) {
		free(cfg.listen);
		cfg.listen = xstrdup(listen);
	}
	if (device_listen) {
		free(cfg.device_listen);
		cfg.device_listen = xstrdup(device_listen);
	}
	if (local_agents >= 0)
		cfg.local_agents = local_agents;
	backup_logs_dir_set(cfg.logs_dir); /* logs: (NULL: STATE/logs) */
	if (restore) {
		/* before anything creates the state directory: it must be new or empty */
		int rc = backup_restore_dbs(restore, cfg.state_dir, cfg.database, cfg.fleet_database);
		if (rc < 0)
			fprintf(stderr, "otacd: restore: %s\n", ota_error_last());
		else
			printf("otacd: restored %s into %s\n", restore, cfg.state_dir);
		config_release(&cfg);
		return rc < 0 ? 1 : 0;
	}
	if (time_scale > 0)
		cfg.time_scale = time_scale;
	/* from here on every line goes through ota_log (common/log.h) */
	ota_log_setup(cfg.log_format, cfg.log_level, 2);

	/* Block the stop signals in every thread; main collects them with sigwait. */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGHUP); /* reloads the TLS certificates */
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	umask(077);
	if (ota_mkdir_p(cfg.state_dir, 0700) < 0)
		goto fail;
	path = xasprintf("%s/otacd.lock", cfg.state_dir);
	lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	{
		/* A restart right after a kill may find the old process still
		 * exiting (flushing to disk): wait for it a little. */
		int locked = 0;
		for (int tries = 0; lockfd >= 0 && tries < 150; tries++) {
			if (flock(lockfd, LOCK_EX | LOCK_NB) == 0) {
				locked = 1;
				break;
			}
			if (errno != EWOULDBLOCK)
				break;
			usleep(100 * 1000);
		}
		if (!locked) {
			ota_error_set(OTA_ERROR, "%s is in use by another otacd", cfg.state_dir);
			goto fail;
		}
	}
	free(path);
	/* before the database grows: the reserve a full disk gives back */
	diskguard_init(cfg.state_dir, cfg.disk_reserve);
	path = config_database_url(&cfg, cfg.database, "otacd.db");
	{
		char *shown = db_url_redacted(path);
		ota_log(OTA_LOG_INFO, "database %s", shown);
		free(shown);
	}
	if (store_open(&db, path) < 0)
		goto fail;
	dburl = xstrdup(path);
	/* issue 16: on PostgreSQL the leader's clock (clock_follow()), set
	 * by whichever instance takes the lead */
	if (on_postgresql(path) ? clock_follow(db, cfg.time_scale, 0) < 0 : (clock_setup(db, cfg.time_scale), 0))
		goto fail;
	if (instance_id(db) < 0)
		goto fail;
	if ((cfg.logs_dir ? logstore_open(cfg.logs_dir, cfg.max_log_bytes)
			  : logstore_init(cfg.state_dir, cfg.max_log_bytes)) < 0 ||
	    /* issue 16: other instances' commits move this one's readers */
	    (db_backend(store_conn(db)) == DB_POSTGRES && commitwatch_start(&watch, path) < 0) ||
	    artifact_store_open(cfg.state_dir, cfg.max_artifact_size, cfg.artifact_store) < 0 ||
	    origin_configure(cfg.image_origin) < 0) /* issue 15 */
		goto fail;
	{
		/* issue 16: the local store is a directory of this instance's */
		const char *backend = json_string_value(json_object_get(cfg.artifact_store, "backend"));
		if (on_postgresql(dburl) && (!backend || strcmp(backend, "s3") != 0))
			ota_log(OTA_LOG_WARN, "artifact_store: local on PostgreSQL: other instances cannot read what"
					      " this one stores (downloads, release verification, a new leader's releases)"
					      " unless STATE/artifacts is one shared directory on every instance; use the"
					      " S3 store (docs/scale.md, \"What every instance must share\")");
	}
	{
		/* Every configured secret is masked in every log, report and
		 * message, whether or not the job named it. */
		struct strvec sv = STRVEC_INIT;
		const char *name;
		json_t *v;
		json_object_foreach(cfg.secrets, name, v)
			if (json_is_string(v))
				strvec_push(&sv, json_string_value(v));
		logstore_set_mask(mask_set_new((const char *const *)sv.v, sv.n));
		strvec_clear(&sv);
	}
	/* issue 13: the release root and the held revocation list (issue 16:
	 * the database's; before the commitwatch's hook can reload it) */
	if (pki_trust_open(cfg.trust_root, cfg.state_dir) < 0 || trustdb_import(db) < 0)
		goto fail;
	if (auth_load(db) < 0 || admin_token(db, cfg.state_dir) < 0)
		goto fail;
	/* issue 16: tokens and agents another instance changes (CW_AUTH) */
	commitwatch_on_auth(watch, reload_tokens, NULL);
	/* issue 13: a bad encryption key stops otacd here, not the first
	 * release stage that names it hours later */
	{
		const char *name;
		json_t *v;
		json_object_foreach(cfg.encryption_keys, name, v) {
			EVP_PKEY *k = NULL;
			if (mcuboot_enc_pubkey_load(&k, json_string_value(v)) < 0) {
				ota_error_prefix("encryption_keys.%s: ", name);
				goto fail;
			}
			EVP_PKEY_free(k);
		}
	}
	json_array_foreach(cfg.tokens, i, t) {
		enum auth_role role = auth_role_parse(json_string_value(json_object_get(t, "role")));
		const char *name = json_string_value(json_object_get(t, "name"));
		const char *hash = json_string_value(json_object_get(t, "sha256"));
		/* an agent token of the config file is an agent of that name,
		 * bound to its `labels:` when it has them */
		if (role == ROLE_AGENT)
			auth_add_agent(name, NULL, hash, json_object_get(t, "labels"), 0);
		else
			auth_add_hash(name, hash, role);
	}

	lead.cfg = &cfg;
	lead.db = db;
	lead.ecfg.lease_ms = cfg.lease_ms;
	lead.ecfg.heartbeat_ms = cfg.heartbeat_ms;
	lead.ecfg.default_timeout_ms = cfg.default_timeout_ms;
	lead.ecfg.secrets = cfg.secrets;
	lead.ecfg.max_run_artifact_bytes = cfg.max_run_artifacts;
	lead.ecfg.artifact_retention_ms = cfg.artifact_retention_ms;
	lead.ecfg.retention = cfg.retention;
	lead.ecfg.config = &cfg;
	/* issue 17: statuses and notifications, checked before anything runs */
	if (notify_open(&notify, &cfg) < 0)
		goto fail;
	notify_set_current(notify);
	lead.notify = notify;
	/* the device CA (issue 13): STATE/devca or device_ca:; its provisioners
	 * and revocations are loaded once this instance leads (lead_start):
	 * loaded on a follower, one revoked meanwhile would stay in memory */
	{
		struct fleet_ca_config cc = { cfg.device_ca_cert, cfg.device_ca_key, cfg.state_dir,
					      cfg.device_cert_validity_ms, (const char *const *)cfg.device_ca_also.v,
					      cfg.device_ca_also.n };
		if (fleet_ca_open(&devca, &cc) < 0)
			goto fail;
		if (cfg.device_auth != FLEET_AUTH_TOKEN && !fleet_ca_state(devca))
			ota_log(OTA_LOG_WARN, "device_auth: %s without a device CA: no device can authenticate by"
					" certificate until `otactl fleet ca init`", fleet_auth_mode_name(cfg.device_auth));
	}
	lead.devca = devca;
	/* issue 16: a removed CA is not trusted from STATE/devca at a start,
	 * nor kept once another instance removes it (the auth hook) */
	if (fleet_ca_sync(devca, db) < 0)
		goto fail;
	commitwatch_on_auth(watch, reload_tokens, devca);
	if (start_tls(&cfg) < 0 || push_open(&lead.push, cfg.push) < 0)
		goto fail;
	{
		int rc = start_fleet(&cfg, &lead, !on_postgresql(dburl));
		if (rc == OTA_ECONFLICT) /* issue 16: another instance's secrets */
			status = 2;
		if (rc < 0)
			goto fail;
	}
	if (on_postgresql(dburl)) /* a follower's device listener forwards from its first request */
		follow_devices(&lead, &fleet_conn);
	us = lead.us;
	updsrv_set_current(us); /* issue 15: the release stage's deltas: {installed: N} */
	/* issue 16: on SQLite this instance leads now; on PostgreSQL it
	 * starts as a follower and leads from the first poll that says so */
	if (!on_postgresql(dburl)) {
		if (lead_start(&lead) < 0)
			goto fail;
		leads = 1;
	} else {
		api_follower_set(1);
	}

	acfg.listen = cfg.listen;
	/* local agents get the reserved path by default: a loopback listener
	 * of their own ("off": none, they share the API's) */
	if (!strcmp(cfg.agent_listen, "off"))
		acfg.agent_listen = NULL;
	else if (cfg.agent_listen[0])
		acfg.agent_listen = cfg.agent_listen;
	else
		acfg.agent_listen = cfg.local_agents > 0 ? "127.0.0.1:0" : NULL;
	acfg.request_timeout_ms = cfg.request_timeout_ms;
	acfg.max_connections = (unsigned)cfg.max_connections;
	acfg.max_per_client = (unsigned)cfg.max_connections_per_client;
	acfg.threads = (unsigned)cfg.http_threads;
	acfg.engine = lead.engine;
	acfg.config = &cfg;
	acfg.sources = lead.sources;
	acfg.anonymous_read = cfg.anonymous_read;
	acfg.lease_ms = cfg.lease_ms;
	acfg.heartbeat_ms = cfg.heartbeat_ms;
	acfg.updsrv = us;
	acfg.devca = devca;
	acfg.tls = tls_api;
	acfg.agent_tls = tls_agents;
	acfg.forward_ca = cfg.forward_ca;
	if (cfg.local_agents > 0)
		localagents_preload(cfg.local_agents, &cfg.local_labels, cfg.state_dir);
	/* Local agents outlive a daemon restart (localagents.c): the default
	 * agents' listener keeps the port it had, so they find the new daemon
	 * where they left the old one (when it is taken: a new port, and
	 * localagents_start stops the old agents and starts new ones). */
	free(path);
	path = xasprintf("%s/agent-listen", cfg.state_dir);
	if (acfg.agent_listen && !strcmp(acfg.agent_listen, "127.0.0.1:0")) {
		struct buf prev = BUF_INIT;
		int port = ota_read_file(&prev, path, 64) == 0 ? atoi(buf_cstr(&prev)) : 0;
		char *again = port > 0 && port < 65536 ? xasprintf("127.0.0.1:%d", port) : NULL;
		buf_release(&prev);
		if (again) {
			acfg.agent_listen = again;
			if (api_start(&api, &acfg) < 0) {
				ota_log(OTA_LOG_INFO, "agents' listener: port %d is taken (%s); a new one", port,
					ota_error_last());
				api = NULL;
			}
			acfg.agent_listen = "127.0.0.1:0";
			free(again);
		}
	}
	if (!api && api_start(&api, &acfg) < 0)
		goto fail;
	if (api_agent_port(api)) {
		char *line = xasprintf("%d\n", api_agent_port(api));
		ota_write_file_atomic(path, line, strlen(line), 0600);
		free(line);
	}
	{
		const char *colon = strrchr(cfg.listen, ':');
		int host_len = (int)(colon - cfg.listen);
		const char *host = cfg.listen;
		if (host_len == 7 && !strncmp(host, "0.0.0.0", 7))
			host = "127.0.0.1", host_len = 9;
		url = xasprintf("%s://%.*s:%d", tls_api ? "https" : "http", host_len, host, api_port(api));
	}
	free(path);
	path = xasprintf("%s/otacd.url", cfg.state_dir);
	{
		char *line = xasprintf("%s\n", url);
		ota_write_file_atomic(path, line, strlen(line), 0600);
		free(line);
	}
	if (leads && start_agents(&agents, &cfg, &acfg, api, url) < 0)
		goto fail;
	if (!leads) {
		char *holder = advertised(cfg.listen, api_port(api), tls_api != NULL);
		int rc;
		/* issue 16: this instance's settings where the others find them
		 * (cfgdrift.h), compared with the leader's at once */
		if (cfgdrift_init(&cfg) < 0 || cfgdrift_record(db, holder) < 0) {
			free(holder);
			goto fail;
		}
		follower_reads(cfg.time_scale, 0);
		rc = db_leader_open(&leader, dburl, holder);
		free(holder);
		if (rc < 0)
			goto fail;
	}
	ota_log(OTA_LOG_INFO, "listening on %s (otacd %s, state %s, %d local agents, time scale %g%s)", url,
		OTACD_VERSION, cfg.state_dir, cfg.local_agents, clock_scale(), leads ? "" : ", a follower until it leads");
	if (api_agent_port(api))
		ota_log(OTA_LOG_INFO, "agents' listener on port %d", api_agent_port(api));
	/* Type=notify (otacd.service): every listener answers from here on.
	 * Without $NOTIFY_SOCKET (not under systemd) this does nothing. */
	{
		char *ready = xasprintf("READY=1\nSTATUS=listening on %s", url);
		if (sdnotify_send(ready) < 0)
			ota_log(OTA_LOG_ERROR, "%s", ota_error_last());
		free(ready);
	}

	/* the stop signals; on PostgreSQL, between them, a leadership poll
	 * every leader_poll (docs/scale.md) */
	for (;;) {
		struct timespec poll = { cfg.leader_poll_ms / 1000, (long)(cfg.leader_poll_ms % 1000) * 1000000 };
		int sig = 0;
		if (!leader && sigwait(&stop_signals, &sig) != 0)
			break;
		if (leader)
			sig = sigtimedwait(&stop_signals, NULL, &poll);
		if (sig == SIGHUP) {
			tls_reload_all();
			continue;
		}
		if (sig > 0)
			break;
		if (leads) {
			leader_watch(leader);
			continue;
		}
		if (follow(leader, &lead, &leads) < 0)
			goto fail;
		if (!leads) {
			follow_devices(&lead, &fleet_conn);
			follower_reads(cfg.time_scale, 1); /* a new leader, or its new rows */
			continue;
		}
		cfgdrift_leading();
		db_close(fleet_conn); /* a leader forwards no device */
		fleet_conn = NULL;
		if (api_lead(api, lead.engine, lead.sources) < 0)
			goto fail;
		api_follower_set(0); /* before the local agents register */
		if (start_agents(&agents, &cfg, &acfg, api, url) < 0)
			goto fail;
	}
	ota_log(OTA_LOG_INFO, "shutting down");
	sdnotify_send("STOPPING=1");
	status = 0;
	goto out;
fail:
	ota_log(OTA_LOG_ERROR, "%s", ota_error_last());
out:
	commitwatch_stop(watch);
	localagents_stop(agents);
	api_stop(api);
	rollout_controller_stop(lead.rollouts);
	devapi_stop(lead.devapi);
	flags_controller_stop(lead.flags); /* after the device API: check-ins read its table */
	if (lead.fleet)
		fleet_set_notify(lead.fleet, NULL, NULL); /* issue 15: after the controller and /metrics */
	push_close(lead.push);
	updsrv_set_current(NULL);
	if (us)
		us->free(us);
	fleet_close(lead.fleet);
	fleet_ca_close(devca);
	if (lead.fleet_secret)
		explicit_bzero(lead.fleet_secret, strlen(lead.fleet_secret));
	free(lead.fleet_secret);
	free(lead.fleet_db);
	free(lead.device_url);
	db_close(fleet_conn);
	tls_server_free(tls_api);
	tls_server_free(tls_agents);
	tls_server_free(tls_devices);
	sched_stop(lead.sched);
	sources_stop(lead.sources);
	notify_sender_stop(lead.sender); /* issue 17: before the engine it reports to */
	engine_stop(lead.engine);
	notify_set_current(NULL);
	notify_free(notify);
	gitsrc_shutdown();
	origin_shutdown(); /* issue 15: its pull token wiped */
	artifact_store_shutdown();
	store_close(db);
	db_leader_close(leader); /* after the engine's last commit */
	if (lockfd >= 0)
		close(lockfd);
	free(path);
	free(url);
	free(dburl);
	pki_trust_close();
	cfgdrift_release();
	config_release(&cfg);
	return status;
}
