/*
 * fleet_store.c - fleet.db and the fleet's writer thread.
 *
 * fleet.db is on the storage layer (db/db.h; docs/storage.md, "The fleet
 * store"): a SQLite file by default, or a PostgreSQL database of its own
 * (cfg->db_path is a path or a URL).  Its PostgreSQL form: the migrations
 * below through db_migrate(), upserts (ON CONFLICT DO UPDATE) where SQLite
 * had INSERT OR REPLACE, an id column for the registration audit trail
 * where it had rowid, BYTEA for the packed rows, and the SQLite settings
 * (page size, checkpoints, secure_delete) through db_open_tuned(), which
 * PostgreSQL ignores.  The legacy layout stays SQLite's (legacy_schema).
 *
 * The writer thread is the only user of the database connection.  It wakes
 * when report batches are queued (fleet_store_submit) or every 250 ms, and
 * then runs one round in one transaction:
 *
 *   1. apply every queued batch to the in-memory devices and aggregates
 *      (batches were validated by the caller, so applying cannot fail);
 *   2. write every dirty device row and every dirty aggregate row (changes
 *      from these batches and from check-ins since the last round);
 *   3. COMMIT, then call each batch's done callback.
 *
 * So a batch's answer is sent only after the commit that contains it
 * (group commit: batches that arrive while a round commits go together in
 * the next one).  Rounds start at most every FLEET_ROUND_MS unless
 * FLEET_ROUND_BATCHES batches or FLEET_ROUND_REPORTS reports wait
 * (fleet_round_due): every commit rewrites a few pages (the log's
 * last leaf, the aggregates, the header) and fsyncs them, so a stream of
 * small rounds (check-ins that each change their device) would write
 * kilobytes per batch; 1 KB pages (a new fleet.db) keep those few small
 * too.  A check-in that changes its device queues an empty batch
 * after marking the device row dirty and waits for it the same way; a
 * check-in that only moves last_seen writes nothing: the device's next row
 * or the next snapshot holds it, and a snapshot starts once such a
 * last_seen is one poll interval old (fleet_store_seen; after a crash
 * last_seen may be that much older, plus the snapshot's rounds; a clean
 * stop loses none: last_round finishes a snapshot being built and logs the
 * rest).  On SQLite the database is WAL with
 * store_sync_pragma()'s synchronous (FULL: a commit survives the process
 * being killed and a power cut) and secure_delete=FAST (Debian builds
 * SQLite with it ON, which zero-fills every page a snapshot switch frees:
 * the deleted log and snapshot would be written a second time).
 *
 * Device rows: writes proportional to what changed, never a random page
 * rewritten.  A device's row (everything fleet_open needs: product,
 * hardware, bootloader, version, counter, last_seen, tags, per-version
 * flags) is packed with the others of its round into one BLOB, ~20-30
 * bytes a device (fleet_rows.c), and appended to dev_log under the next
 * seq: a round writes a few sequential pages however scattered its devices
 * are.  Nothing is ever merged into a table keyed by device id (the legacy
 * layout did, and rewrote most of that B-tree's pages every round: ~7 KB
 * written per report at a million devices).  Instead, once the log holds
 * COMPACT_RATIO times the bytes of the last snapshot (and at least
 * COMPACT_MIN_BYTES), a new snapshot of every device is written, in shard
 * order, one BLOB per shard, a few shards per round (SNAP_ROUND_DEVICES)
 * so no round stalls:
 *
 *   start   (round r0) S = the last seq written; rows of an aborted
 *           snapshot (gen > snap_gen) are deleted (a snapshot also
 *           starts when a last_seen-only check-in is a poll interval old);
 *   capture (rounds r0..) shard k's dirty rows go to the log and all its
 *           devices to dev_snap(gen + 1) under one hold of the shard's
 *           lock, so the capture equals what the log holds then;
 *   switch  (the round that captures shard 63, same transaction)
 *           fleet_meta says snap_gen = gen + 1, snap_seq = S; the old
 *           snapshot and the log rows seq <= S are deleted.
 *
 * fleet_open reads snapshot snap_gen, then the log rows after snap_seq in
 * seq order (a later row of a device replaces its state).  That is exact
 * whatever round a shard was captured in: a device that changed after S
 * has its last row in the log (every committed change is logged), and one
 * that did not is in the snapshot as it was at S.  A kill at any point
 * leaves either the old snapshot with its whole log or, once the switch
 * committed, the new one with the log after S; a half-written snapshot is
 * ignored.  Each byte logged thus costs at most 1/COMPACT_RATIO bytes of
 * snapshot, and every page is written once to the WAL and once by the
 * checkpoint (wal_autocheckpoint is 32 MB, so the pages every commit
 * touches, the log's last page and the aggregates, are copied once per
 * checkpoint): fleetstore-bench measures ~70 bytes to disk per report at
 * a million devices against ~7,300 for the legacy layout.  A fleet.db of
 * the legacy layout (tables devices and device_log) is read that way once
 * and migrated to a first snapshot in one transaction.
 *
 * `devices` per aggregate is not stored: fleet_open recounts it from the
 * device rows.  Every other counter is stored as is, so after a restart the
 * aggregates are those of the last commit.  Readers (gates, the API,
 * /metrics) see each aggregate's committed copy (struct agg's c, set after
 * COMMIT), never a count a kill could undo: counters never go backwards
 * across a restart.
 */
#include "fleet_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "../../common/log.h"
#include "../../common/sha256.h"
#include "../clock.h"
#include "../store.h"

/*
 * fleet.db's migrations (db_migrate, as store.c's; docs/storage.md, "the
 * fleet store"), in SQLite's dialect, which the storage layer rewrites
 * for PostgreSQL.  Append, never edit: migration 1 is the schema fleet.db
 * had before it kept a schema_migrations table, every statement IF NOT
 * EXISTS, so a fleet.db written then opens as version 1 with its rows.
 */
static const char *const migrations[] = {
	/* 1. devices: a snapshot (generation gen, one BLOB per shard) and the
	 * log of rows written after it (one BLOB per round, up to LOG_CHUNK
	 * rows); fleet_meta names the snapshot in use and the last seq it
	 * covers.  fleet_auth.c: registered devices and the registration
	 * audit trail. */
	"CREATE TABLE IF NOT EXISTS dev_snap(gen INTEGER NOT NULL, rows BLOB NOT NULL);"
	"CREATE TABLE IF NOT EXISTS dev_log(seq INTEGER PRIMARY KEY, rows BLOB NOT NULL);"
	"CREATE TABLE IF NOT EXISTS fleet_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS aggs(product TEXT NOT NULL, version TEXT NOT NULL, cohort TEXT NOT NULL,"
	" offered INTEGER NOT NULL, downloads INTEGER NOT NULL, installs INTEGER NOT NULL, boot_ok INTEGER NOT NULL,"
	" boot_fail INTEGER NOT NULL, reverts INTEGER NOT NULL, reporting INTEGER NOT NULL, crashed INTEGER NOT NULL,"
	" crashes INTEGER NOT NULL, device_hours REAL NOT NULL, battery_mah REAL NOT NULL,"
	" PRIMARY KEY(product, version, cohort)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS registered(id TEXT PRIMARY KEY, gen INTEGER NOT NULL, at INTEGER NOT NULL)"
	" WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS registrations(at INTEGER NOT NULL, count INTEGER NOT NULL, first TEXT NOT NULL,"
	" last TEXT NOT NULL, peer TEXT NOT NULL);",
	/* 2. the audit trail, listed newest first, gets an id (it was
	 * SQLite's rowid, which PostgreSQL has not); rows written before
	 * keep their order by time */
	"CREATE TABLE registrations_v2(id INTEGER PRIMARY KEY, at INTEGER NOT NULL, count INTEGER NOT NULL,"
	" first TEXT NOT NULL, last TEXT NOT NULL, peer TEXT NOT NULL);"
	"INSERT INTO registrations_v2(at, count, first, last, peer)"
	" SELECT at, count, first, last, peer FROM registrations ORDER BY at;"
	"DROP TABLE registrations;"
	"ALTER TABLE registrations_v2 RENAME TO registrations;",
	/* 3. issue 16: where the leading instance records its device API's
	 * address for the followers' listeners (fleet_keys.c) */
	"CREATE TABLE IF NOT EXISTS fleet_leader(k TEXT PRIMARY KEY, device_url TEXT NOT NULL);",
};

const char *const *fleet_store_migrations(size_t *n)
{
	*n = OTA_ARRAY_SIZE(migrations);
	return migrations;
}

/* The layout before the snapshot (one text row per device): read once to
 * migrate a fleet.db written by it, and kept writable behind
 * OTACD_FLEET_LAYOUT=legacy so the benchmarks can compare both.  SQLite
 * only: such a file was only ever SQLite, and its device_log is read in
 * rowid order (PostgreSQL has no rowid; docs/storage.md). */
static const char legacy_schema[] =
	"CREATE TABLE IF NOT EXISTS devices(id TEXT PRIMARY KEY, product TEXT NOT NULL, hardware TEXT NOT NULL,"
	" bootloader TEXT NOT NULL, version TEXT NOT NULL, counter INTEGER NOT NULL, tags TEXT NOT NULL,"
	" flags TEXT NOT NULL, last_seen INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS device_log(id TEXT NOT NULL, product TEXT NOT NULL, hardware TEXT NOT NULL,"
	" bootloader TEXT NOT NULL, version TEXT NOT NULL, counter INTEGER NOT NULL, tags TEXT NOT NULL,"
	" flags TEXT NOT NULL, last_seen INTEGER NOT NULL);";

#define LEGACY_MERGE_AT 200000
#define LEGACY_MERGE_CHUNK 25000
#define DEVICE_COLS "id, product, hardware, bootloader, version, counter, tags, flags, last_seen"

#define LOG_CHUNK 4096              /* device rows per dev_log BLOB */
#define SNAP_ROUND_DEVICES 16384    /* a round captures shards until this many devices */
#define COMPACT_RATIO 2             /* a snapshot once the log is this many times its size */
#define COMPACT_MIN_BYTES (4 << 20) /* ... and at least this large (OTACD_FLEET_COMPACT_BYTES) */

static int db_err(struct fleet *f, const char *what)
{
	return ota_error_set(OTA_ERROR, "fleet.db: %s: %s", what, db_errmsg(f->db));
}

static int exec(struct fleet *f, const char *sql)
{
	if (db_exec(f->db, sql) < 0)
		return ota_error_set(OTA_ERROR, "fleet.db: %s", db_errmsg(f->db));
	return 0;
}

/* Run st (prepared: NULL when that failed) to its end and reset it. */
static int run(struct fleet *f, struct db_stmt *st, const char *what)
{
	if (!st || db_run(st) < 0)
		return db_err(f, what);
	return 0;
}

/* ---- applying a report ------------------------------------------------- */

static void apply_report(struct fleet *f, const struct report *r)
{
	static const struct {
		uint32_t flag;
		size_t off;
	} distinct[] = {
		{ FL_DOWNLOAD, offsetof(struct fleet_agg, downloads) },
		{ FL_INSTALL, offsetof(struct fleet_agg, installs) },
		{ FL_BOOT_OK, offsetof(struct fleet_agg, boot_ok) },
		{ FL_BOOT_FAIL, offsetof(struct fleet_agg, boot_fail) },
		{ FL_REVERT, offsetof(struct fleet_agg, reverts) },
		{ FL_REPORTING, offsetof(struct fleet_agg, reporting) },
		{ FL_CRASHED, offsetof(struct fleet_agg, crashed) },
	};
	static const uint32_t event_flag[] = { FL_DOWNLOAD, FL_INSTALL, FL_BOOT_OK, FL_BOOT_FAIL, FL_REVERT, 0, 0 };
	struct device *d = r->dev;
	struct shard *s = fleet_shard(f, d->hash);
	struct vflag *vf;
	uint32_t add, fresh;

	pthread_mutex_lock(&s->mu);
	/* report seq: a report its device has had applied (a resend whose
	 * answer was lost, or a copy still in flight when the first was
	 * applied) changes nothing again.  The seq is written with the
	 * device's row in this round's transaction, with the counters it
	 * guards. */
	if (r->seq) {
		if (fleet_seq_seen(d->seq, d->seq_gaps, r->seq)) {
			pthread_mutex_unlock(&s->mu);
			return;
		}
		fleet_seq_mark(&d->seq, &d->seq_gaps, r->seq);
	}
	/* boot_ok and heartbeat say what the device runs now, unless its
	 * version moved after they were validated: a check-in (or a report)
	 * newer than them said otherwise, and moving the device back would
	 * drop its flags for the version it runs, the offer among them */
	if ((r->event == EV_BOOT_OK || r->event == EV_HEARTBEAT) && d->version != r->version && d->version == r->was)
		fleet_device_set_version_locked(f, d, r->version);
	vf = fleet_vflag(d, r->version);
	add = FL_REPORTING | event_flag[r->event] | (r->crashed ? FL_CRASHED : 0);
	fresh = add & ~vf->flags;
	vf->flags |= add;
	for (size_t i = 0; i < OTA_ARRAY_SIZE(distinct); i++)
		if (fresh & distinct[i].flag)
			fleet_agg_add(f, d, r->version, distinct[i].off, 1, 1);
	if (r->crashes || r->uptime_s > 0 || r->battery_mah > 0)
		fleet_agg_add_usage(f, d, r->version, r->crashes, r->uptime_s / 3600.0, r->battery_mah);
	fleet_device_mark_locked(s, d);
	pthread_mutex_unlock(&s->mu);
}

/* ---- writing rows ------------------------------------------------------- */

struct devrow {
	const char *id, *product, *hardware, *bootloader, *version;
	int64_t counter, last_seen;
	size_t tags_off, flags_off;   /* into the round's text buffer */
};

static int legacy_flush_devices(struct fleet *f)
{
	struct devrow *rows = NULL;
	size_t nrows = 0, cap = 0;
	struct buf text = BUF_INIT;
	int rc = 0;

	for (int k = 0; k < FLEET_NSHARDS && rc == 0; k++) {
		struct shard *s = &f->shards[k];
		struct device *d, *next;
		nrows = 0;
		buf_clear(&text);
		pthread_mutex_lock(&s->mu);
		for (d = s->dirty; d; d = next) {
			struct devrow *row;
			next = d->dirty_next;
			d->dirty = 0;
			d->dirty_next = NULL;
			fleet_count_offers_locked(f, d); /* in the aggregates of this commit */
			d->last_seen_written = d->last_seen;
			if (nrows == cap) {
				cap = cap ? cap * 2 : 256;
				rows = xrealloc(rows, cap * sizeof(*rows));
			}
			row = &rows[nrows++];
			row->id = d->id; /* devices live until fleet_close */
			row->product = d->product;
			row->hardware = d->hardware;
			row->bootloader = d->bootloader;
			row->version = d->version;
			row->counter = d->counter;
			row->last_seen = d->last_seen;
			row->tags_off = text.len;
			for (size_t i = 0; i < d->ntags; i++)
				buf_printf(&text, "%s\n", d->tags[i]);
			buf_putc(&text, '\0');
			row->flags_off = text.len;
			for (int i = 0; i < FLEET_NVFLAGS; i++)
				if (d->vf[i].version)
					buf_printf(&text, "%s %u\n", d->vf[i].version, (unsigned)d->vf[i].flags);
			buf_putc(&text, '\0');
		}
		s->dirty = NULL;
		pthread_mutex_unlock(&s->mu);
		for (size_t i = 0; i < nrows; i++) {
			struct db_stmt *st = db_stmt(f->db, "INSERT INTO device_log(" DEVICE_COLS ")"
							    " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)");
			if (st) {
				db_bind_text(st, 1, rows[i].id);
				db_bind_text(st, 2, rows[i].product);
				db_bind_text(st, 3, rows[i].hardware);
				db_bind_text(st, 4, rows[i].bootloader);
				db_bind_text(st, 5, rows[i].version);
				db_bind_int64(st, 6, rows[i].counter);
				db_bind_text(st, 7, text.ptr + rows[i].tags_off);
				db_bind_text(st, 8, text.ptr + rows[i].flags_off);
				db_bind_int64(st, 9, rows[i].last_seen);
			}
			if ((rc = run(f, st, "write device")) < 0)
				break;
			f->log_rows++;
		}
	}
	free(rows);
	buf_release(&text);
	return rc;
}

static int meta_set(struct fleet *f, const char *key, int64_t value)
{
	struct db_stmt *st = db_stmt(f->db, "INSERT INTO fleet_meta(key, value) VALUES(?, ?)"
					    " ON CONFLICT(key) DO UPDATE SET value = excluded.value");
	if (st) {
		db_bind_text(st, 1, key);
		db_bind_int64(st, 2, value);
	}
	return run(f, st, "write fleet_meta");
}

/* A statement with one integer parameter; sql a literal (db_stmt). */
static int exec_int(struct fleet *f, const char *sql, int64_t v)
{
	struct db_stmt *st = db_stmt(f->db, sql);
	if (st)
		db_bind_int64(st, 1, v);
	return run(f, st, sql);
}

/* One dev_log row: the next seq (explicit, so seqs only grow even when the
 * log has been emptied) and a chunk's BLOB. */
static int log_insert(struct fleet *f, struct fleet_chunk *c, struct buf *blob)
{
	struct db_stmt *st = db_stmt(f->db, "INSERT INTO dev_log(seq, rows) VALUES(?, ?)");
	int rc;
	fleet_chunk_finish(c, blob);
	if (st) {
		db_bind_int64(st, 1, ++f->log_seq);
		db_bind_blob(st, 2, blob->ptr, blob->len);
	}
	if ((rc = run(f, st, "write devices")) < 0)
		return rc;
	f->log_bytes += (int64_t)blob->len;
	if (f->building)
		f->build_log_bytes += (int64_t)blob->len;
	return 0;
}

static int snap_insert(struct fleet *f, int64_t gen, const struct buf *blob)
{
	struct db_stmt *st = db_stmt(f->db, "INSERT INTO dev_snap(gen, rows) VALUES(?, ?)");
	int rc;
	if (st) {
		db_bind_int64(st, 1, gen);
		db_bind_blob(st, 2, blob->ptr, blob->len);
	}
	if ((rc = run(f, st, "write the device snapshot")) < 0)
		return rc;
	f->build_bytes += (int64_t)blob->len;
	return 0;
}

/* A snapshot starts once the log outweighs the last one COMPACT_RATIO
 * times: rows of an aborted one (a generation past snap_gen) go first. */
static int snapshot_maybe_start(struct fleet *f)
{
	int64_t seen = __atomic_load_n(&f->seen_pending, __ATOMIC_RELAXED);
	int rc;
	if (f->building || f->closing)
		return 0;
	/* ... or once a last_seen that no row holds is a poll interval old */
	if ((f->log_bytes < f->compact_min || f->log_bytes < f->compact_ratio * f->snap_bytes) &&
	    (!seen || clock_now_ms() - seen < f->cfg_poll_ms))
		return 0;
	if ((rc = exec_int(f, "DELETE FROM dev_snap WHERE gen > ?", f->snap_gen)) < 0)
		return rc;
	/* every shard is captured after this: it holds every last_seen so far */
	f->build_seen = __atomic_exchange_n(&f->seen_pending, 0, __ATOMIC_RELAXED);
	f->building = 1;
	f->build_shard = 0;
	f->build_seq = f->log_seq;
	f->build_bytes = f->build_log_bytes = 0;
	f->build_started = clock_mono_ms();
	f->build_rounds = 0;
	return 0;
}

/* The snapshot's last shard is written: in the same transaction it becomes
 * the one in use, and the old one and the log rows it covers go. */
static int snapshot_switch(struct fleet *f)
{
	int64_t gen = f->snap_gen + 1;
	int rc;
	if ((rc = meta_set(f, "snap_gen", gen)) < 0 || (rc = meta_set(f, "snap_seq", f->build_seq)) < 0 ||
	    (rc = exec_int(f, "DELETE FROM dev_snap WHERE gen <> ?", gen)) < 0 ||
	    (rc = exec_int(f, "DELETE FROM dev_log WHERE seq <= ?", f->build_seq)) < 0)
		return rc;
	return 0;
}

/* Write every dirty device to dev_log and, while a snapshot is being
 * built, the whole of the next shards to dev_snap.  A shard's dirty rows
 * and its snapshot are taken under one hold of its lock, so the snapshot
 * holds exactly what the log holds at that point. */
static int flush_devices(struct fleet *f)
{
	struct fleet_chunk log, snap;
	struct buf blob = BUF_INIT;
	int64_t captured = 0;
	int rc;

	if ((rc = snapshot_maybe_start(f)) < 0)
		return rc;
	fleet_chunk_init(&log);
	fleet_chunk_init(&snap);
	for (int k = 0; k < FLEET_NSHARDS && rc == 0; k++) {
		struct shard *s = &f->shards[k];
		struct device *d, *next;
		int capture = f->building && f->build_shard == k && captured < f->snap_round;

		pthread_mutex_lock(&s->mu);
		for (d = s->dirty; d; d = next) {
			next = d->dirty_next;
			d->dirty = 0;
			d->dirty_next = NULL;
			fleet_count_offers_locked(f, d); /* in the aggregates of this commit */
			fleet_chunk_add(&log, d);
			d->last_seen_written = d->last_seen;
			if (f->nwritten == f->cap_written) {
				f->cap_written = f->cap_written ? 2 * f->cap_written : 1024;
				f->written = xrealloc(f->written, f->cap_written * sizeof(*f->written));
			}
			f->written[f->nwritten++] = d;
		}
		s->dirty = NULL;
		if (capture) {
			for (size_t i = 0; i < s->nb; i++)
				for (d = s->b[i]; d; d = d->next) {
					fleet_chunk_add(&snap, d);
					d->last_seen_written = d->last_seen;
				}
			captured += (int64_t)s->n;
		}
		pthread_mutex_unlock(&s->mu);
		if (capture) {
			fleet_chunk_finish(&snap, &blob);
			rc = snap_insert(f, f->snap_gen + 1, &blob);
			f->build_shard++;
		}
		if (rc == 0 && log.ndev >= LOG_CHUNK)
			rc = log_insert(f, &log, &blob);
	}
	if (rc == 0 && log.ndev)
		rc = log_insert(f, &log, &blob);
	if (rc == 0 && f->building && f->build_shard == FLEET_NSHARDS)
		rc = snapshot_switch(f);
	fleet_chunk_release(&log);
	fleet_chunk_release(&snap);
	buf_release(&blob);
	return rc;
}

/* After the round: a snapshot it completed is the one in use (ok), or a
 * snapshot being built starts again later (rolled back: the device rows it
 * wrote are marked dirty again). */
static void publish_snapshot(struct fleet *f, int ok)
{
	/* rows a rolled-back round wrote are written again by the next one */
	for (size_t i = 0; !ok && i < f->nwritten; i++) {
		struct device *d = f->written[i];
		struct shard *s = fleet_shard(f, d->hash);
		pthread_mutex_lock(&s->mu);
		fleet_device_mark_locked(s, d);
		pthread_mutex_unlock(&s->mu);
	}
	f->nwritten = 0;
	if (!f->building)
		return;
	if (!ok) {
		/* the last_seen it captured is not written after all: pending
		 * again, and unknown to the last round (fleet_close) */
		int64_t seen = __atomic_load_n(&f->seen_pending, __ATOMIC_RELAXED);
		if (f->build_seen && (!seen || f->build_seen < seen))
			__atomic_store_n(&f->seen_pending, f->build_seen, __ATOMIC_RELAXED);
		for (int k = 0; k < f->build_shard; k++) {
			struct shard *s = &f->shards[k];
			pthread_mutex_lock(&s->mu);
			for (size_t i = 0; i < s->nb; i++)
				for (struct device *d = s->b[i]; d; d = d->next)
					d->last_seen_written = 0;
			pthread_mutex_unlock(&s->mu);
		}
		f->building = 0;
		return;
	}
	f->build_rounds++;
	if (f->build_shard < FLEET_NSHARDS)
		return;
	f->building = 0;
	__atomic_store_n(&f->snap_ms, clock_mono_ms() - f->build_started, __ATOMIC_RELAXED);
	__atomic_store_n(&f->snap_rounds, f->build_rounds, __ATOMIC_RELAXED);
	f->snap_gen++;
	f->snap_seq = f->build_seq;
	f->snap_bytes = f->build_bytes;
	f->log_bytes = f->build_log_bytes;
	__atomic_add_fetch(&f->snapshots, 1, __ATOMIC_RELAXED);
}

static int flush_aggs(struct fleet *f)
{
	struct agg *a, *next;
	int rc = 0;

	pthread_mutex_lock(&f->agg_dirty_mu);
	a = f->agg_dirty;
	f->agg_dirty = NULL;
	pthread_mutex_unlock(&f->agg_dirty_mu);
	for (; a; a = next) {
		struct db_stmt *st;
		struct fleet_agg v;
		next = a->dirty_next;
		/* clear first: a change after the read below marks it again */
		__atomic_store_n(&a->dirty, 0, __ATOMIC_SEQ_CST);
		if (rc < 0)
			continue;
		fleet_agg_read(a, &v);
		a->pend = v;
		a->flushed_next = f->agg_flushed;
		f->agg_flushed = a;
		st = db_stmt(f->db, "INSERT INTO aggs(product, version, cohort, offered, downloads, installs, boot_ok,"
				    " boot_fail, reverts, reporting, crashed, crashes, device_hours, battery_mah)"
				    " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
				    " ON CONFLICT(product, version, cohort) DO UPDATE SET offered = excluded.offered,"
				    " downloads = excluded.downloads, installs = excluded.installs,"
				    " boot_ok = excluded.boot_ok, boot_fail = excluded.boot_fail, reverts = excluded.reverts,"
				    " reporting = excluded.reporting, crashed = excluded.crashed, crashes = excluded.crashes,"
				    " device_hours = excluded.device_hours, battery_mah = excluded.battery_mah");
		if (st) {
			db_bind_text(st, 1, a->product);
			db_bind_text(st, 2, a->version);
			db_bind_text(st, 3, a->cohort);
			db_bind_int64(st, 4, v.offered);
			db_bind_int64(st, 5, v.downloads);
			db_bind_int64(st, 6, v.installs);
			db_bind_int64(st, 7, v.boot_ok);
			db_bind_int64(st, 8, v.boot_fail);
			db_bind_int64(st, 9, v.reverts);
			db_bind_int64(st, 10, v.reporting);
			db_bind_int64(st, 11, v.crashed);
			db_bind_int64(st, 12, v.crashes);
			db_bind_double(st, 13, v.device_hours);
			db_bind_double(st, 14, v.battery_mah);
		}
		rc = run(f, st, "write aggregate");
	}
	return rc;
}

/* Fold the oldest n rows of device_log (all when n < 0) into devices
 * (the legacy layout: SQLite only, so rowid). */
static int merge_log(struct fleet *f, int64_t n)
{
	struct db_stmt *st;
	int64_t upto = 0;
	int rc;

	st = n < 0 ? db_stmt(f->db, "SELECT max(rowid) FROM device_log")
		   : db_stmt(f->db, "SELECT rowid FROM device_log ORDER BY rowid LIMIT 1 OFFSET ?");
	if (!st)
		return db_err(f, "merge device log");
	if (n >= 0)
		db_bind_int64(st, 1, n - 1);
	if ((rc = db_step(st)) == 1)
		upto = db_column_int64(st, 0);
	db_reset(st);
	if (rc < 0)
		return db_err(f, "merge device log");
	if (upto <= 0)
		return 0;
	st = db_stmt(f->db, "INSERT INTO devices(" DEVICE_COLS ") SELECT " DEVICE_COLS
			    " FROM device_log WHERE rowid <= ? ORDER BY rowid"
			    " ON CONFLICT(id) DO UPDATE SET product = excluded.product, hardware = excluded.hardware,"
			    " bootloader = excluded.bootloader, version = excluded.version, counter = excluded.counter,"
			    " tags = excluded.tags, flags = excluded.flags, last_seen = excluded.last_seen");
	if (st)
		db_bind_int64(st, 1, upto);
	if ((rc = run(f, st, "merge device log")) < 0)
		return rc;
	if (!(st = db_stmt(f->db, "DELETE FROM device_log WHERE rowid <= ?")))
		return db_err(f, "merge device log");
	db_bind_int64(st, 1, upto);
	if (db_step(st) < 0)
		return db_err(f, "merge device log");
	f->log_rows -= db_changes(st);
	db_reset(st);
	if (f->log_rows < 0)
		f->log_rows = 0;
	return 0;
}

/* A registration: every id moves to its next generation (in memory, and
 * its `registered` row added to rows, which the round writes), one audit
 * row for the request. */
static int apply_registration(struct fleet *f, struct fleet_reg *reg, struct fleet_regrows *rows)
{
	struct db_stmt *st;

	for (size_t i = 0; i < reg->n; i++) {
		const char *id = reg->ids[i];
		uint64_t h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
		struct shard *s = fleet_shard(f, h);
		struct reg *r;
		struct device *d;
		pthread_mutex_lock(&s->mu);
		if (!(r = fleet_reg_find_locked(s, id, h)))
			r = fleet_reg_new_locked(f, s, id, h);
		reg->gens[i] = ++r->gen;
		/* a device provisioned again (a factory reset, a new
		 * simulator run) numbers its reports afresh: its report seq
		 * restarts, in this round's commit with its new credential */
		if ((d = r->dev ? r->dev : fleet_device_find_locked(s, id, h)) && (d->seq || d->seq_gaps)) {
			d->seq = d->seq_gaps = 0;
			fleet_device_mark_locked(s, d);
		}
		pthread_mutex_unlock(&s->mu);
		fleet_regrows_add(rows, id, reg->gens[i], reg->at);
	}
	st = db_stmt(f->db, "INSERT INTO registrations(at, count, first, last, peer) VALUES(?, ?, ?, ?, ?)");
	if (st) {
		db_bind_int64(st, 1, reg->at);
		db_bind_int64(st, 2, (int64_t)reg->n);
		db_bind_text(st, 3, reg->ids[0]);
		db_bind_text(st, 4, reg->ids[reg->n - 1]);
		db_bind_text(st, 5, reg->peer);
	}
	return run(f, st, "register");
}

/* After the round: the aggregates it wrote become what readers see (ok),
 * or are marked to be written again (rolled back). */
static void publish_aggs(struct fleet *f, int ok)
{
	struct agg *a, *next;
	for (a = f->agg_flushed, f->agg_flushed = NULL; a; a = next) {
		next = a->flushed_next;
		fleet_agg_publish(f, a, ok);
	}
}

/* One round: apply batches, write what changed, commit. */
static void test_stall(struct fleet *f, const char *path);

static int round_commit(struct fleet *f, struct batch *batches)
{
	struct fleet_regrows rows = { 0 };
	int rc = 0;
	if (db_begin(f->db) < 0)
		return db_err(f, "begin");
	for (struct batch *b = batches; b && rc == 0; b = b->next) {
		if (b->reg && (rc = apply_registration(f, b->reg, &rows)) < 0)
			break;
		for (size_t i = 0; i < b->n; i++)
			apply_report(f, &b->r[i]);
	}
	/* the round's `registered` rows together (fleet_rows.c) */
	if (rc == 0 && rows.n)
		rc = fleet_regrows_write(f->db, &rows);
	fleet_regrows_release(&rows);
	if (rc < 0) {
		db_rollback(f->db);
		return rc;
	}
	if (f->legacy)
		rc = legacy_flush_devices(f);
	else
		rc = flush_devices(f);
	/* tests only: a round with batches holds between its device rows and
	 * its aggregates while OTACD_TEST_FLEET_STALL_AGGS_FILE exists (it
	 * makes FILE.held first): a check-in then lands in the gap
	 * (test_fleetdur's offer_counted_in_the_commit_of_its_row) */
	if (batches && f->stall_aggs_path && access(f->stall_aggs_path, F_OK) == 0) {
		char *held = xasprintf("%s.held", f->stall_aggs_path);
		(void)ota_write_file_atomic(held, "", 0, 0600);
		free(held);
		test_stall(f, f->stall_aggs_path);
	}
	if (rc < 0 || (rc = flush_aggs(f)) < 0 ||
	    (f->legacy && f->log_rows >= LEGACY_MERGE_AT && (rc = merge_log(f, LEGACY_MERGE_CHUNK)) < 0) ||
	    (db_commit(f->db) < 0 && (rc = db_err(f, "commit")) < 0)) {
		db_rollback(f->db);
		publish_aggs(f, 0);
		publish_snapshot(f, 0);
		return rc;
	}
	publish_aggs(f, 1);
	publish_snapshot(f, 1);
	return 0;
}

/* Tests only: while the file named by OTACD_TEST_FLEET_STALL_FILE exists,
 * the writer does not commit the batches it took (a writer lagging behind
 * its devices, for tests/test_staleness.c; a commit in progress, for
 * test_fleetstore.c's pacing).  Rounds with no batch are not held, so
 * the first batch after the file appears is the one held.  Never set in
 * production. */
static void test_stall(struct fleet *f, const char *path)
{
	while (path && access(path, F_OK) == 0) {
		int stop;
		pthread_mutex_lock(&f->q_mu);
		stop = f->stop;
		pthread_mutex_unlock(&f->q_mu);
		if (stop)
			break;
		usleep(20000);
	}
}

/* Closing.  A last_seen that no row holds lives only in memory until a
 * snapshot captures it, so the last round writes them all:
 *
 *   - a snapshot being built took over every pending last_seen when it
 *     started (seen_pending went to 0), and the shards it has not captured
 *     yet hold them: the last round captures every shard left and switches
 *     to it, as a round that reached shard 63 would (a half-written
 *     snapshot is ignored on open, and with it those last_seen);
 *   - last_seen moved since (seen_pending), in shards a snapshot will not
 *     capture in this round, go to the log as rows.
 *
 * No new snapshot starts here: the rows are the cheaper write. */
static void last_round(struct fleet *f)
{
	int pending = __atomic_load_n(&f->seen_pending, __ATOMIC_RELAXED) != 0;
	int building = f->building;
	int first_capture = building ? f->build_shard : FLEET_NSHARDS;   /* the shards this round captures */

	f->closing = 1;
	if (!pending && !building)
		return;
	f->snap_round = INT64_MAX;
	for (int k = 0; pending && k < first_capture; k++) {
		struct shard *s = &f->shards[k];
		pthread_mutex_lock(&s->mu);
		for (size_t i = 0; i < s->nb; i++)
			for (struct device *d = s->b[i]; d; d = d->next)
				if (d->last_seen != d->last_seen_written)
					fleet_device_mark_locked(s, d);
		pthread_mutex_unlock(&s->mu);
	}
	if (round_commit(f, NULL) < 0) {
		ota_log(OTA_LOG_WARN, "fleet.db: the last round at close failed (%s): last_seen of devices that only"
				" checked in since their last row may be older after the restart", ota_error_last());
		return;
	}
	__atomic_store_n(&f->seen_pending, 0, __ATOMIC_RELAXED);
}

void fleet_store_seen(struct fleet *f, int64_t now)
{
	int64_t none = 0;
	if (!__atomic_load_n(&f->seen_pending, __ATOMIC_RELAXED))
		__atomic_compare_exchange_n(&f->seen_pending, &none, now, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* Wait on q_cond (q_mu held) for up to ms. */
static void cond_wait_ms(struct fleet *f, int64_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&f->q_cond, &f->q_mu, &ts);
}

int fleet_round_due(int64_t now, int64_t last_round, size_t batches, size_t reports, int64_t pace_ms)
{
	return pace_ms <= 0 || batches >= FLEET_ROUND_BATCHES || reports >= FLEET_ROUND_REPORTS ||
	       now >= last_round + pace_ms;
}

static void *writer_main(void *arg)
{
	struct fleet *f = arg;
	int64_t started = clock_mono_ms();   /* the pace counts from the writer's start, as from a round */
	for (;;) {
		struct batch *batches, *next;
		size_t nbatches;
		int stop, rc;
		pthread_mutex_lock(&f->q_mu);
		if (!f->q_head && !f->stop)
			cond_wait_ms(f, 250);
		while (f->q_head && !f->stop &&
		       !fleet_round_due(clock_mono_ms(), started, f->q_n, f->q_reports, f->round_ms))
			cond_wait_ms(f, started + f->round_ms - clock_mono_ms());
		started = clock_mono_ms();
		batches = f->q_head;
		nbatches = f->q_n;
		f->q_head = NULL;
		f->q_tail = &f->q_head;
		f->q_n = f->q_reports = 0;
		stop = f->stop;
		if (batches && (!f->lag_oldest || batches->at < f->lag_oldest)) /* FIFO: the head is the oldest */
			__atomic_store_n(&f->lag_oldest, batches->at, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&f->q_mu);

		if (batches)
			test_stall(f, f->stall_path);
		rc = round_commit(f, batches);
		if (rc == 0) { /* published: nothing taken is pending any more */
			__atomic_store_n(&f->last_commit, clock_mono_ms(), __ATOMIC_RELAXED);
			__atomic_store_n(&f->lag_oldest, 0, __ATOMIC_RELAXED);
			if (batches) {
				__atomic_add_fetch(&f->rounds, 1, __ATOMIC_RELAXED);
				__atomic_add_fetch(&f->round_batches, (int64_t)nbatches, __ATOMIC_RELAXED);
			}
		}
		for (; batches; batches = next) {
			next = batches->next;
			if (rc < 0)
				ota_error_set(rc, "%s", ota_error_last());
			batches->done(batches->ctx, rc);
			free(batches);
		}
		if (stop) {
			pthread_mutex_lock(&f->q_mu);
			stop = !f->q_head;
			pthread_mutex_unlock(&f->q_mu);
			if (stop) {
				last_round(f);
				break;
			}
		}
	}
	return NULL;
}

void fleet_lag(struct fleet *f, struct fleet_lag *out)
{
	int64_t now = clock_mono_ms(), oldest, last;
	pthread_mutex_lock(&f->q_mu);
	oldest = __atomic_load_n(&f->lag_oldest, __ATOMIC_RELAXED);
	if (f->q_head && (!oldest || f->q_head->at < oldest))
		oldest = f->q_head->at;
	pthread_mutex_unlock(&f->q_mu);
	last = __atomic_load_n(&f->last_commit, __ATOMIC_RELAXED);
	out->lag_ms = oldest ? now - oldest : 0;
	out->since_commit_ms = last ? now - last : -1;
}

void fleet_store_stats(struct fleet *f, struct fleet_store_stats *out)
{
	out->rounds = __atomic_load_n(&f->rounds, __ATOMIC_RELAXED);
	out->batches = __atomic_load_n(&f->round_batches, __ATOMIC_RELAXED);
	out->snapshots = __atomic_load_n(&f->snapshots, __ATOMIC_RELAXED);
	out->snap_ms = __atomic_load_n(&f->snap_ms, __ATOMIC_RELAXED);
	out->snap_rounds = __atomic_load_n(&f->snap_rounds, __ATOMIC_RELAXED);
}

void fleet_store_submit(struct fleet *f, struct batch *b)
{
	b->next = NULL;
	b->at = clock_mono_ms();
	pthread_mutex_lock(&f->q_mu);
	if (f->stop) { /* closing: the writer may be gone */
		pthread_mutex_unlock(&f->q_mu);
		ota_error_set(OTA_ERROR, "the fleet is closing");
		b->done(b->ctx, OTA_ERROR);
		free(b);
		return;
	}
	*f->q_tail = b;
	f->q_tail = &b->next;
	f->q_n++;
	f->q_reports += b->n;
	pthread_cond_signal(&f->q_cond);
	pthread_mutex_unlock(&f->q_mu);
}

/* ---- loading ------------------------------------------------------------ */

static const char *col_intern(struct fleet *f, struct db_stmt *st, int col)
{
	const char *s = db_column_text(st, col);
	return fleet_intern(f, s ? s : "", s ? strlen(s) : 0);
}

/* A stored device row becomes the device's state (a later row of the same
 * device replaces an earlier one). */
static void load_row(struct fleet *f, const struct fleet_row *row)
{
	uint64_t h;
	struct shard *s;
	struct device *d;

	if (!row->id || !fleet_device_id_valid(row->id))
		return;
	h = fleet_fnv(row->id, strlen(row->id), FLEET_FNV_BASIS);
	s = fleet_shard(f, h);
	if (!(d = fleet_device_find_locked(s, row->id, h)))
		d = fleet_device_new_locked(f, s, row->id, h);
	d->product = row->product;
	d->hardware = row->hardware;
	d->bootloader = row->bootloader;
	if (fleet_xyz_parse(d->bootloader, d->bl) < 0)
		memset(d->bl, 0, sizeof(d->bl));
	d->counter = row->counter;
	d->last_seen = d->last_seen_written = row->last_seen;
	fleet_device_set_tags_locked(d, row->tags, row->ntags);
	d->version = row->version; /* `devices` is counted below */
	/* what devices named before counts towards the caps */
	fleet_admit_known(f, d->product, 0, 1);
	fleet_admit_known(f, d->hardware, 0, 1);
	fleet_admit_known(f, d->bootloader, 0, 1);
	fleet_admit_known(f, d->version, 0, 1);
	for (size_t t = 0; t < row->ntags; t++)
		fleet_admit_known(f, row->tags[t], 1, 1);
	memset(d->vf, 0, sizeof(d->vf));
	memcpy(d->vf, row->vf, (size_t)row->nvf * sizeof(row->vf[0]));
	d->seq = row->seq;
	d->seq_gaps = row->seq_gaps;
}

/* The layout before the snapshot: the devices table, then device_log in
 * rowid order, nine text columns a row. */
static int load_legacy_devices(struct fleet *f)
{
	int rc = 0;

	for (int pass = 0; pass < 2 && rc >= 0; pass++) {
		struct db_stmt *st = pass ? db_stmt(f->db, "SELECT " DEVICE_COLS " FROM device_log ORDER BY rowid")
					  : db_stmt(f->db, "SELECT " DEVICE_COLS " FROM devices");
		if (!st)
			return db_err(f, "read devices");
		while ((rc = db_step(st)) == 1) {
			const char *tags_text = db_column_text(st, 6);
			const char *flags_text = db_column_text(st, 7);
			struct fleet_row row;

			memset(&row, 0, sizeof(row));
			row.id = db_column_text(st, 0);
			row.product = col_intern(f, st, 1);
			row.hardware = col_intern(f, st, 2);
			row.bootloader = col_intern(f, st, 3);
			row.version = col_intern(f, st, 4);
			row.counter = db_column_int64(st, 5);
			row.last_seen = db_column_int64(st, 8);
			for (const char *p = tags_text ? tags_text : ""; *p && row.ntags < FLEET_MAX_TAGS;) {
				const char *nl = strchr(p, '\n');
				size_t len = nl ? (size_t)(nl - p) : strlen(p);
				row.tags[row.ntags++] = fleet_intern(f, p, len);
				p += len + (nl != NULL);
			}
			for (const char *p = flags_text ? flags_text : ""; *p && row.nvf < FLEET_NVFLAGS;) {
				const char *sp = strchr(p, ' ');
				char *end;
				if (!sp)
					break;
				row.vf[row.nvf].version = fleet_intern(f, p, (size_t)(sp - p));
				row.vf[row.nvf].flags = (uint32_t)strtoul(sp + 1, &end, 10);
				row.nvf++;
				p = *end == '\n' ? end + 1 : end;
				if (end == sp + 1)
					break;
			}
			load_row(f, &row);
		}
		db_reset(st);
	}
	return rc < 0 ? db_err(f, "read devices") : 0;
}

/* The one integer sql (a literal) answers, or dflt for no row or NULL. */
static int64_t query_int(struct fleet *f, const char *sql, int64_t dflt)
{
	struct db_stmt *st = db_stmt(f->db, sql);
	int64_t v = dflt;
	if (st && db_step(st) == 1 && db_column_type(st, 0) != DB_NULL)
		v = db_column_int64(st, 0);
	if (st)
		db_reset(st);
	return v;
}

/* The snapshot in use, then the log rows after it, in seq order.  Rows of
 * a snapshot that was being built when the daemon stopped are ignored
 * (and deleted when the next one starts). */
static int load_devices(struct fleet *f)
{
	int rc = 0;

	f->snap_gen = query_int(f, "SELECT value FROM fleet_meta WHERE key = 'snap_gen'", 0);
	f->snap_seq = query_int(f, "SELECT value FROM fleet_meta WHERE key = 'snap_seq'", 0);
	for (int pass = 0; pass < 2 && rc >= 0; pass++) {
		struct db_stmt *st = pass ? db_stmt(f->db, "SELECT rows, seq FROM dev_log WHERE seq > ? ORDER BY seq")
					  : db_stmt(f->db, "SELECT rows FROM dev_snap WHERE gen = ?");
		if (!st)
			return db_err(f, "read devices");
		db_bind_int64(st, 1, pass ? f->snap_seq : f->snap_gen);
		while ((rc = db_step(st)) == 1) {
			size_t n = 0;
			const void *p = db_column_blob(st, 0, &n);
			if ((rc = fleet_chunk_decode(f, p, n, load_row)) < 0) {
				db_reset(st);
				return rc;
			}
			*(pass ? &f->log_bytes : &f->snap_bytes) += (int64_t)n;
			if (pass)
				f->log_seq = db_column_int64(st, 1);
		}
		db_reset(st);
	}
	if (rc < 0)
		return db_err(f, "read devices");
	if (f->log_seq < f->snap_seq)
		f->log_seq = f->snap_seq;
	return 0;
}

/* Every device into a new snapshot, at once (the migration from the legacy
 * layout; the caller holds the transaction). */
static int snapshot_all(struct fleet *f)
{
	int rc;
	f->building = 1;
	f->build_shard = 0;
	f->build_seq = f->log_seq;
	f->build_bytes = f->build_log_bytes = 0;
	f->build_started = clock_mono_ms();
	f->build_rounds = 0;
	while (f->building && f->build_shard < FLEET_NSHARDS)
		if ((rc = flush_devices(f)) < 0)
			return rc;
	return 0;
}

/* The aggregates as last committed. */
static int load_aggs(struct fleet *f)
{
	struct db_stmt *st = db_stmt(f->db, "SELECT product, version, cohort, offered, downloads, installs, boot_ok,"
					    " boot_fail, reverts, reporting, crashed, crashes, device_hours, battery_mah"
					    " FROM aggs");
	int rc;

	if (!st)
		return db_err(f, "read aggregates");
	while ((rc = db_step(st)) == 1) {
		struct agg *a = fleet_agg_get(f, col_intern(f, st, 0), col_intern(f, st, 1), col_intern(f, st, 2));
		a->v.offered = db_column_int64(st, 3);
		a->v.downloads = db_column_int64(st, 4);
		a->v.installs = db_column_int64(st, 5);
		a->v.boot_ok = db_column_int64(st, 6);
		a->v.boot_fail = db_column_int64(st, 7);
		a->v.reverts = db_column_int64(st, 8);
		a->v.reporting = db_column_int64(st, 9);
		a->v.crashed = db_column_int64(st, 10);
		a->v.crashes = db_column_int64(st, 11);
		a->v.device_hours = db_column_double(st, 12);
		a->v.battery_mah = db_column_double(st, 13);
		a->c = a->v; /* what is on disk is committed */
	}
	db_reset(st);
	return rc < 0 ? db_err(f, "read aggregates") : 0;
}

static int load_registered(struct fleet *f)
{
	struct db_stmt *st = db_stmt(f->db, "SELECT id, gen FROM registered");
	int rc;

	if (!st)
		return db_err(f, "read registrations");
	while ((rc = db_step(st)) == 1) {
		const char *id = db_column_text(st, 0);
		uint64_t h;
		struct shard *s;
		struct reg *r;
		if (!id || !fleet_device_id_valid(id))
			continue;
		h = fleet_fnv(id, strlen(id), FLEET_FNV_BASIS);
		s = fleet_shard(f, h);
		if (!(r = fleet_reg_find_locked(s, id, h)))
			r = fleet_reg_new_locked(f, s, id, h);
		r->gen = (uint32_t)db_column_int64(st, 1);
	}
	db_reset(st);
	return rc < 0 ? db_err(f, "read registrations") : 0;
}

/* Does fleet.db still have the legacy layout's devices table?  Only a
 * SQLite file can (PostgreSQL's fleet store started with snapshots). */
static int has_legacy_tables(struct fleet *f)
{
	return db_backend(f->db) == DB_SQLITE &&
	       query_int(f, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'devices'", 0) > 0;
}

static int load(struct fleet *f)
{
	int rc, migrate = 0;

	if ((rc = load_aggs(f)) < 0)
		return rc;
	/* a fleet.db of the legacy layout is read that way once, then
	 * migrated below (unless the legacy layout was asked for) */
	if (!f->legacy)
		migrate = has_legacy_tables(f);
	if ((rc = (f->legacy || migrate) ? load_legacy_devices(f) : load_devices(f)) < 0 ||
	    (rc = load_registered(f)) < 0)
		return rc;
	{
		/* bounds start afresh: a device may claim one poll interval */
		int64_t now = clock_now_ms();
		for (int k = 0; k < FLEET_NSHARDS; k++)
			for (size_t i = 0; i < f->shards[k].nb; i++)
				for (struct device *d = f->shards[k].b[i]; d; d = d->next) {
					fleet_agg_add(f, d, d->version, offsetof(struct fleet_agg, devices), 1, 0);
					d->uptime_until = now - f->cfg_poll_ms;
				}
	}
	if (f->legacy) { /* start with an empty log */
		if (db_begin(f->db) < 0)
			return db_err(f, "begin");
		if ((rc = merge_log(f, -1)) < 0 || (db_commit(f->db) < 0 && (rc = db_err(f, "commit")) < 0))
			db_rollback(f->db);
	} else if (migrate) {
		/* the legacy rows become the first snapshot and go, in one
		 * transaction: a kill before its commit migrates again */
		if (db_begin(f->db) < 0)
			return db_err(f, "begin");
		if ((rc = snapshot_all(f)) < 0 || (rc = exec(f, "DROP TABLE devices; DROP TABLE IF EXISTS device_log")) < 0 ||
		    (db_commit(f->db) < 0 && (rc = db_err(f, "commit")) < 0)) {
			db_rollback(f->db);
			return rc;
		}
		publish_snapshot(f, 1);
	}
	return rc;
}

/* ---- open / close ------------------------------------------------------- */

static void fleet_free(struct fleet *f)
{
	for (int k = 0; k < FLEET_NSHARDS; k++) {
		struct shard *s = &f->shards[k];
		for (size_t i = 0; i < s->nb; i++) {
			struct device *d = s->b[i], *next;
			for (; d; d = next) {
				next = d->next;
				fleet_device_free_tags(d); /* d itself: fleet_nodes_free */
			}
		}
		free(s->b);
		fleet_reg_free_shard(s);
		pthread_mutex_destroy(&s->mu);
	}
	fleet_nodes_free(f);
	pthread_mutex_destroy(&f->slab_mu);
	for (struct agg *a = f->agg_all, *next; a; a = next) {
		next = a->all_next;
		free(a);
	}
	free(f->agg_b);
	for (size_t i = 0; i < f->intern.cap; i++)
		free(f->intern.slot[i]);
	free(f->intern.slot);
	fleet_exposures_free(f);
	free(f->written);
	db_close(f->db); /* and the statements cached on it */
	pthread_rwlock_destroy(&f->intern.lock);
	pthread_rwlock_destroy(&f->agg_lock);
	pthread_rwlock_destroy(&f->exp_lock);
	pthread_mutex_destroy(&f->agg_dirty_mu);
	pthread_mutex_destroy(&f->q_mu);
	pthread_cond_destroy(&f->q_cond);
	pthread_mutex_destroy(&f->reg_mu);
	fleet_auth_release(f);
	pthread_mutex_destroy(&f->mac_mu);
	pthread_rwlock_destroy(&f->adm_lock);
	free(f->adm);
	json_decref(f->tag_allow);
	free(f->db_path);
	free(f->stall_path);
	free(f->stall_aggs_path);
	if (f->fleet_key)
		OPENSSL_cleanse(f->fleet_key, f->fleet_key_len);
	OPENSSL_cleanse(f->secret, sizeof(f->secret));
	free(f->fleet_key);
	free(f);
}

/* Zeroed, aligned as its shards need (struct shard: cache lines). */
static struct fleet *fleet_alloc(void)
{
	void *p = NULL;
	if (posix_memalign(&p, _Alignof(struct fleet), sizeof(struct fleet)) != 0) {
		fputs("fatal: out of memory\n", stderr); /* as xcalloc */
		abort();
	}
	return memset(p, 0, sizeof(struct fleet));
}

/*
 * fleet.db's SQLite settings.  page_size (a new file only): every commit
 * rewrites a few pages (the log's last leaf, the aggregates, the header),
 * each a WAL frame fsynced with the commit: 1 KB each rather than 4 KB.
 * checkpoint_bytes: a checkpoint every 32 MB of WAL, so such a page is
 * copied to the database once per checkpoint rather than once per MB.
 * secure_delete=FAST: see the top of this file.  PostgreSQL ignores them:
 * its server's configuration governs pages and checkpoints.
 */
static const struct db_sqlite_tuning k_tuning = {
	.page_size = 1024,
	.checkpoint_bytes = 32 << 20,
	.cache_kib = 32768,
	.mmap_bytes = 268435456,
	.secure_delete_fast = 1,
};

/* cfg->db_path as the storage layer's URL: a plain path is a SQLite file */
char *fleet_db_url(const char *path)
{
	if (strncmp(path, "sqlite:", 7) == 0 || strncmp(path, "postgres://", 11) == 0 ||
	    strncmp(path, "postgresql://", 13) == 0)
		return xstrdup(path);
	return xasprintf("sqlite:%s", path);
}

/* store_sync_pragma()'s choice (FULL unless otacd was told otherwise) */
static unsigned fleet_db_flags(void)
{
	return strstr(store_sync_pragma(), "NORMAL") ? DB_SYNC_NORMAL : 0;
}

int fleet_db_open(struct db **out, const char *url)
{
	return db_open_tuned(out, url, fleet_db_flags(), &k_tuning);
}

int fleet_open(struct fleet **out, const struct fleet_config *cfg)
{
	struct fleet *f = fleet_alloc();
	int rc = 0;

	*out = NULL;
	pthread_rwlock_init(&f->intern.lock, NULL);
	pthread_rwlock_init(&f->agg_lock, NULL);
	pthread_rwlock_init(&f->exp_lock, NULL);
	pthread_mutex_init(&f->agg_dirty_mu, NULL);
	pthread_mutex_init(&f->q_mu, NULL);
	pthread_mutex_init(&f->slab_mu, NULL);
	pthread_cond_init(&f->q_cond, NULL);
	for (int k = 0; k < FLEET_NSHARDS; k++)
		pthread_mutex_init(&f->shards[k].mu, NULL);
	f->q_tail = &f->q_head;
	if (cfg->fleet_key && *cfg->fleet_key) {
		f->fleet_key = xstrdup(cfg->fleet_key);
		f->fleet_key_len = strlen(cfg->fleet_key);
	}
	f->cfg_poll_ms = cfg->poll_ms > 0 ? cfg->poll_ms : 6 * 3600 * 1000LL;
	f->star = fleet_intern(f, "*", 1);
	pthread_mutex_init(&f->reg_mu, NULL);
	pthread_mutex_init(&f->mac_mu, NULL);
	pthread_rwlock_init(&f->adm_lock, NULL);
	f->reg_rate = cfg->register_rate > 0 ? cfg->register_rate : 10.0;
	f->reg_burst = cfg->register_burst > 0 ? (double)cfg->register_burst : 10000.0;
	f->reg_tokens = f->reg_burst;
	f->reg_at = clock_mono_ms();
	f->tag_cap = cfg->tag_cap > 0 ? cfg->tag_cap : 256;
	f->name_cap = cfg->name_cap > 0 ? cfg->name_cap : 1024;
	if (cfg->tag_allow && json_object_size(cfg->tag_allow))
		f->tag_allow = json_deep_copy(cfg->tag_allow);
	if (cfg->device_secret) {
		size_t n = strlen(cfg->device_secret);
		if (n < 2 * sizeof(f->secret)) {
			rc = ota_error_set(OTA_EINVAL, "fleet: the device secret must be at least %zu hex characters",
					   2 * sizeof(f->secret));
			goto out;
		}
		/* the secret's text is the key material: hash it to the key size
		 * (ota_sha256: no OpenSSL provider at start, common/sha256.h) */
		ota_sha256(cfg->device_secret, n, f->secret);
		f->has_secret = 1;
	}

	if (!cfg->db_path) {
		rc = ota_error_set(OTA_EINVAL, "fleet: no database path");
		goto out;
	}
	f->db_path = fleet_db_url(cfg->db_path);
	{
		/* knobs for tests and benchmarks (docs/update-server.md) */
		const char *layout = getenv("OTACD_FLEET_LAYOUT"), *min = getenv("OTACD_FLEET_COMPACT_BYTES");
		const char *round = getenv("OTACD_FLEET_SNAPSHOT_ROUND"), *pace = getenv("OTACD_FLEET_ROUND_MS"), *stall;
		f->legacy = layout && strcmp(layout, "legacy") == 0;
		f->compact_min = COMPACT_MIN_BYTES;
		f->compact_ratio = COMPACT_RATIO;
		if (min && atoll(min) > 0) { /* a snapshot whenever the log has that many bytes */
			f->compact_min = atoll(min);
			f->compact_ratio = 0;
		}
		f->snap_round = round && atoll(round) > 0 ? atoll(round) : SNAP_ROUND_DEVICES;
		f->round_ms = pace && *pace ? atoll(pace) : FLEET_ROUND_MS;   /* 0: no pacing */
		if ((stall = getenv("OTACD_TEST_FLEET_STALL_FILE")) && *stall)   /* tests only (test_stall) */
			f->stall_path = xstrdup(stall);
		if ((stall = getenv("OTACD_TEST_FLEET_STALL_AGGS_FILE")) && *stall) /* tests only (round_commit) */
			f->stall_aggs_path = xstrdup(stall);
	}
	if ((rc = fleet_db_open(&f->db, f->db_path)) < 0) {
		rc = ota_error_set(rc, "fleet.db: %s", ota_error_last());
		goto out;
	}
	if (f->legacy && db_backend(f->db) != DB_SQLITE) {
		rc = ota_error_set(OTA_EINVAL, "fleet.db: OTACD_FLEET_LAYOUT=legacy is SQLite only");
		goto out;
	}
	if ((rc = db_migrate(f->db, migrations, OTA_ARRAY_SIZE(migrations))) < 0) {
		rc = ota_error_set(rc, "fleet.db: %s", ota_error_last());
		goto out;
	}
	if (f->legacy && (rc = exec(f, legacy_schema)) < 0)
		goto out;
	if ((rc = load(f)) < 0)
		goto out;
	if (pthread_create(&f->writer, NULL, writer_main, f) != 0) {
		rc = ota_error_set(OTA_ERROR, "fleet: cannot start the writer thread");
		goto out;
	}
	*out = f;
	f = NULL;
out:
	if (f)
		fleet_free(f);
	return rc;
}

void fleet_close(struct fleet *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->q_mu);
	f->stop = 1;
	pthread_cond_signal(&f->q_cond);
	pthread_mutex_unlock(&f->q_mu);
	pthread_join(f->writer, NULL);
	fleet_free(f);
}

/* ---- the registration audit trail --------------------------------------- */

json_t *fleet_registrations(struct fleet *f, int limit)
{
	struct db *db = NULL;
	struct db_stmt *st;
	json_t *batches = json_array(), *o;
	int64_t total = 0, refused, devices = 0;

	/* a connection of its own: the writer owns f->db (WAL lets both read) */
	if (db_open(&db, f->db_path, DB_READONLY) == 0) {
		if ((st = db_stmt(db, "SELECT coalesce(sum(count), 0) FROM registrations")) && db_step(st) == 1)
			total = db_column_int64(st, 0);
		if ((st = db_stmt(db, "SELECT at, count, first, last, peer FROM registrations ORDER BY id DESC LIMIT ?"))) {
			db_bind_int64(st, 1, limit);
			while (db_step(st) == 1)
				json_array_append_new(batches, json_pack("{sI sI ss ss ss}", "at", (json_int_t)db_column_int64(st, 0),
									 "count", (json_int_t)db_column_int64(st, 1),
									 "first", db_column_text(st, 2),
									 "last", db_column_text(st, 3),
									 "peer", db_column_text(st, 4)));
		}
	}
	db_close(db);
	for (int k = 0; k < FLEET_NSHARDS; k++) {
		pthread_mutex_lock(&f->shards[k].mu);
		devices += (int64_t)f->shards[k].rn;
		pthread_mutex_unlock(&f->shards[k].mu);
	}
	pthread_mutex_lock(&f->reg_mu);
	refused = f->reg_refused;
	pthread_mutex_unlock(&f->reg_mu);
	o = json_pack("{sI sI sI so}", "devices", (json_int_t)devices, "total", (json_int_t)total, "refused",
		      (json_int_t)refused, "batches", batches);
	return o;
}
