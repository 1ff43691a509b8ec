/*
 * githarness.c - a git origin for the tests that push to otacd; see
 * githarness.h.
 */
#include "githarness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

void gh_origin_init(struct gh_origin *g)
{
	g->base = h_tmpdir();
	g->origin = xasprintf("%s/origin.git", g->base);
	g->work = xasprintf("%s/work", g->base);
}

void gh_origin_create(const struct gh_origin *g)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_sh(&out, "git init -q --bare -b main %s && git init -q -b main %s && cd %s && git remote add origin %s",
			      g->origin, g->work, g->work, g->origin), 0);
	buf_release(&out);
}

void gh_origin_hook(const struct gh_origin *g, const struct daemon *d, const char *provider, const char *secret,
		    const char *repo, const char *hooklog)
{
	struct buf out = BUF_INIT;
	char *src = xasprintf("%s/tests/githook.sh", getenv("OTACD_SRC") ? getenv("OTACD_SRC") : ".");
	char *hook = xasprintf("%s/hooks/post-receive", g->origin);
	assert_int_equal(h_sh(&out, "printf '#!/bin/sh\\nOTACD_HOOK_URL=%s OTACD_HOOK_PROVIDER=%s OTACD_HOOK_SECRET=%s "
				    "OTACD_HOOK_REPO=%s OTACD_HOOK_LOG=%s exec %s\\n' > %s && chmod +x %s",
			      d->url, provider, secret, repo, hooklog, src, hook, hook), 0);
	free(hook);
	free(src);
	buf_release(&out);
}

void gh_origin_release(struct gh_origin *g)
{
	struct buf out = BUF_INIT;
	if (g->base && !getenv("OTACD_KEEP"))
		h_sh(&out, "rm -rf %s", g->base);
	buf_release(&out);
	free(g->base);
	free(g->origin);
	free(g->work);
	memset(g, 0, sizeof(*g));
}

char *gh_rev(const struct gh_origin *g, const char *what)
{
	struct buf out = BUF_INIT;
	assert_int_equal(h_git(g->work, &out, "rev-parse %s", what), 0);
	out.ptr[strcspn(out.ptr, "\n")] = '\0';
	return buf_detach(&out);
}
