/*
 * test_devlinux.c - otacd-device's Linux port beyond files and MCUboot
 * (issue 14): the U-Boot swap/confirm backend through the real
 * fw_printenv / fw_setenv (libubootenv), slots on block devices (real loop
 * devices) and MTD partitions, the systemd unit and the config example.
 *
 * The bootloader side of the U-Boot tests is tests/uboot_boot.sh, an
 * EMULATION of what U-Boot's bootcount (CONFIG_BOOTCOUNT_LIMIT +
 * CONFIG_BOOTCOUNT_ENV) and the boot script of docs/device.md do at each
 * power-on, on the same environment through the same tools; it is not
 * U-Boot.  Everything else is real: otacd, the device API, otacd-device
 * processes, loop devices.
 *
 * Skips: the loop-device test when losetup does not work (not root, no
 * /dev/loop-control); the unit test when systemd-analyze is missing.  MTD:
 * no mtdram/nandsim module can be loaded in the container, so only the
 * acceptance check of what MEMGETINFO says and the refusal of a character
 * device that is not MTD are tested.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <fcntl.h>
#include <jansson.h>
#include <mtd/mtd-user.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../device/otadev.h"
#include "../device/linux/push.h"
#include "../device/linux/slot.h"
#include "../device/linux/uboot.h"
#include "../orchestrator/mcuboot.h"
#include "devharness.h"
#include "harness.h"

#define HW "mps2-an385"

static char *read_all(const char *path, size_t *len)
{
	struct buf b = BUF_INIT;
	char *out;
	assert_int_equal(ota_read_file(&b, path, 1 << 24), 0);
	*len = b.len;
	out = malloc(b.len + 1);
	memcpy(out, b.ptr ? b.ptr : "", b.len);
	out[b.len] = 0;
	buf_release(&b);
	return out;
}

/* An environment image as U-Boot's mkenvimage writes it (CRC, optionally
 * redundant), and its fw_env.config; vars: "a=1\nb=2\n". */
static char *env_make(const char *dir, const char *vars, int redundant)
{
	struct buf out = BUF_INIT;
	char *conf = xasprintf("%s/fw_env.config", dir);
	char *txt = xasprintf("%s/env.txt", dir);
	char *lines = redundant ? xasprintf("%s/env0.bin 0x0 0x4000\n%s/env1.bin 0x0 0x4000\n", dir, dir)
				: xasprintf("%s/env0.bin 0x0 0x4000\n", dir);
	assert_int_equal(ota_write_file_atomic(txt, vars, strlen(vars), 0600), 0);
	assert_int_equal(ota_write_file_atomic(conf, lines, strlen(lines), 0600), 0);
	if (h_sh(&out, "cd %s && mkenvimage %s -s 0x4000 -o env0.bin env.txt && cp env0.bin env1.bin", dir,
		 redundant ? "-r" : "") != 0)
		fail_msg("mkenvimage (Debian: u-boot-tools): %s", buf_cstr(&out));
	free(txt);
	free(lines);
	buf_release(&out);
	return conf;
}

static char *env_get(const char *conf, const char *var)
{
	struct buf out = BUF_INIT;
	char *v;
	assert_int_equal(h_sh(&out, "fw_printenv -c %s -n %s", conf, var), 0);
	v = xstrdup(buf_cstr(&out));
	v[strcspn(v, "\n")] = 0;
	buf_release(&out);
	return v;
}

static void assert_env(const char *conf, const char *var, const char *want)
{
	char *v = env_get(conf, var);
	if (strcmp(v, want))
		fail_msg("%s: %s=%s, want %s", conf, var, v, want);
	free(v);
}

/* ---- the U-Boot backend on its own ------------------------------------------ */

static void uboot_marks_move_the_slot_variable_and_the_bootcount(void **state)
{
	char *dir = h_tmpdir(), err[512];
	char *conf = env_make(dir, "otacd_slot=a\nupgrade_available=0\nbootcount=0\nbootlimit=3\n"
				   "bootcmd=run otacd_boot\n", 1);
	struct uboot u = { conf, "otacd_slot", "/nonexistent", 2 };
	struct uboot_env e;
	struct buf out = BUF_INIT;
	(void)state;

	assert_int_equal(uboot_testing(&u, 0, err, sizeof(err)), 0);
	/* the test mark: the other slot, on trial, counted from 0, limit 2 */
	assert_int_equal(uboot_mark(&u, 0, OTADEV_MARK_TEST, err, sizeof(err)), 0);
	assert_int_equal(uboot_env_read(&u, &e, err, sizeof(err)), 0);
	assert_int_equal(e.slot, 1);
	assert_int_equal(e.upgrade_available, 1);
	assert_int_equal(e.bootcount, 0);
	assert_int_equal(e.bootlimit, 2);
	assert_env(conf, "bootcmd", "run otacd_boot");   /* the rest of the environment is kept */
	/* still running a (not rebooted yet): pending; booted b: on trial */
	assert_int_equal(uboot_testing(&u, 0, err, sizeof(err)), 2);
	assert_int_equal(uboot_testing(&u, 1, err, sizeof(err)), 1);
	/* a confirm from the slot the variable does not name is refused */
	assert_int_equal(uboot_mark(&u, 0, OTADEV_MARK_CONFIRM, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "names slot b"));
	/* U-Boot counted two boots; the confirm clears the count */
	assert_int_equal(h_sh(&out, "fw_setenv -c %s bootcount 2", conf), 0);
	assert_int_equal(uboot_mark(&u, 1, OTADEV_MARK_CONFIRM, err, sizeof(err)), 0);
	assert_env(conf, "upgrade_available", "0");
	assert_env(conf, "bootcount", "0");
	assert_env(conf, "otacd_slot", "b");
	assert_int_equal(uboot_testing(&u, 1, err, sizeof(err)), 0);
	/* a pending mark is cancelled before the next download overwrites a */
	assert_int_equal(uboot_mark(&u, 1, OTADEV_MARK_TEST, err, sizeof(err)), 0);
	assert_env(conf, "otacd_slot", "a");
	assert_int_equal(uboot_mark(&u, 1, OTADEV_MARK_CANCEL, err, sizeof(err)), 0);
	assert_env(conf, "otacd_slot", "b");
	assert_env(conf, "upgrade_available", "0");
	/* the booted slot comes from the kernel command line only */
	{
		char *cl = xasprintf("%s/cmdline", dir);
		u.cmdline = cl;
		assert_int_equal(ota_write_file_atomic(cl, "console=ttyS0 otacd.slot=b rootwait\n", 36, 0600), 0);
		assert_int_equal(uboot_booted(&u, err, sizeof(err)), 1);
		assert_int_equal(ota_write_file_atomic(cl, "console=ttyS0 xotacd.slot=a otacd.slot=ab\n", 42, 0600), 0);
		assert_int_equal(uboot_booted(&u, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "no otacd.slot"));
		free(cl);
	}
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(conf);
	free(dir);
}

/* Nothing is read from, or written over, an environment fw_printenv
 * cannot vouch for: a bad CRC (single copy), values this backend never
 * writes, a value smuggling a second line. */
static void on_alarm(int sig)
{
	(void)sig;
}

/* A device daemon takes signals (timers, SIGCHLD, SIGTERM) while it waits
 * for fw_printenv: each interrupts poll, read and waitpid, and must only
 * resume them, never cut the answer short or hang. */
static void uboot_reads_survive_a_storm_of_signals(void **state)
{
	char *dir = h_tmpdir(), err[512];
	char *conf = env_make(dir, "otacd_slot=b\nupgrade_available=1\nbootcount=2\nbootlimit=3\n", 0);
	struct uboot u = { conf, "otacd_slot", "/nonexistent", 3 };
	struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART: every call sees EINTR */
	struct itimerval every = { { 0, 200 }, { 0, 200 } }, off = { { 0, 0 }, { 0, 0 } };
	struct uboot_env e;
	struct buf out = BUF_INIT;
	(void)state;

	assert_int_equal(sigaction(SIGALRM, &sa, NULL), 0);
	assert_int_equal(setitimer(ITIMER_REAL, &every, NULL), 0);
	for (int i = 0; i < 40; i++) {
		if (uboot_env_read(&u, &e, err, sizeof(err)) != 0)
			fail_msg("read %d under signals: %s", i, err);
		assert_int_equal(e.slot, 1);
		assert_int_equal(e.bootcount, 2);
	}
	setitimer(ITIMER_REAL, &off, NULL);
	signal(SIGALRM, SIG_DFL);
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(conf);
	free(dir);
}

static void uboot_corrupt_or_foreign_environment_is_refused_and_never_written(void **state)
{
	static const char *const foreign[] = {
		"otacd_slot=c\nupgrade_available=0\nbootcount=0\nbootlimit=3\n",
		"otacd_slot=a\nupgrade_available=7\nbootcount=0\nbootlimit=3\n",
		"otacd_slot=a\nupgrade_available=1\nbootcount=12abc\nbootlimit=3\n",
		"otacd_slot=a\nupgrade_available=0\nbootcount=0\nbootlimit=99999999999\n",
	};
	char *dir = h_tmpdir(), err[512];
	char *conf = env_make(dir, "otacd_slot=a\nupgrade_available=0\nbootcount=0\nbootlimit=3\n", 0);
	char *bin_path = xasprintf("%s/env0.bin", dir);
	struct uboot u = { conf, "otacd_slot", "/nonexistent", 3 };
	struct uboot_env e;
	struct buf out = BUF_INIT;
	size_t n1, n2;
	char *before, *after;
	(void)state;

	/* one flipped byte in the single copy: the CRC no longer matches */
	assert_int_equal(h_sh(&out, "printf 'X' | dd of=%s bs=1 seek=40 conv=notrunc", bin_path), 0);
	before = read_all(bin_path, &n1);
	assert_int_equal(uboot_env_read(&u, &e, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "refused"));
	assert_int_equal(uboot_mark(&u, 0, OTADEV_MARK_TEST, err, sizeof(err)), -1);
	assert_int_equal(uboot_mark(&u, 0, OTADEV_MARK_CONFIRM, err, sizeof(err)), -1);
	assert_int_equal(uboot_testing(&u, 0, err, sizeof(err)), -1);
	after = read_all(bin_path, &n2);
	assert_true(n1 == n2 && !memcmp(before, after, n1));   /* not written over */
	free(before);
	free(after);
	free(conf);
	/* well-formed environments holding values otacd-device never writes */
	for (size_t i = 0; i < sizeof(foreign) / sizeof(foreign[0]); i++) {
		conf = env_make(dir, foreign[i], 0);
		u.fw_config = conf;
		before = read_all(bin_path, &n1);
		assert_int_equal(uboot_env_read(&u, &e, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "unexpected"));
		assert_int_equal(uboot_mark(&u, 0, OTADEV_MARK_TEST, err, sizeof(err)), -1);
		after = read_all(bin_path, &n2);
		assert_true(n1 == n2 && !memcmp(before, after, n1));
		free(before);
		free(after);
		free(conf);
	}
	/* a value with a newline would print as two variables */
	conf = env_make(dir, "otacd_slot=a\nupgrade_available=0\nbootcount=0\nbootlimit=3\n", 0);
	u.fw_config = conf;
	assert_int_equal(h_sh(&out, "fw_setenv -c %s otacd_slot 'a\nupgrade_available=0'", conf), 0);
	assert_int_equal(uboot_env_read(&u, &e, err, sizeof(err)), -1);
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(bin_path);
	free(conf);
	free(dir);
}

/* ---- end to end: real otacd, otacd-device processes, the emulated U-Boot ------- */

/* otacd with release 1.1.0 (signed with key.pem, counter 1) rolled out to
 * 100 %; a factory image 1.0.0 signed with the same key. */
static void rig_start(struct dh_fleet *r, const char *prefix, int n)
{
	memset(r, 0, sizeof(*r));
	h_init(&r->d, NULL);
	dh_fleet_start(r, prefix, n, "key", "poll_interval: 1s\n");
	r->release = dh_fw_release(&r->d);
}

/* the end-to-end tests' otacd and device loop, stopped by the teardown
 * even when an assertion fails */
static struct dh_fleet R;
static pid_t R_loop;

struct udev {
	char *dir, *conf, *fw_conf, *cmdline, *log;
	int mcuboot;         /* the slot-file MCUboot simulation instead of U-Boot */
	const char *extra;   /* more config lines */
};

/* Device i on U-Boot: an environment (slot a, bootlimit), a kernel command
 * line naming a, the factory image in slot a.  Slots: files in its
 * directory, or the given paths (block devices). */
static void udev_setup(struct udev *u, struct dh_fleet *r, int i, const char *health, int bootlimit, int redundant,
		       const char *slot_a, const char *slot_b)
{
	struct buf out = BUF_INIT;
	char *bin = h_bin("otacd-device"), *text, *vars;
	u->dir = xasprintf("%s/u-%04d", r->d.dir, i);   /* u->mcuboot set by the caller */
	u->conf = xasprintf("%s/device.conf", u->dir);
	u->cmdline = xasprintf("%s/cmdline", u->dir);
	u->log = xasprintf("%s/device.log", u->dir);
	assert_int_equal(h_sh(&out, "mkdir -p %s && echo 'console=ttyS0 otacd.slot=a' > %s", u->dir, u->cmdline), 0);
	vars = xasprintf("otacd_slot=a\nupgrade_available=0\nbootcount=0\nbootlimit=%d\n"
			 "bootcmd=run otacd_boot\n", bootlimit);
	u->fw_conf = env_make(u->dir, vars, redundant);
	text = xasprintf("url = %s\ndevice = u-%04d\ncredential = %s\nproduct = fw\nhardware = " HW "\n"
			 "bootloader = 2023.1.0\nboot = %s\n%s = %s%s\n%s = %s%s\n"
			 "fw_env_config = %s\nuboot_cmdline = %s\nuboot_bootlimit = %d\n"
			 "state = %s/state\nkey = %s/key.pub\nslot_size = 65536\nsector_size = 4096\n"
			 "health_check = %s\nsync = 1\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\n%s",
			 r->d.device_url, i, r->cred[i], u->mcuboot ? "mcuboot" : "uboot",
			 u->mcuboot ? "primary" : "slot_a", slot_a ? "" : u->dir, slot_a ? slot_a : "/slot_a",
			 u->mcuboot ? "secondary" : "slot_b", slot_b ? "" : u->dir, slot_b ? slot_b : "/slot_b", u->fw_conf, u->cmdline, bootlimit, u->dir,
			 r->d.dir, health, u->extra ? u->extra : "");
	assert_int_equal(ota_write_file_atomic(u->conf, text, strlen(text), 0600), 0);
	if (h_sh(&out, "%s -c %s flash %s", bin, u->conf, r->factory) != 0)
		fail_msg("flash: %s", buf_cstr(&out));
	free(vars);
	free(text);
	free(bin);
	buf_release(&out);
}

static void udev_free(struct udev *u)
{
	free(u->dir);
	free(u->conf);
	free(u->fw_conf);
	free(u->cmdline);
	free(u->log);
}

/* The device's life: the emulated U-Boot, then otacd-device; exit 10 is a
 * reboot (back to the bootloader). */
static pid_t udev_loop(const struct udev *u)
{
	char *bin = h_bin("otacd-device"), *boot = dh_src_path("tests/uboot_boot.sh");
	char *script = u->mcuboot ? xasprintf("while :; do %s -c %s boot || exit 3; %s -c %s run; rc=$?;"
					      " [ $rc -eq 10 ] || exit $rc; done", bin, u->conf, bin, u->conf)
				  : xasprintf("while :; do %s %s %s || exit 3; %s -c %s run; rc=$?;"
					      " [ $rc -eq 10 ] || exit $rc; done", boot, u->fw_conf, u->cmdline, bin, u->conf);
	char *argv[] = { "/bin/sh", "-c", script, NULL };
	pid_t pid = dh_spawn(u->log, argv);
	R_loop = pid;
	free(bin);
	free(boot);
	free(script);
	return pid;
}

static void loop_stop(pid_t pid)
{
	dh_stop(pid);
	if (pid == R_loop)
		R_loop = 0;
}

static int e2e_teardown(void **state)
{
	(void)state;
	if (R_loop)
		loop_stop(R_loop);
	if (R.d.dir)
		dh_fleet_stop(&R);
	return 0;
}

static json_t *udev_status(const struct udev *u)
{
	return dh_device_status(NULL, u->conf);
}

/* The device's life until the release's fleet counter what reaches want. */
static void udev_loop_until(struct dh_fleet *r, const struct udev *u, const char *what, int64_t want)
{
	pid_t pid = udev_loop(u);
	assert_int_equal(dh_fleet_wait(&r->d, r->release, what, want, 60000), want);
	loop_stop(pid);
}

static int count_lines(const char *path, const char *line)
{
	size_t n;
	char *s = read_all(path, &n), *p = s;
	int c = 0;
	size_t l = strlen(line);
	while ((p = strstr(p, line))) {
		if ((p == s || p[-1] == '\n') && (p[l] == '\n' || !p[l]))
			c++;
		p += l;
	}
	free(s);
	return c;
}

/* An update through otacd on U-Boot: downloaded into slot b, marked for a
 * trial (redundant environment), booted by the emulated U-Boot, confirmed
 * by the health check: the environment ends on b with nothing on trial. */
static void uboot_update_cycle_through_otacd_confirms_and_clears_the_bootcount(void **state)
{
	struct dh_fleet *r = &R;
	struct udev u = { 0 };
	json_t *s;
	(void)state;
	rig_start(r, "u", 1);
	udev_setup(&u, r, 0, "true", 3, 1, NULL, NULL);
	udev_loop_until(r, &u, "confirmed", 1);
	assert_env(u.fw_conf, "otacd_slot", "b");
	assert_env(u.fw_conf, "upgrade_available", "0");
	assert_env(u.fw_conf, "bootcount", "0");
	assert_env(u.fw_conf, "bootcmd", "run otacd_boot");
	assert_int_equal(count_lines(u.log, "boot a"), 1);
	assert_true(count_lines(u.log, "boot b") >= 1);
	assert_int_equal(count_lines(u.log, "altboot a") + count_lines(u.log, "altboot b"), 0);
	s = udev_status(&u);   /* booted b: the core's slot 0 is b */
	assert_string_equal(dh_js(s, "boot", NULL), "uboot: booted b");
	assert_string_equal(dh_js(s, "version", NULL), "1.1.0");
	assert_string_equal(dh_js(s, "phase", NULL), "idle");
	assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
	assert_true(json_is_true(json_object_get(json_object_get(s, "primary"), "valid")));
	json_decref(s);
	assert_int_equal(dh_fleet_count(&r->d, r->release, "downloads"), 1);
	assert_int_equal(dh_fleet_count(&r->d, r->release, "installs"), 1);
	assert_int_equal(dh_fleet_count(&r->d, r->release, "reverted"), 0);
	udev_free(&u);
	dh_fleet_stop(r);
}

/* A health check that always fails: U-Boot counts the boots of b; past
 * bootlimit its altbootcmd boots a again and clears the trial; the device
 * reports the revert and does not take the image again. */
static void uboot_boot_loop_is_reverted_by_the_bootcount_and_reported(void **state)
{
	struct dh_fleet *r = &R;
	struct udev u = { 0 };
	json_t *s;
	(void)state;
	rig_start(r, "u", 1);
	udev_setup(&u, r, 0, "false", 2, 0, NULL, NULL);
	udev_loop_until(r, &u, "reverted", 1);
	/* bootcount 1 and 2 boot b; 3 > bootlimit 2: altbootcmd, back on a */
	assert_int_equal(count_lines(u.log, "boot b"), 2);
	assert_int_equal(count_lines(u.log, "altboot a"), 1);
	assert_env(u.fw_conf, "otacd_slot", "a");
	assert_env(u.fw_conf, "upgrade_available", "0");
	s = udev_status(&u);
	assert_string_equal(dh_js(s, "version", NULL), "1.0.0");
	assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
	assert_true(json_is_true(json_object_get(s, "refused_image")));
	json_decref(s);
	assert_int_equal(dh_fleet_count(&r->d, r->release, "confirmed"), 0);
	assert_int_equal(dh_fleet_count(&r->d, r->release, "installs"), 1);
	udev_free(&u);
	dh_fleet_stop(r);
}

/* otacd-device refuses to start on an environment with a bad CRC, and
 * leaves it as it was; without otacd.slot= on the command line, or with a
 * slot variable name that fw_printenv would take for an option, too. */
static void otacd_device_refuses_a_corrupt_environment_at_start(void **state)
{
	struct dh_fleet *r = &R;
	struct udev u = { 0 };
	struct buf out = BUF_INIT;
	char *bin = h_bin("otacd-device"), *env0, *before, *after;
	size_t n1, n2;
	(void)state;
	rig_start(r, "u", 1);
	udev_setup(&u, r, 0, "true", 3, 0, NULL, NULL);
	env0 = xasprintf("%s/env0.bin", u.dir);
	assert_int_equal(h_sh(&out, "printf 'X' | dd of=%s bs=1 seek=60 conv=notrunc", env0), 0);
	before = read_all(env0, &n1);
	assert_int_equal(h_sh(&out, "%s -c %s run", bin, u.conf), 1);
	assert_non_null(strstr(buf_cstr(&out), "U-Boot environment"));
	assert_non_null(strstr(buf_cstr(&out), "refused"));
	after = read_all(env0, &n2);
	assert_true(n1 == n2 && !memcmp(before, after, n1));
	assert_int_equal(h_sh(&out, "echo 'console=ttyS0' > %s && %s -c %s run", u.cmdline, bin, u.conf), 1);
	assert_non_null(strstr(buf_cstr(&out), "no otacd.slot"));
	/* the variable's name is an argument of fw_printenv: no options */
	assert_int_equal(h_sh(&out, "echo 'otacd.slot=a' > %s && echo 'uboot_slot_var = -f' >> %s && %s -c %s check",
			      u.cmdline, u.conf, bin, u.conf), 1);
	assert_non_null(strstr(buf_cstr(&out), "uboot_slot_var"));
	assert_int_equal(dh_fleet_count(&r->d, r->release, "downloads"), 0);
	free(before);
	free(after);
	free(env0);
	free(bin);
	buf_release(&out);
	udev_free(&u);
	dh_fleet_stop(r);
}

/* Killed (or crashed and restarted by systemd) after the mark and before
 * the reboot: the next start finds the mark still pending and asks for the
 * reboot again, instead of calling it a failed boot and refusing the image.
 * Both backends; then the bootloader runs and the update lands. */
static void restart_without_a_reboot_keeps_the_pending_test_boot(void **state)
{
	struct dh_fleet *r = &R;
	struct buf out = BUF_INIT;
	char *bin = h_bin("otacd-device");
	(void)state;
	rig_start(r, "u", 2);
	for (int i = 0; i < 2; i++) {
		struct udev u = { 0 };
		json_t *s;
		memset(&u, 0, sizeof(u));
		u.mcuboot = i == 1;
		udev_setup(&u, r, i, "true", 3, 0, NULL, NULL);
		assert_int_equal(h_sh(&out, "timeout 60 %s -c %s run", bin, u.conf), 10);
		s = udev_status(&u);
		assert_string_equal(dh_js(s, "phase", NULL), "rebooting");
		json_decref(s);
		assert_int_equal(h_sh(&out, "timeout 60 %s -c %s run", bin, u.conf), 10);
		assert_non_null(strstr(buf_cstr(&out), "test boot still pending"));
		s = udev_status(&u);
		assert_string_equal(dh_js(s, "phase", NULL), "rebooting");
		assert_false(json_is_true(json_object_get(s, "refused_image")));
		json_decref(s);
		if (!u.mcuboot)
			assert_env(u.fw_conf, "otacd_slot", "b");
		udev_loop_until(r, &u, "confirmed", i + 1);
		udev_free(&u);
	}
	assert_int_equal(dh_fleet_count(&r->d, r->release, "installs"), 2);
	assert_int_equal(dh_fleet_count(&r->d, r->release, "reverted"), 0);
	dh_fleet_stop(r);
	free(bin);
	buf_release(&out);
}

/* SIGKILL otacd-device at random instants across update cycles on U-Boot
 * (redundant environment), each kill followed by the emulated U-Boot's
 * power-on: the booted slot always holds a valid image, and while a trial
 * is on (upgrade_available = 1) the slot altbootcmd would return to does
 * too.  $OTADEV_UBOOT_CYCLES cycles (default 8). */
static void sigkill_at_random_points_on_uboot_keeps_a_bootable_slot(void **state)
{
	struct dh_fleet *r = &R;
	struct udev u = { 0 };
	struct buf out = BUF_INIT;
	char *bin = h_bin("otacd-device"), *boot = dh_src_path("tests/uboot_boot.sh"), *statefile;
	int cycles = dh_env_count("OTADEV_UBOOT_CYCLES", 8), landed = 0, reverted = 0, kills = 0;
	unsigned seed = 4242;
	(void)state;
	rig_start(r, "u", 1);
	u.extra = "throttle_ms = 10\n";
	udev_setup(&u, r, 0, "true", 3, 1, NULL, NULL);
	statefile = xasprintf("%s/state", u.dir);
	for (int c = 0; c < cycles; c++) {
		int done = 0;
		/* the factory state: slot a, nothing on trial, no record */
		unlink(statefile);
		assert_int_equal(h_sh(&out, "fw_setenv -c %s otacd_slot a upgrade_available 0 bootcount 0"
					    " && echo 'otacd.slot=a' > %s && %s -c %s flash %s",
				      u.fw_conf, u.cmdline, bin, u.conf, r->factory), 0);
		for (int attempt = 0; !done; attempt++) {
			int delay = (int)(rand_r(&seed) % (unsigned)(200 + 25 * attempt));
			json_t *s;
			assert_true(attempt < 100);
			kills += dh_device_run_killed(bin, u.conf, u.log, delay);
			/* the power-on */
			if (h_sh(&out, "%s %s %s", boot, u.fw_conf, u.cmdline) != 0)
				fail_msg("emulated U-Boot: %s", buf_cstr(&out));
			s = udev_status(&u);
			assert_true(json_is_true(json_object_get(json_object_get(s, "primary"), "valid")));
			{
				char *ua = env_get(u.fw_conf, "upgrade_available");
				if (!strcmp(ua, "1"))
					assert_true(json_is_true(json_object_get(json_object_get(s, "secondary"), "valid")));
				free(ua);
			}
			if (!strcmp(dh_js(s, "phase", NULL), "idle") &&
			    json_integer_value(json_object_get(s, "queued")) == 0 &&
			    json_is_true(json_object_get(s, "record"))) {
				if (!strcmp(dh_js(s, "version", NULL), "1.1.0")) {
					assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
					landed++;
					done = 1;
				} else if (json_is_true(json_object_get(s, "refused_image"))) {
					assert_string_equal(dh_js(s, "primary", "version"), "1.0.0");
					reverted++;
					done = 1;
				}
			}
			json_decref(s);
		}
	}
	print_message("uboot torture: %d update cycles, %d SIGKILLs: %d landed, %d reverted by the bootcount\n",
		      cycles, kills, landed, reverted);
	assert_int_equal(landed + reverted, cycles);
	assert_true(landed > 0);
	assert_true(kills >= cycles);
	dh_fleet_stop(r);
	udev_free(&u);
	free(statefile);
	free(bin);
	free(boot);
	buf_release(&out);
}

/* ---- block devices: real loop devices ------------------------------------------ */

static char *loop_attach(const char *file, int sector)
{
	struct buf out = BUF_INIT;
	char *dev = NULL, opt[32] = "";
	if (sector)
		snprintf(opt, sizeof(opt), "--sector-size %d", sector);
	if (h_sh(&out, "truncate -s 65536 %s && losetup -f --show %s %s", file, opt, file) == 0 &&
	    !strncmp(buf_cstr(&out), "/dev/loop", 9)) {
		dev = xstrdup(buf_cstr(&out));
		dev[strcspn(dev, "\n")] = 0;
	}
	buf_release(&out);
	return dev;
}

static char *loops[3];

static int e2e_teardown(void **state);

static int loops_detach(void **state)
{
	struct buf out = BUF_INIT;
	(void)state;
	for (int i = 0; i < 3; i++) {
		if (loops[i])
			h_sh(&out, "losetup -d %s", loops[i]);
		free(loops[i]);
		loops[i] = NULL;
	}
	buf_release(&out);
	return 0;
}

static int loops_teardown(void **state)
{
	e2e_teardown(state);
	return loops_detach(state);
}

/* Slots a and b on two loop devices (block devices backed by files): the
 * whole U-Boot update cycle through otacd, the new image then read back
 * from the backing file of b.  A block device whose logical sectors are
 * larger than sector_size is refused. */
static void block_device_slots_on_loop_devices_take_an_update(void **state)
{
	struct dh_fleet *r = &R;
	struct buf out = BUF_INIT;
	char *dir = h_tmpdir(), *fc = xasprintf("%s/c.img", dir), *conf, *bin = h_bin("otacd-device");
	(void)state;
	/* U-Boot with O_DIRECT (the default), then MCUboot through the page cache */
	for (int v = 0; v < 2; v++) {
		char *fa = xasprintf("%s/a%d.img", dir, v), *fb = xasprintf("%s/b%d.img", dir, v);
		struct udev u = { 0 };
		json_t *s;
		if (!(loops[0] = loop_attach(fa, 0)) || !(loops[1] = loop_attach(fb, 0))) {
			fprintf(stderr, "# losetup does not work here (needs root and /dev/loop-control): skipped\n");
			skip();
		}
		if (!v)
			rig_start(r, "u", 2);
		u.mcuboot = v;
		u.extra = v ? "direct = 0\n" : "";
		udev_setup(&u, r, v, "true", 3, 0, loops[0], loops[1]);
		udev_loop_until(r, &u, "confirmed", v + 1);
		if (!v)
			assert_env(u.fw_conf, "otacd_slot", "b");
		s = udev_status(&u);
		assert_string_equal(dh_js(s, "primary", "version"), "1.1.0");
		json_decref(s);
		/* on the medium: the image otacd served is in b (U-Boot) or, after
		 * the swap, in a (MCUboot); the factory image in the other */
		assert_int_equal(h_sh(&out, "losetup -d %s && losetup -d %s && grep -c 'fw 1.1.0' %s"
					    " && grep -c 'factory firmware 1.0.0' %s",
				      loops[0], loops[1], v ? fa : fb, v ? fb : fa),
				 0);
		free(loops[0]);
		free(loops[1]);
		loops[0] = loops[1] = NULL;
		udev_free(&u);
		free(fa);
		free(fb);
	}
	/* 4096-byte logical sectors cannot be erased by 2048-byte sectors */
	if ((loops[2] = loop_attach(fc, 4096))) {
		conf = xasprintf("%s/c.conf", dir);
		char *text = xasprintf("url = http://127.0.0.1:1\ndevice = c\ncredential = x\nproduct = fw\nhardware = " HW
				       "\nprimary = %s\nsecondary = %s/other\nstate = %s/state\nkey = %s/key.pub\n"
				       "slot_size = 65536\nsector_size = 2048\n",
				       loops[2], dir, dir, r->d.dir);
		assert_int_equal(ota_write_file_atomic(conf, text, strlen(text), 0600), 0);
		assert_int_equal(h_sh(&out, "%s -c %s check", bin, conf), 1);
		assert_non_null(strstr(buf_cstr(&out), "multiple of 4096"));
		free(text);
		free(conf);
	}
	loops_detach(NULL);
	h_sh(&out, "rm -rf %s", dir);
	dh_fleet_stop(r);
	free(fc);
	free(dir);
	free(bin);
	buf_release(&out);
}

/* ---- MTD: what MEMGETINFO says decides; non-MTD character devices refused ------ */

static void mtd_slots_take_only_writable_nor_partitions_that_fit(void **state)
{
	struct mtd_info_user nor = { .type = MTD_NORFLASH, .flags = MTD_CAP_NORFLASH, .size = 1 << 20,
				     .erasesize = 4096, .writesize = 1 };
	struct mtd_info_user m;
	struct slot s;
	char err[256];
	(void)state;
	assert_int_equal(slot_mtd_check(&nor, 65536, 4096, err, sizeof(err)), 0);
	assert_int_equal(slot_mtd_check(&nor, 65536, 65536, err, sizeof(err)), 0);
	m = nor;
	m.type = MTD_RAM;      /* mtdram */
	assert_int_equal(slot_mtd_check(&m, 65536, 4096, err, sizeof(err)), 0);
	m = nor;
	m.type = MTD_NANDFLASH;
	m.writesize = 2048;
	assert_int_equal(slot_mtd_check(&m, 65536, 131072, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "NAND"));
	m = nor;
	m.flags = 0;
	assert_int_equal(slot_mtd_check(&m, 65536, 4096, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "read-only"));
	m = nor;
	m.size = 32768;
	assert_int_equal(slot_mtd_check(&m, 65536, 4096, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "smaller"));
	m = nor;
	m.erasesize = 65536;   /* a 64 KiB erase block cannot be erased by 4 KiB sectors */
	assert_int_equal(slot_mtd_check(&m, 131072, 4096, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "erase block"));
	/* a character device that does not answer MEMGETINFO */
	assert_int_equal(slot_open(&s, "/dev/zero", 65536, 4096, 1, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "not a regular file, a block device or an MTD partition"));
	/* a device that is not there is not created as a file in /dev */
	assert_int_equal(slot_open(&s, "/dev/otacd-test-no-such-slot", 65536, 4096, 1, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "No such file or directory"));
	assert_int_equal(access("/dev/otacd-test-no-such-slot", F_OK), -1);
}

/* ---- the systemd unit and the config example ------------------------------------- */

/* dir/device.conf: the config example with its paths moved into dir. */
static void example_conf(const char *dir, const char *example)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "cd %s && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem"
				    " && openssl pkey -in k.pem -pubout -out release.pub"
				    " && printf 'otacd_slot=a\\nupgrade_available=0\\nbootcount=0\\nbootlimit=3\\n' > env.txt"
				    " && mkenvimage -s 0x4000 -o env.bin env.txt && echo \"$PWD/env.bin 0 0x4000\" > fw_env.config"
				    " && echo 'otacd.slot=a' > cmdline"
				    " && sed -e 's#/etc/otacd/release.pub#%s/release.pub#' -e 's#/dev/mmcblk0p\\([23]\\)#%s/slot\\1#'"
				    " -e 's#/etc/fw_env.config#%s/fw_env.config#' -e 's#/proc/cmdline#%s/cmdline#'"
				    " -e 's#^slot_size = .*#slot_size = 65536#' -e 's#/var/lib/otacd-device#%s#'"
				    " -e '/^cacert\\|^client_/d' %s > device.conf",
			      dir, dir, dir, dir, dir, dir, example), 0);
	buf_release(&out);
}

/* `check` of dir/device.conf with line appended (as dir/extra.conf): its
 * exit status, its output in out. */
static int check_with_line(const char *bin, const char *dir, const char *line, struct buf *out)
{
	assert_int_equal(h_sh(out, "cd %s && cp device.conf extra.conf && echo '%s' >> extra.conf", dir, line), 0);
	return h_sh(out, "%s -c %s/extra.conf check 2>&1", bin, dir);
}

/* Each of lines, appended alone, makes `check` fail saying why. */
static void assert_lines_refused(const char *bin, const char *dir, const char *const *lines, size_t n, const char *why)
{
	struct buf out = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		if (check_with_line(bin, dir, lines[i], &out) == 0)
			fail_msg("'%s' accepted", lines[i]);
		if (!strstr(buf_cstr(&out), why))
			fail_msg("'%s': %s (want '%s')", lines[i], buf_cstr(&out), why);
	}
	buf_release(&out);
}

/* A boolean the device cannot read is an error, not a quiet "off". */
static void config_refuses_a_boolean_it_cannot_read(void **state)
{
	struct buf out = BUF_INIT;
	char *dir = h_tmpdir(), *example = dh_src_path("device/contrib/device.conf.example"), *bin = h_bin("otacd-device");
	static const char *const bad[] = { "direct = yes", "sync = on", "avoid_metered = 2" };
	(void)state;
	example_conf(dir, example);
	if (h_sh(&out, "%s -c %s/device.conf check", bin, dir) != 0)
		fail_msg("the config example: %s", buf_cstr(&out));
	assert_lines_refused(bin, dir, bad, sizeof(bad) / sizeof(bad[0]), ": 0, 1, false or true");
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
	free(example);
	free(bin);
}

/* A number the device cannot read whole is an error: strtoul read "-1" as
 * 4294967295, "5s" as 5, "99999999999" as ULONG_MAX cut to 32 bits. */
static void config_refuses_a_number_it_cannot_read(void **state)
{
	struct buf out = BUF_INIT;
	char *dir = h_tmpdir(), *example = dh_src_path("device/contrib/device.conf.example"), *bin = h_bin("otacd-device");
	static const char *const bad[] = { "poll_ms = -1",         "poll_ms = 5s",          "slot_size = 99999999999",
					   "sector_size = ",       "heartbeat_ms = +10",    "backoff_max_ms = 0x",
					   "throttle_ms = 1e3",    "uboot_bootlimit = 0x1FFFFFFFF" };
	static const char *const pct[] = { "min_battery = 101", "min_battery = -5", "min_battery = x" };
	static const char *const good[] = { "poll_ms = 4294967295", "slot_size = 0x10000", "min_battery = 100" };
	(void)state;
	example_conf(dir, example);
	assert_lines_refused(bin, dir, bad, sizeof(bad) / sizeof(bad[0]), "want a whole number 0 to 4294967295");
	assert_lines_refused(bin, dir, pct, sizeof(pct) / sizeof(pct[0]), "min_battery: want a percentage 0 to 100");
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		if (check_with_line(bin, dir, good[i], &out) != 0)
			fail_msg("'%s' refused: %s", good[i], buf_cstr(&out));
	}
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
	free(example);
	free(bin);
}

/* mqtt_url: an IPv6 literal in brackets is a host (atoi and strrchr(':')
 * made "[::1]:1883" host "[::1]"); a port is digits 1 to 65535, whole. */
static void config_mqtt_url_takes_ipv6_literals_and_refuses_bad_ports(void **state)
{
	static const struct {
		const char *url, *host;
		int port, tls;
	} good[] = {
		{ "mqtt://[::1]:1884", "::1", 1884, 0 },      { "mqtts://[fe80::1]", "fe80::1", 8883, 1 },
		{ "mqtt://127.0.0.1", "127.0.0.1", 1883, 0 }, { "mqtts://broker.example:65535", "broker.example", 65535, 1 },
	};
	static const char *const bad[] = { "mqtt://h:0",        "mqtt://h:65536",   "mqtt://h:1883x", "mqtt://h:-1",
					   "mqtt://h:",         "mqtt://h: 1883",   "mqtt://::1:1883", "mqtt://[::1",
					   "mqtt://[::1]x",     "mqtt://[::1]:0",   "mqtt://[h/x]:1",  "mqtt://u:p@h:1883",
					   "mqtt://h:1883/p",   "mqtt://",          "http://h:1883",   "mqtt://h:000001883" };
	struct buf out = BUF_INIT;
	char host[64], *dir = h_tmpdir(), *example = dh_src_path("device/contrib/device.conf.example");
	char *bin = h_bin("otacd-device");
	int port, tls;
	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		assert_int_equal(devpush_parse_url(good[i].url, host, sizeof(host), &port, &tls), 0);
		assert_string_equal(host, good[i].host);
		assert_int_equal(port, good[i].port);
		assert_int_equal(tls, good[i].tls);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (devpush_parse_url(bad[i], host, sizeof(host), &port, &tls) == 0)
			fail_msg("'%s' accepted as host '%s' port %d", bad[i], host, port);
	/* and refused by the config check, saying what it wants */
	example_conf(dir, example);
	assert_true(check_with_line(bin, dir, "mqtt_url = mqtt://h:65536", &out) != 0);
	assert_non_null(strstr(buf_cstr(&out), "a port 1 to 65535"));
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
	free(example);
	free(bin);
}

static void systemd_unit_verifies_and_the_config_example_parses(void **state)
{
	struct buf out = BUF_INIT;
	char *dir = h_tmpdir(), *unit = dh_src_path("device/contrib/otacd-device.service");
	char *example = dh_src_path("device/contrib/device.conf.example"), *bin = h_bin("otacd-device");
	double exposure = 99;
	const char *p;
	(void)state;
	if (h_sh(&out, "command -v systemd-analyze") != 0) {
		fprintf(stderr, "# systemd-analyze missing (Debian: systemd): skipped\n");
		skip();
	}
	/* the unit as installed, with ExecStart pointing at the built binary */
	assert_int_equal(h_sh(&out, "sed 's#/usr/bin/otacd-device#%s#' %s > %s/otacd-device.service", bin, unit, dir), 0);
	if (h_sh(&out, "systemd-analyze verify %s/otacd-device.service", dir) != 0 || out.len)
		fail_msg("systemd-analyze verify: %s", buf_cstr(&out));
	assert_int_equal(h_sh(&out, "systemd-analyze security --offline=true %s/otacd-device.service", dir), 0);
	p = strstr(buf_cstr(&out), "Overall exposure level");
	assert_non_null(p);
	p = strchr(p, ':');
	assert_non_null(p);
	exposure = strtod(p + 1, NULL);
	fprintf(stderr, "# systemd-analyze security: exposure %.1f\n", exposure);
	assert_true(exposure <= 3.0);   /* "OK" is below 5; the unit is sandboxed well below */
	/* the config example: every key known */
	example_conf(dir, example);
	if (h_sh(&out, "%s -c %s/device.conf check", bin, dir) != 0)
		fail_msg("the config example: %s", buf_cstr(&out));
	h_sh(&out, "rm -rf %s", dir);
	buf_release(&out);
	free(dir);
	free(unit);
	free(example);
	free(bin);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(uboot_marks_move_the_slot_variable_and_the_bootcount),
		cmocka_unit_test(uboot_reads_survive_a_storm_of_signals),
		cmocka_unit_test(uboot_corrupt_or_foreign_environment_is_refused_and_never_written),
		cmocka_unit_test(mtd_slots_take_only_writable_nor_partitions_that_fit),
		cmocka_unit_test(systemd_unit_verifies_and_the_config_example_parses),
		cmocka_unit_test(config_refuses_a_boolean_it_cannot_read),
		cmocka_unit_test(config_refuses_a_number_it_cannot_read),
		cmocka_unit_test(config_mqtt_url_takes_ipv6_literals_and_refuses_bad_ports),
		cmocka_unit_test_teardown(otacd_device_refuses_a_corrupt_environment_at_start, e2e_teardown),
		cmocka_unit_test_teardown(uboot_update_cycle_through_otacd_confirms_and_clears_the_bootcount,
					  e2e_teardown),
		cmocka_unit_test_teardown(uboot_boot_loop_is_reverted_by_the_bootcount_and_reported, e2e_teardown),
		cmocka_unit_test_teardown(restart_without_a_reboot_keeps_the_pending_test_boot, e2e_teardown),
		cmocka_unit_test_teardown(sigkill_at_random_points_on_uboot_keeps_a_bootable_slot, e2e_teardown),
		cmocka_unit_test_teardown(block_device_slots_on_loop_devices_take_an_update, loops_teardown),
	};
	cmocka_set_test_filter(getenv("DEVLINUX_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
