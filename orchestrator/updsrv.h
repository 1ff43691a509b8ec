/*
 * updsrv.h - the update-server adapter interface.
 *
 * The rollout controller tells an update server what to offer and asks it
 * how the fleet is doing, through this struct of function pointers, picked
 * by name from the configuration (`update_server: {adapter: builtin|http}`).
 * docs/update-server.md is the contract.
 *
 * The operations map onto two calls, both declarative:
 *   publish, set who is offered (percent, cohorts), halt, re-point
 *        -> apply(): the complete desired exposure of one release
 *   read metrics per release and cohort
 *        -> metrics()
 * Applying the same exposure twice is harmless, so a daemon killed between
 * deciding and applying simply applies again after restart; the http
 * adapter also sends the rollout's sequence number as Idempotency-Key.
 */
#ifndef OTA_UPDSRV_H
#define OTA_UPDSRV_H

#include <jansson.h>

#include "fleet/fleet.h"

struct updsrv {
	const char *name;
	/* Make the server offer exactly what `exposure` (one element of
	 * rollout_exposures(), see rollout.h) says. */
	int (*apply)(struct updsrv *u, const json_t *exposure);
	/* Aggregates of (product, version, cohort) and of the baseline: the
	 * same cohort on the previous good release's version `previous`
	 * (NULL: none known; fleet_baseline says what then).  baseline may be
	 * NULL. */
	int (*metrics)(struct updsrv *u, const char *product, const char *version, const char *cohort,
		       const char *previous, struct fleet_agg *canary, struct fleet_agg *baseline);
	/* How stale metrics() is (fleet.h, fleet_lag); NULL when the adapter
	 * cannot tell (http: the external server's own business). */
	void (*lag)(struct updsrv *u, struct fleet_lag *out);
	/* Devices per version: {"1.4.0": 812, ...} (new ref) or NULL; of
	 * the whole product (hardware NULL) or of one hardware variant. */
	json_t *(*versions)(struct updsrv *u, const char *product, const char *hardware);
	void (*free)(struct updsrv *u);
	/* Called once, after every rollout's exposure was applied for the
	 * first time since start (issue 18); NULL: nothing to do.  The
	 * builtin adapter opens its held device API (fleet_hold_offers). */
	void (*on_loaded)(struct updsrv *u);
	int loaded; /* updsrv_mark_loaded; read with updsrv_loaded */
};

/* Readiness after a start (issue 18): the rollout controller marks the
 * adapter once it has applied every exposure (rollout_ctl.c); /readyz says
 * "not ready" and the builtin device API answers 503 until then. */
void updsrv_mark_loaded(struct updsrv *u);
int updsrv_loaded(const struct updsrv *u);

/* issue 15: the daemon's update server for in-daemon stages (the release
 * stage's `deltas: {installed: N}`).  updsrv_set_current(NULL) returns
 * once no updsrv_current_versions call is running, so the adapter may be
 * freed after it. */
void updsrv_set_current(struct updsrv *u);
/* u->versions of the current adapter; NULL when none or it cannot tell. */
json_t *updsrv_current_versions(const char *product, const char *hardware);

/* otacd's own device API (fleet.h); f is borrowed. */
int updsrv_builtin(struct updsrv **out, struct fleet *f);
/* Issue 16: a follower on PostgreSQL makes the builtin adapter with no
 * fleet (NULL: no versions, no metrics, apply refused) and attaches the
 * fleet it opens when it takes the lead, before the rollout controller. */
void updsrv_builtin_attach(struct updsrv *u, struct fleet *f);
/* An external server at base_url speaking the control API. */
int updsrv_http(struct updsrv **out, const char *base_url, const char *token);

#endif
