/*
 * fuzz_backup.c - libFuzzer target for a backup's manifest (backup.json,
 * read by `otacd --restore` from a directory an operator hands it): the
 * input is backup.json in a real backup directory (a small otacd.db and one
 * log), restored with backup_restore into an absent state directory.
 * Whatever the manifest says: a refused restore leaves no state directory
 * and no staging directory behind, and nothing ever appears in the parent
 * directory but the state directory itself.
 */
#include <dirent.h>
#include <ftw.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/util.h"
#include "../orchestrator/backup/backup.h"
#include "../orchestrator/store.h"

static char root[] = "/tmp/otacd-fuzz-backup-XXXXXX";
static char *bk, *state, *manifest;

static void setup(void)
{
	struct store *db = NULL;
	char *path, *logs;

	if (!mkdtemp(root))
		abort();
	bk = xasprintf("%s/bk", root);
	state = xasprintf("%s/state", root);
	manifest = xasprintf("%s/backup.json", bk);
	logs = xasprintf("%s/logs/1", bk);
	if (ota_mkdir_p(logs, 0700) < 0)
		abort();
	path = xasprintf("%s/otacd.db", bk);
	if (store_open(&db, path) < 0)
		abort();
	store_close(db);
	free(path);
	path = xasprintf("%s/1.log", logs);
	if (ota_write_file_atomic(path, "hello\n", 6, 0600) < 0)
		abort();
	free(path);
	free(logs);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Entries of root other than bk and (if want_state) state. */
static int strays(int want_state)
{
	DIR *d = opendir(root);
	struct dirent *e;
	int n = 0;
	if (!d)
		abort();
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "bk") &&
		    !(want_state && !strcmp(e->d_name, "state")))
			n++;
	closedir(d);
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stat st;
	int rc;

	if (!bk)
		setup();
	if (ota_write_file_atomic(manifest, data, size, 0600) < 0)
		abort();
	rc = backup_restore(bk, state);
	if (rc < 0 && (stat(state, &st) == 0 || strays(0)))
		abort(); /* a refused restore changed something */
	if (rc == 0) {
		if (stat(state, &st) < 0 || !S_ISDIR(st.st_mode) || strays(1))
			abort();
		nftw(state, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	}
	return 0;
}
