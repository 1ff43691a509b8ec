/*
 * diskguard.c - the state directory's free space; see diskguard.h.
 *
 * Why: with the state directory on a full disk, every SQLite COMMIT fails.
 * Before this module the engine retried its failing commit as fast as its
 * callers came (agents' heartbeats and logs), logged every failure, and
 * triggers got a bare 500.  Now the first failure (or free space below the
 * reserve) turns the process `low`: new work is refused with 507, logs
 * are cut, the reserve file is given back so running jobs can finish, and
 * the log says so once, then at most once a minute.
 *
 * How: the state is a few atomics read by any thread; transitions (which
 * touch the reserve file and log) happen under one mutex.  Free space comes
 * from statvfs(2), at most once a second.
 */
#include "diskguard.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "../common/log.h"
#include "clock.h"

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char *g_dir, *g_reserve_path;
static int64_t g_reserve;
static atomic_int g_low, g_reserve_held;
static atomic_int_fast64_t g_low_since, g_free, g_last_poll, g_backoff;
static atomic_uint_fast64_t g_failures, g_episodes;
/* under g_lock: failures since the last log line and when that was */
static uint64_t g_unlogged;
static int64_t g_logged_at;
static char g_what[64];

static int64_t free_bytes(void)
{
	struct statvfs sv;
	if (!g_dir || statvfs(g_dir, &sv) < 0)
		return -1;
	return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

/* Make the reserve file (under g_lock).  A filesystem without room for it
 * is already low. */
static int reserve_make(void)
{
	int fd, rc;

	if (!g_reserve || atomic_load(&g_reserve_held))
		return 0;
	fd = open(g_reserve_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return ota_error_set(OTA_ERROR, "cannot create %s: %s", g_reserve_path, strerror(errno));
	rc = posix_fallocate(fd, 0, (off_t)g_reserve);
	close(fd);
	if (rc != 0) {
		unlink(g_reserve_path);
		return ota_error_set(OTA_ERROR, "cannot reserve %" PRId64 " bytes in %s: %s", g_reserve,
				     g_reserve_path, strerror(rc));
	}
	atomic_store(&g_reserve_held, 1);
	return 0;
}

static void reserve_give_back(void)
{
	if (!atomic_load(&g_reserve_held))
		return;
	unlink(g_reserve_path);
	atomic_store(&g_reserve_held, 0);
}

/* Enter `low` (under g_lock). */
static void enter_low(const char *why)
{
	int64_t was_free = atomic_load(&g_free);
	if (atomic_load(&g_low))
		return;
	snprintf(g_what, sizeof(g_what), "%s", why);
	atomic_store(&g_low_since, clock_real_ms());
	atomic_store(&g_low, 1);
	atomic_fetch_add(&g_episodes, 1);
	reserve_give_back();
	g_logged_at = clock_real_ms();
	g_unlogged = 0;
	ota_log(OTA_LOG_WARN,
		"disk: the state directory %s is full (%s; %" PRId64 " bytes were free): new runs, triggers and"
		" uploads are refused with 507 and job logs are cut until space is freed; the %" PRId64
		"-byte reserve was given back so running jobs can finish",
		g_dir, why, was_free < 0 ? 0 : was_free, g_reserve);
}

/* Leave `low` once twice the reserve (at least 1 MiB) is free (under
 * g_lock). */
static void maybe_leave_low(int64_t avail)
{
	int64_t need = 2 * g_reserve > (1 << 20) ? 2 * g_reserve : (1 << 20);
	if (!atomic_load(&g_low) || avail < need)
		return;
	if (reserve_make() < 0) {
		ota_log(OTA_LOG_WARN, "disk: %s", ota_error_last());
		return;
	}
	atomic_store(&g_low, 0);
	atomic_store(&g_low_since, 0);
	atomic_store(&g_backoff, 0);
	ota_log(OTA_LOG_INFO, "disk: space is back (%" PRId64 " bytes free in %s): taking new work again", avail,
		g_dir);
}

int diskguard_init(const char *state_dir, int64_t reserve_bytes)
{
	pthread_mutex_lock(&g_lock);
	free(g_dir);
	free(g_reserve_path);
	g_dir = xstrdup(state_dir);
	g_reserve_path = xasprintf("%s/disk.reserve", state_dir);
	g_reserve = reserve_bytes > 0 ? reserve_bytes : 0;
	if (reserve_bytes < 0) {
		/* the default: 64 MiB, but no more than a sixteenth of a
		 * small filesystem */
		struct statvfs sv;
		int64_t size = statvfs(state_dir, &sv) == 0 ? (int64_t)sv.f_blocks * (int64_t)sv.f_frsize : 0;
		g_reserve = DISKGUARD_DEFAULT_RESERVE;
		if (size > 0 && size / 16 < g_reserve)
			g_reserve = size / 16;
	}
	atomic_store(&g_low, 0);
	atomic_store(&g_reserve_held, 0);
	atomic_store(&g_last_poll, 0);
	/* a reserve left by the last run is ours again */
	unlink(g_reserve_path);
	atomic_store(&g_free, free_bytes());
	if (reserve_make() < 0) {
		ota_log(OTA_LOG_WARN, "disk: %s", ota_error_last());
		enter_low("no room for the reserve");
	}
	pthread_mutex_unlock(&g_lock);
	return 0;
}

void diskguard_shutdown(void)
{
	pthread_mutex_lock(&g_lock);
	free(g_dir);
	free(g_reserve_path);
	g_dir = g_reserve_path = NULL;
	atomic_store(&g_low, 0);
	pthread_mutex_unlock(&g_lock);
}

void diskguard_note_failure(const char *what)
{
	int64_t now = clock_real_ms();

	atomic_fetch_add(&g_failures, 1);
	pthread_mutex_lock(&g_lock);
	if (!atomic_load(&g_low)) {
		atomic_store(&g_free, free_bytes());
		enter_low(what);
	} else {
		g_unlogged++;
		if (now - g_logged_at >= DISKGUARD_LOG_EVERY_MS) {
			ota_log(OTA_LOG_WARN, "disk: still full (%s): %" PRIu64 " writes failed for want of space in the last %"
				PRId64 " s", what, g_unlogged, (now - g_logged_at) / 1000);
			g_logged_at = now;
			g_unlogged = 0;
		}
	}
	{
		int64_t b = atomic_load(&g_backoff);
		atomic_store(&g_backoff, b ? (b * 2 > 30000 ? 30000 : b * 2) : 1000);
	}
	pthread_mutex_unlock(&g_lock);
}

int diskguard_poll(void)
{
	int64_t now = clock_real_ms(), last = atomic_load(&g_last_poll), avail;

	if (!g_dir || now - last < 1000 || !atomic_compare_exchange_strong(&g_last_poll, &last, now))
		return atomic_load(&g_low);
	pthread_mutex_lock(&g_lock);
	avail = free_bytes();
	if (avail >= 0) {
		atomic_store(&g_free, avail);
		if (!atomic_load(&g_low) && g_reserve && avail < g_reserve / 4)
			enter_low("free space fell below a quarter of the reserve");
		else
			maybe_leave_low(avail);
	}
	pthread_mutex_unlock(&g_lock);
	return atomic_load(&g_low);
}

int diskguard_low(void)
{
	return atomic_load(&g_low);
}

int64_t diskguard_backoff_ms(void)
{
	int64_t b = atomic_load(&g_backoff);
	return b ? b : 1000;
}

void diskguard_message(char *out, size_t n)
{
	if (!atomic_load(&g_low)) {
		snprintf(out, n, "%s", "");
		return;
	}
	pthread_mutex_lock(&g_lock);
	snprintf(out, n, "the state directory's disk is full (%s): otacd takes no new work until space is freed in %s",
		 g_what, g_dir ? g_dir : "?");
	pthread_mutex_unlock(&g_lock);
}

void diskguard_stats(struct diskguard_stats *out)
{
	out->low = atomic_load(&g_low);
	out->low_since_ms = atomic_load(&g_low_since);
	out->free_bytes = atomic_load(&g_free);
	out->reserve_bytes = g_reserve;
	out->reserve_held = atomic_load(&g_reserve_held);
	out->failures = atomic_load(&g_failures);
	out->episodes = atomic_load(&g_episodes);
}
