/*
 * sched.c - the scheduler thread; see sched.h.
 *
 * Threads: one thread of its own.  It owns nothing in the database: every
 * write goes through the engine (engine_schedule_since/_fire), which
 * checks the stored last slot and writes the new one in the transaction
 * that records the delivery.  Between slots it sleeps on a condition
 * variable until the real time at which otacd time reaches the earliest
 * next slot (clock_real_delay_ms), at most a minute at a time, so a
 * changed --time-scale anchor or a stop is noticed.
 */
#include "sched.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/log.h"
#include "../clock.h"
#include "cron.h"

/* ---- configuration ------------------------------------------------------ */

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	return n >= 1 && n <= 64 &&
	       strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static int check_one(const json_t *s, size_t i, const json_t *list, char *err, size_t errlen)
{
	static const char *const keys[] = { "name", "cron", "ref", "pipeline" };
	const json_t *v;
	const char *key;
	struct cron_expr c;
	char why[256];

	if (!json_is_object(s)) {
		snprintf(err, errlen, "schedules[%zu]: must be a mapping {name, cron, ref, pipeline}", i);
		return OTA_EINVAL;
	}
	json_object_foreach((json_t *)s, key, v) {
		size_t k;
		for (k = 0; k < OTA_ARRAY_SIZE(keys) && strcmp(key, keys[k]); k++)
			;
		if (k == OTA_ARRAY_SIZE(keys)) {
			snprintf(err, errlen, "schedules[%zu].%.64s: unknown key (name, cron, ref, pipeline)", i, key);
			return OTA_EINVAL;
		}
		if (!json_is_string(v) || !*json_string_value(v) || strlen(json_string_value(v)) > 255) {
			snprintf(err, errlen, "schedules[%zu].%s: must be a non-empty string of at most 255 bytes", i, key);
			return OTA_EINVAL;
		}
	}
	v = json_object_get(s, "name");
	if (!v || !name_ok(json_string_value(v))) {
		snprintf(err, errlen, "schedules[%zu].name: required, 1-64 of [A-Za-z0-9._-]", i);
		return OTA_EINVAL;
	}
	for (size_t j = 0; j < i; j++) {
		if (!strcmp(json_string_value(json_object_get(json_array_get(list, j), "name")), json_string_value(v))) {
			snprintf(err, errlen, "schedules[%zu].name: '%s' is used twice", i, json_string_value(v));
			return OTA_EINVAL;
		}
	}
	v = json_object_get(s, "cron");
	if (!v) {
		snprintf(err, errlen, "schedules[%zu].cron: required (5 fields, like \"0 3 * * *\")", i);
		return OTA_EINVAL;
	}
	if (cron_parse(&c, json_string_value(v), strlen(json_string_value(v)), why, sizeof(why)) < 0) {
		snprintf(err, errlen, "schedules[%zu].cron: '%s': %s", i, json_string_value(v), why);
		return OTA_EINVAL;
	}
	if (cron_next(&c, (int64_t)time(NULL) * 1000) < 0) {
		snprintf(err, errlen, "schedules[%zu].cron: '%s' never fires", i, json_string_value(v));
		return OTA_EINVAL;
	}
	return 0;
}

int sched_config_check(const json_t *list, char *err, size_t errlen)
{
	size_t i;
	const json_t *s;

	if (!json_is_array(list)) {
		snprintf(err, errlen, "schedules: must be a list of {name, cron, ref, pipeline}");
		return OTA_EINVAL;
	}
	json_array_foreach((json_t *)list, i, s)
		if (check_one(s, i, list, err, errlen) < 0)
			return OTA_EINVAL;
	return 0;
}

const json_t *sched_find(const struct repo_cfg *repo, const char *name)
{
	size_t i;
	const json_t *s;
	json_array_foreach(repo->schedules, i, s)
		if (!strcmp(json_string_value(json_object_get(s, "name")), name))
			return s;
	return NULL;
}

/* ---- the thread --------------------------------------------------------- */

struct entry {
	const char *repo, *name;
	char *ref;                 /* full ref: refs/heads/X unless given as refs/... */
	struct cron_expr cron;
	int64_t since;             /* the last slot fired (or the first sighting); -1: not loaded yet */
};

struct sched {
	struct engine *engine;
	struct sources *sources;
	struct entry *v;
	size_t n;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stopping;
};

static void add_entries(struct sched *s, const struct repo_cfg *r)
{
	size_t i;
	const json_t *j;

	json_array_foreach(r->schedules, i, j) {
		const char *cron = json_string_value(json_object_get(j, "cron"));
		const char *ref = json_string_value(json_object_get(j, "ref"));
		struct entry *e;
		char why[256];

		s->v = xrealloc(s->v, (s->n + 1) * sizeof(*s->v));
		e = &s->v[s->n++];
		e->repo = r->git.name;
		e->name = json_string_value(json_object_get(j, "name"));
		if (!ref)
			ref = r->default_branch;
		e->ref = !strncmp(ref, "refs/", 5) ? xstrdup(ref) : xasprintf("refs/heads/%s", ref);
		cron_parse(&e->cron, cron, strlen(cron), why, sizeof(why)); /* checked at load */
		e->since = -1;
	}
}

/* Fire e's latest due slot, if any; returns its next slot (or -1). */
static int64_t tend(struct sched *s, struct entry *e)
{
	int64_t now = clock_now_ms(), due, id = 0;

	if (e->since < 0 && engine_schedule_since(s->engine, e->repo, e->name, now, &e->since) < 0) {
		ota_log(OTA_LOG_WARN, "schedule %s of %s: %s", e->name, e->repo, ota_error_last());
		return now + 60000; /* the database is in trouble: try again later */
	}
	due = cron_prev(&e->cron, now);
	if (due > e->since) {
		/* only the latest due slot: a backlog from downtime fires once */
		if (engine_schedule_fire(s->engine, e->repo, e->name, e->ref, due, &id) < 0) {
			ota_log(OTA_LOG_WARN, "schedule %s of %s: %s", e->name, e->repo, ota_error_last());
			return now + 60000;
		}
		e->since = due;
		if (id) {
			ota_log(OTA_LOG_INFO, "schedule %s of %s: slot %" PRId64 " queued delivery %" PRId64,
				e->name, e->repo, due, id);
			sources_enqueue(s->sources, id, e->repo);
		}
	}
	return cron_next(&e->cron, now);
}

static void *run(void *arg)
{
	struct sched *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		int64_t wake = -1, delay;
		struct timespec ts;

		pthread_mutex_unlock(&s->lock);
		for (size_t i = 0; i < s->n; i++) {
			int64_t next = tend(s, &s->v[i]);
			if (next >= 0 && (wake < 0 || next < wake))
				wake = next;
		}
		pthread_mutex_lock(&s->lock);
		delay = wake < 0 ? 60000 : clock_real_delay_ms(wake);
		if (delay > 60000)
			delay = 60000;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)(delay / 1000);
		ts.tv_nsec += (long)(delay % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (!s->stopping && delay > 0)
			pthread_cond_timedwait(&s->cond, &s->lock, &ts);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int sched_start(struct sched **out, struct engine *e, const struct otacd_config *cfg, struct sources *src)
{
	struct sched *s = xcalloc(1, sizeof(*s));

	s->engine = e;
	s->sources = src;
	for (size_t i = 0; i < cfg->nrepos; i++)
		add_entries(s, &cfg->repos[i]);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (s->n && pthread_create(&s->thread, NULL, run, s) != 0) {
		s->stopping = 1; /* no thread to join */
		sched_stop(s);
		return ota_error_set(OTA_ERROR, "cannot start the scheduler thread");
	}
	*out = s;
	return 0;
}

void sched_stop(struct sched *s)
{
	if (!s)
		return;
	if (s->n && !s->stopping) {
		pthread_mutex_lock(&s->lock);
		s->stopping = 1;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i].ref);
	free(s->v);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
