/*
 * release_delta.c - delta patches for a release (issue 15).
 *
 * Devices on the previous version rebuild the new image from the one they
 * run and a small patch (libotadev's device/otadev_vcdiff.c), so the
 * release makes those patches when it signs: for each signed image and
 * each earlier version the pipeline lists, the earlier release's signed
 * image of the same name is read from the artifact store and the real
 * xdelta3 writes the patch (VCDIFF, no secondary compression, no
 * application header, 16 KiB windows: what the device decodes in bounded
 * RAM).  xdelta3 runs as a child process (posix_spawnp: otacd is
 * threaded) in a private temporary directory; the patch is decoded again
 * with `xdelta3 -d` and compared with the image before it is stored, so a
 * release never names a patch that does not rebuild its image.
 *
 * No patch to or from an encrypted image: it is stored as AES-CTR
 * ciphertext under a key drawn for that image, while a device holds its
 * running image in clear (the bootloader decrypts it into the primary
 * slot), so a patch could neither start from what the device has nor
 * produce the ciphertext it must download (docs/delivery.md).
 */
#include "release_delta.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../orchestrator/artifact.h"
#include "../orchestrator/db/db.h"
#include "../orchestrator/mcuboot.h"
#include "../orchestrator/store.h"
#include "../orchestrator/updsrv.h"

extern char **environ;

void release_deltas_validate(const struct pl_stage *st, const json_t *spec, struct pl_diags *d)
{
	const json_t *from = json_object_get(spec, "from"), *v;
	const char *k;
	size_t i;
	uint8_t a, b;
	uint16_t c;
	uint32_t n;

	if (!json_is_object(spec)) {
		pl_diag_add(d, st->pos, "release stage '%s': deltas must be a mapping {from: [VERSION, ...]}", st->name);
		return;
	}
	const json_t *installed = json_object_get(spec, "installed");

	json_object_foreach((json_t *)spec, k, v)
		if (strcmp(k, "from") && strcmp(k, "installed"))
			pl_diag_add(d, st->pos, "release stage '%s': unknown key '%s' in deltas (from, installed)", st->name, k);
	if (installed && (!json_is_integer(installed) || json_integer_value(installed) < 1 ||
			  json_integer_value(installed) > RELEASE_DELTAS_MAX))
		pl_diag_add(d, st->pos, "release stage '%s': deltas.installed must be 1..%d (the most installed versions)",
			    st->name, RELEASE_DELTAS_MAX);
	if (!from && !installed)
		pl_diag_add(d, st->pos, "release stage '%s': deltas needs from: [VERSION, ...] or installed: N", st->name);
	if (!from)
		return;
	if (!json_is_array(from) || !json_array_size(from) || json_array_size(from) > RELEASE_DELTAS_MAX) {
		pl_diag_add(d, st->pos, "release stage '%s': deltas.from must list 1..%d earlier versions", st->name,
			    RELEASE_DELTAS_MAX);
		return;
	}
	json_array_foreach(from, i, v)
		if (!json_is_string(v) || mcuboot_version_parse(json_string_value(v), &a, &b, &c, &n) < 0)
			pl_diag_add(d, st->pos, "release stage '%s': deltas.from[%zu] must be a version like 1.3.0",
				    st->name, i);
}

static int write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	int ok = f && fwrite(p, 1, n, f) == n;
	if (f && fclose(f) != 0)
		ok = 0;
	return ok ? 0 : ota_error_set(OTA_ERROR, "%s: %s", path, strerror(errno));
}

static int read_file(const char *path, struct buf *out)
{
	char chunk[65536];
	FILE *f = fopen(path, "rb");
	size_t n;
	int rc = 0;

	if (!f)
		return ota_error_set(OTA_ERROR, "%s: %s", path, strerror(errno));
	buf_init(out, (size_t)artifact_max_size());
	while (rc == 0 && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		rc = buf_put(out, chunk, n);
	fclose(f);
	return rc;
}

/* Run argv (argv[0] on PATH), its output to the log file; 0 when it exits 0. */
static int run_tool(char *const argv[], const char *log)
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st = 0, rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0)
		return ota_error_set(OTA_ERROR, "cannot run %s: %s (Debian: apt-get install xdelta3)", argv[0],
				     strerror(rc));
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return ota_error_set(OTA_ERROR, "waiting for %s: %s", argv[0], strerror(errno));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return ota_error_set(OTA_ERROR, "%s %s failed (status %d)", argv[0], argv[1], st);
	return 0;
}

/* xdelta3 from old to new in dir; the checked patch in *patch. */
static int xdelta3_patch(const char *dir, const struct buf *old, const void *new_img, size_t new_len,
			 struct buf *patch)
{
	char o[4096], n[4096], p[4096], d[4096], log[4096];
	struct buf back = BUF_INIT;
	int rc;

	snprintf(o, sizeof(o), "%s/old.bin", dir);
	snprintf(n, sizeof(n), "%s/new.bin", dir);
	snprintf(p, sizeof(p), "%s/patch.vcdiff", dir);
	snprintf(d, sizeof(d), "%s/check.bin", dir);
	snprintf(log, sizeof(log), "%s/xdelta3.log", dir);
	{
		char *enc[] = { "xdelta3", "-e", "-f", "-S", "none", "-A", "-W", "16384", "-s", o, n, p, NULL };
		char *dec[] = { "xdelta3", "-d", "-f", "-s", o, p, d, NULL };
		if ((rc = write_file(o, old->ptr, old->len)) < 0 || (rc = write_file(n, new_img, new_len)) < 0 ||
		    (rc = run_tool(enc, log)) < 0 || (rc = run_tool(dec, log)) < 0 ||
		    (rc = read_file(d, &back)) < 0 || (rc = read_file(p, patch)) < 0)
			goto out;
	}
	if (back.len != new_len || memcmp(back.ptr, new_img, new_len))
		rc = ota_error_set(OTA_ERROR, "xdelta3's patch does not rebuild the image");
out:
	buf_release(&back);
	unlink(o);
	unlink(n);
	unlink(p);
	unlink(d);
	unlink(log);
	return rc;
}

/* The earlier release's image of the same name: its sha256, or "" when
 * that version was never released with it. */
static int earlier_image(const char *product, const char *version, const char *name, char sha[65])
{
	struct store *db = store_reader();
	struct db_stmt *st = db ? store_q(db, "SELECT a.sha256 FROM releases r JOIN artifacts m ON m.id = r.manifest_artifact"
					      " JOIN artifacts a ON a.job_id = m.job_id WHERE r.product = ? AND r.version = ?"
					      " AND a.name = ? ORDER BY a.id DESC LIMIT 1") : NULL;
	sha[0] = '\0';
	if (!st)
		return ota_error_set(OTA_ERROR, "database unavailable");
	db_bind_text(st, 1, product);
	db_bind_text(st, 2, version);
	db_bind_text(st, 3, name);
	if (db_step(st) == 1)
		snprintf(sha, 65, "%s", db_column_text(st, 0));
	db_reset(st);
	return 0;
}

static void add_version(json_t *list, const char *v, const char *skip)
{
	size_t i;
	json_t *x;
	if (!v || !strcmp(v, skip))
		return;
	json_array_foreach(list, i, x)
		if (!strcmp(json_string_value(x), v))
			return;
	json_array_append_new(list, json_string(v));
}

json_t *release_deltas_sources(const struct stage_ctx *c, const json_t *spec, const char *product, const char *version,
			       const char *hardware)
{
	json_t *list = json_array(), *counts, *byver = json_object(), *v;
	const char *k;
	int64_t want = json_integer_value(json_object_get(spec, "installed"));
	size_t i;

	json_array_foreach(json_object_get(spec, "from"), i, v)
		add_version(list, json_string_value(v), version);
	if (want <= 0)
		goto out;
	/* the variant's own devices: a patch only serves devices of the image's
	 * hardware, and variants often run different versions */
	if (!(counts = updsrv_current_versions(product, hardware))) {
		stage_log(c, "deltas: the update server cannot say which versions are installed; only from: is used");
		goto out;
	}
	/* "1.0.0+7" (a device flashed with the release's image) counts for 1.0.0 */
	json_object_foreach(counts, k, v) {
		char *base = xstrdup(k);
		json_t *have;
		base[strcspn(base, "+")] = '\0';
		have = json_object_get(byver, base);
		json_object_set_new(byver, base, json_integer(json_integer_value(have) + json_integer_value(v)));
		free(base);
	}
	json_decref(counts);
	for (; want > 0; want--) {
		const char *best = NULL;
		int64_t n = 0;
		/* ties: the greater version string, so the choice does not hang
		 * on the order devices were walked in */
		json_object_foreach(byver, k, v)
			if (strcmp(k, version) && (json_integer_value(v) > n ||
						   (n && json_integer_value(v) == n && strcmp(k, best) > 0))) {
				best = k;
				n = json_integer_value(v);
			}
		if (!best)
			break;
		stage_log(c, "deltas: %s is installed on %" PRId64 " device(s)%s%s", best, n, hardware ? " of " : "",
			  hardware ? hardware : "");
		add_version(list, best, version);
		json_object_set_new(byver, best, json_integer(0));
	}
out:
	json_decref(byver);
	return list;
}

int release_deltas_make(const struct stage_ctx *c, const json_t *from, const char *product, const char *name,
			const char *hw, const void *img, size_t len, const char *to_sha, struct release_deltas *out)
{
	const json_t *v;
	const char *tmp = getenv("TMPDIR");
	char *dir;
	size_t i;
	int rc = 0;

	if (!json_array_size(from))
		return 0;
	if (!out->list)
		out->list = json_array();
	dir = xasprintf("%s/otacd-delta.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir)) {
		rc = ota_error_set(OTA_ERROR, "cannot make a temporary directory %s: %s", dir, strerror(errno));
		free(dir);
		return rc;
	}
	json_array_foreach(from, i, v) {
		const char *ver = json_string_value(v);
		struct buf old = BUF_INIT, patch = BUF_INIT;
		struct mcuboot_info base;
		char old_sha[65], psha[65], base_hex[65], *pname = NULL;
		int64_t pid = 0;

		if ((rc = earlier_image(product, ver, name, old_sha)) < 0)
			break;
		if (!old_sha[0]) {
			stage_log(c, "deltas: %s %s has no %s; no patch from it", product, ver, name);
			continue;
		}
		pname = xasprintf("%s.from-%s.vcdiff", name, ver);
		if ((rc = release_read_object(old_sha, &old)) == 0 && (rc = mcuboot_parse(&base, old.ptr, old.len)) == 0 &&
		    (base.flags & (MCUBOOT_F_ENC_AES128 | MCUBOOT_F_ENC_AES256))) {
			/* stored as ciphertext, held by devices in clear: no patch
			 * made from these bytes applies to what a device runs */
			stage_log(c, "deltas: %s %s's %s is encrypted; no patch from it", product, ver, name);
			free(pname);
			buf_release(&old);
			continue;
		}
		if (rc < 0 || (rc = xdelta3_patch(dir, &old, img, len, &patch)) < 0 ||
		    (rc = release_put(c, pname, NULL, hw, patch.ptr, patch.len, &pid, psha)) < 0) {
			ota_error_prefix("delta from %s to %s: ", ver, name);
		} else {
			ota_hex(base_hex, base.sha256, 32);
			json_array_append_new(out->list, json_pack("{ss ss? ss ss ss ss ss sI ss}", "name", pname, "hardware",
								   hw, "to", name, "to_sha256", to_sha, "from_version",
								   ver, "from_sha256", old_sha, "base", base_hex,
								   "size", (json_int_t)patch.len, "format", "vcdiff"));
			json_object_set_new(json_array_get(out->list, json_array_size(out->list) - 1), "sha256",
					    json_string(psha));
			out->ids = xrealloc(out->ids, (out->n + 1) * sizeof(*out->ids));
			out->ids[out->n++] = pid;
			stage_log(c, "delta %s: %zu bytes (%.3f of the image) for devices on %s", pname, patch.len,
				  (double)patch.len / (double)len, ver);
		}
		free(pname);
		buf_release(&old);
		buf_release(&patch);
		if (rc < 0)
			break;
	}
	rmdir(dir);
	free(dir);
	return rc;
}

void release_deltas_release(struct release_deltas *out)
{
	json_decref(out->list);
	free(out->ids);
	memset(out, 0, sizeof(*out));
}
