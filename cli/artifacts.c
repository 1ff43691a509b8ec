/*
 * artifacts.c - `otactl artifacts`: a run's artifacts, listed or downloaded.
 *
 * `artifacts ls RUN` lists a run's artifacts; `artifacts get` takes a
 * digest or RUN/NAME, downloads the object to FILE.part and renames it to
 * FILE only when its sha256 matches the recorded one, so FILE is never a
 * partial or altered download.
 */
#include "otactl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../common/httpc.h"

static int artifacts_ls(const char *run)
{
	struct ctl_table t = { 6, 2, STRVEC_INIT };
	json_t *ans = NULL, *art;
	char *e = httpc_escape(run), *path = xasprintf("/api/v1/runs/%s/artifacts", e);
	size_t i;
	int rc;

	if ((rc = api(&ans, "GET", path, NULL, "cannot list artifacts")) != 0)
		goto out;
	if (ctl.json) {
		print_json(ans);
		goto out;
	}
	ctl_table_row(&t, "ID", "JOB", "NAME", "SIZE", "SHA256", "HARDWARE");
	json_array_foreach(ans, i, art) {
		char id[64], job[64], size[32], sha[16];
		snprintf(size, sizeof(size), "%lld", (long long)int_or(art, "size", 0));
		snprintf(sha, sizeof(sha), "%.12s", str_or(art, "sha256", "-"));
		ctl_table_row(&t, ctl_id_text(id, sizeof(id), json_object_get(art, "id")),
			  ctl_id_text(job, sizeof(job), json_object_get(art, "job_id")), str_or(art, "name", "-"), size, sha,
			  str_or(art, "hardware", "-"));
	}
	ctl_table_print(&t);
out:
	json_decref(ans);
	free(e);
	free(path);
	return rc;
}

/* Download path into file, checking the bytes against sha256 before the
 * file appears (written to FILE.part, then renamed). */
static int download_checked(const char *path, const char *sha256, const char *file)
{
	struct httpc_response resp;
	char *url = xasprintf("%s%s", ctl.url, path), *part = xasprintf("%s.part", file);
	unsigned char md[EVP_MAX_MD_SIZE], chunk[65536];
	unsigned int mdlen = 0;
	char got[65];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	FILE *f = fopen(part, "w+b");
	size_t n;
	int rc = EXIT_FAIL;

	httpc_response_init(&resp);
	if (!f) {
		fprintf(stderr, "otactl: cannot write %s: %s\n", part, strerror(errno));
		goto out;
	}
	if (httpc_download(&resp, url, ctl.token, f, (size_t)1 << 40, 0) < 0) {
		rc = ctl_unreachable();
		goto out;
	}
	if (resp.status != 200) {
		json_t *ans = json_loadb(resp.body.ptr ? resp.body.ptr : "", resp.body.len, 0, NULL);
		rc = api_fail(resp.status, ans, "cannot download the artifact");
		json_decref(ans);
		goto out;
	}
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	rewind(f);
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		EVP_DigestUpdate(ctx, chunk, n);
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	ota_hex(got, md, mdlen);
	if (strcmp(got, sha256) != 0) {
		fprintf(stderr, "otactl: the download's sha256 is %s, expected %s: not saved\n", got, sha256);
		goto out;
	}
	if (fflush(f) != 0 || fsync(fileno(f)) != 0 || rename(part, file) != 0) {
		fprintf(stderr, "otactl: cannot save %s: %s\n", file, strerror(errno));
		goto out;
	}
	if (!ctl.json)
		fprintf(stderr, "otactl: saved %s (sha256 %s)\n", file, sha256);
	rc = EXIT_OK;
out:
	if (f)
		fclose(f);
	if (rc != EXIT_OK)
		unlink(part);
	EVP_MD_CTX_free(ctx);
	httpc_response_release(&resp);
	free(url);
	free(part);
	return rc;
}

static int artifacts_get(const char *what, const char *file)
{
	const char *slash = strchr(what, '/');
	char *path = NULL, *sha = NULL;
	json_t *ans = NULL, *art;
	size_t i;
	int rc = EXIT_FAIL;

	if (strlen(what) == 64 && strspn(what, "0123456789abcdef") == 64) {
		sha = xstrdup(what);
		path = xasprintf("/api/v1/artifacts/sha256/%s", what);
	} else if (slash && slash != what) {
		char *run = xstrndup(what, (size_t)(slash - what)), *e = httpc_escape(run);
		char *list = xasprintf("/api/v1/runs/%s/artifacts", e);
		rc = api(&ans, "GET", list, NULL, "cannot list artifacts");
		free(run);
		free(e);
		free(list);
		if (rc)
			goto out;
		rc = EXIT_NOTFOUND;
		json_array_foreach(ans, i, art) {
			if (!strcmp(str_or(art, "name", ""), slash + 1)) {
				sha = xstrdup(str_or(art, "sha256", ""));
				path = xasprintf("/api/v1/artifacts/%lld", (long long)int_or(art, "id", 0));
			}
		}
		if (!path) {
			fprintf(stderr, "otactl: run %.*s has no artifact named '%s'\n", (int)(slash - what), what, slash + 1);
			goto out;
		}
	} else {
		rc = usage_error("artifacts", "'%s' is neither a sha256 digest nor RUN/NAME", what);
		goto out;
	}
	rc = download_checked(path, sha, file);
out:
	json_decref(ans);
	free(path);
	free(sha);
	return rc;
}

int cmd_artifacts(int argc, char **argv)
{
	const char *out = NULL;
	int i;

	if (argc >= 3 && !strcmp(argv[1], "ls") && argc == 3)
		return artifacts_ls(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "get")) {
		for (i = 3; i < argc; i++) {
			if (!strcmp(argv[i], "-o") && i + 1 < argc)
				out = argv[++i];
			else
				return usage_error("artifacts", "unexpected argument '%s'", argv[i]);
		}
		if (!out)
			return usage_error("artifacts", "where to? give -o FILE");
		return artifacts_get(argv[2], out);
	}
	return usage_error("artifacts", "use 'artifacts ls RUN' or 'artifacts get DIGEST|RUN/NAME -o FILE'");
}
