/*
 * sources.c - from delivery to run; see sources.h.
 *
 * Threads: `threads` workers share one queue of delivery ids.  A worker
 * takes the oldest queued delivery whose repository no other worker is
 * busy with, which keeps each repository's deliveries in arrival order.
 * Workers never write the database themselves: they call the engine.
 * Waiters (the webhook handler, POST /api/v1/triggers) sleep on a notifier
 * that workers bump after each delivery.
 */
#include "sources.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/notify.h"
#include "clock.h"
#include "db/db.h"
#include "gitsrc.h"
#include "pipeline/pipeline.h"
#include "sched/sched.h"
#include "store.h"

struct item {
	int64_t id;
	char *repo;
};

struct sources {
	struct engine *engine;
	const struct otacd_config *cfg;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct item *queue;
	size_t n, cap;
	struct strvec busy;       /* repositories being processed */
	int stopping;
	pthread_t *threads;
	int nthreads;
	struct notifier done;
};

struct delivery_row {
	char provider[16];
	char *delivery, *repo, *ref, *after, *pusher;
	int64_t pr_number;        /* issue 17: a pull/merge request (0: none) */
	char *pr_base;
};

static void row_release(struct delivery_row *d)
{
	free(d->delivery);
	free(d->pr_base);
	free(d->repo);
	free(d->ref);
	free(d->after);
	free(d->pusher);
}

static char *dup_col(struct db_stmt *st, int col)
{
	const char *s = db_column_text(st, col);
	return s ? xstrdup(s) : NULL;
}

static int load_delivery(int64_t id, struct delivery_row *d)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	int rc;

	memset(d, 0, sizeof(*d));
	if (!db || !(st = store_q(db, "SELECT provider, repo, ref, after_sha, pusher, delivery, COALESCE(pr_number, 0), pr_base"
				     " FROM deliveries WHERE id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	rc = db_step(st);
	if (rc == 1) {
		snprintf(d->provider, sizeof(d->provider), "%s", db_column_text(st, 0));
		d->repo = dup_col(st, 1);
		d->ref = dup_col(st, 2);
		d->after = dup_col(st, 3);
		d->pusher = dup_col(st, 4);
		d->delivery = dup_col(st, 5);
		d->pr_number = db_column_int64(st, 6);
		d->pr_base = dup_col(st, 7);
	}
	db_reset(st);
	return rc == 1 ? 0 : OTA_ENOTFOUND;
}

int sources_outcome(int64_t id, struct source_outcome *out)
{
	struct store *db = store_reader();
	struct db_stmt *st;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!db || !(st = store_q(db, "SELECT state, COALESCE(run_id, 0), reason FROM deliveries WHERE id = ?")))
		return OTA_ERROR;
	db_bind_int64(st, 1, id);
	rc = db_step(st);
	if (rc == 1) {
		out->done = !strcmp(db_column_text(st, 0), "done");
		out->run_id = db_column_int64(st, 1);
		snprintf(out->reason, sizeof(out->reason), "%s", db_column_text(st, 2) ? db_column_text(st, 2) : "");
	}
	db_reset(st);
	return rc == 1 ? 0 : OTA_ENOTFOUND;
}

/* A run that failed before starting, so the push is visibly answered. */
static void fail_run(struct sources *s, struct trigger_req *req, const char *name, const char *error)
{
	int64_t run = 0;
	if (engine_record_failed_run(s->engine, req, name, error, &run) < 0)
		ota_log(OTA_LOG_WARN, "delivery %" PRId64 ": %s", req->delivery_id, ota_error_last());
}

static void close_delivery(struct sources *s, int64_t id, const char *reason)
{
	if (engine_delivery_done(s->engine, id, reason) < 0)
		ota_log(OTA_LOG_WARN, "delivery %" PRId64 ": %s", id, ota_error_last());
}

/* Turn a manual trigger's ref (branch, tag, full ref, commit) into a full ref. */
static char *full_ref(const struct gitsrc_repo *git, const char *what)
{
	struct gitsrc_commit c;
	char *ref;

	if (!strncmp(what, "refs/", 5))
		return xstrdup(what);
	ref = xasprintf("refs/heads/%s", what);
	if (gitsrc_resolve(git, ref, &c) == 0) {
		gitsrc_commit_release(&c);
		return ref;
	}
	free(ref);
	ref = xasprintf("refs/tags/%s", what);
	if (gitsrc_resolve(git, ref, &c) == 0) {
		gitsrc_commit_release(&c);
		return ref;
	}
	free(ref);
	return xstrdup(what); /* a commit id: runs see it as the ref */
}

/* A schedule's own pipeline file, else the repository's.  delivery is
 * "NAME@SLOT" (engine_schedule_fire). */
static const char *schedule_pipeline(const struct repo_cfg *repo, const char *delivery)
{
	const char *at = delivery ? strrchr(delivery, '@') : NULL;
	const json_t *sc = NULL;
	const char *file;
	if (at) {
		char *name = xstrndup(delivery, (size_t)(at - delivery));
		sc = sched_find(repo, name);
		free(name);
	}
	file = sc ? json_string_value(json_object_get(sc, "pipeline")) : NULL;
	return file ? file : repo->pipeline;
}

static void process(struct sources *s, int64_t id)
{
	struct delivery_row d;
	const struct repo_cfg *repo;
	struct gitsrc_commit c;
	struct trigger_req req;
	struct buf yaml = BUF_INIT;
	struct pl_diags diags;
	struct pipeline *p = NULL;
	char *ref = NULL, *msg = NULL;
	int manual, scheduled, rc, have_commit = 0;
	const char *pipeline_file;
	int64_t run = 0;

	memset(&c, 0, sizeof(c));
	pl_diags_init(&diags, "pipeline.yml");
	if (load_delivery(id, &d) < 0)
		return;
	/* a schedule (sched/sched.h) runs its ref like a manual trigger */
	scheduled = !strcmp(d.provider, "schedule");
	manual = scheduled || !strcmp(d.provider, "api");
	repo = config_repo_find(s->cfg, d.repo);
	memset(&req, 0, sizeof(req));
	req.trigger = scheduled ? "schedule" : manual ? "api" : "webhook";
	req.repo = d.repo;
	req.pusher = d.pusher;
	req.delivery_id = id;
	req.ref = d.ref;
	req.pr_number = d.pr_number;
	req.pr_base = d.pr_base;
	if (!repo) {
		close_delivery(s, id, "the repository is no longer configured");
		goto out;
	}
	pipeline_file = scheduled ? schedule_pipeline(repo, d.delivery) : repo->pipeline;
	req.file = pipeline_file;
	/* A pushed commit already in the mirror (a burst of pushes, fetched by
	 * the first one) needs no fetch: a commit id names its content. */
	if (!manual && gitsrc_resolve(&repo->git, d.after, &c) == 0) {
		gitsrc_commit_release(&c);
	} else if ((d.pr_number ? gitsrc_fetch_request(&repo->git, d.ref) : gitsrc_fetch(&repo->git)) < 0) {
		msg = xasprintf("cannot fetch %s: %s", d.repo, ota_error_last());
		/* a push names a commit that must exist: fail visibly */
		if (manual)
			close_delivery(s, id, msg);
		else
			fail_run(s, &req, d.repo, msg);
		goto out;
	}
	if (manual)
		req.ref = ref = full_ref(&repo->git, d.ref);
	if ((rc = gitsrc_resolve(&repo->git, manual ? d.ref : d.after, &c)) < 0) {
		msg = manual ? xasprintf("'%s' is not a branch, tag or commit of %s", d.ref, d.repo)
			     : xasprintf("commit %s of %s could not be fetched: %s", d.after, d.repo, ota_error_last());
		if (manual)
			close_delivery(s, id, msg);
		else
			fail_run(s, &req, d.repo, msg);
		goto out;
	}
	have_commit = 1;
	req.commit = c.id;
	req.tree = c.tree;
	req.author = c.author;
	req.committer = c.committer;
	req.message = c.message;
	rc = gitsrc_read_file(&repo->git, c.id, pipeline_file, &yaml, 4 << 20);
	if (rc == OTA_ENOTFOUND) {
		msg = xasprintf("%s has no %s at %.12s: nothing to run", d.repo, pipeline_file, c.id);
		close_delivery(s, id, msg);
		goto out;
	}
	if (rc < 0) {
		msg = xasprintf("cannot read %s at %.12s: %s", pipeline_file, c.id, ota_error_last());
		fail_run(s, &req, d.repo, msg);
		goto out;
	}
	req.yaml = yaml.ptr;
	req.len = yaml.len;
	pl_diags_release(&diags);
	pl_diags_init(&diags, pipeline_file);
	if (pipeline_parse(&p, pipeline_file, yaml.ptr, yaml.len, &diags) < 0) {
		struct buf text = BUF_INIT;
		pl_diags_format(&diags, &text);
		fail_run(s, &req, d.repo, buf_cstr(&text));
		buf_release(&text);
		goto out;
	}
	/* on.push filters name branches and tags: a request's head ref never
	 * matches them, and every opened or updated request runs */
	if (!manual && !d.pr_number && p->on_push.set && !pipeline_filter_match(&p->on_push, d.ref)) {
		msg = xasprintf("%s does not match the pipeline's on.push filters: nothing to run", d.ref);
		close_delivery(s, id, msg);
		goto out;
	}
	pl_diags_release(&diags);
	pl_diags_init(&diags, pipeline_file);
	rc = engine_trigger(s->engine, &req, &run, &diags);
	if (rc == 0) {
		/* Build the tree's archive now, while an agent is being handed the
		 * first job: its download then finds it ready (or joins the build). */
		char *tar = NULL;
		if (gitsrc_archive(&repo->git, c.id, &tar) < 0)
			ota_log(OTA_LOG_WARN, "delivery %" PRId64 ": %s", id, ota_error_last());
		free(tar);
	} else if ((rc == OTA_EINVAL || rc == OTA_EPERM) && diags.n) {
		struct buf text = BUF_INIT;
		pl_diags_format(&diags, &text);
		fail_run(s, &req, p->name, buf_cstr(&text));
		buf_release(&text);
	} else if (rc < 0) {
		ota_log(OTA_LOG_WARN, "delivery %" PRId64 ": %s", id, ota_error_last());
	}
out:
	pipeline_free(p);
	pl_diags_release(&diags);
	if (have_commit)
		gitsrc_commit_release(&c);
	buf_release(&yaml);
	free(ref);
	free(msg);
	row_release(&d);
}

static void *worker(void *arg)
{
	struct sources *s = arg;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		size_t i = 0;
		struct item it;
		while (!s->stopping) {
			for (i = 0; i < s->n; i++)
				if (!strvec_contains(&s->busy, s->queue[i].repo))
					break;
			if (i < s->n)
				break;
			pthread_cond_wait(&s->cond, &s->lock);
		}
		if (s->stopping)
			break;
		it = s->queue[i];
		memmove(s->queue + i, s->queue + i + 1, (s->n - i - 1) * sizeof(*s->queue));
		s->n--;
		strvec_push(&s->busy, it.repo);
		pthread_mutex_unlock(&s->lock);

		process(s, it.id);
		notifier_bump(&s->done);

		pthread_mutex_lock(&s->lock);
		for (i = 0; i < s->busy.n; i++) {
			if (!strcmp(s->busy.v[i], it.repo)) {
				free(s->busy.v[i]);
				s->busy.v[i] = s->busy.v[--s->busy.n];
				s->busy.v[s->busy.n] = NULL;
				break;
			}
		}
		free(it.repo);
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

void sources_enqueue(struct sources *s, int64_t id, const char *repo)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->n; i++) {
		if (s->queue[i].id == id) {
			pthread_mutex_unlock(&s->lock);
			return;
		}
	}
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 32;
		s->queue = xrealloc(s->queue, s->cap * sizeof(*s->queue));
	}
	s->queue[s->n].id = id;
	s->queue[s->n].repo = xstrdup(repo);
	s->n++;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

struct notifier *sources_done(struct sources *s)
{
	return &s->done;
}

int sources_start(struct sources **out, struct engine *e, const struct otacd_config *cfg, int threads)
{
	struct sources *s = xcalloc(1, sizeof(*s));
	struct store *db = store_reader();
	struct db_stmt *st;

	s->engine = e;
	s->cfg = cfg;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	notifier_init(&s->done);
	/* deliveries a crash left pending, in arrival order */
	if (db && (st = store_q(db, "SELECT id, repo FROM deliveries WHERE state = 'pending' ORDER BY id"))) {
		while (db_step(st) == 1)
			sources_enqueue(s, db_column_int64(st, 0), db_column_text(st, 1));
		db_reset(st);
	}
	s->nthreads = threads > 0 ? threads : 2;
	s->threads = xcalloc((size_t)s->nthreads, sizeof(pthread_t));
	for (int i = 0; i < s->nthreads; i++)
		pthread_create(&s->threads[i], NULL, worker, s);
	*out = s;
	return 0;
}

void sources_stop(struct sources *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	notifier_bump(&s->done);
	for (int i = 0; i < s->nthreads; i++)
		pthread_join(s->threads[i], NULL);
	for (size_t i = 0; i < s->n; i++)
		free(s->queue[i].repo);
	free(s->queue);
	strvec_clear(&s->busy);
	free(s->threads);
	notifier_destroy(&s->done);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
