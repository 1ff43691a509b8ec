/*
 * githarness.h - a git origin for the tests that push to otacd like a
 * forge would (test_git, test_policy, test_prs, test_schedule): a bare
 * repository and its working clone in a temporary directory, the
 * post-receive hook that delivers pushes as a forge's signed webhook
 * (tests/githook.sh), and its removal.  Linked into every test binary,
 * like harness.c.
 */
#ifndef OTA_GITHARNESS_H
#define OTA_GITHARNESS_H

#include "harness.h"

struct gh_origin {
	char *base;   /* a new temporary directory holding the two below */
	char *origin; /* BASE/origin.git: bare, branch main */
	char *work;   /* BASE/work: branch main, "origin" its remote */
};

/* Fill g's paths under a new temporary directory; nothing is created in it
 * yet (a daemon's config may name the origin before it exists). */
void gh_origin_init(struct gh_origin *g);
/* Create the bare origin and the working clone with its remote. */
void gh_origin_create(const struct gh_origin *g);
/* Deliver every push to the origin to d as provider's webhook for repo,
 * signed with secret; the hook's log at hooklog. */
void gh_origin_hook(const struct gh_origin *g, const struct daemon *d, const char *provider, const char *secret,
		    const char *repo, const char *hooklog);
/* Remove BASE (unless OTACD_KEEP is set) and free the paths. */
void gh_origin_release(struct gh_origin *g);
/* `git rev-parse what` in the working clone, without its newline; to free. */
char *gh_rev(const struct gh_origin *g, const char *what);

#endif
