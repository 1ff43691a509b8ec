/*
 * harness.h - end-to-end test support: start the real otacd and
 * otacd-agent binaries on loopback (from $OTACD_BIN), talk to them over
 * HTTP like a user, and read their database directly to check what was
 * recorded.
 *
 * The database is STATE/otacd.db (SQLite) unless d->database names another
 * (the config key database:, docs/config.md): h_use_database(), or
 * OTACD_DATABASE=pg in the environment, which gives every daemon h_init()
 * prepares a PostgreSQL cluster of its own (tests/pgcluster.c; make
 * check-pg).
 */
#ifndef OTA_HARNESS_H
#define OTA_HARNESS_H

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/util.h"

struct daemon {
	pid_t pid;
	char *dir;        /* state directory (a fresh temp dir) */
	char *url;        /* http://127.0.0.1:PORT */
	char *token;      /* admin token */
	char *config;     /* config file path or NULL */
	char *listen;     /* HOST:PORT to listen on; NULL: 127.0.0.1:0 */
	char *device_listen;  /* the device API's HOST:PORT; NULL: 127.0.0.1:0 */
	char *device_url;     /* http://127.0.0.1:PORT of the device API */
	char *fleet_key;      /* the fleet key otacd made (STATE/fleet.key) */
	char *database;       /* database: URL, or NULL (STATE/otacd.db) */
	char *fleet_database; /* fleet_database: URL, or NULL (STATE/fleet.db) */
	struct pgcluster *pg; /* the cluster OTACD_DATABASE=pg started for it */
	/* issue 16: on PostgreSQL h_start() returns once the instance leads
	 * (/readyz); 1: once it answers, leading or following */
	int follower_ok;
};

struct pgcluster;

/*
 * Run d on these databases (URLs; NULL keeps the default): h_start() adds
 * database: and fleet_database: to d's config file (making one if needed).
 */
void h_use_database(struct daemon *d, const char *url, const char *fleet_url);
/* CREATE DATABASE name on pg; the new database's URL (caller frees). */
char *h_pg_createdb(const struct pgcluster *pg, const char *name);
/* Start pg (pgcluster_start) with two new databases, "otacd" and "fleet"
 * (their URLs in *otacd_db and *fleet_db, to free): 0; 1 when PostgreSQL's
 * binaries are missing, after saying so (the caller skips); fails the test
 * on any other error. */
int h_pg_start_dbs(struct pgcluster *pg, char **otacd_db, char **fleet_db);
/* issue 16: start d[0..n-1] with config yaml on otacd_db and fleet_db,
 * one after the other: d[0] must lead, the others follow with its admin
 * token.  yaml should carry h_fleet_secrets_yaml()'s keys. */
void h_pg_instances(struct daemon *d, int n, const char *otacd_db, const char *fleet_db, const char *yaml,
		    const char *const *args);
/* The same, each instance's artifact objects in the directory objects (NULL:
 * its own): one store, as S3 is shared in production (h_share_objects). */
void h_pg_instances_objects(struct daemon *d, int n, const char *otacd_db, const char *fleet_db, const char *yaml,
			    const char *const *args, const char *objects);
/* After h_init, before h_start: d's STATE/artifacts/sha256 is a symlink to
 * objects (an existing directory), the local store every instance shares. */
void h_share_objects(struct daemon *d, const char *objects);
/* A /proc/PID/status field in kB (VmHWM, VmRSS); fails the test without it. */
long h_proc_kb(pid_t pid, const char *field);
/* issue 16: 1 when d answers and its /readyz does not call it a follower
 * (it leads, or is a single instance); 0 when it follows or is gone. */
int h_leads(struct daemon *d);
/* Is OTACD_DATABASE=pg set (every h_init() daemon on PostgreSQL)? */
int h_on_pg(void);

/* Issue 16: config lines (caller frees) giving every instance on one fleet
 * database the same fleet key and device secret (a fresh pair; the
 * secret's file written into dir), which they must share (docs/scale.md). */
char *h_fleet_secrets_yaml(const char *dir);
/* A loopback HOST:PORT that was free a moment ago (for restarts that must
 * keep their address). */
char *h_free_listen(void);

/*
 * In a forked child before exec: die with the test.  A test that is killed
 * or times out (CI, a helper's loop) otherwise leaves its daemons and
 * simulated fleets running, loading the machine for every test after it.
 * parent is the test's pid from before the fork.
 */
void h_die_with_parent(pid_t parent);
/* h_die_with_parent() of the test binary, for a child it forked itself
 * (fleetsim, agents, prometheus ...): call in the child before exec. */
void h_child_dies_with_test(void);

/* A fresh directory under $TMPDIR (or /tmp); caller frees. */
char *h_tmpdir(void);
/* Path of a program under test: $OTACD_BIN/name. */
char *h_bin(const char *name);

/* Write a config file into d->dir before h_start (NULL content: none). */
void h_init(struct daemon *d, const char *config_yaml);
/* Start otacd on 127.0.0.1:0 with extra args (NULL-terminated); waits until
 * it answers /api/v1/health.  Reuses d->dir, so a restart continues. */
int h_start(struct daemon *d, const char *const *args);
/* Send sig and wait for the daemon to exit. */
void h_kill(struct daemon *d, int sig);
void h_cleanup(struct daemon *d);

/* JSON API calls with the admin token; return the HTTP status. */
long h_get(struct daemon *d, const char *path, json_t **out);
long h_post(struct daemon *d, const char *path, json_t *body, json_t **out);

/* Trigger a run of yaml; returns the run id (fails the test on error). */
int64_t h_trigger(struct daemon *d, const char *yaml);
/* Wait until the run is final; returns its state (static string) or "timeout". */
const char *h_wait_run(struct daemon *d, int64_t run, int timeout_ms);
/* The run JSON (GET /api/v1/runs/ID). */
json_t *h_run(struct daemon *d, int64_t run);
/* The first job of the run whose name is name. */
json_t *h_job(json_t *run, const char *name);

/* Register devices prefix-0000 .. prefix-(n-1) with the fleet key (POST
 * /device/v1/register); returns their credentials (n strings, caller
 * frees each and the array), fails the test on an error. */
char **h_register_devices(struct daemon *d, const char *prefix, int n);

/* Register agent name with labels ("a,b") through POST /api/v1/agents and
 * return its token (caller frees); the same token again for a name this
 * test process registered before; NULL when the daemon refused. */
char *h_agent_add(struct daemon *d, const char *name, const char *labels);
/* Register (h_agent_add) and start otacd-agent with its own token. */
pid_t h_agent(struct daemon *d, const char *name, const char *labels);
/* Start otacd-agent with token (in $OTACD_AGENT_TOKEN). */
pid_t h_agent_with(struct daemon *d, const char *name, const char *labels, const char *token);
/* A raw request to d's API with token (NULL: none) and a body of len bytes
 * of type ctype; returns the HTTP status (-1: no answer), the body in *body
 * if wanted. */
long h_raw(struct daemon *d, const char *method, const char *path, const char *token, const char *ctype,
	   const void *data, size_t len, struct buf *body);
/* Register agent name with labels (h_agent_add), then take one job as it
 * (waiting up to 5 s; fails the test when none comes): the claim's answer
 * (job_id, attempt, job_token, spec ...); the agent's id in *agent_id. */
json_t *h_take_job(struct daemon *d, const char *name, const char *labels, int64_t *agent_id);
/* The device listener's GET /metrics (Prometheus text; caller frees); its
 * length in *len when len is not NULL.  Fails the test unless 200. */
char *h_device_metrics(struct daemon *d, size_t *len);
/* The unlabelled series name (the first line that starts with it) in the
 * device API's /metrics; 0 when there is none. */
int64_t h_device_metric(struct daemon *d, const char *name);
/* A check-in of registered device id (credential cred) of product, hardware
 * mps2-an385, running 1.0.0, with tags (taken; NULL: none): the answer's
 * "flags" (new ref, NULL: none).  Fails the test unless 200. */
json_t *h_checkin_flags(struct daemon *d, const char *id, const char *cred, const char *product, json_t *tags);
/* Feature flag name of product as GET /api/v1/flags lists it (new ref,
 * NULL: not listed). */
json_t *h_flag_row(struct daemon *d, const char *product, const char *name);
/* Poll (every 100 ms, up to timeout_s) until flag name of product fw is in
 * state want; fails the test showing its row and d's state directory.
 * FLAGS_DEBUG=1 prints its state and latest evaluation every 2 s. */
void h_flag_wait(struct daemon *d, const char *name, const char *want, int timeout_s);
/* The device API's otacd_fleet_devices for product fw, version and cohort
 * "*" (-1 when the series is absent). */
int64_t h_fleet_devices(struct daemon *d, const char *version);
/* A fleetsim profile (in d->dir; caller frees the path) with no silent and
 * no flaky devices: its defaults (docs/fleetsim.md) leave a device of a
 * small fleet unserved within a short --duration now and then. */
char *h_calm_profile(struct daemon *d);
/* Wait for the otacd-fleetsim process sim (started with --stats stats, its
 * output in log) and return its stats (new ref).  Fails the test, with the
 * end of log, when it did not exit 0 or wrote no stats. */
json_t *h_fleetsim_stats(pid_t sim, const char *stats, const char *log);
/* A simulated fleet of product fw started by h_fleetsim_start(). */
struct h_fleetsim {
	pid_t pid;
	char *log;   /* its output: d->dir/sim.log */
	char *stats; /* its --stats file: d->dir/stats.json */
};
/* Start otacd-fleetsim --engine core against d's device API with d's fleet
 * key, a release key from h_ec_keypair(d->dir), the profile profile_json
 * (written to d->dir/profile.json), --product fw --start-version 1.0.0
 * --report-every 30m and --stats, then args (NULL-terminated: --devices,
 * --seed, --duration, --flag …). */
void h_fleetsim_start(struct h_fleetsim *fs, struct daemon *d, const char *profile_json, const char *const *args);
/* SIGTERM the fleet, then h_fleetsim_stats() (new ref); frees its paths. */
json_t *h_fleetsim_stop(struct h_fleetsim *fs);
/* POST req (taken) to the device API's path with token; the HTTP status
 * (the request itself must not fail), the answer in *ans when ans. */
long h_dev_post(struct daemon *d, const char *path, const char *token, json_t *req, json_t **ans);
/* The token a command printed: its line of 64 hex digits (stderr may be
 * mixed in); fails the test when there is none. */
char *h_token_line(struct buf *b);
/* A JSON API call with another token; returns the HTTP status. */
long h_call_as(struct daemon *d, const char *token, const char *method, const char *path, json_t *body,
	       json_t **out);

/* Run a command line with sh -c, capture stdout+stderr; returns exit status. */
int h_sh(struct buf *out, const char *fmt, ...) OTA_PRINTF(2, 3);
/* otactl ARGS against d with its admin token (h_sh: output in out, the
 * exit status returned). */
int h_otactl(struct daemon *d, struct buf *out, const char *fmt, ...) OTA_PRINTF(3, 4);
/* h_otactl for a command the test expects to succeed: when it exits
 * non-zero, its arguments, exit status and output are printed, so the
 * assertion on the status that fails next says why. */
int h_otactl_checked(struct daemon *d, struct buf *out, const char *fmt, ...) OTA_PRINTF(3, 4);
/* An EC P-256 key pair made by openssl in dir: k.pem and k.pub (a
 * release signing key for fleetsim's --key), kept when dir has one; the
 * path of k.pub, to free. */
char *h_ec_keypair(const char *dir);

/* git in the working clone work (as Tester), output in out; returns the exit status. */
int h_git(const char *work, struct buf *out, const char *fmt, ...) OTA_PRINTF(3, 4);
/* Write path (creating its folders) in work and commit everything with msg. */
void h_git_commit_file(const char *work, const char *path, const char *content, const char *msg);
/* git push -q origin ARGS from work; fails the test when git does. */
void h_git_push(const char *work, const char *args);

/* One integer from an SQL query on the daemon's database (read-only). */
int64_t h_sql_int(struct daemon *d, const char *sql);
/* The first row's first column as text (free it); no row fails the test. */
char *h_sql_text(struct daemon *d, const char *sql);

/* Sleep in the test (the tests may wait; the engine never does). */
void h_msleep(int ms);
int h_pid_alive(pid_t pid);

#endif
