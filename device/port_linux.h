/*
 * port_linux.h - libotadev's hooks on embedded Linux (otacd-device).
 *
 * Slots are files, block devices or MTD partitions (linux/slot.c), the
 * swap/confirm backend MCUboot's trailer or U-Boot's environment
 * (linux/uboot.c, boot = uboot), the persistent record is a
 * file replaced atomically (write, fsync, rename), HTTP(S) is libcurl with
 * Range, crypto is OpenSSL, the self-test is a shell command (exit 0:
 * healthy), power and network status come from an optional status file.
 * The configuration is a small `key = value` file (docs/device.md).
 */
#ifndef OTADEV_PORT_LINUX_H
#define OTADEV_PORT_LINUX_H

#include "otadev.h"

struct port_linux;

/* Read the config file and open the slots; the config for otadev_init in
 * *cfg (it points into the port).  NULL with a message on stderr. */
struct port_linux *port_linux_open(const char *conf_path, struct otadev_config **cfg);
void port_linux_close(struct port_linux *p);
/* The hooks for p's backend (boot = mcuboot | uboot). */
const struct otadev_hooks *port_linux_hooks(const struct port_linux *p);
/* boot = uboot: the slot the system was booted from (0 a, 1 b); -1 with MCUboot. */
int port_linux_booted(const struct port_linux *p);
/* Set by the reboot hook. */
int port_linux_reboot_requested(const struct port_linux *p);
/* The config's throttle_ms: a pause after every step (a slow link or CPU;
 * tests use it to spread kills over a whole update). */
uint32_t port_linux_throttle_ms(const struct port_linux *p);
/* Erase a whole slot (0xff) and write image at its start (factory flash). */
int port_linux_flash_image(struct port_linux *p, int slot, const char *image_path);
/* The simulated bootloader: MCUboot's swap decision from the trailers,
 * validation of the candidate, the swap of the slot files.  Prints the
 * decision (none|test|perm|revert|fail); 0 when the primary slot then
 * holds a valid image, <0 when nothing is bootable. */
int port_linux_boot(struct port_linux *p, const char **decision);

#endif
