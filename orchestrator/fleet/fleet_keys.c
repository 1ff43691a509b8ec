/*
 * fleet_keys.c - the fleet key and device secret every instance shares.
 *
 * A device's credential is an HMAC of the device secret (fleet_auth.c),
 * registrations need the fleet key.  Several otacd on one fleet database
 * (issue 16, docs/scale.md) take turns leading: one that held other
 * secrets than the last leader would refuse every device after a
 * failover.  So the fleet database keeps a fingerprint of each secret in
 * fleet_meta (an integer table: the first 63 bits of SHA-256 over a label
 * and the secret, which identify it without giving it away; the device
 * secret has 256 random bits, the fleet key at least 128), recorded by
 * the first instance that starts on it and compared by every other, in
 * one writer transaction so two first starts agree on one.  An instance
 * without a fleet key (none configured) records and checks none.
 *
 * fleet_leader (fleet_store.c's migration 3) is where the instance that
 * leads records its device API's address for the followers' listeners to
 * forward to, as otacd_leader.holder names the leader's API.  A migration,
 * not a table made at start: `otactl migrate` and backups copy a fleet
 * database's tables into one made by the migrations.
 */
#include "fleet_int.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "../../common/sha256.h"

static int64_t fingerprint(const char *label, const char *secret)
{
	unsigned char md[32];
	size_t n = strlen(label), m = strlen(secret);
	char *text = xmalloc(n + 1 + m);
	int64_t v = 0;

	memcpy(text, label, n);
	text[n] = ':';
	memcpy(text + n + 1, secret, m);
	ota_sha256(text, n + 1 + m, md);
	OPENSSL_cleanse(text, n + 1 + m);
	free(text);
	for (int i = 0; i < 8; i++)
		v = (int64_t)(((uint64_t)v << 8) | md[i]);
	return v & INT64_MAX;
}

/* Record name's fingerprint unless one is there; OTA_ECONFLICT when the
 * one there differs. */
static int check_one(struct db *db, const char *name, const char *what, int64_t fp)
{
	struct db_stmt *st = db_stmt(db, "INSERT INTO fleet_meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO NOTHING");
	int64_t have;

	if (!st)
		return ota_error_set(OTA_ERROR, "fleet database: %s", db_errmsg(db));
	db_bind_text(st, 1, name);
	db_bind_int64(st, 2, fp);
	if (db_run(st) < 0)
		return ota_error_set(OTA_ERROR, "fleet database: %s", db_errmsg(db));
	if (!(st = db_stmt(db, "SELECT value FROM fleet_meta WHERE key = ?")))
		return ota_error_set(OTA_ERROR, "fleet database: %s", db_errmsg(db));
	db_bind_text(st, 1, name);
	if (db_step(st) != 1) {
		db_reset(st);
		return ota_error_set(OTA_ERROR, "fleet database: %s", db_errmsg(db));
	}
	have = db_column_int64(st, 0);
	db_reset(st);
	if (have != fp)
		return ota_error_set(OTA_ECONFLICT,
				     "%s differs from the one the fleet database was used with: every instance on"
				     " one fleet database needs the same one, or devices' credentials fail after a"
				     " failover (docs/scale.md)", what);
	return 0;
}

int fleet_keys_check(const struct fleet_config *cfg)
{
	struct db *db = NULL;
	char *url = fleet_db_url(cfg->db_path);
	size_t n;
	const char *const *migrations = fleet_store_migrations(&n);
	int rc;

	/* the schema first: the first instance may find an empty database */
	if ((rc = fleet_db_open(&db, url)) < 0 || (rc = db_migrate(db, migrations, n)) < 0) {
		rc = ota_error_set(rc, "fleet database: %s", ota_error_last());
		goto out;
	}
	if (db_begin(db) < 0) {
		rc = ota_error_set(OTA_ERROR, "fleet database: %s", db_errmsg(db));
		goto out;
	}
	if ((cfg->fleet_key && *cfg->fleet_key &&
	     (rc = check_one(db, "fleet_key_fp", "fleet_key", fingerprint("otacd fleet key", cfg->fleet_key))) < 0) ||
	    (cfg->device_secret && (rc = check_one(db, "device_secret_fp", "the device secret (device_secret_file)",
						   fingerprint("otacd device secret", cfg->device_secret))) < 0)) {
		db_rollback(db);
		goto out;
	}
	if (db_commit(db) < 0)
		rc = ota_error_set(OTA_ERROR, "fleet database: %s", db_errmsg(db));
out:
	db_close(db);
	free(url);
	return rc;
}

int fleet_leader_record(const char *db_path, const char *device_url)
{
	struct db *db = NULL;
	struct db_stmt *st;
	char *url = fleet_db_url(db_path);
	int rc;

	if ((rc = fleet_db_open(&db, url)) < 0)
		goto out;
	st = db_stmt(db, "INSERT INTO fleet_leader(k, device_url) VALUES('device', ?)"
			 " ON CONFLICT(k) DO UPDATE SET device_url = excluded.device_url");
	if (st)
		db_bind_text(st, 1, device_url);
	if (!st || db_run(st) < 0)
		rc = ota_error_set(OTA_ERROR, "fleet database: fleet_leader: %s", db_errmsg(db));
out:
	db_close(db);
	free(url);
	return rc;
}

int fleet_leader_device(struct db **conn, const char *db_path, char *out, size_t size)
{
	struct db_stmt *st;
	int rc = 0;

	out[0] = 0;
	if (!*conn) {
		char *url = fleet_db_url(db_path);
		rc = fleet_db_open(conn, url);
		free(url);
		if (rc < 0)
			return rc;
	}
	if (!(st = db_stmt(*conn, "SELECT device_url FROM fleet_leader WHERE k = 'device'"))) {
		rc = ota_error_set(OTA_ERROR, "fleet database: fleet_leader: %s", db_errmsg(*conn));
		db_close(*conn); /* reconnect at the next call */
		*conn = NULL;
		return rc;
	}
	if ((rc = db_step(st)) == 1 && db_column_text(st, 0))
		snprintf(out, size, "%s", db_column_text(st, 0));
	db_reset(st);
	if (rc < 0) {
		rc = ota_error_set(OTA_ERROR, "fleet database: fleet_leader: %s", db_errmsg(*conn));
		db_close(*conn);
		*conn = NULL;
		return rc;
	}
	return 0;
}
