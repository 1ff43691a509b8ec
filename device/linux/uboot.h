/*
 * uboot.h - otacd-device's U-Boot swap/confirm backend: A/B slots chosen by
 * an environment variable, a test boot guarded by U-Boot's bootcount
 * (CONFIG_BOOTCOUNT_LIMIT + CONFIG_BOOTCOUNT_ENV), all through the real
 * fw_printenv / fw_setenv of libubootenv with an fw_env.config.  The
 * semantics and the boot script are in docs/device.md ("U-Boot").
 *
 *   test     fw_setenv SLOT <other> upgrade_available 1 bootcount 0
 *            bootlimit N (one environment write)
 *   confirm  fw_setenv upgrade_available 0 bootcount 0
 *   cancel   the variable back on the booted slot, no upgrade pending
 *   on trial upgrade_available = 1 and SLOT names the booted slot
 *   pending  upgrade_available = 1 and SLOT names the other slot (marked,
 *            not rebooted yet)
 *
 * The booted slot is what the kernel was told (otacd.slot=a|b on its
 * command line), never the variable: between the test mark and the reboot
 * the variable already names the other slot.  An environment fw_printenv
 * cannot read (bad CRC: libubootenv then falls back to a default), prints
 * a warning for, or that holds values this backend did not write is
 * refused, and nothing is written over it.
 */
#ifndef OTADEV_LINUX_UBOOT_H
#define OTADEV_LINUX_UBOOT_H

#include <stddef.h>
#include <stdint.h>

struct uboot {
	const char *fw_config;       /* fw_env.config (-c) */
	const char *slot_var;        /* the active-slot variable: "a" or "b" */
	const char *cmdline;         /* the kernel command line: /proc/cmdline */
	uint32_t bootlimit;          /* boots on trial before altbootcmd reverts */
};

struct uboot_env {
	int slot;                    /* 0: a, 1: b (what U-Boot boots next) */
	int upgrade_available;
	uint32_t bootcount, bootlimit;
};

/* The slot the running system was booted from: 0 (a) or 1 (b); -1 with why. */
int uboot_booted(const struct uboot *u, char *err, size_t cap);
/* Read the four variables through fw_printenv; -1 with why (unreadable,
 * bad CRC, a warning, a value out of range). */
int uboot_env_read(const struct uboot *u, struct uboot_env *out, char *err, size_t cap);
/* Write them in one fw_setenv, then read them back; -1 with why.  Only
 * over an environment just read (uboot_env_read): fw_setenv over an
 * unreadable one would start from its default. */
int uboot_env_write(const struct uboot *u, const struct uboot_env *env, char *err, size_t cap);
/* libotadev's boot_mark and boot_testing for the booted slot. */
int uboot_mark(const struct uboot *u, int booted, int mark, char *err, size_t cap);
int uboot_testing(const struct uboot *u, int booted, char *err, size_t cap);

#endif
