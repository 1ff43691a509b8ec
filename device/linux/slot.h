/*
 * slot.h - otacd-device's slots: a regular file, a block device or an MTD
 * partition, behind one read / write / erase-by-sector API (the flash
 * hooks of libotadev, docs/device.md "Slots").
 *
 * What the core needs from a slot: erased bytes read 0xff (MCUboot's
 * erased value: an unwritten trailer is "unset"), a write after an erase
 * lands as written, and with SLOT_SYNC a write or erase is on the medium
 * when the call returns (the core persists its progress right after).
 *
 *   file   created (never under /dev/) and extended with 0xff; pwrite,
 *          fdatasync
 *   block  BLKGETSIZE64 >= slot size, sector size a multiple of BLKSSZGET;
 *          with SLOT_DIRECT opened O_DIRECT (reads come from the medium,
 *          not the page cache: verification reads what was written),
 *          unaligned writes as read-modify-write of whole logical sectors;
 *          fdatasync flushes the device's write cache; erase writes 0xff
 *   mtd    /dev/mtdN (MEMGETINFO): NOR or RAM (writesize 1), erasesize
 *          dividing the sector size; erase is MEMERASE, writes pwrite (the
 *          MTD driver programs before it returns; mtdchar has no fsync)
 */
#ifndef OTADEV_LINUX_SLOT_H
#define OTADEV_LINUX_SLOT_H

#include <stddef.h>
#include <stdint.h>

enum slot_kind { SLOT_FILE = 1, SLOT_BLOCK, SLOT_MTD };

#define SLOT_SYNC 1u     /* fdatasync after each write and erase */
#define SLOT_DIRECT 2u   /* block devices: O_DIRECT */

struct slot {
	int fd;
	enum slot_kind kind;
	unsigned flags;
	uint32_t size, sector_size;
	uint32_t erase_size;         /* MTD erase block; the device's logical sector for block */
	unsigned char *bounce;       /* O_DIRECT: aligned buffer of BOUNCE bytes */
};

struct mtd_info_user;

/* Open path as a slot of size bytes erased by sector_size; -1 with why in
 * err (cap bytes). */
int slot_open(struct slot *out, const char *path, uint32_t size, uint32_t sector_size, unsigned flags, char *err,
	      size_t cap);
void slot_close(struct slot *s);
int slot_read(struct slot *s, uint32_t off, void *buf, uint32_t len);
int slot_write(struct slot *s, uint32_t off, const void *buf, uint32_t len);
/* off sector aligned; len clipped to the slot, rounded up to sectors. */
int slot_erase(struct slot *s, uint32_t off, uint32_t len);
const char *slot_kind_name(enum slot_kind k);

/* Whether an MTD partition as MEMGETINFO describes it can hold a slot:
 * 0, or -1 with why (NAND, read-only, too small, erase block). */
int slot_mtd_check(const struct mtd_info_user *mi, uint32_t size, uint32_t sector_size, char *err, size_t cap);

#endif
