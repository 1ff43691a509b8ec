/*
 * slot.c - otacd-device's slots on a regular file, a block device or an
 * MTD partition (slot.h says what each kind guarantees).
 *
 * The kind is what the path is: a regular file (created if missing), a
 * block device (eMMC / SD partitions, loop devices in the tests), or a
 * character device that answers MEMGETINFO (/dev/mtdN).  Anything else is
 * refused.  A block device opened O_DIRECT (SLOT_DIRECT) takes only
 * whole logical sectors from aligned memory: the core writes single
 * trailer bytes and 2 KiB chunks, so every access goes through one aligned
 * bounce buffer, reading the sectors a write only partly covers first.
 */
#include "slot.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <mtd/mtd-user.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define BOUNCE 65536u   /* a multiple of every logical sector size (512, 4096) */

const char *slot_kind_name(enum slot_kind k)
{
	return k == SLOT_FILE ? "file" : k == SLOT_BLOCK ? "block" : k == SLOT_MTD ? "mtd" : "?";
}

int slot_mtd_check(const struct mtd_info_user *mi, uint32_t size, uint32_t sector_size, char *err, size_t cap)
{
	if (mi->type != MTD_NORFLASH && mi->type != MTD_RAM) {
		/* NAND programs whole pages once per erase and needs bad-block
		 * handling (UBI); the trailer's single-byte writes cannot work */
		snprintf(err, cap, "MTD type %u: only NOR or RAM (NAND needs UBI)", mi->type);
		return -1;
	}
	if (!(mi->flags & MTD_WRITEABLE)) {
		snprintf(err, cap, "MTD partition is read-only");
		return -1;
	}
	if (mi->writesize != 1) {
		snprintf(err, cap, "MTD write size %u: the trailer needs byte writes", mi->writesize);
		return -1;
	}
	if (mi->size < size) {
		snprintf(err, cap, "MTD partition of %u bytes is smaller than slot_size %u", mi->size, size);
		return -1;
	}
	if (!mi->erasesize || sector_size % mi->erasesize) {
		snprintf(err, cap, "sector_size %u is not a multiple of the MTD erase block %u", sector_size,
			 mi->erasesize);
		return -1;
	}
	return 0;
}

static int fill_ff(int fd, uint64_t from, uint64_t to)
{
	unsigned char ff[16384];
	memset(ff, 0xff, sizeof(ff));
	while (from < to) {
		size_t n = to - from < sizeof(ff) ? (size_t)(to - from) : sizeof(ff);
		if (pwrite(fd, ff, n, (off_t)from) != (ssize_t)n)
			return -1;
		from += n;
	}
	return 0;
}

int slot_open(struct slot *out, const char *path, uint32_t size, uint32_t sector_size, unsigned flags, char *err,
	      size_t cap)
{
	struct mtd_info_user mi;
	struct stat st;
	uint64_t bytes = 0;
	int lbs = 0;

	memset(out, 0, sizeof(*out));
	out->size = size;
	out->sector_size = sector_size;
	out->flags = flags;
	out->fd = open(path, O_RDWR | O_CLOEXEC);
	/* a missing slot file is created; a missing device (a typo, a card
	 * not probed yet) must not become a file in /dev */
	if (out->fd < 0 && errno == ENOENT && strncmp(path, "/dev/", 5))
		out->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (out->fd < 0 || fstat(out->fd, &st) < 0) {
		snprintf(err, cap, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (S_ISREG(st.st_mode)) {
		out->kind = SLOT_FILE;
		out->erase_size = sector_size;
		/* a new slot file is erased flash */
		if ((uint64_t)st.st_size < size && fill_ff(out->fd, (uint64_t)st.st_size, size) < 0) {
			snprintf(err, cap, "%s: %s", path, strerror(errno));
			goto fail;
		}
		return 0;
	}
	if (S_ISBLK(st.st_mode)) {
		out->kind = SLOT_BLOCK;
		if (ioctl(out->fd, BLKGETSIZE64, &bytes) < 0 || ioctl(out->fd, BLKSSZGET, &lbs) < 0 || lbs <= 0) {
			snprintf(err, cap, "%s: block device size: %s", path, strerror(errno));
			goto fail;
		}
		if (bytes < size || sector_size % (uint32_t)lbs) {
			snprintf(err, cap, "%s: block device of %llu bytes, %d-byte sectors: needs slot_size %u and "
				 "sector_size a multiple of %d", path, (unsigned long long)bytes, lbs, size, lbs);
			goto fail;
		}
		out->erase_size = (uint32_t)lbs;
		if (flags & SLOT_DIRECT) {
			int fd = open(path, O_RDWR | O_CLOEXEC | O_DIRECT);
			void *b = NULL;
			if (fd < 0 || BOUNCE % (uint32_t)lbs || posix_memalign(&b, BOUNCE, BOUNCE)) {
				snprintf(err, cap, "%s: O_DIRECT: %s (direct = 0 to go through the page cache)", path,
					 strerror(fd < 0 ? errno : EINVAL));
				if (fd >= 0)
					close(fd);
				goto fail;
			}
			close(out->fd);
			out->fd = fd;
			out->bounce = b;
		}
		return 0;
	}
	if (S_ISCHR(st.st_mode) && ioctl(out->fd, MEMGETINFO, &mi) == 0) {
		out->kind = SLOT_MTD;
		if (slot_mtd_check(&mi, size, sector_size, err, cap) < 0)
			goto fail;
		out->erase_size = mi.erasesize;
		return 0;
	}
	snprintf(err, cap, "%s: not a regular file, a block device or an MTD partition", path);
fail:
	slot_close(out);
	return -1;
}

void slot_close(struct slot *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	free(s->bounce);
	s->bounce = NULL;
}

/* O_DIRECT: [off, off+len) through the bounce buffer in whole logical
 * sectors; a write reads the sectors it covers only in part first.  from
 * is the data to write (NULL: 0xff), or to receives what was read. */
static int direct_io(struct slot *s, uint64_t off, uint64_t len, const unsigned char *from, unsigned char *to)
{
	uint64_t bs = s->erase_size, pos = off / bs * bs, end = (off + len + bs - 1) / bs * bs;
	while (pos < end) {
		uint64_t n = end - pos < BOUNCE ? end - pos : BOUNCE;
		uint64_t a = pos > off ? pos : off, b = pos + n < off + len ? pos + n : off + len;
		int whole = a == pos && b == pos + n;
		if ((to || !whole) && pread(s->fd, s->bounce, n, (off_t)pos) != (ssize_t)n)
			return -1;
		if (to) {
			memcpy(to + (a - off), s->bounce + (a - pos), b - a);
		} else {
			if (from)
				memcpy(s->bounce + (a - pos), from + (a - off), b - a);
			else
				memset(s->bounce + (a - pos), 0xff, b - a);
			if (pwrite(s->fd, s->bounce, n, (off_t)pos) != (ssize_t)n)
				return -1;
		}
		pos += n;
	}
	return 0;
}

int slot_read(struct slot *s, uint32_t off, void *buf, uint32_t len)
{
	if (off > s->size || len > s->size - off)
		return -1;
	if (s->bounce)
		return direct_io(s, off, len, NULL, buf);
	return pread(s->fd, buf, len, off) == (ssize_t)len ? 0 : -1;
}

static int settle(struct slot *s)
{
	/* MTD programs synchronously (and mtdchar has no fsync); O_DIRECT
	 * still leaves the data in the device's volatile cache */
	return (s->flags & SLOT_SYNC) && s->kind != SLOT_MTD && fdatasync(s->fd) < 0 ? -1 : 0;
}

int slot_write(struct slot *s, uint32_t off, const void *buf, uint32_t len)
{
	if (off > s->size || len > s->size - off)
		return -1;
	if (s->bounce ? direct_io(s, off, len, buf, NULL) < 0 : pwrite(s->fd, buf, len, off) != (ssize_t)len)
		return -1;
	return settle(s);
}

int slot_erase(struct slot *s, uint32_t off, uint32_t len)
{
	if (off % s->sector_size || off > s->size)
		return -1;
	if (len > s->size - off)
		len = s->size - off;
	len = (len + s->sector_size - 1) / s->sector_size * s->sector_size;
	if (len > s->size - off)
		return -1;   /* slot_size is a multiple of sector_size (otadev_init checks) */
	if (s->kind == SLOT_MTD) {
		struct erase_info_user e;
		e.start = off;
		e.length = len;
		return ioctl(s->fd, MEMERASE, &e) < 0 ? -1 : 0;
	}
	if (s->bounce ? direct_io(s, off, len, NULL, NULL) < 0 : fill_ff(s->fd, off, (uint64_t)off + len) < 0)
		return -1;
	return settle(s);
}
