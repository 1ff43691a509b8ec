/*
 * devharness.h - shared pieces of the tests that run otacd-device and other
 * child processes next to otacd: spawning and stopping process groups, free
 * loopback ports, and reading otacd-device's status JSON.  Needs only
 * harness.h and common/ (it is linked into every test binary).
 */
#ifndef OTA_DEVHARNESS_H
#define OTA_DEVHARNESS_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/x509.h>

#include "harness.h"

/* Fork and exec argv[0] in its own process group, stdout and stderr
 * appended to log; returns the child's pid. */
pid_t dh_spawn(const char *log, char *const argv[]);
/* SIGTERM pid's process group and wait for pid (pid <= 0: nothing). */
void dh_stop(pid_t pid);
/* A loopback TCP port that was free a moment ago. */
int dh_free_port(void);
/* 1 when something accepts TCP connections on 127.0.0.1:port. */
int dh_tcp_up(int port);
/* The mosquitto broker the push tests run: $OTACD_MOSQUITTO or Debian's
 * /usr/sbin/mosquitto; NULL when it is not installed (the caller skips). */
char *dh_mosquitto_bin(void);
/* Start it on 127.0.0.1:port with dir/mosquitto.conf (no persistence,
 * this user, then conf_tail: TLS, passwords, ACL) and wait until it
 * listens; log in dir/mosquitto.log.  Stop it with dh_stop. */
pid_t dh_mosquitto_spawn(const char *bin, const char *dir, int port, const char *conf_tail);

/* $name as a count when it is a positive number, else dflt. */
int dh_env_count(const char *name, int dflt);

/* $OTACD_SRC/rel (the source tree; "." when unset).  Caller frees. */
char *dh_src_path(const char *rel);
/* A copy of examples/sensor-node without its build output at DIR/NAME,
 * laid out as a firmware repository: libotadev (device/'s core) in
 * lib/otadev, where its Makefile looks first.  Returns that path. */
char *dh_sensor_node_copy(const char *dir, const char *name);

/* Run the shell command (printf-style) in dir; its output in out, or, out
 * NULL, printed with the command when it fails.  Returns the exit status. */
int dh_sh_in(const char *dir, struct buf *out, const char *fmt, ...) OTA_PRINTF(3, 4);

/* `BIN -c CONF run` spawned with dh_spawn, output appended to log. */
pid_t dh_device_run(const char *bin, const char *conf, const char *log);
/* The same, SIGKILLed after ms milliseconds unless it ended before: 1 when
 * it was killed, 0 when it had exited 10 (a reboot); fails the test on any
 * other end. */
int dh_device_run_killed(const char *bin, const char *conf, const char *log, int ms);

/* `BIN -c CONF status` parsed (fails the test unless it exits 0 with JSON);
 * bin NULL: $OTACD_BIN/otacd-device.  Caller decrefs. */
json_t *dh_device_status(const char *bin, const char *conf);
/* o[k1] (or o[k1][k2] when k2 is set) as a string, "" when not one. */
const char *dh_js(json_t *o, const char *k1, const char *k2);
/* The same as an integer (true 1, false 0). */
int64_t dh_ji(json_t *o, const char *k1, const char *k2);

/* Sign the factory image "factory firmware 1.0.0" (MCUboot, version 1.0.0,
 * security counter counter, none when < 0) with DIR/KEY.pem and write it to
 * DIR/factory.img; returns that path (caller frees). */
char *dh_factory_image(const char *dir, const char *key, int counter);

/* The device's life as a process group: `otacd-device -c CONF boot` (the
 * simulated MCUboot), then `run`; on exit 10 again, any other exit ends it.
 * Output goes to CONF.log.  Stop it with dh_stop. */
pid_t dh_device_loop(const char *conf);

/* The id of the release run made, waiting up to 60 s for it (0: none). */
int64_t dh_release_of(struct daemon *d, int64_t run);
/* The release's rollout fleet counter what ("confirmed", "downloads" ...)
 * from GET /api/v1/releases/ID/rollout (fails the test unless 200). */
int64_t dh_fleet_count(struct daemon *d, int64_t release, const char *what);
/* The same, polled until it reaches want or timeout_ms pass: its last value. */
int64_t dh_fleet_wait(struct daemon *d, int64_t release, const char *what, int64_t want, int timeout_ms);

/* Request bodies of a libmicrohttpd test server: call first in the access
 * handler; 1 while the body is still coming in (the handler returns
 * MHD_YES), 0 once it is complete, then *body is it (borrowed).  Register
 * dh_mhd_body_done as MHD_OPTION_NOTIFY_COMPLETED to free it. */
int dh_mhd_body(void **con_cls, const char *data, size_t *size, struct buf **body);
void dh_mhd_body_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t);

/* In d->dir (after h_init): make the P-256 release key key.pem (and
 * key.pub), write config.yml = "keys: test: key.pem" plus the printf-style
 * rest, and h_start otacd with args (fails the test on an error). */
void dh_start_signing(struct daemon *d, const char *const *args, const char *fmt, ...) OTA_PRINTF(3, 4);

/* otacd and n registered devices: what the end-to-end device tests start
 * from.  dh_fleet_stop releases it all and zeroes it. */
struct dh_fleet {
	struct daemon d;
	char **cred;        /* the devices' credentials */
	int n;
	char *factory;      /* factory image 1.0.0, signed with the device's trusted key */
	int64_t release;    /* release 1.1.0 (dh_fw_release), 0 before */
};

/* In f->d.dir (after h_init): dh_start_signing with --local-agents 1 and
 * the printf-style config, n devices PREFIX-0000..., and the factory image
 * signed with DIR/TRUSTED.pem. */
void dh_fleet_start(struct dh_fleet *f, const char *prefix, int n, const char *trusted, const char *fmt, ...)
	OTA_PRINTF(5, 6);
void dh_fleet_stop(struct dh_fleet *f);
/* Trigger dh_fw_release_yaml and wait for its release: its id (fails the
 * test when none comes). */
int64_t dh_fw_release(struct daemon *d);

/* Pipeline fw: builds app.bin ("fw 1.1.0" + 40000 random bytes, hardware
 * mps2-an385), releases it as 1.1.0 (security counter 1, key test) and
 * rolls it out to 100 %, held (the boots gate needs 1000 devices). */
extern const char dh_fw_release_yaml[];

/* Add extension nid with value v (OpenSSL's config syntax, e.g.
 * "critical,CA:FALSE") to x, issued by issuer (x itself when self-signed). */
void dh_x509_add_ext(X509 *issuer, X509 *x, int nid, const char *v);

#endif
