/*
 * clock.c - scaled otacd time and real time; see clock.h for why two.
 */
#include "clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

/*
 * The anchor, read by every thread and set again at runtime on a
 * follower (it adopts the leader's clock row, docs/scale.md): a seqlock.
 * clock_init() writes under g_write (odd g_seq while it does); a reader
 * copies the three fields and tries again when g_seq moved meanwhile.
 */
static pthread_mutex_t g_write = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint g_seq;
static _Atomic double g_scale = 1.0;
static atomic_int_least64_t g_anchor_real;
static atomic_int_least64_t g_anchor_otacd;

struct anchor {
	double scale;
	int64_t real, otacd;
};

static struct anchor anchor_get(void)
{
	struct anchor a;
	unsigned seq;

	do {
		while ((seq = atomic_load_explicit(&g_seq, memory_order_acquire)) & 1)
			;
		a.scale = atomic_load_explicit(&g_scale, memory_order_relaxed);
		a.real = atomic_load_explicit(&g_anchor_real, memory_order_relaxed);
		a.otacd = atomic_load_explicit(&g_anchor_otacd, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
	} while (atomic_load_explicit(&g_seq, memory_order_relaxed) != seq);
	return a;
}

static int64_t ts_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void clock_init(double scale, int64_t anchor_real_ms, int64_t anchor_otacd_ms)
{
	pthread_mutex_lock(&g_write);
	atomic_fetch_add_explicit(&g_seq, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&g_scale, scale > 0 ? scale : 1.0, memory_order_relaxed);
	atomic_store_explicit(&g_anchor_real, anchor_real_ms, memory_order_relaxed);
	atomic_store_explicit(&g_anchor_otacd, anchor_otacd_ms, memory_order_relaxed);
	atomic_fetch_add_explicit(&g_seq, 1, memory_order_release);
	pthread_mutex_unlock(&g_write);
}

double clock_scale(void)
{
	return anchor_get().scale;
}

void clock_anchor(double *scale, int64_t *anchor_real_ms, int64_t *anchor_otacd_ms)
{
	struct anchor a = anchor_get();
	*scale = a.scale;
	*anchor_real_ms = a.real;
	*anchor_otacd_ms = a.otacd;
}

int64_t clock_real_ms(void)
{
	return ts_ms(CLOCK_REALTIME);
}

int64_t clock_mono_ms(void)
{
	return ts_ms(CLOCK_MONOTONIC);
}

static int64_t now_at(const struct anchor *a)
{
	if (a->scale == 1.0 && a->real == a->otacd)
		return clock_real_ms();
	return a->otacd + (int64_t)((double)(clock_real_ms() - a->real) * a->scale);
}

int64_t clock_now_ms(void)
{
	struct anchor a = anchor_get();
	return now_at(&a);
}

int64_t clock_real_delay_ms(int64_t deadline)
{
	struct anchor a = anchor_get();
	int64_t now = now_at(&a);
	if (deadline <= now)
		return 0;
	/* round up so we never wake just before the deadline */
	return (int64_t)((double)(deadline - now) / a.scale) + 1;
}

void clock_format(char out[32], int64_t ms)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + 19, 13, ".%03dZ", (int)(ms % 1000));
}
