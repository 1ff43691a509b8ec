/*
 * idem.h - Idempotency-Key: the first answer to a state-changing request,
 * kept in otacd.db so that a client retrying after a lost answer gets it
 * again instead of changing anything twice (docs/api.md).
 *
 * A key belongs to the token (actor) that sent it and lives IDEM_WINDOW_MS
 * of wall time.  The request is identified by its fingerprint (SHA-256 of
 * method, path and body): the same key with another fingerprint is refused.
 */
#ifndef OTA_IDEM_H
#define OTA_IDEM_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"
#include "engine.h"

#define IDEM_WINDOW_MS (24LL * 3600 * 1000)
#define IDEM_MAX_KEY 200

enum idem_state {
	IDEM_NEW,          /* reserved for this request: run it, then idem_finish */
	IDEM_REPLAY,       /* answered before: *status and *body are that answer */
	IDEM_MISMATCH,     /* the key was used for another request */
	IDEM_IN_PROGRESS,  /* a request with this key is running now */
	IDEM_INTERRUPTED,  /* its request ran but never answered (a restart, or
			      its client left while it waited): outcome unknown */
};

/* Is key a valid Idempotency-Key (1..IDEM_MAX_KEY printable ASCII, no
 * spaces)? */
int idem_key_valid(const char *key);
/* The request's fingerprint. */
void idem_fingerprint(const char *method, const char *path, const void *body, size_t len, char out[65]);
/* Look key up for actor and reserve it when new.  *body (new string) on
 * IDEM_REPLAY.  0 or a negative OTA_E* code. */
int idem_begin(struct engine *e, const char *actor, const char *key, const char *fingerprint,
	       enum idem_state *state, int *status, char **body);
/* Keep the answer of a reserved key. */
int idem_finish(struct engine *e, const char *actor, const char *key, int status, const char *body, size_t len);
/* Drop a reservation (the request failed without a definite answer: a
 * retry may run it again). */
int idem_forget(struct engine *e, const char *actor, const char *key);
/* The request ran but will not answer (its client went away while it
 * waited): its outcome is unknown, later requests get IDEM_INTERRUPTED. */
int idem_abandon(struct engine *e, const char *actor, const char *key);

/*
 * The same records on a store connection, inside the caller's transaction
 * (the engine thread's, or a test's on either backend): idem_begin's
 * lookup and reservation at wall time now, and idem_finish's status > 0
 * (keep the answer), 0 (forget) or < 0 (abandon).
 */
struct store;
int idem_store_begin(struct store *s, const char *actor, const char *key, const char *fingerprint, int64_t now,
		     enum idem_state *state, int *status, char **body);
int idem_store_finish(struct store *s, const char *actor, const char *key, int status, const char *body, size_t len);

#endif
