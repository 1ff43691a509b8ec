/*
 * trustdb.h - the release-signing revocation list in otacd's database
 * (issue 16): one list for every instance.
 *
 * Table release_crls (store.c migration 18), one row per accepted list,
 * keyed by its CRL number; the held list is the highest.  A publication
 * writes its row and its audit entry in one engine transaction that also
 * announces CW_AUTH, so every other instance's commitwatch reloads the
 * list (and does so every COMMITWATCH_AUTH_RELOAD_MS whatever it heard).
 * Every list read back is checked against the trust root again: a row
 * written behind otacd's back without the root's signature is never held.
 * The held number never goes down (pki_trust_install()).
 */
#ifndef OTACD_TRUSTDB_H
#define OTACD_TRUSTDB_H

#include <stddef.h>
#include <stdint.h>

struct engine;
struct store;

/* Publish a PEM list: it must verify against the trust root (OTA_EAUTH,
 * OTA_EINVAL) and be newer than the database's and the held list
 * (OTA_ECONFLICT).  Stored with its audit entry "revocations_published"
 * (actor), then held here.  *number gets its number. */
int trustdb_publish(struct engine *e, const char *pem, size_t len, const char *actor, int64_t *number);

/* Hold the database's newest list when it is newer than the held one (any
 * thread, on its own connection: the commitwatch's auth hook, startup).  A
 * row that does not verify is an error and changes nothing. */
int trustdb_reload(struct store *db);

/* Startup: a list an older otacd kept in STATE/revocations.crl.pem (held
 * by pki_trust_open()) is written to the database once when its number is
 * above the database's (audit "revocations_imported", actor "otacd");
 * otherwise the file is ignored (logged when it is older).  Then
 * trustdb_reload().  Nothing without a trust root. */
int trustdb_import(struct store *db);

/* The statements this module prepares (tests/test_dbconv_read.c style). */
void trustdb_sql_each(void (*fn)(const char *sql, void *arg), void *arg);

#endif
