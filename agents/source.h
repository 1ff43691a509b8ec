/*
 * source.h - unpacking a job's source archive into its workspace.
 *
 * For a run started from a git repository, the daemon serves the commit's
 * tree as a tar archive (docs/api.md, GET /api/v1/agent/jobs/ID/source).
 * The agent downloads it to a file (httpc_download) and hands the file to
 * source_extract(), which writes it under the workspace and nowhere else.
 *
 * The archive comes from the network, so it is treated as hostile: an entry
 * whose name is absolute or has a ".." component, or that would be written
 * through a symbolic link, fails the whole extraction; only directories,
 * regular files and symbolic links are accepted (no hard links, devices,
 * fifos); modes are normalised to 0755 for directories and executable
 * files, 0644 for other files, and owners are never restored.  Symbolic
 * links are written as they are, whatever they point to, as `git checkout`
 * would; nothing is ever written through one.
 */
#ifndef OTA_AGENT_SOURCE_H
#define OTA_AGENT_SOURCE_H

#include <stddef.h>

/*
 * Extract the tar archive (ustar or pax, uncompressed) readable from fd,
 * from its current position, into the existing directory dest (an absolute
 * path without symbolic links, such as a realpath()).  *out (may be NULL)
 * receives the number of entries written.  OTA_EINVAL when the archive is
 * malformed or holds an entry refused above (message: the entry's name and
 * why), OTA_ERROR when writing to disk fails.  On failure dest may hold a
 * part of the archive; the caller removes it.
 */
int source_extract(size_t *out, int fd, const char *dest);

#endif
