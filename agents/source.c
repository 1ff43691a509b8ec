/*
 * source.c - extracting a job's source archive (see source.h).
 *
 * Why: a job of a run started from git needs the commit's files in its
 * workspace before its first step.  The daemon builds the archive and the
 * agent never talks to the git server, so agents need no repository
 * credentials; the price is that the agent must unpack an archive it
 * received over the network without letting it write anywhere else.
 *
 * How: libarchive reads the tar (only the tar formats are enabled, no
 * compression filters) and archive_write_disk writes each entry, with the
 * entry's name prefixed by the workspace path.  libarchive's own guards
 * are on: ARCHIVE_EXTRACT_SECURE_SYMLINKS (never write through a symbolic
 * link, so "link -> /tmp" followed by "link/evil" fails) and
 * ARCHIVE_EXTRACT_SECURE_NODOTDOT.  ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS
 * cannot be used as is: it looks at the name after we prefixed it, which is
 * always absolute, so it would refuse every entry; entry_check() applies the
 * same rule to the name as it stands in the archive, before the prefix, and
 * also refuses ".." there.  Modes are normalised and hard links refused
 * (their target would be a second path to check and git trees have none).
 */
#include "source.h"

#include "../common/util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>

#define EXTRACT_FLAGS (ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_SYMLINKS | \
		       ARCHIVE_EXTRACT_SECURE_NODOTDOT)
#define READ_BLOCK 65536

/* May the entry be written, and what mode should it get? */
static int entry_check(struct archive_entry *e, const char *name, mode_t *mode)
{
	mode_t type = archive_entry_filetype(e), perm = archive_entry_perm(e);
	const char *p = name;

	if (!*name)
		return ota_error_set(OTA_EINVAL, "an entry has an empty name");
	if (*name == '/')
		return ota_error_set(OTA_EINVAL, "%s: absolute path", name);
	while (*p) {
		size_t n = strcspn(p, "/");
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return ota_error_set(OTA_EINVAL, "%s: path contains '..'", name);
		p += n;
		while (*p == '/')
			p++;
	}
	if (archive_entry_hardlink(e))
		return ota_error_set(OTA_EINVAL, "%s: hard links are not supported", name);
	if (type == AE_IFDIR)
		*mode = 0755;
	else if (type == AE_IFREG)
		*mode = perm & 0111 ? 0755 : 0644;
	else if (type == AE_IFLNK)
		*mode = 0777;
	else
		return ota_error_set(OTA_EINVAL, "%s: not a file, directory or symbolic link", name);
	return 0;
}

/* Copy the current entry's data from in to disk. */
static int entry_copy_data(struct archive *in, struct archive *disk, const char *name)
{
	for (;;) {
		const void *block;
		size_t size;
		la_int64_t offset;
		int r = archive_read_data_block(in, &block, &size, &offset);
		if (r == ARCHIVE_EOF)
			return 0;
		if (r < ARCHIVE_WARN)
			return ota_error_set(OTA_EINVAL, "%s: %s", name, archive_error_string(in));
		if (archive_write_data_block(disk, block, size, offset) < ARCHIVE_WARN)
			return ota_error_set(OTA_ERROR, "%s: %s", name, archive_error_string(disk));
	}
}

int source_extract(size_t *out, int fd, const char *dest)
{
	struct archive *in = archive_read_new(), *disk = archive_write_disk_new();
	struct buf path = BUF_INIT;
	size_t n = 0;
	int rc = 0;

	if (out)
		*out = 0;
	if (!in || !disk) {
		rc = ota_error_set(OTA_ENOMEM, "cannot allocate an archive reader");
		goto out;
	}
	archive_read_support_format_tar(in);
	archive_write_disk_set_options(disk, EXTRACT_FLAGS);
	if (archive_read_open_fd(in, fd, READ_BLOCK) != ARCHIVE_OK) {
		rc = ota_error_set(OTA_EINVAL, "not a tar archive: %s", archive_error_string(in));
		goto out;
	}
	for (;;) {
		struct archive_entry *e;
		const char *name;
		mode_t mode = 0;
		char *shown;
		int r = archive_read_next_header(in, &e);

		if (r == ARCHIVE_EOF)
			break;
		if (r < ARCHIVE_WARN) {
			rc = ota_error_set(OTA_EINVAL, "malformed archive after %zu entries: %s", n,
					   archive_error_string(in));
			goto out;
		}
		name = archive_entry_pathname(e);
		if (!name) {
			rc = ota_error_set(OTA_EINVAL, "entry %zu has a name that cannot be decoded", n + 1);
			goto out;
		}
		if ((rc = entry_check(e, name, &mode)) < 0)
			goto out;
		shown = xstrdup(name);
		buf_clear(&path);
		buf_printf(&path, "%s/%s", dest, name);
		archive_entry_set_pathname(e, buf_cstr(&path));
		archive_entry_set_perm(e, mode);
		r = archive_write_header(disk, e);
		if (r < ARCHIVE_WARN)
			rc = ota_error_set(archive_errno(disk) > 0 ? OTA_ERROR : OTA_EINVAL,
					   "%s: %s", shown, archive_error_string(disk));
		else if (archive_entry_filetype(e) == AE_IFREG && archive_entry_size(e) > 0)
			rc = entry_copy_data(in, disk, shown);
		if (!rc && archive_write_finish_entry(disk) < ARCHIVE_WARN)
			rc = ota_error_set(OTA_ERROR, "%s: %s", shown, archive_error_string(disk));
		free(shown);
		if (rc < 0)
			goto out;
		n++;
	}
	/* Directory modes and times are applied here, after their contents. */
	if (archive_write_close(disk) < ARCHIVE_WARN) {
		rc = ota_error_set(OTA_ERROR, "%s", archive_error_string(disk));
		goto out;
	}
	if (out)
		*out = n;
out:
	archive_read_free(in);
	archive_write_free(disk);
	buf_release(&path);
	return rc;
}
