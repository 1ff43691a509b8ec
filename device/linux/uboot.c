/*
 * uboot.c - the U-Boot environment backend of otacd-device (uboot.h).
 *
 * Every read runs `fw_printenv -c CONF SLOT upgrade_available bootcount
 * bootlimit` and takes its answer only when the tool exits 0, says nothing
 * on stderr and prints exactly those four lines with values this backend
 * writes (a/b, 0/1, decimal numbers; empty for a variable not set).  Every
 * write is one `fw_setenv -c CONF name value ...` (one CRC-protected
 * environment write; with a redundant environment the older copy survives
 * a cut), preceded by a read (nothing is written over an environment that
 * cannot be read: fw_setenv would start from its default) and followed by
 * a read that must return what was written.  The tools run without a
 * shell (posix_spawnp), their output capped.
 */
#include "uboot.h"

#include "../otadev.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUT_MAX 4096

extern char **environ;

/* Run argv; stdout into out (NUL-terminated), stderr into errbuf.  The
 * exit status, or -1 when the tool could not run, said too much, or its
 * output could not be waited for (poll failed: the tool is killed, errbuf
 * says why).  Signals (EINTR) only resume the wait. */
static int run(char *const argv[], char *out, size_t cap, char *errbuf, size_t ecap)
{
	posix_spawn_file_actions_t fa;
	int po[2] = { -1, -1 }, pe[2] = { -1, -1 }, st = 0, rc = -1, over = 0;
	size_t n[2] = { 0, 0 };
	pid_t pid = -1;

	out[0] = errbuf[0] = 0;
	if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
		goto out;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, po[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
	if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0)
		pid = -1;
	posix_spawn_file_actions_destroy(&fa);
	close(po[1]);
	close(pe[1]);
	po[1] = pe[1] = -1;
	if (pid < 0)
		goto out;
	for (;;) {
		struct pollfd pf[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
		char *b[2] = { out, errbuf };
		size_t c[2] = { cap, ecap };
		int open_fds = 0, i;
		for (i = 0; i < 2; i++)
			open_fds += pf[i].fd >= 0;
		if (!open_fds)
			break;
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			/* stop reading and stop the child too: left alone, it
			 * could block on a full pipe and waitpid with it */
			snprintf(errbuf, ecap, "%s: poll: %s", argv[0], strerror(errno));
			kill(pid, SIGKILL);
			over = 1;
			break;
		}
		for (i = 0; i < 2; i++) {
			char junk[512];
			int *fd = i ? &pe[0] : &po[0];
			ssize_t r;
			if (pf[i].fd < 0 || !pf[i].revents)
				continue;
			if (n[i] + 1 < c[i]) {
				if ((r = read(*fd, b[i] + n[i], c[i] - 1 - n[i])) > 0) {
					n[i] += (size_t)r;
					b[i][n[i]] = 0;
				}
			} else if ((r = read(*fd, junk, sizeof(junk))) > 0) {
				over = 1;    /* more than the cap: drained, refused */
			}
			if (r <= 0 && !(r < 0 && errno == EINTR)) {
				close(*fd);
				*fd = -1;
			}
		}
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	rc = over ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
out:
	for (int i = 0; i < 2; i++) {
		if (po[i] >= 0)
			close(po[i]);
		if (pe[i] >= 0)
			close(pe[i]);
	}
	return rc;
}

/* otacd.slot=a|b as a word of a kernel command line: 0, 1, or -1. */
static int cmdline_slot(const char *line)
{
	const char *p;
	for (p = line; (p = strstr(p, "otacd.slot=")); p++) {
		if (p != line && p[-1] != ' ')
			continue;
		if ((p[11] == 'a' || p[11] == 'b') && (!p[12] || strchr(" \n", p[12])))
			return p[11] - 'a';
	}
	return -1;
}

int uboot_booted(const struct uboot *u, char *err, size_t cap)
{
	char line[4096];
	FILE *f = fopen(u->cmdline, "r");
	size_t n;
	int slot;
	if (!f) {
		snprintf(err, cap, "%s: %s", u->cmdline, strerror(errno));
		return -1;
	}
	n = fread(line, 1, sizeof(line) - 1, f);
	fclose(f);
	line[n] = 0;
	if ((slot = cmdline_slot(line)) < 0)
		snprintf(err, cap, "%s: no otacd.slot=a|b (the boot script passes it in bootargs)", u->cmdline);
	return slot;
}

static int number(const char *v, uint32_t *out)
{
	char *e;
	unsigned long x;
	if (!*v) {
		*out = 0;
		return 0;
	}
	if (strlen(v) > 9 || strspn(v, "0123456789") != strlen(v))
		return -1;
	x = strtoul(v, &e, 10);
	*out = (uint32_t)x;
	return 0;
}

/* fw_printenv's answer for the four names (buf, modified): exactly four
 * lines "name=value" in order, the values in range. */
static int env_parse(const struct uboot *u, char *buf, struct uboot_env *out, char *err, size_t cap)
{
	const char *names[4] = { u->slot_var, "upgrade_available", "bootcount", "bootlimit" };
	char *line, *save = NULL;
	uint32_t ua = 0;
	int i = 0;

	memset(out, 0, sizeof(*out));
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save), i++) {
		const char *name = i < 4 ? names[i] : "";
		size_t nl = strlen(name);
		const char *v = line + nl + 1;
		int ok = i < 4 && !strncmp(line, name, nl) && line[nl] == '=';
		if (ok && i == 0) {
			ok = !*v || ((*v == 'a' || *v == 'b') && !v[1]);
			out->slot = *v == 'b';
		} else if (ok && i == 1) {
			ok = number(v, &ua) == 0 && ua <= 1;
			out->upgrade_available = (int)ua;
		} else if (ok) {
			ok = number(v, i == 2 ? &out->bootcount : &out->bootlimit) == 0;
		}
		if (!ok) {
			snprintf(err, cap, "U-Boot environment (%s) refused: unexpected \"%.64s\"", u->fw_config, line);
			return -1;
		}
	}
	if (i != 4) {
		snprintf(err, cap, "U-Boot environment (%s) refused: fw_printenv printed %d variables", u->fw_config, i);
		return -1;
	}
	return 0;
}

int uboot_env_read(const struct uboot *u, struct uboot_env *out, char *err, size_t cap)
{
	char *argv[] = { "fw_printenv", "-c", (char *)u->fw_config, (char *)u->slot_var, "upgrade_available",
			 "bootcount", "bootlimit", NULL };
	char buf[OUT_MAX], ebuf[512];
	int rc;

	memset(out, 0, sizeof(*out));
	rc = run(argv, buf, sizeof(buf), ebuf, sizeof(ebuf));
	if (rc != 0 || ebuf[0]) {
		ebuf[strcspn(ebuf, "\n")] = 0;
		snprintf(err, cap, "U-Boot environment (%s) refused: fw_printenv %s%d%s%s", u->fw_config,
			 rc < 0 ? "failed " : "exit ", rc, ebuf[0] ? ": " : "", ebuf);
		return -1;
	}
	return env_parse(u, buf, out, err, cap);
}

int uboot_env_write(const struct uboot *u, const struct uboot_env *env, char *err, size_t cap)
{
	char ua[4], bc[16], bl[16], buf[OUT_MAX], ebuf[512];
	char *argv[] = { "fw_setenv", "-c", (char *)u->fw_config, (char *)u->slot_var, env->slot ? "b" : "a",
			 "upgrade_available", ua, "bootcount", bc, "bootlimit", bl, NULL };
	struct uboot_env now;
	int rc;

	snprintf(ua, sizeof(ua), "%d", env->upgrade_available ? 1 : 0);
	snprintf(bc, sizeof(bc), "%u", env->bootcount);
	snprintf(bl, sizeof(bl), "%u", env->bootlimit);
	rc = run(argv, buf, sizeof(buf), ebuf, sizeof(ebuf));
	if (rc != 0) {
		ebuf[strcspn(ebuf, "\n")] = 0;
		snprintf(err, cap, "fw_setenv (%s): exit %d: %s", u->fw_config, rc, ebuf);
		return -1;
	}
	if (uboot_env_read(u, &now, err, cap) < 0)
		return -1;
	if (now.slot != env->slot || now.upgrade_available != (env->upgrade_available ? 1 : 0) ||
	    now.bootcount != env->bootcount || now.bootlimit != env->bootlimit) {
		snprintf(err, cap, "fw_setenv (%s): the environment does not read back as written", u->fw_config);
		return -1;
	}
	return 0;
}

int uboot_mark(const struct uboot *u, int booted, int mark, char *err, size_t cap)
{
	struct uboot_env e;
	/* also uboot_env_write's precondition: fw_setenv over an unreadable
	 * environment would write its default */
	if (uboot_env_read(u, &e, err, cap) < 0)
		return -1;
	switch (mark) {
	case OTADEV_MARK_TEST:       /* boot the other slot, on trial for bootlimit boots */
		e.slot = !booted;
		e.upgrade_available = 1;
		e.bootcount = 0;
		e.bootlimit = u->bootlimit;
		break;
	case OTADEV_MARK_CONFIRM:    /* the running slot stays: U-Boot stops counting */
		if (e.slot != booted) {
			snprintf(err, cap, "confirm: %s names slot %c, the system runs %c", u->slot_var,
				 'a' + e.slot, 'a' + booted);
			return -1;
		}
		if (!e.upgrade_available && !e.bootcount)
			return 0;
		e.upgrade_available = 0;
		e.bootcount = 0;
		break;
	case OTADEV_MARK_CANCEL:     /* nothing points at the slot about to be written */
		if (e.slot == booted && !e.upgrade_available)
			return 0;
		e.slot = booted;
		e.upgrade_available = 0;
		e.bootcount = 0;
		break;
	default:
		snprintf(err, cap, "unknown boot mark %d", mark);
		return -1;
	}
	return uboot_env_write(u, &e, err, cap);
}

int uboot_testing(const struct uboot *u, int booted, char *err, size_t cap)
{
	struct uboot_env e;
	if (uboot_env_read(u, &e, err, cap) < 0)
		return -1;
	if (!e.upgrade_available)
		return 0;
	return e.slot == booted ? 1 : 2;
}
