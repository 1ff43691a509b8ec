/*
 * fleet_rows.c - the compact encoding of device rows in fleet.db (the
 * layout that stores them is described in fleet_store.c's header).
 *
 * A chunk is one BLOB holding the rows of many devices, about 20-30 bytes
 * each instead of ~150 as nine text columns:
 *
 *   byte    format (2; 1 is read too)
 *   varint  nstrings, then each: varint length, bytes
 *           (a table local to the chunk: product, hardware, bootloader,
 *           versions and tags are written once per chunk, then by index)
 *   varint  ndevices, then each device:
 *     varint  bytes shared with the previous id, varint suffix length, suffix
 *     varint  product, hardware, bootloader, version (string indexes)
 *     varint  security counter (zigzag)
 *     varint  last_seen minus the previous device's (zigzag)
 *     varint  ntags, then each tag's string index
 *     varint  number of version flags, then each: version index, flags
 *     varint  the highest report seq applied, then its window's gaps
 *             (fleet_seq_mark; 0 for a device that sends in order) (format
 *             2 only; format 1 rows, written before report seq existed,
 *             load with 0, 0: their reports carried none)
 *
 * Varints are LEB128.  Decoding checks every length against the chunk and
 * refuses a chunk that does not parse exactly (fleet_chunk_decode < 0).
 *
 * Also here, the other rows a round writes in bulk: `registered`, one
 * statement per id on SQLite and 8,192 ids a statement on PostgreSQL (the
 * one place in the fleet that tells the backends apart; see below).
 */
#include "fleet_int.h"

#include <string.h>

#define CHUNK_FORMAT 2
#define CHUNK_FORMAT_NOSEQ 1 /* before report seq */
#define ID_MAX 64   /* fleet_device_id_valid */

static void put_varint(struct buf *b, uint64_t v)
{
	unsigned char tmp[10];
	size_t n = 0;
	do {
		tmp[n] = (unsigned char)(v & 0x7f);
		v >>= 7;
		if (v)
			tmp[n] |= 0x80;
		n++;
	} while (v);
	buf_put(b, tmp, n);
}

static uint64_t zigzag(int64_t v)
{
	return v < 0 ? ~((uint64_t)v << 1) : (uint64_t)v << 1;
}

static int64_t unzigzag(uint64_t v)
{
	return v & 1 ? (int64_t)~(v >> 1) : (int64_t)(v >> 1);
}

void fleet_chunk_init(struct fleet_chunk *c)
{
	memset(c, 0, sizeof(*c));
	buf_init(&c->str, BUF_NOLIMIT);
	buf_init(&c->dev, BUF_NOLIMIT);
}

void fleet_chunk_release(struct fleet_chunk *c)
{
	buf_release(&c->str);
	buf_release(&c->dev);
	free(c->keys);
	free(c->idx);
	memset(c, 0, sizeof(*c));
}

static void chunk_reset(struct fleet_chunk *c)
{
	buf_clear(&c->str);
	buf_clear(&c->dev);
	if (c->keys)
		memset(c->keys, 0, c->cap * sizeof(*c->keys));
	c->nstr = 0;
	c->ndev = 0;
	c->prev_id = NULL;
	c->prev_seen = 0;
}

/* The chunk-local index of an interned string (pointer equality is string
 * equality), adding it to the table when new. */
static uint64_t str_index(struct fleet_chunk *c, const char *s)
{
	size_t i;
	if (!s)
		s = "";
	if (2 * (c->nstr + 1) > c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 64;
		const char **keys = xcalloc(cap, sizeof(*keys));
		uint32_t *idx = xcalloc(cap, sizeof(*idx));
		for (size_t k = 0; k < c->cap; k++) {
			if (!c->keys[k])
				continue;
			for (i = ((uintptr_t)c->keys[k] >> 4) & (cap - 1); keys[i]; i = (i + 1) & (cap - 1))
				;
			keys[i] = c->keys[k];
			idx[i] = c->idx[k];
		}
		free(c->keys);
		free(c->idx);
		c->keys = keys;
		c->idx = idx;
		c->cap = cap;
	}
	for (i = ((uintptr_t)s >> 4) & (c->cap - 1); c->keys[i]; i = (i + 1) & (c->cap - 1))
		if (c->keys[i] == s)
			return c->idx[i];
	c->keys[i] = s;
	c->idx[i] = (uint32_t)c->nstr;
	put_varint(&c->str, strlen(s));
	buf_puts(&c->str, s);
	return c->nstr++;
}

void fleet_chunk_add(struct fleet_chunk *c, const struct device *d)
{
	size_t shared = 0, len = strlen(d->id);
	int nvf = 0;

	if (c->prev_id)
		while (c->prev_id[shared] && c->prev_id[shared] == d->id[shared])
			shared++;
	put_varint(&c->dev, shared);
	put_varint(&c->dev, len - shared);
	buf_put(&c->dev, d->id + shared, len - shared);
	put_varint(&c->dev, str_index(c, d->product));
	put_varint(&c->dev, str_index(c, d->hardware));
	put_varint(&c->dev, str_index(c, d->bootloader));
	put_varint(&c->dev, str_index(c, d->version));
	put_varint(&c->dev, zigzag(d->counter));
	put_varint(&c->dev, zigzag(d->last_seen - c->prev_seen));
	put_varint(&c->dev, d->ntags);
	for (size_t i = 0; i < d->ntags; i++)
		put_varint(&c->dev, str_index(c, d->tags[i]));
	for (int i = 0; i < FLEET_NVFLAGS; i++)
		nvf += d->vf[i].version != NULL;
	put_varint(&c->dev, (uint64_t)nvf);
	for (int i = 0; i < FLEET_NVFLAGS; i++)
		if (d->vf[i].version) {
			put_varint(&c->dev, str_index(c, d->vf[i].version));
			put_varint(&c->dev, d->vf[i].flags);
		}
	put_varint(&c->dev, d->seq);
	put_varint(&c->dev, d->seq_gaps);
	c->prev_id = d->id;   /* devices live until fleet_close */
	c->prev_seen = d->last_seen;
	c->ndev++;
}

void fleet_chunk_finish(struct fleet_chunk *c, struct buf *out)
{
	buf_clear(out);
	buf_putc(out, CHUNK_FORMAT);
	put_varint(out, c->nstr);
	buf_put(out, c->str.ptr ? c->str.ptr : "", c->str.len);
	put_varint(out, c->ndev);
	buf_put(out, c->dev.ptr ? c->dev.ptr : "", c->dev.len);
	chunk_reset(c);
}

struct reader {
	const unsigned char *p, *end;
	int bad;
};

static uint64_t get_varint(struct reader *r)
{
	uint64_t v = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (r->p >= r->end)
			break;
		unsigned char b = *r->p++;
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
	}
	r->bad = 1;
	return 0;
}

static const char *get_str(struct reader *r, const char **tab, size_t n)
{
	uint64_t i = get_varint(r);
	if (i >= n) {
		r->bad = 1;
		return NULL;
	}
	return tab[i];
}

static int damaged(void)
{
	return ota_error_set(OTA_ERROR, "fleet.db: a damaged device chunk");
}

int fleet_chunk_decode(struct fleet *f, const void *p, size_t n, void (*fn)(struct fleet *f, const struct fleet_row *row))
{
	struct reader r = { p, (const unsigned char *)p + n, 0 };
	const char **tab = NULL;
	struct fleet_row row;
	uint64_t nstr, ndev;
	char id[ID_MAX + 1];
	size_t idlen = 0;
	int64_t seen = 0;
	int rc = 0, format;

	if (n < 1 || ((format = *r.p++) != CHUNK_FORMAT && format != CHUNK_FORMAT_NOSEQ))
		return ota_error_set(OTA_ERROR, "fleet.db: a device chunk of an unknown format");
	nstr = get_varint(&r);
	if (r.bad || nstr > (uint64_t)(r.end - r.p)) {
		rc = damaged();
		goto out;
	}
	tab = xcalloc(nstr ? nstr : 1, sizeof(*tab));
	for (uint64_t i = 0; i < nstr; i++) {
		uint64_t len = get_varint(&r);
		/* a NUL inside would make the interned string shorter than
		 * its length (fuzz_rows found it) */
		if (r.bad || len > (uint64_t)(r.end - r.p) || memchr(r.p, 0, len)) {
			rc = damaged();
			goto out;
		}
		tab[i] = fleet_intern(f, (const char *)r.p, len);
		r.p += len;
	}
	ndev = get_varint(&r);
	for (uint64_t k = 0; k < ndev && !r.bad; k++) {
		uint64_t shared = get_varint(&r), suffix = get_varint(&r), nt, nv;
		if (r.bad || shared > idlen || suffix > ID_MAX - shared || suffix > (uint64_t)(r.end - r.p)) {
			rc = damaged();
			goto out;
		}
		memcpy(id + shared, r.p, suffix);
		r.p += suffix;
		idlen = shared + suffix;
		id[idlen] = '\0';
		memset(&row, 0, sizeof(row));
		row.id = id;
		row.product = get_str(&r, tab, nstr);
		row.hardware = get_str(&r, tab, nstr);
		row.bootloader = get_str(&r, tab, nstr);
		row.version = get_str(&r, tab, nstr);
		row.counter = unzigzag(get_varint(&r));
		/* unsigned: a damaged delta may not overflow (fuzz_rows) */
		seen = (int64_t)((uint64_t)seen + (uint64_t)unzigzag(get_varint(&r)));
		row.last_seen = seen;
		nt = get_varint(&r);
		if (r.bad || nt > FLEET_MAX_TAGS) {
			rc = damaged();
			goto out;
		}
		for (uint64_t i = 0; i < nt; i++)
			row.tags[row.ntags++] = get_str(&r, tab, nstr);
		nv = get_varint(&r);
		if (r.bad || nv > FLEET_NVFLAGS) {
			rc = damaged();
			goto out;
		}
		for (uint64_t i = 0; i < nv; i++) {
			row.vf[i].version = get_str(&r, tab, nstr);
			row.vf[i].flags = (uint32_t)get_varint(&r);
		}
		row.nvf = (int)nv;
		if (format >= CHUNK_FORMAT) {
			row.seq = get_varint(&r);
			row.seq_gaps = get_varint(&r);
		}
		if (r.bad) {
			rc = damaged();
			goto out;
		}
		fn(f, &row);
	}
	if (r.bad || r.p != r.end)
		rc = damaged();
out:
	free(tab);
	return rc;
}

/* ---- `registered` rows ---------------------------------------------------
 *
 * A round's registrations upsert one row per id.  SQLite runs the prepared
 * upsert once per row: a call into the library, no round trip.  On
 * PostgreSQL that is one round trip per id (registering 10M devices took
 * 528 s against SQLite's 22: docs/benchmarks.md), so there the rows go
 * FLEET_REG_CHUNK at a time as three arrays bound as parameters (text in
 * PostgreSQL's array syntax), unnested into one INSERT ... SELECT.  One
 * statement may not touch a row twice (ON CONFLICT DO UPDATE refuses), so
 * DISTINCT ON keeps each id's highest generation, its last row: the rows
 * end exactly as the loop leaves them.  Chunks run in order, so a later
 * chunk's row of an id wins, as it would one by one. */

void fleet_regrows_add(struct fleet_regrows *r, const char *id, int64_t gen, int64_t at)
{
	if (r->n == r->cap) {
		r->cap = r->cap ? 2 * r->cap : 1024;
		r->ids = xrealloc(r->ids, r->cap * sizeof(*r->ids));
		r->gens = xrealloc(r->gens, r->cap * sizeof(*r->gens));
		r->at = xrealloc(r->at, r->cap * sizeof(*r->at));
	}
	r->ids[r->n] = id;
	r->gens[r->n] = gen;
	r->at[r->n] = at;
	r->n++;
}

void fleet_regrows_release(struct fleet_regrows *r)
{
	free(r->ids);
	free(r->gens);
	free(r->at);
	memset(r, 0, sizeof(*r));
}

static int regrows_fail(struct db *db)
{
	return ota_error_set(OTA_ERROR, "fleet.db: register: %s", db_errmsg(db));
}

static int regrows_write_each(struct db *db, const struct fleet_regrows *r)
{
	for (size_t i = 0; i < r->n; i++) {
		struct db_stmt *st = db_stmt(db, "INSERT INTO registered(id, gen, at) VALUES(?, ?, ?)"
						 " ON CONFLICT(id) DO UPDATE SET gen = excluded.gen, at = excluded.at");
		if (!st)
			return regrows_fail(db);
		db_bind_text(st, 1, r->ids[i]);
		db_bind_int64(st, 2, r->gens[i]);
		db_bind_int64(st, 3, r->at[i]);
		if (db_run(st) < 0)
			return regrows_fail(db);
	}
	return 0;
}

/* v[0..n) as a PostgreSQL text[] literal: every element quoted, " and \
 * escaped (ids are [A-Za-z0-9._:-]: nothing to escape, but the literal does
 * not rely on it). */
static void text_array(struct buf *b, const char *const *v, size_t n)
{
	buf_clear(b);
	buf_putc(b, '{');
	for (size_t i = 0; i < n; i++) {
		if (i)
			buf_putc(b, ',');
		buf_putc(b, '"');
		for (const char *p = v[i]; *p; p++) {
			if (*p == '"' || *p == '\\')
				buf_putc(b, '\\');
			buf_putc(b, *p);
		}
		buf_putc(b, '"');
	}
	buf_putc(b, '}');
}

static void int_array(struct buf *b, const int64_t *v, size_t n)
{
	buf_clear(b);
	buf_putc(b, '{');
	for (size_t i = 0; i < n; i++)
		buf_printf(b, i ? ",%lld" : "%lld", (long long)v[i]);
	buf_putc(b, '}');
}

static int regrows_write_arrays(struct db *db, const struct fleet_regrows *r)
{
	struct buf ids = BUF_INIT, gens = BUF_INIT, at = BUF_INIT;
	int rc = 0;

	for (size_t i = 0; i < r->n && rc == 0; i += FLEET_REG_CHUNK) {
		size_t k = r->n - i < FLEET_REG_CHUNK ? r->n - i : FLEET_REG_CHUNK;
		struct db_stmt *st = db_stmt(db, "INSERT INTO registered(id, gen, at)"
						 " SELECT DISTINCT ON (id) id, gen, at"
						 " FROM unnest(?1::text[], ?2::bigint[], ?3::bigint[]) AS u(id, gen, at)"
						 " ORDER BY id, gen DESC"
						 " ON CONFLICT(id) DO UPDATE SET gen = excluded.gen, at = excluded.at");
		if (!st) {
			rc = regrows_fail(db);
			break;
		}
		text_array(&ids, r->ids + i, k);
		int_array(&gens, r->gens + i, k);
		int_array(&at, r->at + i, k);
		db_bind_text_n(st, 1, ids.ptr, ids.len);
		db_bind_text_n(st, 2, gens.ptr, gens.len);
		db_bind_text_n(st, 3, at.ptr, at.len);
		if (db_run(st) < 0)
			rc = regrows_fail(db);
	}
	buf_release(&ids);
	buf_release(&gens);
	buf_release(&at);
	return rc;
}

int fleet_regrows_write(struct db *db, const struct fleet_regrows *r)
{
	return db_backend(db) == DB_POSTGRES ? regrows_write_arrays(db, r) : regrows_write_each(db, r);
}
