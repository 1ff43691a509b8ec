/*
 * devharness.c - shared helpers for tests that run otacd-device and other
 * child processes; see devharness.h.
 */
#include "devharness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "../orchestrator/mcuboot.h"
#include "harness.h"

const char dh_fw_release_yaml[] = "name: fw\nstages:\n"
	"  - name: build\n"
	"    steps: [ { run: \"printf 'fw 1.1.0' > app.bin && head -c 40000 /dev/urandom >> app.bin\" } ]\n"
	"    artifacts: [ { path: app.bin, name: app.bin, type: application, hardware: mps2-an385 } ]\n"
	"  - { name: release, kind: release, needs: [build], version: \"1.1.0\", security_counter: 1, key: test }\n"
	"  - name: canary\n    kind: rollout\n    needs: [release]\n"
	"    steps: [ {percent: 100, hold: 1000h} ]\n    gates: [boots]\n"
	"gates:\n  boots: { metric: boot_success_rate, min: 0.5, min_devices: 1000 }\n";

pid_t dh_spawn(const char *log, char *const argv[])
{
	pid_t parent = getpid(), pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		h_die_with_parent(parent);
		setpgid(0, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	setpgid(pid, pid);
	return pid;
}

void dh_stop(pid_t pid)
{
	int st;
	if (pid <= 0)
		return;
	kill(-pid, SIGTERM);
	waitpid(pid, &st, 0);
}

int dh_free_port(void)
{
	char *l = h_free_listen();
	int port = atoi(strrchr(l, ':') + 1);
	free(l);
	return port;
}

int dh_env_count(const char *name, int dflt)
{
	const char *s = getenv(name);
	return s && atoi(s) > 0 ? atoi(s) : dflt;
}

char *dh_src_path(const char *rel)
{
	const char *root = getenv("OTACD_SRC");
	return xasprintf("%s/%s", root && *root ? root : ".", rel);
}

char *dh_sensor_node_copy(const char *dir, const char *name)
{
	char *from = dh_src_path("examples/sensor-node"), *core = dh_src_path("device");
	char *to = xasprintf("%s/%s", dir, name);
	struct buf out = BUF_INIT;
	/* libotadev as a firmware repository vendors it: its sources and
	 * headers (otadev*.c, otadev*.h), not the Linux port beside them */
	assert_int_equal(h_sh(&out, "mkdir -p '%s/lib/otadev' && cd '%s' && tar -cf - --exclude=./build . | (cd '%s' && tar -xf -)"
				    " && cp '%s'/otadev*.c '%s'/otadev*.h '%s/lib/otadev/'",
			      to, from, to, core, core, to), 0);
	buf_release(&out);
	free(from);
	free(core);
	return to;
}

int dh_sh_in(const char *dir, struct buf *out, const char *fmt, ...)
{
	struct buf cmd = BUF_INIT, tmp = BUF_INIT;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	buf_vprintf(&cmd, fmt, ap);
	va_end(ap);
	rc = h_sh(out ? out : &tmp, "cd %s && { %s; }", dir, buf_cstr(&cmd));
	if (rc != 0 && !out)
		print_error("command failed (%d): %s\n%s\n", rc, buf_cstr(&cmd), buf_cstr(&tmp));
	buf_release(&cmd);
	buf_release(&tmp);
	return rc;
}

pid_t dh_device_run(const char *bin, const char *conf, const char *log)
{
	char *argv[] = { (char *)bin, "-c", (char *)conf, "run", NULL };
	return dh_spawn(log, argv);
}

int dh_device_run_killed(const char *bin, const char *conf, const char *log, int ms)
{
	pid_t pid = dh_device_run(bin, conf, log);
	int st;

	h_msleep(ms);
	if (waitpid(pid, &st, WNOHANG) == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		return 1;
	}
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 10);
	return 0;
}

json_t *dh_device_status(const char *bin, const char *conf)
{
	char *own = bin ? NULL : h_bin("otacd-device");
	struct buf out = BUF_INIT;
	json_t *j;
	assert_int_equal(h_sh(&out, "%s -c %s status 2>/dev/null", bin ? bin : own, conf), 0);
	j = json_loads(buf_cstr(&out), 0, NULL);
	assert_non_null(j);
	free(own);
	buf_release(&out);
	return j;
}

const char *dh_js(json_t *o, const char *k1, const char *k2)
{
	json_t *x = json_object_get(o, k1);
	if (k2)
		x = json_object_get(x, k2);
	return json_is_string(x) ? json_string_value(x) : "";
}

int64_t dh_ji(json_t *o, const char *k1, const char *k2)
{
	json_t *x = json_object_get(o, k1);
	if (k2)
		x = json_object_get(x, k2);
	return json_is_true(x) ? 1 : json_is_false(x) ? 0 : json_integer_value(x);
}

char *dh_factory_image(const char *dir, const char *key, int counter)
{
	char *path = xasprintf("%s/%s.pem", dir, key), *out;
	struct mcuboot_sign_opts o;
	struct buf img;
	EVP_PKEY *k;
	FILE *f = fopen(path, "r");

	assert_non_null(f);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	free(path);
	assert_non_null(k);
	memset(&o, 0, sizeof(o));
	if (counter >= 0) {
		o.has_security_counter = 1;
		o.security_counter = (uint32_t)counter;
	}
	assert_int_equal(mcuboot_version_parse("1.0.0", &o.major, &o.minor, &o.revision, &o.build), 0);
	buf_init(&img, 1 << 20);
	assert_int_equal(mcuboot_sign(&img, "factory firmware 1.0.0", 22, k, &o), 0);
	EVP_PKEY_free(k);
	out = xasprintf("%s/factory.img", dir);
	assert_int_equal(ota_write_file_atomic(out, img.ptr, img.len, 0600), 0);
	buf_release(&img);
	return out;
}

pid_t dh_device_loop(const char *conf)
{
	char *bin = h_bin("otacd-device");
	char *script = xasprintf("while :; do %s -c %s boot >/dev/null || exit 3; %s -c %s run; rc=$?;"
				 " [ $rc -eq 10 ] || exit $rc; done", bin, conf, bin, conf);
	char *log = xasprintf("%s.log", conf);
	char *argv[] = { "/bin/sh", "-c", script, NULL };
	pid_t pid = dh_spawn(log, argv);
	free(bin);
	free(script);
	free(log);
	return pid;
}

int64_t dh_release_of(struct daemon *d, int64_t run)
{
	char *sql = xasprintf("SELECT COALESCE((SELECT id FROM releases WHERE run_id = %lld), 0)", (long long)run);
	int64_t id = 0;
	for (int waited = 0; waited < 60000 && !(id = h_sql_int(d, sql)); waited += 100)
		h_msleep(100);
	free(sql);
	return id;
}

int64_t dh_fleet_count(struct daemon *d, int64_t release, const char *what)
{
	char *path = xasprintf("/api/v1/releases/%lld/rollout", (long long)release);
	json_t *st = NULL;
	int64_t v;
	assert_int_equal(h_get(d, path, &st), 200);
	v = json_integer_value(json_object_get(json_object_get(st, "fleet"), what));
	json_decref(st);
	free(path);
	return v;
}

struct dh_mhd_req {
	struct buf body;
};

int dh_mhd_body(void **con_cls, const char *data, size_t *size, struct buf **body)
{
	struct dh_mhd_req *rq = *con_cls;

	if (!rq) {
		rq = xcalloc(1, sizeof(*rq));
		buf_init(&rq->body, 1 << 20);
		*con_cls = rq;
		return 1;
	}
	if (*size) {
		buf_put(&rq->body, data, *size);
		*size = 0;
		return 1;
	}
	*body = &rq->body;
	return 0;
}

void dh_mhd_body_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t)
{
	struct dh_mhd_req *rq = *con_cls;
	(void)cls;
	(void)c;
	(void)t;
	if (rq) {
		buf_release(&rq->body);
		free(rq);
	}
	*con_cls = NULL;
}

int64_t dh_fleet_wait(struct daemon *d, int64_t release, const char *what, int64_t want, int timeout_ms)
{
	int64_t v;
	for (int waited = 0; (v = dh_fleet_count(d, release, what)) < want && waited < timeout_ms; waited += 200)
		h_msleep(200);
	return v;
}

void dh_start_signing(struct daemon *d, const char *const *args, const char *fmt, ...)
{
	struct buf out = BUF_INIT, cfg = BUF_INIT;
	va_list ap;

	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
				    " && openssl pkey -in key.pem -pubout -out key.pub", d->dir), 0);
	buf_printf(&cfg, "keys:\n  test: { spec: %s/key.pem }\n", d->dir);
	va_start(ap, fmt);
	buf_vprintf(&cfg, fmt, ap);
	va_end(ap);
	d->config = xasprintf("%s/config.yml", d->dir);
	assert_int_equal(ota_write_file_atomic(d->config, cfg.ptr, cfg.len, 0600), 0);
	assert_int_equal(h_start(d, args), 0);
	buf_release(&cfg);
	buf_release(&out);
}

void dh_fleet_start(struct dh_fleet *f, const char *prefix, int n, const char *trusted, const char *fmt, ...)
{
	const char *const args[] = { "--local-agents", "1", NULL };
	struct buf cfg = BUF_INIT;
	va_list ap;

	va_start(ap, fmt);
	buf_vprintf(&cfg, fmt, ap);
	va_end(ap);
	dh_start_signing(&f->d, args, "%s", buf_cstr(&cfg));
	f->cred = h_register_devices(&f->d, prefix, n);
	f->n = n;
	f->factory = dh_factory_image(f->d.dir, trusted, -1);
	buf_release(&cfg);
}

void dh_fleet_stop(struct dh_fleet *f)
{
	for (int i = 0; i < f->n; i++)
		free(f->cred[i]);
	free(f->cred);
	free(f->factory);
	h_cleanup(&f->d);
	memset(f, 0, sizeof(*f));
}

int64_t dh_fw_release(struct daemon *d)
{
	int64_t id = dh_release_of(d, h_trigger(d, dh_fw_release_yaml));
	assert_true(id > 0);
	return id;
}

int dh_tcp_up(int port)
{
	struct sockaddr_in sa = { 0 };
	int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

char *dh_mosquitto_bin(void)
{
	const char *e = getenv("OTACD_MOSQUITTO");
	char *p = xstrdup(e && *e ? e : "/usr/sbin/mosquitto");
	if (access(p, X_OK) == 0)
		return p;
	free(p);
	return NULL;
}

pid_t dh_mosquitto_spawn(const char *bin, const char *dir, int port, const char *conf_tail)
{
	struct passwd *pw = getpwuid(getuid());
	char *conf = xasprintf("listener %d 127.0.0.1\npersistence false\nuser %s\n%s", port,
			       pw ? pw->pw_name : "root", conf_tail);
	char *path = xasprintf("%s/mosquitto.conf", dir), *log = xasprintf("%s/mosquitto.log", dir);
	char *argv[] = { (char *)bin, "-c", path, NULL };
	pid_t pid;

	assert_int_equal(ota_write_file_atomic(path, conf, strlen(conf), 0600), 0);
	pid = dh_spawn(log, argv);
	for (int waited = 0; waited < 10000 && !dh_tcp_up(port); waited += 50)
		h_msleep(50);
	if (!dh_tcp_up(port))
		fail_msg("mosquitto did not start; see %s", log);
	free(conf);
	free(path);
	free(log);
	return pid;
}

void dh_x509_add_ext(X509 *issuer, X509 *x, int nid, const char *v)
{
	X509V3_CTX ctx;
	X509_EXTENSION *e;
	X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &ctx, nid, v);
	assert_non_null(e);
	assert_true(X509_add_ext(x, e, -1));
	X509_EXTENSION_free(e);
}
