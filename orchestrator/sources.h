/*
 * sources.h - turn deliveries (webhook pushes, manual triggers) into runs.
 *
 * A delivery is recorded first (engine_delivery_add), then handed to this
 * module's worker threads, which do the slow part: fetch the repository's
 * mirror, resolve the commit, read the pipeline file at that commit,
 * validate it, apply on.push filters, and create the run -- or close the
 * delivery with the reason nothing was started.  Deliveries of one
 * repository are processed one at a time in the order they arrived, so
 * runs are created in push order; different repositories proceed in
 * parallel.  Deliveries still pending after a crash are picked up again at
 * start.
 */
#ifndef OTA_SOURCES_H
#define OTA_SOURCES_H

#include <stdint.h>

#include "config.h"
#include "engine.h"

struct sources;

int sources_start(struct sources **out, struct engine *e, const struct otacd_config *cfg, int threads);
void sources_stop(struct sources *s);

struct source_outcome {
	int done;             /* 0: still pending when the wait ran out */
	int64_t run_id;       /* 0: no run */
	char reason[512];     /* why no run, when done and run_id == 0 */
};

/* Queue delivery id (of repo) without waiting; the done notifier moves
 * whenever a delivery's outcome is recorded (the HTTP server parks
 * webhook answers on it). */
void sources_enqueue(struct sources *s, int64_t id, const char *repo);
struct notifier *sources_done(struct sources *s);
/* Read a delivery's outcome from the database. */
int sources_outcome(int64_t id, struct source_outcome *out);

#endif
