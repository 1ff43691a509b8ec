/*
 * clock.c - scaled otacd time and real time; see clock.h for why two.
 */
#include "clock.h"

#include <stdio.h>
#include <time.h>

static double g_scale = 1.0;
static int64_t g_anchor_real;
static int64_t g_anchor_otacd;

static int64_t ts_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void clock_init(double scale, int64_t anchor_real_ms, int64_t anchor_otacd_ms)
{
	g_scale = scale > 0 ? scale : 1.0;
	g_anchor_real = anchor_real_ms;
	g_anchor_otacd = anchor_otacd_ms;
}

double clock_scale(void)
{
	return g_scale;
}

int64_t clock_real_ms(void)
{
	return ts_ms(CLOCK_REALTIME);
}

int64_t clock_mono_ms(void)
{
	return ts_ms(CLOCK_MONOTONIC);
}

int64_t clock_now_ms(void)
{
	if (g_scale == 1.0 && g_anchor_real == g_anchor_otacd)
		return clock_real_ms();
	return g_anchor_otacd + (int64_t)((double)(clock_real_ms() - g_anchor_real) * g_scale);
}

int64_t clock_real_delay_ms(int64_t deadline)
{
	int64_t now = clock_now_ms();
	if (deadline <= now)
		return 0;
	/* round up so we never wake just before the deadline */
	return (int64_t)((double)(deadline - now) / g_scale) + 1;
}

void clock_format(char out[32], int64_t ms)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + 19, 13, ".%03dZ", (int)(ms % 1000));
}
